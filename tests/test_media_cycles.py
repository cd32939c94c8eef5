"""What a call's media leaves behind when it ends: nothing for the cyclic collector.

The engine runs with the cyclic collector tuned down (``engine.cli.tune_gc``):
objects are expected to be freed by reference counting as soon as a call ends.
An object graph that only the collector can free piles up between full passes,
and a full pass over it stops the event loop for as long as it takes (seen in a
soak: about 35 media endpoints a second left in cycles, a pass every 3 minutes
holding the loop 1-2 s, calls shed with 503 meanwhile). So every life cycle of a
call's media (an endpoint opened and closed, hold music played then stopped, a
relay, a recording, the call media jobs) is run here on real sockets and the
collector must find nothing of it afterwards.
"""

from __future__ import annotations

import asyncio
import gc
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from engine.calls.events import BridgeMedia
from engine.services.callmedia import CallMedia
from media.rtp import RtpSender
from media.session import MediaService, Pcm
from media.tones import hold_tune, tone
from tests.test_media_endpoint import (
    negotiate,
    new_service,
    open_phone,
    rtp_stream,
    run_on,
    send_paced,
    until,
)

KEY = ("cycles-1@127.0.0.1", "caller-tag")


@contextmanager
def no_cyclic_garbage() -> Iterator[None]:
    """Fail if what ran inside left objects only the cyclic collector can free
    (listed by type, the commonest first)."""
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield
        gc.collect()
        left = Counter(type(o).__qualname__ for o in gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert not left, f"left in reference cycles: {dict(left.most_common(12))}"


async def settle() -> None:
    """Let the loop run what closing scheduled (transports' connection_lost)."""
    for _ in range(5):
        await asyncio.sleep(0.01)


async def run_checked(body: Callable[[MediaService, Path], Awaitable[None]],
                      tmp_path: Path) -> None:
    media = new_service()
    try:
        await body(media, tmp_path)  # once outside: lazy imports and caches warm up
        await settle()
        with no_cyclic_garbage():
            await body(media, tmp_path)
            await settle()
    finally:
        await media.close_all()


async def endpoint_opened_and_closed(media: MediaService, _: Path) -> None:
    phone = await open_phone()
    endpoint = await media.open_endpoint()
    negotiate(endpoint, phone.port)
    endpoint.close()
    phone.close()


async def music_then_hang_up(media: MediaService, _: Path) -> None:
    phone = await open_phone()
    endpoint = await media.open_endpoint()
    negotiate(endpoint, phone.port)
    await media.play(endpoint, Pcm(hold_tune()), loop=True)
    await until(lambda: len(phone.received) >= 5, 3.0)
    endpoint.close()
    phone.close()


async def message_recorded(media: MediaService, data: Path) -> None:
    """A voicemail's media: a greeting played, then what the caller says recorded
    until the caller hangs up."""
    phone = await open_phone()
    endpoint = await media.open_endpoint()
    negotiate(endpoint, phone.port)
    greeting = await media.play(endpoint, Pcm(tone(800, 100)))
    await greeting.wait()
    recorder = media.record(endpoint, data / "message.wav")
    said = rtp_stream("PCMU", tone(1000, 200), RtpSender.create(0, 8000))
    await send_paced(phone, said, endpoint.rtp_port, 0.002)
    await until(lambda: endpoint.packets_received >= len(said), 3.0)
    endpoint.close()
    await recorder.wait()
    phone.close()


async def call_media_jobs(media: MediaService, data: Path, *, hold: bool,
                          record: str) -> None:
    calls = CallMedia(media, data)
    caller, callee = await open_phone(), await open_phone()
    a, b = await media.open_endpoint(), await media.open_endpoint()
    calls.add(KEY, KEY[0], a, b)
    state = BridgeMedia(call=KEY, call_id=KEY[0], caller_media=negotiate(a, caller.port),
                        callee_media=negotiate(b, callee.port), music_to_caller=hold,
                        music_to_callee=False, playlist=(), record=record,
                        parties=("101", "102"))
    calls.apply(state)
    if hold:
        await until(lambda: len(caller.received) >= 5, 3.0)
    up = rtp_stream("PCMU", tone(1000, 200), RtpSender.create(0, 8000))
    await send_paced(callee, up, b.rtp_port, 0.002)
    await until(lambda: b.packets_received >= len(up), 3.0)
    calls.close(KEY)
    await calls.close_all()
    caller.close()
    callee.close()


@pytest.mark.parametrize("kind", ["uvloop", "asyncio"])
@pytest.mark.parametrize("life", ["endpoint", "music", "voicemail", "relay", "hold",
                                  "recording"])
def test_a_calls_media_is_freed_without_the_cyclic_collector(
        life: str, kind: str, tmp_path: Path) -> None:
    """On uvloop (what serve runs) and asyncio's own loop."""
    bodies: dict[str, Callable[[MediaService, Path], Awaitable[None]]] = {
        "endpoint": endpoint_opened_and_closed,
        "music": music_then_hang_up,
        "voicemail": message_recorded,
        "relay": lambda m, d: call_media_jobs(m, d, hold=False, record=""),
        "hold": lambda m, d: call_media_jobs(m, d, hold=True, record=""),
        "recording": lambda m, d: call_media_jobs(m, d, hold=False, record="always"),
    }
    run_on(kind, lambda: run_checked(bodies[life], tmp_path))


def test_the_check_sees_a_cycle() -> None:
    """The check itself: a cycle made inside it is reported by type."""
    class Node:
        other: object = None

    with pytest.raises(AssertionError, match="Node"), no_cyclic_garbage():
        a, b = Node(), Node()
        a.other, b.other = b, a
        del a, b
