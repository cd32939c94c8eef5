"""engine.services.callmedia (the media of anchored calls) on real UDP sockets.

Two "phones" (plain datagram sockets on 127.0.0.1, as in test_media_endpoint)
talk to the two endpoints of one bridge, driven only through the entry points
the engine's shell uses: ``add`` (the endpoints are open), ``apply`` (each
``BridgeMedia``) and ``close`` (``StopMedia``). What is checked is counted:
datagrams (byte for byte), tone amplitudes (Goertzel), files. Every wait is
bounded by a packet count and a timeout.
"""

from __future__ import annotations

import asyncio
import json
import socket
import wave
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest

from engine.calls.events import BridgeMedia
from engine.services.callmedia import CallMedia
from media import sdp
from media.codecs import codec_for
from media.endpoint import MediaEndpoint
from media.prompts import digit_paths, prompt_path
from media.rtp import RtpSender
from media.session import MediaService
from media.tones import goertzel, tone
from media.wav import wav_info, write_wav
from tests.test_media_endpoint import (
    HOST,
    Phone,
    negotiate,
    new_service,
    open_phone,
    rtp_stream,
    send_paced,
    until,
)

KEY = ("callmedia-1@127.0.0.1", "caller-tag")
PCMU = codec_for("PCMU")
# The built-in tune's first notes (media.tones._TUNE): 500 ms = 25 frames each.
TUNE_START = (261.63, 329.63, 392.00, 329.63)
TUNE_NOTES = (174.61, 196.00, 220.00, 246.94, 261.63, 293.66, 329.63, 392.00)
PLAYLIST_HZ = 700.0


@dataclass
class Rig:
    media: MediaService
    calls: CallMedia
    caller: Phone  # the phone facing endpoint a
    callee: Phone  # the phone facing endpoint b
    a: MediaEndpoint
    b: MediaEndpoint
    caller_media: sdp.Negotiated
    callee_media: sdp.Negotiated

    def state(self, *, music_to_caller: bool = False, music_to_callee: bool = False,
              playlist: tuple[str, ...] = (), record: str = "") -> BridgeMedia:
        return BridgeMedia(call=KEY, call_id=KEY[0], caller_media=self.caller_media,
                           callee_media=self.callee_media, music_to_caller=music_to_caller,
                           music_to_callee=music_to_callee, playlist=playlist, record=record,
                           parties=("101", "102"))


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    media = new_service()
    calls = CallMedia(media, tmp_path)
    caller, callee = await open_phone(), await open_phone()
    try:
        a, b = await media.open_endpoint(), await media.open_endpoint()
        calls.add(KEY, KEY[0], a, b)
        yield Rig(media, calls, caller, callee, a, b, negotiate(a, caller.port),
                  negotiate(b, callee.port))
    finally:
        await calls.close_all()
        await media.close_all()
        caller.close()
        callee.close()


def datagrams(phone: Phone, start: int = 0) -> list[bytes]:
    return [data for _, data in phone.received[start:]]


def stream(seed: int, count: int = 10) -> list[bytes]:
    """``count`` PCMU datagrams of random payload, one SSRC."""
    rng = np.random.default_rng(seed)
    sender = RtpSender.create(0, 8000)
    return [sender.audio(rng.bytes(160)).build() for _ in range(count)]


async def assert_relayed(rig: Rig, seed: int) -> None:
    """Ten datagrams each way arrive on the other side as they were sent."""
    from_caller, from_callee = stream(seed), stream(seed + 1)
    at_callee, at_caller = len(rig.callee.received), len(rig.caller.received)
    for data in from_caller:
        rig.caller.send(data, rig.a.rtp_port)
    for data in from_callee:
        rig.callee.send(data, rig.b.rtp_port)
    await until(lambda: len(rig.callee.received) >= at_callee + 10
                and all(d in datagrams(rig.caller, at_caller) for d in from_callee), 3.0)
    assert datagrams(rig.callee, at_callee) == from_caller
    assert [d for d in datagrams(rig.caller, at_caller) if d in from_callee] == from_callee


def decoded(packets: list[bytes]) -> bytes:
    return b"".join(PCMU.decode(data[12:]) for data in packets)  # 12: RTP header, no CSRC


def ssrc(data: bytes) -> int:
    return int.from_bytes(data[8:12], "big")


async def test_relay_with_nobody_on_hold_passes_packets_untouched(rig: Rig) -> None:
    rig.calls.apply(rig.state())
    await assert_relayed(rig, 1)
    await assert_relayed(rig, 3)  # and again: the relay stays up
    assert rig.media.player(rig.a) is None and rig.media.player(rig.b) is None
    assert not (rig.calls.data_dir / "recordings").exists()


@pytest.mark.parametrize("held", ["caller", "callee"])
async def test_hold_plays_the_playlist_to_the_held_side_and_resume_relays(
        rig: Rig, held: str) -> None:
    """The caller held gets the built-in tune (empty playlist); the callee held gets
    the playlist, a WAV named relative to the data dir."""
    rig.calls.apply(rig.state())
    await assert_relayed(rig, 1)
    if held == "caller":
        listener, other = rig.caller, rig.callee
        state = rig.state(music_to_caller=True)
    else:
        write_wav(rig.calls.data_dir / "hold.wav", tone(PLAYLIST_HZ, 1000, ramp_ms=0))
        listener, other = rig.callee, rig.caller
        state = rig.state(music_to_callee=True, playlist=("hold.wav",))
    at_listener, at_other = len(listener.received), len(other.received)
    rig.calls.apply(state)
    rig.calls.apply(state)  # the same state again changes nothing (idempotent)

    # The relay is off: what either phone sends reaches nobody.
    from_caller, from_callee = stream(5), stream(6)
    got_a, got_b = rig.a.packets_received, rig.b.packets_received
    for data in from_caller:
        rig.caller.send(data, rig.a.rtp_port)
    for data in from_callee:
        rig.callee.send(data, rig.b.rtp_port)
    await until(lambda: rig.a.packets_received == got_a + 10
                and rig.b.packets_received == got_b + 10, 3.0)
    # 100 frames of music (2 s of it) go out after those were read.
    await until(lambda: len(listener.received) >= at_listener + 100, 6.0)
    music = datagrams(listener, at_listener)
    assert not set(music) & {*from_caller, *from_callee}
    assert datagrams(other, at_other) == []  # the other side hears nothing at all
    assert len({ssrc(d) for d in music}) == 1  # one player, one stream

    pcm = decoded(music[:100])
    if held == "caller":
        for i, expected in enumerate(TUNE_START):  # note after note, 25 frames each
            note = pcm[i * 8000:(i + 1) * 8000]
            levels = {hz: goertzel(note, 8000, hz) for hz in TUNE_NOTES}
            assert max(levels, key=lambda hz: levels[hz]) == expected
            assert levels[expected] > 0.1
    else:
        level = goertzel(pcm, 8000, PLAYLIST_HZ)
        assert level > 0.3  # the file's tone, looped (tones are at half scale)
        assert all(goertzel(pcm, 8000, hz) < level / 20 for hz in TUNE_NOTES)

    # Resume: the player stops and the relay is back, untouched both ways.
    rig.calls.apply(rig.state())
    held_endpoint = rig.a if held == "caller" else rig.b
    player = rig.media.player(held_endpoint)
    assert player is None or not player.playing
    await assert_relayed(rig, 7)


async def test_recorded_call_writes_a_wav_and_its_listing_at_stop(rig: Rig) -> None:
    rig.calls.apply(rig.state(record="always"))
    rig.calls.apply(rig.state(record="always"))  # one recorder, however often applied
    # One second of 1 kHz from the caller, of 600 Hz from the callee.
    up = rtp_stream("PCMU", tone(1000, 1000), RtpSender.create(0, 8000))
    down = rtp_stream("PCMU", tone(600, 1000), RtpSender.create(0, 8000))
    await send_paced(rig.caller, up, rig.a.rtp_port, 0.002)
    await send_paced(rig.callee, down, rig.b.rtp_port, 0.002)
    await until(lambda: rig.a.packets_received == 50 and rig.b.packets_received == 50, 3.0)
    folder = rig.calls.data_dir / "recordings"
    assert list(folder.iterdir()) == []  # nothing is written before the hang-up

    rig.calls.close(KEY)  # StopMedia
    await until(lambda: len(list(folder.glob("*.json"))) == 1, 5.0)
    (wav,) = folder.glob("*.wav")
    (listing,) = folder.glob("*.json")
    assert listing.stem == wav.stem and len(wav.stem) == 32
    with wave.open(str(wav), "rb") as w:
        assert (w.getframerate(), w.getsampwidth(), w.getnchannels()) == (8000, 2, 1)
        frames = w.getnframes()
        pcm = w.readframes(frames)
    assert frames >= 8000  # at least the second both sides talked
    info = json.loads(listing.read_text())
    assert {k: info[k] for k in ("call_id", "caller", "callee", "reason")} == {
        "call_id": KEY[0], "caller": "101", "callee": "102", "reason": "always"}
    assert info["duration"] == round(frames / 8000, 2)
    # Both directions are in the mix, each at its level over the second it lasted.
    seconds = frames / 8000
    for hz in (1000, 600):
        assert goertzel(pcm, 8000, hz) == pytest.approx(0.5 / seconds, rel=0.1)
    assert goertzel(pcm, 8000, 1400) < 0.01


async def test_stop_media_closes_the_endpoints_and_frees_their_ports(rig: Rig) -> None:
    rig.calls.apply(rig.state(music_to_caller=True))  # something plays when it ends
    await until(lambda: len(rig.caller.received) >= 5, 3.0)
    ports = [rig.a.rtp_port, rig.a.rtcp_port, rig.b.rtp_port, rig.b.rtcp_port]
    assert rig.media.ports.in_use == 2

    rig.calls.close(KEY)  # StopMedia
    assert rig.a.closed and rig.b.closed
    assert rig.media.ports.in_use == 0
    assert KEY not in rig.calls.bridges
    rig.calls.close(KEY)  # a second StopMedia is harmless
    await rig.calls.close_all()  # the music's task has ended
    player = rig.media.player(rig.a)
    assert player is None or not player.playing
    for port in ports:  # the operating system has them back too
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((HOST, port))
    # A late BridgeMedia for the ended call does nothing.
    rig.calls.apply(rig.state())
    assert rig.media.ports.in_use == 0


async def test_a_parker_hears_the_orbit_once_while_the_caller_hears_music(rig: Rig) -> None:
    """``tell_orbit``: "parked on 7 0 1" (committed prompts) goes to the callee side
    once, not looped, while the caller hears the hold music; nothing is relayed."""
    told = replace(rig.state(music_to_caller=True), tell_orbit="701", language="en")
    rig.calls.apply(told)
    rig.calls.apply(told)  # the same state again: said once, not restarted
    clips = [prompt_path("en", "parked_on"), *digit_paths("701", "en")]
    frames = sum(wav_info(c).duration for c in clips) / 0.02
    await until(lambda: len(rig.callee.received) >= frames - 5, 8.0)
    await asyncio.sleep(0.6)  # a loop or a second telling would go on sending
    said = datagrams(rig.callee)
    assert frames - 5 <= len(said) <= frames + 5, (len(said), frames)
    assert len({ssrc(d) for d in said}) == 1  # one player, one stream
    assert goertzel(decoded(said), 8000, TUNE_START[0]) < 0.1  # speech, not the tune
    assert len(rig.caller.received) >= 50  # the caller's music meanwhile
    rig.calls.apply(rig.state(music_to_caller=True))  # the parker let go: nothing more
    assert rig.calls.bridges[KEY].tell is None
