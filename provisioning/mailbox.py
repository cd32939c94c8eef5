"""Voicemail on disk: where a mailbox's WAV files live, and removing them.

Messages are rows in the store (:class:`provisioning.model.VoicemailMessage`)
and WAV files under ``DATA_DIR/voicemail/<extension>/``; the data dir keeps two
engines in two folders apart.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from provisioning.model import VoicemailMessage
from provisioning.store import Store

__all__ = ["Deleted", "delete_message", "dumps", "format_messages", "mailbox_dir",
           "message_json", "remove_mailboxes"]


def mailbox_dir(data_dir: Path, extension: str) -> Path:
    if not extension.isascii() or not extension.isdigit():
        raise ValueError(f"'{extension}' is not an extension (digits only)")
    return data_dir.resolve() / "voicemail" / extension


@dataclass(frozen=True)
class Deleted:
    """What :func:`delete_message` did."""

    message: VoicemailMessage | None
    """The row removed; None when the mailbox had no such message."""
    file_error: OSError | None = None
    """Why the WAV file could not be removed (the row is gone all the same)."""


async def delete_message(store: Store, box: str, message_id: str,
                         path: str | None = None) -> Deleted:
    """Delete a message: its row first, then its WAV file.

    In that order, a failure leaves at worst a file nobody lists, never a listed
    message without its audio. The file is the row's, else ``path`` (the caller's
    copy of it, for a row already gone); a missing file is no error. Store
    errors propagate: the message is then kept whole.
    """
    gone = await store.delete_voicemail(box, message_id)
    target = gone.path if gone is not None else path
    error: OSError | None = None
    if target is not None:
        try:
            await asyncio.to_thread(Path(target).unlink, missing_ok=True)
        except OSError as exc:
            error = exc
    return Deleted(gone, error)


def remove_mailboxes(data_dir: Path, extensions: Iterable[str]) -> list[str]:
    """Delete the voicemail folders of removed users; returns the extensions done."""
    done = []
    for ext in extensions:
        folder = mailbox_dir(data_dir, ext)
        if folder.exists():
            shutil.rmtree(folder)
        done.append(ext)
    return done


def message_json(message: VoicemailMessage) -> dict[str, object]:
    """The ``voicemail list --json`` object: id, caller, time (ISO 8601), duration
    (seconds), read, path (absolute)."""
    return {
        "id": message.id,
        "caller": message.caller,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(message.time)),
        "duration": round(message.duration, 2),
        "read": message.read,
        "path": str(Path(message.path).resolve()),
    }


def format_messages(messages: list[VoicemailMessage]) -> str:
    if not messages:
        return "no messages"
    lines = [f"{'ID':<34} {'CALLER':<16} {'TIME (UTC)':<20} {'SECONDS':>7}  READ"]
    for m in messages:
        row = message_json(m)
        lines.append(f"{m.id:<34} {m.caller:<16} {row['time']!s:<20} "
                     f"{m.duration:>7.1f}  {'yes' if m.read else 'no'}")
    return "\n".join(lines)


def dumps(messages: list[VoicemailMessage]) -> str:
    return json.dumps([message_json(m) for m in messages], indent=2)
