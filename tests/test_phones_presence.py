"""Presence (RFC 3856) seen by a real softphone: pjsua2's buddy list
(``tests/phones/pjsua_presence.py``) watches 102 while 102's status changes
(``switchboard status set``, the admin API) and 102 takes a call."""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import EngineProcess, free_port
from tests.e2e_helpers import require_pjsua2
from tests.test_e2e_blf import DIRECTORY

sys.path.insert(0, str(Path(__file__).resolve().parent / "sipp"))
from calls import run_uac, start_uas

from tests.e2e_helpers import register_udp

pytestmark = pytest.mark.peers

HELPER = Path(__file__).resolve().parent / "phones" / "pjsua_presence.py"


class Softphone:
    """The pjsua2 buddy-list script in a subprocess, read as JSON lines."""

    def __init__(self, engine: EngineProcess, log: Path) -> None:
        require_pjsua2()
        self.events: list[dict[str, Any]] = []
        self._buf = b""
        self._log = log.open("wb")
        self.log_path = log
        self.proc = subprocess.Popen(
            [sys.executable, str(HELPER), "--registrar", engine.target, "--user", "103",
             "--password", "pw103", "--domain", "pbx.test", "--buddy", "102"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log)

    def buddy(self, timeout: float = 10.0, **want: object) -> dict[str, Any]:
        """The next buddy report with the ``want``ed fields."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" in self._buf:
                line, self._buf = self._buf.split(b"\n", 1)
                if not line.startswith(b"{"):
                    continue
                event: dict[str, Any] = json.loads(line)
                self.events.append(event)
                if event.get("event") == "buddy" and all(
                        event.get(k) == v for k, v in want.items()):
                    return event
            left = deadline - time.monotonic()
            if left <= 0:
                self._log.flush()
                pytest.fail(f"pjsua2: no buddy report {want} within {timeout} s; events "
                            f"{self.events}\n{self.log_path.read_text(errors='replace')[-3000:]}")
            ready, _, _ = select.select([self.proc.stdout], [], [], min(left, 0.5))
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                if not chunk:
                    pytest.fail(f"pjsua2 exited before {want}; events {self.events}")
                self._buf += chunk

    def stop(self) -> list[dict[str, Any]]:
        with contextlib.suppress(BrokenPipeError, ValueError):
            if self.proc.stdin is not None:
                self.proc.stdin.write(b"stop\n")
                self.proc.stdin.flush()
        out, _ = self.proc.communicate(timeout=20)
        self._log.close()
        rest = (self._buf + out).splitlines()
        return self.events + [json.loads(line) for line in rest if line.startswith(b"{")]


def put_status(pbx: EngineProcess, ext: str, status: str) -> None:
    """``PUT /api/v1/users/EXT/status`` as an owner (an API key made with the CLI)."""
    pbx.api_get("/users")  # makes the key
    request = urllib.request.Request(
        f"http://127.0.0.1:{pbx.http_port}/api/v1/users/{ext}/status", method="PUT",
        data=json.dumps({"status": status}).encode(),
        headers={"Authorization": f"Bearer {pbx._api_key}", "If-Match": "*",
                 "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as answer:
        assert answer.status == 200


@pytest.fixture
def pbx(tmp_path: Path) -> Iterator[EngineProcess]:
    directory = tmp_path / "directory.toml"
    directory.write_text(DIRECTORY)
    engine = EngineProcess(tmp_path, directory, ["--advertise", "127.0.0.1",
                                                 "--digest-algorithms", "MD5"]).start()
    yield engine
    engine.stop()


def test_pjsua2_buddy_sees_status_changes_and_calls(pbx: EngineProcess, tmp_path: Path) -> None:
    phone = Softphone(pbx, tmp_path / "pjsua.log")
    try:
        first = phone.buddy(online=True, sub_state="ACTIVE")
        assert first["note"] == "Available"
        assert pbx.cli("status", "set", "102", "dnd").returncode == 0
        dnd = phone.buddy(note="Do not disturb")
        assert dnd["online"] is False and dnd["activity"] == "busy"
        assert pbx.cli("status", "set", "102", "away").returncode == 0
        away = phone.buddy(note="Away")
        assert away["activity"] == "away"
        assert pbx.cli("status", "set", "102", "lunch").returncode == 0
        phone.buddy(note="Lunch")
        assert pbx.cli("status", "set", "102", "business_trip").returncode == 0
        phone.buddy(note="Business trip")
        put_status(pbx, "102", "dnd")  # the admin API's way
        phone.buddy(note="Do not disturb")
        assert pbx.cli("status", "clear", "102").returncode == 0
        phone.buddy(note="Available", online=True)
        # On a call: 102 (a SIPp phone) answers 101 (a SIPp caller).
        port = free_port()
        register_udp(pbx, "102", "pw102", port)
        callee = start_uas(tmp_path, "answer", port, pbx.target, ring_ms=300)
        call = run_uac(tmp_path, pbx.target, caller="101", dialled="102", expect=200,
                       auth=("101", "pw101"), port=free_port(), hold_ms=1500)
        assert call.ok, call.describe()
        assert callee.result().ok
        on_call = phone.buddy(note="On a call (Available)")
        assert on_call["online"] is True
        phone.buddy(note="Available")  # hung up
    finally:
        events = phone.stop()
    assert {"event": "unsubscribed", "sub_state": "TERMINATED"} in events
    metrics = pbx.metrics()
    assert metrics['switchboard_subscriptions_active{package="presence"}'] == 0
    assert metrics['switchboard_notifies_sent_total{package="presence"}'] >= 8
