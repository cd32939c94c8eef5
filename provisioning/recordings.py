"""Call recordings on disk: ``DATA_DIR/recordings/<id>.wav`` and ``<id>.json``.

The JSON file beside each WAV says who talked to whom, when, for how long
and why the call was recorded. It is written after the WAV, so a listing
never shows a recording whose audio is not complete. The admin API
(``GET/DELETE /recordings``) and ``switchboard recordings`` read this folder;
no database row is involved, so recordings survive a store change and can be
archived by copying the folder.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

__all__ = ["delete_recording", "list_recordings", "recording_path", "recordings_dir",
           "write_listing"]

_ID = re.compile(r"^[0-9a-f]{32}$")


def recordings_dir(data_dir: Path) -> Path:
    return data_dir.resolve() / "recordings"


def recording_path(data_dir: Path, recording_id: str) -> Path:
    """The WAV of ``recording_id``; ValueError for an id that is not ours (no path tricks)."""
    if not _ID.match(recording_id):
        raise ValueError(f"'{recording_id}' is not a recording id (32 hex digits)")
    return recordings_dir(data_dir) / f"{recording_id}.wav"


def write_listing(wav: Path, info: dict[str, object]) -> None:
    """Write the JSON beside ``wav`` (via a temporary name: readers see all or nothing)."""
    target = wav.with_suffix(".json")
    tmp = target.with_suffix(".json.tmp")
    # One line, no ``indent``: with an indent the json module builds its encoder
    # from nested closures that refer to each other, a reference cycle per call
    # left to the cyclic collector; the engine writes one listing per recorded
    # call and is tuned to rely on reference counting (``engine.cli.tune_gc``).
    tmp.write_text(json.dumps(info, sort_keys=True))
    tmp.replace(target)


def list_recordings(data_dir: Path) -> list[dict[str, object]]:
    """Every complete recording, oldest first: the JSON fields plus ``path``."""
    folder = recordings_dir(data_dir)
    out: list[dict[str, object]] = []
    if not folder.is_dir():
        return out
    for meta in folder.glob("*.json"):
        wav = meta.with_suffix(".wav")
        if not _ID.match(meta.stem) or not wav.exists():
            continue
        try:
            info = json.loads(meta.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(info, dict):
            info["id"] = meta.stem
            info["path"] = str(wav)
            out.append(info)
    out.sort(key=lambda r: (str(r.get("time", "")), str(r["id"])))
    return out


def delete_recording(data_dir: Path, recording_id: str) -> bool:
    """Remove one recording (WAV and JSON); False when there is no such recording."""
    wav = recording_path(data_dir, recording_id)
    meta = wav.with_suffix(".json")
    if not wav.exists() and not meta.exists():
        return False
    wav.unlink(missing_ok=True)
    meta.unlink(missing_ok=True)
    return True
