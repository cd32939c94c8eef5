"""The SIP message layer: parsing, framing, serialization, RFC 4475 classification."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.sip.message import (
    URI,
    Address,
    CSeq,
    ParseError,
    Request,
    Response,
    StreamFramer,
    check_request,
    grammar,
    make_response,
    parse,
    parse_address,
    parse_uri,
    parse_via,
)
from tests.samples import PHONE_INVITE, PHONE_REGISTER, TRUNK_INVITE, trunk_invite

TORTURE = Path(__file__).resolve().parents[1].parent / "shared" / "conformance" / "rfc4475"

INVITE = trunk_invite(b"X-Custom:   odd   spacing kept  \r\n", body=b"v=0\r")


def test_invite_fields() -> None:
    m = parse(INVITE)
    assert isinstance(m, Request)
    assert m.method == "INVITE"
    assert m.uri.user == "+18195550100" and m.uri.host == "pbx.example.test"
    assert m.top_via.branch == "z9hG4bK776asdhds"
    assert m.top_via.rport == "" and m.top_via.port == 5060
    assert m.from_.tag == "1928301774" and m.from_.display == '"Carrier"'
    assert m.to.tag is None
    assert m.cseq.number == 314159 and m.cseq.method == "INVITE"
    assert m.max_forwards == 70
    assert m.body == b"v=0\r"
    check_request(m)


def test_unmodified_message_serializes_byte_exact() -> None:
    assert parse(INVITE).to_bytes() == INVITE


def test_compact_forms_and_multi_values() -> None:
    raw = (b"OPTIONS sip:a@b SIP/2.0\r\nv: SIP/2.0/UDP h1;branch=z9hG4bK1, SIP/2.0/TCP h2:5070"
           b";branch=z9hG4bK2\r\nVia: SIP/2.0/UDP h3;branch=z9hG4bK3\r\nf: <sip:x@y>;tag=1\r\n"
           b"t: sip:a@b\r\ni: cid\r\nCSeq: 1 OPTIONS\r\nl: 0\r\n\r\n")
    m = parse(raw)
    assert [v.host for v in m.vias] == ["h1", "h2", "h3"]
    assert m.vias[1].transport == "TCP" and m.vias[1].port == 5070
    assert m.call_id == "cid"
    stripped = m.remove_first_value("via")
    assert [v.host for v in stripped.vias] == ["h2", "h3"]


def test_folded_headers_unfold_and_keep_raw() -> None:
    raw = (TORTURE / "wsinv.dat").read_bytes()
    m = parse(raw)
    assert isinstance(m, Request)
    check_request(m)
    assert m.get("newfangledheader") == "newfangled value continued newfangled value"
    assert [v.host for v in m.vias] == ["192.0.2.2", "spindle.example.com", "192.168.255.111"]
    assert m.cseq.number == 9
    assert parse(m.to_bytes()).get_all("via") == m.get_all("via")


def test_uri_forms() -> None:
    u = parse_uri("sips:alice:secret@[2001:db8::1]:5061;transport=tcp;lr?subject=hi")
    assert (u.scheme, u.user, u.password, u.host, u.port) == (
        "sips", "alice", "secret", "[2001:db8::1]", 5061)
    assert u.param("transport") == "tcp" and u.param("lr") == "" and u.headers == "subject=hi"
    t = parse_uri("tel:+1-201-555-0123;phone-context=example.com")
    assert t.scheme == "tel" and t.user == "+1-201-555-0123"
    assert str(parse_uri("sip:bob@example.com;lr")) == "sip:bob@example.com;lr"
    for bad in ("sip:", "sip:@host", "sip:a@host:99999", "nocolon", "sip:a b@c"):
        with pytest.raises(ParseError):
            parse_uri(bad)


def test_address_forms() -> None:
    a = parse_address('"A \\"q\\"" <sip:a@b>;tag=x;foo="semi;colon"')
    assert a.tag == "x" and a.param("foo") == '"semi;colon"'
    assert parse_address("sip:a@b;tag=9").tag == "9"
    assert parse_address("Tok Ens <sip:a@b>").display == "Tok Ens"
    for bad in ("Bell, Alexander <sip:a@b>", "< sip:a@b >", '"open <sip:a@b>',
                "sip:a@b?Route=x"):
        with pytest.raises(ParseError):
            parse_address(bad)


def test_via_parse_errors() -> None:
    assert parse_via("SIP / 2.0 / UDP host.example ; branch = z9hG4bKx").branch == "z9hG4bKx"
    for bad in ("SIP/3.0/UDP h", "SIP/2.0/UDP", "SIP/2.0/UDP h;;", "SIP/2.0/UDP h:70000"):
        with pytest.raises(ParseError):
            parse_via(bad)


def test_make_response_copies_and_tags() -> None:
    req = parse(INVITE)
    assert isinstance(req, Request)
    resp = make_response(req, 486, to_tag="abc")
    again = parse(resp.to_bytes())
    assert isinstance(again, Response)
    assert again.status == 486 and again.reason == "Busy Here"
    assert again.to.tag == "abc" and again.call_id == req.call_id
    assert again.get_all("via") == req.get_all("via")
    assert make_response(req, 100).to.tag is None


def test_stream_framer_splits_and_pings() -> None:
    framer = StreamFramer()
    out = framer.feed(INVITE[:30])
    assert out == []
    out = framer.feed(INVITE[30:] + b"\r\n\r\n" + INVITE)
    assert out == [INVITE, b"\r\n\r\n", INVITE]
    assert framer.feed(b"\r\n") == [] and framer.buffer == bytearray(b"\r\n")
    with pytest.raises(ParseError):
        StreamFramer(max_size=100).feed(b"INVITE x SIP/2.0\r\nContent-Length: 5000\r\n\r\n")


# The classification RFC 4475 asks for (see ../shared/conformance/README.md).
VALID = ["wsinv", "intmeth", "esc01", "escnull", "esc02", "lwsdisp", "longreq", "dblreq",
         "semiuri", "transports", "mpart01", "badbranch", "unksm2", "bext01", "invut",
         "regaut01", "zeromf", "cparam01", "cparam02", "regescrt", "sdp01", "inv2543",
         "baddate"]
INVALID_400 = ["badinv01", "clerr", "ncl", "scalar02", "quotbal", "ltgtruri", "lwsruri",
               "lwsstart", "trws", "escruri", "regbadct", "badaspec", "baddn", "mismatch01",
               "mismatch02", "insuf", "multi01", "mcl01"]
RESPONSES_OK = ["unreason", "noreason", "bcast"]
RESPONSES_BAD = ["scalarlg", "bigcode"]


@pytest.mark.parametrize("name", VALID)
def test_rfc4475_valid(name: str) -> None:
    m = parse((TORTURE / f"{name}.dat").read_bytes())
    assert isinstance(m, Request)
    check_request(m)


@pytest.mark.parametrize("name", INVALID_400)
def test_rfc4475_invalid_400(name: str) -> None:
    with pytest.raises(ParseError) as info:
        m = parse((TORTURE / f"{name}.dat").read_bytes())
        assert isinstance(m, Request)
        check_request(m)
    assert info.value.status == 400
    assert isinstance(info.value.partial, Request)


@pytest.mark.parametrize(("name", "status"), [("badvers", 505), ("unkscm", 416),
                                              ("novelsc", 416)])
def test_rfc4475_special_status(name: str, status: int) -> None:
    with pytest.raises(ParseError) as info:
        m = parse((TORTURE / f"{name}.dat").read_bytes())
        assert isinstance(m, Request)
        check_request(m)
    assert info.value.status == status


def test_rfc4475_responses() -> None:
    for name in RESPONSES_OK:
        assert isinstance(parse((TORTURE / f"{name}.dat").read_bytes()), Response)
    for name in RESPONSES_BAD:
        with pytest.raises(ParseError):
            m = parse((TORTURE / f"{name}.dat").read_bytes())
            m.cseq  # noqa: B018 - scalarlg's CSeq is overlarge


def test_every_torture_file_is_classified() -> None:
    names = {p.stem for p in TORTURE.glob("*.dat")}
    covered = set(VALID) | set(INVALID_400) | set(RESPONSES_OK) | set(RESPONSES_BAD) | {
        "badvers", "unkscm", "novelsc", "unksm2", "test"}
    assert names <= covered, sorted(names - covered)
    assert len(names) == 50


# -- properties ---------------------------------------------------------------------

_TOKEN_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~"
_token = st.text(alphabet=_TOKEN_CHARS, min_size=1, max_size=12)
_value = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=0x2FF,
                                        blacklist_characters="\r\n"),
                 max_size=40).map(lambda s: s.strip(" \t"))


@given(headers=st.lists(st.tuples(_token.filter(lambda t: t.lower() not in (
    "content-length", "l")), _value), max_size=12),
       body=st.binary(max_size=200))
@settings(max_examples=300, deadline=None)
def test_serialize_parse_roundtrip(headers: list[tuple[str, str]], body: bytes) -> None:
    req = Request.build("MESSAGE", "sip:a@example.test", headers, body)
    again = parse(req.to_bytes())
    assert isinstance(again, Request)
    assert [(h[0], h[2]) for h in again.headers] == [(h[0], h[2]) for h in req.headers
                                                     if h[0] != "content-length"] + [
        ("content-length", str(len(body)))]
    assert again.body == body
    # and a second trip changes nothing at all
    assert parse(again.to_bytes()).to_bytes() == again.to_bytes()


@given(st.binary(max_size=600))
@settings(max_examples=1500, deadline=None)
def test_random_bytes_only_raise_parse_error(data: bytes) -> None:
    try:
        m = parse(data)
        if isinstance(m, Request):
            check_request(m)
    except ParseError:
        pass


@given(st.lists(st.sampled_from([
    b"INVITE ", b"sip:", b"a@b", b" SIP/2.0", b"\r\n", b"Via: ", b"SIP/2.0/UDP h;branch=z9hG4bK1",
    b"CSeq: ", b"1 INVITE", b"From: ", b"<sip:x@y>;tag=1", b"To: ", b"Call-ID: c", b";", b",",
    b'"', b"<", b">", b" ", b"\t", b"Content-Length: ", b"10", b"l: 0", b":", b"\r\n\r\n"]),
    max_size=40).map(b"".join))
@settings(max_examples=1500, deadline=None)
def test_sip_shaped_noise_only_raises_parse_error(data: bytes) -> None:
    try:
        m = parse(data)
        if isinstance(m, Request):
            check_request(m)
            make_response(m, 400).to_bytes()
    except ParseError:
        pass


def test_make_response_adds_tag_when_tag_text_is_only_inside_the_uri() -> None:
    raw = (b"OPTIONS sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n"
           b"From: <sip:a@example.com>;tag=a\r\nTo: <sip:bob@example.com;tag=x>\r\n"
           b"Call-ID: c\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")
    req = parse(raw)
    assert isinstance(req, Request) and req.to.tag is None
    assert make_response(req, 200).to.tag is not None


# -- the fast paths agree with the general ones ------------------------------------

@pytest.mark.parametrize("data", [TRUNK_INVITE, PHONE_INVITE, PHONE_REGISTER])
def test_samples_valid_and_byte_exact(data: bytes) -> None:
    m = parse(data)
    assert isinstance(m, Request)
    check_request(m)
    assert m.to_bytes() == data
    assert m.get("content-length") == str(len(m.body))


def test_header_line_without_colon_is_rejected() -> None:
    # "Toa" once passed as a To header (its name taken as line[:-1])
    raw = INVITE.replace(b"X-Custom:   odd   spacing kept  \r\n", b"Toa\r\n")
    with pytest.raises(ParseError) as info:
        parse(raw)
    assert info.value.status == 400 and isinstance(info.value.partial, Request)
    assert info.value.partial.get("x-custom") is None


def _outcome(fn: object, *args: object) -> object:
    try:
        return ("ok", fn(*args))  # type: ignore[operator]
    except ParseError as exc:
        return ("error", exc.reason, exc.status)


def _spliced(parts: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Texts of the usual shape, sometimes with one odd piece spliced in."""
    junk = st.sampled_from(["", "", "", " ", "\t", ";", "=", ":", "@", "<", ">", '"', ",", "?",
                            "\\", "A", "-", ".", "\x00", "\r", "\n", "\xa0", "é", "9"])
    return st.tuples(parts, st.integers(0, 80), junk).map(
        lambda t: t[0][: t[1]] + t[2] + t[0][t[1]:])


def _joined(*choices: list[str]) -> st.SearchStrategy[str]:
    return st.tuples(*(st.sampled_from(c) for c in choices)).map("".join)


_PARAMS = ["", ";lr", ";transport=udp", ";Transport=TCP", ";user=phone;lr", ";x=", ";a=b=c",
           ";maddr=1.2.3.4;ttl=1;lr", ";tag=x"]
_URIS = _spliced(_joined(["sip:", "sip:", "sips:", "SIP:", "tel:"],
                         ["", "alice@", "+1819555@", "a;b=c@", "a:pw@", "%41@", "a@b@"],
                         ["pbx.example.test", "127.0.0.2", "Pbx.example", "[2001:db8::1]", "a-",
                          "x.y."],
                         ["", "", ":5060", ":65535", ":65536", ":99999"], _PARAMS,
                         ["", "", "?subject=x"]))
_ADDRS = st.tuples(st.sampled_from(["", '"Carrier" ', '"Carrier"', '"a\\"b" ', "Tok Ens ",
                                    "Tok\t", "Bell, A "]),
                   _URIS,
                   st.sampled_from(["", ";tag=1928301774", " ; tag=x", ";Tag=X", ";tag=a;q=0.5",
                                    ";tag=a;q=1;x", ";x=\"q\"", ";tag="]),
                   st.booleans()).map(lambda t: f"{t[0]}<{t[1]}>{t[2]}" if t[3] else t[1] + t[2])
_VIAS = _spliced(_joined(["SIP/2.0/UDP ", "SIP/2.0/tcp ", "sip/2.0/UDP ", "SIP / 2.0 / UDP "],
                         ["127.0.0.2", "h", "Host", "[2001:db8::1]", "[2001:DB8::1]"],
                         ["", ":5060", ":65536"],
                         ["", ";branch=z9hG4bK776", ";rport;branch=z9hG4bK1", ";Branch=X"],
                         ["", ";rport", ";received=1.2.3.4;ttl=1", ";x=\"q\""]))
_CSEQS = _spliced(_joined(["1", "314159", "2147483648", "007", "999999999", "1234567890", "x"],
                          [" ", "  ", "\t"], ["INVITE", "Invite", "FOO", "ACK", "REGISTER"]))


@given(uri=_URIS, addr=_ADDRS, via=_VIAS, cseq=_CSEQS)
@settings(max_examples=1500, deadline=None)
def test_quick_value_paths_match_general(uri: str, addr: str, via: str, cseq: str) -> None:
    assert _outcome(parse_uri, uri) == _outcome(grammar._parse_uri_general, uri)
    assert _outcome(parse_address, addr) == _outcome(grammar._parse_address_general, addr,
                                                      "address")
    assert _outcome(parse_via, via) == _outcome(grammar._parse_via_general, via)
    assert _outcome(grammar.parse_cseq, cseq) == _outcome(grammar._parse_cseq_general, cseq)


def test_quick_value_paths_build_plain_named_tuples() -> None:
    a = parse_address('"Carrier" <sip:+1@127.0.0.2:5060;transport=udp;lr>;tag=9;x')
    assert type(a) is Address and type(a.uri) is URI
    assert a == Address(URI("sip", "+1", None, "127.0.0.2", 5060,
                            (("transport", "udp"), ("lr", None))), '"Carrier"',
                        (("tag", "9"), ("x", None)), True)
    assert type(grammar.parse_cseq("2 INVITE")) is CSeq


def _view(m: Request | Response) -> object:
    out: list[object] = [type(m).__name__, m.start_line(), m.body, m.headers, list(m.names()),
                         m.to_bytes()]
    for name in ("via", "v", "From", "to", "call-id", "cseq", "content-length", "x-custom",
                 "subject"):
        out.append((m.get(name), m.get_lines(name), m.get_all(name), m.has(name),
                    m.count(name)))
    for prop in ("call_id", "cseq", "vias", "top_via", "from_", "to", "contacts", "routes",
                 "max_forwards", "expires", "uri", "status"):
        if hasattr(type(m), prop):
            out.append(_outcome(getattr, m, prop))
    return out


def _parsed_slow(data: bytes) -> object:
    from engine.sip.message.core import _parse_slow

    head, _, body = data.partition(b"\r\n\r\n")
    return _parse_slow(head.decode("utf-8", "surrogateescape"), body, False)


_HEADER_LINES = [
    b"Via: SIP/2.0/UDP h;branch=z9hG4bK1", b"v: SIP/2.0/TCP h2:5070;branch=z9hG4bK2",
    b"VIA: SIP/2.0/UDP h3", b"From: <sip:a@b>;tag=1", b"f: sip:x@y;tag=2", b"To: <sip:c@d>",
    b"Call-ID: cid", b"i: cid2", b"CSeq: 1 OPTIONS", b"CSeq: 2 FOO", b"Max-Forwards: 70",
    b"Max-Forwards: 300", b"Contact: <sip:a@h>;expires=5", b"Contact: *", b"Expires: 60",
    b"Route: <sip:p;lr>", b"X-Custom:   odd  ", b"x-custom: 2", b"X-Custom : 3", b"Subject:",
    b"Subject: a\nb", b"Subject: a\rb", b"X-Foo: a\rb", b"Bad Name: x", b": x", b"NoColon",
    b"Toa", b" folded", b"\tfolded", b"Via: a\n b", b"l: 0", b"Content-Length: 3",
    b"Content-Length: x", b"\xc3\xa9: y", b"Via\x00: z", b"", b"Allow: INVITE, ACK",
]


@given(start=st.sampled_from([b"OPTIONS sip:a@b SIP/2.0", b"INVITE sip:x@y SIP/2.0",
                              b"FOO sip:a@b SIP/3.0", b"SIP/2.0 200 OK", b"bad line"]),
       lines=st.lists(st.sampled_from(_HEADER_LINES), max_size=12),
       body=st.sampled_from([b"", b"abc", b"abcdef"]))
@settings(max_examples=1500, deadline=None)
def test_fast_scan_matches_the_line_by_line_path(start: bytes, lines: list[bytes],
                                                 body: bytes) -> None:
    data = b"\r\n".join([start, *lines]) + b"\r\n\r\n" + body
    assert _outcome(lambda: _view(parse(data))) == _outcome(  # type: ignore[arg-type]
        lambda: _view(_parsed_slow(data)))  # type: ignore[arg-type]


def test_random_hex_is_unique_and_refills_its_pool() -> None:
    from engine.sip.message import random_hex

    values = [random_hex(8) for _ in range(2000)]  # 16 KB: the 4 KiB pool refills 3 times
    assert all(len(v) == 16 and int(v, 16) >= 0 for v in values)
    assert len(set(values)) == len(values)
    assert len(random_hex(5000)) == 10000  # larger than the pool


def test_a_response_keeps_the_parsed_to_from_and_cseq_of_its_request() -> None:
    """make_response hands over what it copied already parsed; it reads as if parsed."""
    from engine.sip.message import make_response

    for to_value in ("<sip:bob@example.test>", "sip:bob@example.test",
                     '"Bob" <sip:bob@b.test>;x=1'):
        req = parse(("INVITE sip:bob@example.test SIP/2.0\r\n"
                     "Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKmr1\r\n"
                     "From: <sip:alice@example.test>;tag=a1\r\nTo: " + to_value + "\r\n"
                     "Call-ID: mr1\r\nCSeq: 7 INVITE\r\nMax-Forwards: 70\r\n"
                     "Content-Length: 0\r\n\r\n").encode())
        assert isinstance(req, Request)
        for status in (100, 180, 486):
            resp = make_response(req, status, to_tag="t9")
            again = parse(resp.to_bytes())
            assert resp.to == again.to and resp.to.tag == again.to.tag
            assert resp.from_ == again.from_ and resp.cseq == again.cseq


def test_pooled_random_values_are_in_range_and_not_repeated() -> None:
    from engine.sip.message import random_below, random_bytes

    values = [random_below(10**9) for _ in range(2000)]  # crosses a pool refill
    assert all(0 <= v < 10**9 for v in values) and len(set(values)) == len(values)
    chunks = [random_bytes(16) for _ in range(600)]
    assert len(set(chunks)) == len(chunks) and all(len(c) == 16 for c in chunks)


def test_a_dialog_creating_response_copies_the_record_route() -> None:
    # RFC 3261 s12.1.1: the UAS copies Record-Route into 101-299 responses to INVITE.
    raw = (b"INVITE sip:bob@h SIP/2.0\r\nVia: SIP/2.0/UDP 1.2.3.4;branch=z9hG4bK1\r\n"
           b"From: <sip:a@h>;tag=1\r\nTo: <sip:bob@h>\r\nCall-ID: rr1\r\nCSeq: 1 INVITE\r\n"
           b"Record-Route: <sip:edge2;lr>\r\nRecord-Route: <sip:edge1;lr>\r\n"
           b"Content-Length: 0\r\n\r\n")
    invite = parse(raw)
    assert isinstance(invite, Request)
    for status in (180, 200):
        assert make_response(invite, status).get_all("record-route") == [
            "<sip:edge2;lr>", "<sip:edge1;lr>"]
    for status in (100, 486):
        assert not make_response(invite, status).has("record-route")
    bye = parse(raw.replace(b"INVITE sip", b"BYE sip").replace(b"1 INVITE", b"2 BYE"))
    assert isinstance(bye, Request) and not make_response(bye, 200).has("record-route")
