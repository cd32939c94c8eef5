"""The live events' diff, on its own: two snapshots in, events out (no clock, no I/O)."""

from __future__ import annotations

from provisioning.api.events import Snapshot, diff, involved

T = 1_780_000_000.0


def _call(answered: str | None = None) -> dict[str, object]:
    return {"call_id": "c1", "caller": "+15145550199", "callee": "102",
            "extensions": ["102"], "started": "2026-05-28T20:26:40+00:00",
            "answered": answered}


def test_status_registration_and_call_lifecycle() -> None:
    empty = Snapshot({"101": "available", "102": "away"})
    up = Snapshot({"101": "available", "102": "available"},
                  {("102", "sip:102@127.0.0.1:5070"): {"user_agent": "desk"}},
                  {"c1": _call()})
    events = diff(empty, up, T)
    assert events == [
        {"type": "status", "extension": "102", "status": "available", "previous": "away"},
        {"type": "registration", "state": "up", "extension": "102",
         "contact": "sip:102@127.0.0.1:5070", "user_agent": "desk"},
        {"type": "call.started", **_call()},
    ]
    answered = Snapshot(up.statuses, up.registrations,
                        {"c1": _call("2026-05-28T20:26:45+00:00")})
    assert [e["type"] for e in diff(up, answered, T)] == ["call.answered"]
    assert diff(answered, answered, T) == []  # nothing changed, nothing said
    ended = Snapshot(up.statuses, {}, {})
    events = diff(answered, ended, T)
    assert events == [
        {"type": "registration", "state": "down", "extension": "102",
         "contact": "sip:102@127.0.0.1:5070"},
        {"type": "call.ended", **_call("2026-05-28T20:26:45+00:00"),
         "ended": "2026-05-28T20:26:40+00:00"},
    ]
    assert involved(events[1]) == {"+15145550199", "102"}
    assert involved(events[0]) == {"102"}


def test_a_call_seen_answered_at_once_is_started_and_answered() -> None:
    events = diff(Snapshot(), Snapshot({}, {}, {"c1": _call("2026-05-28T20:26:41+00:00")}), T)
    assert [e["type"] for e in events] == ["call.started", "call.answered"]
    # a user who appears (a directory write) is not a status change
    assert diff(Snapshot({}), Snapshot({"150": "available"}), T) == []
