"""Mailbox access by phone: the prompts, the sans-I/O session, and serve_mailbox on real
RTP (127.0.0.1) with a real SQLite store.

The session tests compare prompt *names* (a prompt file's stem; a message's
recording by its path). The integration test's "phone" is a plain UDP socket
that sends RFC 4733 key presses and listens for the message's 1 kHz tone.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import time
import tomllib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from engine.services.mailbox_access import (
    FIRST_DIGIT_SECONDS,
    INTER_DIGIT_SECONDS,
    MENU_SECONDS,
    Delete,
    Digit,
    Hangup,
    MailboxSession,
    MarkRead,
    MenuReply,
    Play,
    PromptDone,
    StopPlaying,
    Timeout,
    serve_mailbox,
)
from media import sdp
from media.codecs import codec_for
from media.endpoint import MediaEndpoint, PortAllocator
from media.prompts import (
    LANGUAGES,
    PROMPTS_DIR,
    SILENCES,
    TEXTS,
    datetime_names,
    digit_names,
    number_names,
    position_names,
    position_paths,
    prompt_names,
    prompt_path,
)
from media.prompts import build as prompt_build
from media.rtp import RtpPacket, RtpSender, dtmf_packets
from media.session import MediaService
from media.tones import dominant_frequency, goertzel, tone
from media.wav import load_wav, wav_info, write_wav
from provisioning.directory import parse_directory
from provisioning.model import User, VoicemailMessage
from provisioning.store import SQLiteStore

T0 = dt.datetime(2026, 3, 10, 15, 0, tzinfo=dt.UTC).timestamp()  # "now": Tue 10 March 2026


def msg(id_: str, when: float, *, read: bool = False, caller: str = "+15145550199",
        path: str | None = None) -> VoicemailMessage:
    return VoicemailMessage(id=id_, box="104", caller=caller, time=when, duration=2.0,
                            path=path or f"/vm/104/{id_}.wav", read=read)


def names(step: MenuReply) -> list[str]:
    """The stems of the prompts of the step's Play, a recording by its path."""
    plays = [a for a in step.actions if isinstance(a, Play)]
    assert len(plays) == 1, step
    return [p.stem if p.parent.parent == PROMPTS_DIR else str(p) for p in plays[0].paths]


def session(messages: list[VoicemailMessage], **kw: object) -> MailboxSession:
    kw.setdefault("pin", "")
    kw.setdefault("read_datetime", "none")
    return MailboxSession(messages, now=T0, **kw)  # type: ignore[arg-type]


def feed(s: MailboxSession, digits: str) -> MenuReply:
    step = MenuReply()
    for d in digits:
        step = s.handle(Digit(d))
    return step


# --- numbers, dates, phone numbers --------------------------------------------------------


@pytest.mark.parametrize(("n", "en", "fr"), [
    (0, ["0"], ["0"]),
    (7, ["7"], ["7"]),
    (21, ["21"], ["21"]),
    (59, ["59"], ["59"]),
    (61, ["60", "1"], ["60", "and", "1"]),  # soixante et un
    (70, ["70"], ["60", "10"]),  # soixante-dix
    (71, ["70", "1"], ["60", "and", "11"]),  # soixante et onze
    (80, ["80"], ["80"]),
    (81, ["80", "1"], ["80", "1"]),  # quatre-vingt-un, no "et"
    (97, ["90", "7"], ["80", "17"]),  # quatre-vingt-dix-sept
    (100, ["1", "hundred"], ["hundred"]),  # cent, not "un cent"
    (215, ["2", "hundred", "15"], ["2", "hundred", "15"]),
    (1000, ["1", "thousand"], ["thousand"]),  # mille
    (2026, ["2", "thousand", "26"], ["2", "thousand", "26"]),
    (12345, ["1", "2", "3", "4", "5"], ["1", "2", "3", "4", "5"]),
])
def test_numbers_are_spelled_per_language(n: int, en: list[str], fr: list[str]) -> None:
    assert number_names(n, "en") == en
    assert number_names(n, "fr") == fr


def test_french_feminine_for_hours_and_minutes() -> None:
    assert number_names(1, "fr", feminine=True) == ["1f"]  # une heure
    assert number_names(21, "fr", feminine=True) == ["21f"]  # vingt et une
    assert number_names(11, "fr", feminine=True) == ["11"]
    assert number_names(1, "en", feminine=True) == ["1"]
    with pytest.raises(ValueError, match="negative"):
        number_names(-1, "en")


def test_every_number_up_to_9999_uses_existing_prompts() -> None:
    for language in LANGUAGES:
        known = set(prompt_names(language))
        for n in range(10_000):
            for feminine in (False, True):
                assert set(number_names(n, language, feminine=feminine)) <= known, n


TODAY = dt.date(2026, 3, 10)


@pytest.mark.parametrize(("when", "mode", "en", "fr"), [
    (dt.datetime(2026, 3, 10, 14, 30), "24h",
     ["received", "today", "at", "14", "30"],
     ["received", "today", "at", "14", "hours", "30"]),
    (dt.datetime(2026, 3, 10, 14, 30), "ampm",
     ["received", "today", "at", "2", "30", "pm"],
     ["received", "today", "at", "2", "hours", "30", "pm"]),
    (dt.datetime(2026, 3, 9, 9, 5), "24h",
     ["received", "yesterday", "at", "9", "oh", "5"],
     ["received", "yesterday", "at", "9", "hours", "5"]),
    (dt.datetime(2026, 3, 9, 9, 0), "ampm",
     ["received", "yesterday", "at", "9", "am"],
     ["received", "yesterday", "at", "9", "hours", "am"]),
    (dt.datetime(2026, 3, 1, 12, 0), "24h",
     ["received", "on", "sunday", "march", "1", "at", "12", "hundred"],
     ["received", "on", "sunday", "first", "march", "at", "12", "hours"]),
    (dt.datetime(2026, 3, 1, 12, 15), "ampm",
     ["received", "on", "sunday", "march", "1", "at", "12", "15", "pm"],
     ["received", "on", "sunday", "first", "march", "at", "noon", "15"]),
    (dt.datetime(2026, 2, 27, 0, 1), "ampm",
     ["received", "on", "friday", "february", "27", "at", "12", "oh", "1", "am"],
     ["received", "on", "friday", "27", "february", "at", "midnight", "1f"]),
    (dt.datetime(2026, 2, 27, 1, 21), "24h",
     ["received", "on", "friday", "february", "27", "at", "1", "21"],
     ["received", "on", "friday", "27", "february", "at", "1f", "hour", "21f"]),
    (dt.datetime(2026, 2, 27, 21, 45), "ampm",
     ["received", "on", "friday", "february", "27", "at", "9", "45", "pm"],
     ["received", "on", "friday", "27", "february", "at", "9", "hours", "45", "evening"]),
    (dt.datetime(2025, 12, 31, 23, 59), "24h",
     ["received", "on", "wednesday", "december", "31", "2", "thousand", "25", "at", "23", "59"],
     ["received", "on", "wednesday", "31", "december", "2", "thousand", "25", "at",
      "23", "hours", "59"]),
])
def test_dates_and_times_are_read_as_configured(
        when: dt.datetime, mode: str, en: list[str], fr: list[str]) -> None:
    assert datetime_names(when, "en", mode, today=TODAY) == en  # type: ignore[arg-type]
    assert datetime_names(when, "fr", mode, today=TODAY) == fr  # type: ignore[arg-type]
    assert datetime_names(when, "fr", "none", today=TODAY) == []


def test_every_time_of_day_and_date_uses_existing_prompts() -> None:
    start = dt.datetime(2025, 1, 1)
    for language in LANGUAGES:
        known = set(prompt_names(language))
        for mode in ("ampm", "24h"):
            for minutes in range(0, 24 * 60):
                when = start + dt.timedelta(days=minutes % 400, minutes=minutes)
                got = datetime_names(when, language, mode, today=TODAY)  # type: ignore[arg-type]
                assert set(got) <= known, (when, mode)


def test_phone_numbers_are_read_digit_by_digit() -> None:
    assert digit_names("+1 (514) 555-0199", "fr") == list("15145550199")
    assert digit_names("anonymous", "en") == []


def test_a_queue_position_and_expected_wait_in_both_languages() -> None:
    assert position_names(2, 0, "en") == ["caller_number", "2", "pause"]
    assert position_names(1, 1, "en") == ["caller_number", "1", "pause", "expected_wait", "1",
                                          "minute"]
    # "Vous êtes l'appelant numéro 71. Votre attente est estimée à environ une minute."
    assert position_names(71, 1, "fr") == ["caller_number", "60", "and", "11", "pause",
                                           "expected_wait", "1f", "minute"]
    assert position_names(3, 21, "fr")[-2:] == ["21f", "minutes"]
    for language in LANGUAGES:
        known = set(prompt_names(language))
        for position in range(1, 200):
            assert set(position_names(position, position % 90, language)) <= known
        assert all(p.is_file() for p in position_paths(120, 45, language))


def test_prompt_path_refuses_unknown_names_and_languages() -> None:
    assert prompt_path("fr", "goodbye") == PROMPTS_DIR / "fr" / "goodbye.wav"
    with pytest.raises(ValueError, match="no prompt"):
        prompt_path("en", "1f")  # French only
    with pytest.raises(ValueError, match="language"):
        prompt_path("de", "goodbye")  # type: ignore[arg-type]


# --- the prompt files ---------------------------------------------------------------------


def test_every_prompt_exists_as_8khz_16bit_mono_and_the_set_is_small() -> None:
    assert prompt_build.check() == []
    total = 0
    for language in LANGUAGES:
        for name in prompt_names(language):
            info = wav_info(prompt_path(language, name))
            assert (info.rate, info.bits, info.channels) == (8000, 16, 1), name
            assert 0.05 < info.duration < 15, name
            total += info.file_size
    # 8 kHz 16-bit speech is 16 kB a second: the whole set is about 3.4 MB (with the
    # queue log-in confirmations); the cap leaves room for a few short prompts (each
    # pair, en and fr, ~50 kB).
    assert total < 3_500_000
    assert set(TEXTS["en"]) | {"1f", "21f", "31f", "41f", "51f", "first", "hour", "hours",
                                "noon", "midnight", "evening"} == set(TEXTS["fr"]) | {
                                    "70", "90", "oh"}
    assert set(SILENCES) == {"pause"}


def test_build_speaks_8khz_prompts(tmp_path: Path) -> None:
    pcm = prompt_build.speak("Goodbye.", "en-us", tmp_path)
    assert 0.3 < len(pcm) / 2 / 8000 < 2.0
    write_wav(tmp_path / "goodbye.wav", pcm)
    assert wav_info(tmp_path / "goodbye.wav").rate == 8000


# --- the session: PIN ---------------------------------------------------------------------


def test_right_pin_then_the_summary() -> None:
    s = session([msg("a", T0 - 60)], pin="1234")
    step = s.start()
    assert names(step) == ["enter_pin"] and step.timeout is None
    step = s.handle(PromptDone())
    assert step == MenuReply((), FIRST_DIGIT_SECONDS)
    for d in "123":
        assert s.handle(Digit(d)) == MenuReply((), INTER_DIGIT_SECONDS)
    step = feed(s, "4#")
    assert names(step) == ["you_have", "1", "new_message"]


def test_a_key_interrupts_the_pin_prompt_and_star_starts_over() -> None:
    s = session([], pin="42")
    s.start()
    step = s.handle(Digit("9"))
    assert step.actions == (StopPlaying(),) and step.timeout == INTER_DIGIT_SECONDS
    assert s.handle(Digit("*")) == MenuReply((), FIRST_DIGIT_SECONDS)
    step = feed(s, "42#")
    assert names(step) == ["no_messages", "goodbye"]
    assert s.handle(PromptDone()).actions == (Hangup(),)
    assert s.done


def test_three_wrong_pins_say_goodbye_and_hang_up() -> None:
    s = session([msg("a", T0)], pin="1234", language="fr")
    s.start()
    s.handle(PromptDone())
    assert names(feed(s, "1111#")) == ["wrong_pin", "enter_pin"]
    assert s.handle(Digit("2")).actions == (StopPlaying(),)  # a key stops the prompt
    assert names(s.handle(Digit("#"))) == ["wrong_pin", "enter_pin"]
    s.handle(PromptDone())
    step = feed(s, "#")
    assert names(step) == ["wrong_pin", "goodbye"]
    assert step.actions[0].paths[0] == PROMPTS_DIR / "fr" / "wrong_pin.wav"  # type: ignore[union-attr]
    assert feed(s, "1234#") == MenuReply()  # too late: ignored
    assert s.handle(PromptDone()).actions == (Hangup(),)
    assert s.handle(Digit("1")) == MenuReply()


def test_pin_timeouts_submit_or_count_as_a_failure() -> None:
    s = session([msg("a", T0)], pin="1234")
    s.start()
    s.handle(PromptDone())
    assert names(s.handle(Timeout())) == ["enter_pin"]  # nothing typed: attempt 1
    assert s.handle(PromptDone()) == MenuReply((), FIRST_DIGIT_SECONDS)
    assert feed(s, "1234") == MenuReply((), INTER_DIGIT_SECONDS)
    assert names(s.handle(Timeout())) == ["you_have", "1", "new_message"]  # no # needed


def test_three_silent_pin_prompts_hang_up() -> None:
    s = session([msg("a", T0)], pin="1234")
    s.start()
    for _ in range(2):
        s.handle(PromptDone())
        assert names(s.handle(Timeout())) == ["enter_pin"]
    s.handle(PromptDone())
    assert names(s.handle(Timeout())) == ["goodbye"]


def test_no_pin_when_not_required_or_not_set() -> None:
    for kw in ({"pin": "1234", "pin_required": False}, {"pin": "", "pin_required": True}):
        s = session([msg("a", T0)], **kw)
        assert names(s.start()) == ["you_have", "1", "new_message"]


def test_for_user_takes_the_directory_settings() -> None:
    user = directory_user(pin="2468", language="fr", pin_required=True)
    s = MailboxSession.for_user(user, [], now=T0)
    assert (s.pin, s.language, s.read_datetime, s.announce_caller) == ("2468", "fr", "24h", True)
    assert names(s.start()) == ["enter_pin"]


# --- the session: listening ---------------------------------------------------------------


def listen(s: MailboxSession) -> MenuReply:
    """From the start (no PIN) to the first header."""
    s.start()
    return s.handle(PromptDone())


def test_listen_new_first_oldest_first_marks_read_and_menu() -> None:
    messages = [msg("old1", T0 - 500, read=True), msg("new2", T0 - 100),
                msg("new1", T0 - 200), msg("old2", T0 - 50, read=True)]
    s = session(messages)
    assert names(s.start()) == ["you_have", "2", "new_messages", "and", "2", "old_messages"]
    order = []
    step = s.handle(PromptDone())
    for i in range(4):
        assert names(step) == ["message", str(i + 1), "pause"]
        step = s.handle(PromptDone())
        [play] = [a for a in step.actions if isinstance(a, Play)]
        order.append(Path(play.paths[0]).stem)
        marks = [a for a in step.actions if isinstance(a, MarkRead)]
        assert marks == ([MarkRead(order[-1])] if order[-1].startswith("new") else [])
        assert names(s.handle(PromptDone())) == ["menu"]
        assert s.handle(PromptDone()) == MenuReply((), MENU_SECONDS)
        step = s.handle(Digit("#" if i % 2 else "6"))
    assert order == ["new1", "new2", "old1", "old2"]
    assert names(step) == ["end_of_messages", "menu_end"]
    s.handle(PromptDone())
    assert names(s.handle(Digit("9"))) == ["goodbye"]
    assert s.handle(PromptDone()).actions == (Hangup(),)


def test_replay_previous_and_the_end_menu() -> None:
    s = session([msg("a", T0 - 200), msg("b", T0 - 100)])
    listen(s)
    s.handle(PromptDone())  # header a -> recording a
    assert names(s.handle(Digit("1"))) == ["/vm/104/a.wav"]  # barge-in replay, read already
    assert s.handle(Digit("1")).actions == (Play((Path("/vm/104/a.wav"),)),)
    assert names(s.handle(Digit("*"))) == ["message", "1", "pause"]  # first: itself again
    assert names(s.handle(Digit("#"))) == ["message", "2", "pause"]
    assert names(s.handle(Digit("4"))) == ["message", "1", "pause"]
    s.handle(Digit("6"))
    assert names(s.handle(Digit("#"))) == ["end_of_messages", "menu_end"]
    assert s.handle(Digit("5")) == MenuReply()  # ignored while the prompt plays
    assert names(s.handle(Digit("*"))) == ["message", "2", "pause"]


def test_skipping_in_the_header_leaves_the_message_new() -> None:
    s = session([msg("a", T0 - 200), msg("b", T0 - 100)])
    listen(s)
    step = s.handle(Digit("#"))
    assert not any(isinstance(a, MarkRead) for a in step.actions)
    assert names(step) == ["message", "2", "pause"]


def test_delete_then_the_next_message_keeps_its_number() -> None:
    s = session([msg("a", T0 - 200), msg("b", T0 - 100)])
    listen(s)
    s.handle(PromptDone())
    s.handle(PromptDone())  # the menu
    step = s.handle(Digit("3"))
    assert step.actions[0] == Delete("a", "/vm/104/a.wav")
    assert names(step) == ["deleted"]
    assert s.handle(Digit("3")) == MenuReply()  # keys ignored while "deleted" plays
    assert names(s.handle(PromptDone())) == ["message", "2", "pause"]
    step = s.handle(Digit("3"))  # barge-in delete during the header
    assert step.actions[0] == Delete("b", "/vm/104/b.wav")
    assert names(s.handle(PromptDone())) == ["end_of_messages", "goodbye"]
    assert s.handle(PromptDone()).actions == (Hangup(),)


def test_empty_box_says_no_messages() -> None:
    s = session([])
    assert names(s.start()) == ["no_messages", "goodbye"]
    assert s.handle(Digit("1")) == MenuReply()
    assert s.handle(PromptDone()).actions == (Hangup(),)


def test_a_key_skips_the_summary() -> None:
    s = session([msg("a", T0), msg("b", T0 + 1, read=True)])
    assert names(s.start()) == ["you_have", "1", "new_message", "and", "1", "old_message"]
    assert names(s.handle(Digit("5"))) == ["message", "1", "pause"]


def test_silence_after_a_menu_repeats_it_then_hangs_up() -> None:
    s = session([msg("a", T0)])
    listen(s)
    s.handle(PromptDone())
    s.handle(PromptDone())
    for _ in range(2):
        assert s.handle(PromptDone()) == MenuReply((), MENU_SECONDS)
        assert s.handle(Digit("8")) == MenuReply((), MENU_SECONDS)  # ignored key: wait again
        assert names(s.handle(Timeout())) == ["menu"]
    s.handle(PromptDone())
    assert names(s.handle(Timeout())) == ["goodbye"]


def test_stale_prompt_done_and_timeouts_while_playing_are_ignored() -> None:
    s = session([msg("a", T0)])
    listen(s)  # header playing
    assert s.handle(Timeout()) == MenuReply()
    s.handle(PromptDone())  # -> recording
    s.handle(PromptDone())  # -> menu
    s.handle(PromptDone())  # menu over, waiting
    assert s.handle(PromptDone()) == MenuReply((), MENU_SECONDS)
    with pytest.raises(RuntimeError):
        s.start()


@pytest.mark.parametrize(("language", "mode", "caller", "expected"), [
    ("en", "24h", "+15145550199",
     ["message", "1", "pause", "received", "today", "at", "14", "30", "pause",
      "from", "1", "5", "1", "4", "5", "5", "5", "0", "1", "9", "9", "pause"]),
    ("en", "ampm", "101",
     ["message", "1", "pause", "received", "today", "at", "2", "30", "pm", "pause",
      "from", "1", "0", "1", "pause"]),
    ("fr", "24h", "anonymous",
     ["message", "1", "pause", "received", "today", "at", "14", "hours", "30", "pause",
      "unknown_caller", "pause"]),
    ("fr", "ampm", "101",
     ["message", "1", "pause", "received", "today", "at", "2", "hours", "30", "pm", "pause",
      "from", "1", "0", "1", "pause"]),
    ("fr", "none", "101", ["message", "1", "pause", "from", "1", "0", "1", "pause"]),
])
def test_header_reads_date_time_and_caller_as_configured(
        language: str, mode: str, caller: str, expected: list[str]) -> None:
    when = dt.datetime(2026, 3, 10, 14, 30, tzinfo=dt.UTC).timestamp()
    s = session([msg("a", when, caller=caller)], language=language, read_datetime=mode,
                announce_caller=True)
    step = listen(s)
    assert names(step) == expected
    play = step.actions[0]
    assert isinstance(play, Play)
    assert all(p.parent == PROMPTS_DIR / language for p in play.paths)


def test_header_time_is_in_the_owners_time_zone() -> None:
    when = dt.datetime(2026, 3, 10, 3, 30, tzinfo=dt.UTC).timestamp()  # 23:30 the 9th, Toronto
    s = MailboxSession([msg("a", when)], read_datetime="24h", now=T0,
                       tz=ZoneInfo("America/Toronto"))
    assert names(listen(s)) == ["message", "1", "pause", "received", "yesterday", "at",
                                "23", "30", "pause"]


# --- serve_mailbox on real RTP --------------------------------------------------------------


HOST = "127.0.0.1"


def directory_user(*, pin: str = "1234", language: str = "en", pin_required: bool = True,
                   read_datetime: str = "24h") -> User:
    text = f"""
[system]
domain = "pbx.test"

[[departments]]
name = "Sales"
caller_id = "+15145550100"

[[numbers]]
number = "+15145550100"
route_to = "extension:104"

[[users]]
extension = "104"
name = "David Cote"
password = "pw104"
department = "Sales"
voicemail_pin = "{pin}"
[users.voicemail]
language = "{language}"
pin_required = {str(pin_required).lower()}
read_datetime = "{read_datetime}"
announce_caller = true
"""
    user = parse_directory(tomllib.loads(text)).user("104")
    assert user is not None
    return user


class Phone(asyncio.DatagramProtocol):
    """A UDP socket standing in for the caller's phone."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.transport: asyncio.DatagramTransport | None = None
        self.sender = RtpSender.create(0, 8000)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.received.append(data)

    @property
    def port(self) -> int:
        assert self.transport is not None
        return int(self.transport.get_extra_info("sockname")[1])

    def press(self, keys: str, endpoint: MediaEndpoint) -> None:
        assert self.transport is not None
        for key in keys:
            for packet in dtmf_packets(self.sender, key):
                self.transport.sendto(packet.build(), (HOST, endpoint.rtp_port))

    def audio(self) -> bytes:
        """What arrived, decoded (PCMU), in arrival order."""
        pcmu = codec_for("PCMU")
        packets = [RtpPacket.parse(d) for d in self.received]
        return b"".join(pcmu.decode(p.payload) for p in packets if p.payload_type == 0)


async def open_phone(endpoint: MediaEndpoint) -> Phone:
    transport, phone = await asyncio.get_running_loop().create_datagram_endpoint(
        Phone, local_addr=(HOST, 0))
    phone.transport = transport
    offer = sdp.parse_sdp((
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        f"m=audio {phone.port} RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n"
        "a=fmtp:101 0-16\r\n").encode())
    answer = sdp.answer(offer, ("PCMU",), address=HOST, port=endpoint.rtp_port, session_id=7)
    assert isinstance(answer, sdp.SessionDescription)
    endpoint.configure(sdp.negotiated(offer, answer, local="answerer"))
    return phone


async def until(condition: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def heard_tone(pcm: bytes, freq: float = 1000.0) -> bool:
    """A 400 ms window of ``pcm`` that is a clear ``freq`` tone."""
    window = 2 * 3200
    for start in range(0, max(0, len(pcm) - window) + 1, 1600):
        chunk = pcm[start:start + window]
        if len(chunk) == window and goertzel(chunk, 8000, freq) > 0.2:
            return abs(dominant_frequency(chunk, 8000) - freq) < 20
    return False


def test_no_prompt_sounds_like_the_test_tone() -> None:
    """The integration test's tone detector does not fire on speech (negative control)."""
    for language in LANGUAGES:
        speech = b"".join(load_wav(prompt_path(language, n)).pcm16
                          for n in prompt_names(language))
        assert not heard_tone(speech)
    assert heard_tone(bytes(8000) + tone(1000, 1000, level=0.5) + bytes(8000))


@pytest.fixture
async def media() -> AsyncIterator[MediaService]:
    service = MediaService(PortAllocator(46000, 46999), host=HOST)
    yield service
    await service.close_all()


async def saved_message(store: SQLiteStore, folder: Path) -> VoicemailMessage:
    folder.mkdir(parents=True)
    path = folder / "m1.wav"
    write_wav(path, tone(1000, 1500, level=0.5))
    message = VoicemailMessage(id="m1", box="104", caller="+15145550199",
                               time=time.time() - 3600, duration=1.5, path=str(path))
    await store.save_voicemail(message)
    return message


async def test_serve_mailbox_pin_listen_delete_over_rtp(media: MediaService,
                                                        tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "switchboard.db")
    await store.open()
    endpoint = await media.open_endpoint()
    phone = await open_phone(endpoint)
    try:
        message = await saved_message(store, tmp_path / "voicemail" / "104")
        user = directory_user(pin="1234")
        task = asyncio.create_task(serve_mailbox(media, endpoint, store, user,
                                                 tz="America/Toronto"))
        await until(lambda: len(phone.received) >= 5, 5, "the PIN prompt")
        # The PIN (interrupting the prompt), a key to skip the summary, one to skip the header.
        phone.press("1234#", endpoint)
        phone.press("1", endpoint)
        phone.press("1", endpoint)

        async def is_read() -> bool:
            return [m.read for m in await store.list_voicemail("104")] == [True]

        deadline = time.monotonic() + 8
        while not await is_read():
            assert time.monotonic() < deadline, "the message was never marked read"
            assert not task.done(), task
            await asyncio.sleep(0.05)
        await until(lambda: heard_tone(phone.audio()), 8, "the message's 1 kHz tone")

        phone.press("3", endpoint)  # delete
        deadline = time.monotonic() + 5
        while await store.list_voicemail("104"):
            assert time.monotonic() < deadline, "the message was not deleted"
            await asyncio.sleep(0.05)
        await until(lambda: not os.path.exists(message.path), 2, "the WAV file to go")
        # "Message deleted. End of messages. Goodbye." then the session hangs up.
        await asyncio.wait_for(task, 15)
        assert not endpoint.closed  # the call layer ends the call
    finally:
        phone.transport.close()  # type: ignore[union-attr]
        endpoint.close()
        await store.close()


async def test_serve_mailbox_returns_when_the_caller_hangs_up(media: MediaService,
                                                              tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "switchboard.db")
    await store.open()
    endpoint = await media.open_endpoint()
    phone = await open_phone(endpoint)
    try:
        message = await saved_message(store, tmp_path / "voicemail" / "104")
        user = directory_user(pin="", language="fr", read_datetime="ampm")
        task = asyncio.create_task(serve_mailbox(media, endpoint, store, user))
        await until(lambda: len(phone.received) >= 5, 5, "the summary")
        endpoint.close()
        await asyncio.wait_for(task, 2)
        assert [m.id for m in await store.list_voicemail("104")] == ["m1"]
        assert os.path.exists(message.path)
    finally:
        phone.transport.close()  # type: ignore[union-attr]
        endpoint.close()
        await store.close()


async def test_serve_mailbox_wrong_pins_hang_up(media: MediaService, tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "switchboard.db")
    await store.open()
    endpoint = await media.open_endpoint()
    phone = await open_phone(endpoint)
    try:
        await saved_message(store, tmp_path / "voicemail" / "104")
        task = asyncio.create_task(serve_mailbox(media, endpoint, store, directory_user()))
        await until(lambda: len(phone.received) >= 3, 5, "the PIN prompt")
        phone.press("0#", endpoint)
        phone.press("0#", endpoint)
        phone.press("0#", endpoint)
        await asyncio.wait_for(task, 10)  # "Incorrect PIN. Goodbye." then hang-up
        assert [m.read for m in await store.list_voicemail("104")] == [False]
    finally:
        phone.transport.close()  # type: ignore[union-attr]
        endpoint.close()
        await store.close()
