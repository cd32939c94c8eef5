"""What the dialog (RFC 4235) and presence (RFC 3856) NOTIFYs say, sans-I/O.

:class:`DialogBook` follows the calls: the call layer notes each call and leg
whose state moved (``Calls.changed``), the engine hands them here after each
input, and the book keeps, per extension, a :class:`DialogView` of each of its
dialogs: a leg ringing its phone (``recipient``), a call it placed
(``initiator``). :func:`dialog_info` and :func:`pidf` write the documents.

Decisions:

* A leg is the dialog the watched phone sees, so its Call-ID and tags are what
  the document names (the phone's own tag is ``local-tag``), and its INVITE's
  From and To are the ``<remote>`` and ``<local>`` identities: what a phone needs
  to show who calls and to pick the call up from the key.
* An ended dialog stays in the documents, in state ``terminated``, for
  :data:`ENDED_LINGER` seconds, so every watcher's next NOTIFY reports the end
  even when NOTIFYs are paced, then it is dropped.
* A document names at most :data:`MAX_DIALOGS` dialogs, of which at most
  :data:`ENDED_SHOWN` ended ones: ringing first (what a key picks up), then
  connected, then being set up, then the latest ended; newest first within each.
  A lamp needs no more, and a NOTIFY over UDP must stay well under the path MTU
  (RFC 3261 s18.1.1): four dialogs are about 1.8 kB. A busy line taking a call a
  second would otherwise list every call of the linger time. In a full-state
  document a dialog left out is over (RFC 4235 s4.1), which is what it says.
* An idle extension's document holds one ``<dialog>`` in state ``terminated``
  (no call-id or tags). RFC 4235 s4.1 allows zero or more dialogs, so an empty
  document is also valid; but phones differ on which they read as idle, and a
  terminated dialog is what Asterisk sends for an idle hint, the server desk
  phones (Yealink, Polycom, Snom, Grandstream) are most tested against: a phone
  that lights idle from either reads this one right.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import TYPE_CHECKING
from xml.sax.saxutils import escape, quoteattr

from engine.calls.states import CallState, LegState
from provisioning.model import DialogView
from routing import Device

if TYPE_CHECKING:
    from engine.calls.call import Call
    from engine.calls.leg import Leg
    from engine.sip.message.grammar import Address

__all__ = [
    "ENDED_LINGER",
    "ENDED_SHOWN",
    "MAX_DIALOGS",
    "PRESENCE_NOTES",
    "RANK",
    "DialogBook",
    "DialogView",
    "dialog_info",
    "pidf",
]

ENDED_LINGER = 10.0
MAX_DIALOGS = 4
ENDED_SHOWN = 2
# The order dialogs are listed in (and kept in, past MAX_DIALOGS).
RANK = {"early": 0, "proceeding": 0, "confirmed": 1, "trying": 2, "terminated": 3}

# RFC 4235 s4.1.2 <state>: a leg we sent (the watched phone is its UAS).
_LEG_STATE = {LegState.CALLING: "trying", LegState.RINGING: "early",
              LegState.ANSWERED: "confirmed", LegState.DONE: "terminated"}


class DialogBook:
    """Every extension's calls and legs, kept from the call layer's changes; their
    views are made only when a document is written (the call path stays cheap when
    no one watches)."""

    def __init__(self) -> None:
        # ext -> the calls (caller side) and legs (callee side) it is on, in order
        self._items: dict[str, dict[Call | Leg, None]] = {}
        # (ext, item) -> when it ended, in the order they ended
        self._ended: dict[tuple[str, Call | Leg], float] = {}
        # Park orbits are watched like extensions: a parked call is filed under its
        # orbit (a confirmed dialog there) until it is retrieved, rings back or ends.
        self._orbit_of: dict[Call, str] = {}
        self._parked: set[tuple[str, Call]] = set()  # (orbit, call) filed as parked

    def reset(self, live: Iterable[Call | Leg], now: float) -> None:
        """Start again from ``live``, the calls and legs alive now (none: an empty
        book). Dialogs that ended before are not shown (a new watcher's first
        document needs only what is going on)."""
        self._items.clear()
        self._ended.clear()
        self._orbit_of.clear()
        self._parked.clear()
        self.update(live, now)

    def update(self, changed: Iterable[Call | Leg], now: float) -> set[str]:
        """Note the calls and legs whose state moved; returns the extensions they
        concern (their documents may have changed)."""
        from engine.calls.leg import Leg  # the call layer imports nothing from here

        touched: set[str] = set()
        for item in changed:
            if isinstance(item, Leg):
                target = item.target
                if isinstance(target, Device):
                    self._note(target.extension, item, item.state is LegState.DONE
                               or item.call.state is CallState.ENDED, now, touched)
                call = item.call  # the caller's side follows its legs (early)
            else:
                call = item
            ended = call.state is CallState.ENDED
            self._orbit(call, ended, now, touched)
            if call.facts.source == "phone":
                self._note(call.facts.caller, call, ended, now, touched)
            if ended:  # its legs still open end with it
                for leg in (*call.legs, call.callee_leg, call.caller_leg):
                    if leg is not None and isinstance(leg.target, Device):
                        self._note(leg.target.extension, leg, True, now, touched)
        self._prune(now)
        return touched

    def _orbit(self, call: Call, ended: bool, now: float, touched: set[str]) -> None:
        """File ``call`` under the orbit it is parked on, or end it under the one it
        left."""
        before = self._orbit_of.get(call, "")
        now_on = "" if ended else call.parked
        if before == now_on:
            return
        if before:
            del self._orbit_of[call]
            self._note(before, call, True, now, touched)
        if now_on:
            self._orbit_of[call] = now_on
            self._parked.add((now_on, call))
            self._note(now_on, call, False, now, touched)

    def _note(self, ext: str, item: Call | Leg, ended: bool, now: float,
              touched: set[str]) -> None:
        per = self._items.get(ext)
        if ended:
            if per is None or item not in per or (ext, item) in self._ended:
                return  # never seen alive (or its end already noted): nothing to show
            self._ended[(ext, item)] = now
        elif per is None:
            per = self._items[ext] = {}
        per[item] = None
        touched.add(ext)

    def _prune(self, now: float) -> None:
        """Forget what ended :data:`ENDED_LINGER` seconds ago (oldest first)."""
        while self._ended:
            (ext, item), ended = next(iter(self._ended.items()))
            if ended + ENDED_LINGER > now:
                return
            del self._ended[(ext, item)]
            self._parked.discard((ext, item))  # a leg was never there
            per = self._items.get(ext)
            if per is not None:
                per.pop(item, None)
                if not per:
                    del self._items[ext]

    def views(self, ext: str, now: float) -> tuple[DialogView, ...]:
        """``ext``'s dialogs now (ended ones for :data:`ENDED_LINGER` seconds)."""
        from engine.calls.leg import Leg

        self._prune(now)
        out = []
        ended = 0
        for item in reversed(self._items.get(ext, {})):  # newest first
            if (ext, item) in self._ended:
                if ended == ENDED_SHOWN:
                    continue  # not shown: no view made (a busy line has many)
                ended += 1
            if isinstance(item, Leg):
                view = _leg_view(item)
            elif (ext, item) in self._parked:
                view = _parked_view(item, ext)
            else:
                view = _caller_view(item)
            if view is not None:
                out.append(view)
        out.sort(key=lambda v: RANK[v.state])  # stable: newest first within a state
        shown = [v for v in out if v.state != "terminated"]
        return tuple(shown + [v for v in out if v.state == "terminated"][:ENDED_SHOWN])[
            :MAX_DIALOGS]

    def on_call(self, ext: str) -> bool:
        """``ext`` has a connected call (presence: "on the phone")."""
        return any(v.state == "confirmed" for v in self.views(ext, float("-inf")))


def _leg_view(leg: Leg) -> DialogView | None:
    """The dialog of a leg ringing a phone, as that phone sees it (it ends with its
    call)."""
    if not isinstance(leg.target, Device):
        return None
    invite = leg.invite
    call_id = invite.call_id
    local_tag = leg.dialog.remote_tag if leg.dialog is not None else ""
    state = "terminated" if leg.call.state is CallState.ENDED else _LEG_STATE[leg.state]
    return DialogView(
        id=_id(call_id, invite.from_.tag or ""), call_id=call_id, local_tag=local_tag or "",
        remote_tag=invite.from_.tag or "", direction="recipient", state=state,
        local=_identity(invite.to), remote=_identity(invite.from_))


def _parked_view(call: Call, orbit: str) -> DialogView:
    """A call parked on ``orbit``: a confirmed dialog there (RFC 4235 s4.1.2), the
    parked caller its remote party; terminated once it left the orbit."""
    invite = call.invite
    state = "confirmed" if call.parked == orbit and call.state is not CallState.ENDED \
        else "terminated"
    return DialogView(
        id=_id(call.id, f"park-{orbit}"), call_id=call.id, local_tag=call.tag,
        remote_tag=invite.from_.tag or "", direction="recipient", state=state,
        local=(f"sip:{orbit}@{invite.to.uri.host}", ""), remote=_identity(invite.from_))


def _caller_view(call: Call) -> DialogView:
    """The caller's dialog of a call a phone placed."""
    if call.state is CallState.ENDED:
        state = "terminated"
    elif call.state is CallState.ANSWERED or call.caller_dialog is not None:
        state = "confirmed"
    elif call.early_sent or any(leg.state is LegState.RINGING for leg in call.legs):
        state = "early"
    else:
        state = "trying"
    invite = call.invite
    local_tag = invite.from_.tag or ""
    return DialogView(
        id=_id(call.id, local_tag), call_id=call.id, local_tag=local_tag, remote_tag=call.tag,
        direction="initiator", state=state, local=_identity(invite.from_),
        remote=_identity(invite.to))


def _id(call_id: str, tag: str) -> str:
    return hashlib.sha1(f"{call_id};{tag}".encode(), usedforsecurity=False).hexdigest()[:16]


def _identity(addr: Address) -> tuple[str, str]:
    uri = addr.uri
    plain = f"{uri.scheme}:{uri.user}@{uri.host}" if uri.user else f"{uri.scheme}:{uri.host}"
    return plain, (addr.display or "").strip().strip('"')


def dialog_info(entity: str, ext: str, views: tuple[DialogView, ...], version: int) -> bytes:
    """The ``application/dialog-info+xml`` document (RFC 4235 s4.1), full state."""
    out = ['<?xml version="1.0" encoding="UTF-8"?>\n'
           f'<dialog-info xmlns="urn:ietf:params:xml:ns:dialog-info" version="{version}" '
           f'state="full" entity={quoteattr(entity)}>\n']
    if not views:  # idle: see the module's decisions
        out.append(f'  <dialog id={quoteattr(ext)}><state>terminated</state></dialog>\n')
    for v in views:
        attrs = f"id={quoteattr(v.id)} call-id={quoteattr(v.call_id)}"
        if v.local_tag:
            attrs += f" local-tag={quoteattr(v.local_tag)}"
        if v.remote_tag:
            attrs += f" remote-tag={quoteattr(v.remote_tag)}"
        out.append(f'  <dialog {attrs} direction="{v.direction}">\n'
                   f"    <state>{v.state}</state>\n"
                   f"    <local>{_identity_xml(v.local)}</local>\n"
                   f"    <remote>{_identity_xml(v.remote)}</remote>\n"
                   "  </dialog>\n")
    out.append("</dialog-info>\n")
    return "".join(out).encode()


def _identity_xml(identity: tuple[str, str]) -> str:
    uri, display = identity
    shown = f" display={quoteattr(display)}" if display else ""
    return f"<identity{shown}>{escape(uri)}</identity>"


# status -> (RFC 3863 basic, RFC 4480 activity or "", the note softphones show).
# basic is "open" when the user takes calls as usual; a status that forwards
# calls away (away, do not disturb, lunch, business trip) reads "closed".
PRESENCE_NOTES: dict[str, tuple[str, str, str]] = {
    "available": ("open", "", "Available"),
    "away": ("closed", "away", "Away"),
    "dnd": ("closed", "busy", "Do not disturb"),
    "lunch": ("closed", "lunch", "Lunch"),
    "business_trip": ("closed", "travel", "Business trip"),
}


def pidf(entity: str, ext: str, status: str, on_call: bool, version: int) -> bytes:
    """The ``application/pidf+xml`` document (RFC 3863, RPID RFC 4480 activities).

    On a call: activity ``on-the-phone`` and the note "On a call" (a softphone's
    buddy shows it); the basic status stays the user's. ``version`` is unused by
    PIDF (full state by definition, RFC 3856 s6.6) and kept for one signature."""
    del version
    basic, activity, note = PRESENCE_NOTES.get(status, ("open", "", status))
    if on_call:
        activity, note = "on-the-phone", f"On a call ({note})"
    activities = f"<rpid:{activity}/>" if activity else "<rpid:unknown/>"
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            '<presence xmlns="urn:ietf:params:xml:ns:pidf" '
            'xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model" '
            f'xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid" entity={quoteattr(entity)}>\n'
            f'  <tuple id={quoteattr("t" + ext)}>\n'
            f"    <status><basic>{basic}</basic></status>\n"
            f"    <note>{escape(note)}</note>\n"
            "  </tuple>\n"
            f'  <dm:person id={quoteattr("p" + ext)}>\n'
            f"    <rpid:activities>{activities}</rpid:activities>\n"
            f"    <dm:note>{escape(note)}</dm:note>\n"
            "  </dm:person>\n"
            "</presence>\n").encode()
