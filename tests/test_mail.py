"""Voicemail email (engine.mail) against a real SMTP server (aiosmtpd on 127.0.0.1)
and the real store (SQLite in tmp_path): no mocks.

The message builder is checked on its own (language, fields, the WAV attached
byte for byte); then each mode goes through a real SMTP session, and the
failures (relay down, refusing, silent) keep the message.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import email
import email.policy
import time
import tomllib
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import structlog
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from engine.core import Engine
from engine.services.mail import (
    attachment_name,
    build_voicemail_email,
    email_wanted,
    send_voicemail_email,
)
from engine.shell.app import Server, ServerConfig
from media.tones import tone
from media.wav import write_wav
from provisioning.directory import parse_directory
from provisioning.model import (
    Directory,
    Language,
    Smtp,
    User,
    VoicemailEmail,
    VoicemailMessage,
)
from provisioning.store import Store, open_store
from tests.conftest import free_port

DIRECTORY = """
[system]
domain = "pbx.test"
smtp = {{ host = "127.0.0.1", port = {port}, sender = "pbx@pbx.test" }}

[[departments]]
name = "Sales"
caller_id = "+15145550100"

[[numbers]]
number = "+15145550100"
route_to = "extension:104"

[[users]]
extension = "104"
name = "David Côté"
password = "pw104-secret"
voicemail_pin = "9876"
email = "david@example.test"
department = "Sales"
[users.voicemail]
language = "fr"
email = "attach"
"""

# 104's department in Tokyo (+09:00), far from the machine (see machine_in_vancouver).
TOKYO = DIRECTORY.replace('caller_id = "+15145550100"\n',
                          'caller_id = "+15145550100"\ntimezone = "Asia/Tokyo"\n')

EDT = ZoneInfo("America/Toronto")  # -04:00 on LEFT_AT (DST from 2026-03-08)
LEFT_AT = dt.datetime(2026, 3, 10, 14, 5, 7, tzinfo=EDT).timestamp()


# --------------------------------------------------------------------------- a real SMTP server


@dataclass
class Sink:
    """aiosmtpd handler: keeps what it accepts, or refuses every message at DATA."""

    refuse: bool = False
    envelopes: list[Envelope] = field(default_factory=list)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.refuse:
            return "554 5.7.1 message refused"
        self.envelopes.append(envelope)
        return "250 2.0.0 accepted"

    def messages(self) -> list[EmailMessage]:
        out = []
        for env in self.envelopes:
            raw = env.original_content or env.content
            assert isinstance(raw, bytes)
            parsed = email.message_from_bytes(raw, policy=email.policy.default)
            assert isinstance(parsed, EmailMessage)
            out.append(parsed)
        return out


@dataclass
class Relay:
    port: int
    sink: Sink


def _relay(refuse: bool = False) -> Iterator[Relay]:
    sink = Sink(refuse=refuse)
    controller = Controller(sink, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield Relay(controller.port, sink)
    finally:
        controller.stop()


@pytest.fixture
def relay() -> Iterator[Relay]:
    yield from _relay()


@pytest.fixture
def refusing_relay() -> Iterator[Relay]:
    yield from _relay(refuse=True)


@pytest.fixture
def machine_in_vancouver(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The machine's local time zone is America/Vancouver (-07:00 on LEFT_AT)."""
    monkeypatch.setenv("TZ", "America/Vancouver")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with open_store(None, tmp_path) as opened:
        yield opened


# --------------------------------------------------------------------------- helpers


def _directory(port: int) -> Directory:
    return parse_directory(tomllib.loads(DIRECTORY.format(port=port)), "test-directory")


def _user(directory: Directory, mode: VoicemailEmail = "attach",
          language: Language = "fr") -> User:
    user = directory.user("104")
    assert user is not None
    settings = dataclasses.replace(user.voicemail, email=mode, language=language)
    return dataclasses.replace(user, voicemail=settings)


def _wav_file(folder: Path, message_id: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{message_id}.wav"
    write_wav(path, tone(1000, 1500, level=0.3))
    return path


async def _left(store: Store, tmp_path: Path, caller: str = "+15145550199") -> VoicemailMessage:
    """A message as the engine leaves it: the WAV on disk and the row in the store."""
    message_id = uuid.uuid4().hex
    path = _wav_file(tmp_path / "voicemail" / "104", message_id)
    message = VoicemailMessage(id=message_id, box="104", caller=caller, time=LEFT_AT,
                               duration=1.5, path=str(path.resolve()))
    await store.save_voicemail(message)
    return message


def _attachments(msg: EmailMessage) -> list[Any]:
    return list(msg.iter_attachments())


# --------------------------------------------------------------------------- building


def test_french_notify_email_has_the_facts_and_no_attachment() -> None:
    directory = _directory(25)
    user = _user(directory, "notify", "fr")
    message = VoicemailMessage(id="m1", box="104", caller="+15145550199", time=LEFT_AT,
                               duration=12.6, path="/nowhere.wav")
    msg = build_voicemail_email(directory.system, user, message, tz=EDT)
    assert msg["From"] == "pbx@pbx.test"
    assert msg["To"].addresses[0].addr_spec == "david@example.test"
    assert msg["To"].addresses[0].display_name == "David Côté"
    assert msg["Subject"] == "Nouveau message vocal de +15145550199 (13 s)"
    assert not msg.is_multipart() and _attachments(msg) == []
    body = msg.get_content()
    assert "Bonjour David Côté," in body
    assert "De: +15145550199" in body
    assert "Reçu le: 2026-03-10 14:05:07-04:00 (America/Toronto)" in body
    assert "Durée: 13 secondes" in body
    assert "Poste: 104" in body
    assert "reste dans votre boîte" not in body and "est dans votre boîte vocale" in body
    # Survives the wire: non-ASCII headers and body encoded, then decoded the same.
    again = email.message_from_bytes(msg.as_bytes(), policy=email.policy.default)
    assert isinstance(again, EmailMessage)
    assert again["Subject"] == msg["Subject"] and again.get_content() == body


def test_english_attach_email_carries_the_exact_wav(tmp_path: Path) -> None:
    directory = _directory(25)
    user = _user(directory, "attach", "en")
    path = _wav_file(tmp_path, "m2")
    wav = path.read_bytes()
    message = VoicemailMessage(id="m2", box="104", caller="102", time=LEFT_AT, duration=1.5,
                               path=str(path))
    msg = build_voicemail_email(directory.system, user, message, wav, tz=EDT)
    assert msg["Subject"] == "New voicemail from 102 (2 s)"
    body = msg.get_body(preferencelist=("plain",))
    assert body is not None
    text = body.get_content()
    assert "You have a new voicemail in mailbox 104." in text
    assert "From: 102" in text and "Duration: 2 seconds" in text and "Extension: 104" in text
    assert "Received: 2026-03-10 14:05:07-04:00 (America/Toronto)" in text
    assert "stays in your mailbox" in text
    [part] = _attachments(msg)
    assert part.get_content_type() == "audio/wav"
    assert part.get_filename() == "voicemail-104-20260310-140507-102.wav"
    again = email.message_from_bytes(msg.as_bytes(), policy=email.policy.default)
    assert isinstance(again, EmailMessage)
    [wire] = _attachments(again)
    assert wire.get_content() == wav


def test_attach_and_delete_says_so_and_names_are_safe() -> None:
    directory = _directory(25)
    user = _user(directory, "attach_and_delete", "en")
    message = VoicemailMessage(id="m3", box="104", caller="", time=LEFT_AT, duration=0.5,
                               path="/x.wav")
    msg = build_voicemail_email(directory.system, user, message, b"RIFF", tz=EDT)
    assert msg["Subject"] == "New voicemail from unknown (1 s)"
    body = msg.get_body(preferencelist=("plain",))
    assert body is not None and "no longer kept in your mailbox" in body.get_content()
    odd = dataclasses.replace(message, caller='"Eve" <sip:../../x@evil>')
    assert attachment_name(odd, EDT) == "voicemail-104-20260310-140507-Evesipxevil.wav"


def test_what_is_not_emailed() -> None:
    directory = _directory(25)
    system = directory.system
    assert email_wanted(system, _user(directory, "notify"))
    assert not email_wanted(system, _user(directory, "none"))
    assert not email_wanted(dataclasses.replace(system, smtp=None), _user(directory, "attach"))
    assert not email_wanted(system, dataclasses.replace(_user(directory, "attach"), email=""))
    message = VoicemailMessage(id="m", box="104", caller="1", time=0, duration=1, path="/x")
    with pytest.raises(ValueError, match="'none'"):
        build_voicemail_email(system, _user(directory, "none"), message)
    with pytest.raises(ValueError, match="WAV"):
        build_voicemail_email(system, _user(directory, "attach"), message)
    # No sender configured: voicemail@<domain>.
    bare = dataclasses.replace(system, smtp=Smtp(host="127.0.0.1"))
    assert build_voicemail_email(bare, _user(directory, "notify"), message)["From"] == \
        "voicemail@pbx.test"


def test_the_time_is_labelled_with_its_zone(machine_in_vancouver: None) -> None:
    directory = _directory(25)
    user = _user(directory, "notify", "en")
    message = VoicemailMessage(id="m4", box="104", caller="102", time=LEFT_AT, duration=3,
                               path="/x.wav")

    def received(tz: dt.tzinfo | None) -> str:
        body = build_voicemail_email(directory.system, user, message, tz=tz).get_content()
        return next(line for line in body.splitlines() if line.startswith("Received: "))

    assert received(ZoneInfo("Asia/Tokyo")) == \
        "Received: 2026-03-11 03:05:07+09:00 (Asia/Tokyo)"
    assert received(dt.timezone(dt.timedelta(hours=-4))) == \
        "Received: 2026-03-10 14:05:07-04:00 (UTC-04:00)"
    assert received(None) == "Received: 2026-03-10 11:05:07-07:00 (server time)"


# --------------------------------------------------------------------------- real SMTP sessions


async def test_the_engine_emails_in_the_owners_department_time_zone(
        store: Store, tmp_path: Path, relay: Relay, machine_in_vancouver: None) -> None:
    """The engine's own path after a recording (Voicemail.email) writes the
    time and the attachment's name in the owner's department time zone, the one
    the mailbox menu reads times in, not the machine's."""
    directory = parse_directory(tomllib.loads(TOKYO.format(port=relay.port)), "tokyo")
    user = directory.user("104")
    assert user is not None and user.voicemail.email == "attach"
    assert directory.timezone_for(user) == "Asia/Tokyo"
    assert _directory(relay.port).timezone_for(user) == "UTC"  # a department without one
    server = Server(Engine(directory, {"127.0.0.1"}, 5060), store,
                    ServerConfig(data_dir=tmp_path))
    message = await _left(store, tmp_path)  # 2026-03-10 14:05:07-04:00
    server.media_jobs.voicemail.email(message)
    await asyncio.wait_for(asyncio.gather(*server.media_jobs.tasks), 15)
    [msg] = relay.sink.messages()
    body = msg.get_body(preferencelist=("plain",))
    assert body is not None
    assert "Reçu le: 2026-03-11 03:05:07+09:00 (Asia/Tokyo)" in body.get_content()
    [part] = _attachments(msg)
    assert part.get_filename() == "voicemail-104-20260311-030507-+15145550199.wav"
    assert part.get_content() == Path(message.path).read_bytes()




async def test_notify_through_a_real_smtp_session(store: Store, tmp_path: Path,
                                                  relay: Relay) -> None:
    directory = _directory(relay.port)
    user = _user(directory, "notify", "en")
    message = await _left(store, tmp_path)
    with structlog.testing.capture_logs() as logs:
        assert await send_voicemail_email(store, directory.system, user, message) == "sent"
    [env] = relay.sink.envelopes
    assert env.mail_from == "pbx@pbx.test" and env.rcpt_tos == ["david@example.test"]
    [msg] = relay.sink.messages()
    assert msg["Subject"] == "New voicemail from +15145550199 (2 s)"
    assert _attachments(msg) == []
    assert await store.list_voicemail("104") == [message]
    assert Path(message.path).exists()
    [event] = logs
    assert event["event"] == "voicemail email sent" and event["log_level"] == "info"
    assert (event["box"], event["id"], event["mode"]) == ("104", message.id, "notify")
    assert "pw104-secret" not in repr(logs) and "9876" not in repr(logs)


async def test_attach_sends_the_stored_wav_and_keeps_the_message(store: Store, tmp_path: Path,
                                                                relay: Relay) -> None:
    directory = _directory(relay.port)
    user = _user(directory, "attach", "fr")
    message = await _left(store, tmp_path)
    assert await send_voicemail_email(store, directory.system, user, message) == "sent"
    [msg] = relay.sink.messages()
    assert msg["Subject"] == "Nouveau message vocal de +15145550199 (2 s)"
    [part] = _attachments(msg)
    assert part.get_content_type() == "audio/wav"
    assert (part.get_filename() or "").startswith("voicemail-104-")
    assert part.get_content() == Path(message.path).read_bytes()
    assert await store.list_voicemail("104") == [message]


async def test_attach_and_delete_removes_row_and_file_after_acceptance(
        store: Store, tmp_path: Path, relay: Relay) -> None:
    directory = _directory(relay.port)
    user = _user(directory, "attach_and_delete", "en")
    keep = await _left(store, tmp_path, caller="102")  # another message stays
    message = await _left(store, tmp_path)
    wav = Path(message.path).read_bytes()
    revision = await store.voicemail_revision()
    with structlog.testing.capture_logs() as logs:
        assert await send_voicemail_email(store, directory.system, user, message) == "sent"
    [msg] = relay.sink.messages()
    [part] = _attachments(msg)
    assert part.get_content() == wav
    assert await store.list_voicemail("104") == [keep]
    assert not Path(message.path).exists() and Path(keep.path).exists()
    assert await store.voicemail_revision() > revision  # the phones' lamps follow
    [event] = logs
    assert event["event"] == "voicemail email sent" and event["deleted"] is True
    assert event["mode"] == "attach_and_delete"


async def test_refused_at_data_keeps_the_message(store: Store, tmp_path: Path,
                                                 refusing_relay: Relay) -> None:
    directory = _directory(refusing_relay.port)
    user = _user(directory, "attach_and_delete", "en")
    message = await _left(store, tmp_path)
    with structlog.testing.capture_logs() as logs:
        assert await send_voicemail_email(store, directory.system, user, message) == "failed"
    assert refusing_relay.sink.envelopes == []
    assert await store.list_voicemail("104") == [message]
    assert Path(message.path).exists()
    [event] = logs
    assert event["log_level"] == "warning" and "kept" in event["event"]
    assert (event["box"], event["id"], event["mode"]) == ("104", message.id, "attach_and_delete")
    assert "554" in event["error"]


async def test_relay_down_keeps_the_message(store: Store, tmp_path: Path) -> None:
    directory = _directory(free_port())  # nothing listens there
    user = _user(directory, "attach_and_delete", "fr")
    message = await _left(store, tmp_path)
    started = time.monotonic()
    assert await send_voicemail_email(store, directory.system, user, message) == "failed"
    assert time.monotonic() - started < 5
    assert await store.list_voicemail("104") == [message]
    assert Path(message.path).exists()


async def test_silent_relay_times_out_and_keeps_the_message(store: Store,
                                                            tmp_path: Path) -> None:
    """A relay that accepts the connection and never greets: bounded by the timeout."""
    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # say nothing until the client gives up
        writer.close()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        directory = _directory(port)
        user = _user(directory, "attach_and_delete", "en")
        message = await _left(store, tmp_path)
        started = time.monotonic()
        result = await send_voicemail_email(store, directory.system, user, message, timeout=0.5)
        assert result == "failed" and time.monotonic() - started < 5
        assert await store.list_voicemail("104") == [message]
        assert Path(message.path).exists()
    finally:
        server.close()
        await server.wait_closed()


async def test_no_smtp_or_mode_none_sends_nothing(store: Store, tmp_path: Path,
                                                  relay: Relay) -> None:
    directory = _directory(relay.port)
    message = await _left(store, tmp_path)
    no_smtp = dataclasses.replace(directory.system, smtp=None)
    user = _user(directory, "attach_and_delete")
    assert await send_voicemail_email(store, no_smtp, user, message) == "skipped"
    assert await send_voicemail_email(store, directory.system, _user(directory, "none"),
                                      message) == "skipped"
    assert relay.sink.envelopes == []
    assert await store.list_voicemail("104") == [message]
    assert Path(message.path).exists()
