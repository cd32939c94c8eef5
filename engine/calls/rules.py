"""What the directory says about a call once routing has planned it: pure lookups.

Routing decides where a call goes (``routing/``); these decide how it sounds
while it goes there: the hold music a party hears, whether it is recorded, the
language a screened leg is spoken to in, the codecs each side is offered. Each
takes the directory snapshot (None before the first one) and the call's
facts, never the call itself, so they are tested and read alone.
"""

from __future__ import annotations

from collections.abc import Sequence

from media import sdp
from provisioning.model import DEFAULT_CODECS, Directory, SrtpMode
from routing import CallFacts, Device, External, Identity, Plan, Ring, Step
from routing.explain import render_text

__all__ = [
    "PlanText",
    "callee_codecs",
    "caller_codecs",
    "hold_playlist",
    "leg_srtp",
    "party_name",
    "prompt_language",
    "record_reason",
    "srtp_refusal",
    "user_srtp",
    "voicemail_seconds",
]

DEFAULT_VOICEMAIL_SECONDS = 180  # a box whose owner is not in the directory any more


def caller_codecs(directory: Directory | None, facts: CallFacts) -> Sequence[str]:
    """The codecs of the calling user, in its order (a trunk's caller: the default)."""
    user = directory.user(facts.caller) if directory and facts.source == "phone" else None
    return user.codecs if user is not None else DEFAULT_CODECS


def callee_codecs(directory: Directory | None,
                  target: Device | External) -> Sequence[str] | None:
    """The codecs of the user a leg rings, in its order; None: the caller's order."""
    if not isinstance(target, Device) or directory is None:
        return None
    user = directory.user(target.extension)
    return user.codecs if user is not None else None


def user_srtp(directory: Directory | None, extension: str) -> SrtpMode:
    """A user's ``srtp`` (``off`` for anyone not in the directory, trunks included)."""
    user = directory.user(extension) if directory else None
    return user.srtp if user is not None else "off"


def leg_srtp(directory: Directory | None, target: Device | External, transport: str) -> bool:
    """Whether a leg the engine makes to ``target`` over ``transport`` is offered
    SDES-SRTP (RTP/SAVP with our key): a phone of a user whose ``srtp`` is
    ``allowed`` or ``required`` reached over TLS, the only path the keys may travel
    (RFC 4568 s8.3); anyone else plain RTP. One rule for every leg: a call's first
    legs, a transfer's target (blind or attended), an IVR choice, a queue's agents."""
    return isinstance(target, Device) and transport.lower() == "tls" and \
        user_srtp(directory, target.extension) != "off"


def srtp_refusal(directory: Directory | None, facts: CallFacts, transport: str,
                 offer: sdp.SessionDescription) -> str | None:
    """Why a new call's offer is refused for its SRTP (RFC 4568), None when it is not.

    Keys travel in the SDP, so an offer carrying them is taken only over TLS
    (RFC 4568 s8.3: SDES needs a protected signalling path) from a user whose
    ``srtp`` allows it; a ``required`` user's offer must be SRTP (over TLS). A
    best-effort offer (an SRTP stream and a plain one) is not refused: the plain
    stream is answered where SRTP cannot be."""
    mode = user_srtp(directory, facts.caller) if facts.source == "phone" else "off"
    secure = sdp.offers_srtp(offer)
    only_srtp = secure and not sdp.offers_plain_rtp(offer)
    tls = transport.lower() == "tls"
    if only_srtp and not tls:
        return (f"SRTP offered over {transport.upper()}: SDES keys (a=crypto) are taken "
                "only over TLS (RFC 4568 s8.3); register and call over TLS")
    if only_srtp and mode == "off":
        who = f"user {facts.caller}" if facts.source == "phone" else "calls from trunks"
        return f"SRTP is off for {who} (srtp = off): offer RTP/AVP"
    if only_srtp and (fault := sdp.srtp_fault(offer)) is not None:
        return fault
    if mode == "required" and not (secure and tls):
        return (f"user {facts.caller} requires SRTP (srtp = required): offer "
                "RTP/SAVP with a=crypto over TLS")
    return None


def voicemail_seconds(directory: Directory | None, box: str) -> int:
    """The longest message ``box`` takes."""
    owner = directory.user(box) if directory else None
    return owner.voicemail.max_seconds if owner is not None else DEFAULT_VOICEMAIL_SECONDS


def party_name(facts: CallFacts, answered: Device | External | None) -> str:
    """Who the caller reached, for recordings and voicemail: the extension or number
    that answered, else the number dialled."""
    if isinstance(answered, Device):
        return answered.extension
    if isinstance(answered, External):
        return answered.number
    return facts.callee


def prompt_language(directory: Directory | None, target: Device | External,
                    step: Step | None) -> str:
    """The prompts' language for a screened leg: that of the user whose mobile it
    is, else of the user who forwarded the call there."""
    ext = target.mobile_of if isinstance(target, External) else ""
    if not ext and isinstance(step, Ring) and step.diversion:
        ext = step.diversion[-1].extension
    user = directory.user(ext) if (directory and ext) else None
    return user.voicemail.language if user is not None else "en"


def hold_playlist(directory: Directory | None, facts: CallFacts, identity: Identity,
                  holder_is_caller: bool, callee: Device | External | None,
                  ) -> tuple[str, ...]:
    """The DID's playlist for a call that came in on a number; else the playlist
    of the number whose caller ID the holding user presents (a calling phone: the
    one this call presents); else the system's (empty: the media service's
    built-in tune). Numbers are found in any form (``Directory.number``)."""
    if directory is None:
        return ()
    if facts.source == "trunk":
        number = directory.number(facts.callee)
        if number is not None and number.hold_music:
            return number.hold_music
    presented = ""
    if holder_is_caller and facts.source == "phone":
        presented = identity.caller_id  # this call's (P-Preferred-Identity)
    elif not holder_is_caller and isinstance(callee, Device):
        user = directory.user(callee.extension)
        presented = directory.caller_id_for(user) if user is not None else ""
    number = directory.number(presented) if presented else None
    if number is not None and number.hold_music:
        return number.hold_music
    return directory.system.hold_music


def record_reason(directory: Directory | None, facts: CallFacts,
                  answered: Device | External) -> str:
    """Why a call answered by ``answered`` is recorded ("" not recorded): per user
    (``record_calls``: external or all) and per number (inbound, outbound)."""
    if directory is None:
        return ""
    external = facts.source == "trunk" or isinstance(answered, External)
    parties: list[str] = []
    if facts.source == "phone":
        parties.append(facts.caller)
    if isinstance(answered, Device):
        parties.append(answered.extension)
    for ext in parties:
        user = directory.user(ext)
        if user is None:
            continue
        if user.record_calls == "all" or (user.record_calls == "external" and external):
            return f"user {ext} records {user.record_calls} calls"
    if facts.source == "trunk":
        number = directory.number(facts.callee)
        if number is not None and number.record_inbound:
            return f"number {number.number} records inbound calls"
    elif isinstance(answered, External):
        # Withheld caller IDs (*82, block_caller_id) are recorded too: privacy
        # hides the number from the callee, not from its owner's records.
        number = directory.number(answered.caller_id)
        if number is not None and number.record_outbound:
            private = " (caller ID withheld)" if answered.privacy else ""
            return f"number {number.number} records outbound calls{private}"
    return ""


class PlanText:
    """A plan as logged (``call routed``, ``transfer``): rendered only if the log
    line is written (repr is what both structlog renderers use for a value that is
    not a string)."""

    __slots__ = ("plan",)

    def __init__(self, plan: Plan) -> None:
        self.plan = plan

    def __repr__(self) -> str:
        return render_text(self.plan)
