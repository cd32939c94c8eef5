"""Voicemail by email end to end: a caller leaves a message over real UDP sockets (SIP
and RTP) with the running engine, and the email arrives at a real SMTP server
(aiosmtpd on 127.0.0.1) with the recording attached.

The caller is the same small scripted UA as in ``test_e2e_voicemail``
(``tests.e2e_helpers.leave_message_from_trunk``): INVITE from the trunk, hear the
beep, speak a 1 kHz tone, ``#``, answer the engine's BYE.
"""

from __future__ import annotations

import datetime as dt
import json
import socket
import time
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from aiosmtpd.controller import Controller

from media.tones import dominant_frequency
from media.wav import load_wav, wav_info
from tests.conftest import EngineProcess, free_port
from tests.e2e_helpers import leave_message_from_trunk
from tests.test_e2e_voicemail import DIRECTORY as VOICEMAIL_DIRECTORY
from tests.test_mail import Sink

pytestmark = pytest.mark.peers

# test_e2e_voicemail's office, with a relay, 104's email settings and the Sales
# department in Tokyo (the engine runs with the machine's zone elsewhere: see run_call).
DIRECTORY = (VOICEMAIL_DIRECTORY
             .replace('caller_id = "+15145550100"\n',
                      'caller_id = "+15145550100"\ntimezone = "Asia/Tokyo"\n')
             .replace('domain = "pbx.test"\n',
                      'domain = "pbx.test"\n'
                      'smtp = {{ host = "127.0.0.1", port = {smtp}, sender = "pbx@pbx.test" }}\n')
             .replace('password = "pw104"\n',
                      'password = "pw104"\nemail = "david@example.test"\n')
             .replace("[users.voicemail]\n",
                      '[users.voicemail]\nemail = "{mode}"\nlanguage = "{language}"\n'))


@pytest.fixture
def relay() -> Iterator[tuple[int, Sink]]:
    sink = Sink()
    controller = Controller(sink, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield controller.port, sink
    finally:
        controller.stop()


def wait_for_email(sink: Sink, timeout: float = 15.0) -> EmailMessage:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sink.envelopes:
            [msg] = sink.messages()
            return msg
        time.sleep(0.05)
    raise AssertionError("no email reached the SMTP server")


def list_messages(engine: EngineProcess) -> list[dict[str, object]]:
    listed = engine.cli("voicemail", "list", "104", "--json")
    assert listed.returncode == 0, listed.stderr
    messages: list[dict[str, object]] = json.loads(listed.stdout)
    return messages


def run_call(tmp_path: Path, smtp_port: int, mode: str, language: str) -> EngineProcess:
    low = 40000 + (free_port() % 10000) // 2 * 2
    sip_port = free_port()
    (tmp_path / "directory.toml").write_text(DIRECTORY.format(
        trunk=sip_port, low=low, high=low + 99, smtp=smtp_port, mode=mode, language=language))
    engine = EngineProcess(tmp_path, tmp_path / "directory.toml").start()
    sip = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sip.bind(("127.0.0.1", sip_port))
        rtp.bind(("127.0.0.1", free_port()))
        sip.settimeout(5)
        leave_message_from_trunk(engine, sip, rtp, 1.5, "vm-mail-e2e", "vmm")
    except BaseException:
        engine.stop()
        raise
    finally:
        sip.close()
        rtp.close()
    return engine


def test_attach_emails_the_stored_wav(tmp_path: Path, relay: tuple[int, Sink],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    port, sink = relay
    monkeypatch.setenv("TZ", "America/Vancouver")  # the engine machine's local zone
    engine = run_call(tmp_path, port, "attach", "en")
    try:
        msg = wait_for_email(sink)
        [env] = sink.envelopes
        assert env.mail_from == "pbx@pbx.test" and env.rcpt_tos == ["david@example.test"]
        assert msg["Subject"].startswith("New voicemail from +15145550199 (")
        body = msg.get_body(preferencelist=("plain",))
        assert body is not None and "Extension: 104" in body.get_content()
        [part] = msg.iter_attachments()
        assert part.get_content_type() == "audio/wav"
        [message] = list_messages(engine)  # attach keeps the message
        # Times in 104's department zone (Asia/Tokyo), as the mailbox menu reads them.
        left = dt.datetime.strptime(str(message["time"]), "%Y-%m-%dT%H:%M:%SZ").replace(
            tzinfo=dt.UTC).astimezone(ZoneInfo("Asia/Tokyo"))
        assert f"Received: {left.isoformat(sep=' ')} (Asia/Tokyo)" in body.get_content()
        assert left.utcoffset() == dt.timedelta(hours=9)
        assert part.get_filename() == f"voicemail-104-{left:%Y%m%d-%H%M%S}-+15145550199.wav"
        stored = Path(str(message["path"])).read_bytes()
        assert part.get_content() == stored
        assert message["caller"] == "+15145550199"
        log = engine.log()
        assert '"voicemail email sent"' in log and '"mode": "attach"' in log
        assert "pw104" not in log
    finally:
        assert engine.stop() == 0, engine.log()


def test_attach_and_delete_empties_the_mailbox(tmp_path: Path,
                                               relay: tuple[int, Sink]) -> None:
    port, sink = relay
    engine = run_call(tmp_path, port, "attach_and_delete", "fr")
    try:
        msg = wait_for_email(sink)
        assert msg["Subject"].startswith("Nouveau message vocal de +15145550199 (")
        [part] = msg.iter_attachments()
        wav = tmp_path / "attached.wav"
        wav.write_bytes(part.get_content())
        info = wav_info(wav)
        assert (info.rate, info.bits, info.channels) == (8000, 16, 1)
        assert abs(dominant_frequency(load_wav(wav).pcm16, 8000) - 1000) < 10
        deadline = time.monotonic() + 10  # deleted once the relay has accepted
        while list_messages(engine) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert list_messages(engine) == []
        assert list((tmp_path / "voicemail" / "104").glob("*.wav")) == []
        assert '"deleted": true' in engine.log()
    finally:
        assert engine.stop() == 0, engine.log()
