"""The cluster with its real pieces: Kamailio from Debian as the edge
(deploy/kamailio/kamailio.cfg), two `switchboard serve` nodes and PostgreSQL, all
started by `make cluster`'s script (deploy/cluster.py) on 127.0.0.1.

A phone registers through the edge (its Path is stored), a SIPp caller calls it
through the edge, the call lands through the node that did not take the REGISTER
and reaches the phone through the edge, and the caller's BYE reaches the node
that owns the call. A missing Kamailio or PostgreSQL is a failure, never a skip.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from engine.sip.message import Request, Response, make_response, parse
from tests.conftest import ROOT, bench_directory, env_database_url, free_port
from tests.e2e_helpers import Ua

sys.path.insert(0, str(Path(__file__).resolve().parent / "sipp"))
from calls import run_uac, start_uas
from sipp import auth_csv_line, run_sipp

pytestmark = pytest.mark.peers

USERS = {"101": "pw101", "102": "pw102"}
CALL_ATTEMPTS = 8  # calls until one is hashed to the other node (each 1/2 likely)
DID = "+15145550100"  # bench_directory's number: rings 101
TRUNK = """
[[trunks]]
name = "carrier"
host = "127.0.0.1"
port = {port}
channels = 4
inbound_from = ["127.0.0.1/32"]
inbound_port = {port}
"""


def kamailio() -> str:
    found = shutil.which("kamailio") or next(
        (p for p in ("/usr/sbin/kamailio", "/usr/local/sbin/kamailio") if os.path.isfile(p)),
        None)
    if found is None:
        pytest.fail("peer missing: kamailio (apt-get install kamailio; make peers)",
                    pytrace=False)
    return found


async def _pg(statement: str, fetch: str | None = None) -> list[tuple[object, ...]]:
    url = env_database_url()
    try:
        conn = await asyncpg.connect(url, timeout=10)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.fail(f"PostgreSQL is required and unreachable at {url}: {exc}", pytrace=False)
    try:
        if fetch is None:
            await conn.execute(statement)
            return []
        return [tuple(r.values()) for r in await conn.fetch(statement)]
    finally:
        await conn.close()


def free_ports(n: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < n:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


@dataclass
class Running:
    proc: subprocess.Popen[str]
    schema: str
    db: str
    edge: tuple[str, int]
    nodes: dict[str, int]  # node id -> SIP port
    logs: Path
    pids: dict[str, int]  # node id -> process id
    ctl: Path  # Kamailio's control socket (kamcmd)
    https: dict[str, int] = field(default_factory=dict)  # node id -> admin HTTP port
    trunk_port: int = 0  # the carrier's source port (its inbound_port), through the edge
    killed: set[str] = field(default_factory=set)  # nodes a test killed (SIGKILL)

    def node_log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")


@pytest.fixture
def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Running]:
    # indirect parametrization: {"node2": "--source-rate 0.5", ...}, more serve options
    extra: dict[str, str] = getattr(request, "param", {})
    kamailio()
    schema = f"sb_cluster_{uuid.uuid4().hex[:12]}"
    asyncio.run(_pg(f'CREATE SCHEMA "{schema}"'))
    db = f"{env_database_url()}?search_path={schema}"
    directory = tmp_path / "directory.toml"
    edge, n1, n2, h1, h2, trunk = free_ports(6)
    # A carrier on this machine: every peer here is 127.0.0.1, so its port names it.
    directory.write_text(bench_directory(USERS, domain="pbx.test") + TRUNK.format(port=trunk))
    ctl_dir = Path(tempfile.mkdtemp(prefix="sbk-"))  # a short path: Unix sockets hold 107 bytes
    ctl = ctl_dir / "ctl"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "deploy" / "cluster.py"), "--edge", f"127.0.0.1:{edge}",
         "--node-ports", f"{n1},{n2}", "--http-ports", f"{h1},{h2}", "--db", db,
         "--directory", str(directory), "--data-dir", str(tmp_path / "data"),
         "--log-format", "json", "--ctl-socket", str(ctl),
         "--digest-algorithms", "MD5",  # SIPp 3.6 reads only the first challenge
         *[arg for node, options in extra.items()
           for arg in ("--serve-args", f"{node.removeprefix('node')}={options}")]],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
        start_new_session=True)
    try:
        assert proc.stdout is not None
        seen: list[str] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            seen.append(line)
            if "Ctrl-C stops" in line:
                break
        banner = "".join(seen)
        assert "cluster ready" in banner, banner
        assert f"sip:127.0.0.1:{edge}" in banner, banner
        pids = {name: int(pid) for name, pid in re.findall(r"(node\d): .*pid (\d+)", banner)}
        assert set(pids) == {"node1", "node2"}, banner
        running = Running(proc, schema, db, ("127.0.0.1", edge), {"node1": n1, "node2": n2},
                          tmp_path / "data" / "cluster", pids, ctl, {"node1": h1, "node2": h2},
                          trunk_port=trunk)
        # Ready when the edge holds both nodes in: on a loaded box its first probe can
        # go unanswered, and a request before the next one would find no node.
        until_flags(ctl, lambda f: len(f) == 2 and all(v.startswith("A") for v in f.values()),
                    "both nodes active at the edge")
        yield running
        # Ctrl-C: everything stops cleanly (what a test killed said so, and the rest ran on)
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
        assert proc.returncode == (1 if running.killed else 0), banner + rest
        assert "stopped: kamailio" in rest, rest
        for node in ("node1", "node2"):
            code = -signal.SIGKILL if node in running.killed else 0
            assert f"{node} ({code})" in rest, rest
    finally:
        if proc.poll() is None:
            proc.kill()  # only when a failure above left it running
            proc.wait(10)
        asyncio.run(_pg(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        shutil.rmtree(ctl_dir, ignore_errors=True)


def edge_byes(cluster: Running, node: str) -> int:
    """Calls the node saw the caller hang up (its BYE: SIPp sends every request to
    the edge, which relays it to the node that owns the dialog)."""
    return sum(1 for line in cluster.node_log(node).splitlines()
               if line.startswith("{") and json.loads(line).get("event") == "caller hung up")


def answer_bye(ua: Ua, timeout: float = 8) -> Request | None:
    """The node's BYE to the phone, answered 200 (None if none came in time)."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        msg = ua.recv(left)
        if isinstance(msg, Request) and msg.method == "BYE":
            ua.sip.sendto(make_response(msg, 200, None, [], b"", None).to_bytes(), ua.engine)
            return msg
    return None


def test_phone_registered_through_the_edge_is_called_through_the_other_node(
        cluster: Running, tmp_path: Path) -> None:
    phone = Ua(cluster.edge)
    try:
        ok = phone.register("102", "pw102")
        # RFC 3327: the edge added its Path with where the phone's REGISTER came from
        path = ok.get("path") or ""
        assert f"127.0.0.1:{cluster.edge[1]}" in path and "received=" in path, path
        query = (f'SELECT path, node FROM "{cluster.schema}".bindings WHERE aor = \'102\' '
                 "AND NOT gone")
        deadline = time.monotonic() + 10  # written behind the 200, off the hot path
        rows = asyncio.run(_pg(query, fetch="x"))
        while not rows and time.monotonic() < deadline:
            time.sleep(0.2)
            rows = asyncio.run(_pg(query, fetch="x"))
        assert len(rows) == 1, rows
        stored_path, registrar_node = json.loads(str(rows[0][0])), str(rows[0][1])
        assert stored_path and f"received=sip:127.0.0.1:{phone.port}" in stored_path[0]
        assert registrar_node in cluster.nodes
        other = next(n for n in cluster.nodes if n != registrar_node)
        other_port = cluster.nodes[other]
        time.sleep(2.5)  # the other node reads the binding within a second or two
        landed: Request | None = None
        for attempt in range(CALL_ATTEMPTS):
            byes_before = {n: edge_byes(cluster, n) for n in cluster.nodes}
            caller_port = free_port()
            call = run_uac_in_thread(tmp_path / f"call{attempt}", cluster.edge, caller_port)
            leg = phone.take_call()
            bye = answer_bye(phone)
            result = call.result()
            assert result.successful == 1 and result.failed == 0, result
            # the INVITE came from the edge (top Via), which had it from a node
            vias = leg.vias
            assert vias[0].port == cluster.edge[1] and len(vias) >= 2, leg.get_all("via")
            assert leg.uri_text == f"sip:102@127.0.0.1:{phone.port}"
            if vias[1].port == other_port:
                landed = leg
                assert bye is not None and bye.call_id == leg.call_id
                # the caller's BYE came through the edge to the node that owned the call
                assert edge_byes(cluster, other) == byes_before[other] + 1, \
                    cluster.node_log(other)[-3000:]
                assert edge_byes(cluster, registrar_node) == byes_before[registrar_node]
                break
        assert landed is not None, f"no call hashed to {other} in {CALL_ATTEMPTS} calls"
    finally:
        phone.close()
    nodes = subprocess.run(
        [str(Path(sys.executable).parent / "switchboard"), "nodes", "--json", "--db",
         cluster.db, "--data-dir", str(tmp_path)], capture_output=True, text=True,
        timeout=30, check=True)
    listed = {r["id"]: r for r in json.loads(nodes.stdout)}
    assert set(listed) == {"node1", "node2"} and all(r["up"] for r in listed.values())
    assert {r["address"] for r in listed.values()} == {
        f"127.0.0.1:{p}" for p in cluster.nodes.values()}


class _Call:
    def __init__(self, run: object) -> None:
        import threading

        self._box: list[object] = []
        self._thread = threading.Thread(target=lambda: self._box.append(run()), daemon=True)
        self._thread.start()

    def result(self, timeout: float = 60) -> Any:
        self._thread.join(timeout)
        assert self._box, f"SIPp did not finish within {timeout:.0f} s"
        return self._box[0]


def run_uac_in_thread(work: Path, edge: tuple[str, int], port: int) -> _Call:
    work.mkdir(parents=True, exist_ok=True)
    return _Call(lambda: run_uac(work, f"{edge[0]}:{edge[1]}", caller="101", dialled="102",
                                 expect=200, auth=("101", "pw101"), port=port, hold_ms=300))


def dispatcher_flags(ctl: Path) -> dict[int, str]:
    """Node SIP port -> its state at the edge (kamcmd dispatcher.list: AP active,
    IP inactive and probed, ...)."""
    kamcmd = shutil.which("kamcmd") or "/usr/sbin/kamcmd"
    if not os.path.isfile(kamcmd):
        pytest.fail("peer missing: kamcmd (in Debian's kamailio package)", pytrace=False)
    out = subprocess.run([kamcmd, "-s", f"unix:{ctl}", "dispatcher.list"],
                         capture_output=True, text=True, timeout=10, check=True).stdout
    flags: dict[int, str] = {}
    port: int | None = None
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("URI:"):
            port = int(line.rsplit(":", 1)[1])
        elif line.startswith("FLAGS:") and port is not None:
            flags[port] = line.split(":", 1)[1].strip()
    return flags


def test_a_node_that_stops_answering_is_taken_out_and_comes_back(
        cluster: Running, tmp_path: Path) -> None:
    ctl = cluster.ctl
    until_flags(ctl, lambda f: all(v.startswith("A") for v in f.values()) and len(f) == 2,
                "both nodes active")
    stopped = cluster.pids["node2"]
    os.kill(stopped, signal.SIGSTOP)  # frozen: it answers nothing
    try:
        until_flags(ctl, lambda f: f[cluster.nodes["node2"]].startswith("I")
                    and f[cluster.nodes["node1"]].startswith("A"), "node2 taken out")
        # every new call now goes to node1: several Call-IDs, all answered by it
        before = options_seen(cluster, "node1")
        for i in range(6):
            reply = options_through_edge(cluster.edge, f"out-{i}-{uuid.uuid4().hex}")
            assert reply.startswith("SIP/2.0 200"), reply
        assert options_seen(cluster, "node1") >= before + 6
    finally:
        os.kill(stopped, signal.SIGCONT)
    until_flags(ctl, lambda f: f[cluster.nodes["node2"]].startswith("A"), "node2 back")


def until_flags(ctl: Path, check: Any, what: str, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    flags: dict[int, str] = {}
    while time.monotonic() < deadline:
        flags = dispatcher_flags(ctl)
        if flags and check(flags):
            return
        time.sleep(0.5)
    raise AssertionError(f"not within {seconds} s: {what} ({flags})")


def options_seen(cluster: Running, node: str) -> int:
    """OPTIONS the node answered that did not come from the edge's own probing."""
    return sum(1 for line in cluster.node_log(node).splitlines()
               if '"OPTIONS"' in line and '"out-' in line)


def options_through_edge(edge: tuple[str, int], call_id: str) -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(10)
        port = s.getsockname()[1]
        s.sendto((f"OPTIONS sip:pbx.test SIP/2.0\r\n"
                  f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{call_id};rport\r\n"
                  f"Max-Forwards: 70\r\nFrom: <sip:probe@pbx.test>;tag=t{port}\r\n"
                  f"To: <sip:pbx.test>\r\nCall-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\n"
                  f"Content-Length: 0\r\n\r\n").encode(), edge)
        while True:
            text = s.recv(65535).decode(errors="replace")
            if not text.startswith("SIP/2.0 1"):
                return text.split("\r\n", 1)[0]


class Responder:
    """A node stand-in on a UDP port that answers every OPTIONS with ``status``
    (503: a node shedding load), in a thread; bounded by ``seconds``."""

    def __init__(self, status: int, seconds: float = 60.0) -> None:
        import threading

        self.status = status
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.answered = 0
        self._stop = threading.Event()
        self._deadline = time.monotonic() + seconds
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        from engine.sip.message import parse

        while not self._stop.is_set() and time.monotonic() < self._deadline:
            try:
                data, addr = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            msg = parse(data)
            if isinstance(msg, Request) and msg.method == "OPTIONS":
                self.sock.sendto(make_response(msg, self.status).to_bytes(), addr)
                self.answered += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def test_a_node_answering_503_to_the_probe_is_taken_out(tmp_path: Path) -> None:
    # The edge's probing, against the real Kamailio: a node that answers 503 (as the
    # engine does when it sheds load) is taken out; answering 200 brings it back.
    binary = kamailio()
    shedding = Responder(503)
    try:
        edge = free_port()
        listing = tmp_path / "dispatcher.list"
        listing.write_text(f"1 sip:127.0.0.1:{shedding.port}\n")
        ctl_dir = Path(tempfile.mkdtemp(prefix="sbk-"))
        ctl = ctl_dir / "ctl"
        log = (tmp_path / "kamailio.log").open("wb")
        proc = subprocess.Popen(
            [binary, "-f", str(ROOT / "deploy" / "kamailio" / "kamailio.cfg"), "-DD", "-E",
             "-A", f"LISTEN=udp:127.0.0.1:{edge}", "-A", f'DISPATCHER_LIST="{listing}"',
             "-A", f'CTL_SOCKET="unix:{ctl}"', "-P", str(tmp_path / "kamailio.pid")],
            stdout=log, stderr=log, start_new_session=True)
        try:
            until_socket(ctl)
            until_flags(ctl, lambda f: f.get(shedding.port, "").startswith("I"),
                        "the 503 node taken out")
            assert shedding.answered >= 1
            # no node left: a new call is refused by the edge itself
            assert options_through_edge(("127.0.0.1", edge), "none-left").startswith(
                "SIP/2.0 503")
            shedding.status = 200
            until_flags(ctl, lambda f: f.get(shedding.port, "").startswith("A"),
                        "the node back once it answers 200")
        finally:
            proc.terminate()
            proc.wait(15)
            log.close()
            shutil.rmtree(ctl_dir, ignore_errors=True)
    finally:
        shedding.close()


def until_socket(path: Path, seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"Kamailio's control socket {path} not there in {seconds} s")
        time.sleep(0.1)


# ---------------------------------------------------------------------- calls owned by a node


def wait_for_binding(cluster: Running, aor: str) -> None:
    """Both nodes hold ``aor``'s registration (written behind, read by the other node
    within a second or two)."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        nodes = json.loads(subprocess.run(
            [str(Path(sys.executable).parent / "switchboard"), "nodes", "--json", "--db",
             cluster.db, "--data-dir", str(cluster.logs)], capture_output=True, text=True,
            timeout=30, check=True).stdout)
        if len(nodes) == 2 and all(n["registrations"] >= 1 for n in nodes):
            return
        time.sleep(0.3)
    raise AssertionError(f"not within 15 s: both nodes hold {aor}'s registration")


def caller_waiting_for_bye(cluster: Running, work: Path) -> _Call:
    """A SIPp caller (101) through the edge that stays on the call until it gets a BYE."""
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    return _Call(lambda: run_uac(work, f"{cluster.edge[0]}:{cluster.edge[1]}", caller="101",
                                 dialled="102", expect=200, auth=("101", "pw101"), port=port,
                                 wait_bye_ms=45_000, timeout=60))


def owner_of(cluster: Running, leg: Request) -> str:
    """The node that sent ``leg`` (the INVITE the phone got): the Via under the edge's."""
    port = leg.vias[1].port
    return next(name for name, p in cluster.nodes.items() if p == port)


def stored_dialogs(cluster: Running) -> list[tuple[object, ...]]:
    return asyncio.run(_pg(f'SELECT id, node, claimed_by FROM "{cluster.schema}".dialogs',
                           fetch="x"))


def log_events(cluster: Running, node: str, event: str) -> list[dict[str, Any]]:
    return [e for e in (json.loads(line) for line in cluster.node_log(node).splitlines()
                        if line.startswith("{")) if e.get("event") == event]


def test_a_dead_nodes_calls_are_ended_by_a_survivor(cluster: Running, tmp_path: Path) -> None:
    # Two SIPp phones through the edge: 102 registers and answers (then waits for a
    # BYE), 101 calls it and stays on the call until a BYE comes.
    edge = f"{cluster.edge[0]}:{cluster.edge[1]}"
    callee_port = free_port()
    registered = run_sipp("register_auth.xml", edge, [auth_csv_line("102", "pw102")], calls=1,
                          rate=1, timeout=20, keys={"domain": "pbx.test"},
                          extra_args=["-p", str(callee_port), "-t", "u1"],
                          workdir=tmp_path / "register")
    assert registered.successful == 1, registered.describe()
    wait_for_binding(cluster, "102")
    for work in ("callee", "callee2"):
        (tmp_path / work).mkdir()
    callee = start_uas(tmp_path / "callee", "answer", callee_port, edge, ring_ms=200,
                       timeout=90)
    caller = caller_waiting_for_bye(cluster, tmp_path / "call")
    # the answered call's record reaches the store, behind the answer: it names the
    # node holding the call, whose id also ends the Call-ID of the leg it made
    deadline = time.monotonic() + 20
    while not (rows := stored_dialogs(cluster)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(rows) == 1 and rows[0][2] == "", rows
    owner = str(rows[0][1])
    survivor = next(n for n in cluster.nodes if n != owner)
    legs = json.loads(str(asyncio.run(_pg(
        f'SELECT legs FROM "{cluster.schema}".dialogs', fetch="x"))[0][0]))
    assert len(legs) == 2 and legs[1]["call_id"].split("@")[0].endswith(f"-{owner}"), legs
    os.kill(cluster.pids[owner], signal.SIGKILL)
    cluster.killed.add(owner)
    killed_at = time.monotonic()
    # Both phones' SIPp finish once they took their BYE (answered 200): waited for
    # 30 s from the kill at most.
    answered = callee.result(timeout=30)
    callee_s = time.monotonic() - killed_at
    result = caller.result(timeout=max(1.0, 30 - callee_s))
    caller_s = time.monotonic() - killed_at
    assert answered.successful == 1 and answered.failed == 0, answered.describe()
    assert result.successful == 1 and result.failed == 0, result.describe()
    print(f"BYE after kill -9: callee <= {callee_s:.1f} s, caller <= {caller_s:.1f} s")
    [said] = log_events(cluster, survivor, "node dead: its calls ended")
    assert said["node"] == owner and said["calls"] == 1 and said["by"] == survivor
    deadline = time.monotonic() + 10  # the claimed record is deleted behind the BYEs
    while (rows := stored_dialogs(cluster)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert rows == [], rows
    with urllib.request.urlopen(
            f"http://127.0.0.1:{cluster.https[survivor]}/metrics", timeout=10) as r:
        metrics = r.read().decode()
    assert "switchboard_calls_ended_for_dead_node_total 1.0" in metrics
    # a new call still completes, through the survivor (the edge took the dead out)
    until_flags(cluster.ctl, lambda f: f[cluster.nodes[owner]].startswith("I"),
                f"{owner} taken out")
    answered_before = len(log_events(cluster, survivor, "call answered"))
    callee = start_uas(tmp_path / "callee2", "answer", callee_port, edge, ring_ms=200)
    call = run_uac_in_thread(tmp_path / "after", cluster.edge, free_port())
    result = call.result()
    assert result.successful == 1 and result.failed == 0, result.describe()
    assert callee.result().successful == 1
    assert len(log_events(cluster, survivor, "call answered")) == answered_before + 1


def bye_from_callee(ua: Ua, invite: Request, cseq: int = 1) -> Response:
    """The called phone hangs up: a BYE in the dialog ``invite`` made (RFC 3261 s12.2.1.1,
    as its UAS: the Record-Route in order as Route, the caller's Contact as target),
    sent to the edge; its final response."""
    lines = [f"BYE {invite.contacts[0].uri} SIP/2.0",
             f"Via: SIP/2.0/UDP 127.0.0.1:{ua.port};branch=z9hG4bKcb{uuid.uuid4().hex};rport",
             "Max-Forwards: 70", *[f"Route: {r}" for r in invite.get_all("record-route")],
             f"From: {invite.get('to')};tag=ua{ua.port}", f"To: {invite.get('from')}",
             f"Call-ID: {invite.call_id}", f"CSeq: {cseq} BYE", "Content-Length: 0", "", ""]
    ua.sip.sendto("\r\n".join(lines).encode(), ua.engine)
    return ua.response_to("BYE", cseq)


def test_a_phones_bye_reaches_the_node_that_made_its_call(
        cluster: Running, tmp_path: Path) -> None:
    phone = Ua(cluster.edge)
    try:
        phone.register("102", "pw102")
        wait_for_binding(cluster, "102")
        registrar = str(asyncio.run(_pg(
            f'SELECT node FROM "{cluster.schema}".bindings WHERE aor = \'102\'',
            fetch="x"))[0][0])
        landed: str | None = None
        for attempt in range(CALL_ATTEMPTS):
            before = {n: len(log_events(cluster, n, "callee hung up")) for n in cluster.nodes}
            caller = caller_waiting_for_bye(cluster, tmp_path / f"call{attempt}")
            leg = phone.take_call()
            maker = owner_of(cluster, leg)
            ok = bye_from_callee(phone, leg)
            assert ok.status == 200, ok.to_bytes()[:300]
            result = caller.result()
            assert result.successful == 1, result  # the caller got the node's BYE
            after = {n: len(log_events(cluster, n, "callee hung up")) for n in cluster.nodes}
            # the BYE went to the node that made the leg (named in its Call-ID), only
            assert leg.call_id.split("@")[0].endswith(f"-{maker}")
            assert after[maker] == before[maker] + 1, cluster.node_log(maker)[-2000:]
            assert all(after[n] == before[n] for n in cluster.nodes if n != maker)
            if maker != registrar:  # made by the node that did not take the REGISTER
                landed = maker
                break
        assert landed is not None, f"no call made by the other node in {CALL_ATTEMPTS} calls"
        # every call ended: its record is deleted (behind the BYE)
        deadline = time.monotonic() + 10
        while (rows := stored_dialogs(cluster)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert rows == [], rows
    finally:
        phone.close()


# ---------------------------------------------------------------------- trunks through the edge


def test_a_trunk_calls_a_did_through_the_edge(cluster: Running, tmp_path: Path) -> None:
    # The edge names the carrier's address in X-Switchboard-Source and the nodes
    # believe it from the edge: the INVITE is taken as the trunk's (no challenge:
    # SIPp sends no credentials and expects 200) and rings 101, registered through
    # the edge, whichever node took either.
    phone = Ua(cluster.edge)
    try:
        phone.register("101", "pw101")
        wait_for_binding(cluster, "101")
        for attempt in range(2):  # two Call-IDs: most likely both nodes take one
            work = tmp_path / f"trunk{attempt}"
            work.mkdir()
            call = _Call(lambda work=work: run_uac(  # type: ignore[misc]
                work, f"{cluster.edge[0]}:{cluster.edge[1]}", caller="+15145550199",
                dialled=DID, expect=200, port=cluster.trunk_port, hold_ms=300))
            leg = phone.take_call()
            assert leg.uri_text == f"sip:101@127.0.0.1:{phone.port}"
            assert leg.vias[0].port == cluster.edge[1]  # through the edge, as phones are
            bye = answer_bye(phone)
            result = call.result()
            assert result.successful == 1 and result.failed == 0, result.describe()
            assert bye is not None and bye.call_id == leg.call_id
        routed = [e for n in cluster.nodes for e in log_events(cluster, n, "call routed")]
        assert len(routed) == 2 and all(e.get("trunk") == "carrier" for e in routed), routed
    finally:
        phone.close()


def test_a_phone_writing_the_header_is_not_a_trunk(cluster: Running) -> None:
    # The carrier's address in X-Switchboard-Source, from a phone: sent to a node
    # directly (not from the edge: ignored, logged) and through the edge (which puts
    # the real source in its place). Both INVITEs are a phone's: 407, challenged.
    spoof = f"X-Switchboard-Source: 127.0.0.1:{cluster.trunk_port};proto=udp\r\n"
    uri = f"sip:{DID}@pbx.test"
    for name, target in (("node1", ("127.0.0.1", cluster.nodes["node1"])),
                         ("edge", cluster.edge)):
        ua = Ua(target)
        try:
            call_id = f"spoof{name}{uuid.uuid4().hex[:8]}"
            ua.invite(uri, "101", call_id, extra=spoof)
            final = ua.final(1)
            assert final.status == 407, final.to_bytes()[:300]
            ua.ack(final, uri, f"z9hG4bK{call_id}1")
        finally:
            ua.close()
    [ignored] = log_events(cluster, "node1", "X-Switchboard-Source ignored")
    assert ignored["reason"] == "not an edge" and ignored["method"] == "INVITE", ignored
    assert not log_events(cluster, "node2", "X-Switchboard-Source ignored")
    for node in cluster.nodes:
        assert not any(e.get("trunk") for e in log_events(cluster, node, "call routed"))


# ---------------------------------------------------------------------- per source, behind the edge
# Every address in 127.0.0.0/8 is this machine's: the edge and the nodes are on
# 127.0.0.1 (the nodes' --edge), a flooding host on 127.0.0.2, another office's
# phone on 127.0.0.3.
FLOODER = "127.0.0.2"
OTHER_HOST = "127.0.0.3"
FLOOD = 200  # new requests the flooder sends the edge, as fast as it can


def sip_request(method: str, port: int, ip: str, call_id: str, user: str = "102",
                cseq: int = 1, extra: str = "") -> bytes:
    uri = "sip:pbx.test" if method in ("REGISTER", "OPTIONS") else f"sip:{DID}@pbx.test"
    to = f"<sip:{user}@pbx.test>" if method == "REGISTER" else f"<{uri}>"
    return (f"{method} {uri} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {ip}:{port};branch=z9hG4bK{call_id}{cseq};rport\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:{user}@pbx.test>;tag=f{port}\r\nTo: {to}\r\n"
            f"Call-ID: {call_id}\r\nCSeq: {cseq} {method}\r\n"
            f"Contact: <sip:{user}@{ip}:{port}>\r\nExpires: 60\r\n{extra}"
            "Content-Length: 0\r\n\r\n").encode()


def register_from(ip: str, edge: tuple[str, int], user: str, password: str) -> str:
    """``user`` registers from ``ip`` through the edge (challenge, then credentials):
    the final status line."""
    from engine.sip.auth import build_authorization

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((ip, 0))
        s.settimeout(10)
        port = s.getsockname()[1]
        call_id = f"reg{uuid.uuid4().hex}"
        auth = ""
        for cseq in (1, 2):
            s.sendto(sip_request("REGISTER", port, ip, call_id, user, cseq, auth), edge)
            while True:
                reply = parse(s.recv(65535))
                if isinstance(reply, Response) and reply.status >= 200:
                    break
            if reply.status != 401:
                break
            auth = "Authorization: " + build_authorization(
                reply.get_lines("www-authenticate")[0], "REGISTER", "sip:pbx.test", user,
                password, "cn1") + "\r\n"
        return f"{reply.status} {reply.reason}"


def stream_options(node: tuple[str, int], ip: str, count: int) -> list[str]:
    """``count`` TCP connections from ``ip`` to ``node``, held open together, each
    sending one OPTIONS: each one's first status line, or "refused" when the node
    closed it unanswered."""
    conns: list[socket.socket] = []
    answers: list[str] = []
    try:
        for i in range(count):
            c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            conns.append(c)
            c.bind((ip, 0))
            c.settimeout(10)
            c.connect(node)
            port = c.getsockname()[1]
            c.sendall(sip_request("OPTIONS", port, ip, f"tcp{i}-{uuid.uuid4().hex}").replace(
                b"SIP/2.0/UDP", b"SIP/2.0/TCP"))
            try:
                data = c.recv(65535)
            except (ConnectionResetError, TimeoutError):
                data = b""
            answers.append(data.split(b"\r\n", 1)[0].decode() if data else "refused")
    finally:
        for c in conns:
            c.close()
    return answers


@pytest.mark.parametrize("cluster", [{"node1": "--tcp-per-source 4",
                                      "node2": "--tcp-per-source 4"}], indirect=True)
def test_a_flooding_host_is_refused_at_the_edge_and_another_still_registers(
        cluster: Running) -> None:
    # One host floods the edge with new REGISTERs and INVITEs: past the edge's limit
    # for its address (pike, 40 in 2 s) the edge answers them 503 itself; the rest
    # reach the nodes (challenged). Another host's phone registers at once. Behind
    # the edge the nodes hold TCP connections per real source, not per edge.
    refused = passed = 0
    answers: dict[str, int] = {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((FLOODER, 0))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        port = s.getsockname()[1]
        for i in range(FLOOD):
            method = "REGISTER" if i % 2 else "INVITE"
            s.sendto(sip_request(method, port, FLOODER, f"flood{i}-{uuid.uuid4().hex[:8]}"),
                     cluster.edge)
        s.settimeout(3)
        finals: set[str] = set()
        while refused + passed < FLOOD:
            try:
                reply = parse(s.recv(65535))
            except TimeoutError:
                break
            if not isinstance(reply, Response) or reply.status < 200:
                continue
            key = reply.call_id
            if key in finals:
                continue  # a retransmitted final response
            finals.add(key)
            if reply.status == 503 and reply.reason == "Too many requests from your address":
                assert reply.get("retry-after"), reply.to_bytes()[:300]
                refused += 1
            else:
                passed += 1  # the nodes' challenge (or their own per-source 503)
                what = f"{reply.status} {reply.reason}"
                answers[what] = answers.get(what, 0) + 1
    print(f"flood of {FLOOD} new requests from one host: {refused} refused at the edge, "
          f"{passed} passed to the nodes (their answers: {answers})")
    assert refused >= FLOOD // 2 and 0 < passed <= FLOOD - refused, (refused, passed)
    # a node's own 503 (both nodes refused) goes back as a 503, never a 500
    assert not any(what.startswith("500") for what in answers), answers
    # The nodes count the edge as no single source: more than --tcp-per-source (4)
    # connections from the edge's address are all served (nobody registered yet);
    # another address is held to 4.
    node = ("127.0.0.1", cluster.nodes["node1"])
    from_edge = stream_options(node, "127.0.0.1", 8)
    assert from_edge == ["SIP/2.0 200 OK"] * 8, from_edge
    from_other = stream_options(node, FLOODER, 5)
    assert from_other == ["SIP/2.0 200 OK"] * 4 + ["refused"], from_other
    # Another host's phone registers at once, and the node that took it knows that
    # host (the Path's received=), not the edge, as a registered phone's address:
    # it is no longer held to 4.
    assert register_from(OTHER_HOST, cluster.edge, "102", "pw102") == "200 OK"
    query = f'SELECT node FROM "{cluster.schema}".bindings WHERE aor = \'102\' AND NOT gone'
    deadline = time.monotonic() + 10  # written behind the 200
    while not (rows := asyncio.run(_pg(query, fetch="x"))) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(rows) == 1, rows
    registrar = ("127.0.0.1", cluster.nodes[str(rows[0][0])])
    from_phone_host = stream_options(registrar, OTHER_HOST, 5)
    assert from_phone_host == ["SIP/2.0 200 OK"] * 5, from_phone_host


# ---------------------------------------------------------------------- a node shedding load


def shed_count(cluster: Running, node: str) -> float:
    with urllib.request.urlopen(
            f"http://127.0.0.1:{cluster.https[node]}/metrics", timeout=10) as r:
        metrics = r.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
               if line.startswith("switchboard_sip_shed_total{")
               and 'reason="source_rate"' in line)


@pytest.mark.parametrize("cluster", [{"node2": "--source-rate 0.5"}], indirect=True)
def test_a_node_answering_503_stays_in_and_its_requests_go_to_the_other(
        cluster: Running) -> None:
    # node2 sheds (its per-source limit: one new request per 2 s from an unknown
    # address, 503 with Retry-After). The edge tries each refused request on node1
    # and keeps node2 in (it still answers the edge's probe: a known source).
    ctl = cluster.ctl
    sent = 12  # per round: Call-IDs hashed over both nodes
    statuses: list[int] = []
    shed = 0.0
    for round_ in range(3):  # until node2 has refused one (a round hashes some to it)
        until_flags(ctl, lambda f: all(v.startswith("A") for v in f.values()),
                    "both nodes active")
        statuses = []
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((OTHER_HOST, 0))
            s.settimeout(10)
            port = s.getsockname()[1]
            for i in range(sent):
                s.sendto(sip_request("OPTIONS", port, OTHER_HOST,
                                     f"shed{round_}x{i}-{uuid.uuid4().hex}"), cluster.edge)
                while True:
                    reply = parse(s.recv(65535))
                    if isinstance(reply, Response) and reply.status >= 200:
                        statuses.append(reply.status)
                        break
        shed = shed_count(cluster, "node2")
        if shed >= 1:
            break
    served = {n: sum(1 for line in cluster.node_log(n).splitlines()
                     if '"OPTIONS"' in line and '"shed' in line) for n in cluster.nodes}
    print(f"{sent} OPTIONS through the edge: node2 refused {shed:.0f} (503), "
          f"answers {statuses.count(200)} x 200; node1 logged {served['node1']}, "
          f"node2 {served['node2']} ({round_ + 1} round)")
    assert statuses == [200] * sent, statuses
    assert shed >= 1
    flags = dispatcher_flags(ctl)
    assert flags[cluster.nodes["node2"]].startswith("A"), flags  # still in
    assert flags[cluster.nodes["node1"]].startswith("A"), flags
    # A node that is gone is still taken out, and the other serves everything.
    os.kill(cluster.pids["node2"], signal.SIGKILL)
    cluster.killed.add("node2")
    until_flags(ctl, lambda f: f[cluster.nodes["node2"]].startswith("I")
                and f[cluster.nodes["node1"]].startswith("A"), "node2 taken out")
    for i in range(4):
        reply_line = options_through_edge(cluster.edge, f"out-{i}-{uuid.uuid4().hex}")
        assert reply_line.startswith("SIP/2.0 200"), (reply_line, dispatcher_flags(ctl))
