#!/usr/bin/env python3
"""A bounded soak: one engine under mixed traffic for --minutes (default 60), sampled
every minute; exit status 1 on any failed call or growth beyond the tolerance.

The traffic, all at once for the whole run (SIPp, everything on 127.0.0.1):

  calls with hold  a SIPp trunk calls a DID routed to extension 2000 (a SIPp phone
                   registered with digest auth); after --talk-ms the caller puts the
                   call on hold (re-INVITE, a=sendonly: the engine answers it and plays
                   hold music to the phone), resumes (re-INVITE, a=sendrecv), hangs up
  voicemail        a second trunk calls a DID routed to voicemail:2001: the engine answers
                   and beeps, the caller streams --message-ms of a tone (SIPp rtp_stream),
                   the engine records it, the caller hangs up, the message is kept (a WAV
                   file and its row); at most --max-voicemail-rate per second
  registrations    SIPp registers users 2100.. with MD5 digest auth (expires 3600)

The rate: unless --rate is given, the zero-failure rate R of the calls with hold is
found first on the same engine (register_rate.py's ramp: x1.25 steps of 3 s, up to
--find-seconds), and the soak runs at R/2 sessions per second, split 60 % calls with
hold, 30 % registrations, 10 % voicemail.

Sampled every --sample-seconds (60): the engine's RSS (/proc/PID/status), its open
file descriptors (/proc/PID/fd: sockets, the store, files), its asyncio tasks
(/metrics switchboard_asyncio_tasks), calls in progress and registrations, and the
SIPp counters so far. The table is printed at the end.

Growth tolerance, from the first sample (the first minute: caches warm, pools open)
to the last: RSS at most 25 % + 16 MiB above, descriptors and tasks at most 25 % + 64
above (they move with the calls in progress at the instant of the sample). Beyond
that, or any failed or unfinished call or registration: exit status 1.

    .venv/bin/python benchmarks/soak.py --minutes 5
    .venv/bin/python benchmarks/soak.py --minutes 60 --rate 200 --db postgresql://...
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH), str(BENCH.parent), str(BENCH.parent / "tests" / "sipp")]

from call_rate import CALLER, DID, PHONE, UAC_SCENARIO, register_phone, start_phone  # noqa: E402
from calls import Background, in_background  # noqa: E402  (tests/sipp)
from register_rate import (  # noqa: E402
    DOMAIN,
    FIRST_EXTENSION,
    HOST,
    Row,
    Server,
    TargetError,
    add_ramp_arguments,
    check_ramp_arguments,
    engine_directory_toml,
    free_port,
    password_for,
    print_grid,
    ramp_steps,
    sipp_args,
    sipp_or_none,
    spawn,
    tail,
    write_report,
)
from sipp import SippResult, auth_csv_line, parse_stat_file, run_sipp  # noqa: E402

VOICEMAIL_DID = "+15550002001"
VOICEMAIL_BOX = str(FIRST_EXTENSION + 1)
FIRST_REGISTERING = FIRST_EXTENSION + 100
SHARES = {"hold": 0.6, "register": 0.3, "voicemail": 0.1}
RSS_TOLERANCE = (0.25, 16 * 1024 * 1024)  # relative, absolute (bytes)
COUNT_TOLERANCE = (0.25, 64)  # descriptors, tasks
ENGINE_ARGS = ("--log-format", "json", "--log-level", "warning", "--digest-algorithms", "MD5")

SDP_BODY = """v=0
      o=sipp 1 {version} IN IP4 [local_ip]
      s=-
      c=IN IP4 [local_ip]
      t=0 0
      m=audio 20000 RTP/AVP 0 8 101
      a=rtpmap:101 telephone-event/8000{direction}
"""


def _in_dialog(method: str, cseq: int, body: str = "") -> str:
    content = (f"Content-Type: application/sdp\n      Content-Length: [len]\n\n      {body}"
               if body else "Content-Length: 0\n")
    retrans = "" if method == "ACK" else ' retrans="500"'  # an ACK is answered by nothing
    return f"""
  <send{retrans}>
    <![CDATA[

      {method} [$contact] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      From: "[caller]" <sip:[caller]@[domain]>;tag=[pid]SIPpTag00[call_number]
      [last_To:]
      Call-ID: [call_id]
      CSeq: {cseq} {method}
      Contact: <sip:[caller]@[local_ip]:[local_port]>
      Max-Forwards: 70
      {content}
    ]]>
  </send>
"""


def hold_scenario(work: Path, talk_ms: int, hold_ms: int) -> Path:
    """call_load_uac.xml's call with a hold and a resume (re-INVITEs) before the BYE."""
    base = (BENCH.parent / "tests" / "sipp" / UAC_SCENARIO).read_text()
    cut = base.index("  <pause/>")
    end = base.index("  <send retrans=\"500\">", cut)
    hold = SDP_BODY.format(version=2, direction="\n      a=sendonly")
    resume = SDP_BODY.format(version=3, direction="\n      a=sendrecv")
    middle = (f'  <pause milliseconds="{talk_ms}"/>\n'
              + _in_dialog("INVITE", 2, hold)
              + '  <recv response="100" optional="true"/>\n  <recv response="200"/>\n'
              + _in_dialog("ACK", 2)
              + f'  <pause milliseconds="{hold_ms}"/>\n'
              + _in_dialog("INVITE", 3, resume)
              + '  <recv response="100" optional="true"/>\n  <recv response="200"/>\n'
              + _in_dialog("ACK", 3) + "\n")
    text = base[:cut] + middle + base[end:].replace("CSeq: 2 BYE", "CSeq: 4 BYE", 1)
    text = text.replace('<scenario name="call load uac">', '<scenario name="soak: call, hold, '
                        'resume, hang up">')
    path = work / "soak_hold_uac.xml"
    path.write_text(text)
    return path


def voicemail_scenario(work: Path, message_ms: int) -> Path:
    """call_load_uac.xml with the caller speaking: SIPp streams ``message_ms`` of PCMU
    (a raw u-law file, a 440 Hz tone) once the call is answered, then hangs up."""
    import math

    samples = int(8 * message_ms)
    tone = bytes(_ulaw(int(8000 * math.sin(2 * math.pi * 440 * i / 8000)))
                 for i in range(samples))
    audio = work / "message.ulaw"
    audio.write_bytes(tone)
    base = (BENCH.parent / "tests" / "sipp" / UAC_SCENARIO).read_text()
    text = base.replace("m=audio 20000 RTP/AVP 0 8 101", "m=audio [auto_media_port] RTP/AVP 0",
                        1).replace("a=rtpmap:101 telephone-event/8000\n", "", 1)
    text = text.replace("  <pause/>", f'  <nop><action><exec rtp_stream="{audio},1,0"/>'
                        f'</action></nop>\n  <pause milliseconds="{message_ms + 300}"/>', 1)
    path = work / "soak_voicemail_uac.xml"
    path.write_text(text)
    return path


def _ulaw(sample: int) -> int:
    """G.711 u-law of a 16-bit linear sample."""
    bias, clip = 0x84, 32635
    sign = 0x80 if sample < 0 else 0
    sample = min(abs(sample), clip) + bias
    exponent = 7
    for exp in range(7, -1, -1):
        if sample & (0x4000 >> (7 - exp)):
            exponent = exp
            break
    mantissa = (sample >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


def soak_directory(users: int, hold_port: int, vm_port: int) -> str:
    trunk = ("[[trunks]]\nname = \"{name}\"\nhost = \"{host}\"\nport = {port}\n"
             "inbound_from = [\"{host}/32\"]\ninbound_port = {inbound}\n")
    return "\n".join([
        engine_directory_toml(users),
        trunk.format(name="carrier", host=HOST, port=free_port(), inbound=hold_port),
        trunk.format(name="carrier2", host=HOST, port=free_port(), inbound=vm_port),
        f'[[numbers]]\nnumber = "{DID}"\nroute_to = "extension:{PHONE}"\n',
        f'[[numbers]]\nnumber = "{VOICEMAIL_DID}"\nroute_to = "voicemail:{VOICEMAIL_BOX}"\n',
    ])


@dataclass
class Sample:
    minute: float
    rss_mib: float
    fds: int
    tasks: int
    calls_active: int
    registrations: int
    ok: dict[str, int] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)


def metrics(http_port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://{HOST}:{http_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def sipp_counts(stat_file: Path) -> tuple[int, int]:
    if not stat_file.exists():
        return 0, 0
    stats = parse_stat_file(stat_file)
    return int(stats.get("SuccessfulCall(C)", 0) or 0), int(stats.get("FailedCall(C)", 0) or 0)


def take_sample(engine: Server, http_port: int, started: float,
                stat_files: dict[str, Path]) -> Sample:
    pid = engine.proc.pid
    m = metrics(http_port)
    sample = Sample(minute=round((time.monotonic() - started) / 60, 2),
                    rss_mib=round(rss_bytes(pid) / 2**20, 1),
                    fds=len(os.listdir(f"/proc/{pid}/fd")),
                    tasks=int(m.get("switchboard_asyncio_tasks", -1)),
                    calls_active=int(m.get("switchboard_calls_active", 0)),
                    registrations=int(m.get("switchboard_registrations_active", 0)))
    for name, path in stat_files.items():
        sample.ok[name], sample.failed[name] = sipp_counts(path)
    return sample


def growth(first: float, last: float, tolerance: tuple[float, float]) -> bool:
    """Whether ``last`` grew beyond ``first`` x (1 + relative) + absolute."""
    relative, absolute = tolerance
    return last > first * (1 + relative) + absolute


def settle(http_port: int, timeout: float = 60.0) -> None:
    """Wait until the calls of the rate search have ended and the engine has not
    shed for a few seconds: the search's last step overloads it on purpose, and a
    soak started into that backlog would count the search's 503s as its own."""
    deadline = time.monotonic() + timeout
    quiet_since = time.monotonic()
    shed = -1.0
    while time.monotonic() < deadline:
        m = metrics(http_port)
        now_shed = sum(v for k, v in m.items() if k.startswith("switchboard_sip_shed_total"))
        if m.get("switchboard_calls_active", 0) or now_shed != shed:
            quiet_since = time.monotonic()
        shed = now_shed
        if time.monotonic() - quiet_since >= 5.0:
            return
        time.sleep(0.5)
    raise TargetError(f"the engine did not settle within {timeout:g} s after the rate search")


def find_rate(args: argparse.Namespace, engine: Server, hold_xml: Path, hold_port: int,
              work: Path) -> int:
    row = Row(target="engine", auth=False)

    def step(calls: int, rate: float, timeout: float) -> tuple[SippResult, float, float]:
        extra = [*sipp_args(rate, hold_port, "all", max(200, int(rate * 4))), "-s", DID]
        result = run_sipp(hold_xml, (HOST, engine.sip_port), None, calls, rate, timeout, extra,
                          keys={"caller": CALLER, "domain": DOMAIN}, workdir=work / "find")
        # SIPp's elapsed time runs to the end of the last call, which lasts
        # talk + hold: the rate calls were placed at leaves that out
        held = max(result.elapsed_s - (args.talk_ms + args.hold_ms) / 1000, 1e-3)
        return dataclasses.replace(result, elapsed_s=held), 0.0, 0.0

    args.max_seconds = args.find_seconds
    ramp_steps(row, engine, args, work, lambda msg: print(msg, file=sys.stderr, flush=True),
               step, label="zero-failure rate (calls with hold)", started=time.monotonic())
    if row.highest_clean_rate is None:
        raise TargetError(f"no clean step from {args.start_rate}/s: {row.stop_reason}")
    print(f"zero-failure rate of calls with hold: {row.highest_clean_rate}/s "
          f"({row.stop_reason})", file=sys.stderr, flush=True)
    return row.highest_clean_rate


def soak(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    hold_port, vm_port, reg_port, phone_port = (free_port() for _ in range(4))
    data = work / "engine-data"
    data.mkdir()
    (data / "directory.toml").write_text(soak_directory(args.users, hold_port, vm_port))
    sip, http = free_port(), free_port()
    cmd = [args.engine_cmd, "serve", "--directory", str(data / "directory.toml"),
           "--data-dir", str(data), "--sip", f"{HOST}:{sip}", "--http", f"{HOST}:{http}",
           *ENGINE_ARGS, *(["--db", args.db] if args.db else []), *args.engine_arg]
    with ExitStack() as stack:
        engine = spawn("engine", cmd, work / "engine.log", sip, work).ready_or_stop(
            args.engine_start_timeout)
        stack.callback(engine.stop)
        register_phone(sip, phone_port)
        phone = start_phone(work, phone_port, True, args.start_timeout)
        stack.callback(phone.stop)
        hold_xml = hold_scenario(work, args.talk_ms, args.hold_ms)
        rate = args.rate or find_rate(args, engine, hold_xml, hold_port, work)
        if not args.rate:
            settle(http)
        total = rate / 2 if not args.rate else rate
        rates = {name: max(0.2, total * share) for name, share in SHARES.items()}
        # every message is a WAV on disk: an hour at 10 % of a few hundred/s would be
        # tens of thousands of files, which measures the disk, not the engine
        rates["voicemail"] = min(rates["voicemail"], args.max_voicemail_rate)
        seconds = args.minutes * 60
        print(f"soak: {args.minutes:g} min at {total:g} sessions/s "
              + ", ".join(f"{n} {r:g}/s" for n, r in rates.items()), file=sys.stderr,
              flush=True)
        runs: dict[str, Background] = {}
        stat_files: dict[str, Path] = {}
        timeout = seconds + 60

        def launch(name: str, scenario: Path | str, lines: list[str] | None, port: int,
                   extra: Sequence[str], keys: dict[str, str]) -> None:
            r = rates[name]
            calls = max(1, int(r * seconds))
            folder = work / f"soak-{name}"
            folder.mkdir()
            stat_files[name] = folder / f"{Path(scenario).stem}_stat.csv"  # run_sipp's -stf
            runs[name] = in_background(lambda: run_sipp(
                scenario, (HOST, sip), lines, calls, r, timeout,
                [*sipp_args(r, port, "all", max(200, int(r * 10))), *extra],
                keys=keys, workdir=folder))

        launch("hold", hold_xml, None, hold_port, ["-s", DID],
               {"caller": CALLER, "domain": DOMAIN})
        launch("voicemail", voicemail_scenario(work, args.message_ms), None, vm_port,
               ["-s", VOICEMAIL_DID], {"caller": CALLER, "domain": DOMAIN})
        users = [str(FIRST_REGISTERING + i) for i in range(args.users - 100)]
        launch("register", "register_auth.xml",
               [auth_csv_line(u, password_for(u)) for u in users], reg_port, [],
               {"domain": DOMAIN, "expires": "3600"})

        started = time.monotonic()
        samples: list[Sample] = []
        next_at = started + args.sample_seconds
        while any(run.thread.is_alive() for run in runs.values()):
            time.sleep(1.0)
            if not engine.alive():
                raise TargetError(f"the engine died: {tail(engine.log_path)}")
            if time.monotonic() >= next_at and time.monotonic() - started <= seconds + 5:
                next_at += args.sample_seconds
                samples.append(take_sample(engine, http, started, stat_files))
                s = samples[-1]
                print(f"  {s.minute:6.2f} min: rss {s.rss_mib} MiB, fds {s.fds}, tasks "
                      f"{s.tasks}, calls up {s.calls_active}, ok {s.ok}, failed {s.failed}",
                      file=sys.stderr, flush=True)
        results = {name: run.result(30) for name, run in runs.items()}
        time.sleep(2)  # calls ending: the engine settles
        after = take_sample(engine, http, started, stat_files)
        m = metrics(http)
        messages = len(list((data / "voicemail").rglob("*.wav"))) if (
            data / "voicemail").exists() else -1
    return {"rate_found": None if args.rate else rate, "sessions_per_s": total,
            "rates": rates, "samples": samples, "after": after, "results": results,
            "internal_errors": m.get("switchboard_internal_errors_total", 0.0),
            "voicemail_wavs": messages,
            "calls_by_outcome": {k: v for k, v in m.items()
                                 if k.startswith("switchboard_calls_total")}}


def verdict(out: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    for name, result in out["results"].items():
        if not result.ok:
            problems.append(f"{name}: {result.successful}/{result.calls} ok, {result.failed} "
                            f"failed, {result.unfinished} unfinished {result.failure_reasons}")
    samples: list[Sample] = out["samples"]
    if len(samples) >= 2:
        first, last = samples[0], samples[-1]
        if growth(first.rss_mib * 2**20, last.rss_mib * 2**20, RSS_TOLERANCE):
            problems.append(f"RSS grew {first.rss_mib} -> {last.rss_mib} MiB")
        if growth(first.fds, last.fds, COUNT_TOLERANCE):
            problems.append(f"descriptors grew {first.fds} -> {last.fds}")
        if growth(first.tasks, last.tasks, COUNT_TOLERANCE):
            problems.append(f"asyncio tasks grew {first.tasks} -> {last.tasks}")
    else:
        problems.append("fewer than two samples: no growth measured (--minutes too short?)")
    if out["internal_errors"]:
        problems.append(f"{out['internal_errors']:.0f} internal errors")
    return problems


def print_table(out: dict[str, Any]) -> None:
    names = list(SHARES)
    headers = ("minute", "RSS MiB", "open fds", "asyncio tasks", "calls up", "registrations",
               *(f"{n} ok/failed" for n in names))
    rows = []
    for s in [*out["samples"], out["after"]]:
        label = f"{s.minute:.1f}" if s is not out["after"] else f"{s.minute:.1f} (end)"
        rows.append((label, f"{s.rss_mib:.1f}", str(s.fds), str(s.tasks), str(s.calls_active),
                     str(s.registrations),
                     *(f"{s.ok.get(n, 0)}/{s.failed.get(n, 0)}" for n in names)))
    print_grid(headers, rows)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--minutes", type=float, default=60.0, help="soak length")
    p.add_argument("--rate", type=float, default=0.0,
                   help="sessions/s for the soak itself (0: half the zero-failure rate of "
                        "calls with hold, found first)")
    p.add_argument("--find-seconds", type=float, default=60.0,
                   help="budget of the ramp that finds the zero-failure rate")
    p.add_argument("--sample-seconds", type=float, default=60.0)
    p.add_argument("--users", type=int, default=1000, help="users in the directory")
    p.add_argument("--talk-ms", type=int, default=1000, help="answered until the hold")
    p.add_argument("--hold-ms", type=int, default=1000, help="on hold until the resume")
    p.add_argument("--message-ms", type=int, default=2000, help="a voicemail message's length")
    p.add_argument("--max-voicemail-rate", type=float, default=2.0,
                   help="voicemail messages/s at most (each is a WAV file)")
    p.add_argument("--db", default="", help="store URL for serve --db (default: SQLite)")
    add_ramp_arguments(p, name="soak", unit="calls", start_rate=50)
    args = p.parse_args(argv)
    if args.minutes <= 0 or args.users < 200:
        p.error("--minutes > 0 and --users >= 200")
    check_ramp_arguments(p, args)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if sipp_or_none() is None:
        return 2
    work = Path(tempfile.mkdtemp(prefix="soak-"))
    load0 = os.getloadavg()
    started = time.time()
    print(f"soak: {os.cpu_count()} CPUs, load average {load0[0]:.2f}, work dir {work}",
          file=sys.stderr, flush=True)
    try:
        out = soak(args, work)
    except TargetError as exc:
        print(f"soak: ERROR: {exc}", file=sys.stderr)
        print(f"work dir kept: {work}", file=sys.stderr)
        return 2
    problems = verdict(out)
    print_table(out)
    load1 = os.getloadavg()
    print(f"\n{args.minutes:g} min at {out['sessions_per_s']:g} sessions/s "
          + (f"(half of {out['rate_found']}/s found) " if out["rate_found"] else "")
          + ", ".join(f"{n} {r:g}/s" for n, r in out["rates"].items())
          + f"; voicemail WAVs kept {out['voicemail_wavs']}; load average {load0[0]:.2f} "
          f"before, {load1[0]:.2f} after ({os.cpu_count()} CPUs)")
    print(f"tolerance: RSS +{RSS_TOLERANCE[0]:.0%} + {RSS_TOLERANCE[1] // 2**20} MiB, fds and "
          f"tasks +{COUNT_TOLERANCE[0]:.0%} + {COUNT_TOLERANCE[1]}, first sample to last")
    print("verdict: " + ("PASS" if not problems else "FAIL: " + "; ".join(problems)))
    report = {"method": {"args": {k: (str(v) if isinstance(v, Path) else v)
                                  for k, v in vars(args).items()},
                         "shares": SHARES, "rss_tolerance": RSS_TOLERANCE,
                         "count_tolerance": COUNT_TOLERANCE},
              "load_average": [load0, load1],
              "samples": [asdict(s) for s in out["samples"]], "after": asdict(out["after"]),
              "results": {n: {"ok": r.ok, "successful": r.successful, "failed": r.failed,
                              "unfinished": r.unfinished, "calls": r.calls}
                          for n, r in out["results"].items()},
              "calls_by_outcome": out["calls_by_outcome"], "problems": problems}
    write_report(args.out, "soak", started, report)
    json.dumps(report)
    if problems or args.keep_tmp:
        print(f"work dir kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
