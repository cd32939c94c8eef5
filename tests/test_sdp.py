"""Tests for media.sdp: SDP parsing (RFC 8866) and offer/answer (RFC 3264)."""

from __future__ import annotations

import string
from typing import Any, TypedDict

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from media.sdp import (
    CODECS,
    DEFAULT_CODECS,
    DIRECTIONS,
    AnswerRefused,
    Attribute,
    Bandwidth,
    Connection,
    Direction,
    Line,
    MediaDescription,
    Origin,
    PayloadFormat,
    SdpError,
    SessionDescription,
    Timing,
    answer,
    answer_direction,
    codec,
    make_offer,
    negotiated,
    parse_sdp,
    with_connection,
    with_direction,
)


def sdp(*lines: str) -> bytes:
    return "".join(f"{line}\r\n" for line in lines).encode()


# -- real-world offers ------------------------------------------------------

# Yealink/Polycom style: static types without rtpmap.
YEALINK = sdp(
    "v=0",
    "o=- 20044 20044 IN IP4 192.168.1.50",
    "s=SDP data",
    "c=IN IP4 192.168.1.50",
    "t=0 0",
    "m=audio 11780 RTP/AVP 0 8 9 18 101",
    "a=fmtp:18 annexb=no",
    "a=rtpmap:101 telephone-event/8000",
    "a=fmtp:101 0-15",
    "a=ptime:20",
    "a=sendrecv",
)

# Polycom VVX: rtpmap for every type, session-level direction, te at 127.
POLYCOM = sdp(
    "v=0",
    "o=- 1695917562 1695917562 IN IP4 10.0.0.21",
    "s=Polycom IP Phone",
    "c=IN IP4 10.0.0.21",
    "t=0 0",
    "a=sendrecv",
    "m=audio 2222 RTP/AVP 9 0 8 18 127",
    "a=rtpmap:9 G722/8000",
    "a=rtpmap:0 PCMU/8000",
    "a=rtpmap:8 PCMA/8000",
    "a=rtpmap:18 G729/8000",
    "a=fmtp:18 annexb=no",
    "a=rtpmap:127 telephone-event/8000",
)

BARESIP = sdp(
    "v=0",
    "o=- 1843394476 4061468929 IN IP4 192.168.1.10",
    "s=-",
    "c=IN IP4 192.168.1.10",
    "t=0 0",
    "m=audio 10000 RTP/AVP 96 9 0 8 101",
    "b=AS:64",
    "a=rtpmap:96 opus/48000/2",
    "a=fmtp:96 stereo=1;sprop-stereo=1",
    "a=rtpmap:9 G722/8000",
    "a=rtpmap:0 PCMU/8000",
    "a=rtpmap:8 PCMA/8000",
    "a=rtpmap:101 telephone-event/8000",
    "a=fmtp:101 0-15",
    "a=rtcp-rsize",
    "a=sendrecv",
    "a=label:1",
    "a=ssrc:2983482393 cname:4b09e3a6-2f0e-4fd0-a2b7-8bbd1c7c0d4f",
)

# pjsua: session-level b= before t=, c= only at media level, two
# telephone-events, an unknown X- attribute, a=rtcp (RFC 3605).
PJSIP = sdp(
    "v=0",
    "o=- 3916283145 3916283145 IN IP4 192.168.1.20",
    "s=pjmedia",
    "b=AS:117",
    "t=0 0",
    "a=X-nat:0",
    "m=audio 4000 RTP/AVP 96 9 8 0 101 102",
    "c=IN IP4 192.168.1.20",
    "b=TIAS:96000",
    "a=rtcp:4001 IN IP4 192.168.1.20",
    "a=sendrecv",
    "a=rtpmap:96 opus/48000/2",
    "a=fmtp:96 useinbandfec=1",
    "a=rtpmap:9 G722/8000",
    "a=rtpmap:8 PCMA/8000",
    "a=rtpmap:0 PCMU/8000",
    "a=rtpmap:101 telephone-event/48000",
    "a=fmtp:101 0-16",
    "a=rtpmap:102 telephone-event/8000",
    "a=fmtp:102 0-16",
    "a=ssrc:1202 cname:3a4c0e1d",
)

OVERRIDE = sdp(
    "v=0",
    "o=alice 2890844526 2890844526 IN IP4 10.0.0.1",
    "s= ",
    "c=IN IP4 10.0.0.1",
    "t=0 0",
    "m=audio 49170 RTP/AVP 0",
    "c=IN IP4 10.0.0.99",
    "m=audio 49180 RTP/AVP 8",
)

HOLD_SENDONLY = sdp(
    "v=0",
    "o=- 20044 20045 IN IP4 192.168.1.50",
    "s=-",
    "c=IN IP4 192.168.1.50",
    "t=0 0",
    "m=audio 11780 RTP/AVP 0 101",
    "a=rtpmap:101 telephone-event/8000",
    "a=sendonly",
)

HOLD_2543 = sdp(
    "v=0",
    "o=- 7 8 IN IP4 192.168.1.50",
    "s=-",
    "c=IN IP4 0.0.0.0",
    "t=0 0",
    "m=audio 11780 RTP/AVP 0 8",
)

MULTI = sdp(
    "v=0",
    "o=- 1 1 IN IP4 10.1.1.1",
    "s=-",
    "c=IN IP4 10.1.1.1",
    "t=0 0",
    "m=audio 5004 RTP/AVP 0",
    "m=audio 5006 RTP/AVP 8",
    "m=video 5008 RTP/AVP 96",
    "a=rtpmap:96 H264/90000",
)

G729_ONLY = sdp(
    "v=0",
    "o=- 5 5 IN IP4 203.0.113.7",
    "s=carrier",
    "c=IN IP4 203.0.113.7",
    "t=0 0",
    "m=audio 30000 RTP/AVP 18 101",
    "a=rtpmap:18 G729/8000",
    "a=fmtp:18 annexb=no",
    "a=rtpmap:101 telephone-event/8000",
    "a=fmtp:101 0-15",
)

class Where(TypedDict):
    address: str
    port: int
    session_id: int


ANSWER_ARGS: Where = {"address": "10.0.0.5", "port": 40000, "session_id": 42}
DECODE = frozenset({"PCMU", "PCMA", "G722"})


def must_answer(offer: bytes, local: list[str] | tuple[str, ...] = DEFAULT_CODECS,
                **kwargs: Any) -> SessionDescription:
    args: dict[str, Any] = {**ANSWER_ARGS, **kwargs}
    result = answer(parse_sdp(offer), local, **args)
    assert isinstance(result, SessionDescription), result
    return result


def names(sd: SessionDescription, index: int = 0) -> list[str]:
    return [f.name for f in sd.stream(index).formats]


@pytest.mark.parametrize("raw", [YEALINK, POLYCOM, BARESIP, PJSIP, OVERRIDE, HOLD_SENDONLY,
                                 HOLD_2543, MULTI, G729_ONLY])
def test_real_world_offers_round_trip_byte_exact(raw: bytes) -> None:
    assert parse_sdp(raw).to_bytes() == raw


def test_yealink_static_types_without_rtpmap() -> None:
    offer = parse_sdp(YEALINK)
    assert offer.origin == Origin("-", "20044", 20044, "192.168.1.50")
    assert offer.name == "SDP data"
    assert offer.media[0].formats == ("0", "8", "9", "18", "101")
    stream = offer.audio()
    assert stream is not None
    assert stream.formats == (
        PayloadFormat(0, "PCMU", 8000),
        PayloadFormat(8, "PCMA", 8000),
        PayloadFormat(9, "G722", 8000),
        PayloadFormat(18, "G729", 8000, fmtp="annexb=no"),
        PayloadFormat(101, "telephone-event", 8000, fmtp="0-15"),
    )
    assert (stream.address, stream.port, stream.direction, stream.ptime) == (
        "192.168.1.50", 11780, "sendrecv", 20)
    assert not stream.is_hold()


def test_polycom_session_level_direction_and_pt_127() -> None:
    offer = parse_sdp(POLYCOM)
    assert offer.attributes == (("sendrecv", None),)
    assert offer.media[0].attributes[0] == ("rtpmap", "9 G722/8000")
    assert names(offer) == ["G722", "PCMU", "PCMA", "G729", "telephone-event"]
    assert offer.stream(0).formats[-1].payload_type == 127


def test_baresip_opus_and_unknown_attributes() -> None:
    offer = parse_sdp(BARESIP)
    m = offer.media[0]
    assert m.bandwidths == (Bandwidth("AS", 64),)
    assert m.attribute("rtcp-rsize") is None and m.has_attribute("rtcp-rsize")
    assert m.attribute("label") == "1"
    opus = offer.stream(0).formats[0]
    assert opus == PayloadFormat(96, "opus", 48000, 2, "stereo=1;sprop-stereo=1")
    assert opus.codec == CODECS["opus"]


def test_pjsip_media_level_connection_only() -> None:
    offer = parse_sdp(PJSIP)
    assert offer.connection is None
    assert offer.bandwidths == (Bandwidth("AS", 117),)
    assert offer.attribute("X-nat") == "0"
    assert offer.media[0].connection == Connection("192.168.1.20")
    assert offer.stream(0).address == "192.168.1.20"
    events = [(f.payload_type, f.clock_rate) for f in offer.stream(0).formats
              if f.name == "telephone-event"]
    assert events == [(101, 48000), (102, 8000)]


def test_session_level_connection_applies_to_every_stream() -> None:
    offer = parse_sdp(MULTI)
    assert [s.address for s in offer.streams()] == ["10.1.1.1"] * 3
    assert [m.connection for m in offer.media] == [None, None, None]


def test_media_level_connection_overrides_session_level() -> None:
    offer = parse_sdp(OVERRIDE)
    assert offer.name == " "  # RFC 8866 s5.3: "s= " when there is no name
    assert offer.stream(0).address == "10.0.0.99"
    assert offer.stream(1).address == "10.0.0.1"


def test_sendonly_hold_offer() -> None:
    stream = parse_sdp(HOLD_SENDONLY).audio()
    assert stream is not None
    assert stream.direction == "sendonly"
    assert stream.is_hold()
    ans = must_answer(HOLD_SENDONLY)
    assert ans.stream(0).direction == "recvonly"
    assert ans.media[0].attributes[-1] == ("recvonly", None)


def test_rfc2543_hold_with_zero_address() -> None:
    offer = parse_sdp(HOLD_2543)
    stream = offer.audio()
    assert stream is not None
    assert stream.direction == "sendrecv" and stream.address == "0.0.0.0"
    assert stream.is_hold()
    ans = must_answer(HOLD_2543)
    assert ans.stream(0).direction == "recvonly"  # do not send to 0.0.0.0 (RFC 3264 s8.4)
    n = negotiated(offer, ans)
    assert n.direction == "recvonly" and not n.sends and n.receives


def test_inactive_and_recvonly_are_read() -> None:
    for attribute, hold in (("inactive", True), ("recvonly", False), ("sendrecv", False)):
        offer = parse_sdp(HOLD_SENDONLY.replace(b"a=sendonly", f"a={attribute}".encode()))
        stream = offer.audio()
        assert stream is not None
        assert stream.direction == attribute
        assert stream.is_hold() is hold


def test_session_level_direction_applies_unless_media_level() -> None:
    offer = parse_sdp(sdp(
        "v=0", "o=- 1 1 IN IP4 10.0.0.1", "s=-", "c=IN IP4 10.0.0.1", "t=0 0",
        "a=sendonly",
        "m=audio 5004 RTP/AVP 0",
        "m=audio 5006 RTP/AVP 0", "a=inactive",
        "m=audio 5008 RTP/AVP 0", "a=SENDRECV",
    ))
    assert [s.direction for s in offer.streams()] == ["sendonly", "inactive", "sendrecv"]


def test_two_audio_streams_and_video() -> None:
    offer = parse_sdp(MULTI)
    ans = must_answer(MULTI)
    assert len(ans.media) == 3
    assert [(m.media, m.port) for m in ans.media] == [("audio", 40000), ("audio", 0),
                                                     ("video", 0)]
    assert ans.media[1].formats == ("8",) and ans.media[2].formats == ("96",)
    assert ans.media[2].attributes == ()
    assert names(ans) == ["PCMU"]
    assert negotiated(offer, ans).index == 0


def test_lf_only_and_blank_lines_are_accepted() -> None:
    lf = YEALINK.replace(b"\r\n", b"\n") + b"\n\n"
    parsed = parse_sdp(lf)
    assert parsed == parse_sdp(YEALINK)
    assert parsed.to_bytes() == YEALINK


def test_str_input_and_trailing_blanks_on_attributes() -> None:
    text = YEALINK.decode().replace("a=sendrecv", "a=sendrecv  ")
    assert parse_sdp(text).media[0].attributes[-1] == ("sendrecv", None)


def test_uninterpreted_lines_round_trip() -> None:
    raw = sdp(
        "v=0",
        "o=jdoe 2890844526 2890842807 IN IP4 10.47.16.5",
        "s=SDP Seminar",
        "i=A Seminar on the session description protocol",
        "u=http://www.example.com/seminars/sdp.pdf",
        "e=j.doe@example.com (Jane Doe)",
        "p=+1 617 555-6011",
        "c=IN IP4 224.2.17.12/127",
        "b=CT:128",
        "t=2873397496 2873404696",
        "r=604800 3600 0 90000",
        "t=0 0",
        "z=2882844526 -1h 2898848070 0",
        "k=prompt",
        "x=an unknown line type",
        "a=recvonly",
        "a=tool:foo:bar",
        "a=empty:",
        "m=audio 49170/2 RTP/AVP 0",
        "i=the audio",
        "c=IN IP4 224.2.17.12/127/2",
        "c=IN IP4 224.2.17.14/127/2",
        "b=AS:64",
        "k=clear:secret",
        "y=another unknown",
        "m=application 9 UDP/BFCP *",
    )
    parsed = parse_sdp(raw)
    assert parsed.to_bytes() == raw
    assert parsed.times == (Timing(2873397496, 2873404696, ("604800 3600 0 90000",)), Timing())
    assert parsed.other == (
        ("i", "A Seminar on the session description protocol"),
        ("u", "http://www.example.com/seminars/sdp.pdf"),
        ("e", "j.doe@example.com (Jane Doe)"),
        ("p", "+1 617 555-6011"),
        ("z", "2882844526 -1h 2898848070 0"),
        ("k", "prompt"),
        ("x", "an unknown line type"),
    )
    assert parsed.attributes == (("recvonly", None), ("tool", "foo:bar"), ("empty", ""))
    m = parsed.media[0]
    assert (m.port, m.port_count) == (49170, 2)
    assert m.connection == Connection("224.2.17.12/127/2")
    assert m.other == (("i", "the audio"), ("c", "IN IP4 224.2.17.14/127/2"),
                       ("k", "clear:secret"), ("y", "another unknown"))
    assert parsed.stream(0).address == "224.2.17.12"
    assert parsed.media[1].formats == ("*",) and parsed.media[1].payload_formats() == ()


def test_non_utf8_bytes_survive() -> None:
    raw = YEALINK.replace(b"s=SDP data", b"s=caf\xe9")
    assert parse_sdp(raw).to_bytes() == raw


def test_codec_names_are_case_insensitive() -> None:
    offer = parse_sdp(sdp(
        "v=0", "o=- 1 1 IN IP4 10.0.0.1", "s=-", "c=IN IP4 10.0.0.1", "t=0 0",
        "m=audio 5004 RTP/AVP 9 0 101",
        "a=RTPMAP:9 g722/8000", "a=rtpmap:0 pcmu/8000", "a=rtpmap:101 Telephone-Event/8000",
    ))
    assert names(offer) == ["G722", "PCMU", "telephone-event"]
    assert codec("g722") is CODECS["G722"] and codec("OPUS") is CODECS["opus"]
    assert codec("speex") is None
    ans = must_answer(offer.to_bytes(), ["pcmu", "g722"])
    assert names(ans) == ["PCMU", "G722", "telephone-event"]


def test_rtpmap_with_the_wrong_clock_rate_is_not_taken_for_the_codec() -> None:
    offer = parse_sdp(sdp(
        "v=0", "o=- 1 1 IN IP4 10.0.0.1", "s=-", "c=IN IP4 10.0.0.1", "t=0 0",
        "m=audio 5004 RTP/AVP 9 0 8",
        "a=rtpmap:9 G722/16000", "a=rtpmap:0 PCMU/8000/2",
    ))
    assert [f.codec for f in offer.stream(0).formats] == [None, None, CODECS["PCMA"]]
    assert names(must_answer(offer.to_bytes())) == ["PCMA"]


def test_codec_table() -> None:
    g722 = CODECS["G722"]
    assert (g722.static_pt, g722.clock_rate, g722.sample_rate) == (9, 8000, 16000)
    assert [(c.name, c.static_pt) for c in CODECS.values()] == [
        ("PCMU", 0), ("PCMA", 8), ("G722", 9), ("G729", 18), ("telephone-event", None),
        ("opus", None)]
    assert (CODECS["opus"].clock_rate, CODECS["opus"].channels) == (48000, 2)


@pytest.mark.parametrize(("media_ptime", "session_ptime", "expected"), [
    (None, None, 20), ("30", None, 30), (None, "40", 40), ("10", "40", 10),
    ("x", None, 20), ("0", None, 20), ("inf", None, 20), ("22.5", None, 22),
])
def test_ptime(media_ptime: str | None, session_ptime: str | None, expected: int) -> None:
    lines = ["v=0", "o=- 1 1 IN IP4 10.0.0.1", "s=-", "c=IN IP4 10.0.0.1", "t=0 0"]
    if session_ptime is not None:
        lines.append(f"a=ptime:{session_ptime}")
    lines.append("m=audio 5004 RTP/AVP 0")
    if media_ptime is not None:
        lines.append(f"a=ptime:{media_ptime}")
    assert parse_sdp(sdp(*lines)).stream(0).ptime == expected


# -- malformed input --------------------------------------------------------

HEAD = ("v=0", "o=- 1 1 IN IP4 10.0.0.1", "s=-", "c=IN IP4 10.0.0.1", "t=0 0")


@pytest.mark.parametrize(("lines", "message"), [
    (("o=- 1 1 IN IP4 10.0.0.1", "v=0"), "line 1: the first line must be v=0: 'o=- 1 1 IN IP4"),
    (("v=1",), "line 1: unsupported SDP version: 'v=1'"),
    (("v=0", "o=- 1 1 IN IP4"), "line 2: o= needs 6 fields"),
    (("v=0", "o=- 1 x IN IP4 10.0.0.1"), "line 2: o= session version is not a number"),
    ((*HEAD, "m=audio x RTP/AVP 0"), "line 6: m= port is not a number: 'm=audio x RTP/AVP 0'"),
    ((*HEAD, "m=audio 70000 RTP/AVP 0"), "line 6: m= port is over 65535"),
    ((*HEAD, "m=audio 5004/0 RTP/AVP 0"), "line 6: m= port count is 0"),
    ((*HEAD, "m=audio 5004"), "line 6: m= needs at least: media port proto"),
    ((*HEAD, "m=audio 5004 RTP/AVP 0", "c=IN IP4"),
     "line 7: c= needs 3 fields: nettype addrtype address: 'c=IN IP4'"),
    ((*HEAD, "m=audio 5004 RTP/AVP 0", "t=0 0"),
     "line 7: t= is not allowed in a media description: 't=0 0'"),
    ((*HEAD, "m=audio 5004 RTP/AVP 0", "a="), "line 7: a= has no attribute name: 'a='"),
    ((*HEAD, "m=audio 5004 RTP/AVP 0", "b=AS:lots"), "line 7: b= bandwidth is not a number"),
    ((*HEAD, "m=audio 5004 RTP/AVP 0", "b=64"), "line 7: b= must be <bwtype>:<bandwidth>"),
    ((*HEAD, "garbage"), "line 6: expected <type>=<value>: 'garbage'"),
    ((*HEAD, "A=sendrecv"), "line 6: expected <type>=<value>"),
    ((*HEAD, "a = sendrecv"), "line 6: expected <type>=<value>"),
    ((*HEAD, "a=x\ry"), "line 6: CR or NUL inside a line"),
    (("v=0", "o=- 1 1 IN IP4 10.0.0.1", "o=- 2 2 IN IP4 10.0.0.1"), "line 3: o= repeated"),
    ((*HEAD, "c=IN IP4 10.0.0.2"), "line 6: session-level c= repeated"),
    (("v=0", "o=- 1 1 IN IP4 10.0.0.1", "s=-", "r=7d 1h 0 25h"), "line 4: r= before any t="),
    (("v=0", "o=- 1 1 IN IP4 10.0.0.1", "t=0"), "line 3: t= needs 2 fields"),
    (("v=0", "s=-"), "missing o= line"),
    ((), "empty session description"),
])
def test_malformed_sdp_names_the_line(lines: tuple[str, ...], message: str) -> None:
    with pytest.raises(SdpError) as info:
        parse_sdp(sdp(*lines))
    assert message in str(info.value)
    assert info.value.message == str(info.value)


def test_error_caps_the_quoted_line() -> None:
    long = "garbage" * 100
    with pytest.raises(SdpError) as info:
        parse_sdp(sdp(*HEAD, long))
    assert str(info.value) == f"line 6: expected <type>=<value>: {long[:60] + '...'!r}"


def test_missing_session_name_and_time_are_tolerated() -> None:
    parsed = parse_sdp(sdp("v=0", "o=- 1 1 IN IP4 10.0.0.1", "c=IN IP4 10.0.0.1",
                           "m=audio 5004 RTP/AVP"))
    assert parsed.name == "-" and parsed.times == (Timing(0, 0),)
    assert parsed.media[0].formats == ()


def test_writing_a_line_break_is_refused() -> None:
    sd = parse_sdp(YEALINK)
    bad = SessionDescription(sd.origin, "x\r\na=injected")
    with pytest.raises(SdpError, match="CR, LF or NUL"):
        bad.to_bytes()
    with pytest.raises(SdpError, match="uninterpreted"):
        SessionDescription(sd.origin, other=(("m", "audio 1 RTP/AVP 0"),)).to_bytes()


# -- answer -----------------------------------------------------------------


def test_priority_picks_g722_when_both_sides_allow_it() -> None:
    ans = must_answer(YEALINK, ["G722", "PCMU", "PCMA", "G729"])
    assert ans.media[0].formats == ("9", "0", "8", "18", "101")
    assert ans.media[0].attributes == (
        ("rtpmap", "9 G722/8000"),
        ("rtpmap", "0 PCMU/8000"),
        ("rtpmap", "8 PCMA/8000"),
        ("rtpmap", "18 G729/8000"),
        ("fmtp", "18 annexb=no"),
        ("rtpmap", "101 telephone-event/8000"),
        ("fmtp", "101 0-15"),
        ("ptime", "20"),
        ("sendrecv", None),
    )
    n = negotiated(parse_sdp(YEALINK), ans)
    assert (n.codec, n.payload_type, n.clock_rate) == ("G722", 9, 8000)


def test_priority_picks_pcmu_when_the_users_list_says_so() -> None:
    ans = must_answer(YEALINK, ["PCMU", "G722"])
    assert names(ans) == ["PCMU", "G722", "telephone-event"]
    assert negotiated(parse_sdp(YEALINK), ans).codec == "PCMU"


def test_our_priority_wins_over_the_offer_order() -> None:
    # Polycom prefers G722; a user who lists PCMA first gets PCMA.
    ans = must_answer(POLYCOM, ["PCMA", "PCMU"])
    assert names(ans) == ["PCMA", "PCMU", "telephone-event"]


def test_telephone_event_payload_type_and_fmtp_are_kept() -> None:
    ans = must_answer(POLYCOM)
    assert ans.media[0].formats[-1] == "127"
    assert ("rtpmap", "127 telephone-event/8000") in ans.media[0].attributes
    offer = parse_sdp(POLYCOM)
    n = negotiated(offer, ans)
    assert (n.telephone_event, n.receive_telephone_event) == (127, 127)
    ans = must_answer(YEALINK)
    assert ("fmtp", "101 0-15") in ans.media[0].attributes


def test_telephone_event_not_offered_or_not_wanted() -> None:
    ans = must_answer(MULTI)
    assert "telephone-event" not in names(ans)
    assert negotiated(parse_sdp(MULTI), ans).telephone_event is None
    ans = must_answer(YEALINK, telephone_event=False)
    assert names(ans) == ["G722", "PCMU", "PCMA", "G729"]


def test_telephone_event_at_the_clock_rate_of_the_codec() -> None:
    assert must_answer(PJSIP, ["opus", "G722"]).media[0].formats == ("96", "9", "101")
    assert must_answer(PJSIP, ["G722", "opus"]).media[0].formats == ("9", "96", "102")


def test_dynamic_payload_numbers_and_fmtp_of_the_offer_are_kept() -> None:
    offer = parse_sdp(BARESIP)
    ans = must_answer(BARESIP, ["opus", "PCMU"])
    assert ans.media[0].formats == ("96", "0", "101")
    assert ("rtpmap", "96 opus/48000/2") in ans.media[0].attributes
    assert ("fmtp", "96 stereo=1;sprop-stereo=1") in ans.media[0].attributes
    n = negotiated(offer, ans)
    assert (n.codec, n.payload_type, n.clock_rate, n.channels) == ("opus", 96, 48000, 2)
    assert n.fmtp == "stereo=1;sprop-stereo=1"


@pytest.mark.parametrize(("offered", "expected"), [
    ("sendonly", "recvonly"),
    ("recvonly", "sendonly"),
    ("inactive", "inactive"),
    ("sendrecv", "sendrecv"),
])
def test_answer_direction_table(offered: Direction, expected: Direction) -> None:
    assert answer_direction(offered) == expected
    raw = HOLD_SENDONLY.replace(b"a=sendonly", f"a={offered}".encode())
    assert must_answer(raw).stream(0).direction == expected


@pytest.mark.parametrize(("offered", "wanted", "expected"), [
    ("sendrecv", "sendonly", "sendonly"),
    ("sendrecv", "inactive", "inactive"),
    ("sendonly", "sendonly", "inactive"),
    ("recvonly", "recvonly", "inactive"),
    ("sendonly", "sendrecv", "recvonly"),
])
def test_answer_direction_narrowed_by_ours(offered: Direction, wanted: Direction,
                                           expected: Direction) -> None:
    assert answer_direction(offered, wanted) == expected
    raw = HOLD_SENDONLY.replace(b"a=sendonly", f"a={offered}".encode())
    assert must_answer(raw, direction=wanted).stream(0).direction == expected


def test_g729_only_when_the_engine_must_decode_is_488() -> None:
    result = answer(parse_sdp(G729_ONLY), DEFAULT_CODECS, can_decode=DECODE, **ANSWER_ARGS)
    assert result == AnswerRefused(
        "only G729 offered: the engine cannot decode it (no transcoding)", 488, 305)


def test_g729_in_common_but_other_codecs_offered_names_them() -> None:
    raw = G729_ONLY.replace(b"RTP/AVP 18 101", b"RTP/AVP 18 3 101")
    result = answer(parse_sdp(raw), ["G729", "PCMU"], can_decode=DECODE, **ANSWER_ARGS)
    assert isinstance(result, AnswerRefused)
    assert result.reason == ("only G729 in common (offered G729, GSM, telephone-event): "
                             "the engine cannot decode it (no transcoding)")


def test_g729_is_relayed_when_nobody_decodes() -> None:
    ans = must_answer(G729_ONLY)
    assert ans.media[0].formats == ("18", "101")
    assert ("fmtp", "18 annexb=no") in ans.media[0].attributes
    n = negotiated(parse_sdp(G729_ONLY), ans)
    assert (n.codec, n.fmtp) == ("G729", "annexb=no")


def test_can_decode_skips_g729_when_another_codec_is_common() -> None:
    raw = G729_ONLY.replace(b"RTP/AVP 18 101", b"RTP/AVP 18 0 101")
    ans = must_answer(raw, ["G729", "PCMU"], can_decode=DECODE)
    assert names(ans) == ["PCMU", "telephone-event"]


def test_no_common_codec_is_488_naming_both_lists() -> None:
    raw = sdp(*HEAD, "m=audio 5004 RTP/AVP 3 97 101", "a=rtpmap:101 telephone-event/8000")
    result = answer(parse_sdp(raw), ["G722", "PCMU"], **ANSWER_ARGS)
    assert result == AnswerRefused(
        "no common codec: offered GSM, 97 (unknown), telephone-event; we support G722, PCMU")


def test_only_srtp_is_488_with_warning_302() -> None:
    raw = sdp(*HEAD, "m=audio 5004 RTP/SAVP 0",
              "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz")
    result = answer(parse_sdp(raw), DEFAULT_CODECS, **ANSWER_ARGS)
    assert result == AnswerRefused("audio offered only over RTP/SAVP; we support RTP/AVP",
                                   warning=302)


def test_best_effort_srtp_gets_the_plain_stream() -> None:
    raw = sdp(*HEAD, "m=audio 5004 RTP/SAVP 0", "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:x",
              "m=audio 5006 RTP/AVP 0")
    ans = must_answer(raw)
    assert [m.port for m in ans.media] == [0, 40000]
    assert ans.media[0].protocol == "RTP/SAVP"
    assert negotiated(parse_sdp(raw), ans).remote_port == 5006


def test_rtp_avpf_is_answered_in_kind() -> None:
    ans = must_answer(sdp(*HEAD, "m=audio 5004 RTP/AVPF 0"))
    assert ans.media[0].protocol == "RTP/AVPF"


def test_no_audio_is_488_with_warning_304() -> None:
    raw = sdp(*HEAD, "m=video 5008 RTP/AVP 96", "a=rtpmap:96 H264/90000")
    assert answer(parse_sdp(raw), DEFAULT_CODECS, **ANSWER_ARGS) == AnswerRefused(
        "no audio stream offered (offered: video)", warning=304)
    raw = sdp(*HEAD, "m=audio 0 RTP/AVP 0")
    result = answer(parse_sdp(raw), DEFAULT_CODECS, **ANSWER_ARGS)
    assert isinstance(result, AnswerRefused) and result.warning == 304


def test_multicast_audio_is_refused() -> None:
    raw = sdp("v=0", "o=- 1 1 IN IP4 10.0.0.1", "s=-", "c=IN IP4 224.2.1.1/127", "t=0 0",
              "m=audio 5004 RTP/AVP 0")
    result = answer(parse_sdp(raw), DEFAULT_CODECS, **ANSWER_ARGS)
    assert isinstance(result, AnswerRefused) and result.warning == 302


def test_audio_without_any_connection_is_an_sdp_error() -> None:
    raw = sdp("v=0", "o=- 1 1 IN IP4 10.0.0.1", "s=-", "t=0 0", "m=audio 5004 RTP/AVP 0")
    with pytest.raises(SdpError, match="no c="):
        answer(parse_sdp(raw), DEFAULT_CODECS, **ANSWER_ARGS)


def test_answer_envelope() -> None:
    raw = YEALINK.replace(b"t=0 0", b"t=3034423619 0")
    ans = must_answer(raw, session_version=3)
    assert ans.origin == Origin("-", "42", 3, "10.0.0.5")
    assert ans.connection == Connection("10.0.0.5")
    assert ans.times == (Timing(3034423619, 0),)  # RFC 3264 s6: t= equals the offer's
    assert parse_sdp(ans.to_bytes()) == ans
    assert ans.to_bytes().startswith(b"v=0\r\no=- 42 3 IN IP4 10.0.0.5\r\ns=-\r\n"
                                     b"c=IN IP4 10.0.0.5\r\nt=3034423619 0\r\n"
                                     b"m=audio 40000 RTP/AVP 9 0 8 18 101\r\n")
    v6 = must_answer(YEALINK, address="2001:db8::5")
    assert v6.connection == Connection("2001:db8::5", "IP6")
    assert v6.origin.addrtype == "IP6"


def test_answer_rejects_bad_arguments() -> None:
    offer = parse_sdp(YEALINK)
    with pytest.raises(ValueError, match="port"):
        answer(offer, DEFAULT_CODECS, address="10.0.0.5", port=0, session_id=1)
    with pytest.raises(ValueError, match="address"):
        answer(offer, DEFAULT_CODECS, address="10.0.0.5 x", port=4000, session_id=1)


def test_empty_local_list_is_refused() -> None:
    result = answer(parse_sdp(YEALINK), [], **ANSWER_ARGS)
    assert isinstance(result, AnswerRefused)
    assert result.reason.endswith("we support nothing")


# -- offer ------------------------------------------------------------------


def test_make_offer() -> None:
    offer = make_offer(["G722", "PCMU", "PCMA", "G729"], address="10.0.0.5", port=40000,
                       session_id=77)
    assert offer.to_bytes() == sdp(
        "v=0",
        "o=- 77 0 IN IP4 10.0.0.5",
        "s=-",
        "c=IN IP4 10.0.0.5",
        "t=0 0",
        "m=audio 40000 RTP/AVP 9 0 8 18 101",
        "a=rtpmap:9 G722/8000",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:8 PCMA/8000",
        "a=rtpmap:18 G729/8000",
        "a=rtpmap:101 telephone-event/8000",
        "a=fmtp:101 0-16",
        "a=ptime:20",
        "a=sendrecv",
    )
    assert parse_sdp(offer.to_bytes()) == offer


def test_make_offer_options() -> None:
    offer = make_offer(["pcma", "opus", "PCMA"], address="10.0.0.5", port=40000, session_id=1,
                       session_version=4, telephone_event=False, direction="sendonly")
    assert offer.origin.session_version == 4
    assert offer.media[0].formats == ("8", "96")
    assert offer.media[0].attributes == (
        ("rtpmap", "8 PCMA/8000"), ("rtpmap", "96 opus/48000/2"), ("ptime", "20"),
        ("sendonly", None))
    with_events = make_offer(["opus", "PCMU"], address="10.0.0.5", port=1, session_id=1)
    assert with_events.media[0].formats == ("96", "0", "97", "101")
    assert ("rtpmap", "97 telephone-event/48000") in with_events.media[0].attributes
    with pytest.raises(ValueError, match="unknown codec 'speex'"):
        make_offer(["PCMU", "speex"], address="10.0.0.5", port=1, session_id=1)
    with pytest.raises(ValueError, match="no codec"):
        make_offer(["telephone-event"], address="10.0.0.5", port=1, session_id=1)


def test_offer_then_answer_then_negotiated_as_offerer() -> None:
    offer = make_offer(["G722", "PCMU"], address="10.0.0.5", port=40000, session_id=1)
    # The phone answers with PCMU only, renumbers telephone-event, wants 30 ms.
    peer = parse_sdp(sdp(
        "v=0", "o=- 9 9 IN IP4 192.168.1.50", "s=-", "c=IN IP4 192.168.1.50", "t=0 0",
        "m=audio 11780 RTP/AVP 0 96", "a=rtpmap:96 telephone-event/8000", "a=fmtp:96 0-15",
        "a=ptime:30", "a=sendrecv",
    ))
    n = negotiated(offer, peer, local="offerer")
    assert (n.codec, n.payload_type, n.receive_payload_type) == ("PCMU", 0, 0)
    assert (n.telephone_event, n.receive_telephone_event) == (96, 101)
    assert (n.remote_address, n.remote_port, n.ptime) == ("192.168.1.50", 11780, 30)
    assert n.direction == "sendrecv" and n.sends and n.receives


def test_negotiated_as_answerer_uses_the_offer_numbers_and_ptime() -> None:
    offer = parse_sdp(YEALINK.replace(b"a=ptime:20", b"a=ptime:30"))
    ans = must_answer(offer.to_bytes(), ["PCMA"])
    n = negotiated(offer, ans)
    assert (n.codec, n.payload_type, n.telephone_event) == ("PCMA", 8, 101)
    assert (n.remote_address, n.remote_port, n.ptime) == ("192.168.1.50", 11780, 30)


def test_negotiated_direction_on_hold() -> None:
    offer = parse_sdp(HOLD_SENDONLY)
    n = negotiated(offer, must_answer(HOLD_SENDONLY))
    assert n.direction == "recvonly" and not n.sends
    ours = make_offer(["PCMU"], address="10.0.0.5", port=4000, session_id=1)
    held = with_direction(ours, "sendonly")
    peer = must_answer(held.to_bytes())
    assert negotiated(held, peer, local="offerer").direction == "sendonly"


def test_negotiated_refuses_mismatched_answers() -> None:
    offer = parse_sdp(MULTI)
    with pytest.raises(SdpError, match="m= lines"):
        negotiated(offer, parse_sdp(YEALINK))
    rejected = replace_media(must_answer(MULTI), 0, port=0)
    with pytest.raises(SdpError, match="accepts no audio"):
        negotiated(offer, rejected)
    wrong = parse_sdp(sdp(*HEAD, "m=audio 4000 RTP/AVP 8", "m=audio 0 RTP/AVP 8",
                          "m=video 0 RTP/AVP 96"))
    with pytest.raises(SdpError, match="no codec of the answer is in the offer"):
        negotiated(offer, wrong)


def replace_media(sd: SessionDescription, index: int, **changes: object) -> SessionDescription:
    from dataclasses import replace

    media = list(sd.media)
    media[index] = replace(media[index], **changes)  # type: ignore[arg-type]
    return replace(sd, media=tuple(media))


# -- rewriting --------------------------------------------------------------


def test_with_direction() -> None:
    offer = parse_sdp(POLYCOM)  # session-level a=sendrecv, none at media level
    held = with_direction(offer, "sendonly")
    assert held.origin.session_version == offer.origin.session_version + 1
    assert held.attributes == ()
    assert held.media[0].attributes[-1] == ("sendonly", None)
    assert held.stream(0).is_hold()
    resumed = with_direction(parse_sdp(YEALINK), "inactive")
    assert resumed.media[0].attributes[-1] == ("inactive", None)  # replaced in place
    assert sum(1 for a in resumed.media[0].attributes if a[0] in DIRECTIONS) == 1
    multi = with_direction(must_answer(MULTI), "sendonly")
    assert [m.attributes for m in multi.media[1:]] == [(), ()]  # rejected: untouched
    with pytest.raises(ValueError, match="direction"):
        with_direction(offer, "hold")  # type: ignore[arg-type]


def test_with_connection_anchors_the_audio() -> None:
    offer = parse_sdp(PJSIP.replace(b"a=sendrecv", b"a=sendrecv\r\na=ice-ufrag:abcd\r\n"
                                    b"a=candidate:1 1 UDP 2130706431 192.168.1.20 4000 typ host"))
    anchored = with_connection(offer, "203.0.113.1", 30000)
    assert anchored.origin.session_version == offer.origin.session_version + 1
    assert anchored.connection == Connection("203.0.113.1")
    m = anchored.media[0]
    assert (m.port, m.connection) == (30000, None)
    assert not m.has_attribute("rtcp") and not m.has_attribute("candidate")
    assert not m.has_attribute("ice-ufrag")
    assert m.attribute("rtpmap") == "96 opus/48000/2"
    stream = anchored.stream(0)
    assert (stream.address, stream.port) == ("203.0.113.1", 30000)


def test_with_connection_keeps_other_streams_where_they_were() -> None:
    anchored = with_connection(parse_sdp(MULTI), "203.0.113.1", 30000)
    assert [(s.address, s.port) for s in anchored.streams()] == [
        ("203.0.113.1", 30000), ("10.1.1.1", 5006), ("10.1.1.1", 5008)]
    v6 = with_connection(parse_sdp(MULTI), "2001:db8::1", 30000, index=2)
    assert v6.connection == Connection("2001:db8::1", "IP6")
    assert [(s.address, s.port) for s in v6.streams()] == [
        ("10.1.1.1", 5004), ("10.1.1.1", 5006), ("2001:db8::1", 30000)]


def test_with_connection_keeps_an_rfc2543_hold() -> None:
    anchored = with_connection(parse_sdp(HOLD_2543), "203.0.113.1", 30000)
    stream = anchored.stream(0)
    assert (stream.address, stream.port) == ("0.0.0.0", 30000)
    assert stream.is_hold()


def test_with_connection_needs_an_active_stream() -> None:
    video = parse_sdp(sdp(*HEAD, "m=video 5008 RTP/AVP 96"))
    with pytest.raises(SdpError, match="no active audio"):
        with_connection(video, "203.0.113.1", 30000)
    with pytest.raises(SdpError, match="index 5"):
        with_connection(parse_sdp(MULTI), "203.0.113.1", 30000, index=5)


# -- properties -------------------------------------------------------------

TOKEN = st.text(string.ascii_letters + string.digits + "-._+!*~", min_size=1, max_size=10)
FREE = st.text(st.characters(exclude_characters="\r\n\x00", exclude_categories=["Cs"]),
               max_size=20)
VALUE = FREE.map(lambda v: v.rstrip(" \t"))
UNKNOWN_LETTERS = "dfghjlnqwxy"


def lines_of(letters: str) -> st.SearchStrategy[list[Line]]:
    return st.lists(st.tuples(st.sampled_from(letters), FREE), max_size=2)


connections = st.builds(Connection, TOKEN, st.sampled_from(["IP4", "IP6"]), st.just("IN"))
bandwidths = st.lists(st.builds(Bandwidth, TOKEN, st.integers(0, 10**9)), max_size=2).map(tuple)
attributes: st.SearchStrategy[tuple[Attribute, ...]] = st.lists(
    st.tuples(TOKEN, st.none() | VALUE), max_size=4).map(tuple)


@st.composite
def media_descriptions(draw: st.DrawFn) -> MediaDescription:
    connection = draw(st.none() | connections)
    extra_c: list[Line] = []
    if connection is not None:
        extra_c = [("c", c.line()) for c in draw(st.lists(connections, max_size=2))]
    other = [*draw(lines_of("i")), *extra_c, *draw(lines_of("k")),
             *draw(lines_of(UNKNOWN_LETTERS))]
    return MediaDescription(
        media=draw(st.sampled_from(["audio", "video", "application"]) | TOKEN),
        port=draw(st.integers(0, 65535)),
        protocol=draw(st.sampled_from(["RTP/AVP", "RTP/SAVP", "udp"]) | TOKEN),
        formats=tuple(draw(st.lists(TOKEN, max_size=5))),
        connection=connection,
        bandwidths=draw(bandwidths),
        attributes=draw(attributes),
        port_count=draw(st.none() | st.integers(1, 4)),
        other=tuple(other),
    )


@st.composite
def descriptions(draw: st.DrawFn) -> SessionDescription:
    origin = Origin(draw(TOKEN), str(draw(st.integers(0, 2**64))), draw(st.integers(0, 2**64)),
                    draw(TOKEN), draw(st.sampled_from(["IP4", "IP6"])), "IN")
    times = draw(st.lists(st.builds(Timing, st.integers(0, 2**40), st.integers(0, 2**40),
                                    st.lists(FREE, max_size=2).map(tuple)),
                          min_size=1, max_size=2))
    other = [*draw(lines_of("iuep")), *draw(lines_of("zk")), *draw(lines_of(UNKNOWN_LETTERS))]
    return SessionDescription(
        origin=origin,
        name=draw(FREE),
        connection=draw(st.none() | connections),
        times=tuple(times),
        attributes=draw(attributes),
        media=tuple(draw(st.lists(media_descriptions(), max_size=3))),
        bandwidths=draw(bandwidths),
        other=tuple(other),
    )


@settings(max_examples=300, deadline=None)
@given(sd=descriptions())
def test_random_descriptions_round_trip(sd: SessionDescription) -> None:
    raw = sd.to_bytes()
    assert raw.endswith(b"\r\n") and b"\n" not in raw.replace(b"\r\n", b"")
    assert parse_sdp(raw) == sd
    assert parse_sdp(raw.replace(b"\r\n", b"\n")) == sd


SDP_LINES = [line for line in (YEALINK + PJSIP).decode().split("\r\n") if line]


@settings(max_examples=300, deadline=None)
@given(data=st.one_of(
    st.binary(max_size=300),
    st.text(max_size=300),
    st.lists(st.sampled_from([*SDP_LINES, "a=", "m=audio", "c=IN", "b=AS:", "x=1", "t=1",
                              "r=1", " ", "garbage"]), max_size=25).map("\n".join),
))
def test_parse_only_raises_sdp_error_and_is_idempotent(data: bytes | str) -> None:
    try:
        parsed = parse_sdp(data)
    except SdpError:
        return
    assert parse_sdp(parsed.to_bytes()) == parsed


FORMAT_POOL = ["0", "8", "9", "18", "3", "13", "96", "97", "101", "102", "127", "abc", "200"]
ATTRIBUTE_POOL: list[Attribute] = [
    ("rtpmap", "96 opus/48000/2"), ("rtpmap", "97 telephone-event/8000"),
    ("rtpmap", "101 telephone-event/8000"), ("rtpmap", "102 telephone-event/48000"),
    ("rtpmap", "96 G722/16000"), ("rtpmap", "0 PCMU/8000"), ("rtpmap", "9 g722/8000"),
    ("rtpmap", "97 iLBC/8000"), ("rtpmap", "101 telephone-event"), ("rtpmap", "x y"),
    ("rtpmap", None), ("rtpmap", "18 G729/8000/2"), ("rtpmap", "127 telephone-event/8000"),
    ("fmtp", "18 annexb=no"), ("fmtp", "101 0-16"), ("fmtp", "96 useinbandfec=1"),
    ("fmtp", "bad"), ("fmtp", None), ("ptime", "30"), ("ptime", "x"), ("ptime", "1e9"),
    ("sendrecv", None), ("sendonly", None), ("recvonly", None), ("inactive", None),
    ("rtcp", "5005"),
]
ADDRESSES = ["10.0.0.1", "0.0.0.0", "224.0.0.1", "host.example", "::", "2001:db8::1"]
LOCAL_POOL = ["G722", "PCMU", "PCMA", "G729", "opus", "iLBC", "telephone-event", "g722"]


@st.composite
def offers(draw: st.DrawFn) -> SessionDescription:
    """Offers from realistic and broken parts; about half have a usable audio stream."""

    def connection() -> Connection | None:
        return draw(st.none() | st.sampled_from(ADDRESSES).map(Connection.to))

    def medium(usable: bool) -> MediaDescription:
        formats = draw(st.lists(st.sampled_from(FORMAT_POOL), max_size=6))
        if usable:
            formats.insert(draw(st.integers(0, len(formats))),
                           draw(st.sampled_from(["0", "8", "9", "18"])))
        return MediaDescription(
            media="audio" if usable else draw(st.sampled_from(["audio", "video", "AUDIO"])),
            port=5004 if usable else draw(st.sampled_from([0, 5004, 40000])),
            protocol="RTP/AVP" if usable else draw(st.sampled_from(
                ["RTP/AVP", "RTP/AVPF", "RTP/SAVP", "UDP/TLS/RTP/SAVPF", "udp"])),
            formats=tuple(formats),
            connection=draw(st.sampled_from([None, None, Connection("10.0.0.2"),
                                             Connection("0.0.0.0")])) if usable else connection(),
            attributes=tuple(draw(st.lists(st.sampled_from(ATTRIBUTE_POOL), max_size=8))),
        )

    usable = draw(st.booleans())
    media = [medium(False) for _ in range(draw(st.integers(0, 2)))]
    if usable:
        media.insert(draw(st.integers(0, len(media))), medium(True))
    session_attributes = draw(st.lists(st.sampled_from(ATTRIBUTE_POOL[-5:]), max_size=1))
    return SessionDescription(
        origin=Origin("-", "1", 1, "10.0.0.1"),
        connection=Connection("10.0.0.1") if usable else connection(),
        attributes=tuple(session_attributes),
        media=tuple(media),
    )


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    offer=offers(),
    local=st.lists(st.sampled_from(LOCAL_POOL), max_size=5) | st.permutations(LOCAL_POOL),
    can_decode=st.none() | st.frozensets(st.sampled_from(["PCMU", "PCMA", "G722", "opus"])),
    wanted=st.sampled_from(DIRECTIONS),
)
def test_answer_never_fails_badly(
    offer: SessionDescription, local: list[str], can_decode: frozenset[str] | None,
    wanted: Direction,
) -> None:
    assert parse_sdp(offer.to_bytes()) == offer
    try:
        result = answer(offer, local, address="10.0.0.5", port=40000, session_id=1,
                        direction=wanted, can_decode=can_decode)
    except SdpError:
        return
    if isinstance(result, AnswerRefused):
        assert result.status == 488 and result.warning in (302, 304, 305) and result.reason
        return
    assert parse_sdp(result.to_bytes()) == result
    assert len(result.media) == len(offer.media)
    active = [i for i, m in enumerate(result.media) if m.port != 0]
    assert len(active) == 1
    index = active[0]
    assert offer.media[index].media.casefold() == "audio"
    assert result.media[index].protocol == offer.media[index].protocol
    assert set(result.media[index].formats) <= set(offer.media[index].formats)
    chosen = [f for f in result.stream(index).formats if f.name != "telephone-event"]
    priority = [n.casefold() for n in local]
    ranks = [priority.index(f.name.casefold()) for f in chosen]
    assert ranks == sorted(ranks)
    if can_decode is not None:
        assert {f.name for f in chosen} <= can_decode
    offered = offer.stream(index)
    expected = answer_direction(
        "sendonly" if offered.unspecified_address and offered.direction == "sendrecv"
        else "inactive" if offered.unspecified_address and offered.direction == "recvonly"
        else offered.direction, wanted)
    assert result.stream(index).direction == expected
    n = negotiated(offer, result)
    assert n.index == index
    assert (n.codec, n.payload_type) == (chosen[0].name, chosen[0].payload_type)
    if n.sends:
        assert not offered.unspecified_address
