"""The garbage collector kept out of the way (bridge.heap): frozen after the imports, and held
off while a fan-out is sent over real sockets (uvloop and asyncio), on again once it is done."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator

import pytest
import uvloop
from test_fanout import Phone, until
from test_sip_notifier import Source as Keys
from test_steering import udp_notifier

from bridge.heap import FanoutPause, settle


@pytest.fixture
def collector() -> Iterator[None]:
    """Whatever a test does to the collector is undone."""
    was = gc.isenabled()
    yield
    gc.unfreeze()
    (gc.enable if was else gc.disable)()


def test_settle_freezes_what_the_imports_left(collector: None) -> None:
    frozen = settle()
    assert frozen == gc.get_freeze_count() > 10_000  # modules, classes, functions
    assert len(gc.get_objects()) < frozen  # what the collector still walks: far fewer


def test_the_pause_never_turns_on_a_collector_someone_else_turned_off(collector: None) -> None:
    pause = FanoutPause()
    pause.hold()
    assert not gc.isenabled() and pause.held
    pause.hold()  # again: still one hold
    pause.release()
    assert gc.isenabled() and not pause.held
    gc.disable()  # another owner
    pause.hold()
    assert not pause.held
    pause.release()
    assert not gc.isenabled()  # left as that owner wants it


async def _seen_during_a_fan_out() -> tuple[list[tuple[bool, bool]], bool]:
    """300 watchers and a ringing change: whether the collector was on at each NOTIFY the phone
    got (it runs in the same process, between the slices), and once every 200 is in."""
    keys = Keys()
    notifier, service = await udp_notifier(keys)
    phone = Phone("udp", notifier.contact("udp")[1])
    seen: list[tuple[bool, bool]] = []  # (NOTIFYs still to go, collector on)
    try:
        await phone.open(None)
        await phone.watch("202", 300)
        await until(lambda: notifier.stats().notifies_in_flight == 0)
        received = phone.received

        def spy(data: bytes) -> None:
            seen.append((notifier.fanout_pending, gc.isenabled()))
            received(data)

        phone.received = spy  # type: ignore[method-assign]
        keys.states["202"] = "early"
        notifier.resource_changed("202", asyncio.get_running_loop().time(), ringing=True)
        service.flush()
        await until(lambda: len(phone.notifies()) == 600)
        await until(lambda: notifier.stats().notifies_in_flight == 0)
        return seen, gc.isenabled()
    finally:
        await service.close()


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_no_collection_while_a_fan_out_is_sent_and_on_again_after(
    loop: str, collector: None
) -> None:
    gc.enable()
    run = uvloop.run if loop == "uvloop" else asyncio.run
    seen, after = run(_seen_during_a_fan_out())
    # The phone reads between two slices: while NOTIFYs were still to go, the collector was off.
    during = [on for pending, on in seen if pending]
    assert during and not any(during), seen
    assert after  # on again once the fan-out was done
