"""The web side output: Prometheus metrics, health, JSON, live events and the key panel."""

from bridge.web.server import entities_json, make_app, start_web
from bridge.web.status import (
    KEY_STATES,
    ChangeSignal,
    Counters,
    EntityStatus,
    Histogram,
    HistogramSnapshot,
    KeyState,
    LedPhoneStatus,
    PbxHealth,
    StatusView,
    SubscriptionStatus,
    entity_status,
)

__all__ = [
    "KEY_STATES",
    "ChangeSignal",
    "Counters",
    "EntityStatus",
    "Histogram",
    "HistogramSnapshot",
    "KeyState",
    "LedPhoneStatus",
    "PbxHealth",
    "StatusView",
    "SubscriptionStatus",
    "entities_json",
    "entity_status",
    "make_app",
    "start_web",
]
