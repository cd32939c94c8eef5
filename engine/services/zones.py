"""Time zones by name, as the directory gives them (a department's ``timezone``)."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import structlog

__all__ = ["zone"]

log = structlog.get_logger("switchboard.zones")


def zone(tz: str | dt.tzinfo) -> dt.tzinfo:
    """``tz`` as a tzinfo: an IANA name (``"America/Toronto"``) or a tzinfo as is.

    An unknown name (the directory validates names, so only one built by hand)
    is logged and read as UTC.
    """
    if isinstance(tz, dt.tzinfo):
        return tz
    try:
        return ZoneInfo(tz)
    except (KeyError, ValueError, OSError):  # ZoneInfoNotFoundError is a KeyError
        log.warning("unknown time zone; times read in UTC", tz=tz)
        return dt.UTC
