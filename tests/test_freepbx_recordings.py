"""The FreePBX-shaped recordings (tests/fixtures/freepbx-asterisk-22.10.1, see its README): every
key a FreePBX phone watches, resolved as Asterisk resolves it, lights as Asterisk's own BLF lit it.

Endpoints have ``context = from-internal`` and no ``subscribe_context``; the hints are four
includes away (``ext-local``, ``park-hints``, ``app-daynight-toggle``, the DND pattern hint in
``ext-dnd-hints``); tenant B (``context = tenant-b``) has its own 202, ringing at the same moment.
First through the core on the fake clock of tests/test_core.py, then over real sockets: the demo
AMI server replays the recording (its real ShowDialPlan answer included), SIPp watches.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from lxml import etree
from own_blf import collapsed, own_blf
from own_blf import key_state as own_key_state
from sipp import SippWatcher
from test_app import IDLE_MS, SPEED, check_notify_sequence, eventually, running_bridge
from test_app import dialogs as socket_dialogs
from test_core import NS, RESYNC_ANSWERS, Lab, Sip, dialogs, lab, with_ids

from bridge.asterisk import ami_events
from bridge.demo.ami_server import RecordedAmiServer
from bridge.demo.recording import load_endpoints, load_scenario, offered_calls
from bridge.devices import parse_groups
from bridge.events import AsteriskEvent, EndpointGroups, ResyncFinished, ResyncStarted

FREEPBX = Path(__file__).parent / "fixtures" / "freepbx-asterisk-22.10.1"
OWN = "../freepbx-asterisk-22.10.1"  # own_blf reads scenarios relative to the 22.10.1 folder
Timed = list[tuple[int, AsteriskEvent]]


def endpoints() -> list[AsteriskEvent]:
    """Every endpoint's groups and contexts, as the AMI source reads them (PJSIPShowEndpoint)."""
    conf = load_endpoints(FREEPBX / "asterisk-etc" / "pjsip.conf")
    return [
        EndpointGroups(name, parse_groups(v.get("call_group", "")),
                       parse_groups(v.get("pickup_group", "")), v.get("subscribe_context", ""),
                       v.get("context", ""))
        for name, v in sorted(conf.items())
    ]  # fmt: skip


def recorded(scenario: str) -> tuple[list[AsteriskEvent], Timed]:
    """The login-time resync (its ShowDialPlan answer too), then the endpoints; and the
    scenario's events at their recorded times."""
    s = load_scenario(FREEPBX / scenario)
    listed = [ev for name in RESYNC_ANSWERS for answer in s.answers.get(name, [])[:1]
              for frame in answer.frames for ev in ami_events.to_events(frame)]  # fmt: skip
    (shown,) = s.answers["showdialplan"][:1]
    dialplan = ami_events.dialplan_of({k.lower(): v for k, v in f.items()} for f in shown.frames)
    timed: Timed = []
    for event in s.events:
        if {"call", "system"} & set(event.headers.get("Privilege", "").split(",")):
            for mapped in with_ids(ami_events.to_events(event.headers), s.getvars):
                timed.append((round(event.t * 1000), mapped))
    return [ResyncStarted(), *listed, dialplan, ResyncFinished(), *endpoints()], timed


def watching(scenario: str, *keys: tuple[str, str]) -> tuple[Lab, list[Sip]]:
    """A core fed the recording, with a watcher per (key, endpoint) subscribed before the play."""
    resync, timed = recorded(scenario)
    lb = lab()
    lb.feed(resync)
    replies = [lb.subscribe(key, user=user) for key, user in keys]
    assert [r.status for r in replies] == [200] * len(keys)
    lb.play(timed, start=lb.clock.ms)
    return lb, replies


def early(notifies: list[Sip]) -> list[etree._Element]:
    return [d for n in notifies for d in dialogs(n)
            if d.findtext("d:state", namespaces=NS) == "early"]  # fmt: skip


def caller(dialog: etree._Element) -> str | None:
    identity = dialog.find("d:remote/d:identity", NS)
    return None if identity is None else identity.get("display")


def leg_ids() -> dict[str, tuple[str, str, str]]:
    """Each tenant's ringing 202: (call-id, Asterisk's tag, the phone's tag)."""
    folder = FREEPBX / "two-tenants-pickup"
    a = (folder / "replaces.csv").read_text().splitlines()[1].split(";")
    b = offered_calls((folder / "sip-b202.log").read_text())[0]
    return {"a": (a[0], a[1], a[2]), "b": tuple(b)}  # type: ignore[dict-item]


# --- the core, on the fake clock -----------------------------------------------------------------


def test_the_hints_are_found_through_the_includes_as_asterisk_finds_them() -> None:
    resync, _ = recorded("two-tenants-pickup")
    lb = lab()
    lb.feed(resync)
    tracker = lb.core.tracker
    assert tracker.default_context == "ext-local"  # names only: not park-hints
    resolved = {(u, w): tracker.resolve(u, w) for u in ("202", "71", "*280", "*76201", "299")
                for w in ("203", "b203")}  # fmt: skip
    assert resolved == {
        ("202", "203"): "202", ("202", "b203"): "202@tenant-b-ext",
        ("71", "203"): "71@park-hints", ("71", "b203"): None,
        ("*280", "203"): "*280@app-daynight-toggle", ("*280", "b203"): None,
        ("*76201", "203"): "*76201@ext-dnd-hints", ("*76201", "b203"): None,
        ("299", "203"): None, ("299", "b203"): None,  # 404 at Asterisk too (proof-freepbx.sh)
    }  # fmt: skip


def test_each_tenants_202_reaches_only_its_own_watcher_with_its_own_pickup_ids() -> None:
    lb, (a, b) = watching("two-tenants-pickup", ("202", "203"), ("202", "b203"))
    ids = leg_ids()
    for reply, tenant, display, own in ((a, "a", "Phone 201", "202-from-internal"),
                                        (b, "b", "Tenant B 201", "202-tenant-b")):  # fmt: skip
        notifies = lb.notifies_of(reply)
        got = [own_key_state(n.body) for n in notifies]
        assert collapsed(got) == collapsed(own_blf(f"{OWN}/two-tenants-pickup", own)), tenant
        ringing = early(notifies)
        assert ringing and {caller(d) for d in ringing} == {display}, tenant
        for d in ringing:
            assert (d.get("call-id"), d.get("remote-tag"), d.get("local-tag")) == ids[tenant]
        other = ids["b" if tenant == "a" else "a"]
        assert not any(i.encode() in n.body for n in notifies for i in other), tenant


@pytest.mark.parametrize(
    ("scenario", "key", "own"),
    [
        ("park", "71", "71"),  # park-hints: the parked caller lights it
        ("park", "72", "72"),  # the next slot stays dark
        ("dnd-daynight", "*76201", "dnd201"),  # the DND pattern hint, made exact
        ("dnd-daynight", "201", "201"),  # the extension's hint carries Custom:DND201
        ("dnd-daynight", "*280", "daynight0"),  # night mode
    ],
)
def test_park_dnd_and_day_night_keys_light_as_asterisks_own_blf(
    scenario: str, key: str, own: str
) -> None:
    lb, (reply,) = watching(scenario, (key, "203"))
    got = [own_key_state(n.body) for n in lb.notifies_of(reply)]
    assert collapsed(got) == collapsed(own_blf(f"{OWN}/{scenario}", own))


def test_the_parked_caller_is_shown_on_the_park_key() -> None:
    lb, (reply,) = watching("park", ("71", "203"))
    lit = [d for n in lb.notifies_of(reply) for d in dialogs(n)
           if d.findtext("d:state", namespaces=NS) == "confirmed"]  # fmt: skip
    # Its caller while parked; none named but 201 (the space's own state may light it alone).
    assert "Phone 201" in {caller(d) for d in lit} <= {"Phone 201", None}


# --- over real sockets: the demo AMI server replays the recording, SIPp watches ----------------


async def test_over_sockets_a_freepbx_phone_sees_its_own_202_and_not_tenant_bs() -> None:
    async with (
        RecordedAmiServer(FREEPBX, speed=SPEED) as server,
        running_bridge(server) as bridge,
    ):
        await eventually(lambda: bridge.core.policy.knows("b203"))
        async with (
            SippWatcher("202", bridge.bound("udp"), idle_ms=IDLE_MS, watcher="203") as a,
            SippWatcher("202", bridge.bound("udp"), idle_ms=IDLE_MS, watcher="b203") as b,
            SippWatcher("*76201", bridge.bound("udp"), idle_ms=IDLE_MS, watcher="203") as dnd,
        ):
            await eventually(lambda: bridge.notifier.stats().watchers == {
                "202": 1, "202@tenant-b-ext": 1, "*76201@ext-dnd-hints": 1})  # fmt: skip
            await server.play("two-tenants-pickup")
            await server.play("dnd-daynight")
            results = {"a": await a.finish(), "b": await b.finish(), "dnd": await dnd.finish()}
    ids = leg_ids()
    for tenant, display in (("a", "Phone 201"), ("b", "Tenant B 201")):
        notifies = check_notify_sequence(results[tenant])  # entity sip:202@…, XSD-valid
        ringing = [d for n in notifies for d in socket_dialogs(n)
                   if d.findtext("d:state", namespaces=NS) == "early"]  # fmt: skip
        assert ringing and {caller(d) for d in ringing} == {display}, tenant
        for d in ringing:
            assert (d.get("call-id"), d.get("remote-tag"), d.get("local-tag")) == ids[tenant]
    notifies = check_notify_sequence(results["dnd"], "*76201")
    got = [own_key_state(n.body) for n in notifies]
    assert collapsed(got) == collapsed(own_blf(f"{OWN}/dnd-daynight", "dnd201"))
