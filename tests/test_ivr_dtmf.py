"""Keys an IVR reads from SIP INFO application/dtmf-relay (engine.calls.ivr)."""

from __future__ import annotations

import pytest

from engine.calls.ivr import dtmf_relay_digit


@pytest.mark.parametrize(("body", "key"), [
    (b"Signal=5\r\nDuration=160\r\n", "5"),
    (b"Signal= #\nDuration=100", "#"),
    (b"signal=*\r\n", "*"),
    (b"Signal=11\r\nDuration=160\r\n", "#"),  # some phones number # and * as events
    (b"Signal=10\r\n", "*"),
    (b"Duration=160\r\nSignal=9\r\n", "9"),
])
def test_a_dtmf_relay_body_names_its_key(body: bytes, key: str) -> None:
    assert dtmf_relay_digit(body) == key


@pytest.mark.parametrize("body", [b"", b"Duration=160\r\n", b"Signal=12\r\n",
                                  b"Signal=55\r\n", b"Signal=\r\n", b"\xff\xfe"])
def test_a_body_without_a_key_names_none(body: bytes) -> None:
    assert dtmf_relay_digit(body) is None
