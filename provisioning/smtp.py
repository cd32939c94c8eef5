"""Handing an email to the directory's ``[system] smtp`` relay: one rule for every
sender (voicemail email, welcome and password-reset emails).

The relay is used as it is configured: no authentication; STARTTLS when a relay
that is not on loopback offers it (with its certificate checked), never on
loopback (a local relay's self-signed certificate must not lose mail).
"""

from __future__ import annotations

import asyncio
import ipaddress
from email.message import EmailMessage

import aiosmtplib

from provisioning.model import Smtp

__all__ = ["SEND_DEADLINE", "SMTP_TIMEOUT", "on_loopback", "relay"]

SMTP_TIMEOUT = 10.0
"""Seconds for each step of the SMTP session (connect, each command, the data)."""
SEND_DEADLINE = 30.0
"""Seconds for the whole session, at least: a relay that trickles cannot hold a task."""


def on_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def relay(smtp: Smtp, email: EmailMessage, timeout: float = SMTP_TIMEOUT) -> None:
    """Send ``email`` through ``smtp``; aiosmtplib's errors, OSError or TimeoutError
    when the relay does not take it (within ``max(timeout, SEND_DEADLINE)``)."""
    await asyncio.wait_for(
        aiosmtplib.send(email, hostname=smtp.host, port=smtp.port, timeout=timeout,
                        start_tls=False if on_loopback(smtp.host) else None),
        max(timeout, SEND_DEADLINE))
