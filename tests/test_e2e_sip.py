"""The running engine through real sockets: OPTIONS, RFC 4475, REGISTER, blocks, restart."""

from __future__ import annotations

import json
import re
import socket
import sys
import urllib.error
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.sip.auth import build_authorization
from engine.sip.message import Response, parse
from tests.conftest import EXAMPLE, SHARED, EngineProcess, bench_directory, udp_exchange

sys.path.insert(0, str(Path(__file__).resolve().parent / "sipp"))
from sipp import auth_csv_line, run_sipp

TORTURE = SHARED / "conformance" / "rfc4475"


def options(branch: str | None = None, call_id: str = "opt-1") -> bytes:
    # A branch of each Call-ID's own: the tests sharing an engine would otherwise send
    # one transaction's retransmissions (RFC 3261 s17.2.3), answered to its first sender.
    branch = branch or f"z9hG4bK-{call_id}"
    return (f"OPTIONS sip:pbx.example.test SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:9;branch={branch};rport\r\n"
            f"From: <sip:probe@example.test>;tag=p1\r\nTo: <sip:pbx.example.test>\r\n"
            f"Call-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
            f"Content-Length: 0\r\n\r\n").encode()


def only_response(replies: list[bytes]) -> Response:
    assert len(replies) == 1, replies
    msg = parse(replies[0])
    assert isinstance(msg, Response)
    return msg


@pytest.fixture(scope="module")
def quiet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineProcess]:
    """One engine for the tests that leave no state behind (no binding, no failed
    authentication, nothing malformed in its log); the digest tests share another
    (``registrar``); a test that blocks a source, sends torture messages or restarts
    the engine has its own (``engine``)."""
    proc = EngineProcess(tmp_path_factory.mktemp("quiet"), EXAMPLE).start()
    yield proc
    code = proc.stop()
    assert code == 0, f"engine did not shut down cleanly ({code}):\n{proc.log()}"


def test_options_udp_answered_with_capabilities(quiet: EngineProcess) -> None:
    engine = quiet
    resp = only_response(udp_exchange(engine.sip, options()))
    assert resp.status == 200
    assert "REGISTER" in (resp.get("allow") or "") and resp.get("accept") == "application/sdp"
    assert resp.get("supported") == "outbound, path, replaces"  # RFC 5626 flows, RFC 3327 Path
    via = resp.top_via
    assert via.received == "127.0.0.1" and via.rport not in (None, "")  # RFC 3581


def test_admin_listener_serves_nothing_unauthenticated_but_health(
        quiet: EngineProcess) -> None:
    engine = quiet
    assert engine.health()["registrations"] == 0 and engine.metrics()
    for path in ("/registrations", "/calls", "/recordings", "/route/explain?from=1&to=2"):
        with pytest.raises(urllib.error.HTTPError) as gone:
            engine.http_get(path)
        assert gone.value.code == 404, path
        with pytest.raises(urllib.error.HTTPError) as anonymous:
            engine.http_get("/api/v1" + path)
        assert anonymous.value.code == 401, path


def test_register_requiring_path_is_accepted_and_the_path_echoed(
        quiet: EngineProcess) -> None:
    engine = quiet
    # RFC 3327 s5.3: Require: path is no longer refused (420); a REGISTER that needs
    # no authentication is not reached here, so the challenge shows it was accepted.
    register = options(call_id="reg-path").replace(b"OPTIONS", b"REGISTER").replace(
        b"Max-Forwards: 70\r\n",
        b"Max-Forwards: 70\r\nRequire: path\r\nPath: <sip:127.0.0.1:9;lr>\r\n"
        b"Contact: <sip:101@127.0.0.1:9>\r\n")
    resp = only_response(udp_exchange(engine.sip, register))
    assert resp.status == 401 and resp.get("unsupported") is None


def test_serve_logs_which_parser_it_runs(quiet: EngineProcess) -> None:
    engine = quiet
    # Operators see whether the C quick paths were built (tests/test_speedups.py).
    serving = [json.loads(line) for line in engine.log().splitlines()
               if line.startswith("{") and '"serving"' in line]
    assert len(serving) == 1 and serving[0]["parser"] == "c"


def test_udp_crlf_keepalives_are_ignored_quietly(quiet: EngineProcess) -> None:
    engine = quiet
    # pjsip and Linphone send CRLFs over UDP every 15-30 s: no answer, no parse error.
    before = engine.metrics().get('switchboard_sip_parse_errors_total{transport="udp"}', 0.0)
    for ping in (b"\r\n\r\n", b"\r\n"):
        assert udp_exchange(engine.sip, ping, timeout=0.3) == []
    resp = only_response(udp_exchange(engine.sip, options(call_id="after-ping")))
    assert resp.status == 200
    after = engine.metrics().get('switchboard_sip_parse_errors_total{transport="udp"}', 0.0)
    assert after == before
    assert "malformed" not in engine.log()


def test_options_tcp_and_crlf_keepalive(quiet: EngineProcess) -> None:
    engine = quiet
    with socket.create_connection(engine.sip, timeout=3) as s:
        s.sendall(b"\r\n\r\n")
        assert s.recv(16) == b"\r\n"  # RFC 5626 s3.5.1 pong
        msg = options(call_id="opt-tcp").replace(b"SIP/2.0/UDP", b"SIP/2.0/TCP")
        # split across two writes: the framer must join them
        s.sendall(msg[:40])
        s.sendall(msg[40:])
        data = b""
        while b"\r\n\r\n" not in data:
            data += s.recv(4096)
        resp = parse(data, stream=True)
        assert isinstance(resp, Response) and resp.status == 200


# RFC 4475 through a real socket: what the server must answer (README table).
EXPECT: dict[str, set[int] | None] = {
    "badinv01": {400}, "clerr": {400}, "ncl": {400}, "scalar02": {400}, "quotbal": {400},
    "ltgtruri": {400}, "lwsruri": {400}, "lwsstart": {400}, "trws": {400}, "escruri": {400},
    "regbadct": {400}, "badaspec": {400}, "baddn": {400}, "badvers": {505},
    "mismatch01": {400}, "mismatch02": {400}, "insuf": {400}, "multi01": {400},
    "mcl01": {400}, "unkscm": {416}, "novelsc": {416}, "bext01": {420}, "invut": {415},
    "regaut01": {401}, "sdp01": {406, 488}, "intmeth": {405, 501}, "esc02": {405, 501},
    "zeromf": {200},
    # responses: dropped
    "unreason": None, "noreason": None, "scalarlg": None, "bigcode": None, "bcast": None,
}
NEVER_400 = {"wsinv", "esc01", "escnull", "lwsdisp", "longreq", "dblreq", "semiuri",
             "transports", "mpart01", "badbranch", "unksm2", "cparam01", "cparam02",
             "regescrt", "inv2543", "baddate"}


def final_statuses(target: tuple[str, int], data: bytes, timeout: float) -> list[int]:
    """Final statuses received for one datagram (provisionals skipped)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(timeout)
        s.sendto(data, target)
        out: list[int] = []
        try:
            while not out:
                msg = parse(s.recv(65535))
                assert isinstance(msg, Response)
                if msg.status >= 200:
                    out.append(msg.status)
            s.settimeout(0.2)  # a duplicate final answer would be a bug: catch it
            out.append(parse(s.recv(65535)).status)  # type: ignore[union-attr]
        except TimeoutError:
            pass
        return out


def test_rfc4475_through_udp(engine: EngineProcess) -> None:
    seen: dict[str, list[int]] = {}
    for path in sorted(TORTURE.glob("*.dat")):
        name = path.stem
        # Many of the files share one branch and sent-by, so a compliant server
        # matches the later ones to the first one's transaction (RFC 3261
        # s17.2.3) and treats them as retransmissions. Each file gets its own
        # branch here; badbranch keeps its bare cookie.
        suffix = b"." + name.encode()
        data = re.sub(rb"branch=(z9hG4bK[^;\r\n,]+)", lambda m, sfx=suffix: m.group(0) + sfx,
                      path.read_bytes(), count=1)
        seen[name] = final_statuses(engine.sip, data,
                                    timeout=0.5 if EXPECT.get(name, set()) is None else 2.0)
    for name, want in EXPECT.items():
        if want is None:
            assert seen[name] == [], (name, seen[name])
        else:
            assert seen[name] and set(seen[name]) <= want, (name, seen[name], want)
    for name in NEVER_400:
        assert seen[name] and 400 not in seen[name], (name, seen[name])
    assert seen["test"] in ([400], []) or 400 not in seen["test"]
    assert engine.alive()
    assert only_response(udp_exchange(engine.sip, options(call_id="after"))).status == 200
    assert engine.metrics()['switchboard_sip_parse_errors_total{transport="udp"}'] >= 20


def register(ext: str, branch: str, cseq: int, authorization: str | None = None,
             call_id: str = "reg-1", expires: int = 600, port: int = 5062) -> bytes:
    lines = ["REGISTER sip:pbx.example.test SIP/2.0",
             f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch={branch};rport",
             f"From: <sip:{ext}@pbx.example.test>;tag=r{cseq}",
             f"To: <sip:{ext}@pbx.example.test>", f"Call-ID: {call_id}",
             f"CSeq: {cseq} REGISTER", "Max-Forwards: 70",
             f"Contact: <sip:{ext}@127.0.0.1:{port}>", f"Expires: {expires}"]
    if authorization:
        lines.append(f"Authorization: {authorization}")
    return ("\r\n".join([*lines, "Content-Length: 0", "", ""])).encode()


def digest_register(engine: EngineProcess, ext: str, password: str, n: int,
                    algorithm: str = "SHA-256") -> Response:
    first = only_response(udp_exchange(engine.sip, register(ext, f"z9hG4bKa{n}", 2 * n)))
    assert first.status == 401
    challenges = first.get_lines("www-authenticate")
    assert [c for c in challenges if "algorithm=SHA-256" in c]
    assert [c for c in challenges if "algorithm=MD5" in c]
    challenge = next(c for c in challenges if f"algorithm={algorithm}" in c)
    auth = build_authorization(challenge, "REGISTER", "sip:pbx.example.test", ext, password,
                               cnonce=f"cn{n}")
    return only_response(udp_exchange(engine.sip, register(ext, f"z9hG4bKb{n}", 2 * n + 1,
                                                           auth)))


@pytest.fixture(scope="module")
def registrar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineProcess]:
    """One engine for the digest tests that stay below the failure limit: 101's one
    binding (each registration replaces it, with a higher CSeq on its Call-ID) and
    two failed authentications, counted as a delta."""
    proc = EngineProcess(tmp_path_factory.mktemp("registrar"), EXAMPLE).start()
    yield proc
    code = proc.stop()
    assert code == 0, f"engine did not shut down cleanly ({code}):\n{proc.log()}"


@pytest.mark.parametrize(("algorithm", "n"), [("SHA-256", 1), ("MD5", 3)])
def test_register_with_digest_then_list(registrar: EngineProcess, algorithm: str,
                                        n: int) -> None:
    engine = registrar
    ok = digest_register(engine, "101", "alice-secret-101", n, algorithm)
    assert ok.status == 200
    # 80-100 % of the 600 s asked (the registrar spreads refreshes)
    [contact] = ok.get_all("contact")
    uri, _, granted = contact.partition(";expires=")
    assert uri == "<sip:101@127.0.0.1:5062>" and 480 <= int(granted) <= 600
    rows = engine.api_get("/registrations")
    assert [r["extension"] for r in rows] == ["101"]
    assert engine.metrics()["switchboard_registrations_active"] == 1.0
    listed = engine.cli("registrations", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [(r["extension"], r["contact"]) for r in json.loads(listed.stdout)] == [
        ("101", "sip:101@127.0.0.1:5062")]


def test_wrong_password_and_unknown_user_look_the_same(registrar: EngineProcess) -> None:
    engine = registrar
    key = 'switchboard_auth_failures_total{method="REGISTER"}'
    before = engine.metrics().get(key, 0.0)
    bad = digest_register(engine, "101", "wrong", 10)
    unknown = digest_register(engine, "555", "whatever", 11)
    assert bad.status == unknown.status == 401
    assert bad.reason == unknown.reason
    assert engine.metrics()[key] - before == 2.0
    assert "alice-secret-101" not in engine.log() and "whatever" not in engine.log()


def test_repeated_failures_block_the_source(engine: EngineProcess) -> None:
    for n in range(10):
        assert digest_register(engine, "101", "wrong", n).status == 401
    # blocked now: even the right password is refused, with a reason
    blocked = only_response(udp_exchange(engine.sip, register("101", "z9hG4bKblk", 99)))
    assert blocked.status == 403
    m = engine.metrics()
    assert m["switchboard_auth_blocks_total"] == 1.0
    assert m["switchboard_blocked_sources"] == 1.0
    assert "source blocked after failed authentications" in engine.log()


def test_bindings_survive_a_restart(engine: EngineProcess) -> None:
    assert digest_register(engine, "102", "bruno-secret-102", 1).status == 200
    assert engine.stop() == 0
    engine.start(with_directory=False)
    assert engine.health()["registrations"] == 1
    rows = engine.api_get("/registrations")
    assert [(r["extension"], r["contact"]) for r in rows] == [("102", "sip:102@127.0.0.1:5062")]


def test_sipp_registers_200_users_and_wrong_passwords_are_blocked(tmp_path: Path) -> None:
    users = {str(2000 + i): f"pw-{2000 + i}-secret" for i in range(200)}
    directory = tmp_path / "directory.toml"
    directory.write_text(bench_directory(users))
    proc = EngineProcess(tmp_path, directory, ["--digest-algorithms", "MD5"]).start()
    try:
        lines = [auth_csv_line(ext, pw) for ext, pw in users.items()]
        result = run_sipp("register_auth.xml", proc.target, lines, calls=200, rate=100,
                          timeout=60, keys={"domain": "bench.test"})
        assert result.ok, result.describe()
        assert result.successful == 200 and result.failed == 0
        assert proc.health()["registrations"] == 200
        wrong = run_sipp("register_wrong.xml", proc.target,
                         [auth_csv_line("2000", "not-the-password")], calls=12, rate=20,
                         timeout=60, keys={"domain": "bench.test"})
        # 10 refusals (401 after the wrong credentials), then the source is
        # blocked: the last 2 get 403 to their very first REGISTER, which
        # the scenario counts as failed calls.
        assert (wrong.successful, wrong.failed) == (10, 2), wrong.describe()
        m = proc.metrics()
        assert m['switchboard_auth_failures_total{method="REGISTER"}'] >= 10
        assert m["switchboard_auth_blocks_total"] == 1.0
        # the block holds for the right password too
        again = run_sipp("register_auth.xml", proc.target, lines[:1], calls=1, rate=1,
                         timeout=20, keys={"domain": "bench.test"})
        assert again.successful == 0
    finally:
        assert proc.stop() == 0


def test_t1_is_configurable(tmp_path: Path) -> None:
    """An unacknowledged final answer is resent at T1, 2*T1, 4*T1... (s17.2.1, Timer G)."""
    invite = (b"INVITE sip:102@pbx.example.test SIP/2.0\r\n"
              b"Via: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKt1check;rport\r\n"
              b"From: <sip:101@pbx.example.test>;tag=t1\r\nTo: <sip:102@pbx.example.test>\r\n"
              b"Call-ID: t1-check\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\n"
              b"Contact: <sip:101@127.0.0.1:9>\r\nContent-Length: 0\r\n\r\n")
    counts = {}
    for t1 in (50, 500):
        engine = EngineProcess(tmp_path / str(t1), EXAMPLE, [f"--t1-ms={t1}"])
        (tmp_path / str(t1)).mkdir()
        engine.start()
        try:
            replies = udp_exchange(engine.sip, invite, timeout=0.7, expect=20)
        finally:
            engine.stop()
        counts[t1] = sum(1 for r in replies if r.startswith(b"SIP/2.0 407"))
    # T1 = 50 ms: sent at 0, 50, 150, 350 ms (+ 750 ms); T1 = 500 ms: at 0 and 500 ms.
    assert counts[50] >= 4 and counts[500] <= 2, counts
