"""The web side output: Prometheus metrics, health, JSON, live events and the key panel."""

from bridge.web.server import entities_json, make_app, start_web, status_json
from bridge.web.status import (
    ACTIVITIES,
    KEY_STATES,
    Activity,
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
    panel_activity,
)

__all__ = [
    "ACTIVITIES",
    "KEY_STATES",
    "Activity",
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
    "panel_activity",
    "start_web",
    "status_json",
]
