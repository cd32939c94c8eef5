"""``/api/v1`` on the admin HTTP listener: thin aiohttp handlers over
:mod:`provisioning.api.resources` and :mod:`provisioning.api.actions`.

One route table (:data:`ROUTES`) registers the handlers and generates the
OpenAPI document (``GET /api/v1/openapi.json``), so the two cannot drift.

Conventions: JSON in and out; every refusal is ``{"errors": [{"path",
"message"}]}``; every directory resource (a row, a table, the whole directory at
``/directory``, the CSV export) answers with ``ETag: "<revision>"``, the revision
of the whole directory, and every write to one needs ``If-Match`` (428 without it;
412 when the directory changed since, with the current ``"revision"`` in the body
and as the ``ETag``; ``If-Match: *`` overwrites whatever is there). A ``GET`` with
``If-None-Match`` naming the current revision answers 304 without a body. Live
state (a status, a password) is not part of the directory and takes no
``If-Match``. Nothing here logs a request body, so secrets never reach a log.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import hashlib
import json
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from media.wav import GREETING_MAX_BYTES, WavError, validate_greeting
from provisioning.api import schema as sch
from provisioning.api.actions import Actions
from provisioning.api.auth import Authenticator, Principal, seal_stored_totp
from provisioning.api.errors import ApiError
from provisioning.api.events import STREAM_SECONDS, EventHub, involved
from provisioning.api.live import Live
from provisioning.api.queues import queue_agents, queue_stats, set_queue_agent
from provisioning.api.resources import DirectoryApi, parse_if_match
from provisioning.directory import TABLE_KEYS
from provisioning.model import ROLES, STATUSES
from provisioning.secretbox import SecretBox
from provisioning.store import Store

__all__ = ["ROUTES", "Api", "openapi", "setup"]

log = structlog.get_logger("switchboard.api")
PREFIX = "/api/v1"

Handler = Callable[["Api", web.Request, Principal | None], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str  # under PREFIX, aiohttp form: /users/{key}
    handler: Handler
    summary: str
    roles: str  # who may call it, for the document
    response: sch.Schema | None = None
    body: sch.Schema | None = None
    write: bool = False  # a directory write: If-Match required
    public: bool = False  # no sign-in
    query: Mapping[str, tuple[sch.Schema, bool]] = field(default_factory=dict)
    errors: tuple[int, ...] = ()
    etag: bool = False
    body_media: str = ""  # default: JSON (merge patch for a PATCH)
    response_media: str = ""  # default: JSON (audio/wav when no response schema)
    ok: int = 0  # the success status; 0: 201 for a POST, else 200


class Api:
    def __init__(self, store: Store, live: Live, authenticator: Authenticator | None = None,
                 box: SecretBox | None = None) -> None:
        self.store = store
        self.live = live
        self.box = box or SecretBox.for_data_dir(live.data_dir)
        self.auth = authenticator or Authenticator(store, self.box)
        self.directory = DirectoryApi(store, live.reload)
        self.actions = Actions(store, live, self.box)
        self.events = EventHub(live)


def _source(request: web.Request) -> str:
    return request.remote or ""


def _json(data: object, status: int = 200, revision: int | None = None) -> web.Response:
    headers = {"ETag": f'"{revision}"'} if revision is not None else None
    return web.json_response(data, status=status, headers=headers)


async def _body(request: web.Request) -> object:
    if not request.can_read_body:
        raise ApiError(400, [("", "a JSON body is required")])
    try:
        return json.loads(await request.read())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, [("", f"the body is not JSON: {exc}")]) from None


# --------------------------------------------------------------------------- handlers


def _table_routes(table: str, label: str, roles_read: str, roles_write: str,
                  create: bool = True) -> list[Route]:
    key = "{key}"

    def _guard(p: Principal | None) -> Principal:
        assert p is not None
        if table == "trunks" and p.role != "owner":
            raise ApiError(403, "trunks are read and changed by owners only")
        return p

    async def list_(api: Api, request: web.Request, p: Principal | None) -> web.StreamResponse:
        p = _guard(p)
        rows, revision = await api.directory.list(p, table)
        return _json(rows, revision=revision)

    async def get(api: Api, request: web.Request, p: Principal | None) -> web.StreamResponse:
        p = _guard(p)
        row, revision = await api.directory.get(p, table, request.match_info["key"])
        return _json(row, revision=revision)

    async def post(api: Api, request: web.Request, p: Principal | None) -> web.StreamResponse:
        p = _guard(p)
        if_match = parse_if_match(request.headers.get("If-Match"))
        row, revision = await api.directory.create(p, table, await _body(request), if_match,
                                                   _source(request))
        return _json(row, 201, revision)

    async def patch(api: Api, request: web.Request, p: Principal | None) -> web.StreamResponse:
        p = _guard(p)
        if_match = parse_if_match(request.headers.get("If-Match"))
        row, revision = await api.directory.update(p, table, request.match_info["key"],
                                                   await _body(request), if_match,
                                                   _source(request))
        return _json(row, revision=revision)

    async def delete(api: Api, request: web.Request, p: Principal | None) -> web.StreamResponse:
        p = _guard(p)
        if_match = parse_if_match(request.headers.get("If-Match"))
        revision = await api.directory.delete(p, table, request.match_info["key"], if_match,
                                              _source(request))
        return _json({"deleted": request.match_info["key"]}, revision=revision)

    out = sch.output_schema(table)
    routes = [
        Route("GET", f"/{table}", list_, f"List the {label} you may see", roles_read,
              {"type": "array", "items": out}, etag=True),
        Route("GET", f"/{table}/{key}", get, f"One of the {label}", roles_read, out,
              errors=(404,), etag=True),
        Route("PATCH", f"/{table}/{key}", patch,
              f"Change one of the {label} (JSON merge patch, RFC 7396)", roles_write, out,
              body=sch.input_schema(table, patch=True), write=True,
              errors=(400, 404, 409, 412, 422, 428), etag=True),
        Route("DELETE", f"/{table}/{key}", delete, f"Delete one of the {label}", roles_write,
              {"type": "object", "properties": {"deleted": {"type": "string"}}}, write=True,
              errors=(404, 409, 412, 422, 428), etag=True),
    ]
    if create:
        routes.insert(1, Route("POST", f"/{table}", post, f"Create one of the {label}",
                               roles_write, out, body=sch.input_schema(table), write=True,
                               errors=(400, 409, 412, 422, 428), etag=True))
    return routes


async def _system_get(api: Api, request: web.Request, p: Principal | None) -> web.StreamResponse:
    assert p is not None
    if p.role not in ("manager", "owner"):
        raise ApiError(403, "the system table is read by managers and owners")
    row, revision = await api.directory.get(p, "system", "system")
    return _json(row, revision=revision)


async def _system_patch(api: Api, request: web.Request,
                        p: Principal | None) -> web.StreamResponse:
    assert p is not None
    if p.role != "owner":
        raise ApiError(403, "only an owner changes the system table")
    if_match = parse_if_match(request.headers.get("If-Match"))
    row, revision = await api.directory.update(p, "system", "system", await _body(request),
                                               if_match, _source(request))
    return _json(row, revision=revision)


async def _sign_in(api: Api, request: web.Request, p: Principal | None) -> web.StreamResponse:
    body = await _body(request)
    if not isinstance(body, Mapping):
        raise ApiError(400, [("", "the body must be a JSON object")])
    errors = [(k, "missing (a string)") for k in ("user", "password")
              if not isinstance(body.get(k), str) or not body.get(k)]
    code = body.get("code")
    if code is not None and not isinstance(code, str):
        errors.append(("code", "must be a string"))
    errors += [(str(k), "unknown key") for k in body if k not in ("user", "password", "code")]
    if errors:
        raise ApiError(400, errors)
    token, expires, user = await api.auth.sign_in(
        api.live.directory(), body["user"], body["password"], code, _source(request),
        time.time())
    log.info("signed in", extension=user.extension, source=_source(request))
    enrol = api.live.directory().system.require_2fa and \
        await api.store.totp(user.extension) is None
    return _json({"token": token, "expires": int(expires), "extension": user.extension,
                  "role": user.role, "enrol_2fa": enrol})


async def _sign_out(api: Api, request: web.Request, p: Principal | None) -> web.StreamResponse:
    assert p is not None
    if not p.token_hash:
        raise ApiError(400, "an API key is revoked by an owner, not signed out")
    await api.store.delete_session(p.token_hash)
    return _json({"signed_out": True})


async def _me(api: Api, request: web.Request, p: Principal | None) -> web.StreamResponse:
    assert p is not None
    return _json({"actor": p.actor, "role": p.role, "extension": p.extension or None,
                  "department": p.department or None, "enrol_2fa": p.enrol_only})


def _action(call: Callable[[Actions, web.Request, Principal], Awaitable[Any]],
            status: int = 200) -> Handler:
    async def handler(api: Api, request: web.Request, p: Principal | None) -> web.StreamResponse:
        assert p is not None
        return _json(await call(api.actions, request, p), status)
    return handler


def _action_public(call: Callable[[Actions, web.Request], Awaitable[Any]],
                   status: int = 200) -> Handler:
    async def handler(api: Api, request: web.Request, p: Principal | None) -> web.StreamResponse:
        return _json(await call(api.actions, request), status)
    return handler


async def _recording_get(api: Api, request: web.Request,
                         p: Principal | None) -> web.StreamResponse:
    assert p is not None
    path = await api.actions.recording_path(p, request.match_info["id"])
    return web.FileResponse(path, headers={"Content-Type": "audio/wav"})


# The admin listener caps a body at 64 KiB (engine/shell/admin_http.py HTTP_MAX_BODY, for
# JSON). A file route reads the stream itself, in chunks, up to its own cap: the cap
# holds per route without a second application or a change to the listener.
MAX_CSV = 4 * 1024 * 1024  # some 30 000 users


async def read_capped(request: web.Request, cap: int) -> bytes:
    """The body, refused (413, before reading it all) past ``cap`` bytes."""
    if request.content_length is not None and request.content_length > cap:
        raise ApiError(413, [("", f"the body is {request.content_length} bytes; at most "
                                  f"{cap} here")])
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.content.read(65536):
        size += len(chunk)
        if size > cap:
            raise ApiError(413, [("", f"the body is over {cap} bytes")])
        chunks.append(chunk)
    return b"".join(chunks)


async def _csv_text(request: web.Request) -> str:
    kind = request.content_type
    if kind not in ("text/csv", "text/plain", "application/csv"):
        raise ApiError(415, [("Content-Type", f"{kind!r}: send the file as text/csv")])
    raw = await read_capped(request, MAX_CSV)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, [("", f"the file is not UTF-8 (byte {exc.start}); save it as "
                                  "CSV UTF-8")]) from None


def _flag(request: web.Request, name: str) -> bool:
    value = request.query.get(name, "0")
    if value not in ("0", "1", "true", "false"):
        raise ApiError(400, [(name, f"{value!r}: 0 or 1")])
    return value in ("1", "true")


async def _users_import(api: Api, request: web.Request,
                        p: Principal | None) -> web.StreamResponse:
    assert p is not None
    dry_run = _flag(request, "dry_run")
    if_match = parse_if_match(request.headers.get("If-Match"))
    report, revision = await api.directory.import_users(p, await _csv_text(request), if_match,
                                                        _source(request), dry_run)
    return _json(report, revision=revision)


async def _users_copy(api: Api, request: web.Request, p: Principal | None) -> web.StreamResponse:
    assert p is not None
    if_match = parse_if_match(request.headers.get("If-Match"))
    row, revision = await api.directory.copy_user(p, request.match_info["extension"],
                                                  await _body(request), if_match,
                                                  _source(request))
    return _json(row, 201, revision)


async def _users_bulk(api: Api, request: web.Request, p: Principal | None) -> web.StreamResponse:
    assert p is not None
    if_match = parse_if_match(request.headers.get("If-Match"))
    result, revision = await api.directory.bulk_update(p, await _body(request), if_match,
                                                       _source(request))
    return _json(result, revision=revision)


_WAV_TYPES = ("audio/wav", "audio/x-wav", "audio/wave", "audio/vnd.wave")
GREETING_SLOTS = (*STATUSES, "voicemail")  # a status's greeting, or the mailbox's own


async def _greeting_put(api: Api, request: web.Request,
                        p: Principal | None) -> web.StreamResponse:
    """Store an uploaded greeting under the data dir, checked as the file is (PCM, 8 kHz,
    16-bit, mono, at most 10 MB), then set it through the one write path. The file is
    named by its content, so the directory write changes the value whenever the sound
    changes; a refused write removes the file it brought."""
    assert p is not None
    extension, slot = request.match_info["extension"], request.match_info["status"]
    if slot not in GREETING_SLOTS:
        raise ApiError(404, [("status", f"{slot!r} is not one of: {', '.join(GREETING_SLOTS)}")])
    if_match = parse_if_match(request.headers.get("If-Match"))
    await api.directory.get(p, "users", extension)  # 404 before reading what one may not see
    if request.content_type not in _WAV_TYPES:
        raise ApiError(415, [("Content-Type", f"{request.content_type!r}: send the greeting "
                                              "as audio/wav")])
    raw = await read_capped(request, GREETING_MAX_BYTES)
    if not raw:
        raise ApiError(400, [("", "the body is empty: send the WAV file")])
    name = f"greeting-{extension}-{slot}-{hashlib.sha256(raw).hexdigest()[:16]}.wav"
    final = api.live.data_dir / name
    existed = final.exists()
    part = final.with_name(f".{name}.{secrets.token_hex(4)}.part")
    await asyncio.to_thread(_write, part, raw)
    try:
        await asyncio.to_thread(validate_greeting, part)
    except WavError as exc:
        part.unlink(missing_ok=True)
        raise ApiError(422, [("", exc.problem)]) from None
    part.replace(final)
    patch: dict[str, Any] = ({"voicemail": {"greeting": name}} if slot == "voicemail" else
                             {"forwarding": {slot: {"greeting": name}}})
    try:
        row, revision = await api.directory.update(p, "users", extension, patch, if_match,
                                                   _source(request))
    except ApiError:
        if not existed:
            final.unlink(missing_ok=True)
        raise
    await _drop_replaced(api, extension, slot, name)
    return _json({"extension": extension, "status": slot, "greeting": name, "bytes": len(raw),
                  "user": row}, revision=revision)


async def _drop_replaced(api: Api, extension: str, slot: str, kept: str) -> None:
    """Earlier uploads for this slot, once nothing in the directory names them."""
    data, _ = await api.directory.snapshot()
    named = json.dumps(data["users"])
    for old in api.live.data_dir.glob(f"greeting-{extension}-{slot}-*.wav"):
        if old.name != kept and f'"{old.name}"' not in named:
            old.unlink(missing_ok=True)


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


async def _events(api: Api, request: web.Request, p: Principal | None) -> web.StreamResponse:
    """Server-Sent Events of what ``p`` may see (see :mod:`provisioning.api.events`)."""
    assert p is not None
    try:
        seconds = float(request.query.get("seconds", STREAM_SECONDS))
        last_id = int(request.headers.get("Last-Event-ID")
                      or request.query.get("last_event_id") or -1)
    except ValueError:
        raise ApiError(400, [("seconds", "a number of seconds; Last-Event-ID: an event id")]) \
            from None
    if not 1 <= seconds <= STREAM_SECONDS:
        raise ApiError(400, [("seconds", f"between 1 and {STREAM_SECONDS:g}")])
    seen = await api.actions.seen_extensions(p)
    hub = api.events
    if last_id < 0 or last_id > hub.last_id:
        last_id = hub.last_id  # a new listener starts from now
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})
    await response.prepare(request)
    await response.write(b"retry: 1000\n\n")
    hub.listen()
    deadline = time.monotonic() + seconds
    try:
        while (left := deadline - time.monotonic()) > 0 and not hub.closing:
            await hub.wait(min(left, 10.0))
            out = []
            for event_id, event in hub.after(last_id):
                last_id = event_id
                if seen is None or involved(event) & seen:
                    out.append(f"id: {event_id}\nevent: {event['type']}\n"
                               f"data: {json.dumps(event, ensure_ascii=False)}\n\n")
            await response.write(("".join(out) or ": keepalive\n\n").encode())
    except ConnectionResetError:
        pass  # the client went away
    finally:
        hub.leave()
    return response


async def _users_export(api: Api, request: web.Request,
                        p: Principal | None) -> web.StreamResponse:
    assert p is not None
    text, revision = await api.directory.export_users(p)
    return web.Response(text=text, content_type="text/csv", charset="utf-8", headers={
        "ETag": f'"{revision}"', "Content-Disposition": 'attachment; filename="users.csv"'})


async def _directory(api: Api, request: web.Request, p: Principal | None) -> web.StreamResponse:
    assert p is not None
    tables, revision = await api.directory.export(p)
    return _json(tables, revision=revision)


async def _openapi(api: Api, request: web.Request, p: Principal | None) -> web.StreamResponse:
    return web.Response(body=_openapi_text(), content_type="application/json")


_EXT = "{extension}"
_ANY = "any signed-in user"
_QUEUE_SEE = "the queue's agents; receptionist, department_admin: their department's; " \
    "manager, owner"
_OBJ: sch.Schema = {"type": "object"}
_STATUS_OUT = sch.obj({"extension": {"type": "string"}, "status": sch.enum(STATUSES),
                       "configured": sch.enum(STATUSES), "live": sch.BOOLEAN})
_STATUS_OUT["additionalProperties"] = True
_LIST: sch.Schema = {"type": "array", "items": {"type": "object"}}
_TOTP_WHO = "self; those one manages (as for a web password)"
_TOTP_STATUS = sch.obj({"extension": {"type": "string"}, "enabled": sch.BOOLEAN,
                        "pending": sch.BOOLEAN, "recovery_codes_left": {"type": "integer"},
                        "required": sch.BOOLEAN})
_STRINGS: sch.Schema = {"type": "array", "items": {"type": "string"}}
# a user as returned (its additionalProperties are open) and the generated secrets
_COPY_OUT: sch.Schema = {"allOf": [sch.output_schema("users"), {
    "type": "object", "properties": {"sip_password": {"type": "string"},
                                     "voicemail_pin": {"type": "string"}},
    "required": ["sip_password", "voicemail_pin"]}]}
_BULK_OUT = sch.obj({"changed": {"type": "object", "additionalProperties": {
    "type": "array", "items": {"type": "string"}}}, "unchanged": {
    "type": "array", "items": {"type": "string"}}})
_BULK_SET: sch.Schema = {**sch.input_schema("users", patch=True), "minProperties": 1}
_BULK_SET["properties"] = {k: v for k, v in _BULK_SET["properties"].items()
                           if k not in ("extension", "password", "voicemail_pin")}
_IMPORT_OUT = sch.obj({"added": _STRINGS, "changed": {
    "type": "object", "additionalProperties": _STRINGS,
    "description": "extension -> the keys that change"}, "unchanged": _STRINGS,
    "ignored_columns": _STRINGS, "dry_run": sch.BOOLEAN})

ROUTES: list[Route] = [
    Route("POST", "/auth/token", _sign_in, "Sign in: a bearer token", "anyone", sch.obj({
        "token": {"type": "string"}, "expires": {"type": "integer",
                                                 "description": "epoch seconds"},
        "extension": {"type": "string"}, "role": sch.enum(ROLES),
        "enrol_2fa": {"type": "boolean", "description": "[system] require_2fa and no TOTP "
                      "yet: this token is good for enrolling only"}}),
          body=sch.obj({"user": {"type": "string", "minLength": 1,
                                 "description": "extension or email"},
                        "password": {"type": "string", "minLength": 1},
                        "code": {"type": "string", "description": "TOTP or recovery code"}},
                       ["user", "password"]), public=True, errors=(400, 401, 429)),
    Route("POST", "/auth/reset", _action_public(
        lambda a, r: _with_body(r, lambda b: a.request_reset(b, _source(r))), 202),
          "Ask for a password-reset email: always 202, whether the account exists or not",
          "anyone", sch.obj({"accepted": sch.BOOLEAN, "message": {"type": "string"}}),
          body=sch.obj({"user": {"type": "string", "minLength": 1,
                                 "description": "extension or email"}}, ["user"]),
          public=True, errors=(400, 429), ok=202),
    Route("POST", "/auth/reset/{token}", _action_public(
        lambda a, r: _with_body(r, lambda b: a.reset_password(r.match_info["token"], b,
                                                               _source(r)))),
          "Set the web password with a one-time link (from a reset or welcome email)",
          "whoever holds the link", _OBJ,
          body=sch.obj({"password": {"type": "string"}}, ["password"]),
          public=True, errors=(400, 404, 422, 429), ok=200),
    Route("DELETE", "/auth/token", _sign_out, "Sign out (end this token)", _ANY,
          sch.obj({"signed_out": sch.BOOLEAN}), errors=(400,)),
    Route("GET", "/me", _me, "Who the credential is", _ANY, _OBJ),
    Route("GET", "/openapi.json", _openapi, "This document", "anyone", _OBJ, public=True),
    Route("GET", "/directory", _directory,
          "Every table at once, each with the rows one may see (as the table's own list), "
          "at one revision: the ETag", "as each table's list", sch.obj({
              "system": sch.output_schema("system"),
              **{table: {"type": "array", "items": sch.output_schema(table)}
                 for table in TABLE_KEYS}}, list(TABLE_KEYS)), etag=True),
    Route("GET", "/system", _system_get, "The system table", "manager, owner",
          sch.output_schema("system"), etag=True),
    Route("PATCH", "/system", _system_patch, "Change the system table (merge patch)", "owner",
          sch.output_schema("system"), body=sch.input_schema("system", patch=True), write=True,
          errors=(400, 409, 412, 422, 428), etag=True),
    # before the users table's routes: /users/{key} would take /users/export.csv
    Route("POST", "/users/import", _users_import,
          "Create or change users from a CSV in a 3CX user export's columns (all or nothing; "
          "?dry_run=1 only reports; never deletes)",
          "department_admin: their department; manager: all but owners; owner",
          _IMPORT_OUT, body={"type": "string"}, body_media="text/csv", write=True,
          query={"dry_run": (sch.enum(("0", "1", "true", "false")), False)},
          errors=(400, 403, 409, 412, 413, 415, 422, 428), etag=True, ok=200),
    Route("POST", f"/users/{_EXT}/welcome", _action(
        lambda a, r, p: a.welcome(p, r.match_info["extension"], _source(r))),
          "Email the user their extension, SIP credentials and a link to choose their web "
          "password", "department_admin: their department; manager: all but owners; owner",
          sch.obj({"extension": {"type": "string"}, "sent_to": {"type": "string"},
                   "link_valid_hours": {"type": "integer"}}),
          errors=(403, 404, 422, 502), ok=200),
    Route("PUT", f"/users/{_EXT}/greetings/{{status}}", _greeting_put,
          "Upload a greeting (audio/wav: PCM, 8 kHz, 16-bit, mono, at most 10 MB) for a "
          "status, or for the mailbox (status: voicemail); stored under the data dir and set "
          "through the one write path", "as PATCH /users/{key} on the greeting: the user; "
          "those who manage them", _OBJ, body={"type": "string", "format": "binary"},
          body_media="audio/wav", write=True,
          errors=(400, 403, 404, 409, 412, 413, 415, 422, 428), etag=True, ok=200),
    Route("GET", "/users/export.csv", _users_export,
          "The users one may see as CSV in a 3CX user export's columns (AuthPassword and PIN "
          "always empty)", "department_admin: their department; manager, owner",
          {"type": "string"}, response_media="text/csv", etag=True),
    Route("PATCH", "/users", _users_bulk,
          "One merge patch on many users, all or nothing (one revision, an audit entry per "
          "user); no secrets, no extension", "as PATCH /users/{key}, for every user listed",
          _BULK_OUT, body=sch.obj({
              "extensions": {"type": "array", "minItems": 1, "uniqueItems": True,
                             "items": {"type": "string", "minLength": 1}},
              "set": _BULK_SET},
              ["extensions", "set"]),
          write=True, errors=(400, 404, 409, 412, 422, 428), etag=True),
    Route("POST", f"/users/{_EXT}/copy", _users_copy,
          "A new user with this one's settings (department, role, rights, codecs, forwarding, "
          "schedule, voicemail options); the generated SIP password and voicemail PIN are in "
          "this answer only", "as POST /users (and one must see the user copied)",
          _COPY_OUT, body=sch.obj({"extension": {"type": "string", "minLength": 1},
                                   "name": {"type": "string", "minLength": 1},
                                   "email": {"type": "string"},
                                   "mobile": {"type": "string"}}, ["extension", "name"]),
          write=True, errors=(400, 404, 409, 412, 422, 428), etag=True),
    *_table_routes("users", "users", "user: self; receptionist, department_admin: their "
                   "department; manager, owner: all", "user, receptionist: own forwarding, "
                   "schedule, greetings, PIN; department_admin: their department; manager: "
                   "all but owners; owner"),
    *_table_routes("numbers", "numbers", "department_admin: their department's; manager, "
                   "owner", "department_admin: routing of their department's; manager, owner"),
    *_table_routes("departments", "departments", "their own; manager, owner: all",
                   "department_admin: their hours and holidays; manager, owner"),
    *_table_routes("ring_groups", "ring groups", "members, their department; manager, owner",
                   "department_admin: their department's; manager, owner"),
    *_table_routes("ivrs", "IVRs (digital receptionists)", "receptionist, department_admin: "
                   "their department's; manager, owner", "department_admin: their "
                   "department's; owner"),
    *_table_routes("queues", "call queues", "agents, their department; manager, owner",
                   "department_admin: their department's; owner"),
    *_table_routes("trunks", "trunks", "owner", "owner"),
    Route("GET", "/queues/{key}/stats", _action(
        lambda a, r, p: queue_stats(a.live, p, r.match_info["key"])),
          "A queue's figures now, for a wallboard (callers waiting, longest wait, agents "
          "logged in/idle/on a call, answered, abandoned, within the service level, average "
          "wait and talk)", _QUEUE_SEE, _OBJ, errors=(403, 404)),
    Route("GET", "/queues/{key}/agents", _action(
        lambda a, r, p: queue_agents(a.live, p, r.match_info["key"])),
          "Each agent of a queue: logged in, and its state (idle, ringing, on_call, wrap_up)",
          _QUEUE_SEE, _OBJ, errors=(403, 404)),
    Route("PUT", "/queues/{key}/agents/" + _EXT, _action(
        lambda a, r, p: _with_body(r, lambda b: set_queue_agent(
            a.live, p, r.match_info["key"], r.match_info["extension"], b))),
          "Log an agent in to or out of a queue (as *62/*63 from their phone)",
          "the agent; department_admin: their department's agents; owner", _OBJ,
          body=sch.obj({"logged_in": sch.BOOLEAN}, ["logged_in"]),
          errors=(400, 403, 404, 422)),
    Route("GET", "/statuses", _action(lambda a, r, p: a.statuses(p)),
          "Effective statuses of the users one may see", _ANY, _LIST),
    Route("GET", f"/users/{_EXT}/status", _action(
        lambda a, r, p: a.status(p, r.match_info["extension"])), "A user's status", _ANY,
          _STATUS_OUT, errors=(404,)),
    Route("PUT", f"/users/{_EXT}/status", _action(
        lambda a, r, p: _with_body(r, lambda b: a.set_status(p, r.match_info["extension"], b,
                                                            _source(r)))),
          "Set a user's live status (as `switchboard status set`)",
          "self; receptionist, department_admin: their department; manager, owner",
          _STATUS_OUT, body=sch.obj({"status": sch.enum(STATUSES)}, ["status"]),
          errors=(400, 403, 404, 422)),
    Route("DELETE", f"/users/{_EXT}/status", _action(
        lambda a, r, p: a.clear_status(p, r.match_info["extension"], _source(r))),
          "Drop the live status (the directory's or the schedule's applies)",
          "as PUT", _STATUS_OUT, errors=(403, 404)),
    Route("PUT", f"/users/{_EXT}/password", _action(
        lambda a, r, p: _with_body(r, lambda b: a.set_password(p, r.match_info["extension"], b,
                                                              _source(r)))),
          "Set a web password (ends the user's sessions)",
          "self (with current_password); those one manages", _OBJ,
          body=sch.obj({"password": {"type": "string"},
                        "current_password": {"type": "string"}}, ["password"]),
          errors=(400, 403, 404, 422)),
    Route("GET", f"/users/{_EXT}/totp", _action(
        lambda a, r, p: a.totp_status(p, r.match_info["extension"])),
          "Whether two-factor sign-in (TOTP) is on, begun, and how many recovery codes are "
          "left", _TOTP_WHO, _TOTP_STATUS, errors=(403, 404)),
    Route("POST", f"/users/{_EXT}/totp", _action(
        lambda a, r, p: a.totp_begin(p, r.match_info["extension"], _source(r)), 201),
          "Begin TOTP enrolment (RFC 6238): a new secret, its otpauth URI and a QR code "
          "(an SVG data URI), shown this once; sign-in is unchanged until confirmed",
          _TOTP_WHO, sch.obj({"extension": {"type": "string"}, "secret": {"type": "string"},
                              "uri": {"type": "string"}, "qr": {"type": "string"},
                              "next": {"type": "string"}}),
          errors=(403, 404, 409)),
    Route("POST", f"/users/{_EXT}/totp/confirm", _action(
        lambda a, r, p: _with_body(r, lambda b: a.totp_confirm(p, r.match_info["extension"],
                                                              b, _source(r)))),
          "Confirm the enrolment with a current code: TOTP is on; the recovery codes are in "
          "this answer only", _TOTP_WHO,
          sch.obj({"extension": {"type": "string"}, "enabled": sch.BOOLEAN,
                   "recovery_codes": _STRINGS, "message": {"type": "string"}}),
          body=sch.obj({"code": {"type": "string", "minLength": 1}}, ["code"]),
          errors=(400, 403, 404, 409, 422, 429), ok=200),
    Route("POST", f"/users/{_EXT}/totp/disable", _action(
        lambda a, r, p: _with_body(r, lambda b: a.totp_disable(p, r.match_info["extension"],
                                                              b, _source(r)))),
          "Turn TOTP off: one's own with a current code (or a recovery code); another's by "
          "whoever manages them", _TOTP_WHO,
          sch.obj({"extension": {"type": "string"}, "enabled": sch.BOOLEAN,
                   "was_enabled": sch.BOOLEAN}),
          body=sch.obj({"code": {"type": "string"}}),
          errors=(400, 403, 404, 422, 429), ok=200),
    Route("GET", f"/users/{_EXT}/voicemail", _action(
        lambda a, r, p: a.voicemail(p, r.match_info["extension"])),
          "A mailbox's messages", "its user; owner", _LIST, errors=(403, 404)),
    Route("DELETE", f"/users/{_EXT}/voicemail/{{id}}", _action(
        lambda a, r, p: a.delete_voicemail(p, r.match_info["extension"], r.match_info["id"],
                                           _source(r))),
          "Delete a message", "its user; owner", _OBJ, errors=(403, 404)),
    Route("GET", "/events", _events,
          "Live events as Server-Sent Events: status, registration (up/down), call.started, "
          "call.answered, call.ended. A stream lasts at most 25 s (seconds=) and asks to be "
          "reopened with Last-Event-ID", "as /statuses, /registrations, /calls: a user their "
          "own; receptionist, department_admin their department; manager, owner all",
          {"type": "string"}, response_media="text/event-stream",
          query={"seconds": ({"type": "string", "pattern": "^[0-9]+(\\.[0-9]+)?$"}, False),
                 "last_event_id": ({"type": "string", "pattern": "^[0-9]+$"}, False)},
          errors=(400,)),
    Route("GET", "/registrations", _action(lambda a, r, p: a.registrations(p)),
          "Live registrations one may see", _ANY, _LIST),
    Route("GET", "/calls", _action(lambda a, r, p: a.calls(p)),
          "Calls in progress one may see", _ANY, _LIST),
    Route("GET", "/route/explain", _action(lambda a, r, p: a.explain(p, r.query)),
          "The plan of a call that has not happened",
          "manager, owner; others: calls to what they manage", _OBJ,
          query={"from": ({"type": "string", "minLength": 1}, True),
                 "to": ({"type": "string", "minLength": 1}, True),
                 "at": ({"type": "string"}, False), "status": (sch.enum(STATUSES), False),
                 "preferred_identity": ({"type": "string"}, False)},
          errors=(400, 403)),
    Route("GET", "/recordings", _action(lambda a, r, p: a.recordings(p)),
          "Call recordings one may see", "own; department_admin: department's; manager, "
          "owner: all", _LIST),
    Route("GET", "/recordings/{id}", _recording_get, "A recording's WAV", "as the list",
          None, errors=(404,)),
    Route("DELETE", "/recordings/{id}", _action(
        lambda a, r, p: a.delete_recording(p, r.match_info["id"], _source(r))),
          "Delete a recording", "manager, owner", _OBJ, errors=(400, 403, 404)),
    Route("GET", "/apikeys", _action(lambda a, r, p: a.api_keys(p)), "API keys", "owner",
          _LIST, errors=(403,)),
    Route("POST", "/apikeys", _action(
        lambda a, r, p: _with_body(r, lambda b: a.create_api_key(p, b, _source(r))), 201),
          "Create an API key (the key is in this answer only)", "owner", _OBJ,
          body=sch.obj({"name": {"type": "string"}, "role": sch.enum(("department_admin",
                                                                      "manager", "owner")),
                        "department": {"type": "string"}}, ["name", "role"]),
          errors=(400, 403, 422)),
    Route("DELETE", "/apikeys/{id}", _action(
        lambda a, r, p: a.revoke_api_key(p, r.match_info["id"], _source(r))),
          "Revoke an API key", "owner", _OBJ, errors=(403, 404)),
    Route("GET", "/audit", _action(lambda a, r, p: a.audit(p, r.query)),
          "The audit log, newest first", "manager, owner", _LIST,
          query={"limit": ({"type": "string", "pattern": "^[0-9]+$"}, False),
                 "target": ({"type": "string"}, False)}, errors=(400, 403)),
]


async def _with_body(request: web.Request, call: Callable[[object], Awaitable[Any]]) -> Any:
    return await call(await _body(request))


# --------------------------------------------------------------------------- wiring


def _wrap(api: Api, route: Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handler(request: web.Request) -> web.StreamResponse:
        try:
            principal = None
            if not route.public:
                principal = await api.auth.principal(request.headers.get("Authorization", ""),
                                                     api.live.directory(), time.time())
                if principal.enrol_only and not _enrolling(route, request, principal):
                    raise ApiError(403, "two-factor sign-in is required on this system: enrol "
                                        f"first (POST {PREFIX}/users/{principal.extension}/"
                                        "totp, then .../totp/confirm with a code); until "
                                        "then this token is good for that only")
            response = await route.handler(api, request, principal)
            if route.etag and route.method == "GET" and _not_modified(
                    request.headers.get("If-None-Match"), response.headers.get("ETag")):
                return web.Response(status=304, headers={"ETag": response.headers["ETag"]})
            return response
        except ApiError as exc:
            return web.json_response(exc.body(), status=exc.status, headers=exc.headers)
        except (web.HTTPException, TimeoutError):
            raise
        except Exception:  # logged with the route, never with the body (secrets)
            log.exception("admin API request failed", method=route.method, route=route.path)
            return web.json_response(ApiError(500, "internal error (logged)").body(),
                                     status=500)
    return handler


def _not_modified(if_none_match: str | None, etag: str | None) -> bool:
    """``If-None-Match`` names ``etag`` (weak comparison, RFC 9110 s13.1.2), or is ``*``."""
    if if_none_match is None or etag is None:
        return False
    tags = [tag.strip().removeprefix("W/") for tag in if_none_match.split(",")]
    return "*" in tags or etag.removeprefix("W/") in tags


#: What a token of a user who must enrol first ([system] require_2fa) may call: its
#: own enrolment, who it is, and sign-out.
ENROL_ONLY: frozenset[tuple[str, str]] = frozenset({
    ("GET", "/me"), ("DELETE", "/auth/token"), ("GET", "/users/{extension}/totp"),
    ("POST", "/users/{extension}/totp"), ("POST", "/users/{extension}/totp/confirm")})


def _enrolling(route: Route, request: web.Request, p: Principal) -> bool:
    own = request.match_info.get("extension", p.extension) == p.extension
    return (route.method, route.path) in ENROL_ONLY and own


def setup(app: web.Application, store: Store, live: Live) -> Api:
    """Register ``/api/v1`` on the admin application."""
    api = Api(store, live)

    async def seal_seeds(_: web.Application) -> None:
        sealed = await seal_stored_totp(store, api.box)
        if sealed:
            log.info("TOTP seeds sealed in the store", count=sealed, key_id=api.box.key_id)
    app.on_startup.append(seal_seeds)
    for route in ROUTES:
        app.router.add_route(route.method, PREFIX + route.path, _wrap(api, route))
    # A fixed path under a parameterised one (/users/import under /users/{key}) would
    # otherwise answer another method with a 405 that offers the parameterised
    # resource's methods too: answer it here, with the methods of this path only.
    fixed: dict[str, list[str]] = {}
    for route in ROUTES:
        if "{" not in route.path:
            fixed.setdefault(route.path, []).append(route.method)
    for path, methods in fixed.items():
        app.router.add_route("*", PREFIX + path, _not_allowed(methods))

    async def stop_events(_: web.Application) -> None:
        await api.events.close()  # open streams would hold the shutdown for 25 s
    app.on_shutdown.append(stop_events)
    return api


def _not_allowed(methods: list[str]) -> Callable[[web.Request],
                                                 Awaitable[web.StreamResponse]]:
    allow = ",".join(sorted(set(methods)))

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.json_response(ApiError(405, [("", f"{request.method}: this resource "
                                                     f"takes {allow}")]).body(),
                                 status=405, headers={"Allow": allow})
    return handler


# --------------------------------------------------------------------------- OpenAPI


_ERROR = {"$ref": "#/components/schemas/Errors"}
_REASONS = {400: "Bad request (named by field)", 401: "Not signed in, or a bad credential",
            403: "Not allowed for this role (the fields are named)", 404: "Not found",
            409: "The store has no directory yet",
            412: "The directory changed since it was read (If-Match)",
            422: "Refused by the directory's validation: every error named by field",
            413: "The body is too large", 415: "Not the media type this route takes",
            428: "A write needs If-Match", 429: "Too many attempts: wait (Retry-After)",
            502: "The SMTP relay did not take the email"}


def openapi() -> dict[str, Any]:
    """The OpenAPI 3.1 document of :data:`ROUTES`: the routes' own schemas, with every
    schema of :func:`provisioning.api.schema.components` (found by value) replaced by a
    ``$ref`` to it under ``components/schemas``."""
    return copy.deepcopy(_openapi_document())


@functools.cache
def _openapi_text() -> bytes:
    return json.dumps(_openapi_document(), separators=(",", ":")).encode()


@functools.cache
def _openapi_document() -> dict[str, Any]:
    shared = sch.components()
    names: dict[str, str] = {}
    for name, schema in shared.items():
        names.setdefault(_key(schema), name)
    document = _inline_openapi()
    document["paths"] = _with_refs(document["paths"], names, "")
    schemas = document["components"]["schemas"]
    for name, schema in shared.items():
        schemas[name] = _with_refs(schema, names, name)
    return document


def _key(schema: object) -> str:
    return json.dumps(schema, sort_keys=True)


def _with_refs(node: Any, names: Mapping[str, str], own: str) -> Any:
    """``node`` with each shared schema found in it (not ``own``, the one being
    written out) replaced by its ``$ref``."""
    if isinstance(node, dict):
        if "type" in node or "oneOf" in node or "anyOf" in node:
            name = names.get(_key(node))
            if name is not None and name != own:
                return {"$ref": f"#/components/schemas/{name}"}
        return {k: _with_refs(v, names, own) for k, v in node.items()}
    if isinstance(node, list):
        return [_with_refs(v, names, own) for v in node]
    return node


def _inline_openapi() -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        item = paths.setdefault(PREFIX + route.path, {})
        params: list[dict[str, Any]] = []
        for name in _path_params(route.path):
            params.append({"name": name, "in": "path", "required": True,
                           "schema": {"type": "string", "minLength": 1}})
        for name, (schema, required) in route.query.items():
            params.append({"name": name, "in": "query", "required": required,
                           "schema": schema})
        if route.etag and route.method == "GET":
            params.append({"$ref": "#/components/parameters/IfNoneMatch"})
        if route.write:
            params.append({"$ref": "#/components/parameters/IfMatch"})
        ok = route.ok or (201 if route.method == "POST" and route.path != "/auth/token"
                          else 200)
        content: dict[str, Any] = ({"audio/wav": {"schema": {"type": "string",
                                                              "format": "binary"}}}
                                   if route.response is None else
                                   {route.response_media or "application/json":
                                    {"schema": route.response}})
        responses: dict[str, Any] = {str(ok): {"description": "OK", "content": content}}
        if route.etag:
            responses[str(ok)]["headers"] = {"ETag": {"$ref": "#/components/headers/ETag"}}
            if route.method == "GET":
                responses["304"] = {"$ref": "#/components/responses/NotModified"}
        codes = set(route.errors) | ({401} if not route.public else set())
        if not route.public:
            codes |= {403}
        for code in sorted(codes | {400} if route.body is not None else codes):
            responses[str(code)] = {"$ref": f"#/components/responses/Error{code}"}
        operation: dict[str, Any] = {
            "summary": route.summary, "description": f"Who: {route.roles}.",
            "operationId": _operation_id(route), "parameters": params, "responses": responses,
        }
        if route.body is not None:
            media = route.body_media or ("application/merge-patch+json"
                                         if route.method == "PATCH" else "application/json")
            operation["requestBody"] = {"required": True,
                                        "content": {media: {"schema": route.body}}}
        operation["security"] = [] if route.public else [{"bearer": []}]
        item[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "Switchboard admin API", "version": "1",
                 "description": "The directory's tables, live statuses, registrations, calls "
                                "and routing of a Switchboard engine. Writes to the directory "
                                "are validated whole, as the directory file is."},
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "a sign-in token or an API key"}},
            "parameters": {
                "IfMatch": {"name": "If-Match", "in": "header", "required": True,
                            "description": 'the ETag read ("42"), or * to overwrite',
                            "schema": {"type": "string", "minLength": 1}},
                "IfNoneMatch": {"name": "If-None-Match", "in": "header", "required": False,
                                "description": 'the ETag read ("42"): 304 while the '
                                               "directory is still at that revision",
                                "schema": {"type": "string"}},
            },
            "headers": {"ETag": {"schema": {"type": "string"},
                                 "description": "the directory revision"}},
            "responses": {
                "NotModified": {"description": "Not modified: the directory is still at the "
                                               "revision If-None-Match names",
                                "headers": {"ETag": {"$ref": "#/components/headers/ETag"}}},
                **{f"Error{code}": {"description": reason, "content": {
                    "application/json": {"schema": _ERROR}}}
                   for code, reason in sorted(_REASONS.items())},
            },
            "schemas": {"Errors": sch.obj({"errors": {"type": "array", "items": sch.obj({
                "path": {"type": "string"}, "message": {"type": "string"}},
                ["path", "message"])}, "revision": {
                    "type": "integer", "description": "412: the directory's current revision "
                                                      "(also the ETag)"}}, ["errors"])},
        },
    }


def _path_params(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{")]


def _operation_id(route: Route) -> str:
    words = [w.strip("{}") for w in route.path.split("/") if w]
    return route.method.lower() + "_" + "_".join(words).replace(".", "_")
