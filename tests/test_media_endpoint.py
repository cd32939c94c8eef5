"""media.endpoint and media.session on real UDP sockets (127.0.0.1 only).

A "phone" here is a plain asyncio datagram socket that records what arrives
and when. Every wait is bounded in time; timing assertions are limited to
the single-stream pacing test (p99 gap under 30 ms).
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import struct
import time
import wave
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import uvloop

from media import sdp
from media.codecs import codec_for
from media.endpoint import MediaEndpoint, MediaError, PortAllocator, PortsExhausted, Relay
from media.rtp import RtpPacket, RtpSender, SenderReport, dtmf_packets
from media.session import FrameCache, MediaService, PacingScheduler, Pcm, encode_clip
from media.tones import dominant_frequency, goertzel, tone
from media.wav import write_wav

# Run alone (make test's serial pass): the pacing tests hold RTP gaps to a bound that
# another worker's load on the other core breaks.
pytestmark = pytest.mark.serial

HOST = "127.0.0.1"
PORTS = (44000, 45999)  # 1000 pairs; pairs held by other processes are skipped


# --- helpers -------------------------------------------------------------------------


class Phone(asyncio.DatagramProtocol):
    """A raw UDP socket standing in for a phone."""

    def __init__(self) -> None:
        self.received: list[tuple[float, bytes]] = []
        self.transport: asyncio.DatagramTransport | None = None

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.received.append((time.monotonic(), data))

    @property
    def port(self) -> int:
        assert self.transport is not None
        return int(self.transport.get_extra_info("sockname")[1])

    def send(self, data: bytes, port: int) -> None:
        assert self.transport is not None
        self.transport.sendto(data, (HOST, port))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def packets(self) -> list[RtpPacket]:
        return [RtpPacket.parse(d) for _, d in self.received]


async def open_phone() -> Phone:
    transport, phone = await asyncio.get_running_loop().create_datagram_endpoint(
        Phone, local_addr=(HOST, 0))
    phone.transport = transport  # uvloop's UDPTransport is no asyncio.DatagramTransport
    return phone


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll ``condition`` every 10 ms, at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for a condition")
        await asyncio.sleep(0.01)


def phone_offer(port: int, codecs: tuple[str, ...] = ("PCMU",), *, extra: str = "",
                event_pt: int = 101) -> sdp.SessionDescription:
    """An offer as a desk phone writes it."""
    pts = [str(sdp.CODECS[c].static_pt) for c in codecs]
    lines = ["v=0", "o=- 1 1 IN IP4 127.0.0.1", "s=-", "c=IN IP4 127.0.0.1", "t=0 0",
             f"m=audio {port} RTP/AVP {' '.join([*pts, str(event_pt)])}",
             f"a=rtpmap:{event_pt} telephone-event/8000", f"a=fmtp:{event_pt} 0-16"]
    if extra:
        lines.append(extra)
    return sdp.parse_sdp(("\r\n".join(lines) + "\r\n").encode())


def negotiate(endpoint: MediaEndpoint, phone_port: int, codecs: tuple[str, ...] = ("PCMU",),
              **offer: Any) -> sdp.Negotiated:
    """Configure ``endpoint`` as the engine answering a phone at ``phone_port``."""
    o = phone_offer(phone_port, codecs, **offer)
    a = sdp.answer(o, codecs, address=HOST, port=endpoint.rtp_port, session_id=7)
    assert isinstance(a, sdp.SessionDescription)
    n = sdp.negotiated(o, a, local="answerer")
    endpoint.configure(n)
    return n


def new_service(**kwargs: Any) -> MediaService:
    return MediaService(PortAllocator(*PORTS), host=HOST, **kwargs)


def run_on(kind: str, main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run a test body on uvloop (production) or the default asyncio loop."""
    if kind == "uvloop":
        uvloop.run(main())
    else:
        asyncio.run(main())


def p99_gap_ms(times: list[float]) -> float:
    return float(np.percentile(np.diff(times), 99) * 1000)


@pytest.fixture
async def service() -> Any:
    media = new_service()
    yield media
    await media.close_all()


def rtp_stream(codec: str, pcm: bytes, sender: RtpSender) -> list[bytes]:
    """``pcm`` (at the codec's rate) as RTP datagrams, 20 ms each."""
    c = codec_for(codec)
    n = c.bytes_per_frame
    return [sender.audio(c.encode(pcm[i : i + n])).build() for i in range(0, len(pcm), n)]


async def send_paced(phone: Phone, datagrams: list[bytes], port: int, every: float) -> None:
    for data in datagrams:
        phone.send(data, port)
        await asyncio.sleep(every)


# --- ports ---------------------------------------------------------------------------


def test_port_allocator_gives_even_rtp_ports_and_runs_out_clearly() -> None:
    ports = PortAllocator.parse("20001-20006")
    assert ports.capacity == 2  # 20002/20003, 20004/20005 (20006 has no RTCP port)
    assert [ports.allocate(), ports.allocate()] == [20002, 20004]
    with pytest.raises(PortsExhausted, match="all 2 pairs of 20001-20006 are in use"):
        ports.allocate()
    ports.release(20002)
    assert ports.allocate() == 20002
    with pytest.raises(ValueError, match="not allocated"):
        ports.release(20010)
    ports.release(20004)
    ports.release(20002)
    assert (ports.allocate(), ports.in_use, ports.available) == (20004, 1, 1)  # LRU


@pytest.mark.parametrize("text", ["20000", "a-b", "30000-20000", "80-1000", "20000-70000"])
def test_port_range_refused(text: str) -> None:
    with pytest.raises(ValueError):
        PortAllocator.parse(text)


async def test_endpoint_binds_a_pair_and_close_releases_it() -> None:
    ports = PortAllocator(*PORTS)
    endpoint = await MediaEndpoint.open(ports, HOST)
    assert endpoint.rtp_port % 2 == 0 and endpoint.rtcp_port == endpoint.rtp_port + 1
    assert ports.in_use == 1
    endpoint.close()
    endpoint.close()
    assert ports.in_use == 0 and endpoint.closed
    with pytest.raises(MediaError):
        endpoint.configure(sdp.negotiated(*_dummy_offer_answer()))


def _dummy_offer_answer() -> tuple[sdp.SessionDescription, sdp.SessionDescription]:
    o = phone_offer(5004)
    a = sdp.answer(o, ["PCMU"], address=HOST, port=6000, session_id=1)
    assert isinstance(a, sdp.SessionDescription)
    return o, a


# --- playing -------------------------------------------------------------------------


@pytest.mark.parametrize(("codec", "loop_kind"),
                         [("PCMU", "uvloop"), ("PCMU", "asyncio"), ("G722", "uvloop")])
def test_played_tone_is_paced_numbered_and_clean(codec: str, loop_kind: str) -> None:
    async def main() -> None:
        media = new_service()
        phone = await open_phone()
        try:
            endpoint = await media.open_endpoint()
            n = negotiate(endpoint, phone.port, (codec,))
            rate = codec_for(codec).sample_rate
            done: list[bool] = []
            player = await media.play(endpoint, [Pcm(tone(1000, 2000, rate), rate)],
                                      on_done=done.append)
            assert await asyncio.wait_for(player.wait(), 5.0) is True
            await until(lambda: len(phone.received) >= 100, 1.0)
        finally:
            await media.close_all()
            phone.close()
        assert done == [True]
        packets = phone.packets()
        assert len(packets) == 100  # 2 s of 20 ms frames, once
        assert {p.payload_type for p in packets} == {n.payload_type}
        assert {p.ssrc for p in packets} == {packets[0].ssrc}
        assert all(len(p.payload) == 160 for p in packets)
        assert [p.marker for p in packets[:2]] == [True, False]
        seqs = [p.sequence for p in packets]
        assert all((b - a) % 65536 == 1 for a, b in itertools.pairwise(seqs))
        stamps = [p.timestamp for p in packets]
        assert all((b - a) % 2**32 == 160 for a, b in itertools.pairwise(stamps))
        decoder = codec_for(codec)
        pcm = b"".join(decoder.decode(p.payload) for p in packets)
        assert abs(dominant_frequency(pcm, rate) - 1000) < 10
        p99 = p99_gap_ms([t for t, _ in phone.received])
        print(f"\n{codec} on {loop_kind}: p99 inter-packet gap {p99:.2f} ms")
        assert p99 < 30

    run_on(loop_kind, main)


async def test_playlist_loops_in_order(service: MediaService, tmp_path: Path) -> None:
    a, b = tmp_path / "a.wav", tmp_path / "b.wav"
    write_wav(a, tone(600, 300, ramp_ms=0))
    write_wav(b, tone(1400, 300, ramp_ms=0))
    phone = await open_phone()
    try:
        endpoint = await service.open_endpoint()
        negotiate(endpoint, phone.port)
        player = await service.play(endpoint, [a, b], loop=True)
        await until(lambda: len(phone.received) >= 75, 4.0)
        assert service.player(endpoint) is player and player.playing
        player.stop()
        assert await player.wait() is False
    finally:
        phone.close()
    pcmu = codec_for("PCMU")
    labels = []
    for packet in phone.packets()[:75]:
        pcm = pcmu.decode(packet.payload)
        labels.append("A" if goertzel(pcm, 8000, 600) > goertzel(pcm, 8000, 1400) else "B")
    runs: list[tuple[str, int]] = []
    for label in labels:
        if runs and runs[-1][0] == label:
            runs[-1] = (label, runs[-1][1] + 1)
        else:
            runs.append((label, 1))
    assert [r[0] for r in runs] == ["A", "B", "A", "B", "A"]
    assert [r[1] for r in runs[:4]] == [15, 15, 15, 15]  # 300 ms = 15 frames each
    assert service.cache.misses == 2


async def test_new_player_replaces_the_old_and_close_stops_it(service: MediaService) -> None:
    phone = await open_phone()
    try:
        endpoint = await service.open_endpoint()
        negotiate(endpoint, phone.port)
        first = await service.play(endpoint, [Pcm(tone(500, 200))], loop=True)
        second = await service.play(endpoint, [Pcm(tone(700, 200))], loop=True)
        assert await first.wait() is False and second.playing
        await until(lambda: len(phone.received) >= 3, 2.0)
        endpoint.close()
        assert await asyncio.wait_for(second.wait(), 1.0) is False
        assert len(service.scheduler) == 0 and service.player(endpoint) is None
    finally:
        phone.close()
    seqs = [p.sequence for p in phone.packets()]
    assert all((b - a) % 65536 == 1 for a, b in itertools.pairwise(seqs))


async def test_send_path_matches_rtp_sender_and_respects_hold(service: MediaService) -> None:
    phone = await open_phone()
    try:
        endpoint = await service.open_endpoint()
        negotiate(endpoint, phone.port)
        assert endpoint.sender is not None
        expected = dataclasses.replace(endpoint.sender)
        payloads = [bytes([i]) * 160 for i in range(3)]
        for payload in payloads:
            assert endpoint.send_frame(payload)
        await until(lambda: len(phone.received) == 3, 2.0)
        assert [d for _, d in phone.received] == [expected.audio(p).build() for p in payloads]
        assert endpoint.sender == expected
        # The phone puts us on hold (a=sendonly): we receive only, the clock runs on.
        negotiate(endpoint, phone.port, extra="a=sendonly")
        assert not endpoint.can_send and not endpoint.send_frame(payloads[0])
        assert endpoint.sender.timestamp == (expected.timestamp + 160) % 2**32
        assert endpoint.sender.sequence == expected.sequence
    finally:
        phone.close()


async def test_g729_is_not_played_or_recorded(service: MediaService, tmp_path: Path) -> None:
    endpoint = await service.open_endpoint()
    negotiate(endpoint, 5004, ("G729",))
    from media.codecs import CodecError

    with pytest.raises(CodecError, match="relayed"):
        await service.play(endpoint, [Pcm(tone(500, 100))])
    with pytest.raises(CodecError, match="relayed"):
        service.record(endpoint, tmp_path / "x.wav")


def test_encode_clip_pads_and_resamples() -> None:
    frames = encode_clip(Pcm(tone(1000, 30)), "PCMU")  # 240 samples -> 2 frames
    assert [len(f) for f in frames] == [160, 160]
    assert frames[1][-1] == codec_for("PCMU").encode(bytes(2))[0]
    wide = encode_clip(Pcm(tone(1000, 100)), "G722")  # 8 kHz -> 16 kHz, 5 frames
    assert [len(f) for f in wide] == [160] * 5


async def test_frame_cache_shares_one_encoding() -> None:
    cache = FrameCache()
    clip = Pcm(tone(800, 100))
    first, second = await asyncio.gather(cache.frames(clip, "PCMU"), cache.frames(clip, "PCMU"))
    assert first is second and cache.misses == 1
    assert await cache.frames(Pcm(clip.pcm16), "pcmu") is first and cache.hits == 1


# --- RTCP ----------------------------------------------------------------------------


async def test_sender_reports_while_sending() -> None:
    media = new_service(rtcp_interval=0.2)
    phone, phone_rtcp = await open_phone(), await open_phone()
    try:
        endpoint = await media.open_endpoint()
        negotiate(endpoint, phone.port)
        # A receiver report from the phone's RTCP socket tells us where its RTCP is.
        phone_rtcp.send(struct.pack("!BBHI", 0x80, 201, 1, 1234), endpoint.rtcp_port)
        await until(lambda: endpoint.rtcp_received == 1, 2.0)
        await media.play(endpoint, [Pcm(tone(500, 200))], loop=True)
        await until(lambda: len(phone_rtcp.received) >= 2, 3.0)
        await media.close_all()
        await until(lambda: any(d[-8] == 0x81 and d[-7] == 203 for _, d in phone_rtcp.received))
    finally:
        await media.close_all()
        phone.close()
        phone_rtcp.close()
    ssrc = phone.packets()[0].ssrc
    assert phone_rtcp.received[-1][1][-4:] == struct.pack("!I", ssrc)  # BYE on close
    for _, data in phone_rtcp.received[:2]:
        report = SenderReport.parse(data)
        assert report.ssrc == ssrc and report.packet_count > 0
        assert report.octet_count == 160 * report.packet_count
        assert data[29] == 202  # SDES follows the SR in the compound packet
        assert abs(report.ntp_timestamp / 2**32 - 2_208_988_800 - time.time()) < 5


# --- receiving: latch, recorder, relay ----------------------------------------------------


async def test_latch_follows_the_real_source(service: MediaService) -> None:
    signalled, actual = await open_phone(), await open_phone()
    try:
        endpoint = await service.open_endpoint()
        negotiate(endpoint, signalled.port)  # the SDP names the "private" address
        await service.play(endpoint, [Pcm(tone(500, 200))], loop=True)
        await until(lambda: len(signalled.received) >= 3, 2.0)
        sender = RtpSender.create(0, 8000)
        actual.send(sender.audio(bytes(160)).build(), endpoint.rtp_port)  # the NAT's mapping
        await until(lambda: len(actual.received) >= 5, 2.0)
        before = len(signalled.received)
        await until(lambda: len(actual.received) >= 10, 2.0)
        assert len(signalled.received) == before
        assert endpoint.rtp_target == (HOST, actual.port)
        # A stranger with a valid-looking packet does not steal the stream.
        stranger = await open_phone()
        stranger.send(RtpSender.create(0, 8000).audio(bytes(160)).build(), endpoint.rtp_port)
        await asyncio.sleep(0.05)
        stranger.close()
        assert endpoint.rtp_target == (HOST, actual.port) and endpoint.latch.rejected >= 1
    finally:
        signalled.close()
        actual.close()


async def test_recorder_stops_on_hash_with_a_2s_1khz_wav(service: MediaService,
                                                         tmp_path: Path) -> None:
    phone = await open_phone()
    try:
        endpoint = await service.open_endpoint()
        negotiate(endpoint, phone.port)
        recorder = service.record(endpoint, tmp_path / "vm.wav")
        sender = RtpSender.create(0, 8000)
        await send_paced(phone, rtp_stream("PCMU", tone(1000, 2000), sender),
                         endpoint.rtp_port, 0.004)
        for packet in dtmf_packets(sender, "#"):
            phone.send(packet.build(), endpoint.rtp_port)
        recording = await asyncio.wait_for(recorder.wait(), 5.0)
    finally:
        phone.close()
    assert (recording.reason, recording.digit) == ("dtmf", "#")
    assert recording.duration == pytest.approx(2.0, abs=0.05)
    with wave.open(str(recording.path), "rb") as w:
        assert (w.getframerate(), w.getsampwidth(), w.getnchannels()) == (8000, 2, 1)
        pcm = w.readframes(w.getnframes())
    assert len(pcm) / 2 / 8000 == pytest.approx(recording.duration)
    assert abs(dominant_frequency(pcm, 8000) - 1000) < 10


async def test_recorder_g722_hangup_fills_gaps_and_drops_late(service: MediaService,
                                                             tmp_path: Path) -> None:
    phone = await open_phone()
    try:
        endpoint = await service.open_endpoint()
        negotiate(endpoint, phone.port, ("G722",))
        recorder = service.record(endpoint, tmp_path / "wide.wav")
        sender = RtpSender.create(9, 8000)
        datagrams = rtp_stream("G722", tone(1000, 1000, 16000), sender)  # 50 frames
        late = datagrams[5]
        del datagrams[20:30]  # 200 ms lost in the middle
        await send_paced(phone, [*datagrams, late], endpoint.rtp_port, 0.002)
        await until(lambda: endpoint.packets_received == 41, 2.0)
        endpoint.close()  # hang-up
        recording = await asyncio.wait_for(recorder.wait(), 5.0)
    finally:
        phone.close()
    assert recording.reason == "hangup" and recorder.late_packets == 1
    assert recording.duration == pytest.approx(1.0, abs=0.001)  # the gap is silence
    with wave.open(str(recording.path), "rb") as w:
        assert (w.getframerate(), w.getsampwidth(), w.getnchannels()) == (8000, 2, 1)
        pcm = w.readframes(w.getnframes())
    assert abs(dominant_frequency(pcm[: 2 * 3200], 8000) - 1000) < 10


async def test_recorder_stops_on_silence_and_on_max_length(service: MediaService,
                                                           tmp_path: Path) -> None:
    quiet, long = await open_phone(), await open_phone()
    try:
        ep1, ep2 = await service.open_endpoint(), await service.open_endpoint()
        negotiate(ep1, quiet.port)
        negotiate(ep2, long.port)
        on_silence = service.record(ep1, tmp_path / "s.wav", silence_seconds=0.3)
        capped = service.record(ep2, tmp_path / "m.wav", max_seconds=0.5)
        s1, s2 = RtpSender.create(0, 8000), RtpSender.create(0, 8000)
        # 0.4 s of voice then digital silence: the silent tail is cut.
        talk = rtp_stream("PCMU", tone(1000, 400) + bytes(2 * 8000 // 5), s1)
        await asyncio.gather(send_paced(quiet, talk, ep1.rtp_port, 0.002),
                             send_paced(long, rtp_stream("PCMU", tone(700, 1000), s2),
                                        ep2.rtp_port, 0.002))
        silent = await asyncio.wait_for(on_silence.wait(), 3.0)
        full = await asyncio.wait_for(capped.wait(), 3.0)
    finally:
        quiet.close()
        long.close()
    assert silent.reason == "silence"
    assert silent.duration == pytest.approx(0.4, abs=0.021)
    assert (full.reason, full.duration) == ("max_length", 0.5)


async def test_relay_passes_packets_untouched_both_ways(service: MediaService) -> None:
    a, b = await open_phone(), await open_phone()
    try:
        ea, eb = await service.open_endpoint(), await service.open_endpoint()
        negotiate(ea, a.port)
        negotiate(eb, b.port, event_pt=96)  # B numbers telephone-event 96
        relay = service.relay(ea, eb)
        rng = np.random.default_rng(1)
        sa = RtpSender.create(0, 8000)
        sent_a = [sa.audio(rng.bytes(160)).build() for _ in range(10)]
        event = dtmf_packets(sa, "5")[0].build()
        for data in [*sent_a, event]:  # B has sent nothing yet: its SDP address is used
            a.send(data, ea.rtp_port)
        await until(lambda: len(b.received) == 11, 2.0)
        assert [d for _, d in b.received[:10]] == sent_a
        relayed_event = b.received[10][1]
        assert relayed_event[1] == 0x80 | 96 and event[1] == 0x80 | 101
        assert relayed_event[:1] + relayed_event[2:] == event[:1] + event[2:]
        sb = RtpSender.create(0, 8000)
        sent_b = [sb.audio(rng.bytes(160)).build() for _ in range(10)]
        for data in sent_b:
            b.send(data, eb.rtp_port)
        await until(lambda: len(a.received) == 10, 2.0)
        assert [d for _, d in a.received] == sent_b
        assert relay.forwarded == (11, 10)
        relay.close()
        a.send(sent_a[0], ea.rtp_port)
        await asyncio.sleep(0.05)
        assert len(b.received) == 11
    finally:
        a.close()
        b.close()


async def test_relay_follows_the_nat_latch_of_each_side(service: MediaService) -> None:
    a, b_sdp, b_nat = await open_phone(), await open_phone(), await open_phone()
    try:
        ea, eb = await service.open_endpoint(), await service.open_endpoint()
        negotiate(ea, a.port)
        negotiate(eb, b_sdp.port)
        service.relay(ea, eb)
        sb = RtpSender.create(0, 8000)
        b_nat.send(sb.audio(bytes(160)).build(), eb.rtp_port)  # B's real source
        await until(lambda: len(a.received) == 1, 2.0)
        sa = RtpSender.create(0, 8000)
        for _ in range(3):
            a.send(sa.audio(bytes(160)).build(), ea.rtp_port)
        await until(lambda: len(b_nat.received) == 3, 2.0)
        assert b_sdp.received == []
    finally:
        for phone in (a, b_sdp, b_nat):
            phone.close()


async def test_relay_refuses_two_codecs(service: MediaService) -> None:
    ea, eb = await service.open_endpoint(), await service.open_endpoint()
    negotiate(ea, 5004, ("PCMU",))
    negotiate(eb, 5006, ("G722",))
    with pytest.raises(MediaError, match="does not transcode"):
        Relay(ea, eb)


async def test_dtmf_digits_reported_once(service: MediaService) -> None:
    phone = await open_phone()
    try:
        endpoint = await service.open_endpoint()
        negotiate(endpoint, phone.port)
        digits: list[str] = []
        endpoint.on_dtmf(digits.append)
        sender = RtpSender.create(0, 8000)
        for digit in "1#":
            for packet in dtmf_packets(sender, digit):
                phone.send(packet.build(), endpoint.rtp_port)
        await until(lambda: len(digits) == 2, 2.0)
        await asyncio.sleep(0.02)
        assert digits == ["1", "#"]
    finally:
        phone.close()


# --- the shared scheduler -----------------------------------------------------------------


class _Counter:
    def __init__(self, frames: int | None = None, fail: bool = False) -> None:
        self.calls: list[int] = []
        self.frames = frames
        self.fail = fail

    def frame_due(self, skipped: int, now: float) -> bool:
        if self.fail:
            raise RuntimeError("boom")
        self.calls.append(skipped)
        return self.frames is None or len(self.calls) < self.frames


async def test_scheduler_serves_all_streams_per_tick_catches_up_and_skips() -> None:
    clock = [100.0]
    scheduler = PacingScheduler(clock=lambda: clock[0])
    steady, short, broken = _Counter(), _Counter(frames=2), _Counter(fail=True)
    for stream in (steady, short, broken):
        scheduler.add(stream)  # all on the same 20 ms grid: first frame due at 100.0
    try:
        scheduler._run()
        assert (steady.calls, short.calls, len(scheduler)) == ([0], [0], 2)  # broken dropped
        clock[0] = 100.0 + 0.055  # frames 1 and 2 overdue: both sent now
        scheduler._run()
        assert steady.calls == [0, 0, 0] and short.calls == [0, 0]
        assert short not in scheduler and len(scheduler) == 1
        clock[0] = 100.0 + 0.2  # 7 frames late (> 5): skip 6, send frame 10
        scheduler._run()
        assert steady.calls == [0, 0, 0, 7]
        assert scheduler.skipped == 7 and scheduler.ticks == 3
    finally:
        scheduler.close()
    assert len(scheduler) == 0


# --- many streams ----------------------------------------------------------------------


def test_200_concurrent_players_on_one_loop() -> None:
    streams = 200

    async def main() -> None:
        media = new_service()
        phones = [await open_phone() for _ in range(streams)]
        try:
            endpoints = [await media.open_endpoint() for _ in range(streams)]
            for endpoint, phone in zip(endpoints, phones, strict=True):
                negotiate(endpoint, phone.port)
            music = Pcm(tone(440, 1000))
            cpu = time.process_time()
            await asyncio.gather(*(media.play(e, [music], loop=True) for e in endpoints))
            await asyncio.sleep(2.0)
            cpu = time.process_time() - cpu
            await media.close_all()
        finally:
            for phone in phones:
                phone.close()
        assert media.cache.misses == 1
        assert all(len(p.received) >= 50 for p in phones)
        gaps = np.concatenate([np.diff([t for t, _ in p.received]) for p in phones])
        print(f"\n{streams} streams on uvloop: {sum(len(p.received) for p in phones)} packets, "
              f"p99 gap {np.percentile(gaps, 99) * 1000:.2f} ms, "
              f"max {gaps.max() * 1000:.2f} ms, CPU {cpu / 2.0 * 100:.0f}% of one core "
              f"(senders and receivers), scheduler lateness "
              f"{media.scheduler.lateness * 1000:.2f} ms")

    run_on("uvloop", main)



def test_g722_loop_seam_is_primed_so_the_phone_decoder_does_not_burst() -> None:
    """A looped clip decoded as one stream (as a phone hears hold music) matches the
    clip at the seam when the second time round is encoded after the clip's own end;
    a fresh encoding there bursts (the decoder has adapted to the audio before)."""
    from media.tones import hold_tune

    clip = Pcm(hold_tune())
    first = encode_clip(clip, "G722")
    primed = encode_clip(clip, "G722", prime=clip)
    assert len(primed) == len(first)

    def seam_error(second: tuple[bytes, ...]) -> float:
        decoder = codec_for("G722")
        heard = np.frombuffer(decoder.decode(b"".join(first + second)), "<i2").astype(float)
        ideal = np.frombuffer(codec_for("G722").decode(b"".join(first)), "<i2").astype(float)
        n = 16000 * 60 // 1000  # the first 60 ms after the seam, at 16 kHz
        seam = heard[len(ideal):len(ideal) + n]
        return float(np.sqrt(np.mean((seam - ideal[:n]) ** 2)))

    assert seam_error(primed) < 200 < 1000 < seam_error(first)
