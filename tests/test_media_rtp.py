"""media.rtp: packets, sender state, pacing, RFC 4733 events, RTCP SR, latching."""

from __future__ import annotations

import contextlib
import random
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from media.rtp import (
    NTP_UNIX_OFFSET,
    Latch,
    Pacer,
    ReportBlock,
    RtpError,
    RtpExtension,
    RtpPacket,
    RtpSender,
    SenderReport,
    TelephoneEvent,
    TelephoneEventReceiver,
    Tick,
    build_compound,
    build_sdes_cname,
    dtmf_packets,
    event_for_digit,
    ntp_timestamp,
    ntp_to_unix,
    seq_distance,
)

u32 = st.integers(0, 2**32 - 1)
extensions = st.builds(
    RtpExtension,
    profile=st.integers(0, 0xFFFF),
    data=st.integers(0, 8).flatmap(lambda words: st.binary(min_size=4 * words, max_size=4 * words)),
)
packets = st.builds(
    RtpPacket,
    payload_type=st.integers(0, 127),
    sequence=st.integers(0, 0xFFFF),
    timestamp=u32,
    ssrc=u32,
    payload=st.binary(max_size=300),
    marker=st.booleans(),
    csrcs=st.lists(u32, max_size=15).map(tuple),
    extension=st.none() | extensions,
    padding=st.integers(0, 255),
)


# --- packets ----------------------------------------------------------------------


@given(packets)
def test_parse_of_build_is_identity(packet: RtpPacket) -> None:
    data = packet.build()
    assert len(data) == (
        12
        + 4 * len(packet.csrcs)
        + (4 + len(packet.extension.data) if packet.extension else 0)
        + len(packet.payload)
        + packet.padding
    )
    assert RtpPacket.parse(data) == packet


@given(st.binary(max_size=120))
def test_random_bytes_parse_or_raise_rtp_error_only(data: bytes) -> None:
    try:
        packet = RtpPacket.parse(data)
    except RtpError:
        return
    assert packet.build()[:2] == data[:2]  # version, flags, counts, marker, PT survive


@given(st.binary(min_size=12, max_size=120))
def test_version_2_random_bytes_parse_or_raise_rtp_error_only(body: bytes) -> None:
    data = bytes([0x80 | (body[0] & 0x3F)]) + body[1:]
    with contextlib.suppress(RtpError):
        RtpPacket.parse(data)


def test_build_layout_of_a_known_packet() -> None:
    packet = RtpPacket(0, 0x1234, 0x01020304, 0xDEADBEEF, b"\xff" * 4, marker=True, csrcs=(7,))
    assert packet.build() == bytes.fromhex("81 80 1234 01020304 deadbeef 00000007 ffffffff")
    padded = RtpPacket(8, 1, 2, 3, b"\xd5", padding=3, extension=RtpExtension(0xBEDE, bytes(4)))
    assert padded.build() == bytes.fromhex(
        "b0 08 0001 00000002 00000003 bede0001 00000000 d5 0000 03"
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "too short: 0 bytes"),
        (bytes.fromhex("80 00 0001 00000002"), "too short: 8 bytes"),
        (bytes.fromhex("40 00 0001 00000002 00000003"), "version must be 2, got 1"),
        (bytes.fromhex("c0 00 0001 00000002 00000003"), "version must be 2, got 3"),
        (bytes.fromhex("82 00 0001 00000002 00000003 00000004"), "too short for its 2 CSRCs"),
        (bytes.fromhex("90 00 0001 00000002 00000003 bede"), "too short for its header ext"),
        (bytes.fromhex("90 00 0001 00000002 00000003 bede0002 00000000"), "2 words overruns"),
        (bytes.fromhex("a0 00 0001 00000002 00000003 ff00"), "padding count is 0"),
        (bytes.fromhex("a0 00 0001 00000002 00000003 ff09"), "padding count 9 overruns"),
        (bytes.fromhex("a1 00 0001 00000002 00000003 00000004 03"), "too short for its 1 CSRCs"),
    ],
)
def test_parse_errors(data: bytes, message: str) -> None:
    with pytest.raises(RtpError, match=message):
        RtpPacket.parse(data)


def test_field_ranges_are_checked() -> None:
    with pytest.raises(RtpError, match="payload type must fit in 7 bits"):
        RtpPacket(128, 0, 0, 0)
    with pytest.raises(RtpError, match="sequence number"):
        RtpPacket(0, 65536, 0, 0)
    with pytest.raises(RtpError, match="at most 15 CSRCs"):
        RtpPacket(0, 0, 0, 0, csrcs=tuple(range(16)))
    with pytest.raises(RtpError, match="whole 32-bit words"):
        RtpExtension(1, b"abc")


def test_seq_distance_wraps() -> None:
    assert seq_distance(65535, 0) == 1
    assert seq_distance(0, 65535) == -1
    assert seq_distance(100, 90) == -10


# --- sender ------------------------------------------------------------------------


def test_sender_initial_values_are_random() -> None:
    a = RtpSender.create(0, 8000, rng=random.Random(1))
    b = RtpSender.create(0, 8000, rng=random.Random(1))
    c = RtpSender.create(0, 8000, rng=random.Random(2))
    assert (a.ssrc, a.sequence, a.timestamp) == (b.ssrc, b.sequence, b.timestamp)
    assert (a.ssrc, a.sequence, a.timestamp) != (c.ssrc, c.sequence, c.timestamp)
    drawn = {RtpSender.create(0, 8000).ssrc for _ in range(20)}  # secrets
    assert len(drawn) == 20


def test_sender_sequence_wraps_and_timestamp_steps() -> None:
    sender = RtpSender(0, 8000, ssrc=0x11223344, sequence=65534, timestamp=2**32 - 160)
    sent = [sender.audio(bytes(160)) for _ in range(4)]
    assert [p.sequence for p in sent] == [65534, 65535, 0, 1]
    assert [p.timestamp for p in sent] == [2**32 - 160, 0, 160, 320]
    assert [p.marker for p in sent] == [True, False, False, False]
    assert {p.ssrc for p in sent} == {0x11223344}
    assert (sender.packets_sent, sender.octets_sent) == (4, 640)
    sender.skip(3)  # 60 ms not sent: timestamp runs on, sequence does not, new talkspurt
    after = sender.audio(bytes(160))
    assert (after.sequence, after.timestamp, after.marker) == (2, 480 + 3 * 160, True)
    assert not sender.audio(bytes(160)).marker
    sender.start_talkspurt()
    assert sender.audio(bytes(160)).marker


def test_g722_sender_uses_the_8000_hz_clock() -> None:
    sender = RtpSender(9, 8000, ssrc=1, sequence=0, timestamp=0)
    sender.audio(bytes(160))
    assert sender.timestamp == 160  # 20 ms of 16 kHz audio is still 160 ticks (RFC 3551 s4.5.2)
    with pytest.raises(RtpError, match="whole number"):
        RtpSender(0, 44100, ssrc=1, sequence=0, timestamp=0, ptime_ms=15)


# --- pacer -------------------------------------------------------------------------


def test_packet_1000_is_due_exactly_20_s_after_start() -> None:
    start = 12345.678
    pacer = Pacer(start)
    assert pacer.due(0) == start
    assert pacer.due(1000) == start + 20.0
    assert pacer.due(50) == start + 1.0


def test_pacer_with_fake_clock_does_not_drift() -> None:
    # The sender wakes up 0-3 ms late every time; deadlines stay on the grid.
    rng = random.Random(7)
    pacer = Pacer(start=100.0)
    now = 100.0
    sent: list[tuple[int, float]] = []
    while len(sent) < 1001:
        tick = pacer.poll(now)
        if tick is None:
            now = pacer.next_due + rng.uniform(0.0, 0.003)
            continue
        assert tick.skipped == 0
        sent.append((tick.index, tick.due))
    assert [i for i, _ in sent] == list(range(1001))
    assert sent[1000][1] == 120.0
    assert all(due == 100.0 + i * 20 / 1000 for i, due in sent)
    assert pacer.next_due == 100.0 + 1001 * 20 / 1000


def test_pacer_catches_up_a_little_and_skips_a_lot() -> None:
    pacer = Pacer(start=0.0, max_behind=5)
    assert pacer.poll(-0.001) is None
    assert pacer.poll(0.0) == Tick(0, 0.0, 0)
    # 70 ms later: frames 1, 2, 3 are due; 2 behind is within max_behind, sent in a burst.
    assert [pacer.poll(0.07), pacer.poll(0.07), pacer.poll(0.07), pacer.poll(0.07)] == [
        Tick(1, 0.02, 0),
        Tick(2, 0.04, 0),
        Tick(3, 0.06, 0),
        None,
    ]
    # A 1 s stall: frame 50 is due at 1.0 s; 4..49 are 46 frames behind: skip them.
    tick = pacer.poll(1.005)
    assert tick == Tick(50, 1.0, 46)
    assert pacer.skipped_total == 46
    assert pacer.poll(1.005) is None
    assert pacer.next_due == 1.02


# --- RFC 4733 telephone events --------------------------------------------------------


def test_telephone_event_payload_layout() -> None:
    event = TelephoneEvent(event=11, end=True, volume=10, duration=800)
    assert event.encode() == bytes([11, 0x8A, 0x03, 0x20])
    assert TelephoneEvent.decode(event.encode()) == event
    assert TelephoneEvent.decode(bytes([1, 0x4A, 0, 160])) == TelephoneEvent(1, False, 10, 160)
    assert event.digit == "#"
    assert [event_for_digit(d) for d in "0159*#Ad"] == [0, 1, 5, 9, 10, 11, 12, 15]
    with pytest.raises(RtpError, match="must be 4 bytes"):
        TelephoneEvent.decode(b"\x01\x0a")
    with pytest.raises(ValueError, match="not a DTMF key"):
        event_for_digit("x")


def test_digit_1_packet_sequence() -> None:
    sender = RtpSender(0, 8000, ssrc=0xCAFE, sequence=65533, timestamp=8000)
    sender.audio(bytes(160))
    start_ts = sender.timestamp  # 8160
    sent = dtmf_packets(sender, "1", duration_ms=100, payload_type=101)
    events = [TelephoneEvent.decode(p.payload) for p in sent]
    assert len(sent) == 7
    assert {p.payload_type for p in sent} == {101}
    assert {p.timestamp for p in sent} == {start_ts}
    assert [p.marker for p in sent] == [True] + [False] * 6
    assert [p.sequence for p in sent] == [65534, 65535, 0, 1, 2, 3, 4]
    assert [e.duration for e in events] == [160, 320, 480, 640, 800, 800, 800]
    assert [e.end for e in events] == [False] * 4 + [True] * 3
    assert {(e.event, e.volume) for e in events} == {(1, 10)}
    # The media clock ran on during the event; audio resumes as a new talkspurt.
    after = sender.audio(bytes(160))
    assert (after.timestamp, after.marker, after.sequence) == (start_ts + 7 * 160, True, 5)


def _press(sender: RtpSender, digit: str) -> list[RtpPacket]:
    return dtmf_packets(sender, digit, duration_ms=100)


def test_receiver_reports_digit_once() -> None:
    sender = RtpSender(0, 8000, ssrc=5, sequence=0, timestamp=0)
    receiver = TelephoneEventReceiver(payload_type=101)
    got = [receiver.feed(p) for p in _press(sender, "1")]
    assert got == ["1", None, None, None, None, None, None]


def test_receiver_handles_lost_start_and_duplicates() -> None:
    sender = RtpSender(0, 8000, ssrc=5, sequence=0, timestamp=0)
    receiver = TelephoneEventReceiver()
    first, second = _press(sender, "1"), _press(sender, "1")  # the same key twice
    third = _press(sender, "#")
    stream = first[4:]  # start and all updates lost: only the 3 end packets arrive
    stream += second[1:] + second[-2:]  # lost marker packet, duplicated end packets
    stream += [first[5]]  # a straggler from the first press, late
    stream += [third[0], sender.audio(bytes(160)), *third[1:]]  # audio is not an event
    digits = [d for d in map(receiver.feed, stream) if d is not None]
    assert digits == ["1", "1", "#"]
    assert receiver.feed(RtpPacket(101, 9, 9, 5, b"\x01")) is None
    assert receiver.malformed == 1


def test_dtmf_refuses_bad_durations() -> None:
    sender = RtpSender(0, 8000, ssrc=5, sequence=0, timestamp=0)
    with pytest.raises(ValueError, match=r"1\.\.8191 ms"):
        dtmf_packets(sender, "5", duration_ms=9000)
    assert len(dtmf_packets(sender, "5", duration_ms=10)) == 3  # shorter than a frame: ends only


# --- RTCP sender report ------------------------------------------------------------


def test_ntp_timestamp() -> None:
    assert ntp_timestamp(0.0) == NTP_UNIX_OFFSET << 32
    assert ntp_timestamp(1.5) == ((NTP_UNIX_OFFSET + 1) << 32) | 0x80000000
    assert ntp_to_unix(ntp_timestamp(1_700_000_000.25)) == 1_700_000_000.25


def test_sender_report_field_layout() -> None:
    sender = RtpSender(0, 8000, ssrc=0x01020304, sequence=0, timestamp=1000)
    for _ in range(3):
        sender.audio(bytes(160))
    report = sender.sender_report(1_700_000_000.5)
    data = report.build()
    assert len(data) == 28
    assert data[0] == 0x80  # V=2, P=0, RC=0
    assert data[1] == 200  # SR
    assert struct.unpack_from("!H", data, 2)[0] == 6  # length: 7 words - 1
    ssrc, msw, lsw, rtp_ts, packets, octets = struct.unpack_from("!IIIIII", data, 4)
    assert ssrc == 0x01020304
    assert (msw, lsw) == (1_700_000_000 + NTP_UNIX_OFFSET, 0x80000000)
    assert rtp_ts == 1000 + 3 * 160
    assert (packets, octets) == (3, 480)
    assert SenderReport.parse(data) == report
    assert report.compact_ntp == ((msw & 0xFFFF) << 16) | (lsw >> 16)


def test_sender_report_with_block_and_compound() -> None:
    block = ReportBlock(0xAABBCCDD, 25, -3, 0x0001FFFF, 42, 0x12345678, 65536)
    report = SenderReport.at(7, 0.0, 160, 1, 160, (block,))
    data = report.build()
    assert len(data) == 52 and data[0] == 0x81
    assert struct.unpack_from("!H", data, 2)[0] == 12
    assert data[28:32] == bytes.fromhex("aabbccdd")
    assert data[32:36] == bytes.fromhex("19fffffd")  # fraction 25, cumulative -3 (24 bits)
    assert SenderReport.parse(data) == report
    sdes = build_sdes_cname(7, "sb@10.0.0.1")
    # header, SSRC, CNAME item (type 1, length 11), END, padded to a 32-bit boundary
    assert sdes == bytes.fromhex("81ca0005 00000007 010b") + b"sb@10.0.0.1" + bytes(3)
    assert build_compound(report, "sb@10.0.0.1") == data + sdes
    with pytest.raises(RtpError, match="not an RTCP sender report"):
        SenderReport.parse(sdes + bytes(20))


# --- latching -----------------------------------------------------------------------

PHONE = ("203.0.113.5", 40000)
MOVED = ("203.0.113.5", 40002)
STRANGER = ("198.51.100.66", 5004)


def _rtp(pt: int = 0, ssrc: int = 0x1111) -> RtpPacket:
    return RtpPacket(pt, 1, 160, ssrc, bytes(160))


def test_latch_follows_first_valid_packet() -> None:
    latch = Latch(signalled=("192.168.1.20", 16384), payload_types=frozenset({0, 101}))
    assert latch.target == ("192.168.1.20", 16384)
    assert not latch.accept(STRANGER, _rtp(pt=8), now=0.0)  # not a negotiated type
    assert not latch.latched
    assert latch.accept_datagram(STRANGER, b"junk", now=0.0) is None
    assert latch.accept(PHONE, _rtp(), now=0.1)
    assert latch.target == PHONE and latch.ssrc == 0x1111
    assert latch.rejected == 2


def test_latch_resists_hijack_until_silence() -> None:
    latch = Latch(signalled=None, payload_types=frozenset({0}), relatch_after=2.0)
    assert latch.accept(PHONE, _rtp(), now=10.0)
    assert not latch.accept(STRANGER, _rtp(ssrc=0x2222), now=10.5)  # peer is talking
    assert latch.accept(PHONE, _rtp(), now=11.0)
    assert not latch.accept(STRANGER, _rtp(), now=12.99)  # 1.99 s of silence: not yet
    assert latch.target == PHONE
    assert latch.accept(MOVED, _rtp(), now=13.0)  # 2 s of silence: NAT rebinding, re-latch
    assert latch.target == MOVED and latch.relatches == 1
    assert not latch.accept(PHONE, _rtp(), now=13.1)


def test_latch_expected_ssrc_and_reset() -> None:
    latch = Latch(signalled=PHONE, payload_types=frozenset({0}), expected_ssrc=0x1111)
    assert not latch.accept(STRANGER, _rtp(ssrc=0x9999), now=0.0)
    packet = latch.accept_datagram(MOVED, _rtp().build(), now=0.0)
    assert packet == _rtp() and latch.target == MOVED
    latch.reset(STRANGER, frozenset({8}))
    assert not latch.latched and latch.target == STRANGER
    assert latch.accept(PHONE, _rtp(pt=8, ssrc=0x9999), now=1.0)
