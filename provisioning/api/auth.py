"""Who calls the admin API: web passwords, sign-in tokens, API keys, TOTP.

- **Web passwords** are separate from SIP digest secrets (a phone's password is
  typed into phones and provisioning files; the web one into a browser) and
  kept as argon2id hashes (argon2-cffi's defaults).
- **Tokens** are 32 random bytes, returned once by ``POST /api/v1/auth/token``;
  the store keeps their SHA-256 with the user and an expiry (8 hours). A new
  web password, a deleted or disabled user, or sign-out ends them.
- **API keys** (``sbk_<id>_<secret>``) belong to integrations: a role (and a
  department for ``department_admin``), revocable, shown once.
- **TOTP** (RFC 6238, 30 s steps, 6 digits, one step of clock drift either
  way): a code is accepted once (the store remembers the last step used); ten
  one-time recovery codes (kept as SHA-256) are given when enrolment is
  confirmed. Seeds are sealed in the store (:mod:`provisioning.secretbox`).
  With ``[system] require_2fa`` a user without TOTP who signs in gets a token
  good for enrolling only (:data:`ENROL_ONLY`).
- **Failed sign-ins** are limited per account and per source address, counted
  in the store (:class:`AttemptLimiter`), so nodes sharing a store share the
  counts; the account key is the identifier as typed when it names no user,
  so a locked account and an unknown one answer alike.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import secrets
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

import pyotp
import structlog
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from provisioning.api.errors import ApiError
from provisioning.model import ROLES, ApiKey, AuditEntry, Directory, Role, Session, TotpRecord, User
from provisioning.secretbox import SecretBox, SecretBoxError
from provisioning.store import Store

__all__ = [
    "API_KEY_ROLES",
    "MIN_PASSWORD_LENGTH",
    "TOKEN_SECONDS",
    "AttemptLimiter",
    "Authenticator",
    "Principal",
    "begin_totp",
    "check_second_factor",
    "confirm_totp",
    "create_api_key",
    "enrol_totp",
    "find_user",
    "hash_password",
    "new_audit",
    "seal_stored_totp",
    "sha256",
]

log = structlog.get_logger("switchboard.api")

TOKEN_SECONDS = 8 * 3600
MIN_PASSWORD_LENGTH = 10
MAX_PASSWORD_LENGTH = 256
RECOVERY_CODES = 10
#: Roles an API key may carry: an integration acts for the system or a department,
#: never as one person (a ``user`` key would have no "own" records).
API_KEY_ROLES: tuple[Role, ...] = ("department_admin", "manager", "owner")
API_KEY_PREFIX = "sbk_"

_hasher = PasswordHasher()


@functools.cache
def _dummy_hash() -> str:
    """Verified when the account is unknown, so an unknown account costs the same time
    as a wrong password. Made by the first sign-in, known account or not (so the first
    costs the same either way), not on import: every engine start and CLI command
    imports this module, and one argon2 hash is a quarter of a second of CPU."""
    return _hasher.hash(secrets.token_hex(16))


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def hash_password(password: str) -> str:
    """An argon2id hash of a web password; ValueError when it is too short or long."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValueError(f"a web password needs at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise ValueError(f"a web password has at most {MAX_PASSWORD_LENGTH} characters")
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def new_audit(actor: str, source: str, action: str, target: str,
              before: Mapping[str, object] | None = None,
              after: Mapping[str, object] | None = None) -> AuditEntry:
    return AuditEntry(id=uuid.uuid4().hex, at=time.time(), actor=actor, source=source,
                      action=action, target=target, before=before, after=after)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who makes a request: ``actor`` names them in the audit log (``user:101``,
    ``api_key:<id>``); a user's role and department are read from the live
    directory at each request, so a role change applies at once."""

    actor: str
    role: Role
    extension: str = ""
    department: str = ""
    token_hash: str = ""  # the session's, for sign-out
    # [system] require_2fa and no TOTP yet: this token enrols its user, nothing else
    enrol_only: bool = False


def find_user(directory: Directory, identifier: str) -> User | None:
    """The user an identifier names: an extension, or an email (any case)."""
    user = directory.user(identifier)
    if user is not None:
        return user
    wanted = identifier.strip().lower()
    if "@" not in wanted:
        return None
    return next((u for u in directory.users if u.email and u.email.lower() == wanted), None)


# --------------------------------------------------------------------------- the limiter


class AttemptLimiter:
    """Failed attempts per account and per source address, counted in the store.

    Every node sharing the store counts the same attempts: a guesser who spreads
    tries over the nodes behind a balancer meets the same limits as one who does
    not. ``account_limit`` failures within ``window`` seconds (of the first) lock
    the account for ``lock_seconds``; ``source_limit`` failures from one address
    block that address as long. A success clears the account's failures (not the
    source's: a guesser who owns one account must not reset its count). ``scope``
    keeps the sign-in and the reset counts apart.
    """

    def __init__(self, store: Store, scope: str, *, account_limit: int = 5,
                 source_limit: int = 20, window: float = 900.0,
                 lock_seconds: float = 900.0) -> None:
        self.store = store
        self.scope = scope
        self.account_limit = account_limit
        self.source_limit = source_limit
        self.window = window
        self.lock_seconds = lock_seconds

    @staticmethod
    def _key(kind: str, value: str) -> str:
        return sha256(f"{kind}:{value}")

    async def locked(self, account: str | None, source: str,
                     now: float) -> tuple[str, float] | None:
        """``("account" | "source", seconds left)`` when an attempt must be refused."""
        keys = {"source": self._key("source", source)}
        if account is not None:
            keys["account"] = self._key("account", account)
        found = await self.store.attempts_locked(self.scope, list(keys.values()), now)
        for kind in ("source", "account"):
            if kind in keys and keys[kind] in found:
                return kind, found[keys[kind]] - now
        return None

    async def failed(self, account: str | None, source: str, now: float) -> None:
        """Count a failure; ``account`` None counts the source only."""
        if account is not None:
            await self.store.attempt_failed(
                self.scope, self._key("account", account), limit=self.account_limit,
                window=self.window, lock_seconds=self.lock_seconds, now=now)
        await self.store.attempt_failed(
            self.scope, self._key("source", source), limit=self.source_limit,
            window=self.window, lock_seconds=self.lock_seconds, now=now)

    async def succeeded(self, account: str) -> None:
        await self.store.attempts_cleared(self.scope, self._key("account", account))


# --------------------------------------------------------------------------- TOTP


@dataclass(frozen=True, slots=True)
class TotpEnrolment:
    uri: str  # otpauth://totp/...
    secret: str
    recovery_codes: tuple[str, ...]


def _recovery_code() -> str:
    alphabet = "abcdefghjkmnpqrstuvwxyz23456789"  # no 0/o, 1/l/i
    raw = "".join(secrets.choice(alphabet) for _ in range(10))
    return f"{raw[:5]}-{raw[5:]}"


def _normal_code(code: str) -> str:
    return code.strip().lower().replace(" ", "")


def totp_context(extension: str) -> str:
    """What a sealed seed is bound to: its row."""
    return f"totp:{extension}"


def totp_uri(secret: str, user: User, issuer: str) -> str:
    name = user.email or f"{user.extension}@{issuer}"
    return pyotp.TOTP(secret).provisioning_uri(name=name, issuer_name=f"Switchboard {issuer}")


def _recovery() -> tuple[tuple[str, ...], tuple[str, ...]]:
    codes = tuple(_recovery_code() for _ in range(RECOVERY_CODES))
    return codes, tuple(sha256(c) for c in codes)


async def enrol_totp(store: Store, box: SecretBox, user: User, issuer: str) -> TotpEnrolment:
    """Enrol ``user`` at once (the CLI: whoever runs it shows the QR code to the user;
    a new secret replaces any previous one) and return what to show once: the
    otpauth URI (for a QR code) and the recovery codes."""
    secret = pyotp.random_base32()
    codes, hashes = _recovery()
    await store.set_totp(TotpRecord(extension=user.extension,
                                    secret=box.seal(secret, totp_context(user.extension)),
                                    recovery_hashes=hashes, created_at=time.time()))
    return TotpEnrolment(totp_uri(secret, user, issuer), secret, codes)


async def begin_totp(store: Store, box: SecretBox, user: User, issuer: str,
                     now: float) -> tuple[str, str]:
    """Begin an enrolment: ``(secret, otpauth URI)``. Nothing changes for sign-in until
    :func:`confirm_totp` sees a code of this secret (an enrolment that the user's app
    never took cannot lock them out)."""
    secret = pyotp.random_base32()
    await store.set_totp_pending(user.extension, box.seal(secret, totp_context(user.extension)),
                                 now)
    return secret, totp_uri(secret, user, issuer)


def _matching_step(secret: str, code: str, now: float) -> int | None:
    """The time step whose code ``code`` is: this one or one either side (clock drift)."""
    code = _normal_code(code)
    if not (code.isdigit() and len(code) == 6):
        return None
    totp = pyotp.TOTP(secret)
    step = int(now // totp.interval)
    for counter in (step - 1, step, step + 1):
        if hmac.compare_digest(totp.generate_otp(counter), code):
            return counter
    return None


async def confirm_totp(store: Store, box: SecretBox, extension: str, code: str,
                       now: float) -> tuple[str, ...] | None:
    """Turn a begun enrolment on when ``code`` is a current code of its secret: the
    recovery codes to show once; None for a wrong code. LookupError when no
    enrolment was begun."""
    pending = await store.totp_pending(extension)
    if pending is None:
        raise LookupError(extension)
    sealed, _ = pending
    counter = _matching_step(box.open(sealed, totp_context(extension)), code, now)
    if counter is None:
        return None
    codes, hashes = _recovery()
    record = TotpRecord(extension=extension, secret=sealed, recovery_hashes=hashes,
                        last_counter=counter, created_at=now)  # this code is spent
    if not await store.confirm_totp(record):
        raise LookupError(extension)  # confirmed (or dropped) by another request meanwhile
    return codes


async def check_second_factor(store: Store, box: SecretBox, record: TotpRecord, code: str,
                              now: float) -> bool:
    """A TOTP code of this step or one step either side, not used before; or an unused
    recovery code (spent by this call)."""
    code = _normal_code(code)
    if code.isdigit() and len(code) == 6:
        try:
            secret = box.open(record.secret, totp_context(record.extension))
        except SecretBoxError as exc:  # another key: the log says which (never the seed)
            log.error("a TOTP seed does not open", extension=record.extension,
                      reason=str(exc))
            return False
        counter = _matching_step(secret, code, now)
        return counter is not None and await store.use_totp_counter(record.extension, counter)
    return await store.use_recovery_code(record.extension, sha256(code))


async def seal_stored_totp(store: Store, box: SecretBox) -> int:
    """Seal the seeds stored in clear by an earlier version; how many."""
    done = 0
    for record in await store.all_totp():
        if not box.is_sealed(record.secret) and await store.set_totp_secret(
                record.extension, record.secret,
                box.seal(record.secret, totp_context(record.extension))):
            done += 1
    return done


# --------------------------------------------------------------------------- API keys


async def create_api_key(store: Store, name: str, role: str,
                         department: str = "") -> tuple[ApiKey, str]:
    """A new key: ``(record, the key to show once)``. ValueError for a bad role/name."""
    if role not in API_KEY_ROLES:
        raise ValueError(f"an API key's role is one of: {', '.join(API_KEY_ROLES)}")
    if not name.strip() or len(name) > 64 or not name.isprintable():
        raise ValueError("an API key needs a name (printable, at most 64 characters)")
    if (role == "department_admin") != bool(department):
        raise ValueError("a department_admin key needs --department, and only it takes one")
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    record = ApiKey(id=key_id, name=name, role=ROLES[ROLES.index(role)], department=department,
                    secret_hash=sha256(secret), created_at=time.time())
    await store.create_api_key(record)
    return record, f"{API_KEY_PREFIX}{key_id}_{secret}"


# --------------------------------------------------------------------------- sign-in


class Authenticator:
    """Signs users in and turns a ``Bearer`` credential into a :class:`Principal`."""

    def __init__(self, store: Store, box: SecretBox, limiter: AttemptLimiter | None = None,
                 token_seconds: float = TOKEN_SECONDS) -> None:
        self.store = store
        self.box = box
        self.limiter = limiter or AttemptLimiter(store, "sign_in")
        self.token_seconds = token_seconds

    async def sign_in(self, directory: Directory, identifier: str, password: str,
                      code: str | None, source: str, now: float) -> tuple[str, float, User]:
        """``(token, expires_at, user)``; :class:`ApiError` 401 or 429 otherwise.

        Every failure says the same (``wrong user, password or code``) whether
        the account exists or not; a lock says it is a lock, for a known or an
        unknown account alike.
        """
        user = find_user(directory, identifier)
        account = f"user:{user.extension}" if user is not None else \
            f"name:{identifier.strip().lower()}"
        locked = await self.limiter.locked(account, source, now)
        if locked is not None:
            kind, left = locked
            what = "this account" if kind == "account" else "this address"
            raise ApiError(429, f"too many failed sign-ins for {what}; try again in "
                                f"{int(left) + 1} s", {"Retry-After": str(int(left) + 1)})
        dummy = await asyncio.to_thread(_dummy_hash)
        stored = await self.store.web_password_hash(user.extension) if user else None
        good = await asyncio.to_thread(verify_password, stored or dummy, password)
        if not good or stored is None or user is None or user.disabled:
            await self.limiter.failed(account, source, now)
            raise ApiError(401, "wrong user, password or code")
        record = await self.store.totp(user.extension)
        if record is not None:
            if not code:
                # only someone who knows the password learns that a code is needed
                raise ApiError(401, [("code", "this account needs a code from its "
                                              "authenticator app (or a recovery code)")])
            if not await check_second_factor(self.store, self.box, record, code, now):
                await self.limiter.failed(account, source, now)
                raise ApiError(401, "wrong user, password or code")
        await self.limiter.succeeded(account)
        token = secrets.token_urlsafe(32)
        expires = now + self.token_seconds
        await self.store.create_session(Session(token_hash=sha256(token), extension=user.extension,
                                                created_at=now, expires_at=expires,
                                                source=source))
        return token, expires, user

    async def principal(self, authorization: str, directory: Directory,
                        now: float) -> Principal:
        """The caller of a request with this ``Authorization`` header; 401 otherwise."""
        scheme, _, credential = authorization.strip().partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            raise ApiError(401, "sign in first: Authorization: Bearer <token or API key>",
                           {"WWW-Authenticate": 'Bearer realm="switchboard"'})
        if credential.startswith(API_KEY_PREFIX):
            key_id, _, secret = credential[len(API_KEY_PREFIX):].partition("_")
            key = await self.store.api_key(key_id) if key_id.isalnum() else None
            if (key is None or key.revoked_at is not None
                    or not hmac.compare_digest(key.secret_hash, sha256(secret))):
                raise _bad_credential()
            return Principal(actor=f"api_key:{key.id}", role=key.role,
                             department=key.department)
        token_hash = sha256(credential)
        session = await self.store.session(token_hash, now)
        if session is None:
            raise _bad_credential()
        user = directory.user(session.extension)
        if user is None or user.disabled:
            await self.store.delete_sessions(session.extension)
            raise _bad_credential()
        # checked at each request, not at sign-in: turning the setting on restricts the
        # sessions already open too, and a confirmed enrolment lifts it at once
        enrol_only = directory.system.require_2fa and \
            await self.store.totp(user.extension) is None
        return Principal(actor=f"user:{user.extension}", role=user.role,
                         extension=user.extension, department=user.department,
                         token_hash=token_hash, enrol_only=enrol_only)


def _bad_credential() -> ApiError:
    return ApiError(401, "the token or API key is not valid (expired, revoked or unknown)",
                    {"WWW-Authenticate": 'Bearer realm="switchboard", error="invalid_token"'})
