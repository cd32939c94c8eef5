"""`switchboard voicemail list|delete` and mailbox removal, through the CLI a user runs."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

from media.tones import tone
from media.wav import load_wav, write_wav
from provisioning.model import VoicemailMessage
from provisioning.store import open_store
from tests.conftest import EXAMPLE, switchboard_bin


def cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([switchboard_bin(), *args, "--data-dir", str(data_dir)],
                          capture_output=True, text=True, timeout=60)


async def leave_message(data_dir: Path, box: str, message_id: str) -> Path:
    """What the voicemail endpoint does: a WAV in the mailbox folder, a row in the store."""
    path = data_dir.resolve() / "voicemail" / box / f"{message_id}.wav"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_wav(path, tone(1000, 1500), rate=8000)
    async with open_store(None, data_dir) as store:
        await store.save_voicemail(VoicemailMessage(
            id=message_id, box=box, caller="+15145550199", time=1_790_000_000.0,
            duration=1.5, path=str(path)))
    return path


def test_voicemail_list_json_delete_and_removed_user(tmp_path: Path) -> None:
    assert cli(tmp_path, "provision", "apply", str(EXAMPLE)).returncode == 0
    wav = asyncio.run(leave_message(tmp_path, "203", "m-1"))
    asyncio.run(leave_message(tmp_path, "101", "m-2"))

    listed = cli(tmp_path, "voicemail", "list", "203", "--json")
    assert listed.returncode == 0, listed.stderr
    [row] = json.loads(listed.stdout)
    assert row == {"id": "m-1", "caller": "+15145550199", "time": "2026-09-21T14:13:20Z",
                   "duration": 1.5, "read": False, "path": str(wav)}
    audio = load_wav(row["path"])
    assert audio.rate == 8000 and abs(audio.duration - 1.5) < 0.01
    assert "m-2" in cli(tmp_path, "voicemail", "list", "101").stdout

    unknown = cli(tmp_path, "voicemail", "list", "909")
    assert unknown.returncode == 2 and "unknown extension '909'" in unknown.stderr
    missing = cli(tmp_path, "voicemail", "delete", "101", "nope")
    assert missing.returncode == 2 and "no message 'nope'" in missing.stderr

    deleted = cli(tmp_path, "voicemail", "delete", "101", "m-2")
    assert deleted.returncode == 0 and cli(tmp_path, "voicemail", "list", "101",
                                           "--json").stdout.strip() == "[]"

    # Deleting user 203 from the directory deletes their voicemail (rows and files).
    text = EXAMPLE.read_text()
    start = text.index('[[users]]\nextension = "203"')
    end = text.find("[[users]]", start + 10)
    without = tmp_path / "without-203.toml"
    without.write_text(text[:start] + (text[end:] if end >= 0 else ""))
    applied = cli(tmp_path, "provision", "apply", str(without))
    assert applied.returncode == 0, applied.stderr
    assert "- users 203: removed" in applied.stdout
    assert not wav.exists() and not wav.parent.exists()


def test_delete_message_removes_the_row_then_the_file(tmp_path: Path) -> None:
    from provisioning.mailbox import delete_message

    async def scenario() -> None:
        kept = await leave_message(tmp_path, "101", "m-1")
        stuck = await leave_message(tmp_path, "101", "m-2")
        async with open_store(None, tmp_path) as store:
            done = await delete_message(store, "101", "m-1")
            assert done.message is not None and done.message.id == "m-1"
            assert done.file_error is None and not kept.exists()
            # No such row: nothing is touched unless the caller names the file.
            assert await delete_message(store, "101", "m-1") == type(done)(None)
            orphan = tmp_path / "orphan.wav"
            orphan.write_bytes(b"x")
            assert (await delete_message(store, "101", "gone", str(orphan))).message is None
            assert not orphan.exists()
            # A file that cannot be removed: the row is gone all the same, and the
            # caller is told why the file remains.
            stuck.unlink()
            stuck.mkdir()
            (stuck / "inside").write_bytes(b"x")
            done = await delete_message(store, "101", "m-2")
            assert done.message is not None and isinstance(done.file_error, OSError)
            assert await store.list_voicemail("101") == []
            assert stuck.exists()

    assert cli(tmp_path, "provision", "apply", str(EXAMPLE)).returncode == 0
    asyncio.run(scenario())
