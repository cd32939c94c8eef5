"""Call queues: callers waiting with hold music while agents are rung by strategy.

A :class:`~routing.Queue` step of a plan is run here, sans-I/O like the rest of the
call layer. Two objects:

* :class:`Queues`, one per engine on the front object (``Calls.queues``): every
  queue's callers in arrival order, which agents are logged in to which queue,
  each agent's state (``engine.calls.states.AGENT``: idle, ringing, on_call,
  wrap_up; one state per agent across all its queues), the figures of each
  queue, and the timers of all of it (callers' ``max_wait_seconds``, agents'
  wrap-up, a caller's next try) as one deadline the front keeps in its heap
  (:meth:`Queues.next_timer`, :meth:`Queues.on_timer`).
* :class:`QueueTry`, on the caller's call while agents ring: the plan of one try
  (a :class:`~routing.Ring` of the chosen agents, ``ring_seconds``) run as an IVR
  choice runs (:class:`~engine.calls.ivr.IvrChoice`): the caller stays answered
  on its own endpoint and hears the queue's hold music, the agents are offered
  the caller's codec, the first to answer is relayed to the caller. No answer
  (or a refusal): the caller waits again and the queue tries again.

Decisions:

* The engine **answers** the caller (200 from its endpoint, as an IVR does): the
  wait can be long, and a trunk would give up on an unanswered INVITE. It needs
  the call's media through the engine (``serve --media relay``) and an SDP offer.
* **Who may be rung**: an agent logged in to the queue, idle (not ringing for
  another caller, not on a queue call, not in wrap-up: per agent, across
  queues), on no call at all (the front's busy marks: any call), its phone not
  ringing for another call, registered, and
  whose effective status is ``available`` (DND, away, lunch, business trip are
  skipped). A try that ended within a second (the phone refused at once) is
  followed by the next one no sooner than :data:`RETRY_SECONDS` later, so a
  phone that refuses everything is not rung in a tight loop. An agent who may
  be rung is offered the next caller at once, as busy lamps are told of a change
  rather than polling for it: the queues free agents themselves (a try unanswered,
  a wrap-up over, a log-in), and whatever else decides who may be rung tells them
  (:meth:`Queues.changed`; the engine then runs :meth:`Queues.wake` before it
  answers the input that changed it): a registration added or removed (a REGISTER,
  another node's binding read from the store), a live status set (``switchboard
  status set``, the admin API), a new directory, a call ending or a phone's
  ringing leg ending. Only a status that follows a schedule (``auto_status``:
  office hours, holidays) changes with the clock and tells nobody: while such an
  agent may be rung for a waiting caller, the queues look again every
  :data:`SCHEDULE_POLL_SECONDS`.
* **Strategies** pick among the agents who may be rung: ``ring_all`` rings them
  all; the others one at a time, each agent once per caller before any is
  rung again: ``hunt`` in the order of ``agents``; ``round_robin`` the next
  after the last agent the queue rang; ``longest_idle`` the agent idle
  longest (since its last queue call's wrap-up, or its log-in); ``fewest_answered``
  and ``least_talk_time`` by the queue's figures since the engine started; ties
  in the order of ``agents``.
* **Leaving**: after ``max_wait_seconds``, or on arrival when ``max_callers``
  wait already, the caller goes to ``on_timeout``; on arrival with no agent
  logged in, registered and available, to ``when_no_agents`` (unless join).
  The destination is planned for the same answered call
  (:meth:`~engine.calls.ivr.IvrChoice.begin_choice`). A caller who hangs up
  (waiting or while agents ring) is forgotten with its try's legs cancelled.
* Log-in state and the figures live in the engine process (a restart logs every
  agent back to ``agents_start_logged_in``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import structlog

from engine.calls import rules
from engine.calls.events import BridgeMedia, CallOutput, IvrPlay, IvrQuiet, OpenMedia
from engine.calls.headers import to_caller
from engine.calls.ivr import IvrChoice, IvrSession
from engine.calls.states import (
    AGENT,
    AgentEvent,
    AgentState,
    CallEvent,
    CallState,
    TransferEvent,
)
from engine.sip.message import warning_value
from media.prompts import Language, position_paths, prompt_path
from provisioning.model import Destination, Directory, Status, priority_caller
from provisioning.model import Queue as QueueTable
from routing import Device, Ivr, LiveState, Plan, Queue, QueueLogin, Ring, router_for

if TYPE_CHECKING:
    from engine.calls.call import Call
    from engine.calls.front import Calls
    from engine.calls.leg import Leg

__all__ = ["RETRY_SECONDS", "Agent", "QueueCaller", "QueueFigures", "QueueTry", "Queues",
           "Room", "start_queue", "start_queue_login"]

log = structlog.get_logger("switchboard.call")

RETRY_SECONDS = 1.0
"""The shortest time between two tries for one caller when a try ended at once."""
SCHEDULE_POLL_SECONDS = 15.0
"""A caller waits with nobody rung and an agent of its queue has a scheduled status
(``auto_status``): who may be rung is looked at again this often, since the clock
turns that status available and nothing tells the queues. Everything else that
decides who may be rung notifies them (:meth:`Queues.changed`)."""
NOTICE_SECONDS = 8.0
"""A log-in confirmation call is hung up by then even if its tone never reports done."""


@dataclass(slots=True, eq=False)
class Agent:
    """One agent, across every queue it belongs to."""

    extension: str
    state: AgentState = AgentState.IDLE
    idle_since: float = 0.0  # for longest_idle
    wrap_until: float = 0.0
    call: Call | None = None  # the queue call it is on (on_call)
    room: Room | None = None  # the queue of that call (its talk time)
    connected_at: float = 0.0

    def move(self, event: AgentEvent) -> None:
        self.state = AGENT.move(self.state, event)


@dataclass(slots=True, eq=False)
class QueueCaller:
    """A call waiting in a queue."""

    call: Call
    room: Room
    joined: float
    deadline: float
    ringing: tuple[str, ...] = ()  # the agents of the try running
    tried: set[str] = field(default_factory=set)  # rung since the last round began
    try_started: float = 0.0
    not_before: float = 0.0  # the next try, no sooner
    announce_at: float = 0.0  # the next position announcement (0: never)
    announcing: bool = False  # its position is being said: no music, no try
    priority: bool = False  # one of the queue's priority_callers: ahead of the others


@dataclass(slots=True)
class QueueFigures:
    """What a wallboard shows of one queue (no caller is named)."""

    queue: str
    callers_waiting: int
    longest_wait_seconds: float
    agents_logged_in: int
    agents_idle: int
    agents_on_call: int
    answered: int
    abandoned: int
    timed_out: int
    answered_within_service_level: int
    service_level_seconds: int
    average_wait_seconds: float
    average_talk_seconds: float

    def to_json(self) -> dict[str, object]:
        return dataclasses.asdict(self)


@dataclass(slots=True, eq=False)
class Room:
    """One queue: its rules (the directory's, refreshed on reload), its callers, who
    is logged in, its figures."""

    step: Queue
    logged_in: set[str]
    callers: list[QueueCaller] = field(default_factory=list)
    last_rung: str = ""  # round_robin: the next try starts after this agent
    answered_by: dict[str, int] = field(default_factory=dict)
    talk_by: dict[str, float] = field(default_factory=dict)
    answered: int = 0
    abandoned: int = 0
    timed_out: int = 0
    within_service_level: int = 0
    wait_total: float = 0.0
    talk_total: float = 0.0
    talks: int = 0


def queue_step(table: QueueTable, reason: str) -> Queue:
    """The :class:`~routing.Queue` of a directory's ``[[queues]]`` entry."""
    return Queue(table.name, table.extension, table.strategy, table.agents, table.ring_seconds,
                 table.wrap_up_seconds, table.max_wait_seconds, table.max_callers,
                 table.on_timeout, table.when_no_agents, table.hold_music,
                 table.announce_position_every, table.service_level_seconds, reason,
                 language=table.language or "", priority_callers=table.priority_callers)


class Queues:
    """Every queue of one engine (see the module docstring)."""

    def __init__(self, front: Calls) -> None:
        self.front = front
        self.rooms: dict[str, Room] = {}
        self.agents: dict[str, Agent] = {}
        self.now = 0.0  # the latest monotonic time an entry point was given
        self._dispatching = False
        self._again = False
        # Something that decides who may be rung changed since the last wake (a
        # registration, a status, a call or a ringing leg ending): the engine calls
        # wake() after the input that did it.
        self.due = False

    # ------------------------------------------------------------------ configuration
    def set_directory(self, directory: Directory) -> None:
        """A new snapshot: queues added start with their agents logged in or not by
        ``agents_start_logged_in``; kept queues keep who is logged in (less the
        agents no longer in them); a removed queue stays until its last caller
        leaves (its callers still time out), nobody logged in, and takes no one new."""
        rooms: dict[str, Room] = {}
        for table in directory.queues:
            step = queue_step(table, f"queue {table.name}")
            room = self.rooms.get(table.name)
            if room is None:
                room = Room(step, set(table.agents) if table.agents_start_logged_in else set())
            else:
                room.step = step
                room.logged_in &= set(table.agents)
            rooms[table.name] = room
            for ext in table.agents:
                self.agents.setdefault(ext, Agent(ext))
        for name, room in self.rooms.items():
            if name not in rooms and room.callers:
                room.logged_in.clear()
                rooms[name] = room
        self.rooms = rooms

    def changed(self, extension: str | None = None) -> None:
        """A registration was added or removed, a live status set, a call or a ringing
        leg ended, or the directory changed: an agent may be free to ring now. Only
        noted here (a flag: the call path pays a dict lookup); :meth:`wake` acts.
        ``extension``: whose change it is; one that is nobody's agent changes nothing
        (a busy office's calls do not wake the queues), nor anything without queues."""
        if (self.agents and extension is None) or extension in self.agents:
            self.due = True

    def wake(self, now: float) -> list[CallOutput]:
        """After an input that :meth:`changed` the queues: a caller waiting with
        nobody rung is offered to the agents who may be rung now."""
        try:
            waiting = any(not c.ringing for room in self.rooms.values() for c in room.callers)
            return self.dispatch(now) if waiting else []
        finally:
            # Cleared after, even when dispatch failed (the engine's next wakeup is
            # "now" while it is set): what dispatch changed (its legs) is its own doing.
            self.due = False

    def room(self, name: str) -> Room | None:
        return self.rooms.get(name)

    # ------------------------------------------------------------------ log in / out
    def log_in(self, extension: str, queues: tuple[str, ...], logged_in: bool,
               now: float) -> list[CallOutput]:
        """Log ``extension`` in to (or out of) ``queues`` (of which it must be an agent)."""
        self.now = now
        for name in queues:
            room = self.rooms.get(name)
            if room is None or extension not in room.step.agents:
                continue
            if logged_in:
                if extension not in room.logged_in:
                    room.logged_in.add(extension)
                    agent = self.agents.setdefault(extension, Agent(extension))
                    if agent.state is AgentState.IDLE:
                        agent.idle_since = now
            else:
                room.logged_in.discard(extension)
        log.info("queue agent logged in" if logged_in else "queue agent logged out",
                 agent=extension, queues=list(queues))
        return self.dispatch(now) if logged_in else []

    def statuses_changed(self, old: dict[str, Status], new: dict[str, Status]) -> None:
        """Live statuses were set: an agent whose new status has ``log_out_of_queues``
        in its forwarding rules is logged out of every queue."""
        directory = self.front.directory
        if directory is None:
            return
        for ext, status in new.items():
            if old.get(ext) == status:
                continue
            user = directory.user(ext)
            if user is None or not user.forwarding.for_status(status).log_out_of_queues:
                continue
            mine = tuple(name for name, room in self.rooms.items() if ext in room.logged_in)
            if mine:
                log.info("status logs out of queues", agent=ext, status=status)
                for name in mine:
                    self.rooms[name].logged_in.discard(ext)

    # ------------------------------------------------------------------ who may be rung
    def _free(self, room: Room, wall: float, state: LiveState) -> list[str]:
        """The agents of ``room`` that may be rung now, in the order of ``agents``."""
        front = self.front
        on_call = front.extensions_on_calls()
        ringing = front.extensions_ringing()  # any call's leg, not only the queues'
        directory = front.directory
        if directory is None:
            return []
        router = router_for(directory)
        at = dt.datetime.fromtimestamp(wall, dt.UTC)
        out = []
        for ext in room.step.agents:
            agent = self.agents.get(ext)
            if ext not in room.logged_in or agent is None or agent.state is not AgentState.IDLE \
                    or on_call.get(ext, 0) > 0 or ext in ringing \
                    or not front.registrar.lookup(ext, wall) \
                    or router.status_of(ext, at, state) != "available":
                continue
            out.append(ext)
        return out

    def _staffed(self, room: Room, wall: float, state: LiveState) -> bool:
        """Some agent is logged in, registered and available (busy or not)."""
        directory = self.front.directory
        if directory is None:
            return False
        router = router_for(directory)
        at = dt.datetime.fromtimestamp(wall, dt.UTC)
        return any(ext in room.logged_in and self.front.registrar.lookup(ext, wall)
                   and router.status_of(ext, at, state) == "available"
                   for ext in room.step.agents)

    def pick(self, room: Room, caller: QueueCaller, free: list[str]) -> tuple[str, ...]:
        """Whom ``caller``'s next try rings, by the queue's strategy, among ``free``."""
        if not free:
            return ()
        step = room.step
        if step.strategy == "ring_all":
            return tuple(free)
        candidates = [ext for ext in free if ext not in caller.tried]
        if not candidates:  # everyone free was tried: a new round
            caller.tried.clear()
            candidates = free
        order = {ext: i for i, ext in enumerate(step.agents)}
        if step.strategy == "hunt":
            return (candidates[0],)
        if step.strategy == "round_robin":
            start = order.get(room.last_rung, -1) + 1
            n = len(step.agents)
            return (min(candidates, key=lambda e: (order[e] - start) % n),)
        if step.strategy == "longest_idle":
            return (min(candidates, key=lambda e: (self.agents[e].idle_since, order[e])),)
        if step.strategy == "fewest_answered":
            return (min(candidates, key=lambda e: (room.answered_by.get(e, 0), order[e])),)
        return (min(candidates, key=lambda e: (room.talk_by.get(e, 0.0), order[e])),)

    # ------------------------------------------------------------------ callers
    def join(self, call: Call, step: Queue, now: float) -> list[CallOutput]:
        """An answered caller arrives in queue ``step.name``."""
        self.now = now
        room = self.rooms.get(step.name)
        if room is None:  # a hand-built directory without it: the queue as planned
            room = self.rooms[step.name] = Room(step, set())
        front = self.front
        wall = front.wall_clock()
        state = LiveState(statuses=dict(front.statuses))
        if len(room.callers) >= step.max_callers:
            room.timed_out += 1
            return _leave_to(call, step.on_timeout, f"queue {step.name}: {step.max_callers} "
                             f"callers wait already: on_timeout -> {step.on_timeout}", now)
        if step.when_no_agents is not None and not self._staffed(room, wall, state):
            return _leave_to(call, step.when_no_agents, f"queue {step.name}: no agent logged "
                             f"in and available: when_no_agents -> {step.when_no_agents}", now)
        caller = QueueCaller(call, room, now, now + step.max_wait_seconds,
                             priority=priority_caller(step.priority_callers, call.facts.caller))
        if step.announce_position_every > 0:
            caller.announce_at = now + step.announce_position_every
        call.queued = caller
        # A priority caller goes behind the priority callers already waiting and ahead
        # of everyone else; each group keeps its arrival order.
        position = len(room.callers)
        if caller.priority:
            position = next((i for i, c in enumerate(room.callers) if not c.priority),
                            position)
        room.callers.insert(position, caller)
        log.info("queue joined", call_id=call.id, queue=step.name, position=position + 1,
                 priority=caller.priority)
        return call.bridge() + self.dispatch(now)

    def dispatch(self, now: float) -> list[CallOutput]:
        """Ring free agents for the callers waiting (first come, first rung)."""
        self.now = now
        if self._dispatching:  # a try failed at once inside a try: one more pass after
            self._again = True
            return []
        events: list[CallOutput] = []
        self._dispatching = True
        try:
            self._again = True
            while self._again:
                self._again = False
                wall = self.front.wall_clock()
                state = LiveState(statuses=dict(self.front.statuses))
                for room in self.rooms.values():
                    for caller in list(room.callers):
                        if caller.ringing or caller.not_before > now or caller.announcing \
                                or caller.call.queued is not caller:
                            continue
                        agents = self.pick(room, caller, self._free(room, wall, state))
                        if not agents:
                            break
                        events += self._ring(caller, agents, now)
        finally:
            self._dispatching = False
        self.front.reschedule_queues()
        return events

    def _ring(self, caller: QueueCaller, agents: tuple[str, ...], now: float) -> list[CallOutput]:
        room = caller.room
        call = caller.call
        for ext in agents:
            self.agents[ext].move(AgentEvent.RING)
        caller.ringing = agents
        caller.tried.update(agents)
        caller.try_started = now
        room.last_rung = agents[-1]
        step = room.step
        log.info("queue rings", call_id=call.id, queue=step.name, agents=list(agents))
        ring = Ring(tuple(Device(ext) for ext in agents), step.ring_seconds,
                    f"queue {step.name}: {step.strategy} rings {', '.join(agents)}",
                    diversion=step.diversion)
        media = call.anchor.caller.media
        assert media is not None
        attempt = QueueTry(call, None, f"queue:{step.name}", media.codec, caller=caller)
        call.transfer = attempt
        call.plan = Plan(call.facts, (ring,), identity=call.identity)
        call.move(CallEvent.IVR_CHOSE)
        call.legs = []
        call.rung = set()
        return call.run_step(0, now)

    def _ringing_over(self, caller: QueueCaller) -> None:
        for ext in caller.ringing:
            agent = self.agents.get(ext)
            if agent is not None and agent.state is AgentState.RINGING:
                agent.move(AgentEvent.NO_ANSWER)
        caller.ringing = ()

    def try_failed(self, caller: QueueCaller, now: float) -> list[CallOutput]:
        """No agent of the try answered: the caller waits for the next one."""
        self.now = now
        self._ringing_over(caller)
        if now - caller.try_started < RETRY_SECONDS:
            caller.not_before = caller.try_started + RETRY_SECONDS
        log.info("queue try unanswered", call_id=caller.call.id, queue=caller.room.step.name)
        return caller.call.bridge() + self.dispatch(now)

    def answered(self, caller: QueueCaller, leg: Leg, now: float) -> list[CallOutput]:
        """An agent of the try answered and is relayed to the caller."""
        self.now = now
        room = caller.room
        ext = leg.target.extension if isinstance(leg.target, Device) else ""
        for other in caller.ringing:
            agent = self.agents.get(other)
            if agent is None:
                continue
            if other == ext and agent.state is AgentState.RINGING:
                agent.move(AgentEvent.ANSWER)
                agent.call, agent.room, agent.connected_at = caller.call, room, now
            elif agent.state is AgentState.RINGING:
                agent.move(AgentEvent.NO_ANSWER)
        caller.ringing = ()
        self._remove(caller)
        waited = now - caller.joined
        room.answered += 1
        room.wait_total += waited
        room.answered_by[ext] = room.answered_by.get(ext, 0) + 1
        if waited <= room.step.service_level_seconds:
            room.within_service_level += 1
        log.info("queue answered", call_id=caller.call.id, queue=room.step.name, agent=ext,
                 waited=round(waited, 1))
        return self.dispatch(now)

    def _remove(self, caller: QueueCaller) -> None:
        if caller in caller.room.callers:
            caller.room.callers.remove(caller)
        if caller.call.queued is caller:
            caller.call.queued = None
        self.front.reschedule_queues()

    def call_gone(self, call: Call, now: float | None) -> None:
        """``call`` ended (:meth:`Call.forget`): a caller still waiting abandoned; an
        agent on it goes to wrap-up."""
        when = self.now if now is None else now
        self.now = when
        caller = call.queued
        if caller is not None:
            self._ringing_over(caller)
            self._remove(caller)
            caller.room.abandoned += 1
            log.info("queue abandoned", call_id=call.id, queue=caller.room.step.name,
                     waited=round(when - caller.joined, 1))
        for agent in self.agents.values():
            if agent.call is call:
                self._wrap_up(agent, when)

    def agent_left(self, call: Call, extension: str) -> None:
        """``extension`` left ``call`` (it transferred the caller elsewhere)."""
        agent = self.agents.get(extension)
        if agent is not None and agent.call is call:
            self._wrap_up(agent, self.now)

    def _wrap_up(self, agent: Agent, now: float) -> None:
        room = agent.room
        talk = max(0.0, now - agent.connected_at)
        if room is not None:
            room.talk_total += talk
            room.talks += 1
            room.talk_by[agent.extension] = room.talk_by.get(agent.extension, 0.0) + talk
        agent.move(AgentEvent.HANG_UP)
        agent.call = None
        wrap = room.step.wrap_up_seconds if room is not None else 0
        agent.room = None
        agent.wrap_until = now + wrap
        self.front.reschedule_queues()

    # ------------------------------------------------------------------ timers
    def next_timer(self) -> float | None:
        """The earliest deadline of every queue: a caller's wait, a wrap-up's end, a
        caller's next try (when it is waiting for one)."""
        times = [a.wrap_until for a in self.agents.values() if a.state is AgentState.WRAP_UP]
        for room in self.rooms.values():
            for caller in room.callers:
                times.append(caller.deadline)
                if caller.announce_at and not caller.announcing:
                    times.append(caller.announce_at)
                if caller.ringing:
                    continue
                if caller.not_before > self.now:
                    times.append(caller.not_before)
                elif self._scheduled(room):
                    times.append(self.now + SCHEDULE_POLL_SECONDS)
        return min(times, default=None)

    def _scheduled(self, room: Room) -> bool:
        """Whether an agent logged in to ``room`` has a status that follows a schedule
        (``auto_status``), which the clock changes without telling the queues."""
        directory = self.front.directory
        if directory is None:
            return False
        for ext in room.logged_in:
            user = directory.user(ext)
            if user is not None and user.schedule.auto_status:
                return True
        return False

    def on_timer(self, now: float) -> list[CallOutput]:
        self.now = now
        for agent in self.agents.values():
            if agent.state is AgentState.WRAP_UP and agent.wrap_until <= now:
                agent.move(AgentEvent.WRAP_DONE)
                agent.idle_since = now
        events: list[CallOutput] = []
        for room in self.rooms.values():
            for caller in list(room.callers):
                if caller.deadline <= now:
                    events += self._timed_out(caller, now)
                elif caller.announce_at and caller.announce_at <= now \
                        and not caller.announcing:
                    events += self._announce(caller, now)
        return events + self.dispatch(now)

    def _announce(self, caller: QueueCaller, now: float) -> list[CallOutput]:
        """Say the caller's position (and the expected wait, once callers were
        answered); a caller whose agents ring hears it after the try."""
        room = caller.room
        step = room.step
        call = caller.call
        caller.announce_at = now + step.announce_position_every
        if caller.ringing or call.ivr is not None:
            return []
        position = room.callers.index(caller) + 1
        minutes = 0
        if room.answered:
            # the average wait of the answered callers, per caller ahead and this one,
            # less what this caller waited already
            left = room.wait_total / room.answered * position - (now - caller.joined)
            minutes = max(1, round(left / 60))
        # The queue's language, else the menu's that sent the caller here, else English.
        language: Language = "fr" if (step.language or call.menu_language) == "fr" else "en"
        caller.announcing = True
        log.info("queue position", call_id=call.id, queue=step.name, position=position,
                 language=language)
        # Built-in prompts (committed WAVs, in the frame cache after the first play):
        # nothing is rendered while the caller's music is paused.
        notice = QueueNotice(call, _spoken(f"queue-{step.name}", "", step.reason))
        notice.prompts = tuple(str(p) for p in position_paths(position, minutes, language))
        notice.after = "music"
        call.ivr = notice
        call.arm("ivr", now + NOTICE_SECONDS * 2)
        return call.bridge() + notice.play_once()

    def announced(self, caller: QueueCaller, now: float) -> list[CallOutput]:
        """The position was said: music again, and a try when an agent is free."""
        caller.announcing = False
        if caller.call.queued is not caller:
            return []
        return caller.call.bridge() + self.dispatch(now)

    def _timed_out(self, caller: QueueCaller, now: float) -> list[CallOutput]:
        call = caller.call
        room = caller.room
        step = room.step
        events: list[CallOutput] = []
        if caller.announcing and isinstance(call.ivr, QueueNotice):
            call.ivr = None
            call.disarm("ivr")
            caller.announcing = False
            events.append(IvrQuiet(call.key, done=True))
        attempt = call.transfer
        if isinstance(attempt, QueueTry):  # agents ring: stop the try
            attempt.move(TransferEvent.FAILED)
            call.transfer = None
            call.move(CallEvent.IVR_SETTLED)
            events += call.cancel_legs(now, None)
        self._ringing_over(caller)
        self._remove(caller)
        room.timed_out += 1
        return events + _leave_to(call, step.on_timeout, (
            f"queue {step.name}: waited {step.max_wait_seconds} s: on_timeout -> "
            f"{step.on_timeout}"), now)

    # ------------------------------------------------------------------ figures
    def figures(self, name: str, now: float) -> QueueFigures | None:
        room = self.rooms.get(name)
        if room is None:
            return None
        on_call = self.front.extensions_on_calls()
        logged = [e for e in room.step.agents if e in room.logged_in]
        return QueueFigures(
            queue=name,
            callers_waiting=len(room.callers),
            longest_wait_seconds=round(max((now - c.joined for c in room.callers),
                                           default=0.0), 1),
            agents_logged_in=len(logged),
            agents_idle=sum(1 for e in logged if self.agents[e].state is AgentState.IDLE
                            and not on_call.get(e)),
            agents_on_call=sum(1 for e in logged if on_call.get(e)),
            answered=room.answered,
            abandoned=room.abandoned,
            timed_out=room.timed_out,
            answered_within_service_level=room.within_service_level,
            service_level_seconds=room.step.service_level_seconds,
            average_wait_seconds=round(room.wait_total / room.answered, 1) if room.answered
            else 0.0,
            average_talk_seconds=round(room.talk_total / room.talks, 1) if room.talks else 0.0)

    def agent_states(self, name: str) -> dict[str, dict[str, object]]:
        """Each agent of queue ``name``: logged in, and its state."""
        room = self.rooms.get(name)
        if room is None:
            return {}
        return {e: {"logged_in": e in room.logged_in,
                    "state": str(self.agents[e].state) if e in self.agents else "idle"}
                for e in room.step.agents}

    def leftovers(self) -> list[str]:
        """What is still held (for tests: none once every call ended and wrap-ups
        passed): callers, agents not idle, timers."""
        out = [f"caller {c.call.id} in {r.step.name}" for r in self.rooms.values()
               for c in r.callers]
        out += [f"agent {a.extension} {a.state}" for a in self.agents.values()
                if a.state is not AgentState.IDLE]
        if self.next_timer() is not None:
            out.append("a timer")
        return out


# ---------------------------------------------------------------------- the caller's side
def _leave_to(call: Call, dest: Destination, why: str, now: float) -> list[CallOutput]:
    """The answered caller leaves the queue for ``dest``'s plan."""
    log.info("queue left", call_id=call.id, destination=str(dest), reason=why)
    return IvrChoice.begin_choice(call, dest, why, now)


def _answer(call: Call, now: float, what: str) -> tuple[bool, list[CallOutput]]:
    """Answer the caller from the endpoint facing it (as an IVR does): ``(True, the
    200's sends)``; ``(False, ...)`` when media must open first (``OpenMedia``, the
    step resumes when it is ready) or the call is refused (no media, no codec)."""
    anchor = call.anchor
    if not (anchor.relaying and anchor.open):
        if call.front.anchor_media and not anchor.open and call._wants_anchor():
            call.waiting_step = call.step
            return False, [OpenMedia(call.key, bridge=True)]
        return False, call._unanswered(480, now, [("Warning", warning_value(
            f"{what} needs the call's media through the engine (serve --media relay) and "
            "an SDP offer in the INVITE"))])
    result = anchor.endpoint_answer(call.invite.body,
                                    rules.caller_codecs(call.front.directory, call.facts),
                                    call.local.host)
    if isinstance(result, str):
        return False, call._unanswered(488, now, [("Warning", warning_value(result))])
    anchor.caller.sdp, anchor.caller.media = result
    contact = call.local.contact(call.transport)
    ok = to_caller(call.invite, 200, call.tag, [("Contact", contact),
                                                ("Content-Type", "application/sdp")],
                   result[0].to_bytes())
    call.move(CallEvent.ANSWER)
    call.answered_at = now
    log.info("queue answered the caller", call_id=call.id, what=what, codec=result[1].codec)
    return True, call._answer_caller(ok, contact, now)


def start_queue(call: Call, step: Queue, now: float) -> list[CallOutput]:
    """Run the queue step ``step``: answer the caller (unless an IVR did), then wait."""
    choice = call.transfer
    if choice is not None and not isinstance(choice, IvrChoice):
        # A REFER to a queue: the transferee was answered by a person, who means it
        # for someone, not a wait; refused as an IVR's extension is.
        return choice.failed(403, now)
    events: list[CallOutput] = []
    if isinstance(choice, IvrChoice):
        choice.settle()
    if call.state is CallState.ROUTING:
        answered, events = _answer(call, now, f"queue {step.name}")
        if not answered:
            return events
    return events + call.front.queues.join(call, step, now)


@dataclass(slots=True, eq=False)
class QueueTry(IvrChoice):
    """One try of a queue caller: its agents ring (see the module docstring)."""

    caller: QueueCaller | None = None

    def failed(self, status: int, now: float) -> list[CallOutput]:
        """No agent answered (or all refused): back to waiting."""
        call = self.call
        self.move(TransferEvent.FAILED)
        call.transfer = None
        call.move(CallEvent.IVR_SETTLED)
        events = call.cancel_legs(now, None)
        caller = self.caller
        if caller is None or call.queued is not caller:
            return events
        return events + call.front.queues.try_failed(caller, now)

    def target_answered(self, leg: Leg, body: bytes, now: float) -> list[CallOutput]:
        call = self.call
        events = IvrChoice.target_answered(self, leg, body, now)
        caller = self.caller
        if caller is not None and call.callee_leg is leg and call.transfer is None:
            events += call.front.queues.answered(caller, leg, now)
            events += call.bridge()  # out of the queue: relayed, no more music
        return events


def queue_music(call: Call, bridge: BridgeMedia) -> BridgeMedia:
    """A queue's caller hears its hold music while it waits and while agents ring."""
    caller = call.queued
    if caller is None:
        return bridge
    playlist = caller.room.step.hold_music or bridge.playlist
    return dataclasses.replace(bridge, music_to_caller=not caller.announcing,
                               playlist=playlist, ringback_to_caller=False)


# ---------------------------------------------------------------------- log in by phone
def start_queue_login(call: Call, step: QueueLogin, now: float) -> list[CallOutput]:
    """``*62``/``*63``: log the agent in or out, answer, play the confirmation, hang up."""
    front = call.front
    events = front.queues.log_in(step.agent, step.queues, step.login, now)
    if call.state is CallState.ROUTING:
        answered, answering = _answer(call, now, "the queue log-in code")
        if not answered:
            return events + answering
        events += answering
    # A committed prompt (no espeak-ng at call time): the queue names are free text
    # and cannot be said from prompts, so the confirmation does not repeat them.
    language: Language = "fr" if step.language == "fr" else "en"
    name = "queue_logged_in" if step.login else "queue_logged_out"
    notice = QueueNotice(call, _spoken(f"queue-{'login' if step.login else 'logout'}", "",
                                       step.reason))
    notice.prompts = (str(prompt_path(language, name)),)
    call.ivr = notice
    call.arm("ivr", now + NOTICE_SECONDS)
    return events + notice.play_once()


def _spoken(name: str, text: str, reason: str) -> Ivr:
    """An IVR step for a :class:`QueueNotice` (its ``prompts`` are said), no keys."""
    return Ivr(name, "", "", text, "en", (), False, 1, 0, Destination("busy"),
               Destination("busy"), reason)


@dataclass(slots=True, eq=False)
class QueueNotice(IvrSession):
    """Something said to the caller once, keys ignored: a log-in code's confirmation
    (then the call ends) or a queue caller's position (``after = "music"``: then it
    waits on)."""

    after: str = "hang_up"
    prompts: tuple[str, ...] = ()  # built-in prompt files instead of the step's text

    def play_once(self) -> list[CallOutput]:
        if not self.prompts:
            return self._play()
        call = self.call
        media = call.anchor.caller.media
        assert media is not None  # a queue's caller is answered from its endpoint
        self.plays += 1
        self.generation += 1
        return [IvrPlay(call.key, call.id, media, "", "", self.step.language, self.generation,
                        self.prompts)]

    def on_prompt_done(self, generation: int, now: float) -> list[CallOutput]:
        if generation != self.generation:
            return []
        return self._done(now)

    def on_digit(self, digit: str, now: float) -> list[CallOutput]:
        return []

    def on_timer(self, now: float) -> list[CallOutput]:
        return self._done(now)

    def gone(self) -> None:
        return None

    def _done(self, now: float) -> list[CallOutput]:
        call = self.call
        call.ivr = None
        call.disarm("ivr")
        quiet: list[CallOutput] = [IvrQuiet(call.key, done=True)]
        if self.after == "music":
            caller = call.queued
            return quiet + (call.front.queues.announced(caller, now) if caller else [])
        return [*quiet, *call.close(CallEvent.ENDPOINT_DONE, now)]

