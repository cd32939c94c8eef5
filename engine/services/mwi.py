"""Message waiting (RFC 3842) over SIP events (RFC 6665), sans-I/O.

A phone SUBSCRIBEs to ``message-summary`` for its own mailbox; the engine
answers 200, sends a NOTIFY at once (RFC 6665 s4.2.1) and again whenever the
mailbox's counts change, and ends the subscription when it expires or the
phone unsubscribes (Expires: 0, a final NOTIFY with ``terminated``).

NOTIFYs go to the address the SUBSCRIBE came from (NAT), like every request
the engine sends to a phone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from engine.sip.dialog import Dialog, new_tag
from engine.sip.message import Request, Response, make_response
from engine.sip.subscribe import expires_asked, refresh
from engine.sip.transaction import Addr, Event, TxKey

if TYPE_CHECKING:
    from engine.calls.headers import Local
    from engine.sip.transaction import TransactionLayer

EVENT = "message-summary"
CONTENT_TYPE = "application/simple-message-summary"
MIN_EXPIRES = 60
MAX_EXPIRES = 3600


@dataclass(slots=True, eq=False)
class Subscription:
    box: str
    dialog: Dialog
    dest: Addr
    transport: str
    expires_at: float  # monotonic


def summary_body(box: str, domain: str, new: int, old: int) -> bytes:
    """The message-summary body (RFC 3842 s5.2)."""
    waiting = "yes" if new else "no"
    return (f"Messages-Waiting: {waiting}\r\nMessage-Account: sip:{box}@{domain}\r\n"
            f"Voice-Message: {new}/{old}\r\n").encode()


class MessageWaiting:
    """Every message-summary subscription of one engine, and the counts per mailbox."""

    def __init__(self, transactions: TransactionLayer) -> None:
        self.tx = transactions
        self.subs: dict[tuple[str, str], Subscription] = {}  # (Call-ID, our tag)
        self.counts: dict[str, tuple[int, int]] = {}  # box -> (new, old)
        self._notifies: set[TxKey] = set()

    def subscribe(self, req: Request, key: TxKey, box: str, source: Addr, transport: str,
                  now: float, local: Local) -> list[Event]:
        """A new SUBSCRIBE (no To tag) from the authenticated owner of ``box``."""
        expires = expires_asked(req, MAX_EXPIRES)
        if 0 < expires < MIN_EXPIRES:
            return self.tx.respond(key, make_response(
                req, 423, headers=[("Min-Expires", str(MIN_EXPIRES))]), now)
        tag = new_tag()
        contact = _contact(local, transport)
        resp = make_response(req, 200, headers=[
            ("Expires", str(expires)), ("Contact", contact)], to_tag=tag)
        events = self.tx.respond(key, resp, now)
        dialog = Dialog.uas(req, tag, contact, confirmed=True)
        sub = Subscription(box, dialog, source, transport, now + expires)
        if expires:
            self.subs[(req.call_id, tag)] = sub
        return events + self._notify(sub, now, local, terminated=not expires)

    def in_dialog(self, req: Request, key: TxKey, now: float,
                  local: Local) -> list[Event] | None:
        """A refresh or an unsubscribe (SUBSCRIBE with our To tag); None: not ours."""
        ident = (req.call_id, req.to.tag or "")
        sub = self.subs.get(ident)
        if sub is None:
            return None
        events, expires = refresh(self.tx, req, key, sub.dialog, now, MIN_EXPIRES,
                                  MAX_EXPIRES)
        if expires is None:
            return events
        sub.expires_at = now + expires
        if not expires:
            del self.subs[ident]
        return events + self._notify(sub, now, local, terminated=not expires)

    def set_counts(self, counts: dict[str, tuple[int, int]], now: float,
                   local: Local) -> list[Event]:
        """New mailbox counts (after a message was left, read or deleted): NOTIFY the
        subscribers of every mailbox whose counts changed."""
        changed = {box for box in counts.keys() | self.counts.keys()
                   if counts.get(box, (0, 0)) != self.counts.get(box, (0, 0))}
        self.counts = dict(counts)
        events: list[Event] = []
        for sub in list(self.subs.values()):
            if sub.box in changed:
                events += self._notify(sub, now, local)
        return events

    def next_wakeup(self) -> float | None:
        return min((sub.expires_at for sub in self.subs.values()), default=None)

    def expire(self, now: float, local: Local) -> list[Event]:
        events: list[Event] = []
        for ident, sub in list(self.subs.items()):
            if sub.expires_at <= now:
                del self.subs[ident]
                events += self._notify(sub, now, local, terminated=True)
        return events

    def on_response(self, key: TxKey, resp: Response) -> bool:
        """A response to one of our NOTIFYs (True: ours). 481/408 end the subscription."""
        if key not in self._notifies:
            return False
        if resp.status >= 200:
            self._notifies.discard(key)
        if resp.status in (408, 481):
            for ident, sub in list(self.subs.items()):
                if sub.dialog.call_id == resp.call_id:
                    del self.subs[ident]
        return True

    def _notify(self, sub: Subscription, now: float, local: Local,
                terminated: bool = False) -> list[Event]:
        new, old = self.counts.get(sub.box, (0, 0))
        left = max(0, int(sub.expires_at - now))
        state = "terminated;reason=timeout" if terminated else f"active;expires={left}"
        request = sub.dialog.new_request(
            "NOTIFY", via_host=local.host, via_port=local.port, transport=sub.transport.upper(),
            headers=[("Event", EVENT), ("Subscription-State", state)],
            body=summary_body(sub.box, local.domain, new, old), content_type=CONTENT_TYPE)
        key, events = self.tx.send_request(request, sub.dest, sub.transport, now)
        self._notifies.add(key)
        return events


def _contact(local: Local, transport: str) -> str:
    return local.contact(transport)
