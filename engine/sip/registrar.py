"""The registrar: REGISTER processing per RFC 3261 s10.3, sans-I/O.

It holds the live bindings in memory (the hot path reads them for every
call) and reports each change so that the caller writes it through to the
store. Authentication happens before: :meth:`Registrar.register` receives
the authenticated user name. Time is wall-clock seconds (``now``), because
expiry times are stored and survive a restart.
"""

from __future__ import annotations

import email.utils
import random as _random
from collections.abc import Callable, Iterable, Iterator, Set
from dataclasses import dataclass, field

from engine.sip.message import Address, ParseError, Request, parse_address, warning_value
from provisioning.model import Binding

MAX_CONTACTS_PER_AOR = 10
# A binding is granted 80-100 % of the Expires asked (RFC 3261 s10.3 step 7 lets the
# registrar shorten it): phones that all registered in the same second (an office
# after a power cut) then refresh spread over a fifth of the interval instead of
# coming back together for ever.
EXPIRES_SPREAD = 0.2


@dataclass(frozen=True, slots=True)
class RegisterResult:
    """The response to send, and the binding changes to persist."""

    status: int
    reason: str
    headers: tuple[tuple[str, str], ...] = ()
    saved: tuple[Binding, ...] = ()
    removed: tuple[Binding, ...] = ()


class Registered(Set[str]):
    """The addresses of record with at least one binding live at ``now``, as a view:
    a membership test looks at one AOR's bindings, nothing is copied.

    Routing asks "is 102 registered?" for the few extensions of one call; building
    the whole set per call cost time in proportion to the phones registered (a
    thousand bindings: a tenth of the engine's time in a soak). A view reads the
    registrar as it is when asked, so it is for use at once (one routing decision),
    not to be kept.
    """

    __slots__ = ("_bindings", "_now")

    def __init__(self, bindings: dict[str, dict[str, Binding]], now: float) -> None:
        self._bindings = bindings
        self._now = now

    def __contains__(self, aor: object) -> bool:
        per = self._bindings.get(aor) if isinstance(aor, str) else None
        if not per:
            return False
        now = self._now
        return any(b.expires_at > now for b in per.values())

    def __iter__(self) -> Iterator[str]:
        now = self._now
        return (aor for aor, per in self._bindings.items()
                if any(b.expires_at > now for b in per.values()))

    def __len__(self) -> int:
        return sum(1 for _ in self)


@dataclass(slots=True)
class Registrar:
    min_expires: int = 60
    max_expires: int = 3600
    default_expires: int = 3600
    bindings: dict[str, dict[str, Binding]] = field(default_factory=dict)
    # [0, 1) -> how much of EXPIRES_SPREAD to take off; injected by tests (0.0: the
    # Expires asked, as bounded by min and max).
    random: Callable[[], float] = _random.random

    def load(self, bindings: list[Binding], now: float) -> None:
        """Restore bindings read from the store (a restart), dropping expired ones."""
        for b in bindings:
            if b.expires_at > now:
                self.bindings.setdefault(b.aor, {})[b.contact] = b

    def merge(self, saved: Iterable[Binding], deleted: Iterable[tuple[str, str]],
              now: float) -> None:
        """Apply bindings another node wrote to the store: saved ones replace ours
        for the same (aor, contact) (an expired one removes it), deleted ones go."""
        for b in saved:
            if b.expires_at > now:
                self.bindings.setdefault(b.aor, {})[b.contact] = b
            else:
                self._drop(b.aor, b.contact)
        for aor, contact in deleted:
            self._drop(aor, contact)

    def _drop(self, aor: str, contact: str) -> None:
        per = self.bindings.get(aor)
        if per is not None:
            per.pop(contact, None)
            if not per:
                del self.bindings[aor]

    def registered(self, now: float) -> Registered:
        """Who has a live binding at ``now`` (a view: see :class:`Registered`)."""
        return Registered(self.bindings, now)

    def lookup(self, aor: str, now: float) -> list[Binding]:
        """Live contacts of ``aor``, highest q first (RFC 3261 s10.2.1.2)."""
        found = [b for b in self.bindings.get(aor, {}).values() if b.expires_at > now]
        found.sort(key=lambda b: -b.q)
        return found

    def count(self) -> int:
        return sum(len(v) for v in self.bindings.values())

    def all(self) -> list[Binding]:
        return [b for per in self.bindings.values() for b in per.values()]

    def expire(self, now: float) -> list[Binding]:
        """Remove and return bindings whose time is up."""
        gone: list[Binding] = []
        for aor in list(self.bindings):
            per = self.bindings[aor]
            for contact, b in list(per.items()):
                if b.expires_at <= now:
                    gone.append(b)
                    del per[contact]
            if not per:
                del self.bindings[aor]
        return gone

    def register(self, req: Request, aor: str, source: str, now: float) -> RegisterResult:
        """Apply a REGISTER for ``aor`` (already authenticated), atomically (s10.3 step 6-8)."""
        try:
            return self._register(req, aor, source, now)
        except ParseError as exc:
            return RegisterResult(400, "Bad Request", (("Warning", warning_value(exc.reason)),))

    def _register(self, req: Request, aor: str, source: str, now: float) -> RegisterResult:
        call_id = req.call_id
        cseq = req.cseq.number
        current = dict(self.bindings.get(aor, {}))
        header_expires = req.expires
        saved: list[Binding] = []
        removed: list[Binding] = []

        if req.contact_star:
            # s10.3 step 6: '*' only alone and with Expires: 0.
            if len(req.get_all("contact")) != 1 or header_expires != 0:
                return RegisterResult(400, "Bad Request", (
                    ("Warning",
                     warning_value("Contact '*' needs Expires: 0 and no other Contact")),))
            for b in current.values():
                if b.call_id == call_id and cseq <= b.cseq:
                    return _out_of_order()
                removed.append(b)
            self.bindings.pop(aor, None)
            return self._ok(aor, now, (), tuple(removed), _path_of(req))

        user_agent = req.get("user-agent") or ""
        # RFC 3327 s5.3: the Path is stored with each binding of this REGISTER and
        # becomes the route set of requests to it; each value must be a SIP address.
        path = _path_of(req)
        for value in path:
            parse_address(value, "Path")
        for addr in req.contacts:
            expires = _contact_expires(addr, header_expires, self.default_expires)
            if 0 < expires < self.min_expires:
                return RegisterResult(423, "Interval Too Brief",
                                      (("Min-Expires", str(self.min_expires)),))
            expires = self._granted(expires)
            key = _contact_key(addr)
            old = current.get(key)
            if old is not None and old.call_id == call_id and cseq <= old.cseq:
                return _out_of_order()
            if expires == 0:
                if old is not None:
                    removed.append(old)
                    del current[key]
                continue
            q = _q_value(addr)
            reg_id = addr.param("reg-id")
            binding = Binding(
                aor=aor, contact=key, expires_at=now + expires, q=q, call_id=call_id,
                cseq=cseq, source=source, user_agent=user_agent,
                instance=addr.param("+sip.instance") or "",
                reg_id=int(reg_id) if reg_id and reg_id.isdigit() else None, path=path)
            current[key] = binding
            saved.append(binding)

        if len(current) > MAX_CONTACTS_PER_AOR:
            # Keep the newest registrations; the rest are dropped (a phone
            # flood must not grow one AOR without bound).
            ordered = sorted(current.values(), key=lambda b: b.expires_at, reverse=True)
            for b in ordered[MAX_CONTACTS_PER_AOR:]:
                removed.append(b)
                del current[b.contact]
            saved = [b for b in saved if b.contact in current]
        if current:
            self.bindings[aor] = current
        else:
            self.bindings.pop(aor, None)
        return self._ok(aor, now, tuple(saved), tuple(removed), path)

    def _granted(self, asked: int) -> int:
        """The Expires granted for ``asked`` (>= min_expires, or 0): bounded by the
        maximum, then 80-100 % of that, never under the minimum."""
        expires = min(asked, self.max_expires)
        if expires == 0:
            return 0
        return max(self.min_expires, int(expires * (1.0 - EXPIRES_SPREAD * self.random())))

    def _ok(self, aor: str, now: float, saved: tuple[Binding, ...],
            removed: tuple[Binding, ...], path: tuple[str, ...]) -> RegisterResult:
        headers: list[tuple[str, str]] = [
            ("Contact", f"<{b.contact}>;expires={max(0, int(b.expires_at - now))}"
             + (f";q={b.q:g}" if b.q != 1.0 else ""))
            for b in self.lookup(aor, now)
        ]
        if path:
            # RFC 3327 s5.3: the 200 carries the Path stored, so the phone (and the
            # edge) can see the route the registrar will use.
            headers.append(("Path", ", ".join(path)))
        headers.append(("Date", email.utils.formatdate(now, usegmt=True)))
        return RegisterResult(200, "OK", tuple(headers), saved, removed)


@dataclass(frozen=True, slots=True)
class BindingTarget:
    """Where a request to a binding goes: the Request-URI (its Contact), the next
    hop and transport, and the preloaded Route header values (its Path)."""

    uri: str
    dest: tuple[str, int]
    transport: str
    routes: tuple[str, ...] = ()


def binding_target(binding: Binding) -> BindingTarget | None:
    """The request target of ``binding``: straight to the address the REGISTER came
    from, or, when it came with a Path (RFC 3327 s5.3), through the Path's first
    hop with the Path as Route headers (loose routing, RFC 3261 s8.1.2). The edge
    then reaches the phone over the flow that holds its NAT binding. ``None`` when
    the binding names no usable address."""
    uri = _contact_uri(binding.contact)
    if binding.path:
        try:
            first = parse_address(binding.path[0], "Path").uri
        except ParseError:
            return None
        secure = first.scheme == "sips"
        transport = (first.param("transport") or ("tls" if secure else "udp")).lower()
        port = first.port or (5061 if secure or transport == "tls" else 5060)
        return BindingTarget(uri, (first.host.strip("[]"), port), transport, binding.path)
    transport, _, rest = binding.source.partition(":")
    host, _, port_text = rest.rpartition(":")
    if not host or not port_text.isdigit():
        return None
    return BindingTarget(uri, (host.strip("[]"), int(port_text)), transport)


def preload_routes(request: Request, routes: tuple[str, ...]) -> Request:
    """``request`` with ``routes`` as its Route header values (a preloaded route set,
    RFC 3261 s8.1.2); CANCEL and the ACK of a failure copy them (s9.1, s17.1.1.3)."""
    routed = request.replace("Route", *routes)
    assert isinstance(routed, Request)
    return routed


def _contact_uri(contact: str) -> str:
    text = contact.strip()
    if text.startswith("<") and ">" in text:
        return text[1:text.index(">")]
    return text


def _path_of(req: Request) -> tuple[str, ...]:
    return tuple(v.strip() for v in req.get_all("path") if v.strip())


def _out_of_order() -> RegisterResult:
    return RegisterResult(500, "Server Internal Error", (
        ("Warning", warning_value("CSeq not higher than the binding's for the same Call-ID")),
        ("Retry-After", "1")))


def _contact_key(addr: Address) -> str:
    """The binding's identity: the Contact URI as text (RFC 3261 s10.3 step 7)."""
    return str(addr.uri)


def _contact_expires(addr: Address, header: int | None, default: int) -> int:
    value = addr.param("expires")
    if value is not None:
        if not value.isdigit():
            raise ParseError(f"Contact expires {value[:20]!r}: not a number of seconds")
        return min(int(value), 2**32 - 1)
    return default if header is None else header


def _q_value(addr: Address) -> float:
    value = addr.param("q")
    if value is None:
        return 1.0
    try:
        q = float(value)
    except ValueError:
        raise ParseError(f"Contact q {value[:20]!r}: not a number from 0 to 1") from None
    if not 0.0 <= q <= 1.0:
        raise ParseError(f"Contact q {value[:20]!r}: not a number from 0 to 1")
    return q
