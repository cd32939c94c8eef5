"""Shared fixtures: a real ``switchboard serve`` process on free loopback ports."""

from __future__ import annotations

import compileall
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
EXAMPLE = ROOT / "examples" / "directory.toml"


def pytest_configure(config: pytest.Config) -> None:
    """Byte-compile the engine's sources once, before any test (in the controller only
    under pytest-xdist, before its workers start).

    The tests start hundreds of ``switchboard`` processes. Where bytecode is not written
    on import (PYTHONDONTWRITEBYTECODE, as on a CI runner), each of them would compile
    the ~100 modules it imports again: about 0.4 s of CPU a process. compileall writes
    the .pyc files whatever that setting; an unchanged source is skipped."""
    if hasattr(config, "workerinput"):
        return
    for package in ("engine", "routing", "media", "provisioning", "tests/phones"):
        compileall.compile_dir(ROOT / package, quiet=1)


def switchboard_bin() -> str:
    exe = Path(sys.executable).parent / "switchboard"
    if exe.exists():
        return str(exe)
    found = shutil.which("switchboard")
    if found is None:
        raise RuntimeError("the switchboard console script is not installed (make venv)")
    return found


# Ports handed out by free_port(): 10000-19999, below the kernel's ephemeral range
# (32768-60999 here) and the RTP windows (the example's 20000-29999, the tests'
# 40000-49999), so no socket bound to port 0 and no engine's media can take a port
# between free_port() and its user binding it. Under pytest-xdist each worker draws
# from its own slice, so two workers never hand out the same port.
_PORTS_LOW, _PORTS_HIGH = 10000, 20000


def _port_slice() -> range:
    """This process's slice of the free_port() block (all of it outside xdist)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    index = int(worker.removeprefix("gw"))
    size = (_PORTS_HIGH - _PORTS_LOW) // count
    return range(_PORTS_LOW + index * size, _PORTS_LOW + (index + 1) * size)


def _next_ports() -> Iterator[int]:
    # In order from a random start, so a port is not handed out again before the whole
    # slice is (a stopped engine's TIME_WAIT is gone by then); every other port, so a
    # peer that also binds its port's neighbour does not take the next one handed out.
    ports = [p for p in _port_slice() if p % 2]
    start = random.randrange(len(ports))
    while True:
        yield from ports[start:]
        yield from ports[:start]
        start = 0


_PORTS = _next_ports()


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1, from this process's slice."""
    for _ in range(200):
        port = next(_PORTS)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            try:
                t.bind(("127.0.0.1", port))
            except OSError:  # still held (a module's engine, a TIME_WAIT): the next one
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                try:
                    u.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise RuntimeError(f"no free port in {_port_slice()}")


def bench_directory(users: dict[str, str], domain: str = "bench.test") -> str:
    """A directory file text with the given extension -> password users."""
    digits = len(next(iter(users)))
    out = [f'[system]\ndomain = "{domain}"\nextension_digits = {digits}\n',
           '[[departments]]\nname = "Bench"\ncaller_id = "+15145550100"\ntimezone = "UTC"\n',
           # a caller ID is one of the system's numbers
           f'[[numbers]]\nnumber = "+15145550100"\nroute_to = "extension:{next(iter(users))}"\n']
    for ext, pw in users.items():
        out.append(f'[[users]]\nextension = "{ext}"\nname = "User {ext}"\npassword = "{pw}"\n'
                   'department = "Bench"\n')
    return "\n".join(out)


class EngineProcess:
    """``switchboard serve`` in a subprocess, with its own data dir and ports."""

    def __init__(self, data_dir: Path, directory: Path, extra: list[str] | None = None,
                 binary: str | None = None) -> None:
        self.binary = binary or switchboard_bin()  # another install's console script
        self.data_dir = data_dir
        self.directory = directory
        self.extra = extra or []
        self.port = free_port()
        self.http_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir / f"engine-{self.port}.log"
        self._api_key: str | None = None

    @property
    def sip(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, with_directory: bool = True) -> EngineProcess:
        cmd = [self.binary, "serve", "--data-dir", str(self.data_dir),
               "--sip", self.target, "--http", f"127.0.0.1:{self.http_port}",
               "--log-format", "json", *self.extra]
        if with_directory:
            cmd += ["--directory", str(self.directory)]
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, cwd=self.data_dir)
        # generous: a box busy with other work can take many seconds to import the
        # engine; a healthy start returns as soon as /healthz answers
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"engine exited {self.proc.returncode}:\n{self.log()}")
            try:
                self.health()
                return self
            except OSError:
                time.sleep(0.1)
        # not left running: a stray engine would hold its ports and CPU for the tests after
        self.proc.kill()
        self.proc.wait(5)
        raise RuntimeError(f"engine did not come up:\n{self.log()}")

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise RuntimeError(f"engine ignored SIGTERM:\n{self.log()}") from None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def events(self, event: str) -> list[dict[str, object]]:
        """The JSON log lines (``--log-format json``) of ``event``, in order."""
        out = []
        for line in self.log().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and row.get("event") == event:
                out.append(row)
        return out

    def http_get(self, path: str) -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=5) as r:
            data: bytes = r.read()
            return data

    def api(self, path: str, method: str = "GET") -> bytes:
        """``/api/v1<path>`` as an owner (an API key made once with the CLI, as an
        integration would); the body of the answer (an HTTPError for a 4xx/5xx)."""
        if self._api_key is None:
            made = self.cli("apikeys", "create", "--role", "owner", "--name", "tests")
            assert made.returncode == 0, made.stderr
            self._api_key = made.stdout.strip().splitlines()[-1]
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}/api/v1{path}", method=method,
            headers={"Authorization": f"Bearer {self._api_key}", "If-Match": "*"})
        with urllib.request.urlopen(request, timeout=5) as r:
            data: bytes = r.read()
            return data

    def api_get(self, path: str) -> Any:
        """``GET /api/v1<path>`` as an owner, the JSON answer decoded."""
        return json.loads(self.api(path))

    def health(self) -> dict[str, object]:
        result: dict[str, object] = json.loads(self.http_get("/healthz"))
        return result

    def metrics(self) -> dict[str, float]:
        """Samples of /metrics as {'name{labels}': value}."""
        out: dict[str, float] = {}
        for line in self.http_get("/metrics").decode().splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                out[key] = float(value)
        return out

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self.binary, *args, "--data-dir", str(self.data_dir)],
                              capture_output=True, text=True, timeout=60, cwd=self.data_dir)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[EngineProcess]:
    """The example office, served with the default challenges (SHA-256, then MD5)."""
    proc = EngineProcess(tmp_path, EXAMPLE).start()
    yield proc
    code = proc.stop()
    assert code == 0, f"engine did not shut down cleanly ({code}):\n{proc.log()}"


def udp_exchange(target: tuple[str, int], data: bytes, timeout: float = 2.0,
                 expect: int = 1) -> list[bytes]:
    """Send one datagram from a fresh socket and collect up to ``expect`` answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(timeout)
        s.sendto(data, target)
        out: list[bytes] = []
        try:
            while len(out) < expect:
                out.append(s.recv(65535))
        except TimeoutError:
            pass
        return out


def env_database_url() -> str:
    return os.environ.get("DATABASE_URL", "postgresql://127.0.0.1:5432/test")
