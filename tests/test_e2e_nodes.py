"""Two `switchboard serve` processes (nodes) on one PostgreSQL database share
registrations and live statuses through the store: a phone registered on node A
is called through node B.

PostgreSQL at ``$DATABASE_URL`` (default ``postgresql://127.0.0.1:5432/test``),
each test in its own schema; unreachable is a failure, never a skip.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from provisioning.model import DialogLeg, DialogRecord
from provisioning.store import open_store
from tests.conftest import EngineProcess, bench_directory, env_database_url, switchboard_bin
from tests.e2e_helpers import Ua

USERS = {"101": "pw101", "102": "pw102", "103": "pw103"}


async def _pg(statement: str) -> None:
    url = env_database_url()
    try:
        conn = await asyncpg.connect(url, timeout=10)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.fail(f"PostgreSQL is required and unreachable at {url}: {exc}", pytrace=False)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture
def shared_db() -> Iterator[str]:
    """A store URL on a fresh schema of the test database (dropped afterwards)."""
    schema = f"sb_nodes_{uuid.uuid4().hex[:12]}"
    asyncio.run(_pg(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{env_database_url()}?search_path={schema}"
    finally:
        asyncio.run(_pg(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))


def cli(db: str, data_dir: Path, *args: str) -> str:
    done = subprocess.run([switchboard_bin(), *args, "--db", db, "--data-dir", str(data_dir)],
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def until(what: str, check: Callable[[], bool], seconds: float = 15.0) -> None:
    """Wait (bounded) for ``check``; fail naming ``what``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"not within {seconds} s: {what}")


@dataclass
class Cluster:
    db: str
    work: Path
    a: EngineProcess
    b: EngineProcess

    def nodes(self) -> dict[str, dict[str, Any]]:
        rows = json.loads(cli(self.db, self.work, "nodes", "--json"))
        return {str(r["id"]): r for r in rows}


@pytest.fixture
def cluster(shared_db: str, tmp_path: Path) -> Iterator[Cluster]:
    yield from two_nodes(shared_db, tmp_path)


def two_nodes(shared_db: str, tmp_path: Path, extra: tuple[str, ...] = ()) -> Iterator[Cluster]:
    """Nodes a and b on ``shared_db``, stopped (cleanly) after the test."""
    directory = tmp_path / "directory.toml"
    directory.write_text(bench_directory(USERS, domain="pbx.test"))
    procs = []
    for name in ("a", "b"):
        data = tmp_path / name
        data.mkdir()
        procs.append(EngineProcess(data, directory, [
            "--db", shared_db, "--node-id", name, "--digest-algorithms", "MD5", *extra]))
    a = procs[0].start()
    try:
        b = procs[1].start()
    except BaseException:
        a.stop()
        raise
    yield Cluster(shared_db, tmp_path, a, b)
    codes = {p.target: p.stop() for p in procs}
    assert set(codes.values()) == {0}, (codes, a.log()[-3000:], b.log()[-3000:])


def test_a_phone_registered_on_one_node_is_called_through_the_other(cluster: Cluster) -> None:
    callee = Ua(cluster.a.sip)
    caller = Ua(cluster.b.sip)
    try:
        callee.register("102", "pw102")
        # B learns the binding from the store (its heartbeat shows what it holds)
        until("node b holds 102's registration",
              lambda: cluster.nodes().get("b", {}).get("registrations") == 1)
        callee.engine = cluster.b.sip  # the callee answers whoever sends the INVITE
        leg = caller.call_with_auth("sip:102@pbx.test", "101", "pw101", "nodes-call-1",
                                    callee=callee)
        assert leg is not None
        assert leg.top_via.port == cluster.b.port  # the call came through node B
        assert leg.uri_text == f"sip:102@127.0.0.1:{callee.port}"
        until("node b counts the call", lambda: cluster.nodes()["b"]["calls"] == 1)
        caller.hang_up()
    finally:
        caller.close()
        callee.close()
    nodes = cluster.nodes()
    assert set(nodes) == {"a", "b"} and all(n["up"] for n in nodes.values())
    assert nodes["a"]["address"] == cluster.a.target
    assert nodes["b"]["address"] == cluster.b.target


@pytest.fixture
def unpolled(shared_db: str, tmp_path: Path) -> Iterator[Cluster]:
    """Two nodes that poll the store for each other's bindings once an hour: what
    they learn within a test, they learn from PostgreSQL's NOTIFY."""
    yield from two_nodes(shared_db, tmp_path, ("--binding-poll-seconds", "3600"))


def test_a_registration_reaches_the_other_node_by_notify(unpolled: Cluster) -> None:
    cluster = unpolled
    for node in (cluster.a, cluster.b):
        assert '"listening for binding changes"' in node.log()
    callee = Ua(cluster.a.sip)
    caller = Ua(cluster.b.sip)
    try:
        callee.register("102", "pw102")
        # B holds it (its heartbeat row says so) long before its next poll (an hour)
        until("node b holds 102's registration",
              lambda: cluster.nodes().get("b", {}).get("registrations") == 1)
        callee.engine = cluster.b.sip
        leg = caller.call_with_auth("sip:102@pbx.test", "101", "pw101", "notify-call-1",
                                    callee=callee)
        assert leg is not None and leg.top_via.port == cluster.b.port
        caller.hang_up()
        # and the unregistration: B stops calling the phone
        callee.engine = cluster.a.sip
        callee.register("102", "pw102", expires=0, cseq=3)
        until("node b dropped 102's registration",
              lambda: cluster.nodes().get("b", {}).get("registrations") == 0)
    finally:
        callee.close()
        caller.close()


def test_an_unregistration_on_one_node_reaches_the_other(cluster: Cluster) -> None:
    phone = Ua(cluster.a.sip)
    try:
        phone.register("103", "pw103")
        until("node b holds 103", lambda: cluster.nodes()["b"]["registrations"] == 1)
        phone.register("103", "pw103", expires=0, cseq=3)
        until("node b dropped 103", lambda: cluster.nodes()["b"]["registrations"] == 0)
    finally:
        phone.close()


def test_a_live_status_set_reaches_both_nodes(cluster: Cluster) -> None:
    cli(cluster.db, cluster.work, "status", "set", "102", "dnd")

    def reloaded(engine: EngineProcess) -> bool:
        return any('"directory reloaded"' in line and '"live_statuses": 1' in line
                   for line in engine.log().splitlines())

    until("node a applied the status", lambda: reloaded(cluster.a))
    until("node b applied the status", lambda: reloaded(cluster.b))


def test_a_stopped_node_leaves_the_list(cluster: Cluster) -> None:
    assert set(cluster.nodes()) == {"a", "b"}
    assert cluster.b.stop() == 0
    assert set(cluster.nodes()) == {"a"}
    text = cli(cluster.db, cluster.work, "nodes")
    assert "a " in text and cluster.a.target in text and "up" in text


def test_a_node_back_from_a_crash_ends_the_calls_it_left(shared_db: str,
                                                          tmp_path: Path) -> None:
    # Node a died holding a call and came back before another node noticed: its record
    # is still in the store under its id. At start it BYEs the call's party itself.
    phone = Ua(("127.0.0.1", 9))
    record = DialogRecord(id="left-1;ftag", node="a", answered_at=time.time() - 60, legs=(
        DialogLeg(call_id="left-1", local_tag="ours", remote_tag="theirs",
                  local_uri="<sip:102@pbx.test>", remote_uri="<sip:101@pbx.test>",
                  remote_target=f"sip:101@127.0.0.1:{phone.port}", local_cseq=5,
                  transport="udp", peer_host="127.0.0.1", peer_port=phone.port),))

    async def records(saved: list[DialogRecord]) -> list[DialogRecord]:
        async with open_store(shared_db, tmp_path) as store:
            await store.write_dialogs(saved)
            return await store.load_dialogs()

    assert asyncio.run(records([record])) == [record]
    directory = tmp_path / "directory.toml"
    directory.write_text(bench_directory(USERS, domain="pbx.test"))
    (tmp_path / "a").mkdir()
    node = EngineProcess(tmp_path / "a", directory, ["--db", shared_db, "--node-id", "a"])
    node.start()
    try:
        phone.engine = node.sip
        bye = phone.engine_bye(10)  # answered 200
        assert bye.call_id == "left-1" and bye.to.tag == "theirs" and bye.from_.tag == "ours"
        assert bye.cseq.number > 5 and bye.top_via.port == node.port
        until("the record deleted", lambda: asyncio.run(records([])) == [])
        [said] = node.events("calls of this node's previous run ended")
        assert said["node"] == "a" and said["calls"] == 1
    finally:
        phone.close()
        assert node.stop() == 0


def test_a_node_id_that_cannot_go_in_a_call_id_is_refused(tmp_path: Path) -> None:
    done = subprocess.run([switchboard_bin(), "serve", "--node-id", "node one",
                           "--data-dir", str(tmp_path)], capture_output=True, text=True,
                          timeout=30, check=False)
    assert done.returncode != 0 and "--node-id 'node one'" in done.stderr, done.stderr
