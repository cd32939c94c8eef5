"""Busy lamps (dialog, RFC 4235) and presence (RFC 3856) over RFC 6665, through
Engine.datagram with a fake clock, no sockets; the subscription state table."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from lxml import etree

from engine.calls.states import IllegalTransition
from engine.services import subscriptions as subs_mod
from engine.services.subscriptions import SUBSCRIPTION, SubEvent, SubState
from engine.sip.auth import build_authorization
from engine.sip.message import Request, Response
from tests.test_calls import (
    PASSWORDS,
    PHONES,
    SDP,
    Net,
    in_dialog,
    make_net,
    phone_call,
    register,
    reply,
    statuses,
)

NS = {"d": "urn:ietf:params:xml:ns:dialog-info"}
PIDF = {"p": "urn:ietf:params:xml:ns:pidf", "dm": "urn:ietf:params:xml:ns:pidf:data-model",
        "rpid": "urn:ietf:params:xml:ns:pidf:rpid"}
SCHEMA = etree.XMLSchema(etree.parse(str(Path(__file__).parent / "xsd" / "dialog-info.xsd")))


@pytest.fixture(name="net")
def net_fixture() -> Net:
    return make_net()


def subscribe(user: str, target: str, *, event: str = "dialog", expires: int | None = 600,
              auth: str | None = None, cseq: int = 1, to_tag: str = "",
              call_id: str = "blf-1", accept: str | None = None) -> bytes:
    src = PHONES[user]
    accept = accept if accept is not None else (
        "application/dialog-info+xml" if event == "dialog" else "application/pidf+xml")
    lines = [f"SUBSCRIBE sip:{target}@pbx.test SIP/2.0",
             f"Via: SIP/2.0/UDP {src[0]}:{src[1]};branch=z9hG4bKblf{cseq}{call_id};rport",
             "Max-Forwards: 70", f"From: <sip:{user}@pbx.test>;tag=w{user}{call_id}",
             f"To: <sip:{target}@pbx.test>" + (f";tag={to_tag}" if to_tag else ""),
             f"Call-ID: {call_id}", f"CSeq: {cseq} SUBSCRIBE",
             f"Contact: <sip:{user}@{src[0]}:{src[1]}>", f"Event: {event}",
             f"Accept: {accept}"]
    if expires is not None:
        lines.append(f"Expires: {expires}")
    if auth:
        lines.append(f"Proxy-Authorization: {auth}")
    return ("\r\n".join([*lines, "Content-Length: 0", "", ""])).encode()


def authorized(net: Net, user: str, target: str, password: str | None = None,
               **kw: object) -> list[Request | Response]:
    """SUBSCRIBE, 407, SUBSCRIBE with credentials; what came back to ``user``."""
    src = PHONES[user]
    call_id = str(kw.get("call_id", "blf-1"))
    net.send(subscribe(user, target, **kw), src)  # type: ignore[arg-type]
    [challenge] = [r for r in net.responses(src) if r.status == 407]
    auth = build_authorization(challenge.get("proxy-authenticate") or "", "SUBSCRIBE",
                               f"sip:{target}@pbx.test", user,
                               password or PASSWORDS[user], "cn" + call_id)
    net.send(subscribe(user, target, auth=auth, cseq=2, **kw), src)  # type: ignore[arg-type]
    return net.drain(src)


def notifies(msgs: list[Request | Response]) -> list[Request]:
    return [m for m in msgs if isinstance(m, Request) and m.method == "NOTIFY"]


def answer_notifies(net: Net, user: str, status: int = 200) -> list[Request]:
    """Take ``user``'s NOTIFYs and answer each (as a phone does)."""
    got = notifies(net.drain(PHONES[user]))
    for n in got:
        net.send(reply(n, status, tag=n.to.tag or "w"), PHONES[user])
    return got


def dialogs(notify: Request) -> list[tuple[str, etree._Element]]:
    """The document's dialogs as (state, element), after validating it against the
    RFC 4235 schema."""
    assert notify.get("content-type") == "application/dialog-info+xml"
    doc = etree.fromstring(notify.body)
    SCHEMA.assertValid(doc)
    assert doc.get("state") == "full"
    return [(d.findtext("d:state", namespaces=NS) or "", d)
            for d in doc.findall("d:dialog", NS)]


def version(notify: Request) -> int:
    return int(etree.fromstring(notify.body).get("version") or "-1")


def watching(net: Net, user: str = "103", target: str = "102") -> Response:
    msgs = authorized(net, user, target)
    [ok] = [m for m in msgs if isinstance(m, Response) and m.status == 200]
    [first] = notifies(msgs)
    net.send(reply(first, 200, tag=first.to.tag or "w"), PHONES[user])
    assert first.get("event") == "dialog"
    assert (first.get("subscription-state") or "").startswith("active;expires=")
    assert first.from_.tag == ok.to.tag and ok.get("contact")
    [(state, idle)] = dialogs(first)  # idle: one terminated dialog, no call
    assert state == "terminated" and idle.get("call-id") is None and version(first) == 0
    return ok


# ---------------------------------------------------------------------- the state table
def test_state_table_refuses_illegal_moves() -> None:
    assert SUBSCRIPTION.move(SubState.NEW, SubEvent.ACCEPT) is SubState.ACTIVE
    assert SUBSCRIPTION.move(SubState.ACTIVE, SubEvent.NOTIFY_FAILED) is SubState.ACTIVE
    assert SUBSCRIPTION.move(SubState.ACTIVE, SubEvent.GONE) is SubState.TERMINATED
    with pytest.raises(IllegalTransition, match="'refresh' is not allowed in state 'new'"):
        SUBSCRIPTION.move(SubState.NEW, SubEvent.REFRESH)
    for event in (SubEvent.REFRESH, SubEvent.ACCEPT, SubEvent.EXPIRE, SubEvent.UNSUBSCRIBE):
        with pytest.raises(IllegalTransition):
            SUBSCRIPTION.move(SubState.TERMINATED, event)
    # Every state can end.
    assert SUBSCRIPTION.allows(SubState.NEW, SubEvent.FETCH)
    assert all(SUBSCRIPTION.allows(SubState.ACTIVE, e) for e in (
        SubEvent.UNSUBSCRIBE, SubEvent.EXPIRE, SubEvent.GIVE_UP, SubEvent.REVOKED))


# ---------------------------------------------------------------------- dialog package
def test_call_to_watched_extension_notifies_trying_early_confirmed_terminated(
        net: Net) -> None:
    register(net, "101", "102")
    watching(net)
    src = phone_call(net, "101", "102")
    net.drain(src)
    [trying] = answer_notifies(net, "103")
    [(state, _)] = dialogs(trying)
    assert state == "trying" and version(trying) == 1
    [inv] = net.requests(PHONES["102"], "INVITE")
    net.send(reply(inv, 180), PHONES["102"])
    [early] = answer_notifies(net, "103")
    [(state, d)] = dialogs(early)
    assert state == "early" and version(early) == 2
    assert d.get("direction") == "recipient" and d.get("call-id") == inv.call_id
    assert d.get("remote-tag") == inv.from_.tag
    assert d.findtext("d:remote/d:identity", namespaces=NS) == "sip:101@pbx.test"
    assert d.find("d:remote/d:identity", NS).get("display") == "Alice Martin"
    assert d.findtext("d:local/d:identity", namespaces=NS) == "sip:102@pbx.test"
    net.send(reply(inv, 180), PHONES["102"])  # the same state again: no NOTIFY
    assert answer_notifies(net, "103") == []
    net.send(reply(inv, 200, body=SDP, contact="<sip:102@127.0.0.1:6102>"), PHONES["102"])
    [confirmed] = answer_notifies(net, "103")
    [(state, d)] = dialogs(confirmed)
    assert state == "confirmed" and d.get("local-tag") == "callee1"
    [ok] = [r for r in net.responses(src) if r.status == 200]
    net.send(in_dialog("ACK", ok, src, cseq=2, call_id="call-1", branch="a1"), src)
    net.send(in_dialog("BYE", ok, src, cseq=3, call_id="call-1", branch="b1"), src)
    [ended] = answer_notifies(net, "103")
    [(state, d)] = dialogs(ended)
    assert state == "terminated" and d.get("call-id") == inv.call_id
    assert [version(n) for n in (confirmed, ended)] == [3, 4]


def test_a_watcher_arriving_mid_call_sees_it_and_one_after_the_last_left_too(
        net: Net) -> None:
    # With no watcher the calls note no changes and the engine keeps no book: the
    # first watcher's document is made from the calls alive then.
    register(net, "101", "102")
    src = phone_call(net, "101", "102")
    [inv] = net.requests(PHONES["102"], "INVITE")
    net.send(reply(inv, 180), PHONES["102"])
    assert not net.engine.calls.notes_changes and net.engine.calls.changed == []
    msgs = authorized(net, "103", "102")
    [first] = notifies(msgs)
    net.send(reply(first, 200, tag=first.to.tag or "w"), PHONES["103"])
    [(state, d)] = dialogs(first)
    assert state == "early" and d.get("call-id") == inv.call_id
    assert d.get("direction") == "recipient" and net.engine.calls.notes_changes
    # The last watcher leaves; the call is answered meanwhile: no notes, no book.
    [ok] = [m for m in msgs if isinstance(m, Response) and m.status == 200]
    net.send(subscribe("103", "102", expires=0, cseq=3, to_tag=ok.to.tag or ""),
             PHONES["103"])
    answer_notifies(net, "103")
    net.send(reply(inv, 200, body=SDP, contact="<sip:102@127.0.0.1:6102>"), PHONES["102"])
    [answered] = [r for r in net.responses(src) if r.status == 200]
    assert not net.engine.calls.notes_changes and net.engine.dialogs.views("102", 0) == ()
    # A new watcher of the caller sees the call confirmed, and its end.
    msgs = authorized(net, "103", "101", call_id="blf-2")
    [again] = notifies(msgs)
    net.send(reply(again, 200, tag=again.to.tag or "w"), PHONES["103"])
    [(state, d)] = dialogs(again)
    assert state == "confirmed" and d.get("direction") == "initiator"
    assert d.get("call-id") == "call-1"
    net.send(in_dialog("ACK", answered, src, cseq=2, call_id="call-1", branch="a1"), src)
    net.send(in_dialog("BYE", answered, src, cseq=3, call_id="call-1", branch="b1"), src)
    [ended] = answer_notifies(net, "103")
    assert [s for s, _ in dialogs(ended)] == ["terminated"]


def test_caller_side_is_an_initiator_dialog(net: Net) -> None:
    register(net, "101", "102")
    watching(net, "103", "101")
    src = phone_call(net, "101", "102")
    net.drain(src)
    [trying] = answer_notifies(net, "103")
    [(state, d)] = dialogs(trying)
    assert state == "trying" and d.get("direction") == "initiator"
    assert d.get("call-id") == "call-1" and d.get("local-tag") == "from-call-1"
    assert d.findtext("d:remote/d:identity", namespaces=NS) == "sip:102@pbx.test"
    [inv] = net.requests(PHONES["102"], "INVITE")
    net.send(reply(inv, 180), PHONES["102"])
    [early] = answer_notifies(net, "103")
    assert [s for s, _ in dialogs(early)] == ["early"]


def test_wrong_password_is_challenged_again_and_not_subscribed(net: Net) -> None:
    msgs = authorized(net, "103", "102", password="wrong")
    assert statuses(msgs) == [407] and notifies(msgs) == []
    assert net.engine.subs.subs == {}
    assert net.engine.metrics.auth_failures.labels("SUBSCRIBE")._value.get() == 1


def test_unknown_extension_bad_event_and_unacceptable_type(net: Net) -> None:
    assert statuses(authorized(net, "103", "999")) == [404]
    src = PHONES["103"]
    net.send(subscribe("103", "102", event="conference", call_id="blf-e"), src)
    [bad] = net.responses(src)
    assert bad.status == 489 and "dialog" in (bad.get("allow-events") or "")
    net.send(subscribe("103", "102", accept="text/plain", call_id="blf-x"), src)
    [refused] = net.responses(src)
    assert refused.status == 406 and refused.get("accept") == "application/dialog-info+xml"


def test_expires_too_brief_refresh_unsubscribe_and_expiry(net: Net) -> None:
    src = PHONES["103"]
    msgs = authorized(net, "103", "102", expires=10, call_id="blf-0")
    [brief] = [m for m in msgs if isinstance(m, Response)]
    assert brief.status == 423 and brief.get("min-expires") == "60"
    ok = watching(net)
    net.tick(100)
    net.send(subscribe("103", "102", expires=7200, cseq=3, to_tag=ok.to.tag or ""), src)
    msgs = net.drain(src)
    [refreshed] = [m for m in msgs if isinstance(m, Response)]
    assert refreshed.status == 200 and refreshed.get("expires") == "3600"  # the maximum
    [again] = notifies(msgs)  # a refresh is answered by a NOTIFY, full state
    assert again.get("subscription-state") == "active;expires=3600" and version(again) == 1
    net.send(subscribe("103", "102", expires=0, cseq=4, to_tag=ok.to.tag or ""), src)
    msgs = net.drain(src)
    assert statuses(msgs) == [200]
    [last] = notifies(msgs)
    assert last.get("subscription-state") == "terminated"
    assert net.engine.subs.subs == {}
    metrics = net.engine.metrics
    assert metrics.subscriptions_active.labels("dialog")._value.get() == 0
    # A second one, left to expire: the timer ends it with reason=timeout.
    authorized(net, "103", "102", expires=60, call_id="blf-2")
    assert metrics.subscriptions_active.labels("dialog")._value.get() == 1
    net.tick(61)
    ended = [n for n in notifies(net.drain(src)) if n.call_id == "blf-2"]
    assert ended[-1].get("subscription-state") == "terminated;reason=timeout"
    assert net.engine.subs.subs == {}


def test_one_failed_notify_keeps_the_subscription_481_ends_it(net: Net) -> None:
    register(net, "101", "102")
    watching(net)
    phone_call(net, "101", "102")
    net.drain(PHONES["101"])
    answer_notifies(net, "103", 408)  # one failure: kept
    assert len(net.engine.subs.subs) == 1
    assert net.engine.metrics.notifies_failed.labels("dialog", "408")._value.get() == 1
    [inv] = net.requests(PHONES["102"], "INVITE")
    net.send(reply(inv, 180), PHONES["102"])
    [early] = answer_notifies(net, "103", 481)
    assert [s for s, _ in dialogs(early)] == ["early"]
    assert net.engine.subs.subs == {}


def test_notifies_that_time_out_three_times_end_the_subscription(net: Net) -> None:
    register(net, "101", "102")
    watching(net)
    # Two calls ringing 102, then not answered: four NOTIFYs or more, none answered.
    phone_call(net, "101", "102")
    phone_call(net, "101", "102", call_id="call-2")
    timeouts = net.engine.metrics.notifies_failed.labels("dialog", "timeout")
    seen: list[tuple[int, int]] = []
    for _ in range(120):
        net.drain(PHONES["103"])
        net.drain(PHONES["101"])
        net.tick(1)
        seen.append((int(timeouts._value.get()), len(net.engine.subs.subs)))
    alive = {n for n, subs in seen if subs == 1}
    assert alive & {1, 2} and max(alive) < subs_mod.MAX_FAILURES  # a failure keeps it
    assert seen[-1][1] == 0, sorted(set(seen))


def test_notifies_are_paced(net: Net, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(subs_mod, "NOTIFY_BURST", 3)
    register(net, "101", "102")
    src = PHONES["103"]
    # Seven phones subscribing at once (after a restart): 200 to each at once, their
    # first NOTIFYs three per tick.
    first: list[Request] = []
    for i in range(7):
        net.send(subscribe("103", "102", call_id=f"w{i}"), src)
        [challenge] = [r for r in net.responses(src) if r.status == 407]
        auth = build_authorization(challenge.get("proxy-authenticate") or "", "SUBSCRIBE",
                                   "sip:102@pbx.test", "103", "pw103", f"cn{i}")
        net.send(subscribe("103", "102", auth=auth, cseq=2, call_id=f"w{i}"), src)
        msgs = net.drain(src)
        assert statuses(msgs) == [200]
        first += notifies(msgs)
    assert len(first) == 3
    for n in first:
        net.send(reply(n, 200, tag=n.to.tag or "w"), src)
    assert len(net.engine.subs.subs) == 7
    for expected in (3, 1):
        wake = net.engine.next_wakeup()
        assert wake is not None and wake <= net.clock.now + subs_mod.NOTIFY_TICK
        net.tick(subs_mod.NOTIFY_TICK)
        assert len(answer_notifies(net, "103")) == expected
    # A change of 102 for all seven: the same pace.
    net.tick(1)
    phone_call(net, "101", "102")
    assert len(answer_notifies(net, "103")) == 3
    net.tick(subs_mod.NOTIFY_TICK)
    assert len(answer_notifies(net, "103")) == 3
    net.tick(subs_mod.NOTIFY_TICK)
    last = answer_notifies(net, "103")
    assert len(last) == 1 and [s for s, _ in dialogs(last[0])] == ["trying"]


def test_subscriptions_per_phone_are_bounded(net: Net, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(subs_mod, "MAX_PER_WATCHER", 2)
    authorized(net, "103", "101", call_id="a")
    authorized(net, "103", "102", call_id="b")
    msgs = authorized(net, "103", "104", call_id="c")
    [refused] = [m for m in msgs if isinstance(m, Response)]
    assert refused.status == 403 and "2 subscriptions" in (refused.get("warning") or "")
    assert net.engine.subs.watched_by("103") == 2


def test_directory_changes_end_subscriptions_they_no_longer_allow(net: Net) -> None:
    watching(net, "103", "104")
    authorized(net, "101", "102", call_id="by-101")
    authorized(net, "102", "101", call_id="kept")
    directory = net.engine.directory
    users = tuple(dataclasses.replace(u, disabled=True) if u.extension == "101" else u
                  for u in directory.users if u.extension != "104")
    net.engine.set_directory(dataclasses.replace(directory, users=users))
    net.tick(0.01)
    [gone] = notifies(net.drain(PHONES["103"]))
    assert gone.get("subscription-state") == "terminated;reason=noresource"
    [refused] = notifies(net.drain(PHONES["101"]))  # its watcher is disabled
    assert refused.get("subscription-state") == "terminated;reason=rejected"
    assert [s.dialog.call_id for s in net.engine.subs.subs.values()] == ["kept"]


# ---------------------------------------------------------------------- presence
def presence_of(notify: Request) -> tuple[str, str, str]:
    assert notify.get("content-type") == "application/pidf+xml"
    doc = etree.fromstring(notify.body)
    basic = doc.findtext("p:tuple/p:status/p:basic", namespaces=PIDF) or ""
    acts = doc.find("dm:person/rpid:activities", PIDF)
    activity = etree.QName(acts[0]).localname if acts is not None and len(acts) else ""
    return basic, activity, doc.findtext("p:tuple/p:note", namespaces=PIDF) or ""


def test_presence_follows_status_and_calls(net: Net) -> None:
    register(net, "101", "102")
    msgs = authorized(net, "103", "102", event="presence")
    [first] = notifies(msgs)
    net.send(reply(first, 200, tag=first.to.tag or "w"), PHONES["103"])
    assert first.get("event") == "presence"
    assert presence_of(first) == ("open", "unknown", "Available")
    net.engine.set_statuses({"102": "dnd"})
    assert answer_notifies(net, "103") == []  # sent by the engine's next timer
    net.tick(0.1)
    [dnd] = answer_notifies(net, "103")
    assert presence_of(dnd) == ("closed", "busy", "Do not disturb")
    net.engine.set_statuses({"102": "dnd"})
    net.tick(0.1)
    assert answer_notifies(net, "103") == []  # unchanged: nothing sent
    for status, expected in (("lunch", ("closed", "lunch", "Lunch")),
                             ("business_trip", ("closed", "travel", "Business trip")),
                             ("away", ("closed", "away", "Away"))):
        net.engine.set_statuses({"102": status})  # type: ignore[dict-item]
        net.tick(0.1)
        [n] = answer_notifies(net, "103")
        assert presence_of(n) == expected
    net.engine.set_statuses({})
    net.tick(0.1)
    answer_notifies(net, "103")
    src = phone_call(net, "101", "102")
    [inv] = net.requests(PHONES["102"], "INVITE")
    net.send(reply(inv, 200, body=SDP, contact="<sip:102@127.0.0.1:6102>"), PHONES["102"])
    [on_call] = answer_notifies(net, "103")
    assert presence_of(on_call) == ("open", "on-the-phone", "On a call (Available)")
    assert net.engine.metrics.notifies_sent.labels("presence")._value.get() >= 7
    del src


def test_shutdown_ends_every_subscription_deactivated(net: Net) -> None:
    watching(net)
    authorized(net, "103", "101", event="presence", call_id="p1")
    net.take(net.engine.shutdown(net.clock.now))
    last = notifies(net.drain(PHONES["103"]))
    assert sorted(n.get("event") or "" for n in last) == ["dialog", "presence"]
    assert {n.get("subscription-state") for n in last} == {"terminated;reason=deactivated"}
    assert net.engine.subs.subs == {}


def test_caller_cancel_ends_the_ringing_dialog_and_the_book_forgets_it(net: Net) -> None:
    register(net, "101", "102")
    watching(net)
    src = phone_call(net, "101", "102")
    [inv] = net.requests(PHONES["102"], "INVITE")
    net.send(reply(inv, 180), PHONES["102"])
    answer_notifies(net, "103")
    net.drain(src)
    cancel = "\r\n".join([  # the caller's CANCEL of its second INVITE (same branch)
        "CANCEL sip:102@pbx.test SIP/2.0",
        f"Via: SIP/2.0/UDP {src[0]}:{src[1]};branch=z9hG4bKcall-1-2;rport",
        "Max-Forwards: 70", 'From: "Caller 101" <sip:101@pbx.test>;tag=from-call-1',
        "To: <sip:102@pbx.test>", "Call-ID: call-1", "CSeq: 2 CANCEL",
        "Content-Length: 0", "", ""])
    net.send(cancel.encode(), src)
    [ended] = answer_notifies(net, "103")
    assert [s for s, _ in dialogs(ended)] == ["terminated"]
    assert dialogs(ended)[0][1].get("call-id") == inv.call_id
    book = net.engine.dialogs
    assert book.views("102", net.clock.now)  # the end is reported for a while
    net.tick(31)
    net.send(reply(inv, 487), PHONES["102"])
    assert book.views("102", net.clock.now) == () and book.views("101", net.clock.now) == ()
    assert book._items == {} and book._ended == {}


def test_a_document_is_bounded_ringing_first_newest_first(net: Net) -> None:
    register(net, "101", "102")
    watching(net)
    legs = []
    for i in range(6):
        phone_call(net, "101", "102", call_id=f"c{i}")
        net.drain(PHONES["101"])
        [inv] = net.requests(PHONES["102"], "INVITE")
        legs.append(inv)
    net.send(reply(legs[0], 180), PHONES["102"])
    [*_, last] = answer_notifies(net, "103")
    shown = dialogs(last)
    assert len(shown) == 4 and len(last.body) < 2000
    assert shown[0][0] == "early" and shown[0][1].get("call-id") == legs[0].call_id
    assert [s for s, _ in shown[1:]] == ["trying"] * 3
    assert [d.get("call-id") for _, d in shown[1:]] == [legs[i].call_id for i in (5, 4, 3)]
