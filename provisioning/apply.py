"""``switchboard provision apply``: load a directory file into the store."""

from __future__ import annotations

from pathlib import Path

from provisioning.directory import load_directory
from provisioning.store import ApplyReport, open_store

__all__ = ["apply_file", "format_report"]

_SIGNS = {"added": "+", "changed": "~", "removed": "-", "reordered": "~"}


async def apply_file(
    path: str | Path, db_url: str | None, data_dir: Path, *, schema: str | None = None
) -> ApplyReport:
    """Load and validate ``path``, then apply it to the store at ``db_url``.

    Raises ``DirectoryError`` when the file is invalid and ``StoreError`` when
    the store cannot be opened; in both cases, and on any failure during the
    apply, the store is left unchanged. Secrets the file leaves out are kept
    from the store (:func:`provisioning.directory.keep_secrets`).
    """
    async with open_store(db_url, data_dir, schema=schema) as store:
        stored, _ = await store.load_directory_data()
        return await store.apply_directory(load_directory(path, stored=stored))


def format_report(report: ApplyReport) -> str:
    """One line per change, e.g. ``~ users 101: forwarding.away.no_answer_seconds``.

    ``no change`` when the apply was idempotent.
    """
    if not report.changed:
        return "no change"
    lines: list[str] = []
    for change in report.changes:
        sign = _SIGNS[change.action]
        if change.action == "reordered":
            lines.append(f"{sign} {change.table}: reordered")
        elif change.action == "changed":
            fields = ", ".join(change.fields)
            lines.append(f"{sign} {change.table} {change.key}: changed {fields}".rstrip())
        else:
            lines.append(f"{sign} {change.table} {change.key}: {change.action}")
    return "\n".join(lines)
