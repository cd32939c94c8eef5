"""Routing of queues (``[[queues]]``, ``queue:NAME``): the Queue step with the
queue's rules, its extension dialled (phone, IVR dial by extension), the
``*62``/``*63`` feature codes, and ``route explain``'s text."""

from __future__ import annotations

from provisioning.model import Destination, Directory
from routing import Queue, QueueLogin, Reject, plan, render_text, router_for, step_to_json
from tests.test_routing import build, live, only, phone, trunk, user_toml

QUEUES = """
[[numbers]]
number = "+15145550170"
route_to = "queue:support"

[[queues]]
name = "support"
extension = "860"
strategy = "hunt"
agents = ["102", "103"]
ring_seconds = 12
wrap_up_seconds = 5
max_wait_seconds = 120
max_callers = 3
on_timeout = "voicemail:101"
when_no_agents = "extension:101"
service_level_seconds = 30

[[queues]]
name = "billing"
extension = "861"
agents = ["103"]
"""


def directory() -> Directory:
    return build(user_toml("101") + user_toml("102") + user_toml("103") + QUEUES)


def test_a_did_to_a_queue_is_a_queue_step_with_its_rules() -> None:
    d = directory()
    step = only(plan(trunk("+15145550170"), d, live(d)))
    assert isinstance(step, Queue)
    assert (step.name, step.extension, step.strategy, step.agents) == \
        ("support", "860", "hunt", ("102", "103"))
    assert (step.ring_seconds, step.wrap_up_seconds, step.max_wait_seconds,
            step.max_callers, step.service_level_seconds) == (12, 5, 120, 3, 30)
    assert step.on_timeout == Destination("voicemail", "101")
    assert step.when_no_agents == Destination("extension", "101")


def test_defaults_join_and_ring_all() -> None:
    d = directory()
    step = only(plan(phone("101", "861"), d, live(d)))
    assert isinstance(step, Queue)
    assert step.strategy == "ring_all" and step.when_no_agents is None
    assert step.on_timeout == Destination("busy")
    assert d.queues[1].agents_start_logged_in is False  # agents start logged out


def test_queue_extension_is_dialled_from_an_ivr() -> None:
    d = directory()
    r = router_for(d)
    assert r.dialled("860") == Destination("queue", "support")
    assert "86" in r.extension_prefixes()


def test_login_codes_name_all_queues_or_one() -> None:
    d = directory()
    all_of_103 = only(plan(phone("103", "*62"), d, live(d)))
    assert isinstance(all_of_103, QueueLogin)
    assert all_of_103 == QueueLogin("103", ("support", "billing"), True, all_of_103.reason)
    one = only(plan(phone("103", "*63861"), d, live(d)))
    assert isinstance(one, QueueLogin) and one.queues == ("billing",) and not one.login


def test_login_codes_confirm_in_the_named_or_first_queue_language() -> None:
    d = build(user_toml("101") + user_toml("102") + user_toml("103")
              + QUEUES.replace('agents = ["103"]', 'agents = ["103"]\nlanguage = "fr"'))
    first = only(plan(phone("103", "*62"), d, live(d)))
    assert isinstance(first, QueueLogin) and first.language == ""  # support: none (English)
    named = only(plan(phone("103", "*63861"), d, live(d)))
    assert isinstance(named, QueueLogin) and named.language == "fr"  # billing's
    assert "confirm (fr), hang up" in render_text(plan(phone("103", "*63861"), d, live(d)))
    assert step_to_json(0, named)["language"] == "fr"


def test_login_code_for_a_queue_not_theirs_is_refused() -> None:
    d = directory()
    step = only(plan(phone("102", "*62861"), d, live(d)))
    assert isinstance(step, Reject) and step.status == 404
    assert "861 is no queue 102 is an agent of" in step.reason
    none = only(plan(phone("101", "*62"), d, live(d)))
    assert isinstance(none, Reject) and "agent of no queue" in none.reason


def test_explain_shows_strategy_agents_and_limits() -> None:
    d = directory()
    p = plan(trunk("+15145550170"), d, live(d))
    text = render_text(p)
    assert "1. queue support (860): answer, hold music, ring 102, 103 by hunt" in text
    assert "strategy hunt, 12 s a try, wrap-up 5 s; agents 102, 103" in text
    assert "wait over 120 s or 3 callers waiting -> voicemail:101" in text
    assert "no agent logged in, registered and available -> extension:101" in text
    j = step_to_json(0, p.steps[0])
    assert j["type"] == "queue" and j["strategy"] == "hunt" and j["max_callers"] == 3
    assert j["agents"] == ["102", "103"] and j["when_no_agents"] == "extension:101"


def test_priority_callers_and_language_reach_the_step_and_explain() -> None:
    d = build(user_toml("101") + user_toml("102") + user_toml("103")
              + QUEUES.replace('service_level_seconds = 30',
                               'service_level_seconds = 30\n'
                               'priority_callers = ["+1514*", "101"]\nlanguage = "fr"'))
    step = only(plan(trunk("+15145550170"), d, live(d)))
    assert isinstance(step, Queue)
    assert (step.priority_callers, step.language) == (("+1514*", "101"), "fr")
    assert "priority callers: +1514*, 101" in step.reason
    plain = only(plan(phone("101", "861"), d, live(d)))
    assert isinstance(plain, Queue)
    assert (plain.priority_callers, plain.language) == ((), "")  # unset: the menu's, or en
