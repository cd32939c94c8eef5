"""`make cluster`: Kamailio as the edge and N Switchboard nodes on this machine.

For an office that outgrows one engine process (one core): PostgreSQL holds the
directory and the registrations all nodes share; Kamailio (deploy/kamailio/
kamailio.cfg) spreads new requests over the nodes and keeps phones' NAT flows.
Each node listens on its own SIP port (NODE_HOST:FIRST_NODE_PORT + i) and admin
HTTP port; all use one data folder (voicemail and recordings are files there).
Phones and trunks point at the edge: it tells the nodes where each request came
from (X-Switchboard-Source), and the nodes believe that from the edge's address
only (serve --edge), so a trunk is still known by its own source address. A node
that dies leaves the others serving (the edge takes it out; a survivor ends its
calls); the edge's exit, or the last node's, stops the rest. Ctrl-C (or SIGTERM)
stops everything.

    python deploy/cluster.py [--nodes 2] [--edge 0.0.0.0:5060] [--db URL]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KAMAILIO_CFG = ROOT / "deploy" / "kamailio" / "kamailio.cfg"
DEFAULT_DB = "postgresql://127.0.0.1:5432/switchboard"
START_SECONDS = 30.0
STOP_SECONDS = 15.0


class ClusterError(Exception):
    pass


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="make cluster", description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=2, help="engine processes (default 2)")
    p.add_argument("--edge", default="0.0.0.0:5060",
                   help="where Kamailio listens for phones and trunks (UDP)")
    p.add_argument("--node-host", default="127.0.0.1",
                   help="address the nodes listen on and name in Via/Contact; the edge and "
                        "trunks must reach it (default 127.0.0.1: this machine only)")
    p.add_argument("--first-node-port", type=int, default=5071)
    p.add_argument("--node-ports", default="",
                   help="the nodes' SIP ports, comma-separated (default: from "
                        "--first-node-port on)")
    p.add_argument("--first-http-port", type=int, default=8081)
    p.add_argument("--http-ports", default="",
                   help="the nodes' admin HTTP ports, comma-separated (default: from "
                        "--first-http-port on)")
    p.add_argument("--db", default=os.environ.get("DATABASE_URL", DEFAULT_DB),
                   help=f"the shared PostgreSQL store (default $DATABASE_URL or {DEFAULT_DB}; "
                        "the database is created if missing)")
    p.add_argument("--directory", default=str(ROOT / "examples" / "directory.toml"),
                   help="directory file applied before the nodes start")
    p.add_argument("--data-dir", default="switchboard-data",
                   help="the nodes' folder (voicemail, recordings) and the cluster's logs")
    p.add_argument("--digest-algorithms", default="",
                   help="passed to each node's serve (default: serve's own)")
    p.add_argument("--ctl-socket", default="",
                   help="Kamailio's control socket for kamcmd (default: "
                        "DATA_DIR/cluster/kamailio.ctl)")
    p.add_argument("--serve-args", action="append", default=[], metavar="N=ARGS",
                   help="more serve options for node N (repeatable), e.g. "
                        "'2=--source-rate 0.5' (tests: a node that sheds load)")
    p.add_argument("--edge-source-limit", type=int, default=40, metavar="N",
                   help="new requests one address may send the edge in 2 s before it is "
                        "refused there (503; default 40)")
    p.add_argument("--kamailio", default="kamailio")
    p.add_argument("--switchboard", default=str(Path(sys.executable).parent / "switchboard"))
    p.add_argument("--log-format", choices=("console", "json"), default="console")
    args = p.parse_args(argv)
    if not 1 <= args.nodes <= 32:
        p.error("--nodes: from 1 to 32")
    if args.edge_source_limit < 1:
        p.error("--edge-source-limit: at least 1")
    args.node_extra = {}
    for item in args.serve_args:
        number, eq, rest = item.partition("=")
        if not eq or not number.isdigit() or int(number) < 1:
            p.error(f"--serve-args {item!r}: expected N=ARGS (N the node's number, from 1)")
        args.node_extra[f"node{int(number)}"] = shlex.split(rest)
    return args


def ensure_postgres(url: str) -> None:
    """PostgreSQL answers at ``url`` (started with the system's cluster tools if it
    does not), and the database exists."""
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", str(parts.port or 5432)
    if not _pg_ready(host, port):
        starter = shutil.which("pg_ctlcluster")
        if starter is None:
            raise ClusterError(f"PostgreSQL does not answer at {host}:{port} and "
                               "pg_ctlcluster is missing: install postgresql")
        versions = sorted(Path("/usr/lib/postgresql").glob("*"))
        if not versions:
            raise ClusterError("no PostgreSQL version under /usr/lib/postgresql")
        print(f"starting PostgreSQL {versions[-1].name} (main)", flush=True)
        subprocess.run([starter, versions[-1].name, "main", "start"], check=False, timeout=60)
        deadline = time.monotonic() + START_SECONDS
        while not _pg_ready(host, port):
            if time.monotonic() > deadline:
                raise ClusterError(f"PostgreSQL did not come up at {host}:{port}")
            time.sleep(0.5)
    asyncio.run(_create_database(url))


def _pg_ready(host: str, port: str) -> bool:
    tool = shutil.which("pg_isready")
    if tool is None:
        raise ClusterError("pg_isready is missing: install postgresql-client")
    return subprocess.run([tool, "-q", "-h", host, "-p", port], check=False,
                          timeout=10).returncode == 0


async def _create_database(url: str) -> None:
    import asyncpg

    parts = urllib.parse.urlsplit(url)
    name = parts.path.lstrip("/")
    if not name or not name.replace("_", "").isalnum():
        raise ClusterError(f"database name {name!r}: letters, digits and _ only")
    admin = urllib.parse.urlunsplit(parts._replace(path="/postgres", query=""))
    conn = await asyncpg.connect(admin, timeout=10)
    try:
        if await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name) is None:
            await conn.execute(f'CREATE DATABASE "{name}"')
            print(f"created database {name}", flush=True)
    finally:
        await conn.close()


def kamailio_binary(name: str) -> str:
    found = shutil.which(name) or (name if os.path.isfile(name) else None)
    if found is None:
        for candidate in ("/usr/sbin/kamailio", "/usr/local/sbin/kamailio"):
            if os.path.isfile(candidate):
                return candidate
        raise ClusterError("kamailio not found: apt-get install kamailio (make peers)")
    return found


class Cluster:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = Path(args.data_dir).resolve()
        self.logs = self.work / "cluster"
        # kamcmd's socket (a Unix socket path holds at most 107 bytes)
        self.ctl_socket = Path(args.ctl_socket) if args.ctl_socket else \
            self.logs / "kamailio.ctl"
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        host, _, port = args.edge.rpartition(":")
        self.edge_host, self.edge_port = host or "0.0.0.0", int(port or 5060)
        ports = [int(p) for p in args.node_ports.split(",") if p.strip()] or [
            args.first_node_port + i for i in range(args.nodes)]
        https = [int(p) for p in args.http_ports.split(",") if p.strip()] or [
            args.first_http_port + i for i in range(len(ports))]
        if len(https) != len(ports):
            raise SystemExit("make cluster: --http-ports: one per node")
        self.nodes = [(f"node{i + 1}", port, http)
                      for i, (port, http) in enumerate(zip(ports, https, strict=True))]
        unknown = set(args.node_extra) - {name for name, _, _ in self.nodes}
        if unknown:
            raise SystemExit(f"make cluster: --serve-args for {', '.join(sorted(unknown))}: "
                             f"there are {len(self.nodes)} nodes")

    def _spawn(self, name: str, cmd: list[str]) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("ab")
        # Own process group: a Ctrl-C reaches this script, which stops the rest in order.
        proc = subprocess.Popen(cmd, stdout=log, stderr=log, cwd=self.work,
                                start_new_session=True)
        self.procs.append((name, proc))
        return proc

    def start(self) -> None:
        args = self.args
        self.logs.mkdir(parents=True, exist_ok=True)
        ensure_postgres(args.db)
        kamailio = kamailio_binary(args.kamailio)
        sb = args.switchboard
        common = ["--db", args.db, "--data-dir", str(self.work)]
        # The address the nodes see the edge's requests come from: its listening
        # address, or (listening on every address) the one it reaches the nodes by.
        edge_ip = self.edge_host if self.edge_host not in ("0.0.0.0", "::", "") \
            else args.node_host
        applied = subprocess.run([sb, "provision", "apply", args.directory, *common],
                                 capture_output=True, text=True, timeout=60, check=False)
        if applied.returncode != 0:
            raise ClusterError(f"directory not applied: {applied.stderr.strip()}")
        for name, port, http in self.nodes:
            self._spawn(name, [sb, "serve", *common, "--node-id", name,
                               "--sip", f"{args.node_host}:{port}",
                               "--http", f"127.0.0.1:{http}",
                               "--log-format", args.log_format,
                               "--edge", f"{edge_ip}:{self.edge_port}",
                               *(["--digest-algorithms", args.digest_algorithms]
                                 if args.digest_algorithms else []),
                               *args.node_extra.get(name, [])])
        dispatcher = self.logs / "dispatcher.list"
        dispatcher.write_text("".join(f"1 sip:{args.node_host}:{port}\n"
                                      for _, port, _ in self.nodes))
        cmd = [kamailio, "-f", str(KAMAILIO_CFG), "-DD", "-E",
               "-A", f"LISTEN=udp:{self.edge_host}:{self.edge_port}",
               "-A", f'DISPATCHER_LIST="{dispatcher}"',
               "-A", f'CTL_SOCKET="unix:{self.ctl_socket}"',
               "-A", f"SOURCE_LIMIT={args.edge_source_limit}",
               "-P", str(self.logs / "kamailio.pid")]
        check = subprocess.run([*cmd[:3], *cmd[5:13], "-c"], capture_output=True, text=True,
                               timeout=30, check=False)
        if check.returncode != 0:
            raise ClusterError(f"kamailio refused its config:\n{check.stderr[-2000:]}")
        self._spawn("kamailio", cmd)
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_SECONDS
        pending = {name for name, _, _ in self.nodes}
        while pending:
            for name, proc in self.procs:
                if proc.poll() is not None:
                    raise ClusterError(f"{name} exited ({proc.returncode}); see "
                                       f"{self.logs / (name + '.log')}")
            for name in list(pending):
                if '"serving"' in _read(self.logs / f"{name}.log") or \
                        "serving " in _read(self.logs / f"{name}.log"):
                    pending.discard(name)
            if time.monotonic() > deadline:
                raise ClusterError(f"not serving within {START_SECONDS:.0f} s: "
                                   f"{', '.join(sorted(pending))}")
            time.sleep(0.2)

    def banner(self) -> str:
        args = self.args
        edge = self.edge_host if self.edge_host != "0.0.0.0" else "<this machine's address>"
        lines = [
            f"cluster ready: Kamailio edge on udp {self.edge_host}:{self.edge_port}, "
            f"{len(self.nodes)} nodes",
            f"  point phones (registrar and outbound proxy) and trunks at "
            f"sip:{edge}:{self.edge_port}",
        ]
        pids = dict((name, proc.pid) for name, proc in self.procs)
        for name, port, http in self.nodes:
            lines.append(f"  {name}: sip {args.node_host}:{port}, admin http 127.0.0.1:{http}, "
                         f"pid {pids[name]}")
        lines.append(f"  edge state: kamcmd -s unix:{self.ctl_socket} dispatcher.list")
        lines += [f"  store: {_redact(args.db)}; logs in {self.logs}",
                  f"  nodes and their load: switchboard nodes --db '{_redact(args.db)}'",
                  "  Ctrl-C stops the edge and the nodes"]
        return "\n".join(lines)

    def wait(self) -> str | None:
        """Until a signal, the edge's exit or the last node's: the name of what ended
        it (None: a signal). A node that exits is said once and the others carry on:
        the edge takes it out, and a survivor ends its calls (docs/architecture.md)."""
        told: set[str] = set()
        nodes = {name for name, _, _ in self.nodes}
        while True:
            for name, proc in self.procs:
                if proc.poll() is None or name in told:
                    continue
                told.add(name)
                if name == "kamailio":
                    return name
                print(f"{name} exited ({proc.returncode}); the other nodes carry on",
                      file=sys.stderr, flush=True)
            if nodes <= told:
                return "every node"
            time.sleep(0.5)

    def stop(self) -> list[tuple[str, int]]:
        """The edge first (no new calls come in), then the nodes; each gets SIGTERM
        and STOP_SECONDS to finish, then SIGKILL. Their exit codes."""
        codes: list[tuple[str, int]] = []
        for name, proc in sorted(self.procs, key=lambda p: p[0] != "kamailio"):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(STOP_SECONDS)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
            codes.append((name, proc.returncode))
        return codes


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _redact(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.password:
        netloc = f"{parts.username}:***@{parts.hostname}" + (
            f":{parts.port}" if parts.port else "")
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    return url


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    cluster = Cluster(args)

    def interrupted(signum: int, frame: object) -> None:
        # Once: a second Ctrl-C (or the SIGTERM a wrapper sends along) must not cut
        # the orderly stop short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupted)
    signal.signal(signal.SIGTERM, interrupted)
    exited: str | None = None
    try:
        cluster.start()
        print(cluster.banner(), flush=True)
        exited = cluster.wait()
        print(f"{exited} exited; stopping the cluster", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        print("\nstopping the cluster", flush=True)
    except ClusterError as exc:
        print(f"make cluster: {exc}", file=sys.stderr, flush=True)
        cluster.stop()
        return 2
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    codes = cluster.stop()
    print("stopped: " + ", ".join(f"{name} ({code})" for name, code in codes), flush=True)
    return 1 if exited or any(code not in (0, -signal.SIGTERM) for _, code in codes) else 0


if __name__ == "__main__":
    sys.exit(main())
