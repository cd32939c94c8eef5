"""The one command: ``switchboard``.

    switchboard serve [--directory FILE] [--db URL] [--sip HOST:PORT] [--http HOST:PORT]
    switchboard provision apply FILE
    switchboard registrations [--json]
    switchboard nodes [--json]
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
from typing import TYPE_CHECKING, Any

import structlog

from provisioning.directory import DirectoryError, load_directory
from provisioning.mediafiles import render_ivr_texts
from provisioning.store import DEFAULT_SQLITE_NAME, ApplyReport, Store, StoreError, open_store
from routing import parse_when

if TYPE_CHECKING:
    from engine.shell.overload import OverloadConfig
    from provisioning.api.auth import Principal
    from provisioning.api.errors import ApiError

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

    from engine.sip.message import grammar

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
    serve.add_argument("--node-id", default="", metavar="NAME",
                       help="this process's name among the nodes sharing the store "
                            "(default: hostname:SIP port; letters, digits and . _ : -): "
                            "in the Call-IDs of the legs it makes and its calls' records; "
                            "see 'switchboard nodes'")
    serve.add_argument("--binding-poll-seconds", type=float, default=1.0, metavar="S",
                       help="nodes sharing a store: read the others' registrations at least "
                            "this often (default 1; on PostgreSQL each write also notifies "
                            "them at once, so this is the fallback)")
    serve.add_argument("--edge", default="", metavar="ADDR[,ADDR]",
                       help="edge proxies (IP or IP:PORT) whose X-Switchboard-Source header "
                            "names a request's real source (trunks, limits, blocks); from "
                            "anyone else the header is ignored (default: none)")
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
                            "trunks (inbound_from), addresses with registered phones and "
                            "--edge addresses are not limited this way")
    serve.add_argument("--tcp-first-message-seconds", type=float, default=5.0, metavar="S",
                       help="a new TCP/TLS connection must finish its TLS handshake and send "
                            "a complete SIP message within S seconds (default 5); then it "
                            "stays open while active (idle timeout 3600 s)")
    serve.add_argument("--max-queue-ms", type=int, default=200, metavar="MS",
                       help="overload: a new INVITE may wait this long in the receive queue "
                            "(default 200; refreshes of known sources twice that, other new "
                            "requests half); past it new requests get 503 at once")
    serve.add_argument("--source-rate", type=float, default=20.0, metavar="N",
                       help="new requests per second (burst 2N) from one IP address that is "
                            "neither a trunk nor holds a binding (default 20); past it, 503")
    serve.add_argument("--retry-after", default="2-10", metavar="MIN-MAX",
                       help="the Retry-After of overload 503s, seconds, drawn at random in "
                            "this range (default 2-10)")
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
    export = psub.add_parser("export", help="write the live directory as a directory file "
                                            "(TOML); without SIP passwords and voicemail PINs "
                                            "unless --with-secrets")
    _common(export)
    export.add_argument("--with-secrets", action="store_true",
                        help="write the SIP passwords, trunk passwords and voicemail PINs too "
                             "(keep that file as private as the store)")
    export.add_argument("file", nargs="?", default="-", help="where (default: standard output)")

    users = sub.add_parser("users", help="web sign-in of users (the admin API)")
    usub = users.add_subparsers(dest="action", required=True)
    upw = usub.add_parser("set-password", help="set a user's web password, read from "
                                               "standard input (ends their sessions)")
    _common(upw)
    upw.add_argument("extension")
    utotp = usub.add_parser("totp", help="enrol a user in two-factor sign-in (TOTP): prints "
                                         "the otpauth URI, a QR code and recovery codes")
    _common(utotp)
    utotp.add_argument("extension")
    utotp.add_argument("--png", default=None, metavar="PATH",
                       help="also write the QR code as a PNG file")
    utotp.add_argument("--disable", action="store_true", help="turn TOTP off for the user")

    uimp = usub.add_parser("import", help="create or change users from a CSV in a 3CX user "
                                          "export's columns (all or nothing; never deletes)")
    _common(uimp)
    uimp.add_argument("file", help="the CSV file ('-': standard input)")
    uimp.add_argument("--dry-run", action="store_true",
                      help="only say which users would be added, changed or left unchanged")
    uexp = usub.add_parser("export", help="the users, as JSON or (--csv) in a 3CX user "
                                          "export's columns; never passwords or PINs")
    _common(uexp)
    uexp.add_argument("--csv", action="store_true")

    ucopy = usub.add_parser("copy", help="a new user with another's settings and new "
                                         "credentials (SIP password and PIN printed once)")
    _common(ucopy)
    ucopy.add_argument("source", help="the extension whose settings are copied")
    ucopy.add_argument("extension", help="the new user's extension")
    ucopy.add_argument("--name", required=True)
    ucopy.add_argument("--email", default=None)
    ucopy.add_argument("--mobile", default=None)

    uwel = usub.add_parser("welcome", help="email a user their extension, SIP credentials "
                                           "and a link to choose their web password "
                                           "([system] smtp and admin_url)")
    _common(uwel)
    uwel.add_argument("extension")

    keys = sub.add_parser("apikeys", help="API keys for integrations")
    ksub = keys.add_subparsers(dest="action", required=True)
    kcreate = ksub.add_parser("create", help="create a key (printed once)")
    _common(kcreate)
    kcreate.add_argument("--role", required=True, choices=("department_admin", "manager",
                                                           "owner"))
    kcreate.add_argument("--name", required=True)
    kcreate.add_argument("--department", default="",
                         help="the department of a department_admin key")
    klist = ksub.add_parser("list", help="every key (never the secret)")
    _common(klist)
    klist.add_argument("--json", action="store_true")
    krevoke = ksub.add_parser("revoke", help="revoke a key at once")
    _common(krevoke)
    krevoke.add_argument("id")

    audit = sub.add_parser("audit", help="the audit log of changes, newest first")
    _common(audit)
    audit.add_argument("--limit", type=int, default=50)
    audit.add_argument("--target", default=None, help="e.g. users/101")
    audit.add_argument("--json", action="store_true")

    regs = sub.add_parser("registrations", help="list live registrations")
    _common(regs)
    regs.add_argument("--json", action="store_true")

    nodes = sub.add_parser("nodes", help="list the engine processes sharing the store, "
                                         "with their load")
    _common(nodes)
    nodes.add_argument("--json", action="store_true")

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


# The young generation is collected every 20,000 net allocations, the middle one
# every 500 young passes (10 million), the whole heap every 10 of those. A young
# pass walks every object allocated since the last one that is still alive, and a
# busy engine keeps its ended calls' transactions for 32 s (RFC 3261 Timers J, L,
# M): at 240 calls/s with 200,000 the young pass held the event loop 110-200 ms
# every 6 s on a 2-core box, long enough for the overload control (200 ms of
# queueing) to refuse calls with 503. 20,000 keeps a pass near 20 ms for the same
# total work (each surviving object is walked once while young either way), and
# the product with the middle threshold stays at 10 million, so middle and full
# passes are as rare as before.
GC_THRESHOLDS = (20_000, 500, 10)


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


def overload_config(max_queue_ms: int, source_rate: float, retry_after: str,
                    t1_ms: int) -> OverloadConfig:
    """serve's overload flags, checked: an error names the flag and the value."""
    from engine.shell.overload import OverloadConfig

    if max_queue_ms < 1:
        raise ValueError(f"--max-queue-ms must be at least 1, not {max_queue_ms}")
    if not source_rate > 0:
        raise ValueError(f"--source-rate must be more than 0, not {source_rate}")
    low, sep, high = retry_after.partition("-")
    if not (low.isdigit() and (not sep or high.isdigit())):
        raise ValueError(f"--retry-after {retry_after!r}: expected MIN-MAX seconds, e.g. 2-10")
    bounds = (int(low), int(high or low))
    if not 0 < bounds[0] <= bounds[1]:
        raise ValueError(f"--retry-after {retry_after!r}: need 0 < MIN <= MAX")
    return OverloadConfig(max_queue=max_queue_ms / 1000, source_rate=source_rate,
                          source_burst=2 * source_rate, retry_after=bounds, t1=t1_ms / 1000)


async def _serve(args: argparse.Namespace) -> int:
    import uvloop  # noqa: F401  (checked here so a missing install is a clear error)

    from engine.core import Engine
    from engine.shell.app import NODE_ID, ServerConfig, parse_hostport, serve
    from engine.shell.connlimit import StreamLimits
    from engine.sip.edge import EdgeTrust, parse_edges

    sip_host, sip_port = parse_hostport(args.sip, 5060)
    http_host, http_port = parse_hostport(args.http, 8080)
    for flag, value in (("--max-tcp-connections", args.max_tcp_connections),
                        ("--tcp-per-source", args.tcp_per_source)):
        if value < 1:
            raise ValueError(f"{flag} must be at least 1, not {value}")
    if args.node_id and not NODE_ID.fullmatch(args.node_id):
        raise ValueError(f"--node-id {args.node_id!r}: letters, digits and . _ : - only "
                         "(at most 63, starting with a letter or digit); it goes in Call-IDs")
    if not args.tcp_first_message_seconds > 0:
        raise ValueError(f"--tcp-first-message-seconds must be more than 0, "
                         f"not {args.tcp_first_message_seconds}")
    limits = StreamLimits(max_connections=args.max_tcp_connections,
                          per_source=args.tcp_per_source,
                          first_message_seconds=args.tcp_first_message_seconds)
    overload = overload_config(args.max_queue_ms, args.source_rate, args.retry_after,
                               args.t1_ms)
    edges = parse_edges(args.edge)
    if not args.binding_poll_seconds > 0:
        raise ValueError(f"--binding-poll-seconds must be more than 0, "
                         f"not {args.binding_poll_seconds}")
    async with _store(args) as store:
        if args.directory:
            warnings: list[str] = []
            stored, _ = await store.load_directory_data()
            directory = load_directory(args.directory, warnings, stored)
            warnings += render_ivr_texts(directory, Path(args.data_dir))
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
        from engine.sip.transaction import Timers

        timers = Timers(t1=args.t1_ms / 1000, t2=args.t2_ms / 1000, t4=args.t4_ms / 1000)
        engine = Engine(loaded, hosts, sip_port, digest_algorithms=algorithms,
                        advertise=advertise, route_clock_offset=offset, timers=timers,
                        anchor_media=args.media == "relay", edge=EdgeTrust(edges))
        engine.registrar.load(await store.load_bindings(), time.time())
        config = ServerConfig(sip_host, sip_port, http_host, http_port, Path(args.data_dir))
        config.limits = limits
        config.overload = overload
        config.node_id = args.node_id
        config.binding_poll_seconds = args.binding_poll_seconds
        if args.tls or args.tls_cert:
            if not args.tls_cert:
                raise ValueError("--tls needs --tls-cert (and --tls-key unless the key is in it)")
            config.tls_host, config.tls_port = parse_hostport(args.tls or "", 5061)
            config.tls_cert, config.tls_key = args.tls_cert, args.tls_key
        config.tls_ca = args.tls_ca
        tune_gc()
        await serve(engine, store, config)
    return 0


async def _stored_for_check(args: argparse.Namespace) -> dict[str, Any] | None:
    """The store's directory, whose secrets a checked file may leave out (as apply
    keeps them); None without a store, and check never creates one."""
    if args.db is None and not (Path(args.data_dir) / DEFAULT_SQLITE_NAME).exists():
        return None
    try:
        async with _store(args) as store:
            stored, _ = await store.load_directory_data()
    except StoreError as exc:
        print(f"switchboard: warning: the file is checked alone ({exc})", file=sys.stderr)
        return None
    return stored


def _print_warnings(warnings: list[str]) -> None:
    for warning in warnings:
        print(f"switchboard: warning: {warning}", file=sys.stderr)


async def _apply(args: argparse.Namespace) -> int:
    from provisioning.api.auth import new_audit
    from provisioning.apply import format_report

    async with _store(args) as store:
        warnings: list[str] = []
        # what the file leaves out of the secrets, the store keeps (an export without them)
        stored, _ = await store.load_directory_data()
        directory = load_directory(args.file, warnings, stored)
        warnings += render_ivr_texts(directory, Path(args.data_dir))
        _print_warnings(warnings)
        audit = new_audit(_cli_actor(), "cli", "provision.apply", "directory", None,
                          {"file": str(Path(args.file).resolve())})
        report = await store.apply_directory(directory, audit=audit)
    _drop_removed_mailboxes(args, report)
    print(format_report(report))
    return 0


async def _registrations(args: argparse.Namespace) -> int:
    from provisioning.model import binding_json

    async with _store(args) as store:
        now = time.time()
        rows = [binding_json(b, now) for b in await store.load_bindings() if b.expires_at > now]
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


# A node whose heartbeat is older than this is shown as not answering (it beats
# every 2 s: engine.app.HEARTBEAT_SECONDS).
NODE_STALE_SECONDS = 10.0


async def _nodes(args: argparse.Namespace) -> int:
    async with _store(args) as store:
        nodes = await store.list_nodes()
    now = time.time()
    rows = [{"id": n.id, "address": n.address, "started": _iso(n.started_at),
             "last_seen_seconds": round(max(0.0, now - n.last_seen), 1),
             "up": now - n.last_seen <= NODE_STALE_SECONDS,
             "calls": n.calls, "registrations": n.registrations} for n in nodes]
    if args.json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print("no nodes (none is serving on this store)")
    else:
        print(f"{'NODE':<28} {'ADDRESS':<22} {'STATE':<6} {'SEEN':>6} {'CALLS':>6} "
              f"{'REGS':>6}  STARTED")
        for r in rows:
            state = "up" if r["up"] else "stale"
            print(f"{r['id']!s:<28} {r['address']!s:<22} {state:<6} "
                  f"{r['last_seen_seconds']!s:>5}s {r['calls']!s:>6} {r['registrations']!s:>6}"
                  f"  {r['started']}")
    return 0


def _iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def _status_set(args: argparse.Namespace) -> int:
    from provisioning.api.auth import new_audit

    async with _store(args) as store:
        await store.set_user_status(args.extension, args.status)
        await store.write_audit(new_audit(_cli_actor(), "cli", "status.set",
                                          f"users/{args.extension}", None,
                                          {"status": args.status}))
    print(f"{args.extension}: {args.status}")
    return 0


async def _status_clear(args: argparse.Namespace) -> int:
    async with _store(args) as store:
        cleared = await store.clear_user_status(args.extension)
        if cleared:
            from provisioning.api.auth import new_audit

            await store.write_audit(new_audit(_cli_actor(), "cli", "status.clear",
                                              f"users/{args.extension}"))
        directory = await store.load_directory()
    user = directory.user(args.extension) if directory else None
    if user is None:
        raise LookupError(f"unknown extension '{args.extension}' (no such user)")
    print(f"{args.extension}: {user.status}" + ("" if cleared else " (no live status was set)"))
    return 0


async def _voicemail_list(args: argparse.Namespace) -> int:
    from provisioning.mailbox import dumps, format_messages

    async with _store(args) as store:
        await _known_user(store, args.extension)
        messages = await store.list_voicemail(args.extension)
    print(dumps(messages) if args.json else format_messages(messages))
    return 0


async def _voicemail_delete(args: argparse.Namespace) -> int:
    from provisioning.mailbox import delete_message

    async with _store(args) as store:
        await _known_user(store, args.extension)
        done = await delete_message(store, args.extension, args.id)
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


async def _export(args: argparse.Namespace) -> int:
    from provisioning.export import directory_toml

    async with _store(args) as store:
        data, revision = await store.load_directory_data()
    if data is None:
        raise LookupError("no directory in the store; run 'switchboard provision apply FILE'")
    if args.with_secrets:
        print("switchboard: warning: the export contains SIP passwords, trunk passwords and "
              "voicemail PINs: keep it as private as the store", file=sys.stderr)
    text = directory_toml(data, revision, with_secrets=args.with_secrets)
    if args.file == "-":
        sys.stdout.write(text)
    else:
        Path(args.file).write_text(text)
        print(f"{args.file}: revision {revision}", file=sys.stderr)
    return 0


async def _cli_user(store: Store, extension: str) -> object:
    directory = await store.load_directory()
    user = directory.user(extension) if directory else None
    if user is None:
        raise LookupError(f"unknown extension '{extension}' (no such user)")
    return user


def _cli_actor() -> str:
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


async def _users_set_password(args: argparse.Namespace) -> int:
    from provisioning.api.auth import hash_password, new_audit

    line = sys.stdin.readline()
    password = line[:-1] if line.endswith("\n") else line
    hashed = hash_password(password)  # ValueError: too short, said before touching the store
    async with _store(args) as store:
        await _cli_user(store, args.extension)
        await store.set_web_password(args.extension, hashed)
        await store.write_audit(new_audit(_cli_actor(), "cli", "auth.password",
                                          f"users/{args.extension}", None,
                                          {"web_password": "********"}))
    print(f"{args.extension}: web password set (their sessions are ended)")
    return 0


def _cli_principal() -> Principal:
    """Who the CLI acts as through the admin API's write path: whoever may open the
    store may already rewrite it all, so an owner."""
    from provisioning.api.auth import Principal

    return Principal(actor=_cli_actor(), role="owner")


def _print_api_error(exc: ApiError) -> int:
    print("switchboard: refused, nothing applied:", file=sys.stderr)
    for path, message in exc.errors:
        print(f"  {path}: {message}" if path else f"  {message}", file=sys.stderr)
    return 2


async def _users_import(args: argparse.Namespace) -> int:
    from provisioning.api.errors import ApiError
    from provisioning.api.resources import DirectoryApi

    text = sys.stdin.read() if args.file == "-" else \
        Path(args.file).read_text(encoding="utf-8-sig")
    async with _store(args) as store:
        try:
            report, revision = await DirectoryApi(store).import_users(
                _cli_principal(), text, None, "cli", dry_run=args.dry_run)
        except ApiError as exc:
            return _print_api_error(exc)
    print("added: " + (", ".join(report["added"]) or "none"))
    print("changed: " + (", ".join(f"{ext} ({', '.join(fields)})" for ext, fields
                                   in report["changed"].items()) or "none"))
    print("unchanged: " + (", ".join(report["unchanged"]) or "none"))
    if report["ignored_columns"]:
        print("ignored columns: " + ", ".join(report["ignored_columns"]))
    if args.dry_run:
        print("dry run: nothing applied")
    else:
        print(f"revision {revision}")
    return 0


async def _users_copy(args: argparse.Namespace) -> int:
    from provisioning.api.errors import ApiError
    from provisioning.api.resources import DirectoryApi

    body = {"extension": args.extension, "name": args.name}
    body |= {k: v for k in ("email", "mobile") if (v := getattr(args, k)) is not None}
    async with _store(args) as store:
        try:
            row, revision = await DirectoryApi(store).copy_user(
                _cli_principal(), args.source, body, None, "cli")
        except ApiError as exc:
            return _print_api_error(exc)
    print(f"{row['extension']}: created from {args.source} (revision {revision}); "
          "the credentials below are shown once")
    print(f"SIP password: {row['sip_password']}")
    print(f"voicemail PIN: {row['voicemail_pin']}")
    return 0


async def _users_welcome(args: argparse.Namespace) -> int:
    from provisioning.api.auth import new_audit
    from provisioning.api.errors import ApiError
    from provisioning.api.mail import WELCOME_SECONDS, send_welcome

    async with _store(args) as store:
        directory = await store.load_directory()
        user = directory.user(args.extension) if directory else None
        if directory is None or user is None:
            raise LookupError(f"unknown extension '{args.extension}' (no such user)")
        index = next(i for i, u in enumerate(directory.users) if u.extension == user.extension)
        try:
            sent_to = await send_welcome(store, directory.system, user, f"users[{index}]")
        except ApiError as exc:
            return _print_api_error(exc)
        await store.write_audit(new_audit(_cli_actor(), "cli", "users.welcome",
                                          f"users/{user.extension}", None, {"to": sent_to}))
    print(f"{user.extension}: welcome sent to {sent_to} (the link to choose a web password "
          f"lasts {WELCOME_SECONDS // 3600} hours)")
    return 0


async def _users_export(args: argparse.Namespace) -> int:
    from provisioning.api.resources import DirectoryApi, redact

    async with _store(args) as store:
        api = DirectoryApi(store)
        if args.csv:
            text, _ = await api.export_users(_cli_principal())
            sys.stdout.write(text)
            return 0
        data, _ = await api.snapshot()
    print(json.dumps([redact("users", u) for u in data["users"]], indent=2,
                     ensure_ascii=False))
    return 0


async def _users_totp(args: argparse.Namespace) -> int:
    import segno

    from provisioning.api.auth import enrol_totp, new_audit
    from provisioning.model import User
    from provisioning.secretbox import SecretBox

    async with _store(args) as store:
        user = await _cli_user(store, args.extension)
        assert isinstance(user, User)
        if args.disable:
            done = await store.delete_totp(args.extension)
            await store.delete_totp_pending(args.extension)  # and an enrolment begun
            await store.write_audit(new_audit(_cli_actor(), "cli", "auth.totp.disable",
                                              f"users/{args.extension}"))
            print(f"{args.extension}: TOTP " + ("turned off" if done else "was not on"))
            return 0
        directory = await store.load_directory()
        assert directory is not None
        # the data dir's key (or SWITCHBOARD_SECRET_KEY), as `serve` uses: the seed is
        # stored sealed
        box = SecretBox.for_data_dir(Path(args.data_dir))
        enrolment = await enrol_totp(store, box, user, directory.system.domain)
        await store.write_audit(new_audit(_cli_actor(), "cli", "auth.totp.enrol",
                                          f"users/{args.extension}"))
    qr = segno.make(enrolment.uri, error="m")
    print(f"{args.extension}: TOTP on. Scan this with an authenticator app:\n")
    qr.terminal(compact=True)
    print(f"\n{enrolment.uri}\n")
    if args.png:
        qr.save(args.png, scale=6)
        print(f"QR code: {args.png}")
    print("Recovery codes (each works once, instead of a code; keep them safe):")
    for code in enrolment.recovery_codes:
        print(f"  {code}")
    return 0


async def _apikeys_create(args: argparse.Namespace) -> int:
    from provisioning.api.actions import api_key_json
    from provisioning.api.auth import create_api_key, new_audit

    async with _store(args) as store:
        if args.department:
            directory = await store.load_directory()
            if directory is None or directory.department(args.department) is None:
                raise LookupError(f"unknown department '{args.department}'")
        record, key = await create_api_key(store, args.name, args.role, args.department)
        await store.write_audit(new_audit(_cli_actor(), "cli", "api_keys.create",
                                          f"api_keys/{record.id}", None, api_key_json(record)))
    print(f"API key {record.id} ({record.name}, {record.role}); shown once, keep it secret:")
    print(key)
    return 0


async def _apikeys_list(args: argparse.Namespace) -> int:
    from provisioning.api.actions import api_key_json

    async with _store(args) as store:
        rows = [api_key_json(k) for k in await store.list_api_keys()]
    if args.json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print("no API keys")
    for r in [] if args.json else rows:
        state = f"revoked {r['revoked']}" if r["revoked"] else "live"
        dept = f" ({r['department']})" if r["department"] else ""
        print(f"{r['id']}  {r['name']:<20} {r['role']}{dept}  created {r['created']}  {state}")
    return 0


async def _apikeys_revoke(args: argparse.Namespace) -> int:
    from provisioning.api.auth import new_audit

    async with _store(args) as store:
        if not await store.revoke_api_key(args.id, time.time()):
            raise LookupError(f"no live API key '{args.id}'")
        await store.write_audit(new_audit(_cli_actor(), "cli", "api_keys.revoke",
                                          f"api_keys/{args.id}"))
    print(f"API key {args.id} revoked")
    return 0


async def _audit(args: argparse.Namespace) -> int:
    from provisioning.api.actions import audit_json

    async with _store(args) as store:
        rows = [audit_json(e) for e in await store.list_audit(limit=args.limit,
                                                              target=args.target)]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no audit entries")
    for r in rows:
        change = ""
        if r["before"] is not None or r["after"] is not None:
            change = f"  {json.dumps(r['before'])} -> {json.dumps(r['after'])}"
        print(f"{r['at']}  {r['actor']:<18} {r['source']:<15} {r['action']:<18} "
              f"{r['target']}{change}")
    return 0


async def _route_explain(args: argparse.Namespace) -> int:
    from routing import explain, plan_to_json, render_text

    async with _store(args) as store:
        directory = await store.load_directory()
        bindings = await store.load_bindings() if args.live else []
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
            load_directory(args.file, warnings, asyncio.run(_stored_for_check(args)))
            _print_warnings(warnings)
            print(f"{args.file}: valid")
            return 0
        runners = {("provision", "apply"): _apply, ("registrations", None): _registrations,
                   ("nodes", None): _nodes,
                   ("status", "set"): _status_set, ("status", "clear"): _status_clear,
                   ("route", "explain"): _route_explain,
                   ("voicemail", "list"): _voicemail_list,
                   ("voicemail", "delete"): _voicemail_delete,
                   ("recordings", "list"): _recordings_list,
                   ("recordings", "delete"): _recordings_delete,
                   ("provision", "export"): _export,
                   ("users", "set-password"): _users_set_password,
                   ("users", "totp"): _users_totp,
                   ("users", "import"): _users_import,
                   ("users", "export"): _users_export,
                   ("users", "copy"): _users_copy,
                   ("users", "welcome"): _users_welcome,
                   ("apikeys", "create"): _apikeys_create,
                   ("apikeys", "list"): _apikeys_list,
                   ("apikeys", "revoke"): _apikeys_revoke,
                   ("audit", None): _audit}
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
