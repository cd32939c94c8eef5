"""The media of anchored calls: two endpoints per call, relayed, hold music, recording.

The call layer decides (``engine.calls.events.BridgeMedia``: what each endpoint
negotiated, who is on hold, whether the call is recorded); this module makes
it so on real sockets, idempotently, each time the state changes:

* nobody on hold: the two endpoints are relayed (``media.endpoint.Relay``,
  packets untouched);
* a party on hold: the relay is off and the *held* party hears the hold
  playlist, looped, in its leg's codec; on resume the player stops and the
  relay comes back;
* a leg being screened (``screen``) is never relayed to the caller, and the
  first key it sends (RFC 4733) decides: ``1`` accepts, any other key
  refuses (``on_screened``). A rebound leg (``screen="rebound"``) hears who
  calls ("You have a call from 5 1 4 ...; to accept, press 1") in the
  forwarding user's language, twice at most, and no key within
  :data:`SCREEN_WAIT_SECONDS` after the second announcement refuses; the
  caller hears hold music. A confirm leg (``screen="confirm"``) hears
  "press 1 to take the call", again every :data:`CONFIRM_GAP_SECONDS`; the
  call's timer (``routing.CONFIRM_SECONDS``) decides when it has said
  nothing, and the caller hears what it heard while ringing (a ringback tone
  when ``ringback_to_caller``);
* a recorded call: a ``media.mixer.CallRecorder`` on both endpoints from the
  answer to the hang-up, then the WAV and its listing under
  ``DATA_DIR/recordings``.

Playlist files are checked once per file version (PCM WAV); a relative path
is looked up under the data dir, then the working directory. A file that
is missing or not a PCM WAV is logged by name and left out; with nothing
left the built-in tune plays: a held caller never hears silence.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from engine.calls.events import BridgeMedia
from media.codecs import CodecError
from media.endpoint import MediaEndpoint, MediaError, Relay
from media.mixer import CallRecorder
from media.session import Clip, MediaService, Pcm
from media.tones import hold_tune, ringback
from media.wav import WavError, wav_info
from provisioning.recordings import recordings_dir, write_listing

log = structlog.get_logger("switchboard.media")

DEFAULT_TUNE = Pcm(hold_tune())
RINGBACK = Pcm(ringback())
SCREEN_WAIT_SECONDS = 5.0  # after each announcement, for the key
SCREEN_ANNOUNCEMENTS = 2
CONFIRM_GAP_SECONDS = 2.0  # between two "press 1 to take the call"
# A backstop only: the call ends the question after routing.CONFIRM_SECONDS (10 s,
# about three prompts); should it not, four prompts without a key refuse.
CONFIRM_PROMPTS = 4


@dataclass(slots=True, eq=False)
class Bridge:
    call_id: str
    a: MediaEndpoint  # facing the caller
    b: MediaEndpoint  # facing the callee
    relay: Relay | None = None
    recorder: CallRecorder | None = None
    record_info: dict[str, object] = field(default_factory=dict)
    music: dict[MediaEndpoint, asyncio.Task[None]] = field(default_factory=dict)
    ringback: bool = False  # what plays to the caller (in ``music``) is the ringback tone
    screen: asyncio.Task[None] | None = None
    tell: asyncio.Task[None] | None = None  # the orbit said to the parker


class CallMedia:
    """Anchored calls' media for one engine process."""

    def __init__(self, media: MediaService, data_dir: Path,
                 on_screened: Callable[[tuple[str, str], bool], None] | None = None) -> None:
        self.media = media
        self.on_screened = on_screened
        self.data_dir = data_dir
        self.bridges: dict[tuple[str, str], Bridge] = {}
        self._checked: dict[tuple[str, int, int], bool] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def add(self, key: tuple[str, str], call_id: str, a: MediaEndpoint,
            b: MediaEndpoint) -> None:
        self.bridges[key] = Bridge(call_id, a, b)

    # -- state from the call layer -------------------------------------------------
    def apply(self, action: BridgeMedia) -> None:
        bridge = self.bridges.get(action.call)
        if bridge is None or bridge.a.closed or bridge.b.closed:
            return
        try:
            if action.caller_media is not None:
                bridge.a.configure(action.caller_media)
            if action.callee_media is not None:
                bridge.b.configure(action.callee_media)
        except MediaError as exc:
            log.warning("media not configured", call_id=bridge.call_id, error=str(exc))
            return
        ready = action.caller_media is not None and action.callee_media is not None
        held = action.music_to_caller or action.music_to_callee
        if ready and not held and not action.screen:
            if bridge.relay is None or bridge.relay.closed:
                try:
                    bridge.relay = self.media.relay(bridge.a, bridge.b)
                except MediaError as exc:
                    log.warning("no relay", call_id=bridge.call_id, error=str(exc))
        elif bridge.relay is not None:
            bridge.relay.close()
            bridge.relay = None
        ringback = action.ringback_to_caller and not action.music_to_caller
        if bridge.a in bridge.music and bridge.ringback != ringback:
            self._stop_music(bridge, bridge.a)  # music after ringback, or the reverse
        bridge.ringback = ringback
        for endpoint, wanted in ((bridge.a, action.music_to_caller or ringback),
                                 (bridge.b, action.music_to_callee)):
            if wanted and endpoint not in bridge.music:
                bridge.music[endpoint] = self._spawn(self._music(
                    bridge, endpoint, action.playlist,
                    RINGBACK if ringback and endpoint is bridge.a else None))
            elif not wanted and endpoint in bridge.music:
                self._stop_music(bridge, endpoint)
        if action.screen and bridge.screen is None and action.callee_media is not None:
            bridge.screen = self._spawn(self._screen(action.call, bridge, action))
        elif not action.screen and bridge.screen is not None:
            bridge.screen.cancel()
            bridge.screen = None
            player = self.media.player(bridge.b)
            if player is not None:
                player.stop()
        if action.tell_orbit and bridge.tell is None and action.callee_media is not None:
            bridge.tell = self._spawn(self._tell_orbit(bridge, action))
        elif not action.tell_orbit and bridge.tell is not None:
            bridge.tell.cancel()
            bridge.tell = None
            player = self.media.player(bridge.b)
            if player is not None:
                player.stop()
        if action.record and bridge.recorder is None and ready and not action.screen:
            self._start_recording(bridge, action)

    def detach(self, key: tuple[str, str], keep_callee: bool = False) -> MediaEndpoint | None:
        """The call left the bridge (voicemail takes one endpoint): close the other
        side; the caller's endpoint stays open, or the callee's with
        ``keep_callee``. Returns the endpoint kept (None without a bridge)."""
        bridge = self.bridges.pop(key, None)
        if bridge is None:
            return None
        self._close(bridge, keep_caller=not keep_callee, keep_callee=keep_callee)
        return bridge.b if keep_callee else bridge.a

    def close(self, key: tuple[str, str]) -> None:
        bridge = self.bridges.pop(key, None)
        if bridge is not None:
            self._close(bridge, keep_caller=False)

    async def close_all(self) -> None:
        for key in list(self.bridges):
            self.close(key)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _close(self, bridge: Bridge, keep_caller: bool, keep_callee: bool = False) -> None:
        if bridge.screen is not None:
            bridge.screen.cancel()
        if bridge.tell is not None:
            bridge.tell.cancel()
        for endpoint in list(bridge.music):
            self._stop_music(bridge, endpoint)
        if bridge.relay is not None:
            bridge.relay.close()
        if bridge.recorder is not None:
            bridge.recorder.stop()
        if not keep_callee:
            bridge.b.close()
        if not keep_caller:
            bridge.a.close()

    # -- hold music ----------------------------------------------------------------
    def _spawn(self, work: Coroutine[object, object, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _stop_music(self, bridge: Bridge, endpoint: MediaEndpoint) -> None:
        task = bridge.music.pop(endpoint, None)
        if task is not None:
            task.cancel()
        player = self.media.player(endpoint)
        if player is not None:
            player.stop()

    async def _music(self, bridge: Bridge, endpoint: MediaEndpoint,
                     playlist: tuple[str, ...], tone: Pcm | None = None) -> None:
        """The hold playlist, looped (``tone``: that sound instead, the ringback)."""
        clips: list[Clip] = [tone] if tone is not None else await self.playlist(playlist)
        what = "ringback tone" if tone is not None else "hold music"
        try:
            player = await self.media.play(endpoint, clips, loop=True)
        except (MediaError, CodecError, WavError) as exc:
            log.warning(f"no {what}", call_id=bridge.call_id, codec=endpoint.codec,
                        error=str(exc))
            return
        log.info(what, call_id=bridge.call_id, codec=endpoint.codec,
                 playlist="ringback" if tone is not None else list(playlist) or "built-in")
        try:
            await player.wait()
        except asyncio.CancelledError:
            player.stop()
            raise

    def resolve(self, name: str) -> Path:
        path = Path(name)
        if path.is_absolute():
            return path
        in_data = self.data_dir / path
        return in_data if in_data.exists() or not path.exists() else path

    async def playlist(self, names: tuple[str, ...]) -> list[Clip]:
        """The usable files of ``names`` (checked once per file version), or the
        built-in tune."""
        clips: list[Clip] = []
        for name in names:
            path = self.resolve(name)
            try:
                st = os.stat(path)
            except OSError:
                log.error("hold music file missing", file=name, looked_at=str(path))
                continue
            key = (str(path), st.st_size, st.st_mtime_ns)
            ok = self._checked.get(key)
            if ok is None:
                try:
                    await asyncio.to_thread(wav_info, path)
                    ok = True
                except WavError as exc:
                    log.error("hold music file unusable", file=name, error=str(exc))
                    ok = False
                self._checked[key] = ok
            if ok:
                clips.append(path)
        return clips or [DEFAULT_TUNE]

    # -- screening (rebound, confirm) --------------------------------------------
    async def _screen(self, key: tuple[str, str], bridge: Bridge, action: BridgeMedia) -> None:
        """Ask the callee side (see the module's docstring) and report its key."""
        from media.prompts import Language, digit_paths, prompt_path

        language: Language = "fr" if action.language == "fr" else "en"
        clips: list[Clip]
        if action.screen == "confirm":
            clips = [prompt_path(language, "confirm_answer")]
            rounds, wait = CONFIRM_PROMPTS, CONFIRM_GAP_SECONDS
        else:
            number = action.announce
            if any(c.isdigit() for c in number):
                clips = [prompt_path(language, "rebound_intro"), *digit_paths(number, language)]
            else:
                clips = [prompt_path(language, "rebound_unknown")]
            clips += [prompt_path(language, "pause"), prompt_path(language, "rebound_menu")]
            rounds, wait = SCREEN_ANNOUNCEMENTS, SCREEN_WAIT_SECONDS
        digits: asyncio.Queue[str] = asyncio.Queue()
        unsubscribe = bridge.b.on_dtmf(digits.put_nowait)
        accepted = False
        digit: str | None = None
        try:
            for _ in range(rounds):
                player = await self.media.play(bridge.b, clips)
                waiter = asyncio.ensure_future(digits.get())
                await asyncio.wait({waiter, asyncio.ensure_future(player.wait())},
                                   return_when=asyncio.FIRST_COMPLETED)
                if not waiter.done():
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(asyncio.shield(waiter), wait)
                player.stop()
                if waiter.done():
                    digit = waiter.result()
                    break
                waiter.cancel()
            accepted = digit == "1"
        except (MediaError, CodecError, WavError) as exc:
            # Cannot play to this leg (G.729 only): its answer accepts, as without media.
            log.warning(f"{action.screen} not screened", call_id=bridge.call_id,
                        error=str(exc))
            accepted = True
        finally:
            unsubscribe()
        log.info(f"{action.screen} screened", call_id=bridge.call_id, key=digit,
                 accepted=accepted)
        bridge.screen = None
        if self.on_screened is not None:
            self.on_screened(key, accepted)

    async def _tell_orbit(self, bridge: Bridge, action: BridgeMedia) -> None:
        """ "Parked on 7 0 1", once, to the parker (the callee side); the call lets
        the parker go after ``engine.calls.transfer.PARK_TELL_SECONDS``."""
        from media.prompts import Language, digit_paths, prompt_path

        language: Language = "fr" if action.language == "fr" else "en"
        clips: list[Clip] = [prompt_path(language, "parked_on"),
                             *digit_paths(action.tell_orbit, language)]
        try:
            player = await self.media.play(bridge.b, clips)
            log.info("orbit told", call_id=bridge.call_id, orbit=action.tell_orbit)
            await player.wait()
        except (MediaError, CodecError, WavError) as exc:
            log.warning("orbit not told", call_id=bridge.call_id, error=str(exc))

    # -- recording -----------------------------------------------------------------
    def _start_recording(self, bridge: Bridge, action: BridgeMedia) -> None:
        folder = recordings_dir(self.data_dir)
        recording_id = uuid.uuid4().hex
        try:
            folder.mkdir(parents=True, exist_ok=True)
            recorder = CallRecorder(bridge.a, bridge.b, folder / f"{recording_id}.wav")
        except (OSError, MediaError, CodecError) as exc:
            log.error("call not recorded", call_id=bridge.call_id, error=str(exc))
            return
        bridge.recorder = recorder
        caller, callee = action.parties
        bridge.record_info = {
            "call_id": bridge.call_id, "caller": caller, "callee": callee,
            "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "reason": action.record,
        }
        log.info("recording", call_id=bridge.call_id, id=recording_id, reason=action.record)
        self._spawn(self._finish_recording(bridge, recorder))

    async def _finish_recording(self, bridge: Bridge, recorder: CallRecorder) -> None:
        try:
            done = await recorder.wait()
        except Exception:
            log.exception("recording not written", call_id=bridge.call_id)
            return
        info = dict(bridge.record_info, duration=round(done.duration, 2))
        with contextlib.suppress(OSError):
            write_listing(done.path, info)
        log.info("recording saved", call_id=bridge.call_id, path=str(done.path),
                 seconds=round(done.duration, 1))
