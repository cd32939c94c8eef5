"""The call layer: every call the engine routes, sans-I/O (docs/architecture.md).

``front.Calls`` is the entry point (``engine.core`` owns one): it finds the call
an input belongs to and hands it over. ``call.Call`` runs one call: its plan,
its legs (``leg.Leg``), its media anchor (``anchor.MediaAnchor``), a transfer
(``transfer.Transfer``) and its timers, and ends through ``Call.close``.
``states`` holds every legal move of calls, legs and transfers; ``events`` the
commands to the media service; ``headers`` the pure builders of what is sent;
``rules`` what the directory says about a call's media.
"""

from engine.calls.front import Calls, CallSummary

__all__ = ["CallSummary", "Calls"]
