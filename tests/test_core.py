"""The engine's request handling (engine.core) through Engine.datagram: SIP bytes in,
the answers out, a fake clock, no sockets.

What the transaction user decides before any call exists: relaying, required
extensions, Max-Forwards, in-dialog requests for nothing, OPTIONS, and digest
authentication as a registrar (401) and as a proxy (407), with the block that
follows repeated failures.
"""

from __future__ import annotations

import itertools
import tomllib

import pytest

from engine.core import Engine, Outcome
from engine.sip.auth import FailureLimiter, build_authorization
from engine.sip.message import Response, parse
from engine.sip.transaction import Addr
from provisioning.directory import parse_directory

DIRECTORY = """
[system]
domain = "pbx.test"

[[trunks]]
name = "carrier"
host = "127.0.0.9"
port = 5090
inbound_from = ["127.0.0.9/32"]

[[departments]]
name = "Sales"
caller_id = "+15145550100"

[[numbers]]
number = "+15145550100"
route_to = "extension:101"

[[users]]
extension = "101"
name = "Alice Martin"
password = "pw101"
department = "Sales"

[[users]]
extension = "102"
name = "Bruno Tremblay"
password = "pw102"
department = "Sales"
"""

PHONE: Addr = ("127.0.0.5", 5062)
TRUNK: Addr = ("127.0.0.9", 5090)
_seq = itertools.count(1)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0
        self.wall = 1_790_000_000.0

    def __call__(self) -> float:
        return self.wall


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def engine(clock: Clock) -> Engine:
    directory = parse_directory(tomllib.loads(DIRECTORY), "<test>")
    return Engine(directory, {"127.0.0.1", "pbx.test"}, 5060, wall_clock=clock,
                  digest_algorithms=("MD5",), limiter=FailureLimiter(max_failures=3))


def request(method: str, uri: str = "sip:pbx.test", *, user: str = "101",
            extra: str = "", source: Addr = PHONE, to_tag: str = "",
            call_id: str = "") -> bytes:
    n = next(_seq)
    # A REGISTER's To is the address of record being bound (RFC 3261 s10.2).
    to = f"<sip:{user}@pbx.test>" if method == "REGISTER" else f"<{uri}>"
    to += f";tag={to_tag}" if to_tag else ""
    return (f"{method} {uri} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {source[0]}:{source[1]};branch=z9hG4bKcore{n};rport\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:{user}@pbx.test>;tag=f{n}\r\nTo: {to}\r\n"
            f"Call-ID: {call_id or f'core-{n}'}\r\nCSeq: {n} {method}\r\n"
            f"Contact: <sip:{user}@{source[0]}:{source[1]}>\r\n{extra}"
            "Content-Length: 0\r\n\r\n").encode()


def answers(out: Outcome) -> list[Response]:
    found = [parse(s.data) for s in out.sends]
    return [r for r in found if isinstance(r, Response) and r.status >= 200]


def answer(engine: Engine, data: bytes, clock: Clock, source: Addr = PHONE) -> Response:
    out = engine.datagram(data, source, "udp", clock.now)
    final = answers(out)
    assert len(final) == 1, [r.status for r in final]
    return final[0]


def with_credentials(engine: Engine, clock: Clock, method: str, uri: str, user: str,
                     password: str, header: str, extra: str = "") -> Response:
    """The request, its challenge, then the request again answering it."""
    challenged = answer(engine, request(method, uri, user=user, extra=extra), clock)
    challenge_header = "www-authenticate" if challenged.status == 401 else \
        "proxy-authenticate"
    challenge = challenged.get_lines(challenge_header)[0]
    auth = build_authorization(challenge, method, uri, user, password, "cn1")
    return answer(engine, request(method, uri, user=user,
                                  extra=f"{extra}{header}: {auth}\r\n"), clock)


def test_options_answers_with_capabilities(engine: Engine, clock: Clock) -> None:
    resp = answer(engine, request("OPTIONS"), clock)
    assert resp.status == 200
    assert "INVITE" in (resp.get("allow") or "") and resp.get("accept") == "application/sdp"
    assert resp.get("supported") == "outbound, path, replaces"


def test_a_route_to_elsewhere_is_refused_no_open_relay(engine: Engine, clock: Clock) -> None:
    resp = answer(engine, request("OPTIONS", extra="Route: <sip:evil.example;lr>\r\n"), clock)
    assert resp.status == 403 and "no relay" in (resp.get("warning") or "")


def test_a_route_naming_us_is_ours_to_remove(engine: Engine, clock: Clock) -> None:
    resp = answer(engine, request("OPTIONS", extra="Route: <sip:127.0.0.1:5060;lr>\r\n"),
                  clock)
    assert resp.status == 200


def test_a_route_naming_our_tls_listener_is_ours_too(engine: Engine, clock: Clock) -> None:
    """A TLS phone with the engine's TLS listener as outbound proxy (SRTP phones)."""
    route = "Route: <sip:127.0.0.1:5061;transport=tls;lr>\r\n"
    assert answer(engine, request("OPTIONS", extra=route), clock).status == 403  # no TLS yet
    engine.tls_port = 5061
    assert answer(engine, request("OPTIONS", extra=route), clock).status == 200


def test_an_unknown_required_extension_gets_420(engine: Engine, clock: Clock) -> None:
    resp = answer(engine, request("OPTIONS", extra="Require: 100rel, foo\r\n"), clock)
    assert resp.status == 420 and resp.get("unsupported") == "100rel, foo"


def test_max_forwards_zero(engine: Engine, clock: Clock) -> None:
    data = request("INVITE", "sip:102@pbx.test").replace(b"Max-Forwards: 70",
                                                           b"Max-Forwards: 0")
    assert answer(engine, data, clock).status == 483
    # OPTIONS with Max-Forwards 0 is for us (RFC 3261 s11): answered.
    data = request("OPTIONS").replace(b"Max-Forwards: 70", b"Max-Forwards: 0")
    assert answer(engine, data, clock).status == 200


def test_in_dialog_request_for_no_dialog_gets_481(engine: Engine, clock: Clock) -> None:
    resp = answer(engine, request("BYE", "sip:102@pbx.test", to_tag="nosuch"), clock)
    assert resp.status == 481


def test_malformed_request_gets_400_naming_the_fault(engine: Engine, clock: Clock) -> None:
    data = request("OPTIONS").replace(b"CSeq: ", b"CSeq: x")
    resp = answer(engine, data, clock)
    assert resp.status == 400 and "cseq" in (resp.get("warning") or "").lower()


def test_register_is_challenged_as_a_registrar(engine: Engine, clock: Clock) -> None:
    resp = answer(engine, request("REGISTER", user="101"), clock)
    assert resp.status == 401 and resp.has("www-authenticate")
    assert not resp.has("proxy-authenticate")


def test_register_with_credentials_binds(engine: Engine, clock: Clock) -> None:
    out_before = len(engine.registrar.all())
    resp = with_credentials(engine, clock, "REGISTER", "sip:pbx.test", "101", "pw101",
                            "Authorization", extra="Expires: 600\r\n")
    assert resp.status == 200
    bindings = engine.registrar.all()
    assert len(bindings) == out_before + 1 and bindings[-1].aor == "101"
    assert bindings[-1].source == f"udp:{PHONE[0]}:{PHONE[1]}"


def test_register_proxy_credentials_are_not_registrar_credentials(engine: Engine,
                                                                   clock: Clock) -> None:
    # A REGISTER answered with Proxy-Authorization is challenged again (s22.2).
    resp = with_credentials(engine, clock, "REGISTER", "sip:pbx.test", "101", "pw101",
                            "Proxy-Authorization")
    assert resp.status == 401


def test_register_for_another_users_address_is_403(engine: Engine, clock: Clock) -> None:
    data = request("REGISTER", user="101").replace(b"To: <sip:101@pbx.test>",
                                                   b"To: <sip:102@pbx.test>")
    challenged = answer(engine, data, clock)
    auth = build_authorization(challenged.get_lines("www-authenticate")[0], "REGISTER",
                               "sip:pbx.test", "101", "pw101", "cn2")
    data = request("REGISTER", user="101", extra=f"Authorization: {auth}\r\n").replace(
        b"To: <sip:101@pbx.test>", b"To: <sip:102@pbx.test>")
    resp = answer(engine, data, clock)
    assert resp.status == 403 and "may not register" in (resp.get("warning") or "")


def test_invite_from_a_phone_is_challenged_as_a_proxy(engine: Engine, clock: Clock) -> None:
    resp = answer(engine, request("INVITE", "sip:102@pbx.test"), clock)
    assert resp.status == 407 and resp.has("proxy-authenticate")
    # Registrar credentials on an INVITE are no answer to a proxy challenge.
    resp = with_credentials(engine, clock, "INVITE", "sip:102@pbx.test", "101", "pw101",
                            "Authorization")
    assert resp.status == 407


def test_invite_from_the_trunk_is_not_challenged(engine: Engine, clock: Clock) -> None:
    # The trunk is authenticated by its address (inbound_from): the call is routed at
    # once. 101 has no device, so its busy rule sends the call to voicemail, which
    # needs an SDP offer this INVITE lacks: 480 naming why, never a challenge.
    out = engine.datagram(request("INVITE", "sip:+15145550100@pbx.test", user="+15145550199",
                                  source=TRUNK), TRUNK, "udp", clock.now)
    sent = [parse(s.data) for s in out.sends]
    assert [r.status for r in sent if isinstance(r, Response)] == [100, 480]
    assert "needs an SDP offer" in (sent[-1].get("warning") or "")


def test_wrong_passwords_block_the_source_then_403(engine: Engine, clock: Clock) -> None:
    for _ in range(3):
        resp = with_credentials(engine, clock, "REGISTER", "sip:pbx.test", "101", "wrong",
                                "Authorization")
        assert resp.status == 401
    assert engine.metrics.registry.get_sample_value(
        "switchboard_auth_failures_total", {"method": "REGISTER"}) == 3
    blocked = answer(engine, request("REGISTER", user="101"), clock)
    assert blocked.status == 403 and "retry later" in (blocked.get("warning") or "")
    # The block covers calls from that source too; another source is unaffected.
    assert answer(engine, request("INVITE", "sip:102@pbx.test"), clock).status == 403
    other: Addr = ("127.0.0.6", 5062)
    assert answer(engine, request("REGISTER", source=other), clock, other).status == 401
    # It lasts block_seconds (300 by default), then the source may try again.
    clock.wall += 301
    assert answer(engine, request("REGISTER", user="101"), clock).status == 401


def test_unknown_user_and_wrong_password_look_alike(engine: Engine, clock: Clock) -> None:
    wrong = with_credentials(engine, clock, "REGISTER", "sip:pbx.test", "101", "nope",
                             "Authorization")
    unknown = with_credentials(engine, clock, "REGISTER", "sip:pbx.test", "999", "nope",
                               "Authorization")
    assert wrong.status == unknown.status == 401
    assert wrong.reason == unknown.reason
