"""Tenants on one Asterisk: a key is (context, extension), a watcher watches in its endpoint's
``subscribe_context``.

The two-tenant recording (tests/fixtures/asterisk-22.10.1/tenants, see its README) rings 202 in
context ``internal`` (tenant A, called by "Phone 201") and 202 in ``tenant-b`` (called by
"Tenant B 201", caller id 201 too) at the same time. It goes into the core here as the AMI source
hands it over, on the fake clock of tests/test_core.py; a watcher of 202 in each tenant must see
what Asterisk's own BLF sent it (``own-blf-202-tenant-a.log``/``-b.log``) and nothing of the other
tenant: no key, no caller, no pickup id. tests/test_app.py-style checks over real sockets are at
the end (the recording replayed by the demo AMI server to a running bridge).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from lxml import etree
from own_blf import collapsed, own_blf
from own_blf import key_state as own_key_state
from sipp import SippWatcher
from test_app import (
    IDLE_MS,
    SPEED,
    check_notify_sequence,
    eventually,
    running_bridge,
    running_over_ari,
)
from test_app import dialogs as socket_dialogs
from test_core import NS, RESYNC_ANSWERS, Lab, Sip, dialogs, lab, with_ids

from bridge.app import Bridge
from bridge.asterisk import ami_events
from bridge.config import ConfigError, load
from bridge.demo.ami_server import RecordedAmiServer
from bridge.demo.ari_server import RecordedAriServer
from bridge.demo.recording import load_endpoints, load_scenario, offered_calls
from bridge.devices import parse_groups
from bridge.events import (
    AsteriskEvent,
    EndpointGroups,
    ExtensionHint,
    ResyncFinished,
    ResyncStarted,
)
from bridge.tracker import CallTracker

TENANTS = Path(__file__).parent / "fixtures" / "asterisk-22.10.1" / "tenants"
SCENARIO = "tenants/two-tenants-ring-202"  # under the recordings folder, as own_blf reads it
FOLDER = TENANTS / "two-tenants-ring-202"
Timed = list[tuple[int, AsteriskEvent]]


def tenant_groups() -> list[AsteriskEvent]:
    """Every endpoint's groups and subscribe_context, as the AMI source reads them."""
    conf = load_endpoints(TENANTS / "asterisk-etc" / "pjsip.conf")
    return [
        EndpointGroups(name, parse_groups(v.get("call_group", "")),
                       parse_groups(v.get("pickup_group", "")), v.get("subscribe_context", ""))
        for name, v in sorted(conf.items())
    ]  # fmt: skip


def two_tenants() -> tuple[list[AsteriskEvent], Timed]:
    """The login-time resync (then the endpoints), and the call at its recorded times."""
    s = load_scenario(FOLDER)
    listed = [ev for name in RESYNC_ANSWERS for answer in s.answers.get(name, [])[:1]
              for frame in answer.frames for ev in ami_events.to_events(frame)]  # fmt: skip
    timed: Timed = []
    for recorded in s.events:
        if {"call", "system"} & set(recorded.headers.get("Privilege", "").split(",")):
            for event in with_ids(ami_events.to_events(recorded.headers), s.getvars):
                timed.append((round(recorded.t * 1000), event))
    return [ResyncStarted(), *listed, ResyncFinished(), *tenant_groups()], timed


def early(notifies: list[Sip]) -> list[etree._Element]:
    return [d for n in notifies for d in dialogs(n) if d.findtext("d:state", namespaces=NS)
            == "early"]  # fmt: skip


def caller(dialog: etree._Element) -> str | None:
    identity = dialog.find("d:remote/d:identity", NS)
    return None if identity is None else identity.get("display")


def leg_ids() -> dict[str, tuple[str, str, str]]:
    """Each tenant's ringing leg: (call-id, Asterisk's tag, the phone's tag)."""
    a = (FOLDER / "replaces.csv").read_text().splitlines()[1].split(";")
    b = offered_calls((FOLDER / "sip-b202.log").read_text())[0]
    return {"a": (a[0], a[1], a[2]), "b": tuple(b)}  # type: ignore[dict-item]


def both_watching(*extra: str, users: tuple[str, str] = ("203", "b203")) -> tuple[Lab, Sip, Sip]:
    resync, timed = two_tenants()
    lb = lab(*extra)
    lb.feed(resync)
    a, b = (lb.subscribe("202", user=user) for user in users)
    assert (a.status, b.status) == (200, 200)
    lb.play(timed, start=lb.clock.ms)
    return lb, a, b


# --- the core, on the fake clock -----------------------------------------------------------------


def test_each_tenants_watcher_sees_only_its_own_202_as_asterisks_own_blf_did() -> None:
    lb, a, b = both_watching()
    ids = leg_ids()
    for reply, tenant, display in ((a, "a", "Phone 201"), (b, "b", "Tenant B 201")):
        notifies = lb.notifies_of(reply)
        got = [own_key_state(n.body) for n in notifies]
        assert collapsed(got) == collapsed(own_blf(SCENARIO, f"202-tenant-{tenant}")), tenant
        ringing = early(notifies)
        assert ringing and {caller(d) for d in ringing} == {display}, tenant
        for d in ringing:  # the ids of its own tenant's leg, never the other's
            assert (d.get("call-id"), d.get("remote-tag"), d.get("local-tag")) == ids[tenant]
            assert etree.fromstring(notifies[0].body).get("entity").startswith("sip:202@")
        other = ids["b" if tenant == "a" else "a"]
        assert not any(i.encode() in n.body for n in notifies for i in other), tenant


def test_the_keys_are_named_by_context_the_default_one_bare() -> None:
    lb, _, _ = both_watching()
    tracker = lb.core.tracker
    assert tracker.default_context == "internal"  # 9 of its 12 hints
    assert {"202", "202@tenant-b", "201@tenant-b", "210", "701"} <= tracker.extensions()
    assert "210@tenant-b" not in tracker.extensions()  # only tenant A has a DND key
    assert tracker.resolve("202", "b203") == "202@tenant-b"
    assert tracker.resolve("202", "203") == tracker.resolve("202", "nobody") == "202"
    assert tracker.resolve("202@tenant-b", "203") is None
    # The log and the status say which one rang.
    assert lb.core.notifier.stats().watchers == {"202": 1, "202@tenant-b": 1}


def test_another_default_context_renames_the_keys_not_what_a_watcher_sees() -> None:
    lb, a, b = both_watching('watch.context="tenant-b"')
    assert lb.core.tracker.resolve("202", "203") == "202@internal"
    assert lb.core.tracker.resolve("202", "b203") == "202"
    assert {caller(d) for d in early(lb.notifies_of(a))} == {"Phone 201"}
    assert {caller(d) for d in early(lb.notifies_of(b))} == {"Tenant B 201"}


def test_a_watcher_whose_endpoint_is_unknown_watches_in_the_default_context() -> None:
    lb, a, _ = both_watching(users=("nobody", "b203"))
    assert {caller(d) for d in early(lb.notifies_of(a))} == {"Phone 201"}


@pytest.mark.parametrize(
    ("user", "exten", "status"),
    [
        ("b203", "210", 404),  # tenant A's DND key: no such hint in tenant-b
        ("203", "210", 200),
        ("203", "202%40tenant-b", 404),  # no naming another tenant's key from outside
        ("b203", "202%40internal", 404),
    ],
)
def test_a_watcher_cannot_reach_another_contexts_keys(user: str, exten: str, status: int) -> None:
    resync, _ = two_tenants()
    lb = lab()
    lb.feed(resync)
    assert lb.subscribe(exten, user=user).status == status


def test_the_watch_list_names_keys_with_their_context() -> None:
    resync, _ = two_tenants()
    lb = lab('watch.extensions=["202@tenant-b"]')
    lb.feed(resync)
    assert lb.core.tracker.extensions() == frozenset({"202@tenant-b"})
    assert lb.subscribe("202", user="203").status == 404
    assert lb.subscribe("202", user="b203").status == 200


def test_a_key_named_with_an_empty_context_is_refused_by_the_config() -> None:
    with pytest.raises(ConfigError, match=r"watch\.extensions\[0\]: '202@' is not"):
        load(None, ['watch.extensions=["202@"]'])
    with pytest.raises(ConfigError, match=r"watch\.context: 'a@b' is not a dialplan context"):
        load(None, ['watch.context="a@b"'])


# --- over real sockets: the demo AMI server replays the recording, SIPp watches ----------------


@asynccontextmanager
async def replayed(source: str) -> AsyncIterator[tuple[RecordedAmiServer | RecordedAriServer,
                                                      Bridge]]:  # fmt: skip
    """The recording's PBX on AMI, or on ARI (which lists no hints: tenant B's 202 is
    configured as ``[hints] "202@tenant-b"``), and a bridge following it."""
    if source == "ami":
        async with (
            RecordedAmiServer(TENANTS, speed=SPEED) as ami,
            running_bridge(ami) as bridge,
        ):
            yield ami, bridge
    else:
        async with (
            RecordedAriServer(TENANTS, speed=SPEED) as ari,
            running_over_ari(ari, 'hints."202@tenant-b"="PJSIP/b202"') as bridge,
        ):
            yield ari, bridge


@pytest.mark.parametrize("source", ["ami", "ari"])
async def test_over_sockets_each_tenants_phone_sees_its_own_202_only(source: str) -> None:
    async with replayed(source) as (server, bridge):
        # The subscribe_contexts come with the pickup groups, read after the sync.
        await eventually(lambda: bridge.core.policy.knows("b203"))
        async with (
            SippWatcher("202", bridge.bound("udp"), idle_ms=IDLE_MS, watcher="203") as a,
            SippWatcher("202", bridge.bound("udp"), idle_ms=IDLE_MS, watcher="b203") as b,
        ):
            await eventually(lambda: bridge.notifier.stats().watchers == {"202": 1,
                                                                           "202@tenant-b": 1})
            await server.play("two-tenants-ring-202")
            results = {"a": await a.finish(), "b": await b.finish()}
    ids = leg_ids()
    for tenant, display in (("a", "Phone 201"), ("b", "Tenant B 201")):
        notifies = check_notify_sequence(results[tenant])  # entity sip:202@…, XSD-valid
        got = [own_key_state(n.body) for n in notifies]
        assert collapsed(got) == collapsed(own_blf(SCENARIO, f"202-tenant-{tenant}")), tenant
        ringing = [d for n in notifies for d in socket_dialogs(n)
                   if d.findtext("d:state", namespaces=NS) == "early"]  # fmt: skip
        assert ringing and {caller(d) for d in ringing} == {display}, tenant
        for d in ringing:
            assert (d.get("call-id"), d.get("remote-tag"), d.get("local-tag")) == ids[tenant]
        other = ids["b" if tenant == "a" else "a"]
        assert not any(i.encode() in n.body for n in notifies for i in other), tenant


def test_a_phone_that_subscribed_before_its_context_was_read_is_sent_to_subscribe_again(
) -> None:  # fmt: skip
    resync, timed = two_tenants()
    lb = lab()
    endpoints = [e for e in resync if isinstance(e, EndpointGroups)]
    lb.feed(e for e in resync if not isinstance(e, EndpointGroups))  # the groups come late
    early_b, early_a = lb.subscribe("202", user="b203"), lb.subscribe("202", user="203")
    assert lb.core.notifier.stats().watchers == {"202": 2}  # b203 guessed the default context
    lb.feed(endpoints)
    final = lb.notifies_of(early_b)[-1]
    assert final.headers["subscription-state"] == "terminated;reason=deactivated"
    assert lb.notifies_of(early_a)[-1].headers["subscription-state"].startswith("active")
    again = lb.subscribe("202", user="b203")  # what the phone does on "deactivated"
    assert again.status == 200
    assert lb.core.notifier.stats().watchers == {"202": 1, "202@tenant-b": 1}
    lb.play(timed, start=lb.clock.ms)
    assert {caller(d) for d in early(lb.notifies_of(again))} == {"Tenant B 201"}
    assert {caller(d) for d in early(lb.notifies_of(early_a))} == {"Phone 201"}


def test_phones_that_subscribe_before_the_first_sync_end_up_on_their_own_tenants_key() -> None:
    """Before any sync both tenants' phones are accepted for "202" (not known yet); the sync
    tells tenant B's phone to subscribe again (deactivated), and then each sees its own call."""
    resync, timed = two_tenants()
    lb = lab()
    early_b, early_a = lb.subscribe("202", user="b203"), lb.subscribe("202", user="203")
    assert (early_b.status, early_a.status) == (200, 200)
    lb.feed(resync)
    assert lb.notifies_of(early_b)[-1].headers["subscription-state"] == (
        "terminated;reason=deactivated")  # fmt: skip
    assert lb.notifies_of(early_a)[-1].headers["subscription-state"].startswith("active")
    again = lb.subscribe("202", user="b203")
    lb.play(timed, start=lb.clock.ms)
    assert {caller(d) for d in early(lb.notifies_of(again))} == {"Tenant B 201"}
    assert {caller(d) for d in early(lb.notifies_of(early_a))} == {"Phone 201"}


def test_the_default_context_is_the_one_with_most_hints_whatever_came_first() -> None:
    tracker = CallTracker()
    tracker.apply(ResyncStarted(), 0.0)
    # Tenant B's hint comes first: it names the keys until the sync's end counts them.
    tracker.apply(ExtensionHint("202", "tenant-b", "PJSIP/b202", 0), 0.0)
    assert tracker.extensions() == {"202"}
    for exten in ("201", "202", "203"):
        tracker.apply(ExtensionHint(exten, "internal", f"PJSIP/{exten}", 0), 0.0)
    tracker.apply(ResyncFinished(), 0.0)
    assert tracker.extensions() == {"201", "202", "203", "202@tenant-b"}
    assert tracker.default_context == "internal"
    assert tracker.state("202@tenant-b").exten == "202@tenant-b"


def test_context_less_hints_are_the_default_context_and_ari_tenants_are_configured() -> None:
    """ARI lists no hints: the endpoints are bare keys, [hints] "202@tenant-b" a tenant's."""
    tracker = CallTracker()
    for exten, context, device in (("201", "", "PJSIP/201"), ("202", "", "PJSIP/202"),
                                   ("202", "tenant-b", "PJSIP/b202")):  # fmt: skip
        tracker.apply(ExtensionHint(exten, context, device, 0), 0.0)
    tracker.apply(ResyncFinished(), 0.0)
    assert tracker.extensions() == {"201", "202", "202@tenant-b"}
    tracker.set_endpoint_contexts("203", "internal", "")  # no hint in it: the default context
    tracker.set_endpoint_contexts("b203", "tenant-b", "")
    assert tracker.resolve("202", "203") == "202"
    assert tracker.resolve("202", "b203") == "202@tenant-b"


def test_when_the_default_context_moves_a_watcher_named_by_the_old_one_subscribes_again(
) -> None:  # fmt: skip
    lb = lab()
    tenant_b = [ExtensionHint(e, "tenant-b", f"PJSIP/b{e}", 0) for e in ("201", "202", "203")]
    lb.feed([ResyncStarted(), *tenant_b, ResyncFinished(),
             EndpointGroups("b203", frozenset({11}), frozenset({11}), "tenant-b")])  # fmt: skip
    first = lb.subscribe("202", user="b203")
    assert lb.core.notifier.stats().watchers == {"202": 1}  # tenant-b is the default so far
    # The dialplan grows a bigger context: "202" is now its key, tenant B's is 202@tenant-b.
    internal = [ExtensionHint(e, "internal", f"PJSIP/{e}", 0) for e in ("201", "202", "203",
                                                                         "204")]  # fmt: skip
    lb.feed([ResyncStarted(), *tenant_b, *internal, ResyncFinished()])
    assert lb.core.tracker.default_context == "internal"
    final = lb.notifies_of(first)[-1]
    assert final.headers["subscription-state"] == "terminated;reason=deactivated"
    assert lb.subscribe("202", user="b203").status == 200
    assert lb.core.notifier.stats().watchers == {"202@tenant-b": 1}
