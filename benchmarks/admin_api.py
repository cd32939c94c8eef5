"""The admin API against a real ``switchboard serve``: how soon a change routes, and
how long a 1,000-user CSV import takes, on SQLite and on PostgreSQL.

    .venv/bin/python benchmarks/admin_api.py [--changes 200] [--users 1000]
        [--stores sqlite,postgresql] [--db-url postgresql://127.0.0.1:5432/test]

Per store, two fresh engines (``switchboard serve`` on a generated 4-digit office,
everything on 127.0.0.1, PostgreSQL in a fresh schema of ``--db-url``, default
``$DATABASE_URL``, dropped afterwards):

1. Sign in as the owner (``POST /api/v1/auth/token`` after ``switchboard users
   set-password``), then ``--changes`` times: ``PATCH /users/1001`` with a new
   forward of the ``away`` status to an external number (``If-Match``: the ETag of the
   previous answer), then ``GET /route/explain?...&status=away`` until the plan names
   that number. Timed from the start of the PATCH request to the answer of the first
   explain that shows it (the PATCH alone and the number of explains are reported
   too). Then ``switchboard users import`` of a generated 1,000-user CSV (3CX column
   names), ``--dry-run`` then real, and the same forward loop again on the larger
   directory.
2. ``POST /api/v1/users/import`` of the same CSV on the second engine, dry run
   (``?dry_run=1``) then real.

Not a test: it prints a table, never asserts on time. Every loop is bounded in count
and in time (``--max-seconds`` per loop).
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import asyncpg

HOST = "127.0.0.1"
OWNER, TARGET = "1000", "1001"  # the owner signs in; the target's forwarding changes
PASSWORD = "bench-web-password"


def free_port() -> int:
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            t.bind((HOST, 0))
            port = int(t.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                try:
                    u.bind((HOST, port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port")


def office_toml() -> str:
    return "\n".join([
        '[system]\ndomain = "bench.test"\nextension_digits = 4\n',
        '[[departments]]\nname = "Bench"\ncaller_id = "+15145550100"\ntimezone = "UTC"\n',
        f'[[numbers]]\nnumber = "+15145550100"\nroute_to = "extension:{TARGET}"\n',
        f'[[users]]\nextension = "{OWNER}"\nname = "Owner"\npassword = "sip-{OWNER}-pw"\n'
        'department = "Bench"\nrole = "owner"\nemail = "owner@bench.test"\n',
        f'[[users]]\nextension = "{TARGET}"\nname = "Target"\npassword = "sip-{TARGET}-pw"\n'
        'department = "Bench"\n',
    ])


def users_csv(count: int, first: int = 2000) -> str:
    """``count`` new users in the 3CX export's column names (provisioning/usercsv.py)."""
    lines = ["Number,FirstName,LastName,EmailAddress,MobileNumber,AuthPassword,PIN,"
             "EnableVoicemail,Department"]
    for ext in range(first, first + count):
        lines.append(f"{ext},First{ext},Last{ext},u{ext}@bench.test,+1438555{ext:04d},"
                     f"csv-sip-secret-{ext},{ext % 9000 + 1000},1,Bench")
    return "\n".join(lines) + "\n"


async def _pg(url: str, statement: str) -> None:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@contextmanager
def store_url(store: str, db_url: str) -> Iterator[str | None]:
    """``None`` (the embedded SQLite of the data dir) or a URL on a fresh schema."""
    if store == "sqlite":
        yield None
        return
    schema = f"sb_bench_{uuid.uuid4().hex[:12]}"
    asyncio.run(_pg(db_url, f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{db_url}?search_path={schema}"
    finally:
        asyncio.run(_pg(db_url, f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))


class Engine:
    """``switchboard serve`` on the generated office, in its own data dir."""

    def __init__(self, folder: Path, db: str | None) -> None:
        self.binary = str(Path(sys.executable).parent / "switchboard")
        if not Path(self.binary).exists():
            self.binary = shutil.which("switchboard") or "switchboard"
        self.folder = folder
        # every command (serve and the CLI) reads the store URL from the environment
        self.env = {k: v for k, v in os.environ.items() if k != "SWITCHBOARD_DB"}
        if db is not None:
            self.env["SWITCHBOARD_DB"] = db
        self.http_port = free_port()
        directory = folder / "directory.toml"
        directory.write_text(office_toml())
        self.log = (folder / "engine.log").open("ab")
        self.proc = subprocess.Popen(
            [self.binary, "serve", "--data-dir", str(folder), "--directory", str(directory),
             "--sip", f"{HOST}:{free_port()}", "--http", f"{HOST}:{self.http_port}",
             "--log-format", "json", "--log-level", "warning"],
            stdout=self.log, stderr=self.log, env=self.env, cwd=folder)
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"engine exited {self.proc.returncode}: see {folder}")
            try:
                self.request("GET", "/healthz")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("engine did not come up") from None
                time.sleep(0.1)
        self.conn = http.client.HTTPConnection(HOST, self.http_port, timeout=30)

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([self.binary, *args, "--data-dir", str(self.folder)],
                              input=stdin, capture_output=True, text=True, timeout=300,
                              env=self.env, cwd=self.folder)
        if done.returncode != 0:
            raise RuntimeError(f"switchboard {' '.join(args)}: {done.stderr}")
        return done

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
        conn = http.client.HTTPConnection(HOST, self.http_port, timeout=5)
        try:
            conn.request(method, path, body, headers or {})
            answer = conn.getresponse()
            return answer.status, answer.read(), dict(answer.getheaders())
        finally:
            conn.close()

    def api(self, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, Any, dict[str, str]]:
        """``/api/v1<path>`` on one kept-alive connection, as an admin page would."""
        self.conn.request(method, "/api/v1" + path, body, headers or {})
        answer = self.conn.getresponse()
        raw = answer.read()
        got = {k.lower(): v for k, v in answer.getheaders()}
        parsed = json.loads(raw) if raw and got.get("content-type", "").startswith(
            "application/json") else raw
        return answer.status, parsed, got

    def stop(self) -> None:
        self.conn.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


def sign_in(engine: Engine) -> dict[str, str]:
    engine.cli("users", "set-password", OWNER, stdin=PASSWORD + "\n")
    status, answer, _ = engine.api("POST", "/auth/token", json.dumps(
        {"user": OWNER, "password": PASSWORD}).encode(), {"Content-Type": "application/json"})
    if status != 200:
        raise RuntimeError(f"sign-in: {status} {answer!r}")
    return {"Authorization": f"Bearer {answer['token']}"}


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def forward_loop(engine: Engine, auth: dict[str, str], changes: int, max_seconds: float,
                 offset: int) -> dict[str, Any]:
    """PATCH a forward, poll the route explain until it shows it; ms per change."""
    status, _, headers = engine.api("GET", f"/users/{TARGET}", None, auth)
    assert status == 200, status
    etag = headers["etag"]
    total, patch_only, polls = [], [], []
    stop_at = time.monotonic() + max_seconds
    explain = f"/route/explain?from=%2B15145550199&to={TARGET}&status=away"
    for i in range(changes):
        if time.monotonic() > stop_at:
            break
        number = f"+1514556{(offset + i) % 10000:04d}"
        body = json.dumps({"forwarding": {"away": {"no_answer_seconds": 0, "no_answer": {
            "external": f"external:{number}"}}}}).encode()
        start = time.perf_counter()
        status, answer, headers = engine.api(
            "PATCH", f"/users/{TARGET}", body,
            auth | {"If-Match": etag, "Content-Type": "application/merge-patch+json"})
        patched = time.perf_counter()
        if status != 200:
            raise RuntimeError(f"PATCH: {status} {answer!r}")
        etag = headers["etag"]
        tries = 0
        while True:  # bounded: 5 s per change
            tries += 1
            status, plan, _ = engine.api("GET", explain, None, auth)
            if status == 200 and number in json.dumps(plan["steps"]):
                break
            if time.perf_counter() - start > 5:
                raise RuntimeError(f"the engine never routed to {number}: {plan!r}")
        total.append((time.perf_counter() - start) * 1000)
        patch_only.append((patched - start) * 1000)
        polls.append(tries)
    return {"n": len(total), "p50": statistics.median(total), "p99": percentile(total, 0.99),
            "max": max(total), "patch_p50": statistics.median(patch_only),
            "patch_p99": percentile(patch_only, 0.99), "explains_max": max(polls),
            "explains_mean": statistics.fmean(polls)}


def timed(action: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    result = action()
    return time.perf_counter() - start, result


def run_store(store: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"store": store}
    csv_text = users_csv(args.users)
    csv_path = work / f"users-{store}.csv"
    csv_path.write_text(csv_text)
    with store_url(store, args.db_url) as db:
        folder = work / f"{store}-cli"
        folder.mkdir()
        engine = Engine(folder, db)
        try:
            auth = sign_in(engine)
            out["forward_2"] = forward_loop(engine, auth, args.changes, args.max_seconds, 0)
            out["cli_dry"], dry = timed(lambda: engine.cli("users", "import", str(csv_path),
                                                           "--dry-run"))
            assert "dry run: nothing applied" in dry.stdout, dry.stdout
            out["cli_real"], real = timed(lambda: engine.cli("users", "import", str(csv_path)))
            assert real.stdout.startswith("added: 2000"), real.stdout[:200]
            out["forward_big"] = forward_loop(engine, auth, args.changes, args.max_seconds,
                                              5000)
        finally:
            engine.stop()
    with store_url(store, args.db_url) as db:
        folder = work / f"{store}-api"
        folder.mkdir()
        engine = Engine(folder, db)
        try:
            auth = sign_in(engine)
            headers = auth | {"Content-Type": "text/csv", "If-Match": "*"}
            for key, path in (("api_dry", "/users/import?dry_run=1"),
                              ("api_real", "/users/import")):
                seconds, (status, answer, _) = timed(
                    lambda path=path: engine.api("POST", path, csv_text.encode(), headers))
                if status != 200 or len(answer["added"]) != args.users:
                    raise RuntimeError(f"import: {status} {str(answer)[:300]}")
                out[key] = seconds
            count = len(engine.api("GET", "/users", None, auth)[1])
            assert count == args.users + 2, count
        finally:
            engine.stop()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--changes", type=int, default=200, help="forward changes per loop")
    parser.add_argument("--users", type=int, default=1000, help="users in the CSV")
    parser.add_argument("--stores", default="sqlite,postgresql")
    parser.add_argument("--db-url", default=os.environ.get(
        "DATABASE_URL", "postgresql://127.0.0.1:5432/test"))
    parser.add_argument("--max-seconds", type=float, default=120,
                        help="time budget of each forward loop")
    parser.add_argument("--keep-tmp", action="store_true")
    args = parser.parse_args()
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="sb-admin-bench-"))
    rows = []
    try:
        for store in args.stores.split(","):
            rows.append(run_store(store, args, work))
    finally:
        if not args.keep_tmp:
            shutil.rmtree(work, ignore_errors=True)
    load_after = os.getloadavg()
    print(f"\n{os.cpu_count()} CPUs; load average before {load_before[0]:.2f}, "
          f"after {load_after[0]:.2f} (1 min)")
    print("\n| store | forward change -> routed, 2 users: p50 / p99 / max ms (n) | "
          f"the same, {args.users + 2} users | PATCH alone p50 / p99, 2 / {args.users + 2} "
          f"users | CLI import {args.users}: dry / real s | API import {args.users}: "
          "dry / real s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        small, big = r["forward_2"], r["forward_big"]
        print(f"| {r['store']} | {small['p50']:.1f} / {small['p99']:.1f} / {small['max']:.1f} "
              f"({small['n']}) | {big['p50']:.1f} / {big['p99']:.1f} / {big['max']:.1f} "
              f"({big['n']}) | {small['patch_p50']:.1f} / {small['patch_p99']:.1f}, "
              f"{big['patch_p50']:.1f} / {big['patch_p99']:.1f} | {r['cli_dry']:.2f} / "
              f"{r['cli_real']:.2f} | {r['api_dry']:.2f} / {r['api_real']:.2f} |")
    for r in rows:
        print(f"{r['store']}: explains needed per change: at most "
              f"{max(r['forward_2']['explains_max'], r['forward_big']['explains_max'])} "
              "(1 = the PATCH answered after the engine took the change)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
