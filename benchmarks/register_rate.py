#!/usr/bin/env python3
"""REGISTER-with-digest-auth rate: Kamailio vs. the Switchboard engine, driven by SIPp.

For each target (a freshly started Kamailio, then a freshly started
``switchboard serve``) the benchmark ramps the SIPp call rate up in x1.25
steps (never back down), each step a bounded run of ``--step-seconds`` worth of
registrations, and stops at the first step with any failed (or unfinished)
call, at the first step whose achieved rate falls below 90 % of its target,
at ``--max-rate``, or when the target's ``--max-seconds`` budget is spent.
The result for a target is the last clean step: highest target rate held with
zero failures, and the rate SIPp actually achieved in that step.

One "call" is one complete registration:
  auth:    REGISTER -> 401 -> REGISTER with digest credentials -> 200
  no auth: REGISTER -> 200 (Kamailio only; the engine always challenges)

Before measuring "auth", a few REGISTERs with wrong passwords must be refused
(401/403): a target that accepts them is reported as an error.

Everything listens on 127.0.0.1 and every process started here is stopped at
the end.  Results: a table on stdout and a JSON file in benchmarks/out/.

    .venv/bin/python benchmarks/register_rate.py                     # both targets
    .venv/bin/python benchmarks/register_rate.py --targets kamailio --max-seconds 60
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "sipp"))

from sipp import (  # noqa: E402  (needs the sys.path entry above)
    SippNotInstalledError,
    SippResult,
    auth_csv_line,
    find_sipp,
    run_sipp,
    sipp_version,
)

HOST = "127.0.0.1"
DOMAIN = "bench.test"
FIRST_EXTENSION = 2000
MAX_USERS = 10_000 - FIRST_EXTENSION  # 4-digit extensions 2000..9999
GROWTH = 1.25
HELD_FRACTION = 0.90  # achieved / target below this: the rate was not held
BUFF_SIZE = "4194304"
DEFAULT_ENGINE_CMD = str(REPO / ".venv" / "bin" / "switchboard")
OUT_DIR = REPO / "benchmarks" / "out"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def password_for(extension: str) -> str:
    """Same pattern on both targets: Kamailio derives it in its config."""
    return f"pw{extension}"


# --------------------------------------------------------------------------- helpers


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    """A port free for UDP (and TCP, for the engine's SIP/HTTP) on 127.0.0.1."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind((HOST, 0))
            port = int(s.getsockname()[1])
        other = socket.SOCK_STREAM if kind == socket.SOCK_DGRAM else socket.SOCK_DGRAM
        try:
            with socket.socket(socket.AF_INET, other) as s:
                s.bind((HOST, port))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port on 127.0.0.1")


def proc_tree_cpu(pid: int) -> float:
    """CPU seconds (user+system) used so far by ``pid`` and its live descendants."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        # fields[0] is state (field 3); ppid is field 4, utime/stime fields 14/15
        parents[int(entry)] = int(fields[1])
        times[int(entry)] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    tree = {pid}
    changed = True
    while changed:
        changed = False
        for child, parent in parents.items():
            if parent in tree and child not in tree:
                tree.add(child)
                changed = True
    return sum(times.get(p, 0.0) for p in tree)


def children_cpu() -> float:
    """CPU seconds of reaped children (SIPp runs are reaped; servers are not)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def sip_request(
    method: str,
    local_port: int,
    ext: str = str(FIRST_EXTENSION),
    *,
    call_id: str,
    cseq: int = 1,
    expires: str = "0",
    headers: Sequence[str] = (),
) -> bytes:
    """An out-of-dialog request from ``ext`` at HOST:``local_port`` to the domain, no body."""
    lines = [
        f"{method} sip:{DOMAIN} SIP/2.0",
        f"Via: SIP/2.0/UDP {HOST}:{local_port};branch=z9hG4bK-probe{time.monotonic_ns()}",
        "Max-Forwards: 70",
        f"From: <sip:{ext}@{DOMAIN}>;tag=probe",
        f"To: <sip:{ext}@{DOMAIN}>",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} {method}",
        f"Contact: <sip:{ext}@{HOST}:{local_port}>",
        f"Expires: {expires}",
        *headers,
        "Content-Length: 0",
        "",
        "",
    ]
    return "\r\n".join(lines).encode()


def sip_probe(port: int, timeout: float = 0.5, method: str = "REGISTER") -> str | None:
    """Send one unauthenticated request (REGISTER, OPTIONS); return the status line of any
    answer."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        s.settimeout(timeout)
        local = s.getsockname()[1]
        msg = sip_request(method, local, call_id=f"probe-{time.monotonic_ns()}@{HOST}")
        try:
            s.sendto(msg, (HOST, port))
            data = s.recv(65535)
        except OSError:  # timeout, or ICMP port unreachable
            return None
    line = data.split(b"\r\n", 1)[0].decode(errors="replace")
    return line if line.startswith("SIP/2.0 ") else None


def tail(path: Path, limit: int = 3000) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    return data[-limit:].decode(errors="replace").strip()


class TargetError(RuntimeError):
    """The system under test could not be started or is not fit to measure."""


@dataclass
class Server:
    """A started server process (own session, so its workers can be stopped with it)."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    sip_port: int
    probe_method: str = "REGISTER"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        # Workers left behind by the main process: same session id == its pid.
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def ready_or_stop(self, timeout: float) -> Server:
        """:meth:`wait_ready`; stop the server if it is not ready, and raise."""
        try:
            self.wait_ready(timeout)
        except TargetError:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise TargetError(
                    f"{self.name} exited with code {self.proc.returncode} during start-up; "
                    f"log {self.log_path}:\n{tail(self.log_path)}"
                )
            answer = sip_probe(self.sip_port, method=self.probe_method)
            if answer:
                return answer
            time.sleep(0.25)
        raise TargetError(
            f"{self.name} did not answer a SIP {self.probe_method} on {HOST}:{self.sip_port} "
            f"within {timeout:g}s; log {self.log_path}:\n{tail(self.log_path)}"
        )


def spawn(
    name: str,
    cmd: Sequence[str],
    log_path: Path,
    sip_port: int,
    cwd: Path,
    *,
    env: dict[str, str] | None = None,
    probe_method: str = "REGISTER",
) -> Server:
    """Start ``cmd`` in its own session, stdout and stderr to ``log_path``; ``env`` is added
    to this process's environment."""
    log = log_path.open("wb")
    try:
        proc = subprocess.Popen(
            list(cmd),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,
            env={**os.environ, **env} if env else None,
        )
    except OSError as exc:
        raise TargetError(f"cannot start {name}: {shlex_join(cmd)}: {exc}") from exc
    finally:
        log.close()
    return Server(
        name=name, proc=proc, log_path=log_path, sip_port=sip_port, probe_method=probe_method
    )


def shlex_join(cmd: Sequence[str]) -> str:
    return shlex.join(list(cmd))


# --------------------------------------------------------------------------- Kamailio

KAMAILIO_GLOBALS = """debug=1
log_stderror=yes
children={children}
maxbuffer=4194304
disable_tcp=yes
disable_sctp=yes
auto_aliases=no
dns=no
rev_dns=no
alias="{domain}"
listen=udp:{host}:{port}

mpath="{mpath}"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "textops.so"
"""
"""Kamailio's tuning (2 workers by default, 4 MiB socket buffers, no TCP, no DNS) and
the modules every benchmark config loads; a template for :func:`launch_kamailio`."""

KAMAILIO_ROUTE_START = """request_route {{
    if (!mf_process_maxfwd_header("10")) {{
        sl_send_reply("483", "Too Many Hops");
        exit;
    }}
"""

KAMAILIO_CFG = (
    """#!KAMAILIO
# Generated by benchmarks/register_rate.py: registrar-only Kamailio, usrloc in
# memory, digest auth without a database (password = "pw" + From user).
# Start with "-A WITH_AUTH" to challenge; without it every REGISTER is saved.

"""
    + KAMAILIO_GLOBALS
    + """loadmodule "siputils.so"
loadmodule "xlog.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
#!ifdef WITH_AUTH
loadmodule "auth.so"
#!endif

modparam("usrloc", "db_mode", 0)
modparam("usrloc", "hash_size", 12)
modparam("registrar", "max_expires", 3600)
#!ifdef WITH_AUTH
modparam("auth", "secret", "switchboard-bench-secret")
#!endif

"""
    + KAMAILIO_ROUTE_START
    + """    if (!is_method("REGISTER")) {{
        sl_send_reply("405", "Method Not Allowed");
        exit;
    }}
#!ifdef WITH_AUTH
    $var(pw) = "pw" + $fU;
    if (!pv_www_authenticate("$td", "$var(pw)", "0")) {{
        www_challenge("$td", "0");
        exit;
    }}
    if ($au != $tU) {{
        sl_send_reply("403", "Forbidden");
        exit;
    }}
    consume_credentials();
#!endif
    if (!save("location")) {{
        sl_reply_error();
    }}
    exit;
}}
"""
)

KAMAILIO_MODULE_DIRS = (
    "/usr/lib/x86_64-linux-gnu/kamailio/modules",
    "/usr/lib/aarch64-linux-gnu/kamailio/modules",
    "/usr/lib/kamailio/modules",
    "/usr/local/lib64/kamailio/modules",
    "/usr/local/lib/kamailio/modules",
)


def kamailio_version(binary: str) -> str:
    try:
        out = subprocess.run(
            [binary, "-v"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except OSError:
        return "unknown"
    return out.splitlines()[0].strip() if out else "unknown"


def start_kamailio(args: argparse.Namespace, work: Path, auth: bool) -> Server:
    return launch_kamailio(
        args,
        work,
        template=KAMAILIO_CFG,
        stem=f"kamailio-{'auth' if auth else 'noauth'}",
        name=f"kamailio{' (auth)' if auth else ''}",
        defines=("WITH_AUTH",) if auth else (),
    )


def launch_kamailio(
    args: argparse.Namespace,
    work: Path,
    *,
    template: str,
    stem: str,
    name: str,
    defines: Sequence[str] = (),
    module: str = "registrar.so",
    shm_mb: int = 256,
    pkg_mb: int = 64,
    fields: dict[str, Any] | None = None,
    probe_method: str = "REGISTER",
) -> Server:
    """Start Kamailio (``args.kamailio_bin``, ``args.kamailio_children`` workers) from a
    config ``template`` formatted with children, domain, host, port, mpath and ``fields``;
    tlsf allocator, ``shm_mb``/``pkg_mb`` MiB of shared/private memory; wait until it answers.
    """
    binary = shutil.which(args.kamailio_bin) or args.kamailio_bin
    if not os.path.isfile(binary):
        raise TargetError(
            f"kamailio not found ({args.kamailio_bin}); install it: apt-get install -y kamailio"
        )
    mpath = next((d for d in KAMAILIO_MODULE_DIRS if os.path.isfile(f"{d}/{module}")), None)
    if mpath is None:
        raise TargetError(f"Kamailio modules not found in any of {KAMAILIO_MODULE_DIRS}")
    port = free_port()
    cfg = work / f"{stem}.cfg"
    cfg.write_text(
        template.format(
            children=args.kamailio_children,
            domain=DOMAIN,
            host=HOST,
            port=port,
            mpath=mpath,
            **(fields or {}),
        )
    )
    base = [binary, "-f", str(cfg)]
    for define in defines:
        base += ["-A", define]
    check = subprocess.run([*base, "-c"], capture_output=True, text=True, timeout=30, check=False)
    if check.returncode != 0:
        raise TargetError(f"kamailio rejected {cfg}:\n{check.stdout}{check.stderr}")
    cmd = [
        *base,
        "-DD",
        "-E",
        "-x",
        "tlsf",
        "-m",
        str(shm_mb),
        "-M",
        str(pkg_mb),
        "-P",
        str(work / f"kamailio-{port}.pid"),
    ]
    server = spawn(name, cmd, work / f"{stem}.log", port, work, probe_method=probe_method)
    return server.ready_or_stop(args.start_timeout)


# --------------------------------------------------------------------------- engine


def engine_directory_toml(users: int, system_extra: Sequence[str] = ()) -> str:
    """The engine's directory file; ``system_extra`` are raw TOML lines for ``[system]``."""
    lines = [
        "# Generated by benchmarks/register_rate.py",
        "[system]",
        f'domain = "{DOMAIN}"',
        "extension_digits = 4",
        *system_extra,
        "",
        "[[departments]]",
        'name = "Bench"',
        'caller_id = "+15145550100"',
        'timezone = "UTC"',
        "",
        "[[numbers]]  # the department's caller ID is one of the system's numbers",
        'number = "+15145550100"',
        'route_to = "busy"',
        "",
    ]
    for i in range(users):
        ext = str(FIRST_EXTENSION + i)
        lines += [
            "[[users]]",
            f'extension = "{ext}"',
            f'name = "Bench User {ext}"',
            f'password = "{password_for(ext)}"',
            'department = "Bench"',
            "",
        ]
    return "\n".join(lines)


def start_engine(
    args: argparse.Namespace,
    work: Path,
    directory_text: str | None = None,
    extra_args: Sequence[str] = (),
) -> Server:
    """``switchboard serve`` on a generated directory (``args.users`` users unless
    ``directory_text`` is given); ``extra_args`` go before ``args.engine_arg``."""
    engine_cmd = args.engine_cmd
    if not (os.path.isfile(engine_cmd) or shutil.which(engine_cmd)):
        raise TargetError(
            f"engine command not found: {engine_cmd} "
            "(install the project: .venv/bin/pip install -e .)"
        )
    data_dir = work / "engine-data"
    data_dir.mkdir(exist_ok=True)
    directory = data_dir / "directory.toml"
    if directory_text is None:
        directory_text = engine_directory_toml(args.users, args.engine_system)
    directory.write_text(directory_text)
    sip_port = free_port()
    http_port = free_port(socket.SOCK_STREAM)
    cmd = [
        engine_cmd,
        "serve",
        "--directory",
        str(directory),
        "--data-dir",
        str(data_dir),
        "--sip",
        f"{HOST}:{sip_port}",
        "--http",
        f"{HOST}:{http_port}",
        *(
            ["--digest-algorithms", args.engine_digest_algorithms]
            if args.engine_digest_algorithms
            else []
        ),
        *extra_args,
        *args.engine_arg,
    ]
    server = spawn("engine", cmd, work / "engine.log", sip_port, work)
    return server.ready_or_stop(args.engine_start_timeout)


# --------------------------------------------------------------------------- measuring


@dataclass
class Step:
    target_rate: int
    calls: int
    achieved: float
    successful: int
    failed: int
    unfinished: int
    retransmissions: int
    elapsed_s: float
    sipp_cpu_pct: float
    server_cpu_pct: float
    response_time_ms: float | None
    failure_reasons: dict[str, int]
    sipp_exit: int
    clean: bool
    held: bool


@dataclass
class Row:
    target: str
    auth: bool
    highest_clean_rate: int | None = None
    achieved: float | None = None
    failures: int = 0
    stop_reason: str = ""
    error: str | None = None
    wrong_password_refused: bool | None = None
    server: str = ""
    duration_s: float = 0.0
    warmup: dict[str, Any] | None = None
    steps: list[Step] = field(default_factory=list)

    def last_clean(self) -> Step | None:
        clean = [s for s in self.steps if s.clean and s.held]
        return clean[-1] if clean else None


def csv_lines(users: int) -> list[str]:
    exts = (str(FIRST_EXTENSION + i) for i in range(users))
    return [auth_csv_line(ext, password_for(ext)) for ext in exts]


def wrong_csv_lines(users: int) -> list[str]:
    exts = (str(FIRST_EXTENSION + i) for i in range(min(users, 5)))
    return [auth_csv_line(ext, "wrong-" + password_for(ext)) for ext in exts]


def sipp_args(
    rate: float,
    sipp_port: int,
    default_behaviors: str = "all,-bye",
    in_flight: int | None = None,
) -> list[str]:
    """UAC options: one UDP socket on ``sipp_port``, 4 MiB buffers, at most ``in_flight``
    calls open (default: about one second of calls, at least 200)."""
    return [
        "-t",
        "u1",
        "-p",
        str(sipp_port),
        "-buff_size",
        BUFF_SIZE,
        "-l",
        str(in_flight if in_flight is not None else max(200, int(rate))),
        "-default_behaviors",
        default_behaviors,  # all,-bye: never send BYE after an aborted REGISTER
    ]


def measured_run(
    server: Server,
    scenario: str,
    lines: list[str],
    calls: int,
    rate: float,
    timeout: float,
    sipp_port: int,
    work: Path,
) -> tuple[SippResult, float, float]:
    """Run SIPp once; return the result and SIPp / server CPU use in % of one core."""
    return measure_cpu(
        server.proc.pid,
        lambda: run_sipp(
            scenario,
            (HOST, server.sip_port),
            lines,
            calls,
            rate,
            timeout,
            sipp_args(rate, sipp_port),
            keys={"domain": DOMAIN, "expires": "3600"},
            workdir=work / "sipp",
        ),
    )


def measure_cpu(pid: int, run: Callable[[], SippResult]) -> tuple[SippResult, float, float]:
    """``run()`` (one SIPp run, reaped); return its result, the CPU use of the reaped
    children (SIPp) and of process tree ``pid`` (the server), in % of one core."""
    sipp_cpu0, server_cpu0, t0 = children_cpu(), proc_tree_cpu(pid), time.monotonic()
    result = run()
    wall = max(time.monotonic() - t0, 1e-6)
    sipp_pct = 100.0 * (children_cpu() - sipp_cpu0) / wall
    server_pct = 100.0 * (proc_tree_cpu(pid) - server_cpu0) / wall
    return result, sipp_pct, server_pct


def ramp(
    row: Row,
    server: Server,
    args: argparse.Namespace,
    work: Path,
    log: Callable[[str], None],
) -> None:
    """Ramp the rate up until failures, saturation, --max-rate or the time budget."""
    started = time.monotonic()
    lines = csv_lines(args.users)
    scenario = "register_auth.xml" if row.auth else "register_noauth.xml"
    sipp_port = free_port()

    if row.auth:
        check = run_sipp(
            "register_wrong.xml",
            (HOST, server.sip_port),
            wrong_csv_lines(args.users),
            len(wrong_csv_lines(args.users)),
            10,
            30,
            sipp_args(10, sipp_port),
            keys={"domain": DOMAIN},
            workdir=work / "sipp",
        )
        row.wrong_password_refused = check.ok
        if not check.ok:
            accepted = check.failure_reasons.get("FailedUnexpectedMessage", 0) > 0
            what = (
                "a REGISTER with a wrong password was not refused with 401/403"
                if accepted and not check.hints
                else "wrong-password check failed"
            )
            raise TargetError(f"{what}: {check.describe()}")
        log(f"  {row.target}: wrong passwords refused (401/403): ok")

    def run_step(calls: int, rate: float, timeout: float) -> tuple[SippResult, float, float]:
        return measured_run(server, scenario, lines, calls, rate, timeout, sipp_port, work)

    ramp_steps(
        row,
        server,
        args,
        work,
        log,
        run_step,
        label=f"{row.target} {'auth' if row.auth else 'noauth'}",
        started=started,
    )


StepRun = Callable[[int, float, float], tuple[SippResult, float, float]]
"""One SIPp run: (calls, rate, timeout) -> (result, SIPp CPU %, server CPU %)."""


def ramp_steps(
    row: Row,
    server: Server,
    args: argparse.Namespace,
    work: Path,
    log: Callable[[str], None],
    run_step: StepRun,
    *,
    label: str,
    started: float,
) -> None:
    """The ramp itself: an optional warm-up at ``args.start_rate``, then steps of
    ``args.step_seconds`` growing x1.25 until a step fails or is not held, ``args.max_rate``,
    or ``args.max_seconds`` since ``started`` (monotonic).  Fills ``row``; a failed step's
    SIPp report goes to ``work/<target>-failed-step.log``."""

    def budget_left() -> float:
        return float(args.max_seconds) - (time.monotonic() - started)

    rate = float(args.start_rate)
    if args.warmup_seconds > 0:
        calls = max(1, math.ceil(rate * args.warmup_seconds))
        res, _, _ = run_step(calls, rate, args.warmup_seconds + 20)
        row.warmup = {
            "rate": rate,
            "calls": calls,
            "successful": res.successful,
            "failed": res.failed,
            "achieved": round(res.rate, 1),
        }
        log(f"  {label} warm-up: {res.successful}/{calls} ok at {res.rate:.0f}/s")

    while True:
        target = round(rate)
        if target > args.max_rate:
            row.stop_reason = f"reached --max-rate {args.max_rate}"
            break
        left = budget_left()
        if left < args.step_seconds + 2:
            row.stop_reason = f"time budget (--max-seconds {args.max_seconds:g}) spent"
            break
        calls = max(1, math.ceil(target * args.step_seconds))
        # SIPp gives up by itself; a failing step may take up to the budget left.
        timeout = max(args.step_seconds + 5, min(args.step_seconds * 2 + 20, left))
        res, sipp_pct, server_pct = run_step(calls, target, timeout)
        clean = res.ok
        held = clean and res.rate >= HELD_FRACTION * target
        step = Step(
            target_rate=target,
            calls=calls,
            achieved=round(res.rate, 1),
            successful=res.successful,
            failed=res.failed,
            unfinished=res.unfinished,
            retransmissions=res.retransmissions,
            elapsed_s=round(res.elapsed_s, 3),
            sipp_cpu_pct=round(sipp_pct, 1),
            server_cpu_pct=round(server_pct, 1),
            response_time_ms=res.response_time_ms,
            failure_reasons=res.failure_reasons,
            sipp_exit=res.returncode,
            clean=clean,
            held=held,
        )
        row.steps.append(step)
        log(
            f"  {label} target {target:>6}/s: "
            f"achieved {res.rate:8.1f}/s  ok {res.successful}/{calls}  failed {res.failed}"
            f"  unfinished {res.unfinished}  retrans {res.retransmissions}"
            f"  cpu sipp {sipp_pct:.0f}% server {server_pct:.0f}%"
        )
        if not clean:
            row.failures = res.failed + res.unfinished
            row.stop_reason = (
                f"step at {target}/s had {res.failed} failed and {res.unfinished} "
                f"unfinished calls (sipp exit {res.returncode}) {res.failure_reasons or ''}"
            ).strip()
            if not server.alive():
                row.stop_reason += f"; {server.name} died (exit {server.proc.returncode})"
            (work / f"{row.target}-failed-step.log").write_text(res.describe())
            break
        if not held:
            row.stop_reason = (
                f"achieved {res.rate:.0f}/s < {HELD_FRACTION:.0%} of target {target}/s "
                f"(sipp cpu {sipp_pct:.0f}%, server cpu {server_pct:.0f}%)"
            )
            break
        rate *= GROWTH

    best = row.last_clean()
    if best is not None:
        row.highest_clean_rate = best.target_rate
        row.achieved = best.achieved
    row.duration_s = round(time.monotonic() - started, 1)


@contextmanager
def running(server: Server) -> Iterator[Server]:
    try:
        yield server
    finally:
        server.stop()


def measure_target(
    target: str,
    auth: bool,
    args: argparse.Namespace,
    work: Path,
    log: Callable[[str], None],
) -> Row:
    row = Row(target=target, auth=auth)
    try:
        if target == "kamailio":
            server = start_kamailio(args, work, auth)
            row.server = kamailio_version(args.kamailio_bin)
        else:
            server = start_engine(args, work)
            row.server = shlex_join([args.engine_cmd, "serve"])
        with running(server):
            ramp(row, server, args, work, log)
    except TargetError as exc:
        row.error = str(exc)
        log(f"  {target}: ERROR: {clip(str(exc))}")
    return row


# --------------------------------------------------------------------------- output


def clip(text: str, lines: int = 12) -> str:
    """First lines of a long error (the whole text goes to the JSON file)."""
    parts = text.splitlines()
    if len(parts) <= lines:
        return text
    return "\n".join([*parts[:lines], f"... ({len(parts) - lines} more lines in the JSON file)"])


def fmt_rate(value: float | int | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if isinstance(value, int) else f"{value:,.1f}"


def print_table(rows: list[Row]) -> None:
    headers = ("target", "auth", "highest clean rate (reg/s)", "achieved", "failures")
    cells: list[tuple[str, ...]] = []
    for r in rows:
        if r.error:
            first_line = r.error.splitlines()[0][:70]
            cells.append((r.target, "yes" if r.auth else "no", "ERROR", "-", first_line))
        elif r.highest_clean_rate is None:
            cells.append(
                (
                    r.target,
                    "yes" if r.auth else "no",
                    "none (first step not clean; lower --start-rate)"
                    if r.steps
                    else "none (no step run)",
                    "-",
                    str(r.failures),
                )
            )
        else:
            cells.append(
                (
                    r.target,
                    "yes" if r.auth else "no",
                    fmt_rate(r.highest_clean_rate),
                    fmt_rate(r.achieved),
                    str(r.failures),
                )
            )
    print_grid(headers, cells)
    for r in rows:
        label = f"{r.target} ({'auth' if r.auth else 'no auth'})"
        if r.error:
            print(f"{label}: ERROR: {clip(r.error)}")
            continue
        best = r.last_clean()
        detail = f"{label}: stopped: {r.stop_reason}; {len(r.steps)} steps in {r.duration_s}s"
        if best is not None:
            detail += (
                f"; at the clean step: sipp cpu {best.sipp_cpu_pct:.0f}%, "
                f"server cpu {best.server_cpu_pct:.0f}% (100% = one core), "
                f"{best.retransmissions} retransmissions"
            )
        print(detail)


def print_grid(headers: Sequence[str], cells: Sequence[Sequence[str]]) -> None:
    """A plain-text table between two blank lines, columns as wide as their widest cell."""
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    print()
    print(" | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    print("-+-".join("-" * w for w in widths))
    for c in cells:
        print(" | ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)))
    print()


def ratio(rows: list[Row]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for auth in (True, False):
        kam = next((r for r in rows if r.target == "kamailio" and r.auth == auth), None)
        eng = next((r for r in rows if r.target == "engine" and r.auth == auth), None)
        if kam is None or eng is None:
            continue
        key = "auth" if auth else "noauth"
        if kam.achieved and eng.achieved is not None:
            out[key] = eng.achieved / kam.achieved
        else:
            out[key] = None
    return out


# --------------------------------------------------------------------------- main


def add_ramp_arguments(
    p: argparse.ArgumentParser,
    *,
    name: str,
    unit: str,
    start_rate: int,
    max_seconds: float = 120.0,
    budget_help: str = "time budget per target and auth mode (ramp only)",
) -> None:
    """The options shared by the rate benchmarks: the ramp, the engine, Kamailio, output."""
    p.add_argument("--start-rate", type=int, default=start_rate, help=f"first step, {unit}/s")
    p.add_argument("--max-rate", type=int, default=100_000, help="never ask SIPp for more")
    p.add_argument(
        "--step-seconds",
        type=float,
        default=3.0,
        help=f"each step sends rate x this many {unit}",
    )
    p.add_argument(
        "--warmup-seconds",
        type=float,
        default=1.0,
        help="unmeasured run at --start-rate before the ramp (0: none)",
    )
    p.add_argument(
        "--max-seconds",
        type=float,
        default=max_seconds,
        help=budget_help,
    )
    p.add_argument("--engine-cmd", default=DEFAULT_ENGINE_CMD, help="switchboard executable")
    p.add_argument(
        "--engine-digest-algorithms",
        default="MD5",
        metavar="LIST",
        help="passed as 'serve --digest-algorithms LIST' (empty: not passed). SIPp 3.6 "
        "computes MD5 only and answers the first challenge, so MD5 must come first; "
        "MD5 alone also matches Kamailio's single MD5 challenge",
    )
    p.add_argument(
        "--engine-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument appended to 'switchboard serve' (repeatable; use --engine-arg=-x)",
    )
    p.add_argument(
        "--engine-system",
        action="append",
        default=[],
        metavar="TOML",
        help="extra TOML line under [system] of the generated directory file (repeatable), "
        "e.g. 'digest_algorithms = [\"MD5\"]' if the engine grows such a key",
    )
    p.add_argument(
        "--engine-start-timeout",
        type=float,
        default=60.0,
        help="seconds for the engine to answer SIP after start",
    )
    p.add_argument("--kamailio-bin", default="kamailio")
    p.add_argument("--kamailio-children", type=int, default=2, help="Kamailio UDP workers")
    p.add_argument(
        "--start-timeout",
        type=float,
        default=15.0,
        help="seconds for Kamailio to answer SIP after start",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"JSON results file (default benchmarks/out/{name}-<time>.json)",
    )
    p.add_argument(
        "--keep-tmp",
        action="store_true",
        help="keep the work directory (configs, logs, SIPp stats)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no per-step progress lines")


def check_ramp_arguments(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.start_rate < 1 or args.max_rate < args.start_rate:
        p.error("need 1 <= --start-rate <= --max-rate")
    if args.step_seconds <= 0 or args.max_seconds <= 0:
        p.error("--step-seconds and --max-seconds must be > 0")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--targets", default="kamailio,engine", help="comma-separated: kamailio, engine")
    p.add_argument(
        "--auth",
        choices=("both", "on", "off"),
        default="both",
        help="digest auth modes to measure (the engine is measured with auth only)",
    )
    p.add_argument(
        "--users",
        type=int,
        default=2000,
        help=f"registered users, extensions {FIRST_EXTENSION}.. (max {MAX_USERS})",
    )
    add_ramp_arguments(p, name="register_rate", unit="registrations", start_rate=250)
    args = p.parse_args(argv)
    args.target_list = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = set(args.target_list) - {"kamailio", "engine"}
    if unknown or not args.target_list:
        p.error(f"--targets: unknown {sorted(unknown)}; use kamailio,engine")
    if not 1 <= args.users <= MAX_USERS:
        p.error(f"--users must be 1..{MAX_USERS} (4-digit extensions from {FIRST_EXTENSION})")
    check_ramp_arguments(p, args)
    return args


def environment(kamailio_bin: str) -> dict[str, Any]:
    return {
        "sipp": sipp_version(),
        "kamailio": kamailio_version(kamailio_bin) if shutil.which(kamailio_bin) else None,
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def sipp_or_none() -> str | None:
    """SIPp's path, or None after saying on stderr why there is none."""
    try:
        return find_sipp()
    except SippNotInstalledError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None


def progress_log(quiet: bool) -> Callable[[str], None]:
    def log(msg: str) -> None:
        if not quiet:
            print(msg, flush=True)

    return log


def close_work_dir(work: Path, keep: bool, contents: str) -> None:
    if keep:
        print(f"work dir kept ({contents}): {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


def ramp_method(args: argparse.Namespace) -> dict[str, Any]:
    """The ramp's parameters, for the JSON file."""
    return {
        "growth": GROWTH,
        "held_fraction": HELD_FRACTION,
        "step_seconds": args.step_seconds,
        "start_rate": args.start_rate,
        "max_rate": args.max_rate,
        "max_seconds": args.max_seconds,
    }


def write_report(out: Path | None, name: str, started: float, body: dict[str, Any]) -> Path:
    """The JSON results file (default ``benchmarks/out/<name>-<time>.json``)."""
    out = out or OUT_DIR / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": name,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "duration_s": round(time.time() - started, 1),
        **body,
    }
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nresults written to {out}")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    sipp_bin = sipp_or_none()
    if sipp_bin is None:
        return 2
    log = progress_log(args.quiet)

    modes = {"both": (True, False), "on": (True,), "off": (False,)}[args.auth]
    plan = [
        (target, auth)
        for target in args.target_list
        for auth in modes
        if target == "kamailio" or auth  # the engine always challenges
    ]
    if not plan:
        print("error: nothing to measure (the engine is measured with auth only)", file=sys.stderr)
        return 2

    work = Path(tempfile.mkdtemp(prefix="register-rate-"))
    log(
        f"register_rate: {sipp_version()} ({sipp_bin}), {os.cpu_count()} CPUs, "
        f"{args.users} users, work dir {work}"
    )
    rows: list[Row] = []
    started = time.time()
    try:
        for target, auth in plan:
            log(f"{target} ({'auth' if auth else 'no auth'}):")
            rows.append(measure_target(target, auth, args, work, log))
    finally:
        failed = any(r.error or r.failures for r in rows)
        close_work_dir(work, args.keep_tmp or failed, "configs, server logs, SIPp stats")

    print_table(rows)
    ratios = ratio(rows)
    if "engine" in args.target_list and "kamailio" in args.target_list:
        value = ratios.get("auth")
        if value is None:
            print("\nratio engine/kamailio (auth): n/a (no clean engine or kamailio result)")
        else:
            print(f"\nratio engine/kamailio (auth): {value:.3f}")

    report = {
        "environment": environment(args.kamailio_bin),
        "method": {
            **ramp_method(args),
            "users": args.users,
            "domain": DOMAIN,
            "sipp_args": sipp_args(args.start_rate, 0),
        },
        "results": [asdict(r) for r in rows],
        "ratio_engine_over_kamailio": ratios,
    }
    write_report(args.out, "register_rate", started, report)
    kam_ok = all(r.error is None for r in rows if r.target == "kamailio")
    return 0 if kam_ok else 1


if __name__ == "__main__":
    sys.exit(main())
