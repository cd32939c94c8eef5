"""Real SIP phones register to the running engine with digest authentication.

* pjsua2 (pjsip 2.15, pip package pjsua2-python) runs in a subprocess
  (``tests/phones/pjsua_register.py``), so that pjsip's threads and any crash
  stay out of pytest; it reports what it saw as JSON lines.
* baresip 1.0.0 (Debian) runs headless with a throw-away config directory.

A missing peer fails the test with a message saying how to install it: these
tests are how the engine is known to work with real phones, so they never skip.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import EXAMPLE, EngineProcess, free_port
from tests.e2e_helpers import require_pjsua2

pytestmark = pytest.mark.peers

PHONES = Path(__file__).resolve().parent / "phones"
PJSUA_HELPER = PHONES / "pjsua_register.py"
DOMAIN = "pbx.example.test"
ALICE = ("101", "alice-secret-101")
BRUNO = ("102", "bruno-secret-102")
BARESIP = "/usr/bin/baresip"
BARESIP_MODULES = Path("/usr/lib/baresip/modules")

EngineFactory = Callable[..., EngineProcess]


@pytest.fixture(scope="module")
def make_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineFactory]:
    """Engines with extra ``serve`` flags, one per set of flags for the module (the
    tests that share one register different users, or the same user one after the
    other, each phone unregistering as it stops); all stopped cleanly at the end."""
    started: dict[tuple[str, ...], EngineProcess] = {}

    def make(*extra: str) -> EngineProcess:
        if extra not in started:
            data = tmp_path_factory.mktemp("engine")
            started[extra] = EngineProcess(data, EXAMPLE, extra=list(extra)).start()
        return started[extra]

    yield make
    codes = [(e.stop(), e) for e in started.values()]
    for code, e in codes:
        assert code == 0, f"engine did not shut down cleanly ({code}):\n{e.log()[-3000:]}"


def registrations(engine: EngineProcess) -> list[dict[str, Any]]:
    listed = engine.cli("registrations", "--json")
    assert listed.returncode == 0, listed.stderr
    rows: list[dict[str, Any]] = json.loads(listed.stdout)
    return rows


def wait_for_rows(engine: EngineProcess, want: Callable[[list[dict[str, Any]]], bool],
                  timeout: float = 10.0) -> list[dict[str, Any]]:
    """Poll ``switchboard registrations --json`` (the store is written in the background)."""
    deadline = time.monotonic() + timeout
    rows = registrations(engine)
    while not want(rows) and time.monotonic() < deadline:
        time.sleep(0.2)
        rows = registrations(engine)
    return rows


def of(ext: str) -> Callable[[list[dict[str, Any]]], bool]:
    return lambda rows: any(r["extension"] == ext for r in rows)


def none_of(ext: str) -> Callable[[list[dict[str, Any]]], bool]:
    return lambda rows: not any(r["extension"] == ext for r in rows)


# -- pjsua2 ------------------------------------------------------------------------------
class PjsuaPhone:
    """``tests/phones/pjsua_register.py`` in a subprocess, read as JSON lines."""

    def __init__(self, engine: EngineProcess, user: str, password: str, log: Path,
                 algorithm: str = "any", hold: float = 30.0) -> None:
        require_pjsua2()
        self.log_path = log
        self.events: list[dict[str, Any]] = []
        self._buf = b""
        self._log = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, str(PJSUA_HELPER), "--registrar", engine.target, "--user", user,
             "--password", password, "--domain", DOMAIN, "--algorithm", algorithm,
             "--timeout", "10", "--hold", str(hold)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log)

    def next_event(self, name: str, timeout: float) -> dict[str, Any]:
        """The next event called ``name`` (earlier ones are kept in ``events``)."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" in self._buf:
                line, self._buf = self._buf.split(b"\n", 1)
                if not line.startswith(b"{"):
                    continue  # not a report line
                event: dict[str, Any] = json.loads(line)
                self.events.append(event)
                if event.get("event") == name:
                    return event
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"pjsua2: no {name!r} within {timeout} s; events {self.events}\n"
                            f"{self.log_tail()}")
            ready, _, _ = select.select([self.proc.stdout], [], [], min(left, 0.5))
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                if not chunk:
                    pytest.fail(f"pjsua2 exited ({self.proc.wait(5)}) before {name!r}; "
                                f"events {self.events}\n{self.log_tail()}")
                self._buf += chunk

    def stop(self) -> int:
        """Ask it to un-REGISTER and destroy pjsip; its exit code (killed if it hangs)."""
        with contextlib.suppress(BrokenPipeError, ValueError):
            if self.proc.stdin is not None:
                self.proc.stdin.write(b"stop\n")
                self.proc.stdin.close()
        try:
            code = self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            pytest.fail(f"pjsua2 did not shut down within 20 s\n{self.log_tail()}")
        finally:
            self._log.close()
        return code

    def done(self) -> bool:
        """Whether the helper reported libDestroy completed."""
        with contextlib.suppress(BaseException):
            self.next_event("done", 1.0)
        return any(e.get("event") == "done" for e in self.events)

    def log_tail(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-3000:]


@contextlib.contextmanager
def pjsua_phone(engine: EngineProcess, user: str, password: str, log: Path,
                algorithm: str = "any") -> Iterator[PjsuaPhone]:
    phone = PjsuaPhone(engine, user, password, log, algorithm)
    try:
        yield phone
    finally:
        if phone.proc.poll() is None:
            phone.stop()


def registered_contact(engine: EngineProcess, ext: str, port: int) -> dict[str, Any]:
    rows = wait_for_rows(engine, of(ext))
    mine = [r for r in rows if r["extension"] == ext]
    assert len(mine) == 1, rows
    assert f"@127.0.0.1:{port}" in mine[0]["contact"], (port, mine)
    assert mine[0]["source"] == f"udp:127.0.0.1:{port}", mine
    return mine[0]


def test_pjsua2_registers_then_wrong_password_is_refused(engine: EngineProcess,
                                                         tmp_path: Path) -> None:
    """Default challenges (SHA-256 then MD5): pjsua2 registers with one it supports."""
    with pjsua_phone(engine, *ALICE, tmp_path / "pjsua-ok.log") as phone:
        result = phone.next_event("result", 15)
        assert result["registered"] and result["codes"] == [200], (result, phone.log_tail())
        # pjsip 2.15.1 answers the MD5 challenge although SHA-256 is listed first
        assert result["algorithms"] and set(result["algorithms"]) <= {"SHA-256", "MD5"}
        row = registered_contact(engine, "101", result["port"])
        assert row["contact"] == f"sip:101@127.0.0.1:{result['port']};ob"
        assert row["user_agent"] == "pjsua2-switchboard-test"
        assert 230 <= row["expires_in"] <= 300  # 80-100 % of the 300 s asked, a few s gone
        assert phone.stop() == 0, phone.log_tail()
        assert phone.done(), phone.log_tail()
    # its un-REGISTER (Expires: 0) removed the binding
    assert wait_for_rows(engine, none_of("101"), timeout=5) == []

    failures_before = engine.metrics().get(
        'switchboard_auth_failures_total{method="REGISTER"}', 0.0)
    with pjsua_phone(engine, ALICE[0], "not-alices-password",
                     tmp_path / "pjsua-bad.log") as phone:
        result = phone.next_event("result", 15)
        assert not result["registered"], result
        assert 200 not in result["codes"] and result["codes"][-1] == 401, result
        assert phone.stop() == 0, phone.log_tail()
        assert phone.done(), phone.log_tail()
    assert registrations(engine) == []
    failures = engine.metrics()['switchboard_auth_failures_total{method="REGISTER"}']
    assert failures > failures_before


@pytest.mark.parametrize("algorithm", ["SHA-256", "MD5"])
def test_pjsua2_registers_with_each_algorithm(make_engine: EngineFactory, tmp_path: Path,
                                              algorithm: str) -> None:
    """Offered only one algorithm, pjsua2 answers with exactly that one."""
    engine = make_engine("--digest-algorithms", algorithm)
    with pjsua_phone(engine, *ALICE, tmp_path / "pjsua.log") as phone:
        result = phone.next_event("result", 15)
        assert result["registered"] and result["codes"] == [200], (result, phone.log_tail())
        assert result["algorithms"] == [algorithm], result
        registered_contact(engine, "101", result["port"])
        assert phone.stop() == 0, phone.log_tail()
        assert phone.done(), phone.log_tail()


# -- baresip -------------------------------------------------------------------------------
def require_baresip() -> str:
    exe = BARESIP if Path(BARESIP).exists() else shutil.which("baresip")
    if exe is None:
        pytest.fail("peer missing: baresip is not installed (apt-get install baresip-core)",
                    pytrace=False)
    if not (BARESIP_MODULES / "account.so").exists():
        pytest.fail(f"peer incomplete: {BARESIP_MODULES}/account.so is missing "
                    "(apt-get install baresip-core)", pytrace=False)
    return exe


def baresip_config(directory: Path, engine: EngineProcess, listen_port: int,
                   user: str, password: str) -> None:
    """A headless baresip: no audio/video/console modules, only accounts and uuid.

    The AOR stays in the engine's domain; ``outbound`` sends the REGISTER to
    the engine (with a Route naming it, which the engine removes as its own).
    """
    directory.mkdir()
    (directory / "accounts").write_text(
        f'<sip:{user}@{DOMAIN}>;auth_pass={password};outbound="sip:{engine.target}"'
        ";regint=60\n")
    (directory / "config").write_text(
        "poll_method epoll\n"
        f"sip_listen 127.0.0.1:{listen_port}\n"
        f"module_path {BARESIP_MODULES}\n"
        "module_tmp uuid.so\n"
        "module_tmp account.so\n")
    (directory / "contacts").write_text("")


def test_baresip_registers(make_engine: EngineFactory, tmp_path: Path) -> None:
    """baresip 1.0.0 registers 102 and un-registers when stopped.

    MD5 only: libre 1.0 (baresip's SIP stack) gives up on the first challenge
    whose algorithm it does not know ("Register: Function not implemented" on
    SHA-256) instead of trying the next one, so the engine's default challenge
    list (SHA-256 first, then MD5) cannot register it.
    """
    exe = require_baresip()
    engine = make_engine("--digest-algorithms", "MD5")
    listen = free_port()
    config = tmp_path / "baresip"
    baresip_config(config, engine, listen, *BRUNO)
    log_path = tmp_path / "baresip.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([exe, "-f", str(config), "-s", "-t", "60"],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        try:
            rows = wait_for_rows(engine, of("102"), timeout=10)
            tail = log_path.read_text(errors="replace")[-3000:]
            assert proc.poll() is None, f"baresip exited {proc.returncode}:\n{tail}"
            mine = [r for r in rows if r["extension"] == "102"]
            assert len(mine) == 1, f"102 not registered: {rows}\n{tail}"
            assert mine[0]["contact"].startswith("sip:102")
            assert mine[0]["contact"].endswith(f"@127.0.0.1:{listen}"), mine
            assert mine[0]["source"] == f"udp:127.0.0.1:{listen}", mine
            assert str(mine[0]["user_agent"]).startswith("baresip"), mine
            assert 50 <= mine[0]["expires_in"] <= 60, mine  # 60 asked: the minimum
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
                    pytest.fail("baresip ignored SIGTERM for 15 s")
    assert proc.returncode == 0, log_path.read_text(errors="replace")[-3000:]
    # baresip un-registers on its way out
    assert wait_for_rows(engine, none_of("102"), timeout=5) == [], log_path.read_text(
        errors="replace")[-3000:]
