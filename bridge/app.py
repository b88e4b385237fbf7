"""The running bridge: Asterisk source → CallTracker → dialog-info → SIP notifier.

This module wires the pieces and owns the lifecycle (start, reload, stop, signals); the protocol
and call logic live in the pieces themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import signal
import time
from collections.abc import Callable, Hashable

from aiohttp import web

from bridge import settings
from bridge.asterisk.ami import AmiSource
from bridge.asterisk.ari import AriSource
from bridge.config import Config, ConfigError
from bridge.demo.ami_server import RecordedAmiServer, bundled_recordings
from bridge.dialoginfo import DialogInfoDocument, RenderSettings, render
from bridge.events import (
    AsteriskEvent,
    ContactChanged,
    DeviceStateChanged,
    EndpointGroups,
    ExtensionHint,
    ResyncFinished,
    ResyncStarted,
    SourceLost,
)
from bridge.led.controller import LedController
from bridge.pickup import PickupPolicy
from bridge.service import SystemdNotifier, keep_watchdog
from bridge.sip.access import SourceGate
from bridge.sip.message import Response
from bridge.sip.notifier import Notifier
from bridge.sip.subscription import DialogKey
from bridge.sip.transport import SipService, start_sip
from bridge.status import BridgeStatus
from bridge.store import StoreError, SubscriptionStore
from bridge.tracker import CallTracker
from bridge.web.server import start_web

log = logging.getLogger("bridge")

DEMO_PAUSE = 3.0  # seconds of quiet between two replayed calls in the demo loop
# The recordings of keys that follow device states (DND, FreePBX hint, park slot): after the calls.
DEMO_KEYS_LAST = frozenset({"device-states", "park-retrieve"})


class Documents:
    """The notifier's document source: each extension's state rendered once per change and
    variant (which of its ringing calls the watcher may pick up), never once per watcher."""

    def __init__(
        self, tracker: CallTracker, settings: RenderSettings, policy: PickupPolicy
    ) -> None:
        self.tracker = tracker
        self.settings = settings
        self.policy = policy
        # Per extension: its variants by the set of dialogs whose ids are shown; the key None
        # (every id) is the yardstick for "did anything change".
        self._rendered: dict[str, dict[frozenset[str] | None, DialogInfoDocument]] = {}
        # Per extension: the body each class of watchers gets (see PickupPolicy.class_of).
        self._by_class: dict[str, dict[Hashable, DialogInfoDocument]] = {}

    def knows(self, resource: str) -> bool:
        """Whether phones may watch this extension."""
        return self.tracker.watchable(resource)

    def document(self, resource: str, watcher: str) -> DialogInfoDocument:
        """The current body of an extension as this watcher may see it."""
        cls = self.policy.class_of(watcher)
        by_class = self._by_class.setdefault(resource, {})
        doc = by_class.get(cls)
        if doc is None:
            state = self.tracker.state(resource)
            pickable = [d for d in state.dialogs if d.pickup is not None]
            allowed = frozenset(
                d.id
                for d in pickable
                if d.pickup is not None and self.policy.allows(cls, d.pickup.endpoint, resource)
            )
            # Every id allowed is the same body as the yardstick: render it once.
            doc = by_class[cls] = self._variant(
                resource, None if len(allowed) == len(pickable) else allowed
            )
        return doc

    def _variant(self, resource: str, allowed: frozenset[str] | None) -> DialogInfoDocument:
        variants = self._rendered.setdefault(resource, {})
        doc = variants.get(allowed)
        if doc is None:
            state = self.tracker.state(resource)
            doc = variants[allowed] = render(state, self.settings, allowed)
            if None not in variants:  # the yardstick of changed(), for watched extensions
                variants[None] = render(state, self.settings)
        return doc

    def changed(self, exten: str) -> bool:
        """Forget the old renderings; True when the new state differs from the old one (or
        nothing was rendered), i.e. when watchers must be told."""
        self._by_class.pop(exten, None)
        old = self._rendered.pop(exten, {}).get(None)
        if old is None or not self.tracker.watchable(exten):
            return True
        new = self._variant(exten, None)
        return (new.prefix, new.suffix) != (old.prefix, old.suffix)

    def forget_all(self) -> None:
        """Drop every rendering (tracker, render settings or policy changed)."""
        self._rendered.clear()
        self._by_class.clear()


class Bridge:
    """One running bridge; ``start()``, then ``stop()``; ``reload()`` in between."""

    def __init__(self, config: Config, *, demo: bool = False) -> None:
        self.config = config
        self.demo = demo
        self.tracker = self._new_tracker(config)
        self.domain = settings.domain(config)
        self.policy = settings.pickup_policy(config)
        self.documents = Documents(self.tracker, settings.render_settings(config), self.policy)
        self.notifier = Notifier(
            self.documents,
            settings.notifier_settings(config),
            gate=SourceGate(settings.access_limits(config)),
            auth=settings.authenticator(config),
        )
        self.sip: SipService | None = None
        self.source: AmiSource | AriSource | None = None
        self.store: SubscriptionStore | None = None
        self.demo_pbx: RecordedAmiServer | None = None
        self._source_task: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._store_failed = False  # the last write failed: the next one rewrites everything
        self._stale_rings: asyncio.TimerHandle | None = None
        self.leds: LedController | None = None
        self._led_timer: asyncio.TimerHandle | None = None
        self.status = BridgeStatus(self, time.monotonic)  # loop.time() is this clock
        self.web: web.AppRunner | None = None

    @staticmethod
    def _new_tracker(config: Config) -> CallTracker:
        tracker = CallTracker(settings.tracker_settings(config))
        # Nothing is known before the first sync; the sync then reports every extension as
        # changed, which sends resumed subscriptions their first NOTIFY.
        tracker.apply(SourceLost(), 0.0)
        return tracker

    async def start(self) -> None:
        """Resume stored subscriptions, bind the SIP listeners, follow Asterisk (or the demo)."""
        sip = self.config.sip
        try:
            if self.demo:
                await self._start_demo_pbx()
            self._open_store()
            self.sip = await start_sip(
                self.notifier,
                [(a.host, a.port) for a in sip.udp],
                [(a.host, a.port) for a in sip.tcp],
                max_datagram=sip.max_message_size,
                max_message=sip.max_message_size,
                tls_addrs=[(a.host, a.port) for a in sip.tls],
                tls=settings.tls_context(self.config),
                limits=settings.stream_limits(self.config),
            )
        except BaseException:
            await self.stop()
            raise
        if self.config.leds:
            sip_service = self.sip
            self.leds = LedController(
                self.config.leds,
                domain=self.domain,
                local=sip_service.local_towards,
                user_agent=self.config.sip.user_agent,
            )
            self.notifier.other_responses = self._led_response
        self._start_source()
        if self.demo_pbx is not None:  # plays once the source is in sync (_demo_loop)
            self._tasks.append(asyncio.create_task(self._demo_loop(), name="demo-pbx"))
        if self.store is not None:
            self._tasks.append(asyncio.create_task(self._flush_store(), name="store"))
        if self.config.web is not None:
            where = self.config.web
            try:
                self.web = await start_web(
                    self.status, where.host, where.port, self.config.web_hosts
                )
                log.info("panel and metrics on http://%s/", where)
            except OSError as exc:  # the panel is a window on the bridge, not the bridge
                log.error("web.listen: cannot serve on %s: %s; running without it", where, exc)
        listening = [f"udp {t.get_extra_info('sockname')[1]}" for t in self.sip.udp] + [
            f"{kind} {s.sockets[0].getsockname()[1]}"
            for kind, servers in (("tcp", self.sip.tcp), ("tls", self.sip.tls))
            for s in servers
        ]
        assert self.source is not None
        log.info(
            "listening for SUBSCRIBEs on %s; following %s; URIs name %s",
            ", ".join(listening), self._origin(), self.domain,
        )  # fmt: skip

    def _origin(self) -> str:
        assert self.source is not None
        where = f"{self.source.host}:{self.source.port}"
        if self.demo:
            return f"the demo PBX (recorded Asterisk 22 calls, AMI on {where})"
        if isinstance(self.source, AriSource):
            return f"Asterisk ARI {self.config.ari.username}@{where}"
        return f"Asterisk AMI {self.config.ami.username}@{where}"

    async def _start_demo_pbx(self) -> None:
        self.demo_pbx = RecordedAmiServer(
            bundled_recordings(), username="demo", secret=secrets.token_hex(16)
        )
        self.demo_pbx.select_fullest()  # the panel shows every key from the start
        await self.demo_pbx.start()

    def _open_store(self) -> None:
        path = self.config.store.path
        if not path:
            log.info("store.path is empty: subscriptions are not kept across restarts")
            return
        try:
            self.store = SubscriptionStore(path)
            snapshots = self.store.load()
        except (StoreError, OSError) as exc:
            log.error("store.path: %s; running without keeping subscriptions", exc)
            self.store = None
            return
        now = asyncio.get_running_loop().time()
        resumed = self.notifier.restore(snapshots, now)
        # Reserve the resumed subscriptions' new CSeq/version blocks before any NOTIFY uses them.
        self.store.write(*self.notifier.take_changes(now))
        if resumed:
            log.info("resumed %d subscriptions from %s", resumed, path)

    def _start_source(self) -> None:
        ami = self.config.ami
        host, port, username, secret = ami.host, ami.port, ami.username, ami.secret
        if self.demo_pbx is not None:
            pbx = self.demo_pbx
            host, port, username, secret = pbx.host, pbx.port, pbx.username, pbx.secret
        self.notifier.ready = self.config.watch.extensions is not None
        if self.config.source == "ari" and self.demo_pbx is None:
            ari = self.config.ari
            self.source = AriSource(
                ari.url,
                ari.username,
                ari.password,
                self._on_event,
                app=ari.app,
                backoff_min=ami.reconnect_min,
                backoff_max=ami.reconnect_max,
                hints=self.config.hints,
                contacts=[rule.phone for rule in self.config.leds],
                standby=ari.standby, ping_interval=ari.keepalive,
            )  # fmt: skip
            self._source_task = asyncio.create_task(self.source.run(), name="ari-source")
            return
        if self.config.hints:
            log.warning("[hints] is read only with asterisk.source = \"ari\"; over AMI the keys "
                        "are Asterisk's own hints (extensions.conf)")  # fmt: skip
        self.source = AmiSource(
            host,
            port,
            username,
            secret,
            self._on_event,
            events=ami.events,
            backoff_min=ami.reconnect_min,
            backoff_max=ami.reconnect_max,
            getvar_timeout=ami.getvar_timeout,
            contacts=bool(self.config.leds),
            standby=[(a.host, a.port) for a in ami.standby if self.demo_pbx is None],
            ping_interval=ami.keepalive,
        )
        self._source_task = asyncio.create_task(self.source.run(), name="ami-source")

    async def _stop_source(self) -> None:
        if self.source is not None:
            await self.source.stop()
        if self._source_task is not None:
            try:
                await asyncio.wait_for(self._source_task, 5.0)
            except Exception:
                log.exception("the AMI source did not stop cleanly")
            self._source_task = None

    def bound(self, transport: str) -> tuple[str, int]:
        """The first address a transport's listener is bound to (for tests and the log)."""
        assert self.sip is not None, "start() first"
        if transport == "udp":
            host, port = self.sip.udp[0].get_extra_info("sockname")[:2]
        else:
            servers = self.sip.tls if transport == "tls" else self.sip.tcp
            host, port = servers[0].sockets[0].getsockname()[:2]
        return str(host), int(port)

    async def stop(self) -> None:
        """Stop without ending any subscription: they are stored with their exact CSeq and
        version, and the next start resumes them. Idempotent."""
        await self._stop_source()
        if self._stale_rings is not None:
            self._stale_rings.cancel()
        if self._led_timer is not None:
            self._led_timer.cancel()
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            done, _ = await asyncio.wait(self._tasks, timeout=5.0)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    log.error("%s failed", task.get_name(), exc_info=task.exception())
        self._tasks.clear()
        if self.web is not None:
            await self.web.cleanup()
            self.web = None
        if self.sip is not None:
            await self.sip.close()  # from here on no NOTIFY can go out
            self.sip = None
        if self.store is not None:
            snapshots = self.notifier.snapshot_all(asyncio.get_running_loop().time(), exact=True)
            try:
                self.store.write(snapshots, replace_all=True)
                log.info("kept %d subscriptions in %s", len(snapshots), self.store.path)
            except Exception as exc:
                log.error("store.path: could not keep the subscriptions: %s", exc)
            self.store.close()
            self.store = None
        if self.demo_pbx is not None:
            await self.demo_pbx.close()
            self.demo_pbx = None

    async def reload(self, config: Config) -> None:
        """Take over a new configuration without dropping a subscription."""
        changed = settings.changed_settings(self.config, config)
        if not changed:
            log.info("reload: nothing changed")
            return
        kept = sorted(name for name in changed if settings.needs_restart(name))
        if kept:
            log.warning("reload: %s only change on a restart; keeping the old value(s)",
                        ", ".join(kept))  # fmt: skip
            config = settings.keep_old_values(config, self.config, kept)
        old, self.config = self.config, config
        if "log.level" in changed:
            logging.getLogger().setLevel(config.log_level.upper())
        self.notifier.settings = settings.notifier_settings(config)
        restart_source = any(
            name.startswith(("ami.", "ari.", "asterisk.", "hints.")) for name in changed
        )  # a new source takes the new [hints] keys
        if settings.tracker_settings(config) != settings.tracker_settings(old):
            self.tracker = self._new_tracker(config)
            self.documents.tracker = self.tracker
            restart_source = True  # the new tracker learns everything from a fresh sync
        self.domain = settings.domain(config)
        self.documents.settings = settings.render_settings(config)
        self.policy = self.documents.policy = settings.pickup_policy(config, self.policy)
        self.notifier.gate.limits = settings.access_limits(config)
        if self.sip is not None:
            self.sip.stream_limits = settings.stream_limits(config)
        sec, old_sec = config.security, old.security
        same_digest = sec.auth == old_sec.auth and sec.realm == old_sec.realm
        if not same_digest or sec.digest_algorithms != old_sec.digest_algorithms:
            self.notifier.auth = settings.authenticator(config)
        elif self.notifier.auth is not None:
            self.notifier.auth.set_users(dict(sec.users))
        self._end_unauthorized(old_sec.auth)
        self.documents.forget_all()
        if restart_source and not self.demo:
            await self._stop_source()
            self.tracker.apply(SourceLost(), asyncio.get_running_loop().time())
            self._start_source()
        else:
            # Same source and tracker: only the bodies may differ (domain, policy, privacy).
            for resource in self.notifier.resources():
                self._notify(resource)
            if self.source is not None:
                self.source.refresh_groups()  # "refreshed on reload": Asterisk may have changed
        log.info("reloaded: %s", ", ".join(sorted(changed - set(kept))) or "nothing")

    def _end_unauthorized(self, old_auth: str) -> None:
        """After a reload with digest on: subscriptions of users no longer in users_file end
        (final NOTIFY, reason=rejected); when digest was just turned on, every subscription made
        without it ends (reason=deactivated: the phone subscribes again, and is challenged)."""
        auth, now = self.notifier.auth, asyncio.get_running_loop().time()
        if auth is None:
            return
        if old_auth != "digest":
            ended = self.notifier.end_watchers(lambda user: False, now, "deactivated")
            why = "security.auth is now digest"
        else:
            ended = self.notifier.end_watchers(auth.knows, now, "rejected")
            why = "their users are no longer in security.users_file"
        if ended:
            log.warning("reload: ended %d subscription(s): %s", ended, why)
            if self.sip is not None:
                self.sip.received_datagrams([])  # no datagram: only sends the final NOTIFYs

    async def _demo_loop(self) -> None:
        assert self.demo_pbx is not None and self.source is not None
        # Played once the bridge knows every key (select_fullest), the calls first.
        await self.source.synced.wait()
        names = sorted(self.demo_pbx.scenarios, key=lambda name: name in DEMO_KEYS_LAST)
        await self.demo_pbx.loop_forever(names, pause=DEMO_PAUSE)

    async def _flush_store(self) -> None:
        """Write what changed, in one transaction per interval, off the event loop."""
        assert self.store is not None
        store, interval = self.store, self.config.store.flush_interval
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            if not (self.notifier.has_changes or self._store_failed):
                continue
            now = loop.time()
            whole = self._store_failed  # after a failed write, rewrite everything
            removed: list[DialogKey] = []
            if whole:
                changed = self.notifier.snapshot_all(now)
            else:
                changed, removed = self.notifier.take_changes(now)
            try:
                await asyncio.to_thread(store.write, changed, removed, replace_all=whole)
            except Exception as exc:
                if not self._store_failed:
                    log.error("store.path: writing %s failed: %s; retrying", store.path, exc)
                self._store_failed = True
            else:
                if self._store_failed:
                    log.info("store.path: %s is written again", store.path)
                self._store_failed = False

    def _led_event(self, event: AsteriskEvent, now: float) -> None:
        assert self.leds is not None
        match event:
            case DeviceStateChanged():
                self.leds.device_state(event.device, event.state, now)
            case ExtensionHint():
                self.leds.hint_state(event.exten, event.status, now)
            case ContactChanged():
                self.leds.contact(event.aor, event.uri, now, reachable=event.reachable,
                                  endpoint=event.endpoint, listed=event.listed)  # fmt: skip
                self.status.change.fire()  # the panel shows which phones are reachable
            case ResyncStarted():
                self.leds.sync_started()
            case ResyncFinished():
                self.leds.sync_finished(now)
                self.status.change.fire()
            case _:
                return
        self._led_flush()

    def _led_response(self, response: Response, now: float) -> bool:
        assert self.leds is not None
        ours = self.leds.receive_response(response, now)
        self._led_flush()
        return ours

    def _led_flush(self) -> None:
        """Send what the LED controller wants sent; re-arm its one timer."""
        leds, sip = self.leds, self.sip
        if leds is None or sip is None:
            return
        for data, address in leds.outgoing():
            sip.send_datagram(data, address)
        if self._led_timer is not None:
            self._led_timer.cancel()
            self._led_timer = None
        when = leds.next_timer()
        if when is not None:
            self._led_timer = asyncio.get_running_loop().call_at(when, self._led_tick, when)

    def _led_tick(self, when: float) -> None:
        self._led_timer = None
        if self.leds is not None:
            self.leds.handle_timer(max(asyncio.get_running_loop().time(), when))
            self._led_flush()

    def _policy_changed(self) -> None:
        """Who may pick up changed: watchers of ringing extensions get their bodies again."""
        self.documents.forget_all()
        for resource in self.notifier.resources():
            if any(d.pickup is not None for d in self.tracker.state(resource).dialogs):
                self._notify(resource)

    def _asterisk_lost(self) -> None:
        timeout = self.config.watch.stale_ring_timeout
        log.warning(
            "Asterisk is unreachable: keys keep their last known state until it is back%s",
            f"; ringing keys stop blinking after {timeout:g} s" if timeout else "",
        )
        if timeout and self._stale_rings is None:
            self._stale_rings = asyncio.get_running_loop().call_later(timeout, self._expire_rings)

    def _expire_rings(self) -> None:
        self._stale_rings = None
        changed = self.tracker.expire_rings()
        if changed:
            log.warning("no word from Asterisk for %g s: %d ringing keys stop blinking",
                        self.config.watch.stale_ring_timeout, len(changed))  # fmt: skip
        for exten in sorted(changed):
            self._notify(exten)

    def _notify(self, exten: str) -> None:
        if self.documents.changed(exten) and self.sip is not None:
            self.sip.resource_changed(exten)

    def _on_event(self, event: AsteriskEvent) -> None:
        """Every normalized Asterisk event, in order: update the tracker, notify the watchers."""
        started = time.perf_counter()
        now = asyncio.get_running_loop().time()
        self.status.events_total += 1
        changed = False
        dirty = self.tracker.apply(event, now)  # mostly empty: keep that path short
        for exten in sorted(dirty) if dirty else ():
            if self.documents.changed(exten):
                changed = True
                log.info("%s: %s", exten, self.tracker.state(exten).summary())
                if self.sip is not None:
                    self.sip.resource_changed(exten)
        if changed:
            self.status.histogram.observe(time.perf_counter() - started)
            self.status.change.fire()
        if self.leds is not None:
            self._led_event(event, now)
        if not isinstance(event, (EndpointGroups, SourceLost, ResyncFinished)):
            return
        if isinstance(event, EndpointGroups) and self.policy.set_groups(
            event.endpoint, event.call_groups, event.pickup_groups
        ):
            self._policy_changed()
        if isinstance(event, SourceLost):
            self._asterisk_lost()
        if isinstance(event, ResyncFinished):
            if self._stale_rings is not None:
                self._stale_rings.cancel()
                self._stale_rings = None
            self.notifier.ready = True
            # Watchers of extensions that lost their hint (or were resumed for one) are told.
            for resource in self.notifier.resources():
                if not self.tracker.watchable(resource):
                    self._notify(resource)
            extensions = sorted(self.tracker.extensions())
            log.info(
                "in sync with Asterisk; %d watchable extensions: %s",
                len(extensions), ", ".join(extensions) or "none (no hints?)",
            )  # fmt: skip


READY_WAIT = 30.0  # seconds to wait for the first sync before telling systemd we are up


def _status_line(bridge: Bridge) -> str:
    counters = bridge.status.counters()
    asterisk = "in sync with Asterisk" if counters.synced else "waiting for Asterisk"
    return f"{counters.subscriptions} subscriptions, {asterisk}"


async def _tell_systemd(bridge: Bridge, systemd: SystemdNotifier) -> None:
    """READY=1 once the source has synced (the keys are right) or, without Asterisk, after
    READY_WAIT: the bridge still serves what it knows. Then a STATUS line now and then."""
    assert bridge.source is not None
    systemd.status(_status_line(bridge))
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(bridge.source.synced.wait(), READY_WAIT)
    systemd.ready(_status_line(bridge))
    while True:
        await asyncio.sleep(10)
        systemd.status(_status_line(bridge))


async def run_until_signalled(
    config: Config, *, force_demo: bool = False, reload: Callable[[], Config] | None = None
) -> None:
    """Run the bridge until SIGTERM or SIGINT; SIGHUP reloads the configuration (``reload``
    reads it again; a broken file is logged and the running configuration kept). Under
    systemd (Type=notify) it reports READY, STATUS, RELOADING, STOPPING and pings the watchdog
    from the event loop."""
    bridge = Bridge(config, demo=force_demo or config.demo or not config.asterisk_configured)
    systemd = SystemdNotifier()
    await bridge.start()
    helpers = [
        asyncio.create_task(_tell_systemd(bridge, systemd), name="systemd-status"),
        asyncio.create_task(keep_watchdog(systemd, systemd.watchdog_interval()), name="watchdog"),
    ]
    stop = asyncio.Event()
    hup = asyncio.Event()
    loop = asyncio.get_running_loop()
    handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, hup.set)
    started = time.monotonic()
    try:
        while not stop.is_set():
            waiters = [asyncio.create_task(stop.wait()), asyncio.create_task(hup.wait())]
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            for waiter in waiters:
                waiter.cancel()
            if hup.is_set() and not stop.is_set():
                hup.clear()
                systemd.reloading("reloading the configuration")
                if reload is None:
                    log.warning("SIGHUP: no configuration file to reload")
                else:
                    try:
                        await bridge.reload(reload())
                    except ConfigError as exc:
                        log.error("reload refused, keeping the running configuration: %s", exc)
                systemd.ready(_status_line(bridge))  # also after a refusal: still running
        log.info("stopping after %.0f s", time.monotonic() - started)
    finally:
        systemd.stopping()
        for sig in handled:
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
        await bridge.stop()
        for task in helpers:  # the watchdog last: the stop above must not look like a hang
            task.cancel()
