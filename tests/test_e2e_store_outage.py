"""PostgreSQL restarted under a running engine: it keeps registering and routing from
memory, queues its writes, reconnects and writes them; nothing answered 200 is lost.

The database is a throwaway server of this test's own (tests/throwaway_pg.py), never
the shared one at 127.0.0.1:5432. SIPp phones register (digest auth) in runs before,
during and across the outage; a SIPp trunk places calls to a SIPp phone the whole
time. The server is stopped with ``pg_ctl stop -m fast`` (open sessions cut, as an
operator's restart) and started again.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncpg
import pytest

from engine.sip.auth import build_authorization
from engine.sip.message import Response, parse
from tests.conftest import EngineProcess, free_port
from tests.throwaway_pg import ThrowawayPostgres

sys.path.insert(0, str(Path(__file__).resolve().parent / "sipp"))
from calls import in_background
from sipp import SippResult, auth_csv_line, run_sipp

pytestmark = pytest.mark.peers

DOMAIN = "pbx.test"
PHONE = "2000"  # the callee: a SIPp UAS
DID = "+15550001000"
USERS = [str(2000 + i) for i in range(100)]
CALL_RATE = 10  # calls/s from the trunk, the whole run
CALLS = 300  # 30 s of calls: before, during and after the outage


def directory(trunk_port: int) -> str:
    out = [f'[system]\ndomain = "{DOMAIN}"\nextension_digits = 4\n',
           '[[departments]]\nname = "Office"\ncaller_id = "+15145550100"\ntimezone = "UTC"\n',
           '[[numbers]]\nnumber = "+15145550100"\nroute_to = "busy"\n',
           f'[[numbers]]\nnumber = "{DID}"\nroute_to = "extension:{PHONE}"\n',
           # the carrier is the trunk's port on 127.0.0.1 (the phones share the address)
           f'[[trunks]]\nname = "carrier"\nhost = "127.0.0.1"\nport = {free_port()}\n'
           f'inbound_from = ["127.0.0.1/32"]\ninbound_port = {trunk_port}\n']
    for ext in USERS:
        out.append(f'[[users]]\nextension = "{ext}"\nname = "User {ext}"\n'
                   f'password = "pw{ext}"\ndepartment = "Office"\n'
                   "[users.forwarding.available]\nno_answer_seconds = 60\n")
    return "\n".join(out)


def register_phone(engine: EngineProcess, port: int) -> None:
    """The callee registers from the port its SIPp will answer on."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", port))
        sock.settimeout(5)

        def send(cseq: int, auth: str | None) -> Response:
            lines = [f"REGISTER sip:{DOMAIN} SIP/2.0",
                     f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKso{cseq};rport",
                     f"From: <sip:{PHONE}@{DOMAIN}>;tag=r{cseq}", f"To: <sip:{PHONE}@{DOMAIN}>",
                     f"Call-ID: outage-phone-{port}", f"CSeq: {cseq} REGISTER",
                     "Max-Forwards: 70", f"Contact: <sip:{PHONE}@127.0.0.1:{port}>",
                     "Expires: 3600", *([f"Authorization: {auth}"] if auth else [])]
            sock.sendto("\r\n".join([*lines, "Content-Length: 0", "", ""]).encode(),
                        engine.sip)
            while True:
                msg = parse(sock.recv(65535))
                if isinstance(msg, Response) and msg.status >= 200:
                    return msg

        first = send(1, None)
        challenge = next(c for c in first.get_lines("www-authenticate") if "MD5" in c)
        auth = build_authorization(challenge, "REGISTER", f"sip:{DOMAIN}", PHONE,
                                   f"pw{PHONE}", "cn")
        assert send(2, auth).status == 200


def register_run(engine: EngineProcess, work: Path, users: list[str], rate: float) -> SippResult:
    """SIPp registers ``users`` (one REGISTER with credentials each, from one port)."""
    return run_sipp("register_auth.xml", engine.target,
                    [auth_csv_line(u, f"pw{u}") for u in users], calls=len(users), rate=rate,
                    timeout=60, extra_args=["-t", "u1", "-p", str(free_port())],
                    keys={"domain": DOMAIN}, workdir=work)


def stored_bindings(url: str) -> dict[str, str]:
    async def read() -> dict[str, str]:
        conn = await asyncpg.connect(url, timeout=10)
        try:
            rows = await conn.fetch("SELECT aor, contact FROM bindings WHERE NOT gone")
        finally:
            await conn.close()
        return {str(r["aor"]): str(r["contact"]) for r in rows}

    return asyncio.run(read())


def until(check: Callable[[], bool], what: str, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"not within {seconds} s: {what}")


@pytest.fixture
def pg() -> Iterator[ThrowawayPostgres]:
    server = ThrowawayPostgres()
    try:
        server.start()
        yield server
    finally:
        server.destroy()


def test_store_restarted_under_load_loses_no_acknowledged_registration(
        pg: ThrowawayPostgres, tmp_path: Path) -> None:
    trunk_port, phone_port = free_port(), free_port()
    (tmp_path / "directory.toml").write_text(directory(trunk_port))
    engine = EngineProcess(tmp_path, tmp_path / "directory.toml",
                           extra=["--db", pg.url, "--digest-algorithms", "MD5",
                                  "--media", "direct"]).start()
    try:
        register_phone(engine, phone_port)
        phone = in_background(lambda: run_sipp(
            "call_load_uas.xml", engine.target, None, calls=CALLS, rate=1, timeout=120,
            extra_args=["-t", "u1", "-p", str(phone_port)], workdir=tmp_path / "phone"))
        trunk = in_background(lambda: run_sipp(
            "call_load_uac.xml", engine.target, None, calls=CALLS, rate=CALL_RATE,
            timeout=120, extra_args=["-t", "u1", "-p", str(trunk_port), "-s", DID],
            keys={"caller": "+15145550199", "domain": DOMAIN}, workdir=tmp_path / "trunk"))

        def metric(name: str) -> float:
            return engine.metrics().get(name, -1.0)

        before = register_run(engine, tmp_path / "reg-before", USERS[1:31], rate=30)
        assert before.ok, before.describe()
        until(lambda: metric("switchboard_store_queued_writes") == 0, "first writes stored")

        pg.stop()  # calls keep going through this
        until(lambda: metric("switchboard_store_up") == 0, "the engine sees the store go")
        during = register_run(engine, tmp_path / "reg-during", USERS[31:61], rate=30)
        assert during.ok, during.describe()
        assert metric("switchboard_store_up") == 0  # all of it answered with the store away
        assert metric("switchboard_store_queued_writes") >= 30
        # a run that starts with the store away and ends after it is back
        across = in_background(lambda: register_run(engine, tmp_path / "reg-across",
                                                    USERS[61:], rate=10))
        time.sleep(1.0)
        pg.start()
        assert across.result(90).ok, across.result().describe()
        until(lambda: metric("switchboard_store_up") == 1
              and metric("switchboard_store_queued_writes") == 0, "the queue written")

        calls = trunk.result(150)
        assert calls.ok, calls.describe()  # no call failed, before, during or after
        assert phone.result(30).successful == CALLS

        stored = stored_bindings(pg.url)
        missing = [u for u in USERS if u not in stored]
        assert not missing, f"acknowledged registrations not in the store: {missing}"
        assert all(f"sip:{u}@127.0.0.1:" in stored[u] for u in USERS[1:]), stored

        m = engine.metrics()
        assert m["switchboard_store_reconnects_total"] == 1
        assert m["switchboard_store_reconnect_attempts_total"] >= 1
        assert m.get('switchboard_store_writes_dropped_total{reason="full"}', 0) == 0
        assert m.get('switchboard_store_writes_dropped_total{reason="refused"}', 0) == 0
        # one line when it went, one when it came back; no traceback per second between
        went = [e for e in engine.events("store unreachable: serving from memory, "
                                         "queuing changes")]
        back = engine.events("store back: writing the queued changes")
        assert len(went) == 1 and len(back) == 1, (went, back)
        assert int(str(back[0]["queued"])) >= 30, back
        noise = [line for line in engine.log().splitlines() if line.strip() and (
            not line.startswith("{") or "exception" in json.loads(line))]
        assert not noise, noise[:5]
        # the node's heartbeat is back too
        assert engine.health()["store"] == "up"
        # the LISTEN for other nodes' bindings went with its connection and was made
        # again once the store answered (the poll covered in between)
        lost = engine.events("binding notifications lost: polling until listening again")
        until(lambda: len(engine.events("listening for binding changes")) == 2,
              "listening again")
        assert len(lost) == 1, lost
    finally:
        code = engine.stop()
    assert code == 0, engine.log()[-3000:]
