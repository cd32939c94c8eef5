"""Overload control against a real ``switchboard serve``: one unknown source floods it
with new unauthenticated OPTIONS, REGISTER and INVITE over UDP while a registered
phone's call is up. The flood gets 503s with Retry-After at once, the call's BYE is
answered, and the metrics and the log say what was shed."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from engine.sip.message import Response, parse
from tests.conftest import EngineProcess
from tests.e2e_helpers import SALES, Ua, user_toml

# Run alone (make test's serial pass): the flood must be shed by the source's token
# bucket; with another worker's load on the other core the engine is late and sheds
# by queueing delay instead.
pytestmark = pytest.mark.serial

FLOOD = 3000  # requests from the flooding source
FLOOD_SOURCE = "127.0.0.2"  # not the phones' address: it holds no binding
CLIENT_TIMEOUT = 5.0  # how long the flooder waits for answers after its last request


def flood_request(i: int, port: int) -> bytes:
    method = ("OPTIONS", "REGISTER", "INVITE")[i % 3]
    uri = "sip:pbx.test" if method == "REGISTER" else "sip:102@pbx.test"
    lines = [f"{method} {uri} SIP/2.0",
             f"Via: SIP/2.0/UDP {FLOOD_SOURCE}:{port};branch=z9hG4bKflood{i};rport",
             "Max-Forwards: 70", f"From: <sip:scan{i}@pbx.test>;tag=f{i}",
             f"To: <{uri}>", f"Call-ID: flood-{i}@{FLOOD_SOURCE}", f"CSeq: 1 {method}",
             f"Contact: <sip:scan@{FLOOD_SOURCE}:{port}>", "Content-Length: 0", "", ""]
    return "\r\n".join(lines).encode()


class Flooder(threading.Thread):
    """Sends FLOOD requests as fast as it can and collects the final answers."""

    def __init__(self, engine: tuple[str, int]) -> None:
        super().__init__(daemon=True)
        self.engine = engine
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        self.sock.bind((FLOOD_SOURCE, 0))
        self.port = self.sock.getsockname()[1]
        self.answers: dict[str, Response] = {}  # Call-ID -> final response
        self.sent = 0
        self.done_sending = threading.Event()

    def run(self) -> None:
        reader = threading.Thread(target=self._read, daemon=True)
        reader.start()
        for i in range(FLOOD):
            self.sock.sendto(flood_request(i, self.port), self.engine)
            self.sent += 1
            if i % 100 == 99:
                time.sleep(0.002)  # the kernel's buffers, not the engine, must not drop
        self.done_sending.set()
        reader.join(CLIENT_TIMEOUT + 1)

    def _read(self) -> None:
        self.sock.settimeout(0.2)
        quiet_until: float | None = None
        while True:
            if self.done_sending.is_set():
                quiet_until = quiet_until or time.monotonic() + CLIENT_TIMEOUT
                if time.monotonic() > quiet_until or len(self.answers) >= FLOOD:
                    return
            try:
                msg = parse(self.sock.recv(65535))
            except TimeoutError:
                continue
            if isinstance(msg, Response) and msg.status >= 200:
                self.answers.setdefault(msg.call_id, msg)


def test_flood_from_one_source_is_refused_fast_while_a_call_stays_up(tmp_path: Path) -> None:
    directory = tmp_path / "directory.toml"
    directory.write_text('[system]\ndomain = "pbx.test"\n' + SALES + user_toml("101")
                         + user_toml("102"))
    # What is tested is the source's token bucket: a generous queueing budget keeps
    # delay shedding (its own tests: test_overload.py) from taking a share of the 503s
    # when the machine is slow.
    engine = EngineProcess(tmp_path, directory, ["--media", "direct",
                                                 "--digest-algorithms", "MD5",
                                                 "--max-queue-ms", "2000"]).start()
    caller, callee = Ua(engine.sip), Ua(engine.sip)
    try:
        callee.register("102", "pw102")
        caller.call_with_auth("sip:102@pbx.test", "101", "pw101", "ovl-call", callee=callee)

        flooder = Flooder(engine.sip)
        flooder.start()
        while flooder.sent < FLOOD // 2 and flooder.is_alive():
            time.sleep(0.001)
        # Mid-flood, the caller hangs up: its BYE reaches the callee and is answered.
        caller.in_dialog("BYE", 5, "z9hG4bKovlbye5")
        assert callee.engine_bye(CLIENT_TIMEOUT).method == "BYE"
        assert caller.response_to("BYE", 5, CLIENT_TIMEOUT).status == 200
        flooder.join(3 * CLIENT_TIMEOUT)
        assert not flooder.is_alive()

        answers = list(flooder.answers.values())
        refused = [a for a in answers if a.status == 503]
        # the source's token bucket (40 at once, 20/s) lets a few through: those get
        # the engine's own answers (200 for OPTIONS, 401 and 407 challenges)
        assert len(refused) >= 0.9 * FLOOD, (len(refused), len(answers))
        assert {a.status for a in answers} <= {503, 200, 401, 407}
        for a in refused:
            assert 2 <= int(a.get("retry-after") or 0) <= 10, a.to_bytes()
            assert a.to.tag and a.top_via.received == FLOOD_SOURCE
        assert {a.cseq.method for a in refused} == {"OPTIONS", "REGISTER", "INVITE"}

        metrics = engine.metrics()
        by_source = sum(v for k, v in metrics.items()
                        if k.startswith("switchboard_sip_shed_total{")
                        and 'reason="source_rate"' in k)
        assert by_source >= len(refused)
        assert metrics['switchboard_sip_shed_total{class="invite",reason="source_rate"}'] > 0
        assert metrics['switchboard_sip_shed_total{class="other",reason="source_rate"}'] > 0
        assert metrics["switchboard_event_loop_lag_seconds_count"] > 0

        # One log line when shedding starts and one when it stops, with the counts.
        deadline = time.monotonic() + 10
        while not engine.events("overload: shedding stopped") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(engine.events("overload: shedding started")) == 1
        [stopped] = engine.events("overload: shedding stopped")
        shed = stopped["shed"]
        assert isinstance(shed, dict) and sum(shed.values()) == by_source

        # The engine serves as before: a new call from a registered phone goes through.
        caller.call_with_auth("sip:102@pbx.test", "101", "pw101", "ovl-after", callee=callee)
        caller.hang_up()
        callee.engine_bye(CLIENT_TIMEOUT)
    finally:
        caller.close()
        callee.close()
        assert engine.stop() == 0, engine.log()[-3000:]
