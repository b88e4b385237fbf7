"""The bridge's figures for Prometheus, rendered by ``prometheus_client``.

At each scrape the handler takes a ``MetricsSnapshot`` of the bridge's own counters on the event
loop (so sending a NOTIFY costs nothing extra), and ``render_metrics`` turns it into text in a
worker thread: formatting is the slow part (about 0.2 s for 5,000 extensions' key states), and
the loop keeps serving NOTIFYs meanwhile. The process figures (RSS, CPU, open file descriptors)
come from prometheus_client's ``ProcessCollector``, which reads /proc at that moment.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from bridge.web.status import KEY_STATES, Counters, EntityStatus, HistogramSnapshot, StatusView

# The text format generate_latest writes (the newest content type names 1.0.0, which older
# Prometheus servers do not accept for the same text).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "snom_blf_"


@dataclass(frozen=True, slots=True)
class MetricsSnapshot:
    """The bridge's figures at one moment: taken on the loop, rendered anywhere."""

    counters: Counters
    latency: HistogramSnapshot
    entities: tuple[EntityStatus, ...]

    @classmethod
    def of(cls, view: StatusView) -> MetricsSnapshot:
        """Read the view now (on the event loop: the view is not thread-safe)."""
        return cls(view.counters(), view.latency(), tuple(view.entities()))


class BridgeCollector(Collector):
    """The bridge's counters, gauges, latency histogram and key states of one snapshot."""

    def __init__(self, snapshot: MetricsSnapshot) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        """Every family of the snapshot."""
        snapshot = self._snapshot
        counters = snapshot.counters
        yield _gauge("subscriptions", "Live subscriptions.", counters.subscriptions)
        yield _counter("notifies_sent", "NOTIFYs answered with success.", counters.notifies_sent)
        yield _counter("notifies_failed", "NOTIFYs that failed or got no answer.",
                       counters.notifies_failed)  # fmt: skip
        yield _gauge("ami_connected", "1 while the Asterisk source is connected.",
                     int(counters.ami_connected))  # fmt: skip
        yield _gauge("synced", "1 once the Asterisk source finished its resync.",
                     int(counters.synced))  # fmt: skip
        yield _counter("events", "Asterisk events handled.", counters.events_total)
        yield _counter("failovers", "Moves to another AMI/ARI endpoint of a PBX (standby taken).",
                       counters.failovers)  # fmt: skip
        if counters.endpoint:  # one PBX: which endpoint it follows, as an info-style gauge
            following = GaugeMetricFamily(PREFIX + "asterisk_endpoint",
                                          "1 for the AMI/ARI endpoint followed.",
                                          labels=["endpoint"])  # fmt: skip
            following.add_metric([counters.endpoint], 1)
            yield following
        if counters.pbxs:  # several PBXs: each apart, by a pbx label (the totals above stay)
            yield from _per_pbx(counters)
        yield _histogram(snapshot.latency)
        states = GaugeMetricFamily(
            PREFIX + "entity_state",
            "1 for the state each watched extension's key shows, 0 for the others.",
            labels=["exten", "state"],
        )
        # Every state of every extension, 0 or 1: a series that vanishes would look like "no data".
        for entity in snapshot.entities:
            for state in KEY_STATES:
                states.add_metric([entity.exten, state], int(entity.state == state))
        yield states


def _per_pbx(counters: Counters) -> Iterator[Metric]:
    connected = GaugeMetricFamily(PREFIX + "pbx_connected",
                                  "1 while this PBX's source is connected.", labels=["pbx"])
    synced = GaugeMetricFamily(PREFIX + "pbx_synced",
                               "1 once this PBX's source finished its resync.", labels=["pbx"])
    events = CounterMetricFamily(PREFIX + "pbx_events", "Asterisk events handled from this PBX.",
                                 labels=["pbx"])  # fmt: skip
    failovers = CounterMetricFamily(PREFIX + "pbx_failovers",
                                    "Moves to another AMI/ARI endpoint of this PBX.",
                                    labels=["pbx"])  # fmt: skip
    following = GaugeMetricFamily(PREFIX + "pbx_endpoint", "1 for the endpoint this PBX follows.",
                                  labels=["pbx", "endpoint"])  # fmt: skip
    for pbx in counters.pbxs:
        connected.add_metric([pbx.name], int(pbx.connected))
        synced.add_metric([pbx.name], int(pbx.synced))
        events.add_metric([pbx.name], pbx.events_total)
        failovers.add_metric([pbx.name], pbx.failovers)
        if pbx.endpoint:
            following.add_metric([pbx.name, pbx.endpoint], 1)
    yield from (connected, synced, events, failovers, following)


def render_metrics(snapshot: MetricsSnapshot) -> bytes:
    """The whole /metrics page (``CONTENT_TYPE``): the snapshot and the process's figures now.
    Safe in a worker thread: it reads only the snapshot and /proc."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BridgeCollector(snapshot))
    ProcessCollector(registry=registry)
    return generate_latest(registry)


def _gauge(name: str, help_text: str, value: int) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, help_text, value=value)


def _counter(name: str, help_text: str, value: int) -> CounterMetricFamily:
    return CounterMetricFamily(PREFIX + name, help_text, value=value)  # written as name_total


def _histogram(h: HistogramSnapshot) -> HistogramMetricFamily:
    buckets: list[tuple[str, float]] = []
    cumulative = 0
    for bound, count in zip(h.bounds, h.counts, strict=True):
        cumulative += count
        buckets.append((_bound(bound), cumulative))
    buckets.append(("+Inf", h.count))
    return HistogramMetricFamily(
        PREFIX + "event_to_notify_seconds",
        "Seconds from an Asterisk event to the NOTIFYs it caused.",
        buckets=buckets,
        sum_value=h.sum,
    )


def _bound(value: float) -> str:
    return repr(value)  # 0.0005, 2.5: as the bounds were always written
