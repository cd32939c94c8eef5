"""Prometheus metrics of one engine (its own registry, so tests can run several)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

#: Billing groups with a label of their own in ``switchboard_calls_by_billing_group``;
#: any further group is counted as ``other`` (calls with none as ``none``), so the
#: metric has at most this many + 2 series whatever the directory holds.
BILLING_GROUP_LABELS = 20


# The queues' figures at scrape time, by queue only (never a caller): name -> help.
_QUEUE_GAUGES = {
    "callers_waiting": "Callers waiting in the queue",
    "longest_wait_seconds": "How long the caller waiting longest has waited",
    "agents_logged_in": "Agents logged in to the queue",
    "agents_idle": "Agents logged in, idle and on no call",
    "agents_on_call": "Agents logged in and on a call (any call)",
    "average_wait_seconds": "Average wait of the answered callers",
    "average_talk_seconds": "Average talk time of the queue's answered calls",
}
_QUEUE_COUNTERS = {
    "answered": "Queue callers an agent answered",
    "abandoned": "Queue callers who hung up before an agent answered",
    "timed_out": "Queue callers sent to on_timeout (max wait, or the queue full)",
    "answered_within_service_level": "Queue callers answered within service_level_seconds",
}
QueueSource = Callable[[float], Iterable[Mapping[str, object]]]


class _QueueCollector:
    """Reads every queue's figures (``QueueFigures.to_json``) when scraped."""

    def __init__(self) -> None:
        self.source: QueueSource | None = None

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        source = self.source
        rows = list(source(time.monotonic())) if source is not None else []
        for name, text in _QUEUE_GAUGES.items():
            gauge = GaugeMetricFamily(f"switchboard_queue_{name}", text, labels=["queue"])
            for row in rows:
                gauge.add_metric([str(row["queue"])], float(str(row[name])))
            yield gauge
        for name, text in _QUEUE_COUNTERS.items():
            counter = CounterMetricFamily(f"switchboard_queue_{name}", text, labels=["queue"])
            for row in rows:
                counter.add_metric([str(row["queue"])], float(str(row[name])))
            yield counter


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self._queues = _QueueCollector()
        r.register(self._queues)
        self.messages_in = Counter(
            "switchboard_sip_messages_in", "SIP messages received",
            ["kind", "method", "status"], registry=r)
        self.messages_out = Counter(
            "switchboard_sip_messages_out", "SIP messages sent",
            ["kind", "method", "status"], registry=r)
        self.parse_errors = Counter(
            "switchboard_sip_parse_errors", "Messages that could not be parsed or were refused "
            "as malformed", ["transport"], registry=r)
        self.responses_dropped = Counter(
            "switchboard_sip_responses_dropped", "Responses with no transaction to go to",
            registry=r)
        self.registrations = Gauge(
            "switchboard_registrations_active", "Live registrar bindings", registry=r)
        self.auth_failures = Counter(
            "switchboard_auth_failures", "Digest authentications that failed",
            ["method"], registry=r)
        self.auth_blocks = Counter(
            "switchboard_auth_blocks", "Sources blocked after repeated auth failures",
            registry=r)
        self.blocked_sources = Gauge(
            "switchboard_blocked_sources", "Sources blocked right now", registry=r)
        self.transactions = Gauge(
            "switchboard_transactions_active", "Live SIP transactions", ["kind"], registry=r)
        self.tcp_connections = Gauge(
            "switchboard_tcp_connections", "Open SIP stream connections (accepted and opened), "
            "by transport: tcp, tls", ["transport"], registry=r)
        self.tcp_refused = Counter(
            "switchboard_tcp_connections_refused", "New SIP TCP/TLS connections closed at "
            "once: per_source (its address holds the most allowed), cap (the global cap "
            "and nothing that may be closed for it)", ["transport", "reason"], registry=r)
        self.tcp_shed = Counter(
            "switchboard_tcp_connections_shed", "SIP TCP/TLS connections the engine closed: "
            "room (at the global cap, for a newcomer), first_message (no complete message "
            "in time), handshake (TLS handshake failed or too slow)",
            ["transport", "reason"], registry=r)
        self.errors = Counter(
            "switchboard_internal_errors", "Requests whose handling raised (logged, "
            "answered 500)", registry=r)

        self.calls_active = Gauge(
            "switchboard_calls_active", "Calls being routed or answered", registry=r)
        self.calls = Counter(
            "switchboard_calls", "Calls by how they ended", ["outcome"], registry=r)
        self.transfers = Counter(
            "switchboard_transfers", "Blind transfers (REFER) by outcome: connected, "
            "voicemail, failed (back to the transferor), dropped (the transferor had left), "
            "refused", ["outcome"], registry=r)
        self.pickups = Counter(
            "switchboard_pickups", "Call pickups by outcome: directed, group, nothing "
            "(no call ringing), elsewhere (ringing at another node: 480), refused (media not "
            "anchored, no common codec)", ["outcome"],
            registry=r)
        self.parked_calls = Gauge(
            "switchboard_parked_calls", "Calls waiting on a park orbit", registry=r)
        self.calls_taken_over = Counter(
            "switchboard_calls_ended_for_dead_node", "Calls another node held, ended by "
            "this one (a BYE to each party) after that node stopped heartbeating",
            registry=r)
        # SIP events (engine.services.subscriptions): busy lamps and presence.
        self.subscriptions_active = Gauge(
            "switchboard_subscriptions_active", "Live subscriptions by event package: dialog "
            "(busy lamps), presence", ["package"], registry=r)
        self.notifies_sent = Counter(
            "switchboard_notifies_sent", "NOTIFYs sent, by event package (dialog, presence)",
            ["package"], registry=r)
        self.lamp_writes = Counter(
            "switchboard_lamp_writes", "Busy-lamp changes queued for the store, for the "
            "other nodes: watch (a resource this node's subscriptions began or stopped "
            "watching), dialogs (this node's dialogs of a resource another node watches)",
            ["kind"], registry=r)
        self.notifies_failed = Counter(
            "switchboard_notifies_failed", "NOTIFYs that failed, by event package and reason: "
            "timeout (no answer), 481 (the subscription ended), or the error status",
            ["package", "reason"], registry=r)
        self.trunk_channels = Gauge(
            "switchboard_trunk_channels_in_use", "Trunk channels held", ["trunk"], registry=r)
        self.ivr_calls = Counter(
            "switchboard_ivr_calls", "Calls that entered an IVR menu", registry=self.registry)
        self.ivr_outcomes = Counter(
            "switchboard_ivr_outcomes", "How IVR menus ended: key, extension (dial by "
            "extension), timeout, invalid, hangup", ["outcome"], registry=self.registry)
        self.calls_by_billing_group = Counter(
            "switchboard_calls_by_billing_group", "Calls routed, by the billing_group of "
            f"their number (the first {BILLING_GROUP_LABELS} groups in directory order, "
            "then 'other'; 'none' without one)", ["billing_group"], registry=r)
        # Overload control (engine.overload).
        self.shed = Counter(
            "switchboard_sip_shed", "SIP messages not served, by class (dialog, refresh, "
            "invite, other) and reason: delay (refused at arrival: the queue or the loop "
            "too late), expired (refused after waiting too long), stale (dropped: its "
            "sender has retransmitted since), full (the queue at its size limit), "
            "source_rate (an unknown source over its token bucket); requests get a 503, "
            "responses and ACKs are dropped", ["class", "reason"], registry=r)
        self.overload_absorbed = Counter(
            "switchboard_sip_overload_absorbed", "Messages the receive queue answered "
            "itself: ack_of_503 (the ACK of a 503 it sent), queued_retransmission (a copy "
            "of a request still queued)", ["what"], registry=r)
        self.overloaded = Gauge(
            "switchboard_overloaded", "1 while the engine sheds load (from the first "
            "message not served to 2 s without any)", registry=r)
        self.loop_lag = Histogram(
            "switchboard_event_loop_lag_seconds", "How late the event loop runs a timer "
            "(sampled every 50 ms)", registry=r,
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5))
        self.queue_wait = Histogram(
            "switchboard_sip_queue_wait_seconds", "How long a message served waited in the "
            "receive queue, by class", ["class"], registry=r,
            buckets=(0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 1.0))
        self.queue_oldest = Gauge(
            "switchboard_sip_queue_oldest_seconds", "Age of the oldest message waiting in "
            "the receive queue, by class", ["class"], registry=r)
        self.queue_length = Gauge(
            "switchboard_sip_queue_length", "Messages waiting in the receive queue, by class",
            ["class"], registry=r)
        # The store (engine.shell.storelink): reachable or not, changes waiting for it.
        self.store_up = Gauge(
            "switchboard_store_up", "1 while the store answers, 0 while it is away (the "
            "engine serves from memory and queues its changes)", registry=r)
        self.store_queued_writes = Gauge(
            "switchboard_store_queued_writes", "Changes (bindings, voicemail rows) waiting "
            "to be written to the store", registry=r)
        self.store_reconnects = Counter(
            "switchboard_store_reconnects", "Times the store came back after being away",
            registry=r)
        self.store_reconnect_attempts = Counter(
            "switchboard_store_reconnect_attempts", "Pings of an unreachable store "
            "(backoff from 0.25 s to 8 s)", registry=r)
        self.store_writes_dropped = Counter(
            "switchboard_store_writes_dropped", "Changes never written to the store, by "
            "reason: full (the queue at its bound), refused (the store failed the "
            "statement itself)", ["reason"], registry=r)
        self.asyncio_tasks = Gauge(
            "switchboard_asyncio_tasks", "asyncio tasks alive in the engine process "
            "(read when /metrics is served)", registry=r)
        self._shed: dict[tuple[str, str], Counter] = {}
        self._wait: dict[str, Histogram] = {}
        self._billing_groups: set[str] = set()
        self._in: dict[tuple[str, str, str], Counter] = {}
        self._out: dict[tuple[str, str, str], Counter] = {}

    def count_in(self, kind: str, method: str, status: str) -> None:
        """messages_in{kind, method, status} += 1, with the labelled child cached
        (``labels()`` takes a lock and builds a key on every call: hot path)."""
        key = (kind, method, status)
        child = self._in.get(key)
        if child is None:
            child = self._in[key] = self.messages_in.labels(kind, method, status)
        child.inc()

    def count_out(self, kind: str, method: str, status: str) -> None:
        key = (kind, method, status)
        child = self._out.get(key)
        if child is None:
            child = self._out[key] = self.messages_out.labels(kind, method, status)
        child.inc()

    def count_shed(self, cls: str, reason: str) -> None:
        key = (cls, reason)
        child = self._shed.get(key)
        if child is None:
            child = self._shed[key] = self.shed.labels(cls, reason)
        child.inc()

    def observe_wait(self, cls: str, seconds: float) -> None:
        child = self._wait.get(cls)
        if child is None:
            child = self._wait[cls] = self.queue_wait.labels(cls)
        child.observe(seconds)

    def admit_billing_groups(self, groups: Iterable[str]) -> None:
        """Give the first groups (directory order) a label of their own while fewer
        than ``BILLING_GROUP_LABELS`` have one. A label once given is kept for the
        life of the process (a counter's series is not taken back), so the limit
        holds across directory reloads too."""
        for group in groups:
            if len(self._billing_groups) >= BILLING_GROUP_LABELS:
                return
            if group and group not in ("other", "none"):
                self._billing_groups.add(group)

    def billing_label(self, group: str) -> str:
        """The label value a call of ``group`` is counted under."""
        if not group:
            return "none"
        if group in self._billing_groups:
            return group
        return "other"

    def count_billing_group(self, group: str) -> None:
        self.calls_by_billing_group.labels(self.billing_label(group)).inc()

    def read_queues(self, source: QueueSource) -> None:
        """Where the queue metrics come from (the call layer's queues)."""
        self._queues.source = source

    def render(self) -> bytes:
        return generate_latest(self.registry)
