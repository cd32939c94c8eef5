"""Run SIPp scenarios from Python: shared by the pytest suites and the benchmarks.

Usage (tests or benchmarks; benchmarks put ``tests/sipp`` on ``sys.path``)::

    from sipp import auth_csv_line, run_sipp

    lines = [auth_csv_line(str(ext), f"pw{ext}") for ext in range(2000, 2010)]
    result = run_sipp("register_auth.xml", "127.0.0.1:5060", lines,
                      calls=10, rate=10, timeout=20,
                      keys={"domain": "bench.test"})
    assert result.ok, result.describe()

Scenario files in this directory (see the comment at the top of each):

* ``register_auth.xml``   REGISTER -> 401 -> REGISTER with credentials -> 200
* ``register_wrong.xml``  same with wrong credentials: the second answer must be 401 or 403
* ``register_noauth.xml`` REGISTER -> 200 (registrars that do not challenge)

All three read the injection CSV as ``field0`` = user and ``field1`` = a whole
``[authentication username=... password=...]`` keyword (SIPp does not expand
``[field0]`` nested inside ``[authentication ...]``), and use the custom
keywords ``[domain]`` and ``[expires]`` (``-key``; defaults below).

Counts come from SIPp's statistics file (``-trace_stat -stf``), read after SIPp
exits.  A missing ``sipp`` binary raises :class:`SippNotInstalledError`: tests
that need SIPp must fail loudly, never skip.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

SCENARIO_DIR = Path(__file__).resolve().parent
"""Directory holding the scenario XML files (this file's directory)."""

DEFAULT_EXPIRES = "3600"
LOG_TAIL_CHARS = 8000
# Extra wall-clock seconds granted beyond SIPp's own -timeout before the
# process is killed from Python (SIPp normally stops itself well before).
KILL_GRACE_S = 20.0

# SIPp exit codes (sipp(1), "Exit codes").
EXIT_CODES: dict[int, str] = {
    0: "all calls successful",
    1: "at least one call failed",
    97: "exit on internal command (calls may have been processed)",
    99: "normal exit without any call processed",
    255: "fatal error",
    254: "fatal error binding a socket",
}

_INJECTION_MODES = ("SEQUENTIAL", "RANDOM", "USER")
_UNSAFE_CREDENTIAL = re.compile(r"[\s;\]\[]")


class SippNotInstalledError(RuntimeError):
    """``sipp`` is not on PATH (and ``$SIPP`` does not name an executable)."""


def find_sipp() -> str:
    """Return the path of the ``sipp`` executable or raise :class:`SippNotInstalledError`.

    ``$SIPP`` overrides the lookup on ``PATH``.
    """
    override = os.environ.get("SIPP")
    if override:
        if os.path.isfile(override) and os.access(override, os.X_OK):
            return override
        raise SippNotInstalledError(f"$SIPP={override!r} is not an executable file")
    found = shutil.which("sipp")
    if found is None:
        raise SippNotInstalledError(
            "sipp is not installed (no 'sipp' on PATH). Install it with "
            "'apt-get install -y sip-tester' (Debian/Ubuntu) or set $SIPP to the binary."
        )
    return found


def sipp_version() -> str:
    """SIPp's version line, e.g. ``SIPp v3.6.1-SCTP-PCAP-RTPSTREAM.``"""
    proc = subprocess.run(
        [find_sipp(), "-v"], capture_output=True, text=True, timeout=10, check=False
    )
    for line in (proc.stdout + proc.stderr).splitlines():
        if "SIPp v" in line:
            return line.strip()
    return "unknown"


def auth_csv_line(user: str, password: str, username: str | None = None) -> str:
    """One injection line: ``user;[authentication username=... password=...]``.

    ``username`` (the digest username) defaults to ``user``.  SIPp splits the
    keyword on spaces and the CSV on ``;``, so neither may contain whitespace,
    ``;`` or brackets.
    """
    auth_user = user if username is None else username
    for name, value in (("user", user), ("username", auth_user), ("password", password)):
        if not value or _UNSAFE_CREDENTIAL.search(value):
            raise ValueError(f"{name} {value!r} cannot be used in a SIPp injection line")
    return f"{user};[authentication username={auth_user} password={password}]"


def scenario_path(scenario: str | os.PathLike[str]) -> Path:
    """Resolve a scenario: an existing path, or a file name in :data:`SCENARIO_DIR`."""
    path = Path(scenario)
    if path.is_file():
        return path.resolve()
    local = SCENARIO_DIR / path
    if local.is_file():
        return local
    raise FileNotFoundError(f"SIPp scenario not found: {scenario} (also looked in {SCENARIO_DIR})")


@dataclass(frozen=True)
class SippResult:
    """Outcome of one SIPp run, from its exit code and cumulative statistics."""

    command: tuple[str, ...]
    returncode: int
    calls: int
    """Calls requested (``-m``)."""
    successful: int
    failed: int
    created: int
    retransmissions: int
    elapsed_s: float
    """SIPp's StartTime to its last statistics dump (about the time of the last call)."""
    wall_s: float
    """Wall-clock time of the whole SIPp process, start-up and shutdown included."""
    failure_reasons: dict[str, int] = field(default_factory=dict)
    """Non-zero cumulative ``Failed*`` counters, e.g. ``{"FailedMaxUDPRetrans": 3}``."""
    response_time_ms: float | None = None
    """Mean of SIPp's response-time counter 1 (first request sent to final answer)."""
    killed: bool = False
    """True when SIPp overran its own timeout and was killed from Python."""
    log: str = ""
    """On failure: the tail of SIPp's stderr, error log and final screen."""
    stats: dict[str, str] = field(default_factory=dict)
    """Last row of the statistics file, column name -> raw value."""
    hints: tuple[str, ...] = ()
    """On failure: short explanations of known SIPp error messages found in its logs."""

    @property
    def unfinished(self) -> int:
        """Requested calls that neither succeeded nor failed (timeout, abort)."""
        return max(0, self.calls - self.successful - self.failed)

    @property
    def ok(self) -> bool:
        return (
            self.returncode == 0
            and not self.killed
            and self.failed == 0
            and self.successful == self.calls
        )

    @property
    def rate(self) -> float:
        """Successful calls per second over :attr:`elapsed_s`."""
        return self.successful / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def describe(self) -> str:
        meaning = EXIT_CODES.get(self.returncode, "unknown exit code")
        text = "".join(f"{hint}: " for hint in self.hints) + (
            f"sipp exit {self.returncode} ({meaning}){' [killed]' if self.killed else ''}: "
            f"{self.successful}/{self.calls} successful, {self.failed} failed, "
            f"{self.unfinished} unfinished, {self.retransmissions} retransmissions, "
            f"{self.rate:.1f}/s over {self.elapsed_s:.2f}s"
        )
        if self.failure_reasons:
            text += " " + str(self.failure_reasons)
        text += "\ncommand: " + shlex.join(self.command)
        if self.log:
            text += "\n" + self.log
        return text


def _epoch(value: str) -> float:
    """SIPp timestamps look like ``2026-11-22<TAB>05:00:36.218<TAB>1795323636.218464``."""
    return float(value.split("\t")[-1])


def _duration_ms(value: str) -> float | None:
    """SIPp durations look like ``00:00:00:000123`` (h:m:s:microseconds)."""
    parts = value.strip().split(":")
    if len(parts) != 4:
        return None
    try:
        hours, minutes, seconds, micros = (int(p) for p in parts)
    except ValueError:
        return None
    return ((hours * 60 + minutes) * 60 + seconds) * 1000.0 + micros / 1000.0


def parse_stat_file(path: Path) -> dict[str, str]:
    """Last data row of a SIPp ``-stf`` statistics file as a column -> value dict."""
    try:
        rows = [r for r in path.read_text(errors="replace").splitlines() if r.strip()]
    except FileNotFoundError:
        return {}
    if len(rows) < 2:
        return {}
    header = rows[0].split(";")
    values = rows[-1].split(";")
    return {name: value for name, value in zip(header, values, strict=False) if name}


# Known SIPp error messages -> (short hint, explanation).
_HINTS: tuple[tuple[str, str, str], ...] = (
    (
        "authentication must use MD5",
        "SIPp 3.6 needs the MD5 challenge first",
        "SIPp 3.6.x only computes MD5 (and AKAv1-MD5) digests and merges all "
        "WWW-Authenticate headers of the 401, using the first algorithm/nonce it finds: "
        "the server must put its MD5 challenge first (or offer MD5 only); a SHA-256 "
        "challenge listed first (RFC 8760 order) makes every call fail.",
    ),
    (
        "Unsupported keyword",
        "scenario keyword without a value",
        "a [keyword] of the scenario has no value: pass it with keys={...} (-key name value).",
    ),
)

_SCREEN_COUNTER = re.compile(r"^\s*(Successful call|Failed call)\s*\|[^|]*\|\s*(\d+)", re.M)


def _int(stats: Mapping[str, str], key: str) -> int:
    try:
        return int(float(stats.get(key, "0") or 0))
    except ValueError:
        return 0


def _tail(path: Path, limit: int = LOG_TAIL_CHARS) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - limit))
            return fh.read().decode(errors="replace")
    except FileNotFoundError:
        return ""


def _split_target(target: str | tuple[str, int]) -> tuple[str, str]:
    if isinstance(target, tuple):
        host, port = target
        return host, f"{host}:{port}"
    host = target.rsplit(":", 1)[0] if ":" in target else target
    return host, target


def run_sipp(
    scenario: str | os.PathLike[str],
    target: str | tuple[str, int],
    csv_lines: Sequence[str] | None,
    calls: int,
    rate: float,
    timeout: float,
    extra_args: Sequence[str] = (),
    *,
    keys: Mapping[str, str] | None = None,
    workdir: str | os.PathLike[str] | None = None,
) -> SippResult:
    """Run SIPp as a UAC and return its counts.

    scenario:   XML path, or a file name in :data:`SCENARIO_DIR`.
    target:     ``"host:port"`` or ``(host, port)`` of the system under test.
    csv_lines:  injection lines (no header needed: ``SEQUENTIAL`` is prepended
                unless the first line is already SEQUENTIAL/RANDOM/USER);
                None or empty for no ``-inf``.
    calls:      ``-m``: SIPp stops after this many calls.
    rate:       ``-r`` calls per second.
    timeout:    seconds; SIPp's global ``-timeout`` (with ``-timeout_error``),
                and SIPp is killed if it overruns it by more than 20 s.
    extra_args: more SIPp options, e.g. ``["-l", "500", "-t", "u1", "-p", "5070"]``.
    keys:       custom ``[keyword]`` values (``-key``); ``domain`` defaults to
                the target host, ``expires`` to 3600.
    workdir:    where the CSV, statistics and logs go (kept); default a
                temporary directory removed afterwards.

    Adds ``-nostdin``, ``-trace_stat``/``-stf``/``-fd 1``, ``-trace_err``/
    ``-error_file``, and ``-i <target host>`` for a 127.x target unless
    ``extra_args`` has ``-i``.
    """
    if calls < 1:
        raise ValueError("calls must be >= 1")
    if rate <= 0:
        raise ValueError("rate must be > 0")
    if timeout <= 0:
        raise ValueError("timeout must be > 0")
    binary = find_sipp()
    xml = scenario_path(scenario)
    host, remote = _split_target(target)
    all_keys = {"domain": host, "expires": DEFAULT_EXPIRES}
    all_keys.update(keys or {})

    if workdir is not None:
        Path(workdir).mkdir(parents=True, exist_ok=True)
        return _run_in(
            binary,
            xml,
            host,
            remote,
            csv_lines,
            calls,
            rate,
            timeout,
            extra_args,
            all_keys,
            Path(workdir),
        )
    with tempfile.TemporaryDirectory(prefix="sipp-") as tmp:
        return _run_in(
            binary,
            xml,
            host,
            remote,
            csv_lines,
            calls,
            rate,
            timeout,
            extra_args,
            all_keys,
            Path(tmp),
        )


def _run_in(
    binary: str,
    xml: Path,
    host: str,
    remote: str,
    csv_lines: Sequence[str] | None,
    calls: int,
    rate: float,
    timeout: float,
    extra_args: Sequence[str],
    keys: Mapping[str, str],
    work: Path,
) -> SippResult:
    stat_file = work / f"{xml.stem}_stat.csv"
    error_file = work / f"{xml.stem}_errors.log"
    out_file = work / f"{xml.stem}_stdout.log"
    for stale in (stat_file, error_file, out_file):
        stale.unlink(missing_ok=True)

    cmd: list[str] = [binary, remote, "-sf", str(xml)]
    if csv_lines:
        lines = list(csv_lines)
        if lines[0].strip().upper() not in _INJECTION_MODES:
            lines.insert(0, "SEQUENTIAL")
        csv_file = work / f"{xml.stem}_users.csv"
        csv_file.write_text("\n".join(lines) + "\n")
        cmd += ["-inf", str(csv_file)]
    for name, value in keys.items():
        cmd += ["-key", name, str(value)]
    cmd += [
        "-m",
        str(calls),
        "-r",
        f"{rate:g}",
        "-timeout",
        f"{timeout:g}s",
        "-timeout_error",
        "-nostdin",
        "-trace_stat",
        "-stf",
        str(stat_file),
        "-fd",
        "1",
        "-trace_err",
        "-error_file",
        str(error_file),
    ]
    if "-i" not in extra_args and host.startswith("127."):
        cmd += ["-i", host]
    cmd += list(extra_args)

    killed = False
    started = time.monotonic()
    with out_file.open("wb") as out:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=work
        )
        try:
            returncode = proc.wait(timeout=timeout + KILL_GRACE_S)
        except subprocess.TimeoutExpired:
            killed = True
            proc.kill()
            returncode = proc.wait()
    wall = time.monotonic() - started
    if returncode < 0:  # killed by a signal
        killed = True
    returncode &= 0xFF

    stats = parse_stat_file(stat_file)
    screen = _tail(out_file)
    if stats:
        successful = _int(stats, "SuccessfulCall(C)")
        failed = _int(stats, "FailedCall(C)")
        try:
            elapsed = _epoch(stats["CurrentTime"]) - _epoch(stats["StartTime"])
        except (KeyError, ValueError, IndexError):
            elapsed = wall
    else:  # no statistics file (e.g. SIPp died early): fall back to its final screen
        counters = dict(_SCREEN_COUNTER.findall(screen))
        successful = int(counters.get("Successful call", 0))
        failed = int(counters.get("Failed call", 0))
        elapsed = wall
    reasons = {
        name[: -len("(C)")]: _int(stats, name)
        for name in stats
        if name.startswith("Failed")
        and name.endswith("(C)")
        and name != "FailedCall(C)"
        and _int(stats, name) > 0
    }
    response_ms = _duration_ms(stats.get("ResponseTime1(C)", "")) if stats else None

    result = SippResult(
        command=tuple(cmd),
        returncode=returncode,
        calls=calls,
        successful=successful,
        failed=failed,
        created=_int(stats, "TotalCallCreated"),
        retransmissions=_int(stats, "Retransmissions(C)"),
        elapsed_s=elapsed,
        wall_s=wall,
        failure_reasons=reasons,
        response_time_ms=response_ms,
        killed=killed,
        stats=stats,
    )
    if result.ok:
        return result
    parts: list[str] = []
    errors = _tail(error_file, LOG_TAIL_CHARS // 2)
    hints = tuple(short for needle, short, _ in _HINTS if needle in errors or needle in screen)
    parts.extend(f"hint: {long}" for needle, _, long in _HINTS if needle in errors + screen)
    if errors:
        parts.append("--- sipp error log (tail) ---\n" + errors)
    parts.append("--- sipp output (tail) ---\n" + (screen or "(empty)"))
    if not stats:
        parts.append(f"--- no statistics file at {stat_file} ---")
    return dataclasses.replace(result, log="\n".join(parts), hints=hints)
