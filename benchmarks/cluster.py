#!/usr/bin/env python3
"""Calls/s and REGISTER/s through the Kamailio edge: Kamailio alone, 1 node, 2 nodes.

Every target runs behind the same edge, Debian's Kamailio with
deploy/kamailio/kamailio.cfg (the `make cluster` config), tuned as the other
benchmarks (-x tlsf, -m 1024), in the same run:

  kamailio  the edge alone: its dispatcher set is a SIPp stand-in instead of nodes
            (for REGISTER a SIPp registrar answering 401 then 200, for calls the SIPp
            phone); the config's OPTIONS probing is off (probing mode 0), since SIPp
            cannot answer a probe in the middle of a scenario. This is the ceiling of
            the edge on this box: one pass through it per request.
  1node     the edge and one `switchboard serve` node on PostgreSQL
  2nodes    the edge and two nodes sharing PostgreSQL (bindings shared through it)

REGISTER: SIPp (register_auth.xml) registers users 2001.. with MD5 digest auth
(REGISTER, 401, REGISTER with credentials, 200) at the edge, which adds a Path and
hashes each To URI over the nodes. Calls: a SIPp trunk sends INVITE to a DID at the
edge, which spreads calls over the nodes by Call-ID; the node routes the DID to
extension 2000, a SIPp phone registered through the edge, and sends the INVITE
back through the edge along the phone's Path: two passes through the edge per
call, as a call from a carrier to a phone takes in the cluster. The nodes trust
the edge's address as the trunk (a benchmark setting: the edge does not pass a
trunk's source on yet), run `--media direct` (signalling only, as call_rate.py's
main figure) and log warnings only.

Each measure is RFC 7502's ramp (register_rate.py's): x1.25 steps of
--step-seconds, stopped at the first step with a failed or unfinished call or
below 90 % of its target. PostgreSQL: a fresh schema in $DATABASE_URL (default
postgresql://127.0.0.1:5432/test), dropped at the end.

    .venv/bin/python benchmarks/cluster.py                       # all three, both measures
    .venv/bin/python benchmarks/cluster.py --targets 1node --measures calls --keep-tmp
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH), str(BENCH.parent), str(BENCH.parent / "tests" / "sipp")]

from call_rate import (  # noqa: E402  (needs the sys.path entries above)
    CALLER,
    DID,
    PHONE,
    UAC_SCENARIO,
    busy_cpu_seconds,
    register_phone,
    start_phone,
)
from register_rate import (  # noqa: E402
    DOMAIN,
    FIRST_EXTENSION,
    HOST,
    REPO,
    Row,
    Server,
    TargetError,
    add_ramp_arguments,
    check_ramp_arguments,
    children_cpu,
    clip,
    close_work_dir,
    engine_directory_toml,
    environment,
    fmt_rate,
    free_port,
    password_for,
    print_grid,
    proc_tree_cpu,
    progress_log,
    ramp_method,
    ramp_steps,
    sipp_args,
    sipp_or_none,
    spawn,
    tail,
    write_report,
)
from sipp import SippResult, auth_csv_line, run_sipp, sipp_version  # noqa: E402

TARGETS = ("kamailio", "1node", "2nodes")
MEASURES = ("register", "calls")
EDGE_CFG = REPO / "deploy" / "kamailio" / "kamailio.cfg"
BENCH_SOURCE_LIMIT = 10_000_000  # new requests per 2 s from one address: no limit here
NODE_ARGS = ("--log-format", "json", "--log-level", "warning", "--media", "direct",
             "--digest-algorithms", "MD5")
SYNC_WAIT = 2.5  # a binding reaches the other node within BINDING_SYNC_SECONDS (1 s)

REGISTRAR_STANDIN = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="registrar stand-in: 401, then 200">
  <recv request="REGISTER"/>
  <send>
    <![CDATA[
      SIP/2.0 401 Unauthorized
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]SIPpTag01[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      WWW-Authenticate: Digest realm="bench.test", nonce="[pid][call_number]", algorithm=MD5
      Content-Length: 0
    ]]>
  </send>
  <recv request="REGISTER"/>
  <send>
    <![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]SIPpTag01[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      [last_Contact:];expires=3600
      Content-Length: 0
    ]]>
  </send>
</scenario>
"""


@dataclass
class ClusterRow(Row):
    """One target and measure's ramp; CPU per step and component, % of one core."""

    measure: str = ""
    nodes: int = 0
    edge_cpu_pct: list[float] = field(default_factory=list)
    nodes_cpu_pct: list[list[float]] = field(default_factory=list)
    standin_cpu_pct: list[float] = field(default_factory=list)
    other_cpu_pct: list[float] = field(default_factory=list)
    load_average: list[float] = field(default_factory=list)


# --------------------------------------------------------------------------- the pieces


def edge_config(work: Path, probing: bool) -> Path:
    """kamailio.cfg as deployed, or with OPTIONS probing off (a SIPp stand-in behind)."""
    text = EDGE_CFG.read_text()
    if not probing:
        text, n = re.subn(r'modparam\("dispatcher", "ds_probing_mode", 1\)',
                          'modparam("dispatcher", "ds_probing_mode", 0)', text)
        if n != 1:
            raise TargetError(f"{EDGE_CFG}: no ds_probing_mode 1 to turn off")
    path = work / ("kamailio-edge.cfg" if probing else "kamailio-edge-noprobe.cfg")
    path.write_text(text)
    return path


def start_edge(args: argparse.Namespace, work: Path, port: int, destinations: Sequence[int],
               probing: bool) -> Server:
    binary = args.kamailio_bin if os.path.isfile(args.kamailio_bin) else (
        next((p for p in ("/usr/sbin/kamailio", "/usr/local/sbin/kamailio")
              if os.path.isfile(p)), args.kamailio_bin))
    listing = work / f"dispatcher-{port}.list"
    listing.write_text("".join(f"1 sip:{HOST}:{p}\n" for p in destinations))
    ctl = Path(tempfile.mkdtemp(prefix="sbk-")) / "ctl"
    cfg = edge_config(work, probing)
    # One SIPp host sends all the load: the edge's per-source limit (pike) would cap
    # the measure at SOURCE_LIMIT per 2 s, so it is set out of reach; its check still
    # runs on every new request, as deployed.
    base = [binary, "-f", str(cfg), "-A", f"LISTEN=udp:{HOST}:{port}",
            "-A", f'DISPATCHER_LIST="{listing}"', "-A", f'CTL_SOCKET="unix:{ctl}"',
            "-A", f"SOURCE_LIMIT={BENCH_SOURCE_LIMIT}"]
    check = subprocess.run([*base, "-c"], capture_output=True, text=True, timeout=30,
                           check=False)
    if check.returncode != 0:
        raise TargetError(f"kamailio rejected {cfg}:\n{check.stderr[-2000:]}")
    cmd = [*base, "-DD", "-E", "-x", "tlsf", "-m", str(args.kamailio_shm_mb), "-M", "64",
           "-P", str(work / f"kamailio-{port}.pid")]
    # probed with OPTIONS: the edge relays it to a destination, which must answer it;
    # a stand-in SIPp does not, so readiness is the socket being bound
    server = spawn("kamailio edge", cmd, work / f"edge-{port}.log", port, work,
                   probe_method="OPTIONS")
    deadline = time.monotonic() + args.start_timeout
    while time.monotonic() < deadline:
        if not server.alive():
            raise TargetError(f"the edge exited: {tail(server.log_path)}")
        if _udp_bound(port):
            break
        time.sleep(0.1)
    else:
        server.stop()
        raise TargetError(f"the edge did not bind {HOST}:{port}")
    # every destination active (a node probed before it listened is out until the
    # next probe answers: kamcmd dispatcher.list shows AP for an active one)
    kamcmd = next((p for p in ("/usr/sbin/kamcmd", "/usr/bin/kamcmd") if os.path.isfile(p)),
                  "kamcmd")
    while time.monotonic() < deadline:
        listed = subprocess.run([kamcmd, "-s", f"unix:{ctl}", "dispatcher.list"],
                                capture_output=True, text=True, timeout=10, check=False)
        flags = re.findall(r"FLAGS:\s*(\w+)", listed.stdout)
        if len(flags) == len(destinations) and all(f.startswith("A") for f in flags):
            return server
        time.sleep(0.3)
    server.stop()
    raise TargetError(f"the edge did not see its destinations active: {listed.stdout[-500:]}")


def _udp_bound(port: int) -> bool:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return True
    return False


def start_standin_registrar(work: Path, port: int) -> Server:
    xml = work / "registrar_standin.xml"
    xml.write_text(REGISTRAR_STANDIN)
    from sipp import find_sipp

    folder = work / f"standin-{port}"
    folder.mkdir(exist_ok=True)
    cmd = [find_sipp(), "-nostdin", "-sf", str(xml), "-i", HOST, "-p", str(port), "-t", "u1",
           "-buff_size", "4194304"]
    server = spawn("sipp registrar stand-in", cmd, folder / "uas.log", port, folder)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if _udp_bound(port):
            return server
        time.sleep(0.1)
    server.stop()
    raise TargetError("the SIPp registrar stand-in did not start")


def node_directory(users: int, edge_port: int) -> str:
    return "\n".join([
        engine_directory_toml(users),
        "[[trunks]]",
        'name = "carrier"',
        f'host = "{HOST}"',
        f"port = {free_port()}",
        f'inbound_from = ["{HOST}/32"]',
        f"inbound_port = {edge_port}  # the edge: a benchmark setting (see the module doc)",
        "",
        "[[numbers]]",
        f'number = "{DID}"',
        f'route_to = "extension:{PHONE}"',
        "",
    ])


def database_url() -> str:
    return os.environ.get("DATABASE_URL", "postgresql://127.0.0.1:5432/test")


async def _pg(statement: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(database_url(), timeout=10)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@contextmanager
def fresh_schema() -> Iterator[str]:
    schema = f"sb_bench_{uuid.uuid4().hex[:10]}"
    try:
        asyncio.run(_pg(f'CREATE SCHEMA "{schema}"'))
    except Exception as exc:
        raise TargetError(f"PostgreSQL at {database_url()}: {exc}") from exc
    try:
        yield f"{database_url()}?search_path={schema}"
    finally:
        asyncio.run(_pg(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))


def start_nodes(args: argparse.Namespace, work: Path, db: str, count: int, edge_port: int,
                node_ports: list[int]) -> list[Server]:
    sb = args.engine_cmd
    data = work / "nodes-data"
    data.mkdir(exist_ok=True)
    directory = data / "directory.toml"
    directory.write_text(node_directory(args.users, edge_port))
    applied = subprocess.run([sb, "provision", "apply", str(directory), "--db", db,
                              "--data-dir", str(data)], capture_output=True, text=True,
                             timeout=120, check=False)
    if applied.returncode != 0:
        raise TargetError(f"directory not applied: {applied.stderr.strip()[-2000:]}")
    nodes: list[Server] = []
    for i, port in enumerate(node_ports[:count]):
        cmd = [sb, "serve", "--db", db, "--data-dir", str(data), "--node-id", f"node{i + 1}",
               "--sip", f"{HOST}:{port}", "--http", f"{HOST}:{free_port()}", *NODE_ARGS,
               *args.engine_arg]
        node = spawn(f"node{i + 1}", cmd, work / f"node{i + 1}-{port}.log", port, work)
        nodes.append(node)
    for node in nodes:
        node.ready_or_stop(args.engine_start_timeout)
    return nodes


# --------------------------------------------------------------------------- measuring


@dataclass
class Rig:
    """What one ramp drives: the edge, the nodes (none: the edge alone) and the SIPp
    stand-in or phone behind; records each step's CPU by component."""

    edge: Server
    nodes: list[Server]
    standin: Server | None
    row: ClusterRow
    run_sipp_step: Callable[[int, float, float], SippResult]

    def run(self, calls: int, rate: float, timeout: float) -> tuple[SippResult, float, float]:
        pids = [self.edge.proc.pid, *(n.proc.pid for n in self.nodes)]
        standin_pid = self.standin.proc.pid if self.standin is not None else None
        before = [proc_tree_cpu(p) for p in pids]
        standin0 = proc_tree_cpu(standin_pid) if standin_pid else 0.0
        sipp0, busy0, t0 = children_cpu(), busy_cpu_seconds(), time.monotonic()
        result = self.run_sipp_step(calls, rate, timeout)
        wall = max(time.monotonic() - t0, 1e-6)
        used = [100 * (proc_tree_cpu(p) - b) / wall for p, b in zip(pids, before, strict=True)]
        standin = 100 * (proc_tree_cpu(standin_pid) - standin0) / wall if standin_pid else 0.0
        sipp = 100 * (children_cpu() - sipp0) / wall
        busy = 100 * (busy_cpu_seconds() - busy0) / wall
        row = self.row
        row.edge_cpu_pct.append(round(used[0], 1))
        row.nodes_cpu_pct.append([round(u, 1) for u in used[1:]])
        row.standin_cpu_pct.append(round(standin, 1))
        row.other_cpu_pct.append(round(max(0.0, busy - sum(used) - standin - sipp), 1))
        row.load_average.append(round(os.getloadavg()[0], 2))
        return result, sipp, sum(used)


def register_lines(users: int) -> list[str]:
    # 2000 is the phone the calls ring: never registered again from elsewhere here
    exts = (str(FIRST_EXTENSION + i) for i in range(1, users))
    return [auth_csv_line(ext, password_for(ext)) for ext in exts]


def measure(target: str, what: str, args: argparse.Namespace, work: Path,
            log: Callable[[str], None]) -> ClusterRow:
    nodes_wanted = {"kamailio": 0, "1node": 1, "2nodes": 2}[target]
    row = ClusterRow(target=target, auth=what == "register", measure=what, nodes=nodes_wanted)
    sub = work / f"{target}-{what}"
    sub.mkdir()
    try:
        with ExitStack() as stack:
            node_ports = [free_port() for _ in range(nodes_wanted)]
            standin_port = free_port()
            destinations = node_ports or [standin_port]
            edge_port = free_port()
            row.server = f"kamailio edge ({EDGE_CFG.name}) + {nodes_wanted} node(s)"
            nodes: list[Server] = []
            if nodes_wanted:  # the nodes first: the edge probes them at once
                db = stack.enter_context(fresh_schema())
                nodes = start_nodes(args, sub, db, nodes_wanted, edge_port, node_ports)
                for node in nodes:
                    stack.callback(node.stop)
            edge = start_edge(args, sub, edge_port, destinations, probing=bool(nodes_wanted))
            stack.callback(edge.stop)
            standin: Server | None = None
            sipp_port = free_port()
            if what == "register":
                if not nodes_wanted:
                    standin = start_standin_registrar(sub, standin_port)
                    stack.callback(standin.stop)
                lines = register_lines(args.users)

                def step(calls: int, rate: float, timeout: float) -> SippResult:
                    return run_sipp("register_auth.xml", (HOST, edge.sip_port), lines, calls,
                                    rate, timeout, sipp_args(rate, sipp_port),
                                    keys={"domain": DOMAIN, "expires": "3600"},
                                    workdir=sub / "sipp")
            else:
                phone_port = standin_port
                if nodes_wanted:
                    register_phone(edge.sip_port, phone_port)  # through the edge: a Path
                    time.sleep(SYNC_WAIT if nodes_wanted > 1 else 0.2)
                phone = start_phone(sub, phone_port, False, args.start_timeout)
                standin = phone.server
                stack.callback(phone.stop)

                def step(calls: int, rate: float, timeout: float) -> SippResult:
                    in_flight = max(200, int(rate * 2))
                    extra = [*sipp_args(rate, sipp_port, "all", in_flight), "-s", DID,
                             "-d", "0"]
                    return run_sipp(UAC_SCENARIO, (HOST, edge.sip_port), None, calls, rate,
                                    timeout, extra, keys={"caller": CALLER, "domain": DOMAIN},
                                    workdir=sub / "sipp")

            rig = Rig(edge, nodes, standin, row, step)
            started = time.monotonic()
            label = f"{target} {what}"
            args.start_rate = (args.edge_start if not nodes_wanted else
                               args.register_start if what == "register" else args.calls_start)
            ramp_steps(row, edge, args, sub, log, rig.run, label=label, started=started)
            skip = len(row.edge_cpu_pct) - len(row.steps)  # the warm-up
            for name in ("edge_cpu_pct", "nodes_cpu_pct", "standin_cpu_pct", "other_cpu_pct",
                         "load_average"):
                setattr(row, name, getattr(row, name)[skip:])
            for node in nodes:
                if not node.alive():
                    row.stop_reason += f"; {node.name} died: {tail(node.log_path, 800)}"
    except TargetError as exc:
        row.error = str(exc)
        log(f"  {target} {what}: ERROR: {clip(str(exc))}")
    return row


# --------------------------------------------------------------------------- output


def cpu_at(row: ClusterRow) -> str:
    best = row.last_clean()
    if best is None:
        return "-"
    i = row.steps.index(best)
    nodes = " + ".join(f"{c:.0f}" for c in row.nodes_cpu_pct[i]) or "-"
    return (f"edge {row.edge_cpu_pct[i]:.0f}, nodes {nodes}, sipp {best.sipp_cpu_pct:.0f}"
            f"+{row.standin_cpu_pct[i]:.0f}, other {row.other_cpu_pct[i]:.0f}; "
            f"load {row.load_average[i]:.1f}")


def print_report(rows: list[ClusterRow]) -> dict[str, float | None]:
    headers = ("measure", "target", "highest clean rate /s", "achieved /s", "vs kamailio",
               "CPU % at that step (100 = one core)")
    base = {r.measure: r.achieved for r in rows if r.target == "kamailio" and not r.error}
    ratios: dict[str, float | None] = {}
    cells = []
    for r in rows:
        if r.error:
            cells.append((r.measure, r.target, "ERROR", "-", "-", r.error.splitlines()[0][:60]))
            continue
        ref = base.get(r.measure)
        ratio = r.achieved / ref if r.achieved and ref else None
        ratios[f"{r.measure} {r.target}/kamailio"] = ratio
        cells.append((r.measure, r.target, fmt_rate(r.highest_clean_rate), fmt_rate(r.achieved),
                       "-" if ratio is None else f"{ratio:.3f}", cpu_at(r)))
    print_grid(headers, cells)
    one = {r.measure: r.achieved for r in rows if r.target == "1node" and not r.error}
    for r in rows:
        if r.target == "2nodes" and r.achieved and one.get(r.measure):
            ratios[f"{r.measure} 2nodes/1node"] = r.achieved / (one[r.measure] or 1)
            print(f"{r.measure}: 2 nodes / 1 node = {r.achieved / (one[r.measure] or 1):.2f}")
    print()
    for r in rows:
        if not r.error:
            print(f"{r.measure} {r.target}: stopped: {r.stop_reason}; {len(r.steps)} steps")
    return ratios


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--targets", default=",".join(TARGETS))
    p.add_argument("--measures", default=",".join(MEASURES))
    p.add_argument("--users", type=int, default=1000, help="users in the directory")
    p.add_argument("--register-start", type=int, default=200, help="REGISTER ramp start, /s")
    p.add_argument("--calls-start", type=int, default=100, help="calls ramp start, /s")
    p.add_argument("--edge-start", type=int, default=2000,
                   help="ramp start of the kamailio target (the edge alone), /s: ten times "
                        "the nodes' so that its ramp ends within the same budget")
    p.add_argument("--kamailio-shm-mb", type=int, default=1024)
    add_ramp_arguments(p, name="cluster", unit="calls", start_rate=100, max_seconds=60.0,
                       budget_help="time budget per target and measure (ramp only)")
    args = p.parse_args(argv)
    args.target_list = [t for t in args.targets.split(",") if t]
    args.measure_list = [m for m in args.measures.split(",") if m]
    if set(args.target_list) - set(TARGETS) or set(args.measure_list) - set(MEASURES):
        p.error(f"--targets from {TARGETS}, --measures from {MEASURES}")
    if not 2 <= args.users <= 8000:
        p.error("--users: from 2 to 8000")
    check_ramp_arguments(p, args)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if (sipp_bin := sipp_or_none()) is None:
        return 2
    log = progress_log(args.quiet)
    work = Path(tempfile.mkdtemp(prefix="cluster-bench-"))
    load0 = os.getloadavg()
    log(f"cluster: {sipp_version()} ({sipp_bin}), {os.cpu_count()} CPUs, load average "
        f"{load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}, work dir {work}")
    rows: list[ClusterRow] = []
    started = time.time()
    try:
        for what in args.measure_list:
            for target in args.target_list:
                log(f"{target} {what}:")
                rows.append(measure(target, what, args, work, log))
    finally:
        keep = args.keep_tmp or any(r.error or r.failures for r in rows)
        close_work_dir(work, keep, "configs, logs, SIPp stats")
    ratios = print_report(rows)
    load1 = os.getloadavg()
    print(f"load average before {load0[0]:.2f}, after {load1[0]:.2f} ({os.cpu_count()} CPUs)")
    report = {
        "environment": {**environment(args.kamailio_bin), "load_average_before": load0,
                        "load_average_after": load1},
        "method": {**ramp_method(args), "node_args": [*NODE_ARGS, *args.engine_arg],
                   "edge": str(EDGE_CFG), "users": args.users},
        "results": [asdict(r) for r in rows],
        "ratios": ratios,
    }
    write_report(args.out, "cluster", started, report)
    print(json.dumps(ratios))
    return 1 if any(r.error for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
