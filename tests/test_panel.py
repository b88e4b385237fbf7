"""The reception panel at ``/`` in a real headless Chromium, against the demo PBX: the bundled
Asterisk 22 recordings replayed over AMI into a running bridge, stopped at each moment a key
must show (ringing, in a call, on hold, parked, do not disturb, unavailable).

Screenshots go to $PANEL_SHOTS (default tests/artifacts/panel): idle, ringing, parked, a
500-key site and a phone's narrow screen.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sipp import free_port
from test_app import eventually, running_bridge

from bridge.app import Bridge
from bridge.demo.ami_server import RecordedAmiServer, bundled_recordings, event_matches
from bridge.findings import Finding
from bridge.model import Dialog, DialogState, Direction, EntityState
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
    start_web,
)

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
SHOTS = Path(os.environ.get("PANEL_SHOTS", Path(__file__).parent / "artifacts" / "panel"))
LABELS = 'snom.labels={ "202" = "Anna Reception", "701" = "Park 701" }'
GROUPS = 'web.groups={ "Front desk" = ["201", "202"], "Parking" = ["701"] }'
# The colour of each state (panel.html's :root), as Chromium computes it.
COLOURS = {
    "idle": "rgb(63, 163, 77)",
    "ringing": "rgb(245, 165, 36)",
    "in a call": "rgb(229, 72, 77)",
    "on hold": "rgb(76, 141, 255)",
    "do not disturb": "rgb(192, 57, 155)",
    "unavailable": "rgb(123, 132, 144)",
    "parked": "rgb(20, 184, 166)",
}


@pytest.fixture
async def chromium(tmp_path: Path) -> AsyncIterator[Any]:
    """A headless Chromium with a fresh profile (Debian's chromium driven by playwright)."""
    await asyncio.to_thread(SHOTS.mkdir, parents=True, exist_ok=True)
    playwright = pytest.importorskip(
        "playwright.async_api", reason="playwright is not installed (pip install playwright)"
    )
    if shutil.which(CHROMIUM) is None:
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    async with playwright.async_playwright() as p:
        try:
            context = await p.chromium.launch_persistent_context(
                str(tmp_path / "profile"), executable_path=CHROMIUM, args=FLAGS,
                viewport={"width": 1280, "height": 720},
            )  # fmt: skip
        except playwright.Error as exc:
            pytest.skip(f"chromium does not start: {exc.message.splitlines()[0]}")
        try:
            yield context
        finally:
            await context.close()


async def open_panel(chromium: Any, url: str) -> tuple[Any, list[str]]:
    """The panel in a new tab, live; with the list its script errors and CSP refusals go to."""
    page = await chromium.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    await page.goto(url)
    await page.wait_for_function("() => document.getElementById('link').textContent === 'live'")
    return page, problems


@pytest.fixture
async def demo() -> AsyncIterator[RecordedAmiServer]:
    """The demo PBX's recordings on a local AMI server, as fast as they come."""
    async with RecordedAmiServer(bundled_recordings(), speed=0) as server:
        server.select_fullest()  # the login-time lists name every key (210, 211, 701 too)
        yield server


def web_url(bridge: Bridge) -> str:
    assert bridge.web is not None
    host, port = bridge.web.addresses[0][:2]
    return f"http://{host}:{port}/"


async def shows(page: Any, exten: str, word: str) -> Any:
    """Wait until the key of ``exten`` says ``word``; its locator."""
    await page.wait_for_function(
        "([exten, word]) => document.getElementById('key-' + exten)"
        "?.querySelector('.word').textContent === word",
        arg=[exten, word], timeout=5000,
    )  # fmt: skip
    return page.locator(f"[id='key-{exten}']")


async def colour(key: Any) -> str:
    """The colour of the key's stripe (not animated, unlike a ringing key's word)."""
    found: str = await key.evaluate("k => getComputedStyle(k, '::before').backgroundColor")
    return found


async def text(key: Any, part: str) -> str:
    found: str = await key.locator("." + part).inner_text()
    return found


async def state_is(page: Any, exten: str, word: str) -> Any:
    key = await shows(page, exten, word)
    assert await colour(key) == COLOURS[word], (exten, word)
    return key


async def advances(key: Any) -> None:
    """The key's timer goes on by itself (no new event from the bridge)."""
    before = await text(key, "time")
    assert before, "no timer shown"
    await asyncio.sleep(1.5)
    after = await text(key, "time")
    assert _seconds(after) > _seconds(before), (before, after)


def _seconds(clock: str) -> int:
    total = 0
    for part in clock.split(":"):
        total = total * 60 + int(part)
    return total


async def test_each_state_shows_in_words_and_colour_with_its_party_and_timer(
    demo: RecordedAmiServer, chromium: Any
) -> None:
    async with running_bridge(demo, "web.listen=127.0.0.1:0", LABELS, GROUPS) as bridge:
        page, problems = await open_panel(chromium, web_url(bridge))
        await state_is(page, "203", "idle")
        key_201 = await state_is(page, "201", "idle")
        assert await text(key_201, "label") == "Phone 201"  # Asterisk's caller id for it
        key_202 = await state_is(page, "202", "idle")
        assert await text(key_202, "label") == "Anna Reception"  # snom.labels
        assert await text(key_202, "num") == "202"
        await page.screenshot(path=str(SHOTS / "idle.png"))

        await demo.play("ring-answer-hangup", until=event_matches(ChannelStateDesc="Ringing"))
        ringing = await state_is(page, "202", "ringing")
        assert await text(ringing, "party") == "from Phone 201"
        placing = await state_is(page, "201", "in a call")  # lit steadily, as on the phones
        assert await text(placing, "party") == "calling Phone 202"
        await page.screenshot(path=str(SHOTS / "ringing.png"))
        await demo.play("ring-answer-hangup", until=event_matches(Event="BridgeEnter"))
        talking = await state_is(page, "202", "in a call")
        assert await text(talking, "party") == "from Phone 201"
        caller = await state_is(page, "201", "in a call")
        assert await text(caller, "party") == "to Phone 202"  # Asterisk's name for 202
        await advances(talking)
        await demo.play("ring-answer-hangup")
        await state_is(page, "202", "idle")
        assert await text(talking, "time") == ""

        await demo.play("answer-hold-resume", until=event_matches(Event="Hold"))
        held = await state_is(page, "201", "on hold")
        assert await text(held, "party") == "to Phone 202"
        await demo.play("answer-hold-resume")

        await demo.play("park-retrieve", until=event_matches(Event="ParkedCall"))
        parked = await state_is(page, "701", "parked")
        assert await text(parked, "label") == "Park 701"
        assert await text(parked, "party") == "Phone 201 waiting"
        await advances(parked)
        await page.screenshot(path=str(SHOTS / "parked.png"))
        await demo.play("park-retrieve")
        await state_is(page, "701", "idle")

        # FreePBX's DND: Custom:DND201 busy; then that device unavailable (its hint says 4).
        await demo.play("device-states", until=event_matches(
            Event="DeviceStateChange", Device="Custom:DND201", State="BUSY"))  # fmt: skip
        await state_is(page, "210", "do not disturb")
        await demo.play("device-states", until=event_matches(Event="ExtensionStatus",
                                                             Exten="210", Status="4"))  # fmt: skip
        await state_is(page, "210", "unavailable")
        await demo.play("device-states")
        assert problems == []  # no script error, no Content-Security-Policy refusal


async def test_the_groups_and_the_filter(demo: RecordedAmiServer, chromium: Any) -> None:
    async with running_bridge(demo, "web.listen=127.0.0.1:0", LABELS, GROUPS) as bridge:
        page, problems = await open_panel(chromium, web_url(bridge))
        await shows(page, "202", "idle")
        titles = await page.locator("section h2").all_inner_texts()
        assert titles == ["Front desk (2)", "Parking (1)", "context internal (6)"]
        everything = await page.locator(".key:visible").count()
        assert everything == 9

        await page.fill("#filter", "anna")
        await page.wait_for_function(
            "() => document.querySelectorAll('.key:not([hidden])').length === 1"
        )
        assert await page.locator(".key:visible").all() == [page.locator("[id='key-202']")] or (
            await page.locator(".key:visible").get_attribute("id") == "key-202"
        )
        assert await page.locator("#count").inner_text() == "1 of 9 keys"
        assert await page.locator("section:visible h2").all_inner_texts() == ["Front desk (1 of 2)"]

        await demo.play("ring-answer-hangup", until=event_matches(ChannelStateDesc="Ringing"))
        await page.fill("#filter", "ringing")  # the state words are searched too
        await page.wait_for_function(
            "() => [...document.querySelectorAll('.key:not([hidden])')].map(k => k.id).join() "
            "=== 'key-202'"
        )
        await page.fill("#filter", "")
        await page.wait_for_function(
            "() => document.querySelectorAll('.key:not([hidden])').length === 9"
        )
        await demo.play("ring-answer-hangup")
        assert problems == []


async def test_the_banner_says_when_the_bridge_is_away_and_goes_when_it_is_back(
    demo: RecordedAmiServer, chromium: Any
) -> None:
    port = free_port()
    listen = f"web.listen=127.0.0.1:{port}"
    async with running_bridge(demo, listen, LABELS) as bridge:
        page, _ = await open_panel(chromium, web_url(bridge))
        await shows(page, "202", "idle")
        assert await page.locator("#banner").is_hidden()
        assert "Asterisk: connected, in sync" in await page.locator("#health").inner_text()
    # The bridge stopped: the panel says so and keeps the last keys, dimmed.
    banner = page.locator("#banner")
    await banner.wait_for(state="visible", timeout=5000)
    assert "reconnecting" in await banner.inner_text()
    assert await page.locator("#link").inner_text() == "reconnecting…"
    assert await page.locator("#health").inner_text() == "bridge: not reachable"
    assert "stale" in (await page.locator("[id='key-202']").get_attribute("class")).split()
    await page.screenshot(path=str(SHOTS / "reconnecting.png"))
    async with running_bridge(demo, listen, LABELS):  # back on the same address
        await banner.wait_for(state="hidden", timeout=15000)
        await page.wait_for_function("() => document.getElementById('link').textContent === 'live'")
        assert "stale" not in (await page.locator("[id='key-202']").get_attribute("class"))
        await page.wait_for_function(
            "() => document.getElementById('health').textContent.includes('connected, in sync')"
        )


async def test_pickup_ids_never_reach_the_page_its_api_or_its_stream(
    demo: RecordedAmiServer, chromium: Any
) -> None:
    async with running_bridge(demo, "web.listen=127.0.0.1:0") as bridge:
        url = web_url(bridge)
        page, _ = await open_panel(chromium, url)
        await demo.play("pickup-replaces", until=event_matches(ChannelStateDesc="Ringing"))
        await shows(page, "202", "ringing")
        await eventually(lambda: any(d.pickup for d in bridge.core.tracker.state("202").dialogs))
        (ids,) = [d.pickup for d in bridge.core.tracker.state("202").dialogs if d.pickup]
        secrets = {ids.call_id, ids.local_tag, ids.remote_tag}
        assert all(len(s) > 4 for s in secrets)  # real ids, long enough not to match by chance
        seen = [await page.content()]
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            for path in ("api/entities", "api/status", "api/subscriptions", "api/asterisk",
                         "metrics"):  # fmt: skip
                async with http.get(url + path) as resp:
                    seen.append(await resp.text())
            async with http.get(url + "events") as resp:
                stream = b""
                while stream.count(b"\n\n") < 2:  # the status event, then the keys
                    stream += await resp.content.readany()
                seen.append(stream.decode())
        assert '"ringing"' in seen[-1] and "Phone 201" in seen[-1]
        for secret in secrets:
            assert not any(secret in body for body in seen), secret
        await demo.play("pickup-replaces")


# --- a large site and a small screen (a test double of the bridge's view) -------------------


@dataclass
class SiteView:
    """A StatusView of a site with many keys and fixed figures."""

    keys: list[EntityStatus]
    findings: list[Finding] = field(default_factory=list)
    signal: ChangeSignal = field(default_factory=ChangeSignal)

    def entities(self) -> Sequence[EntityStatus]:
        return self.keys

    def subscriptions(self) -> Sequence[SubscriptionStatus]:
        return []

    def counters(self) -> Counters:
        pbxs = (PbxHealth("berlin", True, True, 900), PbxHealth("hamburg", False, False, 0))
        return Counters(480, 9000, 0, False, False, 900, pbxs)

    def latency(self) -> HistogramSnapshot:
        return Histogram().snapshot()

    def led_phones(self) -> Sequence[LedPhoneStatus]:
        return []

    def next_change(self) -> asyncio.Event:
        return self.signal.next()

    def attention(self) -> Sequence[Finding]:
        return self.findings


def site(size: int) -> SiteView:
    """``size`` keys over two PBXs and two contexts, every state among them."""
    keys = []
    names = ["Anna", "Ben", "Carla", "Dieter", "Emma", "Farid", "Greta", "Hannes", "Ines"]
    for i in range(size):
        number = str(200 + i)
        pbx = "berlin" if i < size * 0.6 else "hamburg"
        context = "sales" if i % 5 == 4 else "office"
        remote = str(300 + i)
        call = {
            1: (Direction.RECIPIENT, DialogState.EARLY, False),
            2: (Direction.INITIATOR, DialogState.CONFIRMED, False),
            3: (Direction.RECIPIENT, DialogState.CONFIRMED, True),
        }.get(i % 7)
        dialogs = ()
        if call is not None:
            direction, state, held = call
            dialogs = (Dialog(f"c{i}", direction, state, remote, f"Caller {remote}",
                              local_held=held, since=1000.0 - i),)  # fmt: skip
        entity = entity_status(EntityState(number, dialogs), now=1000.0)
        activity = entity.activity
        if i % 7 == 5:
            activity = "dnd"
        elif i % 7 == 6 and i % 2:
            activity = "unavailable"
        resource = f"{pbx}:{number}" + (f"@{context}" if context == "sales" else "")
        keys.append(replace(entity, exten=resource, number=number, pbx=pbx, context=context,
                            activity=activity, label=names[i % 9],
                            groups=("Reception",) if i < 12 else ()))  # fmt: skip
    return SiteView(keys, [Finding("warn", "endpoint 203", "no hint for 203",
                                         "add exten => 203,hint,PJSIP/203")])  # fmt: skip


@pytest.fixture
async def large_site() -> AsyncIterator[str]:
    view: StatusView = site(500)  # mypy checks the protocol here
    runner = await start_web(view, "127.0.0.1", 0)
    host, port = runner.addresses[0][:2]
    yield f"http://{host}:{port}/"
    await runner.cleanup()


async def test_500_keys_fit_one_screen_and_a_phone_shows_them_in_a_column(
    large_site: str, chromium: Any
) -> None:
    page, problems = await open_panel(chromium, large_site)
    await page.set_viewport_size({"width": 1920, "height": 1080})
    await page.wait_for_function("() => document.querySelectorAll('.key').length === 500")
    # Every key inside the screen, its text no smaller than 11px.
    boxes = await page.eval_on_selector_all(
        ".key", "keys => keys.map(k => k.getBoundingClientRect().bottom)"
    )
    assert max(boxes) <= 1080, f"the last key ends at {max(boxes)}px"
    size = await page.locator("[id='key-berlin:201']").evaluate(
        "k => parseFloat(getComputedStyle(k).fontSize)"
    )
    assert size >= 11
    health = await page.locator("#health").inner_text()
    assert "PBX berlin: connected, in sync" in health
    assert "PBX hamburg: not connected" in health
    finding = await page.locator("#findings li").inner_text()
    assert "no hint for 203" in finding and "Fix: add exten => 203,hint,PJSIP/203" in finding
    await page.screenshot(path=str(SHOTS / "site-500.png"))
    detail = {"x": 0, "y": 0, "width": 960, "height": 540}  # a quarter, at full size
    await page.screenshot(path=str(SHOTS / "site-500-detail.png"), clip=detail)

    await page.set_viewport_size({"width": 390, "height": 844})  # a phone, upright
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, "the page scrolls sideways on a phone"
    await page.fill("#filter", "anna")
    await page.wait_for_function(
        "() => document.querySelectorAll('.key:not([hidden])').length < 100"
    )
    await page.screenshot(path=str(SHOTS / "phone.png"))
    assert problems == []
