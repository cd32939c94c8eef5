"""Message waiting (RFC 3842 / RFC 6665) through Engine.datagram, no sockets."""

from __future__ import annotations

import pytest

from engine.sip.auth import build_authorization
from engine.sip.message import Request, Response
from tests.test_calls import PASSWORDS, PHONES, Net, make_net, statuses


@pytest.fixture(name="net")
def net_fixture() -> Net:
    return make_net()


def subscribe(user: str, box: str, *, expires: int = 600, event: str = "message-summary",
              auth: str | None = None, cseq: int = 1, to_tag: str = "",
              call_id: str = "mwi-1") -> bytes:
    src = PHONES[user]
    lines = [f"SUBSCRIBE sip:{box}@pbx.test SIP/2.0",
             f"Via: SIP/2.0/UDP {src[0]}:{src[1]};branch=z9hG4bKmwi{cseq}{call_id};rport",
             "Max-Forwards: 70", f"From: <sip:{user}@pbx.test>;tag=s{user}",
             f"To: <sip:{box}@pbx.test>" + (f";tag={to_tag}" if to_tag else ""),
             f"Call-ID: {call_id}", f"CSeq: {cseq} SUBSCRIBE",
             f"Contact: <sip:{user}@{src[0]}:{src[1]}>", f"Event: {event}",
             "Accept: application/simple-message-summary", f"Expires: {expires}"]
    if auth:
        lines.append(f"Proxy-Authorization: {auth}")
    return ("\r\n".join([*lines, "Content-Length: 0", "", ""])).encode()


def subscribed(net: Net, user: str = "101", box: str = "101") -> Response:
    src = PHONES[user]
    net.send(subscribe(user, box), src)
    [challenge] = [r for r in net.responses(src) if r.status == 407]
    auth = build_authorization(challenge.get("proxy-authenticate") or "", "SUBSCRIBE",
                               f"sip:{box}@pbx.test", user, PASSWORDS[user], "cn")
    net.send(subscribe(user, box, auth=auth, cseq=2), src)
    msgs = net.drain(src)
    [ok] = [m for m in msgs if isinstance(m, Response) and m.status == 200]
    [notify] = [m for m in msgs if isinstance(m, Request) and m.method == "NOTIFY"]
    assert notify.get("event") == "message-summary"
    assert (notify.get("subscription-state") or "").startswith("active;expires=")
    assert b"Messages-Waiting: no" in notify.body and b"Voice-Message: 0/0" in notify.body
    assert notify.call_id == "mwi-1" and notify.from_.tag == ok.to.tag
    return ok


def test_subscribe_notify_now_and_when_counts_change(net: Net) -> None:
    ok = subscribed(net)
    assert ok.get("expires") == "600"
    net.take(net.engine.set_mwi_counts({"101": (2, 1)}, net.clock.now))
    [notify] = net.requests(PHONES["101"], "NOTIFY")
    assert b"Messages-Waiting: yes" in notify.body and b"Voice-Message: 2/1" in notify.body
    assert b"Message-Account: sip:101@pbx.test" in notify.body
    net.take(net.engine.set_mwi_counts({"101": (2, 1), "102": (1, 0)}, net.clock.now))
    assert net.requests(PHONES["101"], "NOTIFY") == []  # 101's counts did not change


def test_unsubscribe_and_expiry_end_with_terminated(net: Net) -> None:
    ok = subscribed(net)
    src = PHONES["101"]
    net.send(subscribe("101", "101", expires=0, cseq=3, to_tag=ok.to.tag or ""), src)
    msgs = net.drain(src)
    assert 200 in statuses(msgs)
    [last] = [m for m in msgs if isinstance(m, Request) and m.method == "NOTIFY"]
    assert (last.get("subscription-state") or "").startswith("terminated")
    assert net.engine.mwi.subs == {}
    net.send(subscribe("101", "101", expires=60, call_id="mwi-2"), src)
    [challenge] = [r for r in net.responses(src) if r.status == 407]
    auth = build_authorization(challenge.get("proxy-authenticate") or "", "SUBSCRIBE",
                               "sip:101@pbx.test", "101", "pw101", "cn2")
    net.send(subscribe("101", "101", expires=60, auth=auth, cseq=2, call_id="mwi-2"), src)
    net.drain(src)
    net.tick(61)
    notifies = [m for m in net.drain(src) if isinstance(m, Request) and m.method == "NOTIFY"
                and m.call_id == "mwi-2"]  # (unanswered NOTIFYs are retransmitted too)
    assert notifies and (notifies[-1].get("subscription-state") or "").startswith("terminated")
    assert net.engine.mwi.subs == {}


def test_only_your_own_mailbox_and_only_known_events(net: Net) -> None:
    src = PHONES["101"]
    net.send(subscribe("101", "101", event="conference"), src)
    assert 489 in statuses(net.drain(src))
    net.send(subscribe("101", "102", call_id="other"), src)
    [challenge] = [r for r in net.responses(src) if r.status == 407]
    auth = build_authorization(challenge.get("proxy-authenticate") or "", "SUBSCRIBE",
                               "sip:102@pbx.test", "101", "pw101", "cn")
    net.send(subscribe("101", "102", auth=auth, cseq=2, call_id="other"), src)
    assert 403 in statuses(net.drain(src))
