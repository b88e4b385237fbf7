"""The web endpoint over a real socket: metrics, health, JSON, server-sent events, the panel.

The bridge side is a test double of ``StatusView`` fed with real ``EntityState`` records (the
running bridge's view is wired in app.py); the panel is checked in a real headless Chromium.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from bridge.findings import Finding
from bridge.model import Dialog, DialogState, Direction, EntityState, PickupIds
from bridge.web import (
    ChangeSignal,
    Counters,
    EntityStatus,
    Histogram,
    HistogramSnapshot,
    LedPhoneStatus,
    PbxHealth,
    StatusView,
    SubscriptionStatus,
    entity_status,
    make_app,
    start_web,
)
from bridge.web.cli import format_status
from bridge.web.metrics import MetricsSnapshot, render_metrics

ARTIFACTS = Path(__file__).parent / "artifacts"
CHROMIUM = "/usr/bin/chromium"

IDLE_202 = EntityState("202")
RINGING_202 = EntityState(
    "202",
    (
        Dialog(
            "1700000000.11",
            Direction.RECIPIENT,
            DialogState.EARLY,
            remote_num="201",
            remote_name="Phone 201",
            pickup=PickupIds("secret-call-id@pbx", "ltag", "rtag", "202"),
        ),
    ),
)
BUSY_203 = EntityState(
    "203", (Dialog("1700000000.7", Direction.INITIATOR, DialogState.CONFIRMED, "205"),)
)
HELD_203 = EntityState(
    "203",
    (Dialog("1700000000.7", Direction.INITIATOR, DialogState.CONFIRMED, "205", local_held=True),),
)


@dataclass
class FakeView:
    """A stand-in for the running bridge's view: states set by the test, one change signal."""

    states: dict[str, EntityState] = field(default_factory=dict)
    subs: list[SubscriptionStatus] = field(default_factory=list)
    counts: Counters = field(default_factory=lambda: Counters(3, 10, 1, True, True, 42))
    histogram: Histogram = field(default_factory=Histogram)
    signal: ChangeSignal = field(default_factory=ChangeSignal)
    phones: list[LedPhoneStatus] = field(default_factory=list)
    found: list[Finding] = field(default_factory=list)

    def set(self, *states: EntityState) -> None:
        for state in states:
            self.states[state.exten] = state
        self.signal.fire()

    def entities(self) -> Sequence[EntityStatus]:
        return [entity_status(self.states[e]) for e in sorted(self.states)]

    def subscriptions(self) -> Sequence[SubscriptionStatus]:
        return list(self.subs)

    def counters(self) -> Counters:
        return self.counts

    def latency(self) -> HistogramSnapshot:
        return self.histogram.snapshot()

    def led_phones(self) -> Sequence[LedPhoneStatus]:
        return list(self.phones)

    def findings(self) -> Sequence[Finding]:
        return self.found

    def next_change(self) -> asyncio.Event:
        return self.signal.next()

    def attention(self) -> Sequence[Finding]:
        return [f for f in self.found if f.level != "ok"]


def _view() -> FakeView:
    view = FakeView()
    view.set(EntityState("201"), IDLE_202, BUSY_203, EntityState("204", known=False))
    view.subs = [
        SubscriptionStatus("202", "sip:203@192.0.2.3", "udp:192.0.2.3:5060", 541.26),
        SubscriptionStatus("202", "sip:205@192.0.2.5", "tcp:192.0.2.5:40123", 90.0),
        SubscriptionStatus("203", "sip:202@192.0.2.2", "udp:192.0.2.2:5060", 3600.0),
    ]
    for seconds in (0.0004, 0.0007, 0.003, 0.003, 4.0):
        view.histogram.observe(seconds)
    return view


def test_fake_view_is_a_status_view() -> None:
    view: StatusView = FakeView()  # mypy checks the protocol here
    assert view.entities() == []


@pytest.fixture
def view() -> FakeView:
    return _view()


@pytest.fixture
async def base_url(view: FakeView) -> AsyncIterator[str]:
    runner = await start_web(view, "127.0.0.1", 0)
    host, port = runner.addresses[0][:2]
    yield f"http://{host}:{port}"
    await runner.cleanup()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


async def test_metrics_parse_as_prometheus_text(base_url: str, http: aiohttp.ClientSession) -> None:
    async with http.get(base_url + "/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        text = await resp.text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    value = {name: f.samples[0].value for name, f in families.items() if len(f.samples) == 1}
    assert families["snom_blf_subscriptions"].type == "gauge"
    assert value["snom_blf_subscriptions"] == 3
    assert families["snom_blf_notifies_sent"].type == "counter"
    assert value["snom_blf_notifies_sent"] == 10
    assert value["snom_blf_notifies_failed"] == 1
    assert value["snom_blf_ami_connected"] == 1
    assert value["snom_blf_events"] == 42

    histogram = families["snom_blf_event_to_notify_seconds"]
    assert histogram.type == "histogram"
    buckets = {s.labels["le"]: s.value for s in histogram.samples if s.name.endswith("_bucket")}
    assert buckets["0.0005"] == 1
    assert buckets["0.001"] == 2
    assert buckets["0.0025"] == 2
    assert buckets["0.005"] == 4
    assert buckets["2.5"] == 4
    assert buckets["+Inf"] == 5
    by_name = {s.name: s.value for s in histogram.samples if not s.name.endswith("_bucket")}
    assert by_name["snom_blf_event_to_notify_seconds_count"] == 5
    assert by_name["snom_blf_event_to_notify_seconds_sum"] == pytest.approx(4.0071)

    lit = {
        (s.labels["exten"], s.labels["state"])
        for s in families["snom_blf_entity_state"].samples
        if s.value == 1
    }
    assert lit == {("201", "idle"), ("202", "idle"), ("203", "busy"), ("204", "unknown")}
    assert len(families["snom_blf_entity_state"].samples) == 4 * 5  # every state, 0 or 1


async def test_metrics_include_the_process_figures(
    base_url: str, http: aiohttp.ClientSession
) -> None:
    async with http.get(base_url + "/metrics") as resp:
        text = await resp.text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    rss = families["process_resident_memory_bytes"].samples[0].value
    assert 10 * 2**20 < rss < 2**33  # this very test process: tens of MB, not zero
    assert families["process_cpu_seconds"].type == "counter"
    assert families["process_cpu_seconds"].samples[0].value > 0
    assert families["process_open_fds"].samples[0].value >= 3  # at least stdin/out/err
    assert families["process_max_fds"].samples[0].value > 0


def test_the_figures_are_read_at_scrape_time_not_per_notify() -> None:
    view = _view()
    before = render_metrics(MetricsSnapshot.of(view))
    view.counts = dataclasses.replace(view.counts, notifies_sent=15)  # the bridge only counts
    after = render_metrics(MetricsSnapshot.of(view))
    assert b"snom_blf_notifies_sent_total 10.0" in before
    assert b"snom_blf_notifies_sent_total 15.0" in after


async def test_metric_labels_are_escaped(
    view: FakeView, base_url: str, http: aiohttp.ClientSession
) -> None:
    view.set(EntityState('9"\\x'))
    async with http.get(base_url + "/metrics") as resp:
        text = await resp.text()
    states = next(f for f in text_string_to_metric_families(text) if f.name.endswith("state"))
    assert '9"\\x' in {s.labels["exten"] for s in states.samples}


@pytest.mark.parametrize(
    "case", [(True, True, 200), (True, False, 503), (False, False, 503), (False, True, 503)]
)
async def test_healthz(
    view: FakeView, base_url: str, http: aiohttp.ClientSession, case: tuple[bool, bool, int]
) -> None:
    connected, synced, status = case
    view.counts = Counters(0, 0, 0, ami_connected=connected, synced=synced, events_total=0)
    async with http.get(base_url + "/healthz") as resp:
        assert resp.status == status
        body = await resp.text()
    assert (body == "ok\n") == (status == 200)


async def test_api_entities(base_url: str, http: aiohttp.ClientSession, view: FakeView) -> None:
    view.set(RINGING_202)
    async with http.get(base_url + "/api/entities") as resp:
        assert resp.status == 200
        entities = {e["exten"]: e for e in await resp.json()}
    assert list(entities) == ["201", "202", "203", "204"]
    ringing = entities["202"]
    assert ringing["state"] == "ringing"
    assert ringing["caller"] == "Phone 201 <201>"
    assert ringing["watchers"] == ["sip:203@192.0.2.3", "sip:205@192.0.2.5"]
    assert ringing["dialogs"] == [
        {
            "id": "1700000000.11",
            "direction": "recipient",
            "state": "early",
            "remote": "Phone 201 <201>",
            "local_held": False,
            "remote_held": False,
            "pickup_ready": True,
            "party": "Phone 201",
            "party_number": "201",
            "hidden": False,
            "parked": False,
            "answered": True,
        }
    ]
    assert entities["203"]["state"] == "busy"
    assert entities["204"]["state"] == "unknown"
    # The pickup ids would let anyone take the call: the web side never shows them.
    async with http.get(base_url + "/api/entities") as resp:
        assert "secret-call-id" not in await resp.text()


async def test_api_subscriptions(base_url: str, http: aiohttp.ClientSession) -> None:
    async with http.get(base_url + "/api/subscriptions") as resp:
        assert resp.status == 200
        subs = await resp.json()
    assert subs[0] == {
        "resource": "202",
        "watcher": "sip:203@192.0.2.3",
        "peer": "udp:192.0.2.3:5060",
        "expires_in": 541.3,
    }
    assert len(subs) == 3


async def test_a_setting_waiting_for_a_restart_is_in_the_api_and_the_status(
    base_url: str, http: aiohttp.ClientSession, view: FakeView
) -> None:
    view.found.append(Finding("warn", "reload", "running with the old value(s) until a restart: "
                              "sip.udp", "systemctl restart snom-blf-bridge"))  # fmt: skip
    async with http.get(base_url + "/api/findings") as resp:
        assert resp.status == 200
        found = await resp.json()
    assert [f["subject"] for f in found] == ["reload"] and "sip.udp" in found[0]["text"]
    assert "warn: reload: running with the old value(s) until a restart: sip.udp (fix: systemctl " \
        "restart snom-blf-bridge)" in format_status([], "ok", [], [], found)


async def _next_data(resp: aiohttp.ClientResponse, name: str = "") -> Any:
    """The payload of the next event called ``name`` ("": the unnamed ones, the keys),
    skipping keepalive comments and the other events."""
    event = ""
    while True:
        line = (await asyncio.wait_for(resp.content.readline(), 5)).decode()
        if line.startswith("event: "):
            event = line[7:].strip()
        elif line.startswith("data: ") and event == name:
            return json.loads(line[6:])
        elif line == "\n":
            event = ""


async def test_events_stream_delivers_each_change(
    view: FakeView, base_url: str, http: aiohttp.ClientSession
) -> None:
    async with http.get(base_url + "/events") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/event-stream"
        first = {e["exten"]: e["state"] for e in await _next_data(resp)}
        assert first["202"] == "idle"
        view.set(RINGING_202)
        second = {e["exten"]: e for e in await _next_data(resp)}
        assert second["202"]["state"] == "ringing"
        assert second["202"]["caller"] == "Phone 201 <201>"
        view.set(IDLE_202)
        third = {e["exten"]: e["state"] for e in await _next_data(resp)}
        assert third["202"] == "idle"


async def test_shutdown_ends_open_event_streams(view: FakeView) -> None:
    runner = await start_web(view, "127.0.0.1", 0)
    host, port = runner.addresses[0][:2]
    async with aiohttp.ClientSession() as session:
        resp = await session.get(f"http://{host}:{port}/events")
        await _next_data(resp)
        # A browser left open on the panel must not hold up the bridge's stop.
        await asyncio.wait_for(runner.cleanup(), 1.5)
        resp.close()


def test_key_states_follow_the_snom_led() -> None:
    assert entity_status(EntityState("1")).state == "idle"
    assert entity_status(EntityState("1", known=False)).state == "unknown"
    assert entity_status(RINGING_202).state == "ringing"
    assert entity_status(BUSY_203).state == "busy"
    assert entity_status(HELD_203).state == "held"
    # The last known call stays lit while Asterisk is away (the phones show it too).
    assert entity_status(EntityState("203", BUSY_203.dialogs, known=False)).state == "busy"
    # One call held, another active: the key is steady.
    active = Dialog("x", Direction.RECIPIENT, DialogState.CONFIRMED, "201")
    both = EntityState("203", (*HELD_203.dialogs, active))
    assert entity_status(both).state == "busy"
    assert entity_status(RINGING_202, show_caller=False).caller == ""
    hidden = Dialog("y", Direction.RECIPIENT, DialogState.EARLY, "201", remote_hidden=True)
    assert entity_status(EntityState("202", (hidden,))).caller == ""


# --- the panel in a real browser ------------------------------------------------------------


@pytest.fixture
async def browser_page() -> AsyncIterator[Any]:
    """A headless Chromium page (Debian's chromium driven by playwright), or a skip."""
    playwright = pytest.importorskip(
        "playwright.async_api", reason="playwright is not installed (pip install playwright)"
    )
    if shutil.which(CHROMIUM) is None:
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    async with playwright.async_playwright() as p:
        try:
            browser = await p.chromium.launch(executable_path=CHROMIUM)
        except playwright.Error as exc:
            pytest.skip(f"chromium does not start: {exc.message.splitlines()[0]}")
        try:
            page = await browser.new_page(viewport={"width": 900, "height": 360})
            yield page
        finally:
            await browser.close()


async def _key(page: Any, exten: str, state: str) -> Any:
    """Wait until the key of ``exten`` shows ``state``; its locator."""
    key = page.locator(f"#key-{exten}")
    await page.wait_for_function(
        "([exten, state]) => document.getElementById('key-' + exten)?.dataset.state === state",
        arg=[exten, state],
        timeout=5000,
    )
    return key


async def _says(key: Any, part: str) -> str:
    found: str = await key.locator("." + part).inner_text()
    return found


async def test_panel_says_each_key_state_in_words(
    view: FakeView, base_url: str, browser_page: Any
) -> None:
    page = browser_page
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    await page.goto(base_url + "/")

    idle = await _key(page, "202", "idle")
    await page.wait_for_function("document.getElementById('link').textContent === 'live'")
    assert await page.locator(".key").count() == 4
    assert await _says(idle, "word") == "idle"
    assert await _says(idle, "num") == "202"
    assert await idle.get_attribute("title") == (
        "202 · idle · watched by sip:203@192.0.2.3, sip:205@192.0.2.5"
    )
    busy = await _key(page, "203", "busy")
    assert await _says(busy, "word") == "in a call"
    assert await _says(busy, "party") == "to 205"
    assert await _says(await _key(page, "204", "unknown"), "word") == "unknown"

    view.set(RINGING_202)  # 202 rings: the word, the caller and where the call comes from
    ringing = await _key(page, "202", "ringing")
    assert await _says(ringing, "word") == "ringing"
    assert await _says(ringing, "party") == "from Phone 201"

    view.set(HELD_203)
    held = await _key(page, "203", "held")
    assert await _says(held, "word") == "on hold"

    view.set(IDLE_202)  # the call is gone
    dark = await _key(page, "202", "idle")
    assert await _says(dark, "party") == ""
    # No script error and no Content-Security-Policy violation on the way.
    assert problems == []


async def test_the_stream_tells_the_status_and_again_when_it_changed(
    view: FakeView, base_url: str, http: aiohttp.ClientSession
) -> None:
    async with http.get(base_url + "/events") as resp:
        first = await _next_data(resp, "status")
        assert first["pbxs"] == [{"name": "", "connected": True, "synced": True, "endpoint": ""}]
        assert first["bridge"] == {"subscriptions": 3, "notifies_sent": 10, "notifies_failed": 1}
        assert first["findings"] == []
        view.found = [Finding("fail", "manager user", "cannot log in", "fix it")]
        view.signal.fire()
        second = await _next_data(resp, "status")
        assert second["findings"] == [
            {"level": "fail", "subject": "manager user", "text": "cannot log in", "fix": "fix it"}
        ]
    async with http.get(base_url + "/api/status") as resp:
        assert await resp.json() == second


async def test_panel_is_self_contained_and_locked_down(
    base_url: str, http: aiohttp.ClientSession
) -> None:
    async with http.get(base_url + "/") as resp:
        assert resp.status == 200
        assert resp.content_type == "text/html"
        csp = resp.headers["Content-Security-Policy"]
        html = await resp.text()
    assert "default-src 'none'" in csp and "'unsafe-inline'" not in csp
    assert "http://" not in html and "https://" not in html  # no external assets


async def test_answers_are_nosniff_and_only_for_our_own_host_names(
    view: FakeView, http: aiohttp.ClientSession
) -> None:
    runner = await start_web(view, "127.0.0.1", 0, hosts=["Bridge.Example.test"])
    host, port = runner.addresses[0][:2]
    url = f"http://{host}:{port}"
    try:
        for path in ("/api/entities", "/metrics", "/nonexistent"):
            async with http.get(url + path) as resp:
                assert resp.headers["X-Content-Type-Options"] == "nosniff", path
        # DNS rebinding: a page on a name of the attacker's, now pointing here, sends it.
        for name, served in [("evil.example", False), (f"evil.example:{port}", False),
                             (f"localhost:{port}", True), (f"127.0.0.1:{port}", True),
                             ("[::1]:9065", True), ("bridge.example.test", True)]:  # fmt: skip
            async with http.get(url + "/api/entities", headers={"Host": name}) as resp:
                assert (resp.status == 200) is served, name
                if not served:
                    assert resp.status == 421 and "web.hosts" in await resp.text()
    finally:
        await runner.cleanup()


def test_app_factory_builds_without_a_loop_running() -> None:
    app = make_app(_view())
    assert isinstance(app, web.Application)
    assert {r.resource.canonical for r in app.router.routes() if r.resource} >= {
        "/", "/metrics", "/healthz", "/api/entities", "/api/subscriptions", "/api/leds", "/events",
    }  # fmt: skip


async def test_healthz_names_the_pbxs_not_in_sync(
    view: FakeView, base_url: str, http: aiohttp.ClientSession
) -> None:
    pbxs = (PbxHealth("berlin", False, False, 3), PbxHealth("hamburg", True, True, 9))
    view.counts = Counters(0, 0, 0, ami_connected=False, synced=False, events_total=12, pbxs=pbxs)
    async with http.get(base_url + "/healthz") as resp:
        assert resp.status == 503
        assert await resp.text() == "asterisk not connected: berlin\n"
