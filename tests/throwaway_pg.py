"""A PostgreSQL server of a test's own: initdb into a temporary folder, a free port,
trust authentication, started and stopped with pg_ctl.

For tests that stop and restart the database under a running engine: the shared
server at 127.0.0.1:5432 is other tests' (and other engineers'), never touched.
initdb refuses to run as root, so as root the server runs as the ``postgres``
user (Debian's package makes it) through ``runuser``. A missing PostgreSQL
fails the test, never skips it.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tests.conftest import free_port

START_SECONDS = 30


def _bin_dir() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not found:
        raise RuntimeError("PostgreSQL server binaries missing: no "
                           "/usr/lib/postgresql/*/bin/initdb (apt-get install postgresql)")
    return found[-1].parent


class ThrowawayPostgres:
    """``start()``, then ``url``; ``stop()`` (fast: active sessions cut, as a restart by
    an operator) and ``start()`` again any number of times; ``destroy()`` at the end."""

    def __init__(self) -> None:
        self.bin = _bin_dir()
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="sb-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self._prefix: list[str] = []
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.root, user.pw_uid, user.pw_gid)
            runuser = shutil.which("runuser") or "/usr/sbin/runuser"
            self._prefix = [runuser, "-u", "postgres", "--"]
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres",
                  "--no-sync", "-E", "UTF8")

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([*self._prefix, str(self.bin / tool), *args],
                              capture_output=True, text=True, timeout=120, check=False,
                              cwd=self.root)
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stderr.strip()}\n"
                               f"{self.server_log()[-2000:]}")
        return done

    def start(self) -> None:
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 "
                   f"-c unix_socket_directories={self.root}")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options,
                  "-w", "-t", str(START_SECONDS), "start")

    def stop(self) -> None:
        """``pg_ctl stop -m fast``: open connections are cut, the server shuts down."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def running(self) -> bool:
        done = subprocess.run([*self._prefix, str(self.bin / "pg_ctl"), "-D", str(self.data),
                               "status"], capture_output=True, text=True, timeout=30,
                              check=False)
        return done.returncode == 0

    def server_log(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def destroy(self) -> None:
        if self.data.exists() and self.running():
            subprocess.run([*self._prefix, str(self.bin / "pg_ctl"), "-D", str(self.data),
                            "-m", "immediate", "-w", "stop"], capture_output=True,
                           timeout=60, check=False)
        deadline = time.monotonic() + 10
        while self.running() and time.monotonic() < deadline:
            time.sleep(0.2)
        shutil.rmtree(self.root, ignore_errors=True)
