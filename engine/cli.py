"""The one command: ``switchboard``.

    switchboard serve [--directory FILE] [--db URL] [--sip HOST:PORT] [--http HOST:PORT]
    switchboard provision apply FILE
    switchboard registrations [--json]
    switchboard status set EXT STATUS

Every command takes ``--data-dir DIR`` (default ``./switchboard-data``): the
embedded SQLite store lives there, so two engines in two folders never mix.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import structlog

from provisioning.directory import DirectoryError, load_directory
from provisioning.store import ApplyReport, Store, StoreError, open_store

DEFAULT_DATA_DIR = "switchboard-data"


def configure_logging(fmt: str, level: str) -> None:
    renderer: structlog.typing.Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )


def version_text() -> str:
    """``switchboard 0.1.0 (parser: c)``: the installed distribution's version, and
    whether the parser's C quick paths were built, so a deployment that fell back
    to pure Python (no compiler at install) is visible without starting it."""
    from importlib.metadata import PackageNotFoundError, version

    from engine.message import grammar

    try:
        installed = version("switchboard")
    except PackageNotFoundError:  # run from a source tree that was never installed
        installed = "unknown"
    parser = "c" if grammar.SPEEDUPS is not None else "python"
    return f"switchboard {installed} (parser: {parser})"


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default=os.environ.get("SWITCHBOARD_DATA_DIR", DEFAULT_DATA_DIR),
                   help="folder for the embedded store, voicemail and recordings "
                        f"(default ./{DEFAULT_DATA_DIR})")
    p.add_argument("--db", default=os.environ.get("SWITCHBOARD_DB"),
                   help="store URL: sqlite:///path or postgresql://... "
                        "(default: SQLite in the data dir)")
    p.add_argument("--log-format", choices=("console", "json"), default="console")
    p.add_argument("--log-level", default="info",
                   choices=("debug", "info", "warning", "error"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="switchboard",
                                     description="asyncio SIP call-routing engine")
    parser.add_argument("--version", action="version", version=version_text(),
                        help="print the version and which SIP parser runs (c or python)")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the engine")
    _common(serve)
    serve.add_argument("--directory", help="apply this directory file before serving")
    serve.add_argument("--sip", default="0.0.0.0:5060", help="SIP UDP+TCP address")
    serve.add_argument("--http", default="127.0.0.1:8080", help="admin HTTP address")
    serve.add_argument("--digest-algorithms", default="SHA-256,MD5",
                       help="digest algorithms to challenge with; SHA-256 is always offered "
                            "first when enabled (RFC 8760); clients that read only the first "
                            "challenge and know only MD5 (SIPp 3.6) need 'MD5'")
    serve.add_argument("--advertise", default=None,
                       help="host or IP the engine puts in Via and Contact of the calls it "
                            "places (default: the --sip host, or 127.0.0.1 when that is 0.0.0.0)")
    for name, default, what in (("t1", 500, "round-trip estimate"),
                                ("t2", 4000, "maximum retransmit interval"),
                                ("t4", 5000, "how long a message may stay in the network")):
        serve.add_argument(f"--{name}-ms", type=int, default=default, metavar="MS",
                           help=f"RFC 3261 {name.upper()}, {what} (default {default}); every "
                                "transaction timer derives from T1, T2 and T4")
    serve.add_argument("--tls", default=None, metavar="HOST:PORT",
                       help="also listen for SIP over TLS here (needs --tls-cert; default "
                            "port 5061)")
    serve.add_argument("--tls-cert", default="", metavar="PEM",
                       help="certificate chain for the TLS listener (PEM)")
    serve.add_argument("--tls-key", default="", metavar="PEM",
                       help="its private key (PEM; default: in --tls-cert)")
    serve.add_argument("--tls-ca", default=None, metavar="PEM",
                       help="CA certificates that trunks' TLS certificates are checked "
                            "against (default: the system's, or $SSL_CERT_FILE)")
    serve.add_argument("--max-tcp-connections", type=int, default=1024, metavar="N",
                       help="SIP TCP+TLS connections held at most (default 1024); at the cap "
                            "the least valuable (a stranger's that sent no message yet, from "
                            "the busiest address) is closed for the newcomer")
    serve.add_argument("--tcp-per-source", type=int, default=32, metavar="N",
                       help="SIP TCP+TLS connections one IP address may hold (default 32); "
                            "trunks (inbound_from) and addresses with registered phones are "
                            "not limited this way")
    serve.add_argument("--tcp-first-message-seconds", type=float, default=5.0, metavar="S",
                       help="a new TCP/TLS connection must finish its TLS handshake and send "
                            "a complete SIP message within S seconds (default 5); then it "
                            "stays open while active (idle timeout 3600 s)")
    serve.add_argument("--media", choices=("relay", "direct"), default="relay",
                       help="relay (default): the RTP of calls goes through the engine, which "
                            "plays hold music, records and screens rebound calls; direct: SDP "
                            "passes end to end (signalling only, no hold music or recording)")
    serve.add_argument("--route-clock", default=None, metavar="ISO-TIME",
                       help="evaluate schedules as if the engine had started at this time "
                            "(the clock then runs normally): for tests and demos")

    prov = sub.add_parser("provision", help="load configuration")
    psub = prov.add_subparsers(dest="action", required=True)
    apply = psub.add_parser("apply", help="apply a directory file (all or nothing)")
    _common(apply)
    apply.add_argument("file")
    check = psub.add_parser("check", help="validate a directory file without applying it")
    _common(check)
    check.add_argument("file")

    regs = sub.add_parser("registrations", help="list live registrations")
    _common(regs)
    regs.add_argument("--json", action="store_true")

    status = sub.add_parser("status", help="user status")
    ssub = status.add_subparsers(dest="action", required=True)
    sset = ssub.add_parser("set", help="set a user's status live")
    _common(sset)
    sset.add_argument("extension")
    sset.add_argument("status", choices=("available", "away", "dnd", "lunch", "business_trip"))
    sclear = ssub.add_parser("clear", help="drop a live status: the directory's (or the "
                                           "schedule's) applies again")
    _common(sclear)
    sclear.add_argument("extension")

    vm = sub.add_parser("voicemail", help="mailboxes")
    vsub = vm.add_subparsers(dest="action", required=True)
    vlist = vsub.add_parser("list", help="the messages of a mailbox")
    _common(vlist)
    vlist.add_argument("extension")
    vlist.add_argument("--json", action="store_true",
                       help="an array of {id, caller, time, duration, read, path}")
    vdel = vsub.add_parser("delete", help="delete one message (its WAV file too)")
    _common(vdel)
    vdel.add_argument("extension")
    vdel.add_argument("id")

    rec = sub.add_parser("recordings", help="call recordings")
    rcsub = rec.add_subparsers(dest="action", required=True)
    rclist = rcsub.add_parser("list", help="every recording, oldest first")
    _common(rclist)
    rclist.add_argument("--json", action="store_true",
                        help="an array of {id, call_id, caller, callee, time, duration, "
                             "reason, path}")
    rcdel = rcsub.add_parser("delete", help="delete one recording (WAV and listing)")
    _common(rcdel)
    rcdel.add_argument("id")

    route = sub.add_parser("route", help="call routing")
    rsub = route.add_subparsers(dest="action", required=True)
    rexp = rsub.add_parser("explain", help="print the plan for a call that has not happened")
    _common(rexp)
    rexp.add_argument("--from", dest="caller", required=True,
                      help="an extension (a call from a phone) or a number (from a trunk)")
    rexp.add_argument("--to", dest="callee", required=True,
                      help="what is dialled: an extension, a DID, a number")
    rexp.add_argument("--at", default=None, metavar="ISO-TIME",
                      help="when (default now; without a zone: UTC)")
    rexp.add_argument("--status", default=None,
                      choices=("available", "away", "dnd", "lunch", "business_trip"),
                      help="force the called user's status")
    rexp.add_argument("--preferred-identity", default="", metavar="NUMBER",
                      help="the number the calling phone asks to present "
                           "(its P-Preferred-Identity): is it allowed, and what goes out")
    rexp.add_argument("--live", action="store_true",
                      help="use the registrations in the store (default: assume every user "
                           "has a registered phone)")
    rexp.add_argument("--json", action="store_true")
    return parser


def _store(args: argparse.Namespace) -> Store:
    data_dir = Path(args.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    return open_store(args.db, data_dir)


GC_THRESHOLDS = (200_000, 50, 10)


def tune_gc() -> None:
    """The cyclic collector, set for a long-running engine (measured: ``docs/benchmarks.md``).

    Ended calls are freed by reference counting (the call layer breaks its own
    cycles), so the collector only has to find the rare transient cycle. With
    CPython's default (a pass every 700 allocations, a full pass as soon as a
    quarter of the heap is new) a busy engine spent more CPU collecting than
    routing calls: 625-977 calls/s; 1,118 calls/s in 3 of 3 runs with these. What
    was loaded at start (the directory, registrations, code) is frozen: full
    passes do not scan it again.
    """
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


async def _serve(args: argparse.Namespace) -> int:
    import uvloop  # noqa: F401  (checked here so a missing install is a clear error)

    from engine.app import ServerConfig, parse_hostport, serve
    from engine.connlimit import StreamLimits
    from engine.core import Engine

    sip_host, sip_port = parse_hostport(args.sip, 5060)
    http_host, http_port = parse_hostport(args.http, 8080)
    for flag, value in (("--max-tcp-connections", args.max_tcp_connections),
                        ("--tcp-per-source", args.tcp_per_source)):
        if value < 1:
            raise ValueError(f"{flag} must be at least 1, not {value}")
    if not args.tcp_first_message_seconds > 0:
        raise ValueError(f"--tcp-first-message-seconds must be more than 0, "
                         f"not {args.tcp_first_message_seconds}")
    limits = StreamLimits(max_connections=args.max_tcp_connections,
                          per_source=args.tcp_per_source,
                          first_message_seconds=args.tcp_first_message_seconds)
    store = _store(args)
    await store.open()
    try:
        if args.directory:
            warnings: list[str] = []
            directory = load_directory(args.directory, warnings)
            for warning in warnings:
                structlog.get_logger("switchboard").warning("directory", warning=warning)
            report = await store.apply_directory(directory)
            _drop_removed_mailboxes(args, report)
            structlog.get_logger("switchboard").info(
                "directory applied", file=args.directory, changed=report.changed)
        loaded = await store.load_directory()
        if loaded is None:
            print("switchboard: no directory in the store; run 'switchboard provision apply "
                  "FILE' or pass --directory FILE", file=sys.stderr)
            return 2
        advertise = args.advertise or (sip_host if sip_host not in ("0.0.0.0", "::", "")
                                       else "127.0.0.1")
        hosts = {"127.0.0.1", "localhost", sip_host, advertise}
        algorithms = tuple(a.strip() for a in args.digest_algorithms.split(",") if a.strip())
        offset = 0.0
        if args.route_clock:
            offset = parse_when(args.route_clock).timestamp() - time.time()
        from engine.transaction import Timers

        timers = Timers(t1=args.t1_ms / 1000, t2=args.t2_ms / 1000, t4=args.t4_ms / 1000)
        engine = Engine(loaded, hosts, sip_port, digest_algorithms=algorithms,
                        advertise=advertise, route_clock_offset=offset, timers=timers,
                        anchor_media=args.media == "relay")
        engine.registrar.load(await store.load_bindings(), time.time())
        config = ServerConfig(sip_host, sip_port, http_host, http_port, Path(args.data_dir))
        config.limits = limits
        if args.tls or args.tls_cert:
            if not args.tls_cert:
                raise ValueError("--tls needs --tls-cert (and --tls-key unless the key is in it)")
            config.tls_host, config.tls_port = parse_hostport(args.tls or "", 5061)
            config.tls_cert, config.tls_key = args.tls_cert, args.tls_key
        config.tls_ca = args.tls_ca
        tune_gc()
        await serve(engine, store, config)
    finally:
        await store.close()
    return 0


def _print_warnings(warnings: list[str]) -> None:
    for warning in warnings:
        print(f"switchboard: warning: {warning}", file=sys.stderr)


async def _apply(args: argparse.Namespace) -> int:
    from provisioning.apply import format_report

    warnings: list[str] = []
    directory = load_directory(args.file, warnings)
    _print_warnings(warnings)
    store = _store(args)
    await store.open()
    try:
        report = await store.apply_directory(directory)
    finally:
        await store.close()
    _drop_removed_mailboxes(args, report)
    print(format_report(report))
    return 0


async def _registrations(args: argparse.Namespace) -> int:
    from engine.app import binding_json

    store = _store(args)
    await store.open()
    try:
        now = time.time()
        rows = [binding_json(b, now) for b in await store.load_bindings() if b.expires_at > now]
    finally:
        await store.close()
    rows.sort(key=lambda r: (str(r["extension"]), str(r["contact"])))
    if args.json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print("no live registrations")
    else:
        print(f"{'EXT':<8} {'EXPIRES':>7}  {'CONTACT':<50} SOURCE")
        for r in rows:
            print(f"{r['extension']!s:<8} {r['expires_in']!s:>7}  {r['contact']!s:<50} "
                  f"{r['source']}")
    return 0


async def _status_set(args: argparse.Namespace) -> int:
    store = _store(args)
    await store.open()
    try:
        await store.set_user_status(args.extension, args.status)
    finally:
        await store.close()
    print(f"{args.extension}: {args.status}")
    return 0


async def _status_clear(args: argparse.Namespace) -> int:
    store = _store(args)
    await store.open()
    try:
        cleared = await store.clear_user_status(args.extension)
        directory = await store.load_directory()
    finally:
        await store.close()
    user = directory.user(args.extension) if directory else None
    if user is None:
        raise LookupError(f"unknown extension '{args.extension}' (no such user)")
    print(f"{args.extension}: {user.status}" + ("" if cleared else " (no live status was set)"))
    return 0


async def _voicemail_list(args: argparse.Namespace) -> int:
    from provisioning.mailbox import dumps, format_messages

    store = _store(args)
    await store.open()
    try:
        await _known_user(store, args.extension)
        messages = await store.list_voicemail(args.extension)
    finally:
        await store.close()
    print(dumps(messages) if args.json else format_messages(messages))
    return 0


async def _voicemail_delete(args: argparse.Namespace) -> int:
    from provisioning.mailbox import delete_message

    store = _store(args)
    await store.open()
    try:
        await _known_user(store, args.extension)
        done = await delete_message(store, args.extension, args.id)
    finally:
        await store.close()
    if done.message is None:
        raise LookupError(f"mailbox {args.extension} has no message '{args.id}'")
    if done.file_error is not None:
        print(f"{args.extension}: deleted {args.id}; its file {done.message.path} remains: "
              f"{done.file_error}", file=sys.stderr)
        return 1
    print(f"{args.extension}: deleted {args.id}")
    return 0


async def _recordings_list(args: argparse.Namespace) -> int:
    from provisioning.recordings import list_recordings

    rows = list_recordings(Path(args.data_dir))
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    if not rows:
        print("no recordings")
    for r in rows:
        print(f"{r['id']}  {r.get('time', '?')}  {r.get('caller', '?')} -> "
              f"{r.get('callee', '?')}  {r.get('duration', 0)} s  ({r.get('reason', '')})")
    return 0


async def _recordings_delete(args: argparse.Namespace) -> int:
    from provisioning.recordings import delete_recording

    if not delete_recording(Path(args.data_dir), args.id):
        raise LookupError(f"no recording '{args.id}'")
    print(f"deleted recording {args.id}")
    return 0


async def _known_user(store: Store, extension: str) -> None:
    directory = await store.load_directory()
    if directory is None or directory.user(extension) is None:
        raise LookupError(f"unknown extension '{extension}' (no such user)")


def _drop_removed_mailboxes(args: argparse.Namespace, report: ApplyReport) -> None:
    """Deleting a user deletes their voicemail (the admin guide's warning): the files."""
    from provisioning.mailbox import remove_mailboxes

    removed = report.removed("users")
    if removed:
        remove_mailboxes(Path(args.data_dir), removed)


def parse_when(text: str) -> dt.datetime:
    """An ISO 8601 time; without a zone it is UTC."""
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"'{text}' is not an ISO 8601 time like 2026-12-01T10:30:00-05:00")\
            from None
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)


async def _route_explain(args: argparse.Namespace) -> int:
    from routing import explain, plan_to_json, render_text

    store = _store(args)
    await store.open()
    try:
        directory = await store.load_directory()
        bindings = await store.load_bindings() if args.live else []
    finally:
        await store.close()
    if directory is None:
        raise LookupError("no directory in the store; run 'switchboard provision apply FILE'")
    at = parse_when(args.at) if args.at else dt.datetime.now(dt.UTC)
    now = time.time()
    registered = frozenset(b.aor for b in bindings if b.expires_at > now) if args.live else None
    plan = explain(directory, args.caller, args.callee, at, status=args.status,
                   registered=registered, preferred_identity=args.preferred_identity)
    if args.json:
        print(json.dumps(plan_to_json(plan), indent=2))
    else:
        print(render_text(plan))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_format, args.log_level)
    try:
        if args.command == "serve":
            import uvloop
            return uvloop.run(_serve(args))
        if args.command == "provision" and args.action == "check":
            warnings: list[str] = []
            load_directory(args.file, warnings)
            _print_warnings(warnings)
            print(f"{args.file}: valid")
            return 0
        runners = {("provision", "apply"): _apply, ("registrations", None): _registrations,
                   ("status", "set"): _status_set, ("status", "clear"): _status_clear,
                   ("route", "explain"): _route_explain,
                   ("voicemail", "list"): _voicemail_list,
                   ("voicemail", "delete"): _voicemail_delete,
                   ("recordings", "list"): _recordings_list,
                   ("recordings", "delete"): _recordings_delete}
        runner = runners[(args.command, getattr(args, "action", None))]
        return asyncio.run(runner(args))
    except DirectoryError as exc:
        print(f"switchboard: directory refused, nothing applied:\n{exc}", file=sys.stderr)
        return 2
    except (ValueError, OSError, StoreError, LookupError) as exc:
        print(f"switchboard: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
