"""The wallboard's events stream against a real engine: real HTTP clients read
``GET /api/v1/events`` (Server-Sent Events) while a status is set through the API,
a phone registers and SIPp makes a call; each role sees what it may."""

from __future__ import annotations

import http.client
import json
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import EXAMPLE, EngineProcess, free_port
from tests.e2e_helpers import register_udp
from tests.test_e2e_admin_api import set_password, sign_in

sys.path.insert(0, str(Path(__file__).resolve().parent / "sipp"))
from calls import run_uac, start_uas

pytestmark = pytest.mark.peers

DOMAIN = "pbx.example.test"


@dataclass
class Stream:
    """An SSE reader in a thread: every event, parsed, as it arrives."""

    port: int
    token: str
    query: str = ""
    last_id: str | None = None
    events: list[tuple[int, str, dict[str, Any]]] = field(default_factory=list)
    status: int = 0
    content_type: str = ""
    done: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Stream:
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=40)
        headers = {"Authorization": f"Bearer {self.token}"}
        if self.last_id is not None:
            headers["Last-Event-ID"] = self.last_id
        try:
            conn.request("GET", f"/api/v1/events{self.query}", headers=headers)
            answer = conn.getresponse()
            self.status, self.content_type = answer.status, answer.getheader("Content-Type", "")
            fields: dict[str, str] = {}
            for raw in answer:
                line = raw.decode().rstrip("\r\n")
                if line:
                    name, _, value = line.partition(": ")
                    fields[name] = value
                    continue
                if "data" in fields:
                    self.events.append((int(fields["id"]), fields["event"],
                                        json.loads(fields["data"])))
                fields = {}
        finally:
            conn.close()
            self.done.set()

    def wait_for(self, kind: str, test: Any = lambda e: True) -> dict[str, Any]:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            for _, name, event in list(self.events):
                if name == kind and test(event):
                    return event
            time.sleep(0.05)
        raise AssertionError(f"no {kind} event: {self.events}")


@pytest.fixture(scope="module")
def office(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineProcess]:
    folder = tmp_path_factory.mktemp("admin-events")
    directory = folder / "directory.toml"
    directory.write_text(EXAMPLE.read_text())
    engine = EngineProcess(folder, directory, ["--advertise", "127.0.0.1",
                                               "--digest-algorithms", "MD5"]).start()
    for ext in ("101", "201", "202"):
        set_password(engine, ext, f"web-password-{ext}")
    yield engine
    assert engine.stop() == 0, engine.log()


def test_a_wallboard_sees_status_registration_and_a_call(office: EngineProcess,
                                                         tmp_path: Path) -> None:
    alice = sign_in(office.http_port, "101", "web-password-101")  # Sales department admin
    david = sign_in(office.http_port, "201", "web-password-201")  # manager
    emma = sign_in(office.http_port, "202", "web-password-202")  # a user in Support
    streams = {name: Stream(office.http_port, client.token).start()
               for name, client in (("alice", alice), ("david", david), ("emma", emma))}
    deadline = time.monotonic() + 10
    while not all(s.status for s in streams.values()):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert all(s.status == 200 and s.content_type.startswith("text/event-stream")
               for s in streams.values())

    status, answer, _ = alice.call("PUT", "/users/102/status", {"status": "available"})
    assert status == 200, answer
    phone = free_port()
    register_udp(office, "102", "bruno-secret-102", phone, domain=DOMAIN)
    callee = start_uas(tmp_path, "answer", phone, office.target, ring_ms=1500)
    result = run_uac(tmp_path, office.target, caller="101", dialled="102", expect=200,
                     auth=("101", "alice-secret-101"), port=free_port(), hold_ms=2500,
                     domain=DOMAIN)
    assert result.ok, result.describe()
    assert callee.result().ok

    for name in ("alice", "david"):
        stream = streams[name]
        changed = stream.wait_for("status", lambda e: e["extension"] == "102")
        assert changed["status"] == "available" and changed["previous"] == "business_trip"
        up = stream.wait_for("registration", lambda e: e["extension"] == "102")
        assert up["state"] == "up" and str(phone) in up["contact"]
        started = stream.wait_for("call.started", lambda e: e["callee"] == "102")
        answered = stream.wait_for("call.answered", lambda e: e["callee"] == "102")
        ended = stream.wait_for("call.ended", lambda e: e["callee"] == "102")
        assert started["caller"] == answered["caller"] == ended["caller"] == "101"
        assert started["call_id"] == answered["call_id"] == ended["call_id"]
        assert "102" in answered["extensions"] and answered["answered"]
        assert ended["started"] <= ended["answered"] <= ended["ended"]
        ids = [i for i, _, _ in stream.events]
        assert ids == sorted(ids) and len(set(ids)) == len(ids)
    # a user of another department sees none of it
    time.sleep(1.5)
    assert not [e for e in streams["emma"].events if "102" in json.dumps(e)]

    # a wallboard that reconnects with Last-Event-ID gets what it missed, in order
    first = streams["david"].events[0][0]
    again = Stream(office.http_port, david.token, "?seconds=2", last_id=str(first - 1)).start()
    assert again.done.wait(10) and again.status == 200
    assert [e[0] for e in again.events][:len(streams["david"].events)] == \
        [e[0] for e in streams["david"].events]
    assert Stream(office.http_port, "", "?seconds=1").start().done.wait(10)
