"""The registrar's RFC 3261 s10.3 rules, without sockets."""

from __future__ import annotations

from engine.sip.message import Request, parse
from engine.sip.registrar import MAX_CONTACTS_PER_AOR, Registrar


def register(contacts: list[str], call_id: str = "c1", cseq: int = 1,
             expires: int | None = None) -> Request:
    lines = [
        "REGISTER sip:pbx.example.test SIP/2.0",
        "Via: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bKreg" + str(cseq),
        "From: <sip:101@pbx.example.test>;tag=f1",
        "To: <sip:101@pbx.example.test>",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} REGISTER",
        *[f"Contact: {c}" for c in contacts],
    ]
    if expires is not None:
        lines.append(f"Expires: {expires}")
    lines.append("Content-Length: 0")
    msg = parse(("\r\n".join(lines) + "\r\n\r\n").encode())
    assert isinstance(msg, Request)
    return msg


def asked() -> float:
    """The registrar's spread taken as 0: the Expires asked (bounded) is granted."""
    return 0.0


def test_several_contacts_with_q_and_lookup_order() -> None:
    r = Registrar(random=asked, min_expires=60, max_expires=3600)
    res = r.register(register(["<sip:101@10.0.0.1:5062>;q=0.5",
                               "<sip:101@10.0.0.2:5062>;q=0.9"]), "101", "udp:x", 1000.0)
    assert res.status == 200 and len(res.saved) == 2
    assert [b.contact for b in r.lookup("101", 1000.0)] == [
        "sip:101@10.0.0.2:5062", "sip:101@10.0.0.1:5062"]
    contacts = [v for k, v in res.headers if k == "Contact"]
    assert len(contacts) == 2 and all(";expires=3600" in c for c in contacts)


def test_expires_bounds_423_and_clamp() -> None:
    r = Registrar(random=asked, min_expires=60, max_expires=600)
    res = r.register(register(["<sip:101@h>"], expires=30), "101", "udp:x", 0.0)
    assert res.status == 423 and ("Min-Expires", "60") in res.headers
    assert r.count() == 0
    res = r.register(register(["<sip:101@h>;expires=99999"]), "101", "udp:x", 0.0)
    assert res.status == 200 and res.saved[0].expires_at == 600.0


def test_expiry_removes_binding() -> None:
    r = Registrar(random=asked, min_expires=60, max_expires=600)
    r.register(register(["<sip:101@h>"], expires=120), "101", "udp:x", 0.0)
    assert r.lookup("101", 119.0) and not r.lookup("101", 120.0)
    assert [b.contact for b in r.expire(121.0)] == ["sip:101@h"] and r.count() == 0


def test_star_removes_all_only_with_expires_zero() -> None:
    r = Registrar(random=asked)
    r.register(register(["<sip:101@a>", "<sip:101@b>"], cseq=1), "101", "udp:x", 0.0)
    assert r.register(register(["*"], cseq=2, expires=60), "101", "udp:x", 1.0).status == 400
    assert r.register(register(["*", "<sip:101@c>"], cseq=3, expires=0), "101", "udp:x",
                      1.0).status == 400
    res = r.register(register(["*"], cseq=4, expires=0), "101", "udp:x", 1.0)
    assert res.status == 200 and len(res.removed) == 2 and r.count() == 0


def test_call_id_cseq_ordering() -> None:
    r = Registrar(random=asked)
    assert r.register(register(["<sip:101@a>"], cseq=5), "101", "udp:x", 0.0).status == 200
    stale = r.register(register(["<sip:101@a>"], cseq=5, expires=0), "101", "udp:x", 1.0)
    assert stale.status == 500 and r.count() == 1
    # a new Call-ID (the phone rebooted) may update regardless of CSeq
    res = r.register(register(["<sip:101@a>"], call_id="c2", cseq=1, expires=0), "101",
                     "udp:x", 2.0)
    assert res.status == 200 and r.count() == 0


def test_fetch_without_contact_lists_bindings() -> None:
    r = Registrar(random=asked)
    r.register(register(["<sip:101@a>"], cseq=1), "101", "udp:x", 0.0)
    res = r.register(register([], cseq=2), "101", "udp:x", 10.0)
    assert res.status == 200 and not res.saved
    assert [v for k, v in res.headers if k == "Contact"] == ["<sip:101@a>;expires=3590"]


def test_contact_flood_is_capped() -> None:
    r = Registrar(random=asked)
    for i in range(MAX_CONTACTS_PER_AOR + 5):
        r.register(register([f"<sip:101@10.0.0.{i}>"], call_id=f"c{i}", cseq=1), "101",
                   "udp:x", float(i))
    assert r.count() == MAX_CONTACTS_PER_AOR
    assert "sip:101@10.0.0.0" not in {b.contact for b in r.lookup("101", 20.0)}


def test_bad_contact_params_are_400() -> None:
    r = Registrar(random=asked)
    assert r.register(register(["<sip:101@a>;q=7"]), "101", "udp:x", 0.0).status == 400
    assert r.register(register(["<sip:101@a>;expires=soon"]), "101", "udp:x", 0.0).status == 400


def test_restart_reload_drops_expired() -> None:
    r = Registrar(random=asked)
    res = r.register(register(["<sip:101@a>"], expires=100), "101", "udp:x", 0.0)
    fresh = Registrar(random=asked)
    fresh.load(list(res.saved), 50.0)
    assert fresh.count() == 1
    later = Registrar(random=asked)
    later.load(list(res.saved), 150.0)
    assert later.count() == 0


def test_granted_expires_is_80_to_100_percent_of_the_asked_within_bounds() -> None:
    """A whole office registering in the same second must not refresh in the same
    second for ever: each binding gets 80-100 % of what it asked (bounded)."""
    draws = iter([0.0, 0.5, 0.999999, 0.999999, 0.999999])
    r = Registrar(min_expires=60, max_expires=3600, random=lambda: next(draws))
    granted = []
    for i, asked in enumerate((1000, 1000, 1000, 7200, 70)):
        res = r.register(register([f"<sip:101@10.0.0.{i}>"], call_id=f"c{i}", expires=asked),
                         "101", "udp:x", 0.0)
        assert res.status == 200
        granted.append(res.saved[0].expires_at)
    # 100 %, 90 %, just over 80 %; the maximum (3600) then 80 % of it; never under the
    # minimum (80 % of 70 would be 56)
    assert granted == [1000.0, 900.0, 800.0, 2880.0, 60.0]
    contacts = dict(v.split(";expires=") for k, v in res.headers if k == "Contact")
    assert contacts["<sip:101@10.0.0.1>"] == "900"


def test_granted_expires_spread_with_the_default_randomness() -> None:
    r = Registrar(min_expires=60, max_expires=3600)
    granted = set()
    for i in range(200):
        res = r.register(register([f"<sip:{i}@h>"], call_id=f"c{i}", expires=3600),
                         str(i), "udp:x", 0.0)
        granted.add(res.saved[0].expires_at)
    assert min(granted) >= 2880 and max(granted) <= 3600
    assert len(granted) > 100  # spread, not one value
    # Expires 0 still removes at once, whatever the draw
    gone = r.register(register(["<sip:0@h>"], call_id="c0", cseq=2, expires=0), "0",
                      "udp:x", 1.0)
    assert gone.status == 200 and len(gone.removed) == 1
