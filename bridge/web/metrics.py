"""The bridge's figures in Prometheus' text exposition format 0.0.4, written by hand."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from bridge.web.status import KEY_STATES, Counters, EntityStatus, HistogramSnapshot

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "snom_blf_"


def render_metrics(
    counters: Counters, latency: HistogramSnapshot, entities: Sequence[EntityStatus]
) -> str:
    """The whole /metrics page."""
    scalars: list[tuple[str, str, str, int]] = [
        ("subscriptions", "gauge", "Live subscriptions.", counters.subscriptions),
        ("notifies_sent_total", "counter", "NOTIFYs answered with success.",
         counters.notifies_sent),
        ("notifies_failed_total", "counter", "NOTIFYs that failed or got no answer.",
         counters.notifies_failed),
        ("ami_connected", "gauge", "1 while the Asterisk source is connected.",
         int(counters.ami_connected)),
        ("synced", "gauge", "1 once the Asterisk source finished its resync.",
         int(counters.synced)),
        ("events_total", "counter", "Asterisk events handled.", counters.events_total),
    ]  # fmt: skip
    lines: list[str] = []
    for name, kind, help_text, value in scalars:
        _family(lines, name, kind, help_text, [("", value)])
    _family(
        lines,
        "event_to_notify_seconds",
        "histogram",
        "Seconds from an Asterisk event to the NOTIFYs it caused.",
        _histogram(latency),
    )
    _family(
        lines,
        "entity_state",
        "gauge",
        "1 for the state each watched extension's key shows, 0 for the others.",
        _entity_states(entities),
    )
    return "\n".join(lines) + "\n"


def _family(
    lines: list[str],
    name: str,
    kind: str,
    help_text: str,
    samples: Iterable[tuple[str, float | int]],
) -> None:
    """``samples``: (suffix+labels, value), e.g. ``('_bucket{le="0.1"}', 3)``."""
    full = PREFIX + name
    lines.append(f"# HELP {full} {help_text}")
    lines.append(f"# TYPE {full} {kind}")
    lines.extend(f"{full}{labels} {_number(value)}" for labels, value in samples)


def _histogram(h: HistogramSnapshot) -> list[tuple[str, float | int]]:
    out: list[tuple[str, float | int]] = []
    cumulative = 0
    for bound, count in zip(h.bounds, h.counts, strict=True):
        cumulative += count
        out.append((f'_bucket{{le="{_number(bound)}"}}', cumulative))
    out.append(('_bucket{le="+Inf"}', h.count))
    out.append(("_sum", h.sum))
    out.append(("_count", h.count))
    return out


def _entity_states(entities: Sequence[EntityStatus]) -> list[tuple[str, float | int]]:
    # Every state of every extension, 0 or 1: a series that vanishes would look like "no data".
    return [
        (f'{{exten="{_label(e.exten)}",state="{state}"}}', int(e.state == state))
        for e in entities
        for state in KEY_STATES
    ]


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float | int) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(value)
