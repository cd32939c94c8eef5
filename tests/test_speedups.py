"""The C quick paths of the parser (engine/sip/message/_speedups.c) against the Python parser.

The contract: for every input, the C function gives what the Python code gives,
the same value or the same ParseError. The C code takes only the common
shapes and hands the rest to the Python parser; these tests also check that
the common shapes do stay in C (else the extension would be correct but
useless), and run the whole message test file once more on the pure-Python
parser, as a machine without a C compiler runs it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.sip.message import grammar
from engine.sip.message.core import _LINE_KEYS, _OTHER_KEYS, _scan_py
from tests.samples import PHONE_INVITE, PHONE_REGISTER, TRUNK_INVITE
from tests.test_message import _ADDRS, _CSEQS, _HEADER_LINES, _URIS, _VIAS, _outcome

ROOT = Path(__file__).resolve().parents[1]
SPEEDUPS = grammar.SPEEDUPS
OPTED_OUT = bool(os.environ.get("SWITCHBOARD_NO_EXTENSIONS"))
# Skipped only when the operator opted out on purpose (SWITCHBOARD_NO_EXTENSIONS);
# CI never sets it, and without it a missing build fails the test below instead.
needs_c = pytest.mark.skipif(SPEEDUPS is None and OPTED_OUT,
                             reason="SWITCHBOARD_NO_EXTENSIONS is set")


def test_the_extension_is_built_and_used_unless_opted_out() -> None:
    # CI installs with a C compiler: a missing extension there is a failure.
    if OPTED_OUT:
        assert grammar.SPEEDUPS is None and grammar.parse_uri is grammar.parse_uri_py
    else:
        assert SPEEDUPS is not None, \
            "engine/sip/message/_speedups.c was not built (pip install -e .)"
        assert grammar.parse_uri is SPEEDUPS.parse_uri
        assert grammar.parse_via is SPEEDUPS.parse_via
        assert grammar.parse_address is SPEEDUPS.parse_address
        assert grammar.parse_cseq is SPEEDUPS.parse_cseq


def _same(fast: Callable[..., object], slow: Callable[..., object], *args: object) -> None:
    a, b = _outcome(fast, *args), _outcome(slow, *args)
    assert a == b
    if a[0] == "ok":  # type: ignore[index]
        va, vb = a[1], b[1]  # type: ignore[index]
        assert type(va) is type(vb)
        assert [type(x) for x in va] == [type(x) for x in vb]
        if hasattr(va, "uri"):
            assert type(va.uri) is type(vb.uri)
            assert [type(x) for x in va.uri] == [type(x) for x in vb.uri]


_ANY_TEXT = st.text(st.sampled_from(list("sip:@<>;=\"\\ \t,?-._aZ09[]/SIPUD\r\né\x00")),
                    max_size=60)


@needs_c
@given(uri=st.one_of(_URIS, _ANY_TEXT), addr=st.one_of(_ADDRS, _ANY_TEXT),
       via=st.one_of(_VIAS, _ANY_TEXT), cseq=st.one_of(_CSEQS, _ANY_TEXT))
@settings(max_examples=3000, deadline=None)
def test_c_values_match_python(uri: str, addr: str, via: str, cseq: str) -> None:
    assert SPEEDUPS is not None
    _same(SPEEDUPS.parse_uri, grammar.parse_uri_py, uri)
    _same(SPEEDUPS.parse_address, grammar.parse_address_py, addr)
    _same(SPEEDUPS.parse_address, grammar.parse_address_py, addr, "From")
    _same(SPEEDUPS.parse_via, grammar.parse_via_py, via)
    _same(SPEEDUPS.parse_cseq, grammar.parse_cseq_py, cseq)


@pytest.fixture
def general_calls() -> Iterator[list[str]]:
    """The C module wired to counting wrappers of the general parsers."""
    assert SPEEDUPS is not None
    calls: list[str] = []

    def counted(fn: Callable[..., object]) -> Callable[..., object]:
        def wrapper(*args: object) -> object:
            calls.append(str(args[0]))
            return fn(*args)
        return wrapper

    SPEEDUPS.setup(grammar.URI, grammar.Address, grammar.Via, grammar.CSeq,
                   counted(grammar._parse_uri_general),  # type: ignore[arg-type]
                   counted(grammar._parse_address_general),  # type: ignore[arg-type]
                   counted(grammar._parse_via_general),  # type: ignore[arg-type]
                   counted(grammar._parse_cseq_general))  # type: ignore[arg-type]
    try:
        yield calls
    finally:
        SPEEDUPS.setup(grammar.URI, grammar.Address, grammar.Via, grammar.CSeq,
                       grammar._parse_uri_general, grammar._parse_address_general,
                       grammar._parse_via_general, grammar._parse_cseq_general)


@needs_c
def test_common_shapes_stay_in_c(general_calls: list[str]) -> None:
    assert SPEEDUPS is not None
    for text in ("sip:+18195550100@pbx.example.test", "sips:pbx.example.test:5061;lr",
                 "sip:101@192.168.1.20:5062;transport=udp", "sip:a@b;user=phone;lr"):
        assert SPEEDUPS.parse_uri(text) == grammar.parse_uri_py(text)
    for text in ('"Carrier" <sip:+15145550199@127.0.0.2>;tag=1928301774',
                 "<sip:102@pbx.example.test>", "Alice Martin <sip:101@pbx.example.test>;tag=a",
                 "<sip:101@192.168.1.20:5062>;expires=3600",
                 "<sip:pbx.example.test;lr> ; tag=x;q=1"):
        assert SPEEDUPS.parse_address(text) == grammar.parse_address_py(text)
    for text in ("SIP/2.0/UDP 127.0.0.2:5060;branch=z9hG4bK776asdhds;rport",
                 "SIP/2.0/TCP [2001:db8::1]:5070;branch=z9hG4bKx;received=1.2.3.4;rport=9",
                 "SIP/2.0/WSS h"):
        assert SPEEDUPS.parse_via(text) == grammar.parse_via_py(text)
    for text in ("314159 INVITE", "1 REGISTER", "2 ACK", "999999999 UPDATE"):
        assert SPEEDUPS.parse_cseq(text) == grammar.parse_cseq_py(text)
        assert type(SPEEDUPS.parse_cseq(text)) is grammar.CSeq
    assert general_calls == []
    # ... and the others reach the general parsers, which tell what is wrong.
    with pytest.raises(grammar.ParseError, match="port"):
        SPEEDUPS.parse_uri("sip:a@b:65536")
    assert SPEEDUPS.parse_via("SIP/2.0/udp Host") == grammar.Via("UDP", "host")
    assert general_calls == ["sip:a@b:65536", "SIP/2.0/udp Host"]


@needs_c
@pytest.mark.parametrize("data", [TRUNK_INVITE, PHONE_INVITE, PHONE_REGISTER])
def test_c_scan_takes_the_samples(data: bytes) -> None:
    assert SPEEDUPS is not None
    scanned = SPEEDUPS.scan(data, _LINE_KEYS, _OTHER_KEYS)
    assert scanned is not None and scanned == _scan_py(data)
    text, start, first, body, twice = scanned
    assert text.startswith(start) and text.count("\r\n") == data[:len(text)].count(b"\r\n")
    assert start.split(" ")[0] in ("INVITE", "REGISTER") and not twice
    assert first["call-id"].strip() and first["cseq"].strip().split(" ")[1] in start
    assert body == (b"" if data is PHONE_REGISTER else data[data.index(b"v=0"):])


_MESSAGES = st.builds(
    lambda start, lines, sep, blank, body: sep.join([start, *lines]) + blank + body,
    st.sampled_from([b"OPTIONS sip:a@b SIP/2.0", b"SIP/2.0 200 OK", b"", b"X\rY", b"X\nY",
                     b"INVITE sip:\xc3\xa9@b SIP/2.0"]),
    st.lists(st.one_of(st.sampled_from(_HEADER_LINES), st.binary(max_size=12),
                       st.builds(lambda n, v: n + b":" + v,
                                 st.sampled_from([b"Via", b"v", b"I", b"Content-Length", b"l",
                                                  b"To", b"t", b"Max-Forwards", b"X-Learnt"]),
                                 st.binary(max_size=10))), max_size=10),
    st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n", b"\r"]),
    st.sampled_from([b"\r\n\r\n", b"\r\n\r\n", b"\n\n", b"\r\n", b""]),
    st.binary(max_size=8),
)


@needs_c
@given(data=st.one_of(_MESSAGES, st.binary(max_size=80)))
@settings(max_examples=3000, deadline=None)
def test_c_scan_matches_python(data: bytes) -> None:
    assert SPEEDUPS is not None
    scanned = SPEEDUPS.scan(data, _LINE_KEYS, _OTHER_KEYS)
    if scanned is not None:
        assert scanned == _scan_py(data)


@needs_c
def test_c_scan_defers_what_only_python_decides() -> None:
    assert SPEEDUPS is not None
    ok = b"OPTIONS sip:a@b SIP/2.0\r\nCall-ID: x\r\n\r\n"
    assert SPEEDUPS.scan(ok, _LINE_KEYS, _OTHER_KEYS) is not None
    for data in (ok.replace(b"\r\n\r\n", b"\r\n"),  # no blank line
                 ok.replace(b"Call-ID: x", b"Call-ID: x\n y"),  # bare LF
                 ok.replace(b"Call-ID", b"Never-Seen-Before-Name"),  # not learnt yet
                 ok.replace(b"Call-ID: x", b"Call-ID x"),  # no colon
                 ok.replace(b"Call-ID: x", b"i: x\ry")):  # compact form with a bare CR
        assert SPEEDUPS.scan(data, _LINE_KEYS, _OTHER_KEYS) is None


def test_the_message_tests_pass_on_the_pure_python_parser() -> None:
    env = dict(os.environ, SWITCHBOARD_NO_EXTENSIONS="1")
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "tests/test_message.py", "tests/test_speedups.py::"
                          "test_the_extension_is_built_and_used_unless_opted_out"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert " passed" in run.stdout
