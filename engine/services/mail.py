"""Voicemail by email: notify, attach, or attach and delete (``users.voicemail.email``).

:func:`build_voicemail_email` is pure: it turns a message, its mailbox's user
and the system into an :class:`~email.message.EmailMessage` (subject and
plain-text body in the mailbox's language, the WAV attached for ``attach`` and
``attach_and_delete``).  :func:`send_voicemail_email` hands it to the
``[system] smtp`` relay with aiosmtplib and, for ``attach_and_delete``, deletes
the message (store row, then WAV file) only once the relay has accepted the
email: a send that fails keeps the message and logs a warning.

The relay is used as :mod:`provisioning.smtp` says, for every email the system
sends.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Literal

import structlog

from engine.services.zones import zone
from provisioning.mailbox import delete_message
from provisioning.model import Language, System, User, VoicemailMessage
from provisioning.smtp import SMTP_TIMEOUT, relay
from provisioning.store import Store

__all__ = [
    "SMTP_TIMEOUT",
    "SendResult",
    "attachment_name",
    "build_voicemail_email",
    "email_voicemail",
    "email_wanted",
    "send_voicemail_email",
]

log = structlog.get_logger("switchboard.mail")


SendResult = Literal["skipped", "sent", "failed"]

_TEXT: dict[Language, dict[str, str]] = {
    "en": {
        "subject": "New voicemail from {caller} ({seconds} s)",
        "hello": "Hello {name},",
        "intro": "You have a new voicemail in mailbox {box}.",
        "from": "From",
        "received": "Received",
        "server_time": "server time",
        "duration": "Duration",
        "seconds": "{seconds} seconds",
        "extension": "Extension",
        "unknown": "unknown",
        "notify": "The message is in your mailbox.",
        "attach": "The recording is attached (WAV). The message stays in your mailbox.",
        "attach_and_delete": "The recording is attached (WAV). It is no longer kept in "
                             "your mailbox.",
    },
    "fr": {
        "subject": "Nouveau message vocal de {caller} ({seconds} s)",
        "hello": "Bonjour {name},",
        "intro": "Vous avez un nouveau message vocal dans la boîte {box}.",
        "from": "De",
        "received": "Reçu le",
        "server_time": "heure du serveur",
        "duration": "Durée",
        "seconds": "{seconds} secondes",
        "extension": "Poste",
        "unknown": "inconnu",
        "notify": "Le message est dans votre boîte vocale.",
        "attach": "L'enregistrement est joint (WAV). Le message reste dans votre boîte vocale.",
        "attach_and_delete": "L'enregistrement est joint (WAV). Il n'est plus conservé dans "
                             "votre boîte vocale.",
    },
}


def email_wanted(system: System, user: User) -> bool:
    """Whether a message left in ``user``'s mailbox is emailed at all."""
    return user.voicemail.email != "none" and bool(user.email) and system.smtp is not None


def _sender(system: System) -> str:
    """``system.smtp.sender``, else ``voicemail@<domain>``."""
    if system.smtp is not None and system.smtp.sender:
        return system.smtp.sender
    return f"voicemail@{system.domain}"


def _seconds(duration: float) -> int:
    return max(1, round(duration))


def _local_time(epoch: float, tz: dt.tzinfo | None) -> dt.datetime:
    """``epoch`` in ``tz``; ``None`` is the machine's local time zone."""
    if tz is None:
        return dt.datetime.fromtimestamp(epoch).astimezone()
    return dt.datetime.fromtimestamp(epoch, tz)


def _zone_label(tz: dt.tzinfo | None, when: dt.datetime, text: dict[str, str]) -> str:
    """What the time is read in: the zone's IANA name (``Asia/Tokyo``), else its
    name (``UTC-04:00`` for a fixed offset); ``None``: the server's time."""
    if tz is None:
        return text["server_time"]
    key = getattr(tz, "key", None)  # a ZoneInfo
    return key if isinstance(key, str) and key else when.tzname() or text["server_time"]


def attachment_name(message: VoicemailMessage, tz: dt.tzinfo | None = None) -> str:
    """``voicemail-104-20260310-140507-+15145550199.wav`` (box, time in ``tz``, caller)."""
    stamp = _local_time(message.time, tz).strftime("%Y%m%d-%H%M%S")
    caller = re.sub(r"[^0-9A-Za-z+]", "", message.caller)[:32] or "unknown"
    return f"voicemail-{message.box}-{stamp}-{caller}.wav"


def build_voicemail_email(system: System, user: User, message: VoicemailMessage,
                          wav: bytes | None = None, *,
                          tz: dt.tzinfo | None = None) -> EmailMessage:
    """The email for ``message`` in ``user``'s mailbox, in the mailbox's language.

    ``wav`` (the file's bytes) is attached when the mode is ``attach`` or
    ``attach_and_delete``; it is required then.  Times (in the body and the
    attachment's name) are in ``tz``, the mailbox owner's time zone (the engine
    passes their department's, see :meth:`Directory.timezone_for`); ``None`` is
    the machine's local time zone.  The body shows ``YYYY-MM-DD HH:MM:SS+HH:MM``
    and the zone's name.
    """
    mode = user.voicemail.email
    if mode == "none":
        raise ValueError(f"mailbox {message.box}: voicemail email is 'none'")
    if not user.email:
        raise ValueError(f"mailbox {message.box}: the user has no email address")
    attach = mode in ("attach", "attach_and_delete")
    if attach and wav is None:
        raise ValueError(f"mailbox {message.box}: '{mode}' needs the WAV bytes")
    text = _TEXT[user.voicemail.language]
    caller = message.caller or text["unknown"]
    seconds = _seconds(message.duration)
    when = _local_time(message.time, tz)
    body = "\n".join([
        text["hello"].format(name=user.name or user.extension),
        "",
        text["intro"].format(box=message.box),
        "",
        f"{text['from']}: {caller}",
        f"{text['received']}: {when.isoformat(sep=' ', timespec='seconds')} "
        f"({_zone_label(tz, when, text)})",
        f"{text['duration']}: {text['seconds'].format(seconds=seconds)}",
        f"{text['extension']}: {user.extension}",
        "",
        text[mode],
        "",
    ])
    email = EmailMessage()
    email["From"] = _sender(system)
    email["To"] = Address(display_name=user.name, addr_spec=user.email)
    email["Subject"] = text["subject"].format(caller=caller, seconds=seconds)
    email["Date"] = format_datetime(dt.datetime.now(dt.UTC).astimezone())
    email["Message-ID"] = make_msgid("voicemail", domain=system.domain)
    email["X-Switchboard-Voicemail"] = f"{message.box}/{message.id}"
    email.set_content(body)
    if attach:
        assert wav is not None
        email.add_attachment(wav, maintype="audio", subtype="wav",
                             filename=attachment_name(message, tz))
    return email


async def send_voicemail_email(store: Store, system: System, user: User,
                               message: VoicemailMessage, *,
                               timeout: float = SMTP_TIMEOUT,
                               tz: str | dt.tzinfo | None = None) -> SendResult:
    """Email ``message`` per ``user.voicemail.email``; never raises (but cancellation).

    ``tz``: the owner's time zone, an IANA name (their department's
    ``timezone``) or a tzinfo; ``None``: the machine's local time zone.

    ``skipped``: mode ``none``, no user email or no ``[system] smtp``.
    ``sent``: the relay accepted the email (for ``attach_and_delete`` the
    message was then deleted from the store and disk; a failed deletion is
    logged and the message stays).  ``failed``: nothing was accepted; the
    message stays in the mailbox and a warning is logged.
    """
    smtp = system.smtp
    mode = user.voicemail.email
    if not email_wanted(system, user) or smtp is None:
        if mode != "none" and smtp is None:
            log.info("voicemail email skipped: no [system] smtp", box=message.box,
                     id=message.id, mode=mode)
        return "skipped"
    try:
        wav = None
        if mode in ("attach", "attach_and_delete"):
            wav = await asyncio.to_thread(Path(message.path).read_bytes)
        email = build_voicemail_email(system, user, message, wav,
                                      tz=None if tz is None else zone(tz))
        await relay(smtp, email, timeout)
    except Exception as exc:  # the relay down, refusing, too slow; the WAV unreadable
        log.warning("voicemail email failed; the message is kept", box=message.box,
                    id=message.id, mode=mode, smtp=f"{smtp.host}:{smtp.port}",
                    error=f"{type(exc).__name__}: {exc}")
        return "failed"
    if mode != "attach_and_delete":
        log.info("voicemail email sent", box=message.box, id=message.id, mode=mode)
        return "sent"
    try:
        done = await delete_message(store, message.box, message.id, message.path)
    except Exception as exc:
        log.warning("voicemail email sent; deleting the message failed, it is kept",
                    box=message.box, id=message.id, mode=mode,
                    error=f"{type(exc).__name__}: {exc}")
        return "sent"
    if done.file_error is not None:
        log.warning("voicemail email sent and the message deleted; its WAV file remains",
                    box=message.box, id=message.id, mode=mode,
                    error=f"{type(done.file_error).__name__}: {done.file_error}")
        return "sent"
    log.info("voicemail email sent", box=message.box, id=message.id, mode=mode,
             deleted=done.message is not None)
    return "sent"


async def email_voicemail(store: Store, system: System, user: User,
                          message: VoicemailMessage, *,
                          tz: str | dt.tzinfo | None = None) -> None:
    """:func:`send_voicemail_email` as a background job (the result is in the log)."""
    await send_voicemail_email(store, system, user, message, tz=tz)
