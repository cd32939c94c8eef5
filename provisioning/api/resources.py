"""The directory's tables as resources: one model, one validation.

A write is: the live directory as a dict (the file's form, from the store's
snapshot, :meth:`~provisioning.store.Store.directory_snapshot`: read and validated
once per revision, not per request), the change applied to it, the **whole**
result run through :func:`~provisioning.directory.parse_directory` (the file's
checks, every error named by field, all or nothing; the store's parse memo skips
reading again the rows the change left equal), then stored by ``apply_directory``
on that snapshot (only the rows that differ are written) with the revision the
client read (``If-Match``) checked in the same transaction, and the audit entry
written in it. The running engine reloads at once, so the next call uses the
change, and takes the validated directory from the store's snapshot.

Secrets (SIP passwords, voicemail PINs, trunk passwords) are write-only: a
row is returned without them and with ``<key>_set: true|false`` instead.
"""

from __future__ import annotations

import copy
import re
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from provisioning.api.auth import Principal, new_audit
from provisioning.api.errors import ApiError, FieldError
from provisioning.api.policy import at_least, check_write, number_row_index, visible
from provisioning.directory import TABLE_KEYS, DirectoryError, parse_directory
from provisioning.model import AuditEntry, Directory
from provisioning.store import DirectorySnapshot, RevisionConflict, Store
from provisioning.usercsv import KEY_COLUMN, export_csv, parse_csv, row_label

__all__ = [
    "SECRETS",
    "DirectoryApi",
    "diff_fields",
    "merge_patch",
    "parse_if_match",
    "redact",
]

#: Write-only keys of each table.
SECRETS: Mapping[str, tuple[str, ...]] = {
    "users": ("password", "voicemail_pin"),
    "trunks": ("password",),
    "system": (),
    "departments": (),
    "numbers": (),
    "ring_groups": (),
    "ivrs": (),
    "queues": (),
}
MASK = "********"
#: What a copy takes from the body; what it never takes from the user copied (identity,
#: credentials, the live state and the personal caller ID).
COPY_IDENTITY = ("extension", "name", "email", "mobile")
COPY_LEFT_OUT = frozenset({"extension", "name", "email", "mobile", "password",
                           "voicemail_pin", "status", "disabled", "outbound_caller_id"})
# A greeting set through the API is "default" or a file name under the engine's data
# dir: a path would let anyone who may set a greeting play any WAV on the server.
_GREETING_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\.wav")

OnChange = Callable[[], Awaitable[None]]


def redact(table: str, row: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in row.items() if k not in SECRETS[table]}
    for key in SECRETS[table]:
        out[f"{key}_set"] = bool(row.get(key))
    return out


def _mask(table: str, row: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(row)
    for key in SECRETS[table]:
        if out.get(key):
            out[key] = MASK
    return out


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396 JSON merge patch: objects merge, ``null`` removes (the default applies),
    anything else replaces."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result: dict[str, Any] = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def diff_fields(old: Any, new: Any, prefix: str = "") -> list[str]:
    """The dotted keys whose values differ (``forwarding.away.no_answer.external``)."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        fields: list[str] = []
        for key in sorted(set(old) | set(new), key=str):
            path = f"{prefix}.{key}" if prefix else str(key)
            if key not in old or key not in new:
                fields.append(path)
            else:
                fields.extend(diff_fields(old[key], new[key], path))
        return fields
    return [] if old == new else [prefix]


def _pick(row: Mapping[str, Any] | None, fields: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields:
        value: Any = row
        for part in f.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
        out[f] = value
    return out


def parse_if_match(header: str | None) -> int | None:
    """The revision an ``If-Match`` names; ``None`` for ``*`` (no check). 428 when absent,
    412 when it is not a revision of ours (no revision could match it)."""
    if header is None:
        raise ApiError(428, [("If-Match", "a write needs If-Match with the ETag of the "
                                          "directory you read (or * to overwrite)")])
    text = header.strip()
    if text == "*":
        return None
    found = re.fullmatch(r'(?:W/)?"([0-9]{1,18})"', text)
    if not found:
        raise ApiError(412, [("If-Match", f"{text!r} is not an ETag of this directory; "
                                          "read the resource again")])
    return int(found[1])


class DirectoryApi:
    """Reads and writes of the directory's tables for one principal at a time."""

    def __init__(self, store: Store, on_change: OnChange | None = None) -> None:
        self.store = store
        self.on_change = on_change

    async def snapshot(self) -> tuple[dict[str, Any], int]:
        data, base = await self._read()
        return data, base.revision

    async def _read(self) -> tuple[dict[str, Any], DirectorySnapshot]:
        """The directory to change (its tables' lists are copies; rows are shared and
        never changed in place) and the snapshot it is, for the write."""
        base = await self.store.directory_snapshot()
        if base is None:
            raise ApiError(409, "the store has no directory yet: apply one first "
                                "(switchboard provision apply FILE)")
        return {table: list(rows) if isinstance(rows, list) else rows
                for table, rows in base.data.items()}, base

    # ------------------------------------------------------------------ reads

    async def list(self, p: Principal, table: str) -> tuple[list[dict[str, Any]], int]:
        data, revision = await self.snapshot()
        rows = [redact(table, r) for r in data[table] if visible(p, table, r, data)]
        return rows, revision

    async def get(self, p: Principal, table: str, key: str) -> tuple[dict[str, Any], int]:
        data, revision = await self.snapshot()
        if table == "system":
            row = data["system"]
        else:
            index = self._index(data, table, key)
            row = data[table][index]
        if not visible(p, table, row, data):
            raise _not_found(table, key)  # 404, not 403: what one may not see is not there
        return redact(table, row), revision

    async def export(self, p: Principal) -> tuple[dict[str, Any], int]:
        """Every table in one answer, each with the rows ``p`` may see (no secrets):
        one read, one revision, for a client that caches the whole directory."""
        data, revision = await self.snapshot()
        out: dict[str, Any] = {}
        if visible(p, "system", data["system"], data):
            out["system"] = redact("system", data["system"])
        for table in TABLE_KEYS:
            out[table] = [redact(table, r) for r in data[table] if visible(p, table, r, data)]
        return out, revision

    # ------------------------------------------------------------------ writes

    async def create(self, p: Principal, table: str, body: object, if_match: int | None,
                     source: str) -> tuple[dict[str, Any], int]:
        row = _body(body)
        data, base = await self._read()
        _expect(if_match, base.revision)
        where = f"{table}[{len(data[table])}]"
        check_write(p, table, None, row, sorted(row), data, where)
        self._check_greetings(None, row, where)
        data[table].append(row)
        key = str(row.get(TABLE_KEYS[table], ""))
        after = _mask(table, row)
        new_revision = await self._store(p, data, base, source,
                                         f"{table}.create", f"{table}/{key}", None, after)
        return await self._fresh(table, key, new_revision)

    async def update(self, p: Principal, table: str, key: str, body: object,
                     if_match: int | None, source: str) -> tuple[dict[str, Any], int]:
        patch = _body(body)
        data, base = await self._read()
        revision = base.revision
        _expect(if_match, revision)
        if table == "system":
            old, where = data["system"], "system"
        else:
            index = self._index(data, table, key)
            old, where = data[table][index], f"{table}[{index}]"
        if not visible(p, table, old, data):
            raise _not_found(table, key)
        for secret in SECRETS[table]:
            patch.pop(f"{secret}_set", None)  # read-only, as returned by a GET
        natural = TABLE_KEYS.get(table)
        if natural is not None and natural in patch and patch[natural] != old.get(natural):
            raise ApiError(422, [(f"{where}.{natural}", f"the {natural} names the resource "
                                  "and cannot be changed; create a new one and delete this one")])
        new = merge_patch(old, patch)
        changed = diff_fields(old, new)
        check_write(p, table, old, new, changed, data, where)
        self._check_greetings(old, new, where)
        if not changed:
            return redact(table, old), revision
        if table == "system":
            data["system"] = new
        else:
            data[table][index] = new
        new_revision = await self._store(
            p, data, base, source, f"{table}.update",
            table if table == "system" else f"{table}/{old.get(natural or '')}",
            _pick(_mask(table, old), changed), _pick(_mask(table, new), changed))
        return await self._fresh(table, "" if table == "system" else str(old.get(natural or "")),
                                 new_revision)

    async def delete(self, p: Principal, table: str, key: str, if_match: int | None,
                     source: str) -> int:
        data, base = await self._read()
        _expect(if_match, base.revision)
        index = self._index(data, table, key)
        old = data[table][index]
        where = f"{table}[{index}]"
        if not visible(p, table, old, data):
            raise _not_found(table, key)
        check_write(p, table, old, None, sorted(old), data, where)
        del data[table][index]
        return await self._store(p, data, base, source, f"{table}.delete",
                                 f"{table}/{old.get(TABLE_KEYS[table])}", _mask(table, old), None)

    # ------------------------------------------------------------------ users in bulk

    async def export_users(self, p: Principal) -> tuple[str, int]:
        """The users ``p`` may see as a 3CX-shaped CSV (never a password or a PIN)."""
        if not at_least(p, "department_admin"):
            raise ApiError(403, "CSV export is for department admins, managers and owners")
        data, revision = await self.snapshot()
        return export_csv([r for r in data["users"] if visible(p, "users", r, data)]), revision

    async def import_users(self, p: Principal, text: str, if_match: int | None, source: str,
                           dry_run: bool = False) -> tuple[dict[str, Any], int]:
        """Create or change the CSV's users, all or nothing: one validation of the whole
        directory, one revision, one audit entry per user. Users absent from the file stay
        as they are (an import never deletes). Errors name ``row N, column C``."""
        if not at_least(p, "department_admin"):
            raise ApiError(403, "CSV import is for department admins, managers and owners")
        rows, ignored, errors = parse_csv(text)
        if errors:
            raise ApiError(422, errors)
        data, base = await self._read()
        revision = base.revision
        _expect(if_match, revision)
        report: dict[str, Any] = {"added": [], "changed": {}, "unchanged": [],
                                  "ignored_columns": ignored, "dry_run": dry_run}
        lines: dict[int, int] = {}  # users index -> CSV row
        entries: list[AuditEntry] = []
        refused: list[FieldError] = []
        where_is = {str(u.get("extension")): i for i, u in enumerate(data["users"])}
        for row in rows:
            index = where_is.get(row.extension)
            old = None if index is None else data["users"][index]
            new: dict[str, Any] = ({"extension": row.extension} if old is None
                                   else copy.deepcopy(old))
            for key, value in row.values.items():
                _set(new, key, value)
            if old is None:
                index = len(data["users"])
                data["users"].append(new)
                changed = sorted(new)
                report["added"].append(row.extension)
            else:
                assert index is not None
                changed = diff_fields(old, new)
                if not changed:
                    report["unchanged"].append(row.extension)
                    continue
                data["users"][index] = new
                report["changed"][row.extension] = changed
            lines[index] = row.line
            try:
                check_write(p, "users", old, new, changed, data, f"users[{index}]")
            except ApiError as exc:
                hidden = old is not None and not visible(p, "users", old, data)
                refused.extend([(row_label(row.line, "Number"), f"you may not change user "
                                 f"{row.extension}")] if hidden else
                               _csv_errors(exc.errors, lines))
                continue
            entries.append(new_audit(
                p.actor, source, "users.import", f"users/{row.extension}",
                None if old is None else _pick(_mask("users", old), changed),
                _mask("users", new) if old is None else _pick(_mask("users", new), changed)))
        if refused:
            raise ApiError(403, refused)
        try:
            directory = parse_directory(data, "<csv>", self.store.memo)
        except DirectoryError as exc:
            raise ApiError(422, _csv_errors(exc.fields or [("", e) for e in exc.errors],
                                            lines)) from None
        if dry_run or not entries:
            return report, revision
        new_revision = await self._apply(directory, base, entries)
        return report, new_revision

    async def bulk_update(self, p: Principal, body: object, if_match: int | None,
                          source: str) -> tuple[dict[str, Any], int]:
        """One merge patch on many users, all or nothing: each row checked for ``p``, one
        validation of the whole directory, one revision, one audit entry per user."""
        fields = _body(body)
        extensions, patch = fields.get("extensions"), fields.get("set")
        errors: list[FieldError] = [(str(k), "unknown key (the body is {\"extensions\": [...], "
                                             "\"set\": {...}})")
                                    for k in fields if k not in ("extensions", "set")]
        if not isinstance(extensions, list) or not extensions or not all(
                isinstance(e, str) for e in extensions):
            errors.append(("extensions", "a non-empty list of extensions"))
        elif len(set(extensions)) != len(extensions):
            errors.append(("extensions", "lists an extension twice"))
        if not isinstance(patch, Mapping) or not patch:
            errors.append(("set", "a non-empty merge patch (object)"))
        else:
            errors += [(f"set.{k}", "a secret is set one user at a time")
                       for k in SECRETS["users"] if k in patch]
            if "extension" in patch:
                errors.append(("set.extension", "the extension names a user and cannot be "
                                                "changed"))
        if errors:
            raise ApiError(422 if any(path.startswith("set.") for path, _ in errors) else 400,
                           errors)
        assert isinstance(extensions, list) and isinstance(patch, Mapping)
        data, base = await self._read()
        revision = base.revision
        _expect(if_match, revision)
        result: dict[str, Any] = {"changed": {}, "unchanged": []}
        entries: list[AuditEntry] = []
        refused: list[FieldError] = []
        missing: list[FieldError] = []
        for position, extension in enumerate(extensions):
            index = next((i for i, u in enumerate(data["users"])
                          if u.get("extension") == extension), None)
            if index is None or not visible(p, "users", data["users"][index], data):
                missing.append((f"extensions[{position}]", f"no user '{extension}'"))
                continue
            old = data["users"][index]
            new = merge_patch(old, patch)
            changed = diff_fields(old, new)
            if not changed:
                result["unchanged"].append(extension)
                continue
            try:
                check_write(p, "users", old, new, changed, data, f"users[{index}]")
            except ApiError as exc:
                refused.extend(exc.errors)
                continue
            self._check_greetings(old, new, f"users[{index}]")
            data["users"][index] = new
            result["changed"][extension] = changed
            entries.append(new_audit(p.actor, source, "users.bulk_update",
                                     f"users/{extension}", _pick(_mask("users", old), changed),
                                     _pick(_mask("users", new), changed)))
        if missing:
            raise ApiError(404, missing)
        if refused:
            raise ApiError(403, refused)
        try:
            directory = parse_directory(data, "<api>", self.store.memo)
        except DirectoryError as exc:
            raise ApiError(422, exc.fields or [("", e) for e in exc.errors]) from None
        if not entries:
            return result, revision
        return result, await self._apply(directory, base, entries)

    async def copy_user(self, p: Principal, extension: str, body: object,
                        if_match: int | None, source: str) -> tuple[dict[str, Any], int]:
        """A new user with another's settings (department, role, rights, codecs,
        forwarding, schedule, voicemail options) and their own identity and credentials:
        a generated SIP password and voicemail PIN, returned in this answer only."""
        fields = _body(body)
        errors: list[FieldError] = [(k, "missing (a non-empty string)") for k in
                                    ("extension", "name") if not isinstance(fields.get(k), str)
                                    or not fields.get(k)]
        errors += [(k, "must be a string") for k in ("email", "mobile")
                   if k in fields and not isinstance(fields[k], str)]
        errors += [(str(k), "unknown key (extension, name, email, mobile)") for k in fields
                   if k not in COPY_IDENTITY]
        if errors:
            raise ApiError(400, errors)
        data, base = await self._read()
        _expect(if_match, base.revision)
        template = data["users"][self._index(data, "users", extension)]
        if not visible(p, "users", template, data):
            raise _not_found("users", extension)
        sip_password = secrets.token_urlsafe(18)
        pin = f"{secrets.randbelow(10**6):06d}"
        new = {k: copy.deepcopy(v) for k, v in template.items() if k not in COPY_LEFT_OUT}
        for forwarding in (new.get("forwarding") or {}).values():
            if isinstance(forwarding, dict):
                forwarding.pop("greeting", None)  # a greeting is the other person's voice
        if isinstance(new.get("voicemail"), dict):
            new["voicemail"].pop("greeting", None)
        new |= {k: fields[k] for k in COPY_IDENTITY if k in fields}
        new |= {"password": sip_password, "voicemail_pin": pin}
        where = f"users[{len(data['users'])}]"
        check_write(p, "users", None, new, sorted(new), data, where)
        data["users"].append(new)
        new_revision = await self._store(p, data, base, source, "users.copy",
                                         f"users/{new['extension']}", {"from": extension},
                                         _mask("users", new))
        row, current = await self._fresh("users", str(new["extension"]), new_revision)
        return row | {"sip_password": sip_password, "voicemail_pin": pin}, current

    async def _apply(self, directory: Directory, base: DirectorySnapshot,
                     audit: AuditEntry | Sequence[AuditEntry]) -> int:
        try:
            report = await self.store.apply_directory(
                directory, expect_revision=base.revision, audit=audit, base=base)
        except RevisionConflict as exc:
            raise ApiError(412, [("If-Match", f"the directory changed meanwhile (now revision "
                                              f"{exc.current}); read it again")],
                           revision=exc.current) from None
        if report.changed and self.on_change is not None:
            await self.on_change()
        return report.revision if report.changed else base.revision

    # ------------------------------------------------------------------ helpers

    def _index(self, data: Mapping[str, Any], table: str, key: str) -> int:
        if table == "numbers":
            found = number_row_index(data, key)
        else:
            natural = TABLE_KEYS[table]
            found = next((i for i, r in enumerate(data[table]) if r.get(natural) == key), None)
        if found is None:
            raise _not_found(table, key)
        return found

    def _check_greetings(self, old: Mapping[str, Any] | None, new: Mapping[str, Any],
                         where: str) -> None:
        errors: list[FieldError] = []
        for path in _greeting_paths(new):
            value = _get(new, path)
            if value == _get(old, path) or value == "default" or not isinstance(value, str):
                continue
            if not _GREETING_NAME.fullmatch(value):
                errors.append((f"{where}.{path}", f"'{value}': through the API a greeting is "
                               "\"default\" or a .wav file name (no folder) under the engine's "
                               "data dir"))
        if errors:
            raise ApiError(422, errors)

    async def _store(self, p: Principal, data: dict[str, Any], base: DirectorySnapshot,
                     source: str, action: str, target: str,
                     before: Mapping[str, Any] | None, after: Mapping[str, Any] | None) -> int:
        try:
            directory = parse_directory(data, "<api>", self.store.memo)
        except DirectoryError as exc:
            raise ApiError(422, exc.fields or [("", e) for e in exc.errors]) from None
        # read, checked, then someone else wrote: 412, the client must read again
        return await self._apply(directory, base,
                                 new_audit(p.actor, source, action, target, before, after))

    async def _fresh(self, table: str, key: str, revision: int) -> tuple[dict[str, Any], int]:
        """The row as the write left it, at the write's revision (the store kept it)."""
        base = await self.store.directory_snapshot(at=revision)
        if base is None:
            raise ApiError(409, "the store has no directory yet")
        data, current = base.data, base.revision
        if table == "system":
            return redact(table, data["system"]), current
        return redact(table, data[table][self._index(data, table, key)]), current


def _greeting_paths(row: Mapping[str, Any]) -> list[str]:
    paths = ["voicemail.greeting"]
    forwarding = row.get("forwarding")
    if isinstance(forwarding, Mapping):
        paths.extend(f"forwarding.{status}.greeting" for status in forwarding)
    return paths


def _get(row: Mapping[str, Any] | None, path: str) -> Any:
    value: Any = row
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def _set(row: dict[str, Any], key: str, value: Any) -> None:
    *parents, last = key.split(".")
    for part in parents:
        child = row.get(part)
        if not isinstance(child, dict):
            child = row[part] = {}
        row = child
    row[last] = value


_USERS_INDEX = re.compile(r"users\[([0-9]+)\](?:\.([A-Za-z_.]+?))?(?:\[[0-9]+\])?$")


def _csv_errors(errors: list[FieldError], lines: Mapping[int, int]) -> list[FieldError]:
    """The validator's ``users[7].voicemail.email`` as ``row 9, column VMEmailOptions``:
    the file's coordinates. An error elsewhere (a ring group...) keeps its own path."""
    out: list[FieldError] = []
    for path, message in errors:
        found = _USERS_INDEX.match(path)
        if found is None or int(found[1]) not in lines:
            out.append((path, message))
            continue
        key = found[2] or ""
        column = KEY_COLUMN.get(key) or next(
            (c for k, c in KEY_COLUMN.items() if key.startswith(k + ".")), None)
        line = lines[int(found[1])]
        out.append((row_label(line, column) if column else f"row {line} ({key or path})",
                    message))
    return out


def _body(body: object) -> dict[str, Any]:
    if not isinstance(body, Mapping):
        raise ApiError(400, [("", "the body must be a JSON object")])
    return dict(body)


def _expect(if_match: int | None, revision: int) -> None:
    if if_match is not None and if_match != revision:
        raise ApiError(412, [("If-Match", f"the directory is at revision {revision}, not "
                                          f"{if_match}; read it again")], revision=revision)


def _not_found(table: str, key: str) -> ApiError:
    return ApiError(404, f"no {table.rstrip('s').replace('_', ' ')} '{key}'")
