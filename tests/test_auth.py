"""Tests for engine.auth: digest authentication and the failure limiter."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.sip.auth import (
    MAX_HEADER_LENGTH,
    AuthResult,
    DigestAuthenticator,
    FailureLimiter,
    build_authorization,
    parse_auth_params,
)

# RFC 7616 section 3.9.1 example.
RFC_USER = "Mufasa"
RFC_PASSWORD = "Circle of Life"
RFC_REALM = "http-auth@example.org"
RFC_URI = "/dir/index.html"
RFC_NONCE = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
RFC_OPAQUE = "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"
RFC_CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"
RFC_RESPONSES = {
    "MD5": "8ca523f5e9506fed4657c9700eebdbec",
    "SHA-256": "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
}

REALM = "switchboard.example"
KEY = bytes(range(32))
URI = "sip:switchboard.example"
USERS = {"alice": "wonderland-42", "bob": "builder", "zoë": "ünïcode pässword"}


def lookup(username: str) -> str | None:
    return USERS.get(username)


def make_auth(**kwargs: object) -> DigestAuthenticator:
    return DigestAuthenticator(REALM, KEY, **kwargs)  # type: ignore[arg-type]


def challenge_for(auth: DigestAuthenticator, algorithm: str, now: float) -> str:
    for value in auth.challenge(now):
        if f"algorithm={algorithm}," in value:
            return value
    raise AssertionError(f"no {algorithm} challenge")


def answer(
    auth: DigestAuthenticator,
    now: float,
    *,
    algorithm: str = "SHA-256",
    username: str = "alice",
    password: str = "wonderland-42",
    nc: int = 1,
    method: str = "REGISTER",
) -> str:
    return build_authorization(
        challenge_for(auth, algorithm, now), method, URI, username, password, "0a4f113b", nc
    )


def params_of(header: str) -> dict[str, str]:
    return parse_auth_params(header)[1]


def replace_param(header: str, name: str, value: str) -> str:
    """Rebuild a Digest header with one parameter replaced (quoted)."""
    params = params_of(header)
    params[name] = value
    return "Digest " + ", ".join(f'{k}="{v}"' for k, v in params.items())


def drop_param(header: str, name: str) -> str:
    params = params_of(header)
    del params[name]
    return "Digest " + ", ".join(f'{k}="{v}"' for k, v in params.items())


def hex_digest(algorithm: str, text: str) -> str:
    name = {"SHA-256": "sha256", "MD5": "md5"}[algorithm]
    return hashlib.new(name, text.encode()).hexdigest()


# ---------------------------------------------------------------------------
# Exact computations against RFC 7616 section 3.9.1
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["SHA-256", "MD5"])
def test_rfc7616_example_response(algorithm: str) -> None:
    challenge = (
        f'Digest realm="{RFC_REALM}", qop="auth, auth-int", algorithm={algorithm}, '
        f'nonce="{RFC_NONCE}", opaque="{RFC_OPAQUE}"'
    )
    header = build_authorization(
        challenge, "GET", RFC_URI, RFC_USER, RFC_PASSWORD, RFC_CNONCE, nc=1
    )
    scheme, params = parse_auth_params(header)
    assert scheme == "Digest"
    assert params == {
        "username": RFC_USER,
        "realm": RFC_REALM,
        "nonce": RFC_NONCE,
        "uri": RFC_URI,
        "response": RFC_RESPONSES[algorithm],
        "algorithm": algorithm,
        "cnonce": RFC_CNONCE,
        "qop": "auth",
        "nc": "00000001",
        "opaque": RFC_OPAQUE,
    }


def test_rfc7616_example_authorization_header_parses() -> None:
    # The SHA-256 Authorization header of RFC 7616 section 3.9.1, unfolded.
    header = (
        'Digest username="Mufasa", realm="http-auth@example.org", '
        'uri="/dir/index.html", algorithm=SHA-256, '
        'nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", nc=00000001, '
        'cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ", qop=auth, '
        'response="753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1", '
        'opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"'
    )
    scheme, params = parse_auth_params(header)
    assert scheme == "Digest"
    assert params["algorithm"] == "SHA-256"
    assert params["nc"] == "00000001"
    assert params["response"] == RFC_RESPONSES["SHA-256"]
    assert params["nonce"] == RFC_NONCE
    assert len(params) == 10


def test_client_without_qop_uses_rfc2069_response() -> None:
    challenge = f'Digest realm="{RFC_REALM}", nonce="{RFC_NONCE}"'
    header = build_authorization(challenge, "GET", RFC_URI, RFC_USER, RFC_PASSWORD, "ignored")
    params = params_of(header)
    ha1 = hex_digest("MD5", f"{RFC_USER}:{RFC_REALM}:{RFC_PASSWORD}")
    ha2 = hex_digest("MD5", f"GET:{RFC_URI}")
    assert params["response"] == hex_digest("MD5", f"{ha1}:{RFC_NONCE}:{ha2}")
    assert "qop" not in params and "nc" not in params and "cnonce" not in params
    assert "algorithm" not in params  # not echoed when the challenge had none


@pytest.mark.parametrize(
    ("challenge", "message"),
    [
        ('Basic realm="x"', "not a Digest challenge"),
        ('Digest nonce="abc"', "lacks realm or nonce"),
        ('Digest realm="r", nonce="n", algorithm=MD5-sess', "unsupported digest algorithm"),
        ('Digest realm="r", nonce="n", qop="auth-int"', "does not offer qop=auth"),
        ('Digest realm="r", nonce="n", qop=auth', None),
    ],
)
def test_build_authorization_rejects_unusable_challenges(
    challenge: str, message: str | None
) -> None:
    if message is None:
        header = build_authorization(challenge, "REGISTER", URI, "u", "p", "c")
        assert params_of(header)["qop"] == "auth"
        return
    with pytest.raises(ValueError, match=message):
        build_authorization(challenge, "REGISTER", URI, "u", "secret-pw", "c")


@pytest.mark.parametrize("nc", [0, -1, 0x1_0000_0000])
def test_build_authorization_rejects_bad_nc(nc: int) -> None:
    with pytest.raises(ValueError, match="nc must be"):
        build_authorization('Digest realm="r", nonce="n", qop="auth"', "R", URI, "u", "p", "c", nc)


def test_build_authorization_errors_do_not_leak_password() -> None:
    password = "hunter2-very-secret"
    for challenge in ('Digest realm="r", nonce="n", algorithm=SHA-512', 'Digest realm="r'):
        with pytest.raises(ValueError) as info:
            build_authorization(challenge, "REGISTER", URI, "u", password, "c")
        assert password not in str(info.value)


# ---------------------------------------------------------------------------
# Challenges
# ---------------------------------------------------------------------------


def test_challenge_format_and_order() -> None:
    auth = make_auth()
    values = auth.challenge(10.0)
    assert len(values) == 2
    pattern = (
        r'Digest realm="switchboard\.example", nonce="([A-Za-z0-9_-]{48})", '
        r'opaque="([A-Za-z0-9_-]+)", algorithm=(SHA-256|MD5), qop="auth"'
    )
    matches = [re.fullmatch(pattern, v) for v in values]
    assert all(matches), values
    assert [m.group(3) for m in matches if m] == ["SHA-256", "MD5"]
    nonces = {m.group(1) for m in matches if m}
    assert len(nonces) == 2  # a fresh nonce per challenge value
    assert len({m.group(2) for m in matches if m}) == 1  # one opaque per realm


def test_challenge_stale_flag_and_fresh_nonces() -> None:
    auth = make_auth()
    stale = auth.challenge(5.0, stale=True)
    assert all(v.endswith(', qop="auth", stale=true') for v in stale)
    assert not any("stale" in v for v in auth.challenge(5.0))
    first = params_of(auth.challenge(5.0)[0])["nonce"]
    second = params_of(auth.challenge(5.0)[0])["nonce"]
    assert first != second


def test_algorithm_configuration_is_ordered_by_preference() -> None:
    auth = make_auth(algorithms=("md5", "sha-256"))
    assert auth.algorithms == ("SHA-256", "MD5")
    only_sha = make_auth(algorithms=("SHA-256",))
    values = only_sha.challenge(0.0)
    assert len(values) == 1 and "algorithm=SHA-256" in values[0]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"algorithms": ("SHA-512-256",)}, "unsupported digest algorithm"),
        ({"algorithms": ()}, "at least one algorithm"),
        ({"nonce_ttl": 0.0}, "nonce_ttl"),
        ({"max_tracked_nonces": 0}, "max_tracked_nonces"),
    ],
)
def test_authenticator_rejects_bad_configuration(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_auth(**kwargs)


def test_authenticator_rejects_short_key_and_bad_realm() -> None:
    with pytest.raises(ValueError, match="key must be at least"):
        DigestAuthenticator(REALM, b"short")
    with pytest.raises(ValueError, match="realm"):
        DigestAuthenticator("bad\r\nrealm", KEY)


def test_realm_with_quote_is_escaped_in_challenge() -> None:
    auth = DigestAuthenticator('odd "realm"', KEY)
    value = auth.challenge(0.0)[0]
    assert value.startswith('Digest realm="odd \\"realm\\"",')
    assert params_of(value)["realm"] == 'odd "realm"'
    header = build_authorization(value, "REGISTER", URI, "alice", "wonderland-42", "c")
    assert auth.verify("REGISTER", header, lookup, 1.0).ok


def test_repr_does_not_leak_key() -> None:
    text = repr(make_auth())
    assert KEY.hex() not in text and repr(KEY) not in text
    assert "switchboard.example" in text


# ---------------------------------------------------------------------------
# Verification
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["SHA-256", "MD5"])
def test_round_trip(algorithm: str) -> None:
    auth = make_auth()
    header = answer(auth, 100.0, algorithm=algorithm)
    assert params_of(header)["algorithm"] == algorithm
    result = auth.verify("REGISTER", header, lookup, 101.0)
    assert result == AuthResult(ok=True, username="alice", stale=False, reason="ok",
                                uri="sip:switchboard.example")


@pytest.mark.parametrize("algorithm", ["SHA-256", "MD5"])
def test_verify_against_independent_computation(algorithm: str) -> None:
    """A header built by hand with hashlib (not via build_authorization) verifies."""
    auth = make_auth()
    nonce = params_of(challenge_for(auth, algorithm, 0.0))["nonce"]
    ha1 = hex_digest(algorithm, f"bob:{REALM}:builder")
    ha2 = hex_digest(algorithm, "INVITE:sip:carol@switchboard.example")
    response = hex_digest(algorithm, f"{ha1}:{nonce}:0000002a:xyz:auth:{ha2}")
    header = (
        f'digest  USERNAME = "bob" ,realm="{REALM}",Nonce="{nonce}",'
        f'uri="sip:carol@switchboard.example",\tresponse="{response.upper()}",'
        f"algorithm={algorithm.lower()},cnonce=xyz,qop=auth,nc=0000002a"
    )
    result = auth.verify("INVITE", header, lookup, 1.0)
    assert result == AuthResult(ok=True, username="bob", stale=False, reason="ok",
                                uri=result.uri)
    assert result.uri.startswith("sip:")
    # The method is part of HA2: the same header for another method fails.
    other = auth.verify("BYE", header.replace("0000002a", "0000002b"), lookup, 1.0)
    assert other.reason == "bad credentials"


def test_non_ascii_username_and_password_round_trip() -> None:
    auth = make_auth()
    header = answer(auth, 0.0, username="zoë", password="ünïcode pässword")
    assert auth.verify("REGISTER", header, lookup, 0.5) == AuthResult(True, "zoë", False, "ok",
                                                                     "sip:switchboard.example")


def test_missing_algorithm_means_md5() -> None:
    auth = make_auth()
    header = answer(auth, 0.0, algorithm="MD5")
    assert auth.verify("REGISTER", drop_param(header, "algorithm"), lookup, 0.0).ok
    sha_only = make_auth(algorithms=("SHA-256",))
    header = answer(sha_only, 0.0)
    result = sha_only.verify("REGISTER", drop_param(header, "algorithm"), lookup, 0.0)
    assert result.reason == "unsupported algorithm"


def test_wrong_password_and_unknown_user_are_indistinguishable() -> None:
    auth = make_auth()
    calls: list[str] = []

    def tracking_lookup(username: str) -> str | None:
        calls.append(username)
        return USERS.get(username)

    wrong = auth.verify("REGISTER", answer(auth, 0.0, password="guess"), tracking_lookup, 0.0)
    unknown = auth.verify(
        "REGISTER", answer(auth, 0.0, username="mallory", password="guess"), tracking_lookup, 0.0
    )
    assert wrong == AuthResult(ok=False, username="alice", stale=False, reason="bad credentials")
    assert unknown == AuthResult(
        ok=False, username="mallory", stale=False, reason="bad credentials"
    )
    # Both paths consulted the password store exactly once.
    assert calls == ["alice", "mallory"]


def test_unknown_user_never_succeeds_even_with_empty_password() -> None:
    auth = make_auth()
    for password in ("", "None", "dummy"):
        header = answer(auth, 0.0, username="ghost", password=password)
        assert auth.verify("REGISTER", header, lookup, 0.0).reason == "bad credentials"


def test_unknown_user_fails_even_with_the_dummy_password() -> None:
    # Defence in depth: matching the internal dummy password must not log in.
    auth = make_auth()
    dummy = auth._dummy_password
    header = answer(auth, 0.0, username="ghost", password=dummy)
    assert auth.verify("REGISTER", header, lookup, 0.0) == AuthResult(
        ok=False, username="ghost", stale=False, reason="bad credentials"
    )
    # Control: the failed attempt consumed nothing, and the very same header is
    # accepted once the store really knows that password.
    assert auth.verify("REGISTER", header, {"ghost": dummy}.get, 0.0).ok


def test_stale_nonce_after_ttl() -> None:
    auth = make_auth(nonce_ttl=30.0)
    at_limit = answer(auth, 100.0)
    assert auth.verify("REGISTER", at_limit, lookup, 130.0).ok  # age == ttl is still fresh
    expired = answer(auth, 100.0)
    result = auth.verify("REGISTER", expired, lookup, 130.5)
    assert result == AuthResult(ok=False, username="alice", stale=True, reason="stale nonce")
    # Stale is only reported to clients that know the password (RFC 7616 3.3).
    wrong = auth.verify("REGISTER", answer(auth, 100.0, password="nope"), lookup, 130.5)
    assert wrong == AuthResult(ok=False, username="alice", stale=False, reason="bad credentials")
    # A fresh challenge then works.
    assert auth.verify("REGISTER", answer(auth, 130.5), lookup, 131.0).ok


def test_nonce_from_the_future_is_stale() -> None:
    auth = make_auth()
    header = answer(auth, 1000.0)
    assert auth.verify("REGISTER", header, lookup, 10.0).stale


def test_tampered_nonce_is_rejected() -> None:
    auth = make_auth()
    header = answer(auth, 50.0)
    nonce = params_of(header)["nonce"]
    for i in (0, 7, 20, 47):  # issue time, random part, MAC
        flipped = nonce[:i] + ("A" if nonce[i] != "A" else "B") + nonce[i + 1 :]
        # Recompute the response for the tampered nonce so only the MAC can fail.
        tampered = replace_param(header, "nonce", flipped)
        p = params_of(tampered)
        ha1 = hex_digest("SHA-256", f"alice:{REALM}:wonderland-42")
        ha2 = hex_digest("SHA-256", f"REGISTER:{URI}")
        p["response"] = hex_digest("SHA-256", f"{ha1}:{flipped}:{p['nc']}:{p['cnonce']}:auth:{ha2}")
        forged = "Digest " + ", ".join(f'{k}="{v}"' for k, v in p.items())
        result = auth.verify("REGISTER", forged, lookup, 51.0)
        assert result == AuthResult(ok=False, username="alice", stale=False, reason="bad nonce")


@pytest.mark.parametrize(
    "nonce",
    [RFC_NONCE, "", "A" * 48, "A" * 47 + "=", "not a nonce at all", "A" * 64, "é" * 48],
)
def test_forged_nonce_is_rejected(nonce: str) -> None:
    auth = make_auth()
    header = replace_param(answer(auth, 0.0), "nonce", nonce)
    assert auth.verify("REGISTER", header, lookup, 0.0).reason == "bad nonce"


def test_nonce_from_other_key_or_realm_is_rejected() -> None:
    auth = make_auth()
    other_key = DigestAuthenticator(REALM, bytes(32))
    other_realm = DigestAuthenticator("other.example", KEY)
    foreign = params_of(other_key.challenge(0.0)[0])["nonce"]
    header = replace_param(answer(auth, 0.0), "nonce", foreign)
    assert auth.verify("REGISTER", header, lookup, 0.0).reason == "bad nonce"
    # Same key, other realm: the nonce is bound to the realm.
    realm_nonce = params_of(other_realm.challenge(0.0)[0])["nonce"]
    header = replace_param(answer(auth, 0.0), "nonce", realm_nonce)
    assert auth.verify("REGISTER", header, lookup, 0.0).reason == "bad nonce"


def test_wrong_opaque_is_rejected_and_missing_opaque_tolerated() -> None:
    auth = make_auth()
    header = answer(auth, 0.0)
    bad = replace_param(header, "opaque", "AAAAAAAAAAAAAAAA")
    assert auth.verify("REGISTER", bad, lookup, 0.0).reason == "bad nonce"
    assert auth.verify("REGISTER", drop_param(header, "opaque"), lookup, 0.0).ok


def test_replayed_nonce_count_is_refused() -> None:
    auth = make_auth()
    challenge = challenge_for(auth, "SHA-256", 0.0)

    def with_nc(nc: int) -> str:
        return build_authorization(challenge, "REGISTER", URI, "alice", "wonderland-42", "c", nc)

    assert auth.verify("REGISTER", with_nc(1), lookup, 1.0).ok
    replay = auth.verify("REGISTER", with_nc(1), lookup, 2.0)
    assert replay == AuthResult(ok=False, username="alice", stale=False, reason="replay")
    assert auth.verify("REGISTER", with_nc(3), lookup, 3.0).ok
    assert auth.verify("REGISTER", with_nc(2), lookup, 4.0).reason == "replay"
    assert auth.verify("REGISTER", with_nc(3), lookup, 5.0).reason == "replay"
    assert auth.verify("REGISTER", with_nc(4), lookup, 6.0).ok


def test_failed_attempts_do_not_consume_nonce_counts() -> None:
    auth = make_auth()
    challenge = challenge_for(auth, "MD5", 0.0)
    bad = build_authorization(challenge, "REGISTER", URI, "alice", "wrong", "c", 5)
    good = build_authorization(challenge, "REGISTER", URI, "alice", "wonderland-42", "c", 1)
    assert auth.verify("REGISTER", bad, lookup, 0.0).reason == "bad credentials"
    assert auth.verify("REGISTER", good, lookup, 0.0).ok
    assert auth.tracked_nonces == 1


def test_nonce_tracking_is_bounded_and_drops_expired_first() -> None:
    auth = make_auth(nonce_ttl=10.0, max_tracked_nonces=3)
    old = [answer(auth, 0.0) for _ in range(2)]
    for header in old:
        assert auth.verify("REGISTER", header, lookup, 1.0).ok
    assert auth.tracked_nonces == 2
    # At t=20 both old nonces are expired; tracking new ones drops them, not live ones.
    fresh = [answer(auth, 20.0 + i) for i in range(3)]
    for header in fresh:
        assert auth.verify("REGISTER", header, lookup, 23.0).ok
    assert auth.tracked_nonces == 3
    # Replays of the tracked fresh nonces are still caught.
    for header in fresh:
        assert auth.verify("REGISTER", header, lookup, 24.0).reason == "replay"


def test_evicting_live_nonce_never_reopens_replay() -> None:
    auth = make_auth(nonce_ttl=100.0, max_tracked_nonces=2)
    headers = [answer(auth, float(i)) for i in range(3)]
    for header in headers:
        assert auth.verify("REGISTER", header, lookup, 5.0).ok
    assert auth.tracked_nonces == 2
    # The oldest (issued at t=0) was evicted while live: its replay is not
    # accepted; the client is asked to re-challenge silently.
    result = auth.verify("REGISTER", headers[0], lookup, 6.0)
    assert result == AuthResult(ok=False, username="alice", stale=True, reason="stale nonce")
    assert auth.verify("REGISTER", headers[1], lookup, 6.0).reason == "replay"
    assert auth.verify("REGISTER", headers[2], lookup, 6.0).reason == "replay"
    # New nonces keep working.
    assert auth.verify("REGISTER", answer(auth, 7.0), lookup, 7.0).ok


def test_wrong_realm() -> None:
    auth = make_auth()
    header = replace_param(answer(auth, 0.0), "realm", "evil.example")
    assert auth.verify("REGISTER", header, lookup, 0.0) == AuthResult(
        ok=False, username="alice", stale=False, reason="wrong realm"
    )


@pytest.mark.parametrize("algorithm", ["SHA-512-256", "MD5-sess", "SHA-256-sess", "sha1"])
def test_unsupported_algorithm(algorithm: str) -> None:
    auth = make_auth()
    header = replace_param(answer(auth, 0.0), "algorithm", algorithm)
    assert auth.verify("REGISTER", header, lookup, 0.0).reason == "unsupported algorithm"


def test_md5_refused_when_not_configured() -> None:
    sha_only = make_auth(algorithms=("SHA-256",))
    both = make_auth()
    header = answer(both, 0.0, algorithm="MD5")  # same key and realm: nonce is valid
    assert sha_only.verify("REGISTER", header, lookup, 0.0).reason == "unsupported algorithm"


MALFORMED_EDITS: list[tuple[str, Callable[[str], str]]] = [
    ("empty", lambda h: ""),
    ("basic scheme", lambda h: "Basic YWxhZGRpbjpvcGVuc2VzYW1l"),
    ("bare scheme", lambda h: "Digest"),
    ("no username", lambda h: drop_param(h, "username")),
    ("no response", lambda h: drop_param(h, "response")),
    ("no nonce", lambda h: drop_param(h, "nonce")),
    ("no uri", lambda h: drop_param(h, "uri")),
    ("no qop", lambda h: drop_param(h, "qop")),
    ("qop auth-int", lambda h: replace_param(h, "qop", "auth-int")),
    ("no cnonce", lambda h: drop_param(h, "cnonce")),
    ("empty cnonce", lambda h: replace_param(h, "cnonce", "")),
    ("no nc", lambda h: drop_param(h, "nc")),
    ("nc not hex", lambda h: replace_param(h, "nc", "0000000g")),
    ("nc too long", lambda h: replace_param(h, "nc", "000000001")),
    ("nc zero", lambda h: replace_param(h, "nc", "00000000")),
    ("userhash", lambda h: replace_param(h, "userhash", "true")),
    ("unterminated", lambda h: h[:-1].rsplit('"', 1)[0] + '"unterminated'),
    ("duplicate", lambda h: h + ", nc=00000002"),
    ("trailing comma", lambda h: h + ","),
    ("garbage", lambda h: h + " ; junk"),
    ("newline", lambda h: h.replace(", ", ",\r\n ", 1)),
    ("too long", lambda h: h + ", x=" + "a" * MAX_HEADER_LENGTH),
]


@pytest.mark.parametrize(("name", "edit"), MALFORMED_EDITS, ids=[n for n, _ in MALFORMED_EDITS])
def test_malformed_headers(name: str, edit: Callable[[str], str]) -> None:
    auth = make_auth()
    header = edit(answer(auth, 0.0))
    result = auth.verify("REGISTER", header, lookup, 0.0)
    assert result.ok is False
    assert result.stale is False
    assert result.reason == "malformed", name


def test_auth_result_is_frozen_and_has_no_secrets() -> None:
    result = AuthResult(ok=False, username="alice", stale=False, reason="bad credentials")
    with pytest.raises(AttributeError):
        result.ok = True  # type: ignore[misc]
    assert not hasattr(result, "__dict__")  # slots
    assert repr(result) == (
        "AuthResult(ok=False, username='alice', stale=False, reason='bad credentials', uri='')"
    )
    auth = make_auth()
    header = answer(auth, 0.0)
    ok = auth.verify("REGISTER", header, lookup, 0.0)
    assert "wonderland-42" not in repr(ok)
    assert hex_digest("SHA-256", f"alice:{REALM}:wonderland-42") not in repr(ok)


# ---------------------------------------------------------------------------
# parse_auth_params
# ---------------------------------------------------------------------------


def test_parse_whitespace_case_and_escapes() -> None:
    scheme, params = parse_auth_params(
        ' \tDIGEST  Realm = "a \\"quoted\\" realm" ,NONCE=abc,\t'
        'uri="sip:x@y;transport=tcp", empty="", back="c:\\\\dir", utf="zoë"'
    )
    assert scheme == "DIGEST"
    assert params == {
        "realm": 'a "quoted" realm',
        "nonce": "abc",
        "uri": "sip:x@y;transport=tcp",
        "empty": "",
        "back": "c:\\dir",
        "utf": "zoë",
    }


def test_parse_bare_scheme() -> None:
    assert parse_auth_params("Digest") == ("Digest", {})
    assert parse_auth_params("  Digest \t ") == ("Digest", {})


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "expected auth scheme"),
        ("   ", "expected auth scheme"),
        ('="x"', "expected auth scheme"),
        ('Digest realm="x', "unterminated quoted string"),
        ('Digest realm="x\\', "unterminated quoted string"),
        ("Digest realm", "expected '='"),
        ("Digest realm=", "expected value"),
        ("Digest realm=,", "expected value"),
        ('Digest realm="x" nonce="y"', "expected ','"),
        ('Digest realm="x",', "expected parameter name"),
        ('Digest realm="x",,nonce=y', "expected parameter name"),
        ('Digest realm="x", Realm="y"', "duplicate parameter 'realm'"),
        ('Digest,realm="x"', "expected whitespace after auth scheme"),
        ('Digest realm="a\nb"', "control character"),
        ('Digest realm="a\\\rb"', "invalid escaped character"),
        ("Digest realm=a\x00", "expected ','"),
        ("Digest realm=\ud800", "not valid Unicode"),
        ("Digest x=" + "a" * MAX_HEADER_LENGTH, "too long"),
    ],
)
def test_parse_errors(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_auth_params(value)


def test_parse_error_messages_do_not_echo_values() -> None:
    with pytest.raises(ValueError) as info:
        parse_auth_params('Digest response="deadbeefcafe" password-ish="hunter2"')
    assert "hunter2" not in str(info.value) and "deadbeefcafe" not in str(info.value)


@settings(max_examples=500)
@given(st.text())
def test_parse_fuzz_only_raises_value_error(value: str) -> None:
    try:
        scheme, params = parse_auth_params(value)
    except ValueError:
        return
    assert scheme and all(name == name.lower() for name in params)


HEADERISH = st.text(alphabet='Digest rlmnoc="\\,= \t\r\nabc:@;é\x00', max_size=80)


@settings(max_examples=500)
@given(HEADERISH)
def test_parse_fuzz_header_like_text(value: str) -> None:
    try:
        scheme, params = parse_auth_params(value)
    except ValueError:
        return
    assert scheme in value
    assert all(name == name.lower() and name.lower() in value.lower() for name in params)


@settings(max_examples=300)
@given(HEADERISH)
def test_verify_fuzz_never_raises(value: str) -> None:
    auth = make_auth()
    result = auth.verify("REGISTER", value, lookup, 0.0)
    assert result.ok is False
    assert result.reason in {"malformed", "bad nonce", "wrong realm", "unsupported algorithm"}


TOKEN = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~",
    min_size=1,
    max_size=12,
)
QUOTABLE = st.text(
    alphabet=st.characters(
        exclude_categories=["Cs"],
        exclude_characters=[chr(c) for c in range(0x20) if c != 0x09] + ["\x7f"],
    ),
    max_size=30,
)


@settings(max_examples=300)
@given(TOKEN, st.dictionaries(TOKEN.map(str.lower), QUOTABLE, max_size=6))
def test_parse_round_trips_quoted_values(scheme: str, params: dict[str, str]) -> None:
    rendered = ", ".join(
        '{}="{}"'.format(k.upper(), v.replace("\\", "\\\\").replace('"', '\\"'))
        for k, v in params.items()
    )
    value = f"{scheme} {rendered}" if params else scheme
    assert parse_auth_params(value) == (scheme, params)


# ---------------------------------------------------------------------------
# FailureLimiter
# ---------------------------------------------------------------------------


def test_limiter_blocks_after_n_failures_within_window() -> None:
    limiter = FailureLimiter(max_failures=3, window=10.0, block_seconds=60.0)
    assert limiter.failure("127.0.0.1", 0.0) is False
    assert limiter.failure("127.0.0.1", 1.0) is False
    assert limiter.is_blocked("127.0.0.1", 1.0) is False
    assert limiter.failure("127.0.0.1", 2.0) is True  # third failure causes the block
    assert limiter.is_blocked("127.0.0.1", 2.0) is True
    assert limiter.failure("127.0.0.1", 3.0) is False  # already blocked: not a new block
    assert limiter.blocked_count(3.0) == 1
    assert limiter.is_blocked("10.0.0.2", 3.0) is False  # other sources unaffected


def test_limiter_window_slides() -> None:
    limiter = FailureLimiter(max_failures=3, window=10.0, block_seconds=60.0)
    # Failures 6 s apart: at most two ever fall inside one 10 s window.
    for t in (0.0, 6.0, 12.0, 18.0):
        assert limiter.failure("192.0.2.1", t) is False
    assert limiter.is_blocked("192.0.2.1", 18.0) is False
    # A third one within 10 s of the previous two (12, 18, 19) blocks.
    assert limiter.failure("192.0.2.1", 19.0) is True
    assert limiter.is_blocked("192.0.2.1", 19.0) is True


def test_limiter_unblocks_after_block_seconds() -> None:
    limiter = FailureLimiter(max_failures=2, window=10.0, block_seconds=60.0)
    limiter.failure("198.51.100.7", 0.0)
    assert limiter.failure("198.51.100.7", 1.0) is True
    assert limiter.is_blocked("198.51.100.7", 60.9) is True
    assert limiter.is_blocked("198.51.100.7", 61.0) is False
    assert limiter.blocked_count(61.0) == 0
    # History was cleared by the block: one more failure does not re-block.
    assert limiter.failure("198.51.100.7", 62.0) is False
    assert limiter.failure("198.51.100.7", 63.0) is True


def test_limiter_success_resets_failures() -> None:
    limiter = FailureLimiter(max_failures=3, window=60.0, block_seconds=60.0)
    limiter.failure("203.0.113.9", 0.0)
    limiter.failure("203.0.113.9", 1.0)
    limiter.success("203.0.113.9")
    assert limiter.failure("203.0.113.9", 2.0) is False
    assert limiter.failure("203.0.113.9", 3.0) is False
    assert limiter.failure("203.0.113.9", 4.0) is True
    # Success does not lift an active block.
    limiter.success("203.0.113.9")
    assert limiter.is_blocked("203.0.113.9", 5.0) is True
    limiter.success("never-seen")  # no error for unknown sources


def test_limiter_blocked_count_tracks_multiple_sources() -> None:
    limiter = FailureLimiter(max_failures=1, window=10.0, block_seconds=10.0)
    for i, t in enumerate((0.0, 2.0, 4.0)):
        assert limiter.failure(f"10.0.0.{i}", t) is True
    assert limiter.blocked_count(5.0) == 3
    assert limiter.blocked_count(10.0) == 2  # first expired at exactly t=10
    assert limiter.blocked_count(14.0) == 0


def test_limiter_memory_is_bounded() -> None:
    limiter = FailureLimiter(max_failures=3, window=100.0, block_seconds=100.0, max_sources=10)
    for i in range(1000):
        limiter.failure(f"source-{i}", float(i) / 100)
    assert len(limiter._failures) <= 10
    for i in range(1000):
        for _ in range(3):
            limiter.failure(f"attacker-{i}", 20.0)
    assert len(limiter._blocked) <= 10
    assert limiter.blocked_count(20.0) == 10
    # The most recently blocked sources are the ones kept.
    assert limiter.is_blocked("attacker-999", 21.0) is True


def test_limiter_prefers_dropping_stale_sources() -> None:
    limiter = FailureLimiter(max_failures=3, window=10.0, block_seconds=100.0, max_sources=2)
    limiter.failure("old", 0.0)
    limiter.failure("live", 15.0)
    limiter.failure("live", 16.0)
    limiter.failure("new", 20.0)  # evicts "old" (outside window), keeps "live"
    assert limiter.failure("live", 21.0) is True


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_failures": 0},
        {"window": 0.0},
        {"window": float("inf")},
        {"block_seconds": -1.0},
        {"max_sources": 0},
    ],
)
def test_limiter_rejects_bad_configuration(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        FailureLimiter(**kwargs)  # type: ignore[arg-type]


# -- the one-pass reader of the common shape agrees with the careful one -------------
_AUTH_PIECES = st.sampled_from([
    "Digest", " ", "\t", ",", ", ", "=", " = ", '"', '\\"', "username", "realm", "nonce",
    "uri", "response", "qop", "nc", "auth", "00000001", '"sip:101@pbx"', '"a,b=c"', '""',
    "é", "\x01", "MD5", "algorithm", "Username",
])


def _outcome(fn: Callable[[str], object], value: str) -> object:
    try:
        return fn(value)
    except ValueError:
        return ValueError


@settings(max_examples=2000, deadline=None)
@given(st.lists(_AUTH_PIECES, max_size=14).map("".join))
def test_fast_auth_parse_agrees_with_careful_reader(value: str) -> None:
    from engine.sip.auth import _parse_auth_params_slow

    assert _outcome(parse_auth_params, value) == _outcome(_parse_auth_params_slow, value)


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(st.from_regex(r"[A-Za-z][a-z0-9-]{0,6}", fullmatch=True),
                       st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126),
                               max_size=12), min_size=1, max_size=6))
def test_fast_auth_parse_reads_generated_credentials(params: dict[str, str]) -> None:
    from engine.sip.auth import _parse_auth_params_slow

    value = "Digest " + ", ".join(
        f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
        for k, v in params.items())
    assert _outcome(parse_auth_params, value) == _outcome(_parse_auth_params_slow, value)
