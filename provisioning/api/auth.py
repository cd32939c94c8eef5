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
  one-time recovery codes are given at enrolment.
- **Failed sign-ins** are limited per account and per source address
  (:class:`SignInLimiter`); the account key is the identifier as typed when
  it names no user, so a locked account and an unknown one answer alike.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

import pyotp
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from provisioning.api.errors import ApiError
from provisioning.model import ROLES, ApiKey, AuditEntry, Directory, Role, Session, TotpRecord, User
from provisioning.store import Store

__all__ = [
    "API_KEY_ROLES",
    "MIN_PASSWORD_LENGTH",
    "TOKEN_SECONDS",
    "Authenticator",
    "Principal",
    "SignInLimiter",
    "create_api_key",
    "enrol_totp",
    "find_user",
    "hash_password",
    "new_audit",
    "sha256",
]

TOKEN_SECONDS = 8 * 3600
MIN_PASSWORD_LENGTH = 10
MAX_PASSWORD_LENGTH = 256
RECOVERY_CODES = 10
#: Roles an API key may carry: an integration acts for the system or a department,
#: never as one person (a ``user`` key would have no "own" records).
API_KEY_ROLES: tuple[Role, ...] = ("department_admin", "manager", "owner")
API_KEY_PREFIX = "sbk_"

_hasher = PasswordHasher()
# Verified when the account is unknown, so an unknown account costs the same time
# as a wrong password.
_DUMMY_HASH = _hasher.hash(secrets.token_hex(16))


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


@dataclass(slots=True)
class _Failures:
    times: deque[float] = field(default_factory=deque)
    locked_until: float = 0.0


class SignInLimiter:
    """Failed sign-ins, per account and per source (sans-I/O: every call takes ``now``).

    ``account_limit`` failures within ``window`` seconds lock the account for
    ``lock_seconds``; ``source_limit`` failures from one address block that
    address as long. A success clears the account's failures (not the
    source's: a guesser who owns one account must not reset its count).
    """

    def __init__(self, *, account_limit: int = 5, source_limit: int = 20,
                 window: float = 900.0, lock_seconds: float = 900.0,
                 max_entries: int = 100_000) -> None:
        self.account_limit = account_limit
        self.source_limit = source_limit
        self.window = window
        self.lock_seconds = lock_seconds
        self.max_entries = max_entries
        self._accounts: dict[str, _Failures] = {}
        self._sources: dict[str, _Failures] = {}

    def locked(self, account: str, source: str, now: float) -> tuple[str, float] | None:
        """``("account" | "source", seconds left)`` when a sign-in must be refused."""
        for kind, table, key in (("source", self._sources, source),
                                 ("account", self._accounts, account)):
            entry = table.get(key)
            if entry is not None and entry.locked_until > now:
                return kind, entry.locked_until - now
        return None

    def failed(self, account: str, source: str, now: float) -> None:
        for table, key, limit in ((self._accounts, account, self.account_limit),
                                  (self._sources, source, self.source_limit)):
            if key not in table and len(table) >= self.max_entries:
                self._prune(table, now)
            entry = table.setdefault(key, _Failures())
            entry.times.append(now)
            while entry.times and entry.times[0] <= now - self.window:
                entry.times.popleft()
            if len(entry.times) >= limit:
                entry.locked_until = now + self.lock_seconds
                entry.times.clear()

    def succeeded(self, account: str) -> None:
        self._accounts.pop(account, None)

    def _prune(self, table: dict[str, _Failures], now: float) -> None:
        for key in [k for k, e in table.items() if e.locked_until <= now
                    and (not e.times or e.times[-1] <= now - self.window)]:
            del table[key]
        while len(table) >= self.max_entries:  # still full: forget the oldest
            del table[next(iter(table))]


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


async def enrol_totp(store: Store, user: User, issuer: str) -> TotpEnrolment:
    """Enrol ``user`` (a new secret replaces any previous one) and return what to
    show once: the otpauth URI (for a QR code) and the recovery codes."""
    secret = pyotp.random_base32()
    codes = tuple(_recovery_code() for _ in range(RECOVERY_CODES))
    await store.set_totp(TotpRecord(extension=user.extension, secret=secret,
                                    recovery_hashes=tuple(sha256(c) for c in codes),
                                    created_at=time.time()))
    name = user.email or f"{user.extension}@{issuer}"
    uri = pyotp.TOTP(secret).provisioning_uri(name=name, issuer_name=f"Switchboard {issuer}")
    return TotpEnrolment(uri, secret, codes)


async def check_second_factor(store: Store, record: TotpRecord, code: str, now: float) -> bool:
    """A TOTP code of this step or one step either side, not used before; or an unused
    recovery code (spent by this call)."""
    code = _normal_code(code)
    if code.isdigit() and len(code) == 6:
        totp = pyotp.TOTP(record.secret)
        step = int(now // totp.interval)
        for counter in (step - 1, step, step + 1):
            if hmac.compare_digest(totp.generate_otp(counter), code):
                return await store.use_totp_counter(record.extension, counter)
        return False
    return await store.use_recovery_code(record.extension, sha256(code))


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

    def __init__(self, store: Store, limiter: SignInLimiter | None = None,
                 token_seconds: float = TOKEN_SECONDS) -> None:
        self.store = store
        self.limiter = limiter or SignInLimiter()
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
        locked = self.limiter.locked(account, source, now)
        if locked is not None:
            kind, left = locked
            what = "this account" if kind == "account" else "this address"
            raise ApiError(429, f"too many failed sign-ins for {what}; try again in "
                                f"{int(left) + 1} s", {"Retry-After": str(int(left) + 1)})
        stored = await self.store.web_password_hash(user.extension) if user else None
        good = await asyncio.to_thread(verify_password, stored or _DUMMY_HASH, password)
        if not good or stored is None or user is None or user.disabled:
            self.limiter.failed(account, source, now)
            raise ApiError(401, "wrong user, password or code")
        record = await self.store.totp(user.extension)
        if record is not None:
            if not code:
                # only someone who knows the password learns that a code is needed
                raise ApiError(401, [("code", "this account needs a code from its "
                                              "authenticator app (or a recovery code)")])
            if not await check_second_factor(self.store, record, code, now):
                self.limiter.failed(account, source, now)
                raise ApiError(401, "wrong user, password or code")
        self.limiter.succeeded(account)
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
        return Principal(actor=f"user:{user.extension}", role=user.role,
                         extension=user.extension, department=user.department,
                         token_hash=token_hash)


def _bad_credential() -> ApiError:
    return ApiError(401, "the token or API key is not valid (expired, revoked or unknown)",
                    {"WWW-Authenticate": 'Bearer realm="switchboard", error="invalid_token"'})
