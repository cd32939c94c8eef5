"""Explain a plan: JSON for the admin API, text for ``switchboard route explain``.

:func:`explain` builds the call facts of a what-if question ("what happens
when +15145550199 calls +15145550100 at 18:30 if 101 is away?") and plans it.
Assumptions, since a what-if has no live state:

* a caller that is a user's extension makes a phone call; anything else is
  an external call arriving on the first trunk of the directory;
* an external caller whose callee is an extension (a user, a ring group, an IVR)
  rather than one of our numbers is routed as if a DID pointed straight at
  it (external rules), so one can ask about a user without knowing a DID;
* ``status`` forces the status of the callee user (the dialled extension,
  or the user the DID routes to), as a live override would;
* ``registered`` defaults to every user (devices assumed registered); nobody
  is on a call and every trunk channel is free;
* ``preferred_identity`` is what the calling phone would send as
  P-Preferred-Identity (phone calls only): the plan's identity shows whether
  it would be honoured, and why not.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Set
from typing import Any

from provisioning.model import Destination, Directory, Status
from routing.router import router_for
from routing.steps import (
    Busy,
    CallFacts,
    Deflect,
    Device,
    Diversion,
    External,
    Identity,
    Ivr,
    LiveState,
    MailboxAccess,
    Park,
    Pickup,
    Plan,
    Queue,
    QueueLogin,
    Ring,
    Step,
    Target,
    Unpark,
    Voicemail,
)

__all__ = [
    "explain",
    "identity_to_json",
    "parse_when",
    "plan_to_json",
    "render_text",
    "step_to_json",
]

_OUTCOME_END = {"no answer": "480", "busy": "486", "failed": "480/503"}


# --------------------------------------------------------------------------- JSON


def parse_when(text: str) -> dt.datetime:
    """The time a what-if question is asked about (``--at``, ``--route-clock``,
    ``?at=``): ISO 8601; without a zone it is UTC."""
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"'{text}' is not an ISO 8601 time like 2026-12-01T10:30:00-05:00")\
            from None
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)


def _target_to_json(target: Target) -> dict[str, Any]:
    if isinstance(target, Device):
        return {"type": "device", "extension": target.extension}
    return {
        "type": "external",
        "number": target.number,
        "trunk": target.trunk,
        "caller_id": target.caller_id,
        "privacy": target.privacy,
        "rebound": target.rebound,
        "mobile_of": target.mobile_of,
        "confirm": target.confirm,
        "caller_name": target.caller_name,
    }


def identity_to_json(identity: Identity) -> dict[str, Any]:
    """What the call presents on legs that leave through a trunk, and where it came from."""
    return {
        "caller_id": identity.caller_id,
        "name": identity.name,
        "privacy": identity.privacy,
        "origin": identity.origin,
        "preferred": identity.preferred or None,
        "preferred_ignored": identity.ignored or None,
        "billing_group": identity.billing_group or None,
    }


def _diversion_to_json(chain: Iterable[Diversion]) -> list[dict[str, str]]:
    return [{"extension": d.extension, "reason": d.reason} for d in chain]


def step_to_json(index: int, step: Step) -> dict[str, Any]:
    """One step as a JSON-safe dict (``index`` is 0-based, as in ``on_*``)."""
    out: dict[str, Any] = {"index": index}
    if isinstance(step, Ring):
        out.update(
            type="ring",
            targets=[_target_to_json(t) for t in step.targets],
            seconds=step.seconds,
            next={
                "no_answer": step.on_no_answer,
                "busy": step.on_busy,
                "failed": step.on_failed,
            },
            reason=step.reason,
            diversion=_diversion_to_json(step.diversion),
            music=step.music,
            intercom=step.intercom,
        )
    elif isinstance(step, Deflect):
        out.update(
            type="deflect",
            number=step.number,
            trunk=step.trunk,
            reason=step.reason,
            diversion=_diversion_to_json(step.diversion),
        )
    elif isinstance(step, Voicemail):
        out.update(
            type="voicemail",
            box=step.box,
            greeting=step.greeting,
            reason=step.reason,
            diversion=_diversion_to_json(step.diversion),
        )
    elif isinstance(step, MailboxAccess):
        out.update(type="mailbox_access", box=step.box, reason=step.reason)
    elif isinstance(step, Ivr):
        out.update(
            type="ivr",
            name=step.name,
            extension=step.extension,
            prompt=step.prompt or None,
            text=step.text or None,
            language=step.language,
            keys={k: str(d) for k, d in step.keys},
            dial_by_extension=step.dial_by_extension,
            timeout_seconds=step.timeout_seconds,
            repeat=step.repeat,
            on_timeout=str(step.on_timeout),
            on_invalid=str(step.on_invalid),
            reason=step.reason,
            diversion=_diversion_to_json(step.diversion),
        )
    elif isinstance(step, Queue):
        out.update(
            type="queue",
            name=step.name,
            extension=step.extension,
            strategy=step.strategy,
            agents=list(step.agents),
            ring_seconds=step.ring_seconds,
            wrap_up_seconds=step.wrap_up_seconds,
            max_wait_seconds=step.max_wait_seconds,
            max_callers=step.max_callers,
            on_timeout=str(step.on_timeout),
            when_no_agents="join" if step.when_no_agents is None else str(step.when_no_agents),
            service_level_seconds=step.service_level_seconds,
            reason=step.reason,
            diversion=_diversion_to_json(step.diversion),
        )
    elif isinstance(step, QueueLogin):
        out.update(type="queue_login", agent=step.agent, queues=list(step.queues),
                   login=step.login, language=step.language or "en", reason=step.reason)
    elif isinstance(step, Pickup):
        out.update(type="pickup", picker=step.picker, extensions=list(step.extensions),
                   directed=step.directed, reason=step.reason)
    elif isinstance(step, Park):
        out.update(type="park", parker=step.parker, orbits=[step.orbits[0], step.orbits[-1]],
                   ring_back_seconds=step.ring_back_seconds,
                   ring_back_to=str(step.ring_back_to), reason=step.reason)
    elif isinstance(step, Unpark):
        out.update(type="unpark", orbit=step.orbit, reason=step.reason)
    elif isinstance(step, Busy):
        out.update(type="busy", status=486, reason=step.reason)
    else:
        out.update(type="reject", status=step.status, text=step.text, reason=step.reason)
    return out


def plan_to_json(plan: Plan) -> dict[str, Any]:
    """The plan as a JSON-safe dict: call facts, effective statuses, steps."""
    call = plan.call
    return {
        "call": {
            "caller": call.caller,
            "callee": call.callee,
            "source": call.source,
            "at": call.at.isoformat(),
            "trunk": call.trunk,
            "caller_name": call.caller_name,
            "preferred_identity": call.preferred_identity or None,
        },
        "identity": identity_to_json(plan.identity),
        "callee_extension": plan.callee_extension or None,
        "effective_status": plan.status_of_callee,
        "statuses": dict(plan.statuses),
        "steps": [step_to_json(i, s) for i, s in enumerate(plan.steps)],
    }


# --------------------------------------------------------------------------- text


def _target_text(target: Target) -> str:
    if isinstance(target, Device):
        return f"{target.extension} (desk phones)"
    assert isinstance(target, External)
    what = "mobile" if target.mobile_of else "external"
    caller = f"caller ID {target.caller_id or '?'}"
    if target.caller_name:
        caller += f' "{target.caller_name}"'
    flags = [f"via {target.trunk}", caller]
    if target.privacy:
        flags.append("private")
    if target.rebound:
        flags.append("rebound")
    if target.confirm:
        flags.append("confirm: press 1 to take the call")
    return f"{target.number} ({what} {', '.join(flags)})"


def _next_text(label: str, index: int | None) -> str:
    if index is None:
        return f"{label} -> end ({_OUTCOME_END[label]})"
    return f"{label} -> {index + 1}"


def _step_text(step: Step) -> str:
    if isinstance(step, Ring):
        duration = f"for {step.seconds} s" if step.seconds is not None else "with no timer"
        targets = " + ".join(_target_text(t) for t in step.targets)
        return f"ring {targets} {duration}" + (" (caller hears hold music)" if step.music
                                                else "") + (
            " (intercom: answered automatically)" if step.intercom else "")
    if isinstance(step, Deflect):
        return f"deflect (302) to {step.number} through {step.trunk}"
    if isinstance(step, Voicemail):
        return f"voicemail of {step.box} (greeting {step.greeting})"
    if isinstance(step, MailboxAccess):
        return f"mailbox of {step.box}"
    if isinstance(step, Ivr):
        spoken = f"prompt {step.prompt}" if step.prompt else f"text ({step.language})"
        return f"IVR {step.name} ({step.extension}): answer, play the {spoken}"
    if isinstance(step, Queue):
        return (f"queue {step.name} ({step.extension}): answer, hold music, ring "
                f"{', '.join(step.agents) or 'no agents'} by {step.strategy}")
    if isinstance(step, QueueLogin):
        return (f"{'log in' if step.login else 'log out'} {step.agent} "
                f"{'to' if step.login else 'of'} {', '.join(step.queues)}, confirm "
                f"({step.language or 'en'}), hang up")
    if isinstance(step, Pickup):
        return (f"{step.picker} picks up the oldest call ringing "
                f"{', '.join(step.extensions)}")
    if isinstance(step, Park):
        return (f"park the call {step.parker} transfers on the first free orbit of "
                f"{step.orbits[0]}-{step.orbits[-1]}, hold music; ring {step.parker} back after "
                f"{step.ring_back_seconds} s, then {step.ring_back_to}")
    if isinstance(step, Unpark):
        return f"retrieve the call parked on orbit {step.orbit}"
    if isinstance(step, Busy):
        return "busy (486)"
    return f"reject {step.status} {step.text}"


def _identity_text(identity: Identity) -> str:
    """``identity: +15145550100 "Example Sales", private (department Sales); billing
    group sales``, then the P-Preferred-Identity outcome when one was asked."""
    text = f"identity: {identity.caller_id or '(none)'}"
    if identity.name:
        text += f' "{identity.name}"'
    else:
        text += " (no name)"
    if identity.privacy:
        text += ", private (caller ID withheld)"
    if identity.origin:
        text += f" ({identity.origin})"
    if identity.billing_group:
        text += f"; billing group {identity.billing_group}"
    if identity.ignored:
        text += f"; P-Preferred-Identity {identity.preferred} ignored: {identity.ignored}"
    return text


def render_text(plan: Plan) -> str:
    """Numbered lines (1-based, as are the "-> N" references), one per step."""
    call = plan.call
    source = f"trunk {call.trunk}" if call.source == "trunk" and call.trunk else call.source
    head = f"call {call.caller} -> {call.callee} ({source}) at {call.at.isoformat()}"
    if plan.callee_extension and plan.status_of_callee is not None:
        head += f"; {plan.callee_extension} is {plan.status_of_callee}"
    lines = [head, _identity_text(plan.identity)]
    for i, step in enumerate(plan.steps):
        lines.append(f"{i + 1}. {_step_text(step)}  — {step.reason}")
        if isinstance(step, Ring):
            lines.append(
                "   "
                + ", ".join(
                    (
                        _next_text("no answer", step.on_no_answer),
                        _next_text("busy", step.on_busy),
                        _next_text("failed", step.on_failed),
                    )
                )
            )
        if isinstance(step, Ivr):
            for key, dest in step.keys:
                lines.append(f"   key {key} -> {dest}")
            if step.dial_by_extension:
                lines.append("   digits -> the extension dialled (users, ring groups, IVRs)")
            lines.append(f"   no key within {step.timeout_seconds} s, prompt played "
                         f"{step.repeat + 1} time(s) -> {step.on_timeout}")
            lines.append(f"   invalid key or extension -> {step.on_invalid}")
        if isinstance(step, Queue):
            lines.append(f"   strategy {step.strategy}, {step.ring_seconds} s a try, wrap-up "
                         f"{step.wrap_up_seconds} s; agents {', '.join(step.agents)}")
            lines.append(f"   wait over {step.max_wait_seconds} s or {step.max_callers} callers "
                         f"waiting -> {step.on_timeout}")
            lines.append("   no agent logged in, registered and available -> " + (
                "join (wait anyway)" if step.when_no_agents is None
                else str(step.when_no_agents)))
        chain = getattr(step, "diversion", ())
        if chain:
            lines.append(
                "   diverted by " + ", ".join(f"{d.extension} ({d.reason})" for d in chain)
            )
    return "\n".join(lines)


# --------------------------------------------------------------------------- what-if


def explain(
    directory: Directory,
    caller: str,
    callee: str,
    at: dt.datetime,
    status: Status | None = None,
    registered: Set[str] | None = None,
    preferred_identity: str = "",
) -> Plan:
    """Plan a what-if call (see the module docstring for the assumptions).

    A naive ``at`` is taken as UTC.
    """
    if at.tzinfo is None:
        at = at.replace(tzinfo=dt.UTC)
    router = router_for(directory)
    users = directory.users_by_extension
    route_to: Destination | None = None
    if caller in users:
        call = CallFacts(caller, callee, "phone", at, preferred_identity=preferred_identity)
        callee_user = callee if callee in users else ""
    else:
        trunk = directory.trunks[0].name if directory.trunks else ""
        call = CallFacts(caller, callee, "trunk", at, trunk=trunk)
        callee_user = ""
        number = router.number_for(callee)
        if number is not None:
            if number.route_to.kind == "extension":
                callee_user = number.route_to.target
        elif callee in users:
            route_to = Destination("extension", callee)
            callee_user = callee
        elif callee in directory.ring_groups_by_extension:
            route_to = Destination("ring_group", directory.ring_groups_by_extension[callee].name)
        elif callee in directory.ivrs_by_extension:
            route_to = Destination("ivr", directory.ivrs_by_extension[callee].name)
    state = LiveState(
        statuses={callee_user: status} if status is not None and callee_user else {},
        registered=frozenset(users) if registered is None else registered,
    )
    return router.plan(call, state, route_to=route_to)
