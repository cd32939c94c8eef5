"""Registering trunks to their carrier (RFC 3261 s10.2), sans-I/O.

A trunk with ``register = true`` in the directory keeps a binding at its
carrier: the engine sends REGISTER (one Call-ID per trunk, CSeq growing,
s10.2.4), answers a 401/407 digest challenge with the trunk's ``username`` and
``password`` (once per attempt: a second challenge means the credentials are
wrong), and refreshes the binding before it expires: at 80 % of the granted
time (at least 1 s before its end). A refused or unanswered attempt is retried
after ``RETRY_SECONDS``. The password never appears in a log line.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import structlog

from engine.calls.headers import SERVER
from engine.sip.auth import build_authorization
from engine.sip.dialog import new_branch, new_call_id, new_tag
from engine.sip.message import ParseError, Request, Response
from engine.sip.transaction import Event, TxKey
from provisioning.model import Trunk

if TYPE_CHECKING:
    from engine.calls.headers import Local
    from engine.sip.transaction import TransactionLayer

log = structlog.get_logger("switchboard.trunk")

REQUESTED_EXPIRES = 3600
RETRY_SECONDS = 30.0
REFRESH_FRACTION = 0.8


@dataclass(slots=True, eq=False)
class TrunkRegistration:
    trunk: Trunk
    call_id: str
    from_tag: str = field(default_factory=new_tag)
    cseq: int = 0
    state: Literal["idle", "registering", "registered", "failed"] = "idle"
    due: float = 0.0  # when the next REGISTER goes (monotonic)
    key: TxKey | None = None  # the REGISTER in flight
    challenged: bool = False  # this attempt answered a challenge already
    granted: int = 0
    last_status: int = 0


class TrunkRegistrar:
    """The registrations of every ``register = true`` trunk."""

    def __init__(self, transactions: TransactionLayer) -> None:
        self.tx = transactions
        self.regs: dict[str, TrunkRegistration] = {}

    def set_trunks(self, trunks: tuple[Trunk, ...], now: float, host: str) -> None:
        """Follow the directory: new trunks register now, changed ones again, gone ones stop."""
        wanted = {t.name: t for t in trunks if t.register}
        for name in list(self.regs):
            if name not in wanted:
                del self.regs[name]
        for name, trunk in wanted.items():
            reg = self.regs.get(name)
            if reg is None or reg.trunk != trunk:
                self.regs[name] = TrunkRegistration(trunk, new_call_id(host), due=now)

    def registered(self, name: str) -> bool:
        reg = self.regs.get(name)
        return reg is not None and reg.state == "registered"

    def next_wakeup(self) -> float | None:
        dues = [r.due for r in self.regs.values() if r.key is None]
        return min(dues) if dues else None

    def on_timer(self, now: float, local: Local) -> list[Event]:
        events: list[Event] = []
        for reg in self.regs.values():
            if reg.key is None and reg.due <= now:
                reg.challenged = False
                events += self._send(reg, now, local, None)
        return events

    def _send(self, reg: TrunkRegistration, now: float, local: Local,
              auth: tuple[str, str] | None) -> list[Event]:
        t = reg.trunk
        reg.cseq += 1
        registrar = f"sip:{t.host}:{t.port}"
        transport = t.transport.upper()
        via_port = local.port_for(transport)
        headers = [
            ("Via", f"SIP/2.0/{transport} {local.host}:{via_port};branch={new_branch()};rport"),
            ("Max-Forwards", "70"),
            ("From", f"<sip:{t.username}@{t.host}>;tag={reg.from_tag}"),
            ("To", f"<sip:{t.username}@{t.host}>"),
            ("Call-ID", reg.call_id),
            ("CSeq", f"{reg.cseq} REGISTER"),
            ("Contact", local.contact(transport, t.username)),
            ("Expires", str(REQUESTED_EXPIRES)),
            ("User-Agent", SERVER),
        ]
        if auth is not None:
            headers.append(auth)
        request = Request.build("REGISTER", registrar, headers)
        reg.state = "registering" if reg.state != "registered" else reg.state
        reg.key, events = self.tx.send_request(request, (t.host, t.port),
                                               transport.lower(), now)
        return events

    def on_response(self, key: TxKey, resp: Response, now: float,
                    local: Local) -> list[Event] | None:
        """A response to one of our REGISTERs (None: not ours)."""
        reg = next((r for r in self.regs.values() if r.key == key), None)
        if reg is None:
            return None
        if resp.status < 200:
            return []
        reg.key = None
        reg.last_status = resp.status
        name = reg.trunk.name
        if resp.status in (401, 407) and not reg.challenged:
            header = "www-authenticate" if resp.status == 401 else "proxy-authenticate"
            answer = "Authorization" if resp.status == 401 else "Proxy-Authorization"
            for challenge in resp.get_lines(header):
                try:
                    value = build_authorization(
                        challenge, "REGISTER", f"sip:{reg.trunk.host}:{reg.trunk.port}",
                        reg.trunk.username, reg.trunk.password, secrets.token_hex(8))
                except ValueError:
                    continue  # an algorithm we do not speak: try the next challenge
                reg.challenged = True
                return self._send(reg, now, local, (answer, value))
        if 200 <= resp.status < 300:
            granted = _granted(resp, reg.trunk.username) or REQUESTED_EXPIRES
            reg.granted = granted
            reg.state = "registered"
            reg.due = now + max(1.0, min(granted * REFRESH_FRACTION, granted - 1.0))
            log.info("trunk registered", trunk=name, expires=granted,
                     refresh_in=round(reg.due - now, 1))
            return []
        reg.state = "failed"
        reg.due = now + RETRY_SECONDS
        log.warning("trunk registration refused", trunk=name, status=resp.status,
                    reason=resp.reason, retry_in=RETRY_SECONDS,
                    hint="check the trunk's username and password" if resp.status in (
                        401, 403, 407) else None)
        return []

    def on_timed_out(self, key: TxKey, now: float) -> bool:
        reg = next((r for r in self.regs.values() if r.key == key), None)
        if reg is None:
            return False
        reg.key = None
        reg.state = "failed"
        reg.due = now + RETRY_SECONDS
        log.warning("trunk registrar did not answer", trunk=reg.trunk.name,
                    retry_in=RETRY_SECONDS)
        return True


def _granted(resp: Response, username: str) -> int | None:
    """The expiry the registrar granted our contact (s10.2.4): its ``expires``
    parameter, else the Expires header."""
    try:
        for contact in resp.contacts:
            if contact.uri.user == username:
                value = contact.param("expires")
                if value and value.isdigit():
                    return int(value)
        return resp.expires
    except ParseError:
        return None
