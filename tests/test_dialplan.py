"""Resolving a SUBSCRIBE as Asterisk does (bridge.dialplan, the tracker's resolve, the core):
``subscribe_context``, else ``context``; that context's hints, then its includes in order, depth
first, each context once; pattern hints made exact; a key Asterisk would not find is a 404.

The layout is FreePBX's (docs/FREEPBX.md): endpoints in ``from-internal`` with no
subscribe_context, hints in ``ext-local`` four includes away, park slots in ``park-hints``, DND
keys as the pattern hint ``_*76X.`` in ``ext-dnd-hints``; beside it another tenant's ``202``.
"""

from __future__ import annotations

import pytest
from test_core import lab

from bridge.dialplan import DialplanResolver, expand_hint, pattern_regex
from bridge.events import (
    DeviceStateChanged,
    DialplanRead,
    EndpointGroups,
    ExtensionHint,
    ResyncFinished,
    ResyncStarted,
)
from bridge.provision.site import freepbx_label
from bridge.tracker import CallTracker

FREEPBX_INCLUDES = (
    ("from-internal", ("from-internal-xfer", "bad-number")),
    ("from-internal-xfer", ("from-internal-additional", "from-internal-noxfer")),
    ("from-internal-additional", ("ext-dnd-hints", "app-daynight-toggle", "park-hints",
                                  "ext-local")),
    ("ext-local", ("from-internal-xfer",)),  # a cycle: each context is searched once
    ("tenant-b", ("tenant-b-hints",)),
)  # fmt: skip
FREEPBX_PATTERNS = (("ext-dnd-hints", "_*76X.", "Custom:DEVDND${EXTEN:3}"),)
FREEPBX_HINTS = (
    ("201", "ext-local", "PJSIP/201&Custom:DND201,CustomPresence:201"),
    ("202", "ext-local", "PJSIP/202&Custom:DND202,CustomPresence:202"),
    ("71", "park-hints", "park:71@parkedcalls"),
    ("*280", "app-daynight-toggle", "Custom:DAYNIGHT0"),
    ("202", "tenant-b-hints", "PJSIP/b202"),
)


def resolver() -> DialplanResolver:
    found = DialplanResolver()
    found.set_dialplan(FREEPBX_INCLUDES, FREEPBX_PATTERNS)
    for exten, context, _ in FREEPBX_HINTS:
        found.add_hint(context, exten)
    return found


@pytest.mark.parametrize(
    ("start", "exten", "context"),
    [
        ("from-internal", "202", "ext-local"),  # four includes away
        ("from-internal", "71", "park-hints"),
        ("from-internal", "*280", "app-daynight-toggle"),
        ("from-internal", "*76202", "ext-dnd-hints"),  # a pattern hint
        ("from-internal", "*7", None),  # matches no pattern: Asterisk answers 404
        ("from-internal", "203", None),
        ("tenant-b", "202", "tenant-b-hints"),
        ("tenant-b", "201", None),  # tenant B reaches none of from-internal's hints
        ("nowhere", "202", None),
    ],
)
def test_a_key_resolves_where_asterisk_finds_its_hint(
    start: str, exten: str, context: str | None
) -> None:
    assert resolver().find(start, exten) == context


def test_includes_are_searched_in_order_depth_first_before_the_next_include() -> None:
    found = DialplanResolver()
    found.set_dialplan((("a", ("b", "c")), ("b", ("d",)), ("c", ())))
    found.add_hint("c", "202")
    found.add_hint("d", "202")
    assert found.find("a", "202") == "d"  # b's include d comes before a's second include c
    found.add_hint("a", "202")
    assert found.find("a", "202") == "a"  # the context's own hint before any include


def test_a_context_is_searched_once_its_name_compared_without_case() -> None:
    found = DialplanResolver()
    # "B" is "b" to the search stack: the second visit is skipped, so "c" is never reached.
    found.set_dialplan((("a", ("b", "B")), ("b", ()), ("B", ("c",))))
    found.add_hint("c", "202")
    assert found.find("a", "202") is None


def test_a_timed_include_is_followed_and_unknown_includes_change_nothing() -> None:
    found = DialplanResolver()
    assert not found.includes_known
    assert found.set_dialplan((("a", ("ext-local,09:00-17:00,mon-fri,*,*",)),))
    assert not found.set_dialplan((("a", ("ext-local,09:00-17:00,mon-fri,*,*",)),))
    found.add_hint("ext-local", "202")
    assert found.find("a", "202") == "ext-local"


@pytest.mark.parametrize(
    ("pattern", "matches", "misses"),
    [
        ("_*76X.", ["*7620", "*76201"], ["*762", "*77201", "*76a"]),
        ("_2[0-2]X", ["200", "229"], ["230", "20"]),
        ("_NXX!", ["200", "2001"], ["100"]),
    ],
)
def test_patterns_match_as_asterisk_matches_them(
    pattern: str, matches: list[str], misses: list[str]
) -> None:
    regex = pattern_regex(pattern)
    assert regex is not None
    assert all(regex.fullmatch(m) for m in matches)
    assert not any(regex.fullmatch(m) for m in misses)
    assert pattern_regex("202") is None


def test_a_pattern_hint_is_made_exact_with_the_extension() -> None:
    assert expand_hint("Custom:DEVDND${EXTEN:3}", "*76201") == "Custom:DEVDND201"
    assert expand_hint("Custom:FOLLOWME${EXTEN:3}", "*21201") == "Custom:FOLLOWME201"
    assert expand_hint("PJSIP/${EXTEN}", "202") == "PJSIP/202"
    assert expand_hint("X${EXTEN:-3:2}", "*76201") == "X20"


def freepbx_sync() -> list[object]:
    hints = [ExtensionHint(e, c, h, 0) for e, c, h in FREEPBX_HINTS]
    return [
        ResyncStarted(),
        DeviceStateChanged("Custom:DEVDND202", "BUSY"),
        *hints,
        DialplanRead(FREEPBX_INCLUDES, FREEPBX_PATTERNS),
        ResyncFinished(),
        # FreePBX: a context, no subscribe_context
        EndpointGroups("203", frozenset({1}), frozenset({1}), "", "from-internal"),
        EndpointGroups("b203", frozenset({1}), frozenset({1}), "", "tenant-b"),
    ]


def test_the_tracker_resolves_from_the_endpoints_context_through_the_includes() -> None:
    tracker = CallTracker()
    for event in freepbx_sync():
        if isinstance(event, EndpointGroups):
            tracker.set_endpoint_contexts(event.endpoint, event.subscribe_context, event.context)
        elif isinstance(event, DialplanRead):  # the core hands it over (and rehomes)
            tracker.set_dialplan(event)
        else:
            tracker.apply(event, 0.0)  # type: ignore[arg-type]
    assert tracker.default_context == "ext-local"  # the most phone hints, not park-hints
    assert tracker.resolve("202", "203") == "202"
    assert tracker.resolve("202", "b203") == "202@tenant-b-hints"
    assert tracker.resolve("71", "203") == "71@park-hints"
    assert tracker.resolve("71", "b203") is None
    assert tracker.resolve("*76202", "203") == "*76202@ext-dnd-hints"
    # Made exact like Asterisk's dynamic hint: the key follows Custom:DEVDND202.
    assert tracker.state("*76202@ext-dnd-hints").dialogs


def test_over_the_core_each_key_answers_as_asterisk_would() -> None:
    lb = lab()
    lb.feed(freepbx_sync())  # type: ignore[arg-type]
    for exten, user, status in [("202", "203", 200), ("71", "203", 200), ("*280", "203", 200),
                                ("*76202", "203", 200), ("203", "203", 404),
                                ("71", "b203", 404), ("202", "b203", 200)]:  # fmt: skip
        assert lb.subscribe(exten, user=user).status == status, (exten, user)
    assert lb.core.notifier.stats().watchers == {
        "202": 1, "202@tenant-b-hints": 1, "71@park-hints": 1,
        "*280@app-daynight-toggle": 1, "*76202@ext-dnd-hints": 1,
    }  # fmt: skip


def test_a_dialplan_reload_that_moves_a_key_sends_its_watchers_to_subscribe_again() -> None:
    lb = lab()
    lb.feed(freepbx_sync())  # type: ignore[arg-type]
    first = lb.subscribe("202", user="b203")
    assert lb.core.notifier.stats().watchers == {"202@tenant-b-hints": 1}
    # The reload drops tenant B's include: its 202 is gone for it, as Asterisk would say.
    includes = tuple(i for i in FREEPBX_INCLUDES if i[0] != "tenant-b")
    lb.feed([DialplanRead(includes, FREEPBX_PATTERNS)])
    final = lb.notifies_of(first)[-1]
    assert final.headers["subscription-state"] == "terminated;reason=deactivated"
    assert lb.subscribe("202", user="b203").status == 404


@pytest.mark.parametrize(
    ("key", "label"),
    [
        ("71@park-hints", "Park 71"),
        ("*76201@ext-dnd-hints", "DND 201"),
        ("*280@app-daynight-toggle", "Day/Night 0"),
        ("*21201@ext-findmefollow", "Follow-me 201"),
        ("*740201@ext-cf-hints", "CF 201"),
        ("202", None),
        ("202@tenant-b-ext", None),
    ],
)
def test_snom_keys_are_labelled_as_freepbx_sites_label_them(key: str, label: str | None) -> None:
    assert freepbx_label(key) == label
