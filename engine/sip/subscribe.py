"""The notifier's answer to a SUBSCRIBE (RFC 6665), common to every event package.

Message waiting (``engine.services.mwi``) and the busy lamps and presence
(``engine.services.subscriptions``) keep their subscriptions their own way, but
answer a SUBSCRIBE the same way, by the RFC: the Expires asked for, bounded, and
a refresh or an unsubscribe in the subscription's dialog checked and answered.
It is protocol, not a service's choice, so it lives here, once, beside the
dialog and transaction layers it uses; sans-I/O like them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine.sip.message import Request, make_response
from engine.sip.transaction import Event, TxKey

if TYPE_CHECKING:
    from engine.sip.dialog import Dialog
    from engine.sip.transaction import TransactionLayer

__all__ = ["expires_asked", "refresh"]


def expires_asked(req: Request, maximum: int) -> int:
    """The subscription's duration a SUBSCRIBE asks for: its Expires, at most
    ``maximum``, which is also the package's default when it has none."""
    value = req.expires
    return maximum if value is None else min(value, maximum)


def refresh(tx: TransactionLayer, req: Request, key: TxKey, dialog: Dialog, now: float,
            minimum: int, maximum: int) -> tuple[list[Event], int | None]:
    """A request in a subscription's ``dialog`` (ours by its To tag) answered: 405
    for anything but SUBSCRIBE (the dialog exists only for the subscription), the
    dialog's own check (CSeq order, RFC 3261 s12.2.2), 423 with Min-Expires below
    ``minimum`` (RFC 6665 s4.2.1.1), else 200 with the Expires granted (RFC 6665
    s4.2.1.2). Returns the answer's events and the Expires granted, or None when the
    request was refused and the subscription stays as it was. Expires 0 is an
    unsubscribe: the caller ends the subscription with its final NOTIFY."""
    if req.method != "SUBSCRIBE":
        return tx.respond(key, make_response(req, 405, headers=[("Allow", "SUBSCRIBE")]),
                          now), None
    check = dialog.on_request(req)
    if check is not None:
        return tx.respond(key, make_response(req, check), now), None
    expires = expires_asked(req, maximum)
    if 0 < expires < minimum:
        return tx.respond(key, make_response(
            req, 423, headers=[("Min-Expires", str(minimum))]), now), None
    return tx.respond(key, make_response(req, 200, headers=[
        ("Expires", str(expires)), ("Contact", dialog.local_contact)]), now), expires
