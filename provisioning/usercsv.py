"""Users as CSV, in the columns of a 3CX user export.

A 3CX export names a user by ``Number``, ``FirstName``, ``LastName``,
``EmailAddress``, ``MobileNumber``, ``AuthID``, ``AuthPassword``, ``PIN``, ``VM*``
and ``OutboundCallerID`` among many columns of its own (DID, web meeting,
hot desking, phone provisioning...). The ones that mean something here are mapped
to the directory's user keys (:data:`COLUMNS`); the others are reported as
ignored, never guessed at.

This module is pure: CSV text in, per-row changes (dotted user keys -> values)
out, every conversion error named ``row N, column C`` (row 1 is the header, as
in a spreadsheet). Applying the changes, validating the whole directory and
storing it is :meth:`provisioning.api.resources.DirectoryApi.import_users`, the
one write path of the admin API.

Secrets: an export never carries the SIP password (``AuthPassword``) or the
voicemail PIN (``PIN``): those columns are written empty, and an empty cell on
import leaves the stored value as it is, so an export imported back changes
nothing. An import that fills them sets them.

Formula injection: a spreadsheet runs a cell that begins with ``=``, ``+``, ``-`` or
``@`` (or a tab or carriage return before one) as a formula, so a name or caller ID
typed as ``=HYPERLINK(...)`` would run on the admin's machine when the export is
opened. The export writes such a cell with one ``'`` in front (what spreadsheets
show as text), and the import takes exactly that one ``'`` off again, and only
before those characters: an export imported back changes nothing.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["COLUMNS", "CsvRow", "export_csv", "neutralise", "parse_csv", "restore", "row_label"]

#: What makes a spreadsheet read a cell as a formula (OWASP's CSV injection list).
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def neutralise(cell: str) -> str:
    """A cell a spreadsheet reads as text: ``'`` before a formula's first character."""
    return "'" + cell if cell.startswith(FORMULA_START) else cell


def restore(cell: str) -> str:
    """Undo :func:`neutralise` exactly: one ``'`` off, only before a formula character."""
    return cell[1:] if cell.startswith("'") and cell[1:].startswith(FORMULA_START) else cell


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "y"):
        return True
    if lowered in ("0", "false", "no", "n"):
        return False
    raise ValueError(f"{text!r} is not 0 or 1")


def _choice(names: Sequence[str]) -> tuple[Callable[[str], str], Callable[[Any], str]]:
    """3CX writes these options as numbers (0, 1, 2...); ours are words. Both are read,
    numbers are written (what a 3CX import expects)."""
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value.isdigit() and int(value) < len(names):
            return names[int(value)]
        if value in names:
            return value
        raise ValueError(f"{text!r} is not one of "
                         + ", ".join(f"{i} ({n})" for i, n in enumerate(names)))

    def write(value: Any) -> str:
        return str(names.index(value)) if value in names else ""
    return parse, write


@dataclass(frozen=True, slots=True)
class Column:
    key: str  # dotted user key
    parse: Callable[[str], Any] = str.strip
    write: Callable[[Any], str] = str
    secret: bool = False  # never exported


_EMAIL_PARSE, _EMAIL_WRITE = _choice(("none", "notify", "attach", "attach_and_delete"))
_DATE_PARSE, _DATE_WRITE = _choice(("none", "ampm", "24h"))


def _flag(value: Any) -> str:
    return "1" if value else "0"


#: 3CX column -> the user key it sets. FirstName and LastName make ``name`` (joined by a
#: space; an export splits the name at its first space). AuthID is checked, not stored:
#: phones authenticate with the extension here. Department is this product's own column.
COLUMNS: Mapping[str, Column] = {
    "Number": Column("extension"),
    "FirstName": Column("name"),
    "LastName": Column("name"),
    "EmailAddress": Column("email"),
    "MobileNumber": Column("mobile"),
    "AuthID": Column("extension"),
    "AuthPassword": Column("password", secret=True),
    "PIN": Column("voicemail_pin", secret=True),
    "EnableVoicemail": Column("voicemail.enabled", _bool, _flag),
    "VMNoPin": Column("voicemail.pin_required", lambda t: not _bool(t),
                      lambda v: _flag(not v)),
    "VMPlayCallerID": Column("voicemail.announce_caller", _bool, _flag),
    "VMPlayMsgDateTime": Column("voicemail.read_datetime", _DATE_PARSE, _DATE_WRITE),
    "VMEmailOptions": Column("voicemail.email", _EMAIL_PARSE, _EMAIL_WRITE),
    "OutboundCallerID": Column("outbound_caller_id"),
    "Department": Column("department"),
}
#: user key -> the column an error about it names
KEY_COLUMN: Mapping[str, str] = {
    "extension": "Number", "name": "FirstName", **{
        c.key: name for name, c in COLUMNS.items()
        if c.key not in ("extension", "name")},
}


@dataclass
class CsvRow:
    line: int  # the spreadsheet row: the header is row 1
    extension: str
    values: dict[str, Any] = field(default_factory=dict)  # dotted key -> value


def row_label(line: int, column: str) -> str:
    return f"row {line}, column {column}"


def parse_csv(text: str) -> tuple[list[CsvRow], list[str], list[tuple[str, str]]]:
    """The rows' changes, the ignored columns, and every error (all of them, not the first).

    An empty cell sets nothing (the stored value stays; a new user gets the default).
    """
    errors: list[tuple[str, str]] = []
    reader = csv.reader(io.StringIO(text.lstrip("\ufeff")))  # Excel writes a BOM
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        return [], [], [("row 1", "the file is empty (a header row is required)")]
    except csv.Error as exc:
        return [], [], [("row 1", f"not CSV: {exc}")]
    if "Number" not in header:
        errors.append(("row 1, column Number", "missing: the Number column (the extension) "
                                               "names each user"))
    seen: set[str] = set()
    for name in header:
        if name in seen and name in COLUMNS:
            errors.append((f"row 1, column {name}", "appears twice"))
        seen.add(name)
    ignored = sorted({h for h in header if h not in COLUMNS and h})
    rows: list[CsvRow] = []
    extensions: dict[str, int] = {}
    try:
        records = list(reader)
    except csv.Error as exc:
        return [], ignored, [(f"row {reader.line_num}", f"not CSV: {exc}")]
    for offset, record in enumerate(records):
        line = offset + 2
        if not any(cell.strip() for cell in record):
            continue  # a blank line
        if len(record) > len(header):
            errors.append((f"row {line}", f"{len(record)} cells for {len(header)} columns"))
            continue
        cells = {h: restore(record[i]) if i < len(record) else ""
                 for i, h in enumerate(header)}
        extension = cells.get("Number", "").strip()
        if not extension:
            errors.append((row_label(line, "Number"), "empty: every row needs an extension"))
            continue
        if extension in extensions:
            errors.append((row_label(line, "Number"), f"extension {extension} is also on row "
                                                      f"{extensions[extension]}"))
            continue
        extensions[extension] = line
        row = CsvRow(line, extension)
        auth_id = cells.get("AuthID", "").strip()
        if auth_id and auth_id != extension:
            errors.append((row_label(line, "AuthID"), f"{auth_id!r} differs from Number "
                           f"{extension!r}: phones sign in with their extension here; leave "
                           "AuthID empty or equal to Number"))
        first, last = cells.get("FirstName", "").strip(), cells.get("LastName", "").strip()
        if first or last:
            row.values["name"] = f"{first} {last}".strip()
        for name, column in COLUMNS.items():
            if name in ("Number", "AuthID", "FirstName", "LastName") or name not in cells:
                continue
            raw = cells[name]
            if not raw.strip():
                continue
            try:
                row.values[column.key] = column.parse(raw)
            except ValueError as exc:
                errors.append((row_label(line, name), str(exc)))
        rows.append(row)
    return rows, ignored, errors


def _get(row: Mapping[str, Any], key: str) -> Any:
    value: Any = row
    for part in key.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


def export_csv(users: Sequence[Mapping[str, Any]]) -> str:
    """The users (rows in the directory file's form) as a 3CX-shaped CSV, secrets empty."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(list(COLUMNS))
    for user in users:
        first, _, last = str(user.get("name", "")).partition(" ")
        cells = []
        for name, column in COLUMNS.items():
            value = _get(user, column.key)
            if name == "FirstName":
                cells.append(first)
            elif name == "LastName":
                cells.append(last)
            elif column.secret or value is None:
                cells.append("")
            else:
                cells.append(column.write(value))
        writer.writerow([neutralise(c) for c in cells])
    return out.getvalue()
