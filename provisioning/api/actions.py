"""The admin API's operations beside the directory tables: live status, registrations,
calls, route explain, voicemail, recordings, web passwords, two-factor enrolment, API
keys, the audit log.

Each takes the principal and returns plain data or raises :class:`ApiError`;
``provisioning.api.http`` only turns requests into calls of these.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import structlog

from provisioning.api.auth import (
    API_KEY_ROLES,
    AttemptLimiter,
    Principal,
    begin_totp,
    check_second_factor,
    confirm_totp,
    create_api_key,
    find_user,
    hash_password,
    new_audit,
    sha256,
    verify_password,
)
from provisioning.api.errors import ApiError
from provisioning.api.live import Live
from provisioning.api.mail import (
    RESET_SECONDS,
    WELCOME_SECONDS,
    build_reset,
    issue_link,
    mail_ready,
    send_email,
    send_welcome,
)
from provisioning.api.policy import (
    at_least,
    dept_extensions,
    may_audit,
    may_manage_user,
    may_set_status,
    visible,
)
from provisioning.mailbox import delete_message, message_json
from provisioning.model import STATUSES, ApiKey, AuditEntry, User
from provisioning.recordings import delete_recording, list_recordings
from provisioning.secretbox import SecretBox
from provisioning.store import Store, UnknownExtensionError

__all__ = ["Actions"]

log = structlog.get_logger("switchboard.api")


def _user_row(data: Mapping[str, Any], extension: str) -> dict[str, Any] | None:
    return next((u for u in data.get("users", []) if u.get("extension") == extension), None)


def audit_json(entry: AuditEntry) -> dict[str, Any]:
    out = asdict(entry)
    out["at"] = dt.datetime.fromtimestamp(entry.at, dt.UTC).isoformat(timespec="seconds")
    return out


def api_key_json(key: ApiKey) -> dict[str, Any]:
    return {"id": key.id, "name": key.name, "role": key.role, "department": key.department,
            "created": dt.datetime.fromtimestamp(key.created_at, dt.UTC)
            .isoformat(timespec="seconds"),
            "revoked": None if key.revoked_at is None else
            dt.datetime.fromtimestamp(key.revoked_at, dt.UTC).isoformat(timespec="seconds")}


class Actions:
    def __init__(self, store: Store, live: Live, box: SecretBox) -> None:
        self.store = store
        self.live = live
        self.box = box
        # Reset requests: 3 per account and 10 per address in 15 minutes (each request
        # counts, known account or not); past them nothing is sent for 15 minutes.
        # Counted in the store, as sign-ins are: every node sees the same counts.
        self.reset_limiter = AttemptLimiter(store, "reset", account_limit=3, source_limit=10)
        # Wrong codes when confirming or turning off TOTP: a stolen session must not
        # be a way to guess the six digits.
        self.totp_limiter = AttemptLimiter(store, "totp", account_limit=5, source_limit=20)
        self._tasks: set[asyncio.Task[None]] = set()

    async def _data(self) -> dict[str, Any]:
        data, _ = await self.store.load_directory_data()
        if data is None:
            raise ApiError(409, "the store has no directory yet")
        return data

    async def _user(self, p: Principal, extension: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """The user's row, when ``p`` may see it (404 otherwise, as if absent)."""
        data = await self._data()
        row = _user_row(data, extension)
        if row is None or not visible(p, "users", row, data):
            raise ApiError(404, f"no user '{extension}'")
        return row, data

    # ------------------------------------------------------------------ status

    async def status(self, p: Principal, extension: str) -> dict[str, Any]:
        row, _ = await self._user(p, extension)
        live = self.live.directory().user(extension)
        overrides = await self.store.load_status_overrides()
        return {"extension": extension, "status": live.status if live else row["status"],
                "configured": row.get("status", "available"), "live": extension in overrides}

    async def set_status(self, p: Principal, extension: str, body: object,
                         source: str) -> dict[str, Any]:
        row, _ = await self._user(p, extension)
        if not may_set_status(p, row):
            raise ApiError(403, [("status", f"a {p.role} sets their own status only")])
        if not isinstance(body, Mapping) or "status" not in body:
            raise ApiError(400, [("status", "missing (one of: " + ", ".join(STATUSES) + ")")])
        status = body["status"]
        if status not in STATUSES:
            raise ApiError(422, [("status", f"{status!r} is not one of: {', '.join(STATUSES)}")])
        unknown = sorted(str(k) for k in body if k != "status")
        if unknown:
            raise ApiError(422, [(k, "unknown key (the body is {\"status\": ...})")
                                 for k in unknown])
        before = await self.status(p, extension)
        try:
            await self.store.set_user_status(extension, str(status))
        except UnknownExtensionError:
            raise ApiError(404, f"no user '{extension}'") from None
        await self.store.write_audit(new_audit(p.actor, source, "status.set",
                                               f"users/{extension}",
                                               {"status": before["status"]},
                                               {"status": status}))
        await self.live.reload()
        return await self.status(p, extension)

    async def clear_status(self, p: Principal, extension: str, source: str) -> dict[str, Any]:
        row, _ = await self._user(p, extension)
        if not may_set_status(p, row):
            raise ApiError(403, [("status", f"a {p.role} sets their own status only")])
        before = await self.status(p, extension)
        if await self.store.clear_user_status(extension):
            await self.store.write_audit(new_audit(p.actor, source, "status.clear",
                                                   f"users/{extension}",
                                                   {"status": before["status"]}, None))
            await self.live.reload()
        return await self.status(p, extension)

    async def statuses(self, p: Principal) -> list[dict[str, Any]]:
        """Every visible user's effective status (the receptionist's view)."""
        data = await self._data()
        directory = self.live.directory()
        overrides = await self.store.load_status_overrides()
        out = []
        for row in data["users"]:
            if not visible(p, "users", row, data):
                continue
            ext = str(row["extension"])
            user = directory.user(ext)
            out.append({"extension": ext, "name": row.get("name", ""),
                        "department": row.get("department", ""),
                        "status": user.status if user else row.get("status", "available"),
                        "live": ext in overrides})
        return out

    # ------------------------------------------------------------------ live views

    async def seen_extensions(self, p: Principal) -> set[str] | None:
        """The extensions whose live state ``p`` sees; None: all."""
        if at_least(p, "manager"):
            return None
        if p.role in ("receptionist", "department_admin"):
            return dept_extensions(await self._data(), p.department) | {p.extension} - {""}
        return {p.extension} - {""}

    async def registrations(self, p: Principal) -> list[dict[str, Any]]:
        seen = await self.seen_extensions(p)
        return [r for r in self.live.registrations() if seen is None or r["extension"] in seen]

    async def calls(self, p: Principal) -> list[dict[str, Any]]:
        seen = await self.seen_extensions(p)
        return [c for c in self.live.calls() if seen is None
                or seen & {c["caller"], c["callee"], *c["members"]}]

    async def explain(self, p: Principal, query: Mapping[str, str]) -> dict[str, Any]:
        caller, callee = query.get("from", ""), query.get("to", "")
        missing = [(k, "missing (required)") for k in ("from", "to") if not query.get(k)]
        if missing:
            raise ApiError(400, missing)
        status = query.get("status") or None
        if status is not None and status not in STATUSES:
            raise ApiError(400, [("status", f"{status!r} is not one of: {', '.join(STATUSES)}")])
        if not at_least(p, "manager"):
            await self._may_explain(p, callee)
        try:
            return self.live.explain(caller, callee, query.get("at") or None, status,
                                     query.get("preferred_identity", ""))
        except ValueError as exc:
            raise ApiError(400, [("at", str(exc))]) from None

    async def _may_explain(self, p: Principal, callee: str) -> None:
        """Below manager, a plan shows where the calls of people one manages go: the
        callee must be a user, ring group or number ``p`` may read."""
        data = await self._data()
        directory = self.live.directory()
        row = _user_row(data, callee)
        if row is not None and visible(p, "users", row, data):
            return
        group = directory.ring_groups_by_extension.get(callee)
        if group is not None and any(g.get("name") == group.name and
                                     visible(p, "ring_groups", g, data)
                                     for g in data["ring_groups"]):
            return
        number = directory.number(callee)
        if number is not None and any(n.get("number") == number.number and
                                      visible(p, "numbers", n, data) for n in data["numbers"]):
            return
        raise ApiError(403, [("to", "you may explain calls to the users, ring groups and "
                                    "numbers you manage only")])

    # ------------------------------------------------------------------ voicemail, recordings

    async def voicemail(self, p: Principal, extension: str) -> list[dict[str, Any]]:
        self._own_or_owner(p, extension, "voicemail")
        await self._user(p, extension)
        return [message_json(m) for m in await self.store.list_voicemail(extension)]

    async def delete_voicemail(self, p: Principal, extension: str, message_id: str,
                               source: str) -> dict[str, Any]:
        self._own_or_owner(p, extension, "voicemail")
        await self._user(p, extension)
        done = await delete_message(self.store, extension, message_id)
        if done.message is None:
            raise ApiError(404, f"mailbox {extension} has no message '{message_id}'")
        await self.store.write_audit(new_audit(p.actor, source, "voicemail.delete",
                                               f"voicemail/{extension}/{message_id}",
                                               {"caller": done.message.caller}, None))
        return {"deleted": message_id}

    def _own_or_owner(self, p: Principal, extension: str, what: str) -> None:
        if p.extension != extension and p.role != "owner":
            raise ApiError(403, f"a {what} is read by its owner only")

    async def recordings(self, p: Principal) -> list[dict[str, Any]]:
        seen = await self.seen_extensions(p)
        if p.role == "receptionist":
            seen = {p.extension}  # a receptionist sees calls in progress, not recordings
        rows = list_recordings(self.live.data_dir)
        for row in rows:
            row.pop("path", None)  # a server path is no business of an API client
        return [r for r in rows if seen is None or {r.get("caller"), r.get("callee")} & seen]

    async def recording_path(self, p: Principal, recording_id: str) -> Path:
        if not any(r["id"] == recording_id for r in await self.recordings(p)):
            raise ApiError(404, f"no recording '{recording_id}'")
        from provisioning.recordings import recording_path
        return recording_path(self.live.data_dir, recording_id)

    async def delete_recording(self, p: Principal, recording_id: str,
                               source: str) -> dict[str, Any]:
        if not at_least(p, "manager"):
            raise ApiError(403, "only a manager or an owner deletes recordings")
        try:
            gone = delete_recording(self.live.data_dir, recording_id)
        except ValueError as exc:
            raise ApiError(400, [("id", str(exc))]) from None
        if not gone:
            raise ApiError(404, f"no recording '{recording_id}'")
        await self.store.write_audit(new_audit(p.actor, source, "recordings.delete",
                                               f"recordings/{recording_id}"))
        return {"deleted": recording_id}

    # ------------------------------------------------------------------ web password

    async def set_password(self, p: Principal, extension: str, body: object,
                           source: str) -> dict[str, Any]:
        row, _ = await self._user(p, extension)
        if not isinstance(body, Mapping) or not isinstance(body.get("password"), str):
            raise ApiError(400, [("password", "missing (a string)")])
        own = extension == p.extension
        if not own and not may_manage_user(p, row):
            raise ApiError(403, [("password", "you may set your own web password, or those "
                                              "of the users you manage")])
        if own:
            current = body.get("current_password")
            stored = await self.store.web_password_hash(extension)
            if stored is not None and (not isinstance(current, str)
                                       or not verify_password(stored, current)):
                raise ApiError(403, [("current_password", "wrong or missing: changing your "
                                                          "own password needs the current one")])
        try:
            hashed = hash_password(body["password"])
        except ValueError as exc:
            raise ApiError(422, [("password", str(exc))]) from None
        await self.store.set_web_password(extension, hashed)
        await self.store.write_audit(new_audit(p.actor, source, "auth.password",
                                               f"users/{extension}", None,
                                               {"web_password": "********"}))
        return {"extension": extension, "web_password_set": True,
                "sessions": "ended: sign in again with the new password"}

    # ------------------------------------------------------------------ TOTP enrolment

    async def _totp_target(self, p: Principal, extension: str) -> tuple[bool, User]:
        """``(own, user)`` when ``p`` may manage the two factors of ``extension``: their
        own, or a user they manage (as for a web password)."""
        row, _ = await self._user(p, extension)
        own = extension == p.extension
        if not own and not may_manage_user(p, row):
            raise ApiError(403, [("extension", "you may manage your own two-factor sign-in, "
                                               "or that of the users you manage")])
        user = self.live.directory().user(extension)
        if user is None:
            raise ApiError(404, f"no user '{extension}'")
        return own, user

    async def totp_status(self, p: Principal, extension: str) -> dict[str, Any]:
        await self._totp_target(p, extension)
        record = await self.store.totp(extension)
        return {"extension": extension, "enabled": record is not None,
                "pending": await self.store.totp_pending(extension) is not None,
                "recovery_codes_left": len(record.recovery_hashes) if record else 0,
                "required": self.live.directory().system.require_2fa}

    async def totp_begin(self, p: Principal, extension: str, source: str) -> dict[str, Any]:
        import segno

        _, user = await self._totp_target(p, extension)
        if await self.store.totp(extension) is not None:
            raise ApiError(409, [("extension", "two-factor sign-in is already on: turn it off "
                                               "first (POST .../totp/disable)")])
        issuer = self.live.directory().system.domain
        secret, uri = await begin_totp(self.store, self.box, user, issuer, time.time())
        await self.store.write_audit(new_audit(p.actor, source, "auth.totp.begin",
                                               f"users/{extension}"))
        qr = segno.make(uri, error="m")
        return {"extension": extension, "secret": secret, "uri": uri,
                "qr": qr.svg_data_uri(scale=4),
                "next": f"POST /api/v1/users/{extension}/totp/confirm with a current code "
                        "from the app"}

    def _code(self, body: object, required: bool) -> str | None:
        if not isinstance(body, Mapping):
            raise ApiError(400, [("", "the body must be a JSON object")])
        unknown = sorted(str(k) for k in body if k != "code")
        code = body.get("code")
        errors = [(k, "unknown key") for k in unknown]
        if code is not None and not isinstance(code, str):
            errors.append(("code", "must be a string"))
        elif required and not code:
            errors.append(("code", "missing: a current code from the authenticator app"))
        if errors:
            raise ApiError(400, errors)
        return str(code) if code else None

    async def _limit_codes(self, extension: str, source: str, now: float) -> None:
        locked = await self.totp_limiter.locked(extension, source, now)
        if locked is not None:
            raise ApiError(429, "too many wrong codes; try again in "
                                f"{int(locked[1]) + 1} s",
                           {"Retry-After": str(int(locked[1]) + 1)})

    async def totp_confirm(self, p: Principal, extension: str, body: object,
                           source: str) -> dict[str, Any]:
        await self._totp_target(p, extension)
        code = self._code(body, required=True)
        assert code is not None
        now = time.time()
        await self._limit_codes(extension, source, now)
        try:
            codes = await confirm_totp(self.store, self.box, extension, code, now)
        except LookupError:
            raise ApiError(409, [("extension", "no enrolment begun: POST "
                                               f"/api/v1/users/{extension}/totp first")]) \
                from None
        if codes is None:
            await self.totp_limiter.failed(extension, source, now)
            raise ApiError(422, [("code", "not a current code of the secret being enrolled "
                                          "(check the app's clock)")])
        await self.totp_limiter.succeeded(extension)
        await self.store.write_audit(new_audit(p.actor, source, "auth.totp.enable",
                                               f"users/{extension}"))
        return {"extension": extension, "enabled": True, "recovery_codes": list(codes),
                "message": "each recovery code signs in once instead of a code; they are "
                           "shown this once"}

    async def totp_disable(self, p: Principal, extension: str, body: object,
                           source: str) -> dict[str, Any]:
        """One's own: with a current code (or a recovery code). Another user's: whoever
        manages them, without one (the user lost their phone)."""
        own, _ = await self._totp_target(p, extension)
        code = self._code(body, required=own)
        record = await self.store.totp(extension)
        if own and record is not None:
            assert code is not None
            now = time.time()
            await self._limit_codes(extension, source, now)
            if not await check_second_factor(self.store, self.box, record, code, now):
                await self.totp_limiter.failed(extension, source, now)
                raise ApiError(422, [("code", "not a current (unused) code, nor an unused "
                                              "recovery code")])
            await self.totp_limiter.succeeded(extension)
        was_on = await self.store.delete_totp(extension)
        await self.store.delete_totp_pending(extension)
        if was_on:
            await self.store.write_audit(new_audit(p.actor, source, "auth.totp.disable",
                                                   f"users/{extension}"))
        return {"extension": extension, "enabled": False, "was_enabled": was_on}

    # ------------------------------------------------------------------ welcome, reset

    async def welcome(self, p: Principal, extension: str, source: str) -> dict[str, Any]:
        row, data = await self._user(p, extension)
        if not may_manage_user(p, row):
            raise ApiError(403, "a welcome email is sent by whoever manages the user")
        directory = self.live.directory()
        user = directory.user(extension)
        if user is None:
            raise ApiError(404, f"no user '{extension}'")
        index = next(i for i, u in enumerate(data["users"]) if u.get("extension") == extension)
        sent_to = await send_welcome(self.store, directory.system, user, f"users[{index}]")
        await self.store.write_audit(new_audit(p.actor, source, "users.welcome",
                                               f"users/{extension}", None, {"to": sent_to}))
        return {"extension": extension, "sent_to": sent_to,
                "link_valid_hours": WELCOME_SECONDS // 3600}

    async def request_reset(self, body: object, source: str) -> dict[str, Any]:
        """Always the same answer, known account or not, email sent or not; the email goes
        out after the answer, so its time does not tell either."""
        if not isinstance(body, Mapping) or not isinstance(body.get("user"), str) or \
                not body["user"].strip():
            raise ApiError(400, [("user", "missing (an extension or an email)")])
        unknown = sorted(str(k) for k in body if k != "user")
        if unknown:
            raise ApiError(400, [(k, "unknown key") for k in unknown])
        identifier = body["user"].strip()
        now = time.time()
        locked = await self.reset_limiter.locked(identifier.lower(), source, now)
        if locked is not None and locked[0] == "source":
            raise ApiError(429, "too many reset requests from this address; try later",
                           {"Retry-After": str(int(locked[1]) + 1)})
        # every request counts
        await self.reset_limiter.failed(identifier.lower(), source, now)
        user = find_user(self.live.directory(), identifier)
        if locked is None and user is not None and not user.disabled and user.email:
            task = asyncio.create_task(self._send_reset(user, source))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return {"accepted": True, "message": "if the account exists and has an email address, "
                                             "a link has been sent to it"}

    async def _send_reset(self, user: User, source: str) -> None:
        system = self.live.directory().system
        if mail_ready(system, user, "user"):
            log.info("password reset not emailed: no smtp, admin_url or email",
                     extension=user.extension)
            return
        try:
            token = await issue_link(self.store, user.extension, time.time(), RESET_SECONDS)
            await send_email(system, build_reset(system, user, token))
            await self.store.write_audit(new_audit(f"user:{user.extension}", source,
                                                   "auth.reset_request",
                                                   f"users/{user.extension}", None,
                                                   {"to": user.email}))
        except Exception as exc:  # the answer is gone: the log is where a failure shows
            log.warning("password reset email failed", extension=user.extension,
                        error=f"{type(exc).__name__}")

    async def reset_password(self, token: str, body: object, source: str) -> dict[str, Any]:
        now = time.time()
        locked = await self.reset_limiter.locked(None, source, now)
        if locked is not None and locked[0] == "source":
            raise ApiError(429, "too many attempts from this address; try later",
                           {"Retry-After": str(int(locked[1]) + 1)})
        if not isinstance(body, Mapping) or not isinstance(body.get("password"), str):
            raise ApiError(400, [("password", "missing (a string)")])
        try:  # checked before the link is used up: a short password keeps the link
            hashed = hash_password(body["password"])
        except ValueError as exc:
            raise ApiError(422, [("password", str(exc))]) from None
        extension = await self.store.take_reset_token(sha256(token), now)
        if extension is None or self.live.directory().user(extension) is None:
            await self.reset_limiter.failed(None, source, now)
            raise ApiError(404, [("token", "this link is unknown, used or expired; ask for a "
                                           "new one")])
        await self.store.set_web_password(extension, hashed)
        await self.store.write_audit(new_audit(f"user:{extension}", source, "auth.reset",
                                               f"users/{extension}", None,
                                               {"web_password": "********"}))
        return {"extension": extension, "web_password_set": True,
                "sessions": "ended: sign in with the new password"}

    # ------------------------------------------------------------------ API keys, audit

    async def api_keys(self, p: Principal) -> list[dict[str, Any]]:
        self._owner(p)
        return [api_key_json(k) for k in await self.store.list_api_keys()]

    async def create_api_key(self, p: Principal, body: object, source: str) -> dict[str, Any]:
        self._owner(p)
        if not isinstance(body, Mapping):
            raise ApiError(400, [("", "the body must be a JSON object")])
        errors = [(k, "missing (a string)") for k in ("name", "role")
                  if not isinstance(body.get(k), str)]
        department = body.get("department", "")
        if not isinstance(department, str):
            errors.append(("department", "must be a string"))
        if errors:
            raise ApiError(400, errors)
        data = await self._data()
        if department and not any(d.get("name") == department for d in data["departments"]):
            raise ApiError(422, [("department", f"unknown department '{department}'")])
        try:
            record, key = await create_api_key(self.store, body["name"], body["role"],
                                               str(department))
        except ValueError as exc:
            field = "role" if "role" in str(exc) and body["role"] not in API_KEY_ROLES else (
                "department" if "department" in str(exc) else "name")
            raise ApiError(422, [(field, str(exc))]) from None
        await self.store.write_audit(new_audit(p.actor, source, "api_keys.create",
                                               f"api_keys/{record.id}", None,
                                               api_key_json(record)))
        return {**api_key_json(record), "key": key}

    async def revoke_api_key(self, p: Principal, key_id: str, source: str) -> dict[str, Any]:
        self._owner(p)
        if not await self.store.revoke_api_key(key_id, time.time()):
            raise ApiError(404, f"no live API key '{key_id}'")
        await self.store.write_audit(new_audit(p.actor, source, "api_keys.revoke",
                                               f"api_keys/{key_id}"))
        return {"revoked": key_id}

    def _owner(self, p: Principal) -> None:
        if p.role != "owner":
            raise ApiError(403, "only an owner manages API keys")

    async def audit(self, p: Principal, query: Mapping[str, str]) -> list[dict[str, Any]]:
        if not may_audit(p):
            raise ApiError(403, "the audit log is read by managers and owners")
        try:
            limit = int(query.get("limit", "100"))
        except ValueError:
            raise ApiError(400, [("limit", "must be an integer")]) from None
        if not 1 <= limit <= 1000:
            raise ApiError(400, [("limit", "must be between 1 and 1000")])
        entries = await self.store.list_audit(limit=limit, target=query.get("target") or None)
        return [audit_json(e) for e in entries]
