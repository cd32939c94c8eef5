"""SDES-SRTP: the ``a=crypto`` attribute (RFC 4568) and per-endpoint SRTP contexts.

* :func:`parse_crypto` / :func:`format_crypto` read and write
  ``a=crypto:<tag> AES_CM_128_HMAC_SHA1_80 inline:<base64 key||salt>``
  (RFC 4568 s9.1; key||salt is 16 + 14 = 30 bytes, s6.2.1).
  :func:`new_key` draws a fresh master key and salt.
* :class:`SrtpContext` protects what an endpoint sends with *our* key (the one
  in our SDP) and unprotects what it receives with the *peer's* key (the one in
  its SDP): each side of an SDES exchange announces the key it sends with
  (RFC 4568 s6.1). It wraps two ``pylibsrtp`` sessions (libsrtp), one per
  direction, for RTP and RTCP (SRTCP, RFC 3711 s3.4).

Decisions:

* Only ``AES_CM_128_HMAC_SHA1_80`` is offered and accepted: it is the
  mandatory suite of RFC 4568 s6.2 and every SDES phone has it. A crypto line
  with another suite, session parameters (``KDR=``, ``UNENCRYPTED_SRTP`` ...),
  a lifetime or an MKI is skipped, not half understood: a stream with no
  usable line is refused (488, Warning 302), never sent in the clear.
* A lifetime (``|2^31``) is accepted when it is at least 2^31 packets (libsrtp
  re-keys nothing itself; a shorter one would need re-keying we do not do).
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from dataclasses import dataclass

import pylibsrtp

__all__ = [
    "KEY_LENGTH",
    "SUITE",
    "Crypto",
    "SrtpContext",
    "SrtpError",
    "format_crypto",
    "new_key",
    "parse_crypto",
]

SUITE = "AES_CM_128_HMAC_SHA1_80"
KEY_LENGTH = 30  # 128-bit master key + 112-bit master salt (RFC 4568 s6.2.1)
_TAG = re.compile(r"[0-9]{1,9}")
_MIN_LIFETIME = 2**31


class SrtpError(ValueError):
    """A crypto attribute we cannot use (the message says what is wrong)."""


@dataclass(frozen=True, slots=True)
class Crypto:
    """One ``a=crypto`` line we can use: its tag and the 30-byte key||salt."""

    tag: int
    key: bytes


def new_key() -> bytes:
    """A fresh master key and salt (30 bytes from the OS's CSPRNG)."""
    return os.urandom(KEY_LENGTH)


def format_crypto(tag: int, key: bytes) -> str:
    """The value of ``a=crypto`` (after ``crypto:``) for ``key`` under ``tag``."""
    if len(key) != KEY_LENGTH:
        raise SrtpError(f"SRTP key||salt must be {KEY_LENGTH} bytes, got {len(key)}")
    return f"{tag} {SUITE} inline:{base64.b64encode(key).decode('ascii')}"


def parse_crypto(value: str) -> Crypto:
    """One ``a=crypto`` value (RFC 4568 s9.1), or :class:`SrtpError` naming the fault."""
    fields = value.split()
    if len(fields) < 3:
        raise SrtpError(f"crypto attribute {value[:60]!r}: needs tag, suite and key params")
    tag, suite, params = fields[0], fields[1], fields[2]
    if not _TAG.fullmatch(tag):
        raise SrtpError(f"crypto tag {tag!r} is not a number of 1 to 9 digits")
    if suite.upper() != SUITE:
        raise SrtpError(f"crypto suite {suite} is not supported (only {SUITE})")
    if len(fields) > 3:
        raise SrtpError(f"crypto session parameters {' '.join(fields[3:])[:60]!r} "
                        "are not supported")
    if ";" in params:
        raise SrtpError("several keys in one crypto attribute are not supported")
    method, sep, info = params.partition(":")
    if not sep or method.lower() != "inline":
        raise SrtpError(f"crypto key method {method!r} is not 'inline'")
    key_text, *extras = info.split("|")
    for extra in extras:  # a lifetime, an MKI:length (RFC 4568 s9.1)
        if ":" in extra:
            raise SrtpError("crypto keys with an MKI are not supported")
        if _lifetime(extra) < _MIN_LIFETIME:
            raise SrtpError(f"crypto key lifetime {extra} is shorter than 2^31 packets "
                            "(re-keying is not supported)")
    try:
        key = base64.b64decode(key_text, validate=True)
    except (binascii.Error, ValueError):
        raise SrtpError("crypto key is not valid base64") from None
    if len(key) != KEY_LENGTH:
        raise SrtpError(f"crypto key||salt is {len(key)} bytes; {SUITE} needs {KEY_LENGTH}")
    return Crypto(int(tag), key)


def _lifetime(text: str) -> int:
    if text.startswith("2^") and text[2:].isdigit():
        return int(2 ** int(text[2:]))
    if text.isdigit():
        return int(text)
    raise SrtpError(f"crypto key lifetime {text!r} is not a number or 2^n")


class SrtpContext:
    """SRTP/SRTCP for one endpoint: ``send_key`` ours, ``receive_key`` the peer's.

    :meth:`unprotect` returns None for a packet that fails authentication or
    replay checks (counted in :attr:`rejected`): it must be dropped."""

    __slots__ = ("_rx", "_tx", "receive_key", "rejected", "send_key")

    def __init__(self, send_key: bytes, receive_key: bytes) -> None:
        for name, key in (("send", send_key), ("receive", receive_key)):
            if len(key) != KEY_LENGTH:
                raise SrtpError(f"SRTP {name} key must be {KEY_LENGTH} bytes, got {len(key)}")
        self.send_key = send_key
        self.receive_key = receive_key
        profile = pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80
        self._tx = pylibsrtp.Session(pylibsrtp.Policy(
            key=send_key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND, srtp_profile=profile))
        self._rx = pylibsrtp.Session(pylibsrtp.Policy(
            key=receive_key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND, srtp_profile=profile))
        self.rejected = 0

    def protect(self, packet: bytes) -> bytes:
        return self._tx.protect(packet)

    def protect_rtcp(self, packet: bytes) -> bytes:
        return self._tx.protect_rtcp(packet)

    def unprotect(self, packet: bytes) -> bytes | None:
        try:
            return self._rx.unprotect(packet)
        except pylibsrtp.Error:
            self.rejected += 1
            return None

    def unprotect_rtcp(self, packet: bytes) -> bytes | None:
        try:
            return self._rx.unprotect_rtcp(packet)
        except pylibsrtp.Error:
            self.rejected += 1
            return None
