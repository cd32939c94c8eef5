"""Routing decisions per second on a realistic 1,000-user directory.

    .venv/bin/python benchmarks/routing.py [--calls 2000] [--seed 1]

Builds (and validates, through ``parse_directory``) a directory of 1,000
users in 10 departments over several time zones, 50 ring groups, 200 DIDs
and two trunks, with varied statuses and forwarding rules (forward chains,
rebound to mobile, 302 deflection, ring mobile simultaneously, auto status).
Then times ``routing.plan()`` one decision at a time for a mix of calls and
prints the median and p99 in microseconds per decision.  Not a test: no
assertion on time.
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# the repo root goes first: this script's own directory (on sys.path too) holds a
# routing.py, this file, which must not shadow the routing package
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from provisioning.directory import parse_directory
from provisioning.model import STATUSES, Directory
from routing import CallFacts, LiveState, Plan, Router, plan

ZONES = ["America/Toronto", "America/Vancouver", "Europe/Paris", "UTC", "Asia/Tokyo"]
WEEK = {day: ["08:30-12:00", "13:00-17:30"] for day in ("mon", "tue", "wed", "thu", "fri")}
BREAKS = {day: ["12:00-13:00"] for day in ("mon", "tue", "wed", "thu", "fri")}
USERS = 1000
FIRST = 1000  # extensions 1000..1999 (extension_digits = 4: PIN prefix 7777)


def ext(i: int) -> str:
    return str(FIRST + i)


def directory_data(rng: random.Random) -> dict[str, Any]:
    departments = [
        {
            "name": f"Dept{d}",
            "caller_id": f"+1514555{d:02d}00",
            "timezone": ZONES[d % len(ZONES)],
            "holidays": ["2026-12-25", "2027-01-01"],
            "office_hours": WEEK,
            "break_hours": BREAKS,
        }
        for d in range(10)
    ]
    groups = []
    for g in range(50):
        dept = g % 10
        pool = [i for i in range(USERS) if i % 10 == dept]
        members = rng.sample(pool, rng.randint(4, 20))
        groups.append(
            {
                "name": f"group{g}",
                "extension": str(8000 + g),
                "strategy": "hunt" if g % 3 == 0 else "ring_all",
                "members": [ext(m) for m in members],
                "ring_seconds": rng.choice([15, 20, 25]),
                "no_answer": f"voicemail:{ext(members[0])}",
            }
        )
    # each department's caller ID is one of the numbers (the directory requires it)
    numbers: list[dict[str, Any]] = [
        {"number": f"+1514555{d:02d}00", "route_to": f"extension:{ext(d)}"} for d in range(10)
    ]
    for n in range(200):
        route = f"ring_group:group{n % 50}" if n % 4 == 0 else f"extension:{ext(n * 5)}"
        numbers.append({"number": f"+1438555{n:04d}", "route_to": route})
    users = []
    for i in range(USERS):
        dept = i % 10
        colleague = ext((i + 10) % USERS)  # same department
        mobile = f"+1514777{i:04d}" if i % 5 != 0 else ""
        user: dict[str, Any] = {
            "extension": ext(i),
            "name": f"User {i}",
            "password": f"secret-{i}",
            "voicemail_pin": f"{1000 + i}",
            "department": f"Dept{dept}",
            "status": STATUSES[i % len(STATUSES)],
            "accept_multiple_calls": i % 5 != 1,
            "outbound_pin_required": i % 17 == 0,
            "external_calls": i % 23 != 0,
            "schedule": {
                "auto_status": i % 3 == 0,
                "block_outbound_outside_hours": i % 11 == 0,
            },
        }
        mobile_or_vm = {"to": "mobile", "rebound": True} if mobile else "voicemail"
        forwarding: dict[str, Any] = {
            "available": {
                "no_answer_seconds": 20,
                "no_answer": {"external": f"extension:{colleague}" if i % 4 == 0 else "voicemail",
                              "internal": "voicemail"},
                "busy": {"external": "voicemail", "internal": "same_as_external"},
                "voicemail_outside_office_hours": i % 7 == 0,
            },
            "away": {
                "no_answer_seconds": 15,
                "no_answer": {"external": mobile_or_vm, "internal": "voicemail"},
                "ring_mobile_simultaneously": bool(mobile) and i % 2 == 0,
            },
            "dnd": {"no_answer_seconds": 0, "accept_ring_group_calls": False},
            "lunch": {
                "no_answer": {"external": f"extension:{colleague}", "internal": "voicemail"},
            },
        }
        if mobile:
            user["mobile"] = mobile
            forwarding["business_trip"] = {
                "no_answer_seconds": 0,
                "no_answer": {
                    "external": {"to": f"external:+1514666{i:04d}", "deflect_302": True},
                    "internal": "mobile",
                },
            }
        user["forwarding"] = forwarding
        users.append(user)
    return {
        "system": {"domain": "bench.test", "extension_digits": 4},
        "trunks": [
            {"name": "carrier", "host": "127.0.0.1", "channels": 60, "supports_302": True},
            {"name": "backup", "host": "127.0.0.2", "channels": 30},
        ],
        "departments": departments,
        "numbers": numbers,
        "ring_groups": groups,
        "users": users,
    }


def live_state(d: Directory, rng: random.Random) -> LiveState:
    exts = [u.extension for u in d.users]
    return LiveState(
        statuses={e: rng.choice(STATUSES) for e in rng.sample(exts, len(exts) // 10)},
        registered=frozenset(e for e in exts if rng.random() < 0.9),
        busy=frozenset(rng.sample(exts, len(exts) // 20)),
        channels_in_use={"carrier": 40, "backup": 5},
    )


def call_mix(d: Directory, rng: random.Random, count: int) -> dict[str, list[CallFacts]]:
    base = dt.datetime(2026, 3, 9, tzinfo=dt.UTC)  # a Monday

    def when() -> dt.datetime:
        return base + dt.timedelta(minutes=rng.randrange(7 * 24 * 60))

    exts = [u.extension for u in d.users]
    dids_user = [n.number for n in d.numbers if n.route_to.kind == "extension"]
    dids_group = [n.number for n in d.numbers if n.route_to.kind == "ring_group"]
    pins = {u.extension: u.voicemail_pin for u in d.users}
    caller = "+15145550199"

    def make(fn: Callable[[], CallFacts]) -> list[CallFacts]:
        return [fn() for _ in range(count)]

    return {
        "DID -> user": make(
            lambda: CallFacts(caller, rng.choice(dids_user), "trunk", when(), trunk="carrier")
        ),
        "DID -> ring group": make(
            lambda: CallFacts(caller, rng.choice(dids_group), "trunk", when(), trunk="carrier")
        ),
        "internal ext -> ext": make(
            lambda: CallFacts(rng.choice(exts), rng.choice(exts), "phone", when())
        ),
        "internal -> ring group": make(
            lambda: CallFacts(rng.choice(exts), str(8000 + rng.randrange(50)), "phone", when())
        ),
        "outbound": make(
            lambda: CallFacts(rng.choice(exts), f"+1819555{rng.randrange(10000):04d}", "phone",
                              when())
        ),
        "outbound with PIN": make(
            lambda: (lambda e: CallFacts(e, f"7777{pins[e]}+18195550000", "phone", when()))(
                rng.choice(exts)
            )
        ),
        "emergency": make(lambda: CallFacts(rng.choice(exts), "911", "phone", when())),
        "unknown DID": make(
            lambda: CallFacts(caller, "+18885550000", "trunk", when(), trunk="carrier")
        ),
    }


def measure(
    calls: list[CallFacts], d: Directory, state: LiveState
) -> tuple[list[float], list[Plan]]:
    timings: list[float] = []
    plans: list[Plan] = []
    clock = time.perf_counter_ns
    for call in calls:
        start = clock()
        p = plan(call, d, state)
        timings.append((clock() - start) / 1000)
        plans.append(p)
    return timings, plans


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per kind (default 2000)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)

    start = time.perf_counter()
    d = parse_directory(directory_data(rng), "bench")
    parsed = time.perf_counter() - start
    start = time.perf_counter()
    Router(d)
    indexed = time.perf_counter() - start
    state = live_state(d, rng)
    mix = call_mix(d, rng, args.calls)
    for calls in mix.values():  # warm-up: router cache, zoneinfo, code paths
        measure(calls[:50], d, state)

    print(
        f"directory: {len(d.users)} users, {len(d.departments)} departments, "
        f"{len(d.ring_groups)} ring groups, {len(d.numbers)} numbers; "
        f"parse {parsed * 1000:.0f} ms, Router() {indexed * 1000:.2f} ms"
    )
    print()
    header = f"{'call kind':<24} {'calls':>6} {'steps':>6} {'median µs':>10} {'p99 µs':>9}"
    print(header)
    print("-" * len(header))
    everything: list[float] = []
    for kind, calls in mix.items():
        timings, plans = measure(calls, d, state)
        everything.extend(timings)
        steps = statistics.mean(len(p.steps) for p in plans)
        print(
            f"{kind:<24} {len(calls):>6} {steps:>6.1f} {statistics.median(timings):>10.1f} "
            f"{p99(timings):>9.1f}"
        )
    print("-" * len(header))
    median = statistics.median(everything)
    print(f"{'all':<24} {len(everything):>6} {'':>6} {median:>10.1f} {p99(everything):>9.1f}")
    print()
    print(f"about {1e6 / statistics.mean(everything):,.0f} decisions/s on one core")


if __name__ == "__main__":
    main()
