"""Two ``switchboard serve`` processes on one store share the admin API's attempt
limits: a guesser who spreads sign-ins or reset requests over the nodes behind a
balancer meets the same limits as one who sends them all to one node.

On PostgreSQL (one schema, as ``make cluster`` runs its nodes) and on SQLite (one
file in one data dir, two processes); the nodes share the data dir, and so the
key that seals TOTP seeds, as ``make cluster`` does.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pyotp
import pytest

from tests.conftest import EXAMPLE, EngineProcess, env_database_url
from tests.test_e2e_admin_api import Client, _pg, set_password, sign_in


@pytest.fixture(params=["postgresql", "sqlite"])
def nodes(request: pytest.FixtureRequest,
          tmp_path: Path) -> Iterator[tuple[EngineProcess, EngineProcess]]:
    schema = f"sb_admin_nodes_{uuid.uuid4().hex[:12]}"
    with pytest.MonkeyPatch.context() as env:
        if request.param == "postgresql":
            asyncio.run(_pg(f'CREATE SCHEMA "{schema}"'))
            env.setenv("SWITCHBOARD_DB", f"{env_database_url()}?search_path={schema}")
        else:
            env.delenv("SWITCHBOARD_DB", raising=False)
        started: list[EngineProcess] = []
        try:
            for _ in range(2):
                started.append(EngineProcess(tmp_path, EXAMPLE).start())
            if request.param == "postgresql":
                assert not (tmp_path / "switchboard.db").exists()
            set_password(started[0], "203", "former-web-password")
            set_password(started[0], "102", "bruno-web-password")
            yield started[0], started[1]
            for node in started:
                assert node.stop() == 0, node.log()
        finally:
            for node in started:
                node.stop()
            if request.param == "postgresql":
                asyncio.run(_pg(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))


def _sign_in(node: EngineProcess, user: str, password: str) -> tuple[int, str]:
    status, answer, _ = Client(node.http_port).call("POST", "/auth/token",
                                                    {"user": user, "password": password})
    return status, answer["errors"][0]["message"] if status >= 400 else ""


def test_sign_in_and_reset_limits_are_shared_by_the_nodes(
        nodes: tuple[EngineProcess, EngineProcess]) -> None:
    a, b = nodes
    locks = {}
    for account in ("203", "ghost@example.test"):
        for i in range(5):  # the account limit, spread over both nodes
            status, message = _sign_in((a, b)[i % 2], account, "wrong-password")
            assert (status, message) == (401, "wrong user, password or code")
        for node in (a, b):  # locked on both: even the right password is refused
            status, message = _sign_in(node, account, "former-web-password")
            assert status == 429, message
            locks[account] = message.split(";")[0]
    # a locked account says so, and says it alike whether it exists or not
    assert locks["203"] == locks["ghost@example.test"] == \
        "too many failed sign-ins for this account"
    assert _sign_in(b, "102", "wrong-password")[0] == 401  # other accounts are not locked

    anonymous = {node: Client(node.http_port) for node in (a, b)}
    for i in range(10):  # the per-address reset limit, spread over both nodes
        status, answer, _ = anonymous[(a, b)[i % 2]].call("POST", "/auth/reset",
                                                          {"user": f"n{i}@example.test"})
        assert status == 202, answer
    for node in (a, b):
        status, answer, headers = anonymous[node].call("POST", "/auth/reset",
                                                       {"user": "102"})
        assert status == 429 and "Retry-After" in headers, answer


def test_a_seed_enrolled_on_one_node_signs_in_on_the_other(
        nodes: tuple[EngineProcess, EngineProcess]) -> None:
    a, b = nodes
    on_a = sign_in(a.http_port, "102", "bruno-web-password")
    status, begun, _ = on_a.call("POST", "/users/102/totp")
    assert status == 201, begun
    totp = pyotp.TOTP(begun["secret"])
    status, done, _ = Client(b.http_port, on_a.token).call("POST", "/users/102/totp/confirm",
                                                           {"code": totp.now()})
    assert status == 200, done
    # the seed opens on both (the nodes share the key); a recovery code is spent on both
    on_b = sign_in(b.http_port, "102", "bruno-web-password", done["recovery_codes"][0])
    status, answer, _ = Client(a.http_port).call("POST", "/auth/token", {
        "user": "102", "password": "bruno-web-password", "code": done["recovery_codes"][0]})
    assert status == 401, answer
    # this step's code was spent by the confirmation: the next step's (one step of
    # drift is accepted) turns it off
    status, answer, _ = on_b.call("POST", "/users/102/totp/disable",
                                  {"code": totp.at(time.time() + 30)})
    assert status == 200 and answer["was_enabled"] is True, answer
