"""Switchboard routing layer: pure call decisions.

``plan(call, directory, state) -> Plan``: what to do with a call, as a flat
table of steps (ring, deflect, voicemail, busy, reject...) with the next step
for each outcome.  ``explain`` plans a what-if call; ``plan_to_json`` and
``render_text`` print a plan.  Nothing here touches a socket, a clock or the
event loop; see :mod:`routing.router` for the rules and the decisions taken
where the directory contract is silent.
"""

from routing.explain import explain, parse_when, plan_to_json, render_text, step_to_json
from routing.router import (
    CONFIRM_SECONDS,
    MAX_FORWARD_HOPS,
    REBOUND_SECONDS,
    Router,
    effective_status,
    plan,
    router_for,
)
from routing.steps import (
    Busy,
    CallFacts,
    Deflect,
    Device,
    Diversion,
    DiversionReason,
    External,
    Identity,
    Ivr,
    LiveState,
    MailboxAccess,
    Plan,
    Queue,
    QueueLogin,
    Reject,
    Ring,
    Source,
    Step,
    Target,
    Voicemail,
)

__all__ = [
    "CONFIRM_SECONDS",
    "MAX_FORWARD_HOPS",
    "REBOUND_SECONDS",
    "Busy",
    "CallFacts",
    "Deflect",
    "Device",
    "Diversion",
    "DiversionReason",
    "External",
    "Identity",
    "Ivr",
    "LiveState",
    "MailboxAccess",
    "Plan",
    "Queue",
    "QueueLogin",
    "Reject",
    "Ring",
    "Router",
    "Source",
    "Step",
    "Target",
    "Voicemail",
    "effective_status",
    "explain",
    "parse_when",
    "plan",
    "plan_to_json",
    "render_text",
    "router_for",
    "step_to_json",
]
