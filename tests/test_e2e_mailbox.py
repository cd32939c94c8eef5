"""Listening to one's mailbox by phone, end to end: a message is left through the trunk,
then its owner's phone dials the voicemail number (999), enters the PIN and hears it.

Scripted UAs over real UDP sockets, built from the engine's own message and media
modules (like ``test_e2e_voicemail``): the trunk caller is recognised by its
source port (the trunk's ``inbound_port``), the phone authenticates with digest
(407, MD5 challenge). RTP to each side is read in the background so no packet
waits in a full socket buffer.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from media.tones import dominant_frequency, goertzel
from tests.conftest import EngineProcess, free_port
from tests.e2e_helpers import SALES_104, Ua

pytestmark = pytest.mark.peers

DIRECTORY = """
[system]
domain = "pbx.test"
rtp_ports = "{low}-{high}"
voicemail_number = "999"

[[trunks]]
name = "carrier"
host = "127.0.0.1"
port = 5
inbound_from = ["127.0.0.1/32"]
inbound_port = {trunk}
""" + SALES_104 + """voicemail_pin = "1234"
[users.voicemail]
language = "en"
pin_required = true
max_seconds = 20
"""

CALLER_NUMBER = "+15145550199"


def leave_message(engine: EngineProcess, trunk: Ua) -> None:
    """Through the trunk to 104's DID: after the beep, 2 s of 1 kHz, then '#'."""
    uri = "sip:+15145550104@127.0.0.1"
    trunk.invite(uri, CALLER_NUMBER, "vm-leave")
    answered_at = time.monotonic()
    trunk.answered(trunk.final(1), uri, "z9hG4bKvm-leave-ack")
    deadline = time.monotonic() + 4
    while goertzel(trunk.tap.audio(answered_at), 8000, 1000) < 0.05:
        assert time.monotonic() < deadline, "no beep"
        time.sleep(0.05)
    time.sleep(0.5)  # the rest of the 400 ms beep
    trunk.send_tone(1000, 2000)
    trunk.press("#")
    trunk.engine_bye(10)
    listed = json.loads(engine.cli("voicemail", "list", "104", "--json").stdout)
    assert [(m["caller"], m["read"]) for m in listed] == [(CALLER_NUMBER, False)]


def one_khz_stretch(pcm16: bytes, windows: int = 5) -> bool:
    """``windows`` consecutive 200 ms windows dominated by 1 kHz (1 s of the message)."""
    size = 1600 * 2
    run = 0
    for i in range(0, len(pcm16) - size + 1, size):
        w = pcm16[i:i + size]
        if goertzel(w, 8000, 1000) > 0.2 and abs(dominant_frequency(w, 8000) - 1000) < 20:
            run += 1
            if run >= windows:
                return True
        else:
            run = 0
    return False


@dataclass
class Office:
    engine: EngineProcess
    trunk: Ua
    phone: Ua


@contextlib.contextmanager
def office(tmp_path: Path) -> Iterator[Office]:
    trunk_port = free_port()
    low = 40000 + (free_port() % 10000) // 2 * 2
    (tmp_path / "directory.toml").write_text(
        DIRECTORY.format(trunk=trunk_port, low=low, high=low + 99))
    engine = EngineProcess(tmp_path, tmp_path / "directory.toml").start()
    uas: list[Ua] = []
    try:
        uas.append(Ua(engine.sip, trunk_port))
        uas.append(Ua(engine.sip))
        yield Office(engine, uas[0], uas[1])
    finally:
        for ua in uas:
            ua.close()
        code = engine.stop()
        assert code == 0, f"engine exit {code}:\n{engine.log()}"


def test_listen_to_a_message_by_phone_then_delete_it(tmp_path: Path) -> None:
    with office(tmp_path) as o:
        leave_message(o.engine, o.trunk)

        phone = o.phone
        phone.call_with_auth("sip:999@pbx.test", "104", "pw104", "mbx-listen")
        answered_at = time.monotonic()
        # The PIN prompt plays; the PIN interrupts it.
        deadline = answered_at + 3
        while len(phone.tap.audio(answered_at)) < 8000:  # 0.5 s of "Please enter your PIN"
            assert time.monotonic() < deadline, "no PIN prompt"
            time.sleep(0.05)
        phone.press("1234#")
        pin_at = time.monotonic()
        # Summary, header, then the recording: 1 kHz for about 2 s.
        deadline = pin_at + 15
        while not one_khz_stretch(phone.tap.audio(pin_at)):
            assert time.monotonic() < deadline, "the message was not played within 15 s"
            time.sleep(0.1)
        listed = json.loads(o.engine.cli("voicemail", "list", "104", "--json").stdout)
        assert [m["read"] for m in listed] == [True]  # read once its recording starts

        phone.press("3")  # delete: "Message deleted." (1 s), then "End of messages..."
        time.sleep(1.8)
        bye = None
        for _ in range(3):  # '9' during "Message deleted." would be ignored: press again
            phone.press("9")  # "Goodbye." and hang-up
            with contextlib.suppress(AssertionError):
                bye = phone.engine_bye(3)
                break
        assert bye is not None, f"no hang-up after '9': {phone.seen}"
        assert phone.ok is not None and bye.call_id == phone.ok.call_id

        listed = json.loads(o.engine.cli("voicemail", "list", "104", "--json").stdout)
        assert listed == []
        log = o.engine.log()
        assert "mailbox answered" in log and "mailbox: message deleted" in log
        assert "mailbox session over" in log


def test_three_wrong_pins_hang_up_and_keep_the_message(tmp_path: Path) -> None:
    with office(tmp_path) as o:
        leave_message(o.engine, o.trunk)

        phone = o.phone
        phone.call_with_auth("sip:999@pbx.test", "104", "pw104", "mbx-wrong")
        answered_at = time.monotonic()
        deadline = answered_at + 3
        while len(phone.tap.audio(answered_at)) < 8000:
            assert time.monotonic() < deadline, "no PIN prompt"
            time.sleep(0.05)
        for _ in range(3):
            phone.press("4321#")
            time.sleep(0.5)
        phone.engine_bye(8)
        heard = phone.tap.audio(answered_at)
        assert not one_khz_stretch(heard), "the message played without the PIN"

        listed = json.loads(o.engine.cli("voicemail", "list", "104", "--json").stdout)
        assert [(m["caller"], m["read"]) for m in listed] == [(CALLER_NUMBER, False)]
        assert "mailbox session over" in o.engine.log()
