"""The admin API against a real ``switchboard serve``, over HTTP.

The roles table is checked route by route: every route of ``/api/v1`` (the
table the handlers and the OpenAPI document are made from) x every role x the
status it must get, signed in as real users of the example office (plus an
owner), with web passwords set by ``switchboard users set-password``.

Every test runs twice, once per store of the engine: the embedded SQLite of its
data dir, and PostgreSQL at ``$DATABASE_URL`` (default
``postgresql://127.0.0.1:5432/test``) through ``serve --db``, in a fresh schema
dropped afterwards, so runs do not collide. An unreachable PostgreSQL is a
failure, never a skip.
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import os
import sqlite3
import struct
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import wave
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import pyotp
import pytest

from provisioning.api.http import PREFIX, ROUTES
from tests.conftest import EXAMPLE, EngineProcess, env_database_url

ROLES = ("user", "receptionist", "department_admin", "manager", "owner")
# The example office: 102 user, 103 receptionist, 101 department_admin (Sales),
# 201 manager (Support); 202 is made the owner here.
EXT = {"user": "102", "receptionist": "103", "department_admin": "101", "manager": "201",
       "owner": "202"}
N = {role: str(i) for i, role in enumerate(ROLES)}  # a digit per role, for unique names


@dataclass
class Client:
    port: int
    token: str = ""

    def call(self, method: str, path: str, body: object = None,
             headers: dict[str, str] | None = None) -> tuple[int, Any, dict[str, str]]:
        # bytes go as they are (a CSV, a WAV), with the Content-Type given in headers
        data = body if isinstance(body, bytes) else (
            None if body is None else json.dumps(body).encode())
        quoted = urllib.parse.quote(path, safe="/?=&%+")
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{PREFIX}{quoted}",
                                         data=data, method=method)
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        if data is not None and not isinstance(body, bytes):
            request.add_header("Content-Type", "application/json")
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                raw, status, got = answer.read(), answer.status, dict(answer.headers)
        except urllib.error.HTTPError as exc:
            raw, status, got = exc.read(), exc.code, dict(exc.headers)
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = raw
        return status, parsed, got


def set_password(engine: EngineProcess, extension: str, password: str) -> None:
    done = subprocess.run([engine.binary, "users", "set-password", extension, "--data-dir",
                           str(engine.data_dir)], input=password + "\n", capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def sign_in(port: int, user: str, password: str, code: str | None = None) -> Client:
    body = {"user": user, "password": password} | ({"code": code} if code else {})
    status, answer, _ = Client(port).call("POST", "/auth/token", body)
    assert status == 200, answer
    return Client(port, answer["token"])


async def _pg(statement: str) -> Any:
    url = env_database_url()
    try:
        conn = await asyncpg.connect(url, timeout=10)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.fail(f"PostgreSQL is required and unreachable at {url}: {exc}", pytrace=False)
    try:
        return await conn.fetchval(statement)
    finally:
        await conn.close()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def office(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineProcess]:
    folder = tmp_path_factory.mktemp(f"admin-api-{request.param}")
    directory = folder / "directory.toml"
    directory.write_text(EXAMPLE.read_text().replace('name = "Emma Lavoie"',
                                                     'name = "Emma Lavoie"\nrole = "owner"'))
    schema = f"sb_admin_api_{uuid.uuid4().hex[:12]}"
    with pytest.MonkeyPatch.context() as env:
        if request.param == "postgresql":
            asyncio.run(_pg(f'CREATE SCHEMA "{schema}"'))
            # serve and every CLI command the tests run read the store from here
            env.setenv("SWITCHBOARD_DB", f"{env_database_url()}?search_path={schema}")
        else:
            env.delenv("SWITCHBOARD_DB", raising=False)
        try:
            engine = EngineProcess(folder, directory).start()
            for role, ext in EXT.items():
                set_password(engine, ext, f"{role}-web-password")
            if request.param == "postgresql":  # the engine and the CLI really use it
                assert not (folder / "switchboard.db").exists()
                assert asyncio.run(_pg(f'SELECT count(*) FROM "{schema}".web_credentials'))\
                    == len(EXT)
            yield engine
            assert engine.stop() == 0, engine.log()
        finally:
            if request.param == "postgresql":
                asyncio.run(_pg(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))


@pytest.fixture(scope="module")
def clients(office: EngineProcess) -> dict[str, Client]:
    return {role: sign_in(office.http_port, ext, f"{role}-web-password")
            for role, ext in EXT.items()}


# --------------------------------------------------------------------------- the roles table

OK, NO, HIDDEN = 200, 403, 404  # HIDDEN: what one may not see is not there
Prepare = Callable[[Client, str], str]  # (owner client, role) -> the {target} of the path


def _create(path: str, body: Callable[[str], dict[str, Any]], key: str) -> Prepare:
    def prepare(owner: Client, role: str) -> str:
        made = body("9" + N[role])
        status, answer, _ = owner.call("POST", path, made, {"If-Match": "*"})
        assert status == 201, answer
        return str(made[key])
    return prepare


def _apikey(owner: Client, role: str) -> str:
    status, answer, _ = owner.call("POST", "/apikeys", {"name": f"k{role}", "role": "manager"})
    assert status == 201, answer
    return str(answer["id"])


@dataclass
class Case:
    method: str
    route: str  # as in ROUTES
    path: str  # with {target} when prepared
    expect: dict[str, int]  # role -> status
    body: Callable[[str], object] | None = None  # role digit -> body
    prepare: Prepare | None = None
    check: Callable[[str, Any], None] | None = None
    extra: dict[str, str] = field(default_factory=dict)  # request headers


def _all(status: int) -> dict[str, int]:
    return dict.fromkeys(ROLES, status)


def _roles(u: int, r: int, d: int, m: int, o: int) -> dict[str, int]:
    return dict(zip(ROLES, (u, r, d, m, o), strict=True))


def _user(n: str, department: str = "Sales") -> dict[str, Any]:
    return {"extension": f"1{n}", "name": f"New {n}", "department": department,
            "password": f"sip-secret-{n}"}


def _count(expected: dict[str, int]) -> Callable[[str, Any], None]:
    def check(role: str, answer: Any) -> None:
        assert len(answer) == expected[role], (role, answer)
    return check


def _users_scope(role: str, answer: Any) -> None:
    """A user sees themselves; a receptionist and a department admin their
    department (Sales); a manager and an owner everyone."""
    extensions = {row["extension"] for row in answer}
    departments = {row["department"] for row in answer}
    if role == "user":
        assert extensions == {"102"}, answer
    elif role in ("receptionist", "department_admin"):
        assert departments == {"Sales"} and {"101", "102", "103"} <= extensions, answer
    else:
        assert {"101", "201", "202"} <= extensions, answer


def _wav(seconds: float, rate: int = 8000, channels: int = 1) -> bytes:
    """A 440 Hz tone as a PCM 16-bit WAV."""
    frames = int(seconds * rate)
    samples = [int(8000 * math.sin(2 * math.pi * 440 * i / rate)) for i in range(frames)]
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"".join(struct.pack("<h", s) * channels for s in samples))
    return out.getvalue()


def _greeting(seconds: int) -> bytes:
    return _wav(seconds)


def _csv_hire(n: str) -> bytes:
    return ("Number,FirstName,LastName,Department,AuthPassword,DID\n"
            f"14{n},Csv,Hire {n},Sales,csv-sip-secret-{n},+1514555014{n}\n").encode()


def _csv_export_scope(role: str, answer: Any) -> None:
    text = answer.decode() if isinstance(answer, bytes) else str(answer)
    assert text.startswith("Number,FirstName,LastName,") and "secret" not in text, text
    extensions = {line.split(",")[0] for line in text.splitlines()[1:]}
    assert ("201" in extensions) == (role in ("manager", "owner")), (role, extensions)


CASES: list[Case] = [
    Case("GET", "/me", "/me", _all(OK)),
    Case("POST", "/users/import", "/users/import", _roles(NO, NO, OK, OK, OK), body=_csv_hire,
         extra={"Content-Type": "text/csv"},
         check=lambda role, answer: None if answer["added"] == [f"14{N[role]}"] else
         pytest.fail(str(answer))),
    Case("PATCH", "/users", "/users", _roles(OK, NO, OK, OK, OK),
         body=lambda n: {"extensions": ["102"], "set": {"forwarding": {"lunch": {
             "no_answer_seconds": 30 + int(n)}}}},
         check=lambda role, answer: None if list(answer["changed"]) == ["102"] else
         pytest.fail(str(answer))),
    Case("PATCH", "/users", "/users", _roles(HIDDEN, NO, OK, OK, OK),
         body=lambda n: {"extensions": ["101", "103"], "set": {
             "record_calls": ("off", "external", "all")[int(n) % 3]}}),
    Case("POST", "/users/{extension}/copy", "/users/102/copy", _roles(NO, NO, 201, 201, 201),
         body=lambda n: {"extension": f"17{n}", "name": f"Copy {n}",
                         "mobile": f"+151455517{n}"},
         check=lambda role, answer: None if answer["sip_password"] and "password" not in answer
         else pytest.fail(str(answer))),
    Case("POST", "/users/{extension}/copy", "/users/201/copy",
         _roles(HIDDEN, HIDDEN, HIDDEN, 201, 201),
         body=lambda n: {"extension": f"27{n}", "name": f"Copy {n}",
                         "email": f"copy{n}@example.test"}),
    # the office here has no [system] admin_url: past the role check, 422 names it
    # (the emails themselves: tests/test_e2e_admin_mail.py)
    Case("POST", "/users/{extension}/welcome", "/users/102/welcome",
         _roles(NO, NO, 422, 422, 422)),
    Case("POST", "/users/{extension}/welcome", "/users/201/welcome",
         _roles(HIDDEN, HIDDEN, HIDDEN, 422, 422)),
    Case("PUT", "/users/{extension}/greetings/{status}", "/users/102/greetings/away",
         _roles(OK, NO, OK, OK, OK), body=lambda n: _greeting(1 + int(n)),
         extra={"Content-Type": "audio/wav", "If-Match": "*"}),
    Case("PUT", "/users/{extension}/greetings/{status}", "/users/201/greetings/voicemail",
         _roles(HIDDEN, HIDDEN, HIDDEN, OK, OK), body=lambda n: _greeting(1 + int(n)),
         extra={"Content-Type": "audio/wav", "If-Match": "*"}),
    Case("GET", "/users/export.csv", "/users/export.csv", _roles(NO, NO, OK, OK, OK),
         check=_csv_export_scope),
    Case("GET", "/users", "/users", _all(OK), check=_users_scope),
    Case("GET", "/directory", "/directory", _all(OK),
         check=lambda role, answer: _users_scope(role, answer["users"])),
    Case("GET", "/users/{key}", "/users/101", _roles(HIDDEN, OK, OK, OK, OK)),
    Case("GET", "/users/{key}", "/users/201", _roles(HIDDEN, HIDDEN, HIDDEN, OK, OK)),
    Case("POST", "/users", "/users", _roles(NO, NO, 201, 201, 201), body=lambda n: _user("3" + n)),
    Case("PATCH", "/users/{key}", "/users/102", _roles(OK, NO, OK, OK, OK),
         body=lambda n: {"forwarding": {"lunch": {"no_answer_seconds": 10 + int(n)}}}),
    Case("PATCH", "/users/{key}", "/users/102", _roles(NO, NO, OK, OK, OK),
         body=lambda n: {"name": f"Bruno T{n}"}),
    Case("PATCH", "/users/{key}", "/users/202", _roles(HIDDEN, HIDDEN, HIDDEN, NO, OK),
         body=lambda n: {"name": f"Emma L{n}"}),
    Case("DELETE", "/users/{key}", "/users/{target}", _roles(HIDDEN, NO, OK, OK, OK),
         prepare=_create("/users", _user, "extension")),
    Case("GET", "/numbers", "/numbers", _all(OK),
         check=_count({"user": 0, "receptionist": 0, "department_admin": 2, "manager": 3,
                       "owner": 3})),
    Case("GET", "/numbers/{key}", "/numbers/+15145550100", _roles(HIDDEN, HIDDEN, OK, OK, OK)),
    Case("POST", "/numbers", "/numbers", _roles(NO, NO, NO, 201, 201),
         body=lambda n: {"number": f"+151455507{n}", "route_to": "extension:102"}),
    Case("PATCH", "/numbers/{key}", "/numbers/+15145550100", _roles(HIDDEN, HIDDEN, OK, OK, OK),
         body=lambda n: {"route_to": "extension:101" if int(n) % 2 else "ring_group:sales"}),
    Case("DELETE", "/numbers/{key}", "/numbers/{target}", _roles(HIDDEN, HIDDEN, NO, OK, OK),
         prepare=_create("/numbers", lambda n: {"number": f"+151455508{n}",
                                                "route_to": "extension:102"}, "number")),
    Case("GET", "/departments", "/departments", _all(OK)),
    Case("GET", "/departments/{key}", "/departments/Support", _roles(HIDDEN, HIDDEN, HIDDEN, OK,
                                                                     OK)),
    Case("POST", "/departments", "/departments", _roles(NO, NO, NO, 201, 201),
         body=lambda n: {"name": f"Dept {n}", "caller_id": "+15145550100"}),
    Case("PATCH", "/departments/{key}", "/departments/Sales", _roles(NO, NO, OK, OK, OK),
         body=lambda n: {"holidays": ["2026-12-25", f"2027-01-0{int(n) + 1}"]}),
    Case("DELETE", "/departments/{key}", "/departments/{target}",
         _roles(HIDDEN, HIDDEN, HIDDEN, OK, OK),
         prepare=_create("/departments", lambda n: {"name": f"Gone {n}",
                                                    "caller_id": "+15145550100"}, "name")),
    Case("GET", "/ring_groups", "/ring_groups", _all(OK)),
    Case("GET", "/ring_groups/{key}", "/ring_groups/sales", _all(OK)),
    Case("POST", "/ring_groups", "/ring_groups", _roles(NO, NO, 201, 201, 201),
         body=lambda n: {"name": f"g{n}", "extension": f"81{n}", "members": ["101", "102"]}),
    Case("PATCH", "/ring_groups/{key}", "/ring_groups/sales", _roles(NO, NO, OK, OK, OK),
         body=lambda n: {"ring_seconds": 20 + int(n)}),
    Case("DELETE", "/ring_groups/{key}", "/ring_groups/{target}", _roles(NO, NO, OK, OK, OK),
         prepare=_create("/ring_groups", lambda n: {"name": f"d{n}", "extension": f"82{n[-1]}",
                                                    "members": ["102"]}, "name")),
    # IVRs are their department's (reception: Sales); its admin and owners change them
    Case("GET", "/ivrs", "/ivrs", _all(OK),
         check=_count({"user": 0, "receptionist": 1, "department_admin": 1, "manager": 1,
                       "owner": 1})),
    Case("GET", "/ivrs/{key}", "/ivrs/reception", _roles(HIDDEN, OK, OK, OK, OK)),
    Case("POST", "/ivrs", "/ivrs", _roles(NO, NO, 201, NO, 201),
         body=lambda n: {"name": f"menu{n}", "extension": f"87{n}", "text": "Bonjour",
                         "keys": {"1": "extension:102", "2": "ring_group:sales"},
                         "department": "Sales"}),
    Case("PATCH", "/ivrs/{key}", "/ivrs/reception", _roles(HIDDEN, NO, OK, NO, OK),
         body=lambda n: {"timeout_seconds": 5 + int(n)}),
    Case("DELETE", "/ivrs/{key}", "/ivrs/{target}", _roles(HIDDEN, NO, OK, NO, OK),
         prepare=_create("/ivrs", lambda n: {"name": f"gone{n}", "extension": f"89{n[-1]}",
                                             "prompt": "menu.wav", "dial_by_extension": True,
                                             "department": "Sales"}, "name")),
    # a queue is a department's when every agent is (support: Support)
    Case("GET", "/queues", "/queues", _all(OK)),
    Case("GET", "/queues/{key}", "/queues/support", _roles(HIDDEN, HIDDEN, HIDDEN, OK, OK)),
    Case("POST", "/queues", "/queues", _roles(NO, NO, 201, NO, 201),
         body=lambda n: {"name": f"q{n}", "extension": f"88{n}", "agents": ["101", "102"]}),
    Case("PATCH", "/queues/{key}", "/queues/support", _roles(HIDDEN, HIDDEN, HIDDEN, NO, OK),
         body=lambda n: {"ring_seconds": 10 + int(n)}),
    Case("DELETE", "/queues/{key}", "/queues/{target}", _roles(NO, NO, OK, NO, OK),
         prepare=_create("/queues", lambda n: {"name": f"gq{n}", "extension": f"84{n[-1]}",
                                               "agents": ["102"]}, "name")),
    Case("GET", "/queues/{key}/stats", "/queues/support/stats",
         _roles(HIDDEN, HIDDEN, HIDDEN, OK, OK)),
    Case("GET", "/queues/{key}/agents", "/queues/support/agents",
         _roles(HIDDEN, HIDDEN, HIDDEN, OK, OK)),
    # 201 (the manager) is an agent of support: it logs itself in; the owner may too
    Case("PUT", "/queues/{key}/agents/{extension}", "/queues/support/agents/201",
         _roles(HIDDEN, HIDDEN, HIDDEN, OK, OK), body=lambda n: {"logged_in": True}),
    Case("GET", "/trunks", "/trunks", _roles(NO, NO, NO, NO, OK)),
    Case("GET", "/trunks/{key}", "/trunks/carrier", _roles(NO, NO, NO, NO, OK)),
    Case("POST", "/trunks", "/trunks", _roles(NO, NO, NO, NO, 201),
         body=lambda n: {"name": f"t{n}", "host": "127.0.0.9"}),
    Case("PATCH", "/trunks/{key}", "/trunks/carrier", _roles(NO, NO, NO, NO, OK),
         body=lambda n: {"channels": 8}),
    Case("DELETE", "/trunks/{key}", "/trunks/{target}", _roles(NO, NO, NO, NO, OK),
         prepare=_create("/trunks", lambda n: {"name": f"x{n}", "host": "127.0.0.9"}, "name")),
    Case("GET", "/system", "/system", _roles(NO, NO, NO, OK, OK)),
    Case("PATCH", "/system", "/system", _roles(NO, NO, NO, NO, OK),
         body=lambda n: {"max_register_expires": 3600}),
    Case("GET", "/statuses", "/statuses", _all(OK), check=_users_scope),
    Case("GET", "/users/{extension}/status", "/users/201/status",
         _roles(HIDDEN, HIDDEN, HIDDEN, OK, OK)),
    Case("PUT", "/users/{extension}/status", "/users/102/status", _all(OK),
         body=lambda n: {"status": "away"}),
    Case("PUT", "/users/{extension}/status", "/users/101/status", _roles(HIDDEN, OK, OK, OK, OK),
         body=lambda n: {"status": "available"}),
    Case("DELETE", "/users/{extension}/status", "/users/201/status",
         _roles(HIDDEN, HIDDEN, HIDDEN, OK, OK)),
    Case("PUT", "/users/{extension}/password", "/users/203/password",
         _roles(HIDDEN, HIDDEN, HIDDEN, OK, OK), body=lambda n: {"password": f"former-{n}-pw"}),
    # two-factor enrolment: one's own, or the users one manages (as a web password)
    Case("GET", "/users/{extension}/totp", "/users/102/totp", _roles(OK, NO, OK, OK, OK),
         check=lambda role, answer: None if answer["enabled"] is False else
         pytest.fail(str(answer))),
    Case("POST", "/users/{extension}/totp", "/users/102/totp", _roles(201, NO, 201, 201, 201),
         check=lambda role, answer: None if answer["qr"].startswith("data:image/svg+xml")
         and answer["uri"].startswith("otpauth://totp/") else pytest.fail(str(answer))),
    # nothing begun for 101: past the role check, 409 says so
    Case("POST", "/users/{extension}/totp/confirm", "/users/101/totp/confirm",
         _roles(HIDDEN, NO, 409, 409, 409), body=lambda n: {"code": "123456"}),
    # one's own needs a code (400 without); another's, whoever manages them
    Case("POST", "/users/{extension}/totp/disable", "/users/201/totp/disable",
         _roles(HIDDEN, HIDDEN, HIDDEN, 400, OK), body=lambda n: {}),
    Case("GET", "/users/{extension}/voicemail", "/users/102/voicemail", _roles(OK, NO, NO, NO,
                                                                              OK)),
    Case("DELETE", "/users/{extension}/voicemail/{id}", "/users/102/voicemail/nope",
         _roles(HIDDEN, NO, NO, NO, HIDDEN)),
    Case("GET", "/registrations", "/registrations", _all(OK)),
    Case("GET", "/events", "/events?seconds=1", _all(OK),
         check=lambda role, answer: None if bytes(answer).startswith(b"retry: 1000") else
         pytest.fail(str(answer))),
    Case("GET", "/calls", "/calls", _all(OK)),
    Case("GET", "/route/explain", "/route/explain?from=%2B15145550199&to=102", _all(OK)),
    Case("GET", "/route/explain", "/route/explain?from=%2B15145550199&to=201",
         _roles(NO, NO, NO, OK, OK)),
    Case("GET", "/recordings", "/recordings", _all(OK)),
    Case("GET", "/recordings/{id}", "/recordings/" + "0" * 32, _all(HIDDEN)),
    Case("DELETE", "/recordings/{id}", "/recordings/" + "0" * 32, _roles(NO, NO, NO, HIDDEN,
                                                                       HIDDEN)),
    Case("GET", "/audit", "/audit", _roles(NO, NO, NO, OK, OK)),
    Case("GET", "/apikeys", "/apikeys", _roles(NO, NO, NO, NO, OK)),
    Case("POST", "/apikeys", "/apikeys", _roles(NO, NO, NO, NO, 201),
         body=lambda n: {"name": f"hr-{n}", "role": "manager"}),
    Case("DELETE", "/apikeys/{id}", "/apikeys/{target}", _roles(NO, NO, NO, NO, OK),
         prepare=_apikey),
]
# Routes checked by their own tests: signing in and out, the public document (below), and
# the password reset (tests/test_e2e_admin_mail.py).
ELSEWHERE = {("POST", "/auth/token"), ("DELETE", "/auth/token"), ("GET", "/openapi.json"),
             ("POST", "/auth/reset"), ("POST", "/auth/reset/{token}")}


def test_the_table_covers_every_route() -> None:
    routes = {(r.method, r.path) for r in ROUTES}
    covered = {(c.method, c.route) for c in CASES} | ELSEWHERE
    assert routes == covered, routes ^ covered


@pytest.mark.parametrize("case", CASES, ids=[f"{c.method} {c.path}" for c in CASES])
def test_roles(case: Case, clients: dict[str, Client]) -> None:
    unauthenticated = Client(clients["owner"].port)
    path = case.path
    failures = []
    for role in ROLES:
        if case.prepare is not None:
            path = case.path.replace("{target}", case.prepare(clients["owner"], role))
        headers = {"If-Match": "*"} if case.method in ("POST", "PATCH", "DELETE") else {}
        headers |= case.extra
        body = case.body(N[role]) if case.body is not None else None
        status, answer, _ = clients[role].call(case.method, path, body, headers)
        if status != case.expect[role]:
            failures.append(f"{role}: {status} (expected {case.expect[role]}): {answer}")
        elif status < 300 and case.check is not None:
            case.check(role, answer)
        elif status >= 400:
            assert answer["errors"] and all("path" in e and e["message"] for e in
                                            answer["errors"]), answer
    assert not failures, "\n".join(failures)
    status, answer, _ = unauthenticated.call(case.method, path, None)
    assert status == 401 and answer["errors"], answer


# --------------------------------------------------------------------------- behaviour


def test_a_forward_set_at_5pm_reaches_the_next_call(clients: dict[str, Client]) -> None:
    alice = clients["department_admin"]
    status, user, headers = alice.call("GET", "/users/102")
    assert status == 200 and "password" not in user and user["password_set"] is True
    etag = headers["ETag"]
    status, answer, _ = alice.call("PATCH", "/users/102", {"forwarding": {"away": {
        "no_answer_seconds": 0, "no_answer": {"external": "external:+15145550177"}}}})
    assert status == 428 and answer["errors"][0]["path"] == "If-Match"
    status, answer, _ = alice.call("PATCH", "/users/102", {"forwarding": {"away": {
        "no_answer": {"external": "extension:109"}}}}, {"If-Match": etag})
    assert status == 422
    assert answer == {"errors": [{"path": "users[1].forwarding.away.no_answer.external",
                                  "message": "unknown extension '109'"}]}
    status, answer, new = alice.call("PATCH", "/users/102", {"forwarding": {"away": {
        "no_answer_seconds": 0, "no_answer": {"external": "external:+15145550177"}}}},
        {"If-Match": etag})
    assert status == 200, answer
    assert new["ETag"] != etag
    status, answer, _ = alice.call("PATCH", "/users/102", {"name": "Stale"}, {"If-Match": etag})
    assert status == 412
    # no wait: the write returned after the engine took it
    status, plan, _ = alice.call("GET", "/route/explain?from=%2B15145550199&to=102"
                                        "&status=away")
    assert status == 200
    assert any("+15145550177" in json.dumps(step) for step in plan["steps"]), plan


def test_two_admins_one_directory_revision(office: EngineProcess,
                                           clients: dict[str, Client],
                                           tmp_path: Path) -> None:
    """The directory's revision is the ETag of every table, of the whole directory and
    of the CSV export: the second of two admins who read the same revision is refused
    (412, told the current one) and reads again; a GET naming the current one is 304."""
    manager, owner = clients["manager"], clients["owner"]
    _, _, seen = manager.call("GET", "/users")
    _, _, also = owner.call("GET", "/directory")
    etag = seen["ETag"]
    assert also["ETag"] == etag
    for path in ("/users", "/directory", "/departments", "/users/102", "/users/export.csv"):
        status, body, headers = owner.call("GET", path, headers={"If-None-Match": etag})
        assert (status, body, headers["ETag"]) == (304, None, etag), path
    status, _, _ = owner.call("GET", "/users", headers={"If-None-Match": '"0", W/' + etag})
    assert status == 304
    status, answer, written = owner.call("PATCH", "/users/102", {"name": "Bruno Owner"},
                                         {"If-Match": etag})
    assert status == 200, answer
    current = int(written["ETag"].strip('"'))
    status, answer, headers = manager.call("PATCH", "/users/102", {"name": "Bruno Manager"},
                                           {"If-Match": etag})
    assert status == 412, answer
    assert answer["revision"] == current and headers["ETag"] == written["ETag"]
    assert answer["errors"][0]["path"] == "If-Match"
    assert f"revision {current}" in answer["errors"][0]["message"]
    status, row, headers = manager.call("GET", "/users/102", headers={"If-None-Match": etag})
    assert status == 200 and row["name"] == "Bruno Owner" and headers["ETag"] == written["ETag"]
    # another writer (the CLI here; another node alike) moves the revision: the API
    # sees it at once, and an ETag read before it is stale
    csv = tmp_path / "hire.csv"
    csv.write_text("Number,FirstName,LastName,Department,AuthPassword\n"
                   "188,Cli,Writer,Sales,cli-sip-secret-188\n")
    done = office.cli("users", "import", str(csv))
    assert done.returncode == 0, done.stderr
    status, rows, headers = manager.call("GET", "/users",
                                         headers={"If-None-Match": written["ETag"]})
    assert status == 200 and "188" in {r["extension"] for r in rows}
    assert headers["ETag"] != written["ETag"]
    status, answer, _ = manager.call("DELETE", "/users/188", headers={
        "If-Match": written["ETag"]})
    assert status == 412 and answer["revision"] == int(headers["ETag"].strip('"'))
    status, answer, _ = manager.call("DELETE", "/users/188", headers={
        "If-Match": headers["ETag"]})
    assert status == 200, answer


def test_status_is_live_and_audited(office: EngineProcess, clients: dict[str, Client]) -> None:
    bruno = clients["user"]
    status, answer, _ = bruno.call("PUT", "/users/102/status", {"status": "lunch"})
    assert status == 200 and answer["status"] == "lunch" and answer["live"] is True
    status, answer, _ = bruno.call("PUT", "/users/102/status", {"status": "asleep"})
    assert status == 422 and answer["errors"][0]["path"] == "status"
    listed = office.cli("status", "clear", "102")
    assert listed.returncode == 0, listed.stderr
    audit = office.cli("audit", "--json", "--target", "users/102")
    entries = json.loads(audit.stdout)
    assert any(e["action"] == "status.set" and e["actor"] == "user:102"
               and e["after"] == {"status": "lunch"} for e in entries)
    status, rows, _ = clients["manager"].call("GET", "/audit?target=users/102")
    assert status == 200 and rows[0]["target"] == "users/102"
    for row in rows:  # secrets never in the log
        assert "secret" not in json.dumps(row)


def test_sign_in_failures_lock_the_account_alike_known_or_not(office: EngineProcess) -> None:
    anonymous = Client(office.http_port)
    answers = {}
    for account in ("203", "nobody@example.test"):
        for _ in range(5):
            status, answer, _ = anonymous.call("POST", "/auth/token",
                                               {"user": account, "password": "wrong-password"})
            assert status == 401 and answer["errors"][0]["message"] == \
                "wrong user, password or code"
        status, answer, headers = anonymous.call("POST", "/auth/token",
                                                 {"user": account, "password": "x"})
        assert status == 429 and "Retry-After" in headers
        answers[account] = answer["errors"][0]["message"].split(";")[0]
    assert answers["203"] == answers["nobody@example.test"] == \
        "too many failed sign-ins for this account"
    assert "wrong-password" not in office.log()


def test_totp_api_keys_and_password_change_end_sessions(office: EngineProcess) -> None:
    set_password(office, "201", "manager-second-pw")
    done = subprocess.run([office.binary, "users", "totp", "201", "--png",
                           str(office.data_dir / "qr.png"), "--data-dir", str(office.data_dir)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    uri = next(line for line in done.stdout.splitlines() if line.startswith("otpauth://"))
    assert (office.data_dir / "qr.png").read_bytes().startswith(b"\x89PNG")
    anonymous = Client(office.http_port)
    status, answer, _ = anonymous.call("POST", "/auth/token",
                                       {"user": "201", "password": "manager-second-pw"})
    assert status == 401 and answer["errors"][0]["path"] == "code"
    code = pyotp.parse_uri(uri).now()
    manager = sign_in(office.http_port, "david@example.test", "manager-second-pw", code)
    assert manager.call("GET", "/me")[1]["role"] == "manager"
    set_password(office, "201", "manager-third-pw")
    status, _, _ = manager.call("GET", "/me")
    assert status == 401  # a new password ends the old sessions

    created = subprocess.run([office.binary, "apikeys", "create", "--role", "manager", "--name",
                              "hr-sync", "--data-dir", str(office.data_dir)],
                             capture_output=True, text=True, timeout=60)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    hr = Client(office.http_port, key)
    status, answer, _ = hr.call("POST", "/users", {
        "extension": "150", "name": "From HR", "department": "Support",
        "password": "sip-secret-150"}, {"If-Match": "*"})
    assert status == 201, answer
    key_id = key.split("_")[1]
    assert subprocess.run([office.binary, "apikeys", "revoke", key_id, "--data-dir",
                           str(office.data_dir)], timeout=60).returncode == 0
    assert hr.call("GET", "/me")[0] == 401
    assert "sip-secret-150" not in office.log() and key not in office.log()

    signed = sign_in(office.http_port, "102", "user-web-password")
    assert signed.call("DELETE", "/auth/token")[0] == 200
    assert signed.call("GET", "/me")[0] == 401


def test_openapi_is_served_and_names_every_route(office: EngineProcess) -> None:
    status, doc, _ = Client(office.http_port).call("GET", "/openapi.json")
    assert status == 200 and doc["openapi"] == "3.1.0"
    for route in ROUTES:
        assert route.method.lower() in doc["paths"][PREFIX + route.path]


def test_csv_import_over_http_and_the_cli(office: EngineProcess, clients: dict[str, Client],
                                         tmp_path: Path) -> None:
    owner = clients["owner"]
    status, text, headers = owner.call("GET", "/users/export.csv")
    assert status == 200 and headers["Content-Type"].startswith("text/csv")
    etag = headers["ETag"]
    csv_text = text.decode()
    assert "secret" not in csv_text and ",2468," not in csv_text  # no SIP password, no PIN
    hire = ("Number,FirstName,LastName,EmailAddress,AuthID,AuthPassword,PIN,VMEmailOptions,"
            "Department,WebMeetingFriendlyName\n"
            "160,Gilles,Pelletier,gilles@example.test,160,gilles-sip-160,5150,2,Support,gp\n")
    status, answer, _ = owner.call("POST", "/users/import?dry_run=1", hire.encode(),
                                   {"Content-Type": "text/csv", "If-Match": etag})
    assert status == 200, answer
    assert answer == {"added": ["160"], "changed": {}, "unchanged": [], "dry_run": True,
                      "ignored_columns": ["WebMeetingFriendlyName"]}
    assert owner.call("GET", "/users/160")[0] == 404  # the dry run applied nothing
    status, answer, _ = owner.call("POST", "/users/import", hire.encode(),
                                   {"Content-Type": "text/csv"})
    assert status == 428
    status, answer, _ = owner.call("POST", "/users/import", b'{"a": 1}',
                                   {"Content-Type": "application/json", "If-Match": "*"})
    assert status == 415 and answer["errors"][0]["path"] == "Content-Type"
    bad = hire.replace(",2,Support", ",7,Support").replace("160,gilles", "161,gilles")
    status, answer, _ = owner.call("POST", "/users/import", bad.encode(),
                                   {"Content-Type": "text/csv", "If-Match": "*"})
    assert status == 422
    assert [e["path"] for e in answer["errors"]] == ["row 2, column AuthID",
                                                     "row 2, column VMEmailOptions"]
    status, answer, new = owner.call("POST", "/users/import", hire.encode(),
                                     {"Content-Type": "text/csv", "If-Match": etag})
    assert status == 200 and answer["added"] == ["160"] and new["ETag"] != etag
    status, user, _ = owner.call("GET", "/users/160")
    assert status == 200 and user["password_set"] and user["voicemail_pin_set"]
    assert "gilles-sip-160" not in office.log()

    # the CLI: the same file, the same path (dry run, then the real thing)
    path = tmp_path / "users.csv"
    path.write_text(hire.replace("Gilles,Pelletier", "Gilles,Pelletier-Roy") +
                    "161,Hélène,Bouchard,,,helene-sip-161,,,Support,\n", encoding="utf-8")
    done = office.cli("users", "import", str(path), "--dry-run")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[:3] == ["added: 161", "changed: 160 (name)",
                                            "unchanged: none"]
    assert "dry run: nothing applied" in done.stdout
    assert office.cli("users", "import", str(path)).returncode == 0
    exported = office.cli("users", "export", "--csv")
    assert exported.returncode == 0 and "161,Hélène,Bouchard," in exported.stdout
    assert "helene-sip-161" not in exported.stdout
    listed = json.loads(office.cli("users", "export").stdout)
    assert {"extension": "160", "name": "Gilles Pelletier-Roy"}.items() <= \
        next(u for u in listed if u["extension"] == "160").items()
    path.write_text("Number,VMNoPin\n160,perhaps\n")
    refused = office.cli("users", "import", str(path))
    assert refused.returncode == 2 and "row 2, column VMNoPin" in refused.stderr
    audit = json.loads(office.cli("audit", "--json", "--target", "users/161").stdout)
    assert audit[0]["action"] == "users.import" and "helene-sip" not in json.dumps(audit)


def test_copy_user_over_http_and_the_cli(office: EngineProcess,
                                        clients: dict[str, Client]) -> None:
    alice = clients["department_admin"]
    status, source, headers = alice.call("GET", "/users/102")
    assert status == 200
    status, row, _ = alice.call("POST", "/users/102/copy", {
        "extension": "180", "name": "Inès Gagnon", "email": "ines@example.test",
        "mobile": "+15145550180"},
        {"If-Match": headers["ETag"]})
    assert status == 201, row
    assert row["department"] == "Sales"
    for status, table in source["forwarding"].items():  # all but the greetings (her voice)
        assert row["forwarding"][status] | {"greeting": "default"} == \
            table | {"greeting": "default"}
    secret = row["sip_password"]
    assert secret and "sip_password" not in alice.call("GET", "/users/180")[1]
    assert secret not in office.log()
    done = office.cli("users", "copy", "201", "181", "--name", "Jules Roy",
                      "--email", "jules@example.test")
    assert done.returncode == 0, done.stderr
    printed = done.stdout.splitlines()
    assert printed[0].startswith("181: created from 201")
    assert printed[1].startswith("SIP password: ") and len(printed[1]) > 30
    refused = office.cli("users", "copy", "201", "102", "--name", "Again")
    assert refused.returncode == 2 and "users[" in refused.stderr, refused.stderr


def test_greeting_upload_is_checked_stored_and_set(office: EngineProcess,
                                                   clients: dict[str, Client]) -> None:
    bruno = clients["user"]
    wav = _wav(45)  # 720 kB: over the listener's 64 KiB JSON limit, as a greeting may be
    status, answer, headers = bruno.call("PUT", "/users/102/greetings/lunch", wav,
                                         {"Content-Type": "audio/wav", "If-Match": "*"})
    assert status == 200, answer
    name = answer["greeting"]
    assert answer["user"]["forwarding"]["lunch"]["greeting"] == name
    stored = office.data_dir / name
    assert stored.read_bytes() == wav
    status, row, _ = bruno.call("GET", "/users/102")
    assert row["forwarding"]["lunch"]["greeting"] == name
    # the engine took it: a call to 102 at lunch reaches voicemail with this greeting
    status, plan, _ = bruno.call("GET", "/route/explain?from=%2B15145550199&to=102"
                                        "&status=lunch")
    assert status == 200, plan
    assert [(s["type"], s["greeting"]) for s in plan["steps"]] == [("voicemail", name)], plan
    audit = json.loads(office.cli("audit", "--json", "--target", "users/102").stdout)
    assert audit[0]["after"] == {"forwarding.lunch.greeting": name}

    replaced = _wav(2)
    status, answer, _ = bruno.call("PUT", "/users/102/greetings/lunch", replaced,
                                   {"Content-Type": "audio/wav", "If-Match": headers["ETag"]})
    assert status == 200 and not stored.exists()  # the earlier upload, no longer named

    refusals = [
        (_wav(1, rate=44100, channels=2), "audio/wav", 422,
         "uploaded greetings must be PCM, 8 kHz, 16-bit, mono, at most 10 MB; this file is "
         "44100 Hz, stereo"),
        (b"RIFF....not a wave at all", "audio/wav", 422, "not a WAV file"),
        (wav, "application/octet-stream", 415, "audio/wav"),
        (b"\0" * (10 * 1024 * 1024 + 1), "audio/wav", 413, "10485760"),
    ]
    files = sorted(office.data_dir.glob("*greeting-*"))
    for body, kind, code, words in refusals:
        status, answer, _ = bruno.call("PUT", "/users/102/greetings/dnd", body,
                                       {"Content-Type": kind, "If-Match": "*"})
        assert status == code and words in answer["errors"][0]["message"], answer
    status, answer, _ = bruno.call("PUT", "/users/102/greetings/asleep", wav,
                                   {"Content-Type": "audio/wav", "If-Match": "*"})
    assert status == 404 and answer["errors"][0]["path"] == "status"
    status, answer, _ = bruno.call("PUT", "/users/102/greetings/dnd", wav,
                                   {"Content-Type": "audio/wav", "If-Match": '"1"'})
    assert status == 412
    assert sorted(office.data_dir.glob("*greeting-*")) == files  # refused: nothing kept
    # a JSON write stays under the listener's 64 KiB limit
    status, _, _ = bruno.call("PATCH", "/users/102", {"name": "x" * 70_000}, {"If-Match": "*"})
    assert status == 413


def test_export_after_api_edits_applies_as_no_change(office: EngineProcess,
                                                     tmp_path: Path) -> None:
    exported = tmp_path / "export.toml"
    done = office.cli("provision", "export", str(exported))
    assert done.returncode == 0, done.stderr
    assert "warning" not in done.stderr
    text = exported.read_text()
    # no SIP password, trunk password or PIN without --with-secrets
    assert "-secret-" not in text and "voicemail_pin" not in text and "2468" not in text
    assert "\npassword" not in text
    secret = tmp_path / "secret.toml"
    done = office.cli("provision", "export", "--with-secrets", str(secret))
    assert done.returncode == 0 and "warning: the export contains SIP passwords" in done.stderr
    assert 'password = "bruno-secret-102"' in secret.read_text()
    again = office.cli("provision", "apply", str(exported))
    assert again.returncode == 0 and again.stdout.strip() == "no change", again.stdout
    # applying the file without secrets kept every one of them
    after = tmp_path / "after.toml"
    assert office.cli("provision", "export", "--with-secrets", str(after)).returncode == 0
    assert after.read_text() == secret.read_text()
    # a new user in such a file still needs its password written in
    lacking = tmp_path / "lacking.toml"
    lacking.write_text(text + '\n[[users]]\nextension = "188"\nname = "No Secret"\n'
                              'department = "Sales"\n')
    refused = office.cli("provision", "apply", str(lacking))
    assert refused.returncode != 0 and "password" in refused.stderr, refused.stderr
    # check reads the secrets it lacks from the store too (and never creates one)
    checked = office.cli("provision", "check", str(exported))
    assert checked.returncode == 0 and "valid" in checked.stdout, checked.stderr
    refused = office.cli("provision", "check", str(lacking))
    assert refused.returncode != 0 and ".password: missing" in refused.stderr, refused.stderr
    alone = subprocess.run([office.binary, "provision", "check", str(exported), "--data-dir",
                            str(tmp_path / "no-store")], capture_output=True, text=True,
                           timeout=60, env={k: v for k, v in os.environ.items()
                                            if k != "SWITCHBOARD_DB"})
    assert alone.returncode != 0 and ".password" in alone.stderr, alone.stderr
    assert not (tmp_path / "no-store" / "switchboard.db").exists()
    # the file is the source when used as one: applying the original replaces API edits
    back = office.cli("provision", "apply", str(office.directory))
    assert back.returncode == 0 and "users 102" in back.stdout, back.stdout


# --------------------------------------------------------------------------- two factors


def _stored_totp(extension: str, office: EngineProcess) -> str:
    """The seed as the store keeps it, read past the engine."""
    url = os.environ.get("SWITCHBOARD_DB")
    if url is None:
        with sqlite3.connect(office.data_dir / "switchboard.db") as db:
            row = db.execute("SELECT secret FROM totp WHERE extension = ?",
                             (extension,)).fetchone()
        return str(row[0])

    async def read() -> str:
        conn = await asyncpg.connect(url, timeout=10)  # ?search_path=: the test's schema
        try:
            return str(await conn.fetchval("SELECT secret FROM totp WHERE extension = $1",
                                           extension))
        finally:
            await conn.close()
    return asyncio.run(read())


def _not_now(totp: pyotp.TOTP) -> str:
    """A six-digit code that is none of the ones accepted now."""
    near = {totp.at(time.time() + d) for d in (-30, 0, 30)}
    return next(c for c in (f"{i:06d}" for i in range(10)) if c not in near)


def test_totp_enrolment_over_the_api(office: EngineProcess,
                                     clients: dict[str, Client]) -> None:
    port = office.http_port
    chloe = clients["receptionist"]  # 103, on her own account
    status, begun, _ = chloe.call("POST", "/users/103/totp")
    assert status == 201, begun
    assert begun["qr"].startswith("data:image/svg+xml;") and "<svg" in \
        urllib.parse.unquote(begun["qr"])
    assert pyotp.parse_uri(begun["uri"]).secret == begun["secret"]
    status, info, _ = chloe.call("GET", "/users/103/totp")
    assert info == {"extension": "103", "enabled": False, "pending": True,
                    "recovery_codes_left": 0, "required": False}
    sign_in(port, "103", "receptionist-web-password")  # not on until confirmed
    totp = pyotp.TOTP(begun["secret"])
    status, answer, _ = chloe.call("POST", "/users/103/totp/confirm", {"code": _not_now(totp)})
    assert status == 422 and answer["errors"][0]["path"] == "code"
    status, done, _ = chloe.call("POST", "/users/103/totp/confirm", {"code": totp.now()})
    assert status == 200 and done["enabled"] is True, done
    codes = done["recovery_codes"]
    assert len(set(codes)) == 10
    # sealed at rest, under a key file only its owner reads
    stored = _stored_totp("103", office)
    assert stored.startswith("sb1:") and begun["secret"] not in stored
    assert (office.data_dir / "secret.key").stat().st_mode & 0o777 == 0o600
    # sign-in needs a code now; a recovery code signs in once
    status, answer, _ = Client(port).call("POST", "/auth/token", {
        "user": "103", "password": "receptionist-web-password"})
    assert status == 401 and answer["errors"][0]["path"] == "code"
    again = sign_in(port, "103", "receptionist-web-password", codes[0])
    status, answer, _ = Client(port).call("POST", "/auth/token", {
        "user": "103", "password": "receptionist-web-password", "code": codes[0]})
    assert status == 401
    assert again.call("GET", "/users/103/totp")[1]["recovery_codes_left"] == 9
    status, answer, _ = again.call("POST", "/users/103/totp")
    assert status == 409  # on already: turned off first, with a code
    # turning one's own off takes a code
    assert again.call("POST", "/users/103/totp/disable", {})[0] == 400
    status, answer, _ = again.call("POST", "/users/103/totp/disable", {"code": _not_now(totp)})
    assert status == 422 and answer["errors"][0]["path"] == "code"
    status, answer, _ = again.call("POST", "/users/103/totp/disable", {"code": codes[1]})
    assert status == 200 and answer == {"extension": "103", "enabled": False,
                                        "was_enabled": True}
    sign_in(port, "103", "receptionist-web-password")
    # an admin enrols a user of theirs, and turns it off without a code (a lost phone)
    alice = clients["department_admin"]
    status, begun, _ = alice.call("POST", "/users/102/totp")
    assert status == 201
    code = pyotp.TOTP(begun["secret"]).now()
    assert alice.call("POST", "/users/102/totp/confirm", {"code": code})[0] == 200
    assert clients["user"].call("GET", "/users/102/totp")[1]["enabled"] is True
    status, answer, _ = alice.call("POST", "/users/102/totp/disable", {})
    assert status == 200 and answer["was_enabled"] is True
    audit = json.loads(office.cli("audit", "--json", "--target", "users/102").stdout)
    assert [e["action"] for e in audit[:3]] == ["auth.totp.disable", "auth.totp.enable",
                                                "auth.totp.begin"]
    assert all(e["actor"] == "user:101" for e in audit[:3])
    assert begun["secret"] not in json.dumps(audit) and begun["secret"] not in office.log()
    assert not any(c in office.log() for c in codes)


def test_require_2fa_gives_a_token_for_enrolling_only(office: EngineProcess,
                                                      clients: dict[str, Client]) -> None:
    port = office.http_port
    made = office.cli("apikeys", "create", "--role", "owner", "--name", "2fa-admin")
    assert made.returncode == 0, made.stderr
    admin = Client(port, made.stdout.strip().splitlines()[-1])  # a key is not a person
    status, row, _ = admin.call("PATCH", "/system", {"require_2fa": True}, {"If-Match": "*"})
    assert status == 200 and row["require_2fa"] is True, row
    try:
        status, answer, _ = Client(port).call("POST", "/auth/token", {
            "user": "102", "password": "user-web-password"})
        assert status == 200 and answer["enrol_2fa"] is True
        bruno = Client(port, answer["token"])
        status, answer, _ = bruno.call("GET", "/users")
        assert status == 403 and "two-factor sign-in is required" in \
            answer["errors"][0]["message"] and "/users/102/totp" in \
            answer["errors"][0]["message"]
        # sessions opened before the setting are held to it as well
        assert clients["owner"].call("GET", "/users")[0] == 403
        assert bruno.call("PUT", "/users/102/status", {"status": "away"})[0] == 403
        assert bruno.call("GET", "/users/101/totp")[0] == 403  # one's own enrolment only
        assert bruno.call("GET", "/me")[1]["enrol_2fa"] is True
        status, begun, _ = bruno.call("POST", "/users/102/totp")
        assert status == 201
        status, done, _ = bruno.call("POST", "/users/102/totp/confirm",
                                     {"code": pyotp.TOTP(begun["secret"]).now()})
        assert status == 200
        assert bruno.call("GET", "/users")[0] == 200  # the same token, at once
        status, answer, _ = Client(port).call("POST", "/auth/token", {
            "user": "102", "password": "user-web-password",
            "code": done["recovery_codes"][0]})
        assert status == 200 and answer["enrol_2fa"] is False
        assert admin.call("GET", "/users")[0] == 200
    finally:
        admin.call("POST", "/users/102/totp/disable", {})
        status, row, _ = admin.call("PATCH", "/system", {"require_2fa": False},
                                    {"If-Match": "*"})
        assert status == 200 and "require_2fa" not in row
    assert clients["owner"].call("GET", "/users")[0] == 200


def test_csv_export_neutralises_formulas_and_the_import_undoes_it(
        office: EngineProcess, clients: dict[str, Client]) -> None:
    owner = clients["owner"]
    status, row, _ = owner.call("POST", "/users", {
        "extension": "187", "name": "=HYPERLINK(\"x\") Evil", "mobile": "+15145550187",
        "department": "Support", "password": "sip-secret-187"}, {"If-Match": "*"})
    assert status == 201, row
    status, text, headers = owner.call("GET", "/users/export.csv")
    assert status == 200
    line = next(x for x in text.decode().splitlines() if x.startswith("187,"))
    assert line.startswith("187,\"'=HYPERLINK(\"\"x\"\")\",Evil,") and ",'+15145550187," in line
    status, answer, _ = owner.call("POST", "/users/import", text,
                                   {"Content-Type": "text/csv", "If-Match": headers["ETag"]})
    assert status == 200 and answer["changed"] == {} and "187" in answer["unchanged"], answer
    status, row, _ = owner.call("GET", "/users/187")
    assert row["name"] == "=HYPERLINK(\"x\") Evil" and row["mobile"] == "+15145550187"
    cli = office.cli("users", "export", "--csv")
    assert cli.returncode == 0 and ",'+15145550187," in cli.stdout
