"""The running bridge: the asyncio glue around the sans-I/O core (``bridge.core``).

It starts, reloads and stops the pieces, answers signals and systemd, and carries out what the
core asks: Asterisk events and SIP messages are fed in with ``loop.time()``, what the core wants
sent goes out, one loop timer (in ``SipService``) is re-armed from ``core.next_timer()``, and the
store is written now and then. No protocol or call logic lives here.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import time
from collections.abc import Callable

from aiohttp import web

from bridge import settings
from bridge.config import Config, ConfigError
from bridge.core import BridgeCore
from bridge.events import AsteriskEvent
from bridge.local_pbx import LocalPbx, LocalPbxChoice, not_followed, wanted_pbx
from bridge.pickup import PickupPolicy
from bridge.provision.web import SnomDocuments
from bridge.service import SystemdNotifier, keep_watchdog, tell_systemd
from bridge.sip.notifier import Notifier
from bridge.sip.transport import SipService, start_sip
from bridge.sources import Login, Source, build_sources, describe
from bridge.status import BridgeStatus
from bridge.store_keeper import StoreKeeper
from bridge.web.server import start_web

log = logging.getLogger("bridge")


class Bridge:
    """One running bridge; ``start()``, then ``stop()``; ``reload()`` in between. ``pbx``: follow
    that local PBX instead of the configured Asterisk, for good; ``local_pbx``: the local PBX
    (or none) each configuration asks for, so a reload may move between it and Asterisk."""

    def __init__(self, config: Config, *, pbx: LocalPbx | None = None,
                 local_pbx: LocalPbxChoice | None = None) -> None:  # fmt: skip
        self.config = config
        self.local_pbx = local_pbx
        self.pbx = pbx if pbx is not None or local_pbx is None else local_pbx(config)
        self.core = BridgeCore(config)
        self.status = BridgeStatus(self.core, time.monotonic)  # loop.time() is this clock
        self.sip: SipService | None = None
        self.source: Source | None = None  # the (first) PBX's
        self.sources: dict[str, Source] = {}  # by PBX name ("": the one PBX)
        self.store: StoreKeeper | None = None
        self.web: web.AppRunner | None = None
        self._source_tasks: list[asyncio.Task[None]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._play: asyncio.Task[None] | None = None  # the local PBX's calls

    @property
    def notifier(self) -> Notifier:
        """The core's SIP notifier (its counts: tests, the systemd status line)."""
        return self.core.notifier

    @property
    def synced(self) -> asyncio.Event:
        """Set once the (first) source followed since the start is in sync with its PBX."""
        assert self.source is not None, "start() first"
        return self.source.synced

    @property
    def policy(self) -> PickupPolicy:
        """The pickup policy in force (the Snom documents write fallback codes by it)."""
        return self.core.policy

    async def start(self) -> None:
        """Resume stored subscriptions, bind the SIP listeners, follow Asterisk (or the PBX)."""
        sip = self.config.sip
        try:
            if self.pbx is not None:
                await self.pbx.start()
            store = self.config.store
            self.store = StoreKeeper.open(store.path, self.core, store.flush_interval,
                                          asyncio.get_running_loop().time())  # fmt: skip
            self.sip = await start_sip(
                self.core,
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
        self.core.local_towards = self.sip.local_towards
        self._start_source()
        assert self.source is not None
        if self.store is not None:
            self._tasks.append(asyncio.create_task(self.store.flush_forever(), name="store"))
        if self.config.web is not None:
            where = self.config.web
            try:
                self.web = await start_web(
                    self.status, where.host, where.port, self.config.web_hosts,
                    SnomDocuments(self),
                )  # fmt: skip
                log.info("panel and metrics on http://%s/", where)
            except OSError as exc:  # the panel is a window on the bridge, not the bridge
                log.error("web.listen: cannot serve on %s: %s; running without it", where, exc)
        listening = [f"{kind} {self.bound(kind)[1]}" for kind in ("udp", "tcp", "tls")
                     if getattr(self.sip, kind)]  # fmt: skip
        origin = describe(self.source, self.config, local=self.pbx is not None)
        domain = "each PBX's domain" if self.config.pbxs else settings.domain(self.config)
        log.info("listening for SUBSCRIBEs on %s; following %s; URIs name %s",
                 ", ".join(listening), origin, domain)  # fmt: skip

    def _start_source(self) -> None:
        pbx = self.pbx
        local = None if pbx is None else Login(pbx.host, pbx.port, pbx.username, pbx.secret)
        self.sources = build_sources(self.config, self._on_event, local)
        self.source = next(iter(self.sources.values()))
        self._source_tasks = [asyncio.create_task(source.run(), name=f"asterisk-source{name}")
                              for name, source in self.sources.items()]  # fmt: skip
        if pbx is not None:  # plays once the source is in sync
            self._play = asyncio.create_task(pbx.play(self.source.synced), name="pbx")

    async def _stop_source(self) -> None:
        if self._play is not None:  # the demo's calls: endless until cancelled
            self._play.cancel()
            await asyncio.wait([self._play])
            self._play = None
        for source in self.sources.values():
            await source.stop()
        for task in self._source_tasks:
            try:
                await asyncio.wait_for(task, 5.0)
            except Exception:
                log.exception("the Asterisk source did not stop cleanly")
        self._source_tasks = []

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
            await self.sip.close()  # from here on no NOTIFY can go out (and the timer is off)
            self.sip = None
        if self.store is not None:
            self.store.close(asyncio.get_running_loop().time())
            self.store = None
        if self.pbx is not None:
            await self.pbx.close()

    async def reload(self, config: Config) -> None:
        """Take over a new configuration without dropping a subscription."""
        live_tls = self.sip is not None and self.sip.tls
        renewed = settings.tls_context(config) if live_tls else None  # ConfigError: kept as is
        if self.sip is not None and renewed is not None:  # before the diff: a renewed (ACME)
            self.sip.use_tls_context(renewed)  # certificate keeps its file names
            log.info("reload: new TLS connections use %s", config.sip.tls_certificate)
        loop = asyncio.get_running_loop()
        wanted = wanted_pbx(self.local_pbx, self.pbx, self.config, config)
        switch = (wanted is None) != (self.pbx is None)  # the demo <-> Asterisk
        if switch and wanted is not None:
            try:  # before anything changes: a demo that cannot listen leaves all as it was
                await wanted.start()
            except OSError as exc:
                log.error("reload refused, keeping the running configuration: the demo PBX "
                          "cannot start: %s", exc)  # fmt: skip
                return
        done = self.core.reconfigure(config, loop.time(), can_restart_source=wanted is None,
                                     new_pbx=switch)  # fmt: skip
        if not done.changed and not switch:
            log.info("reload: nothing changed")
            return
        if done.kept:
            log.warning("reload: %s only change on a restart; keeping the old value(s)",
                        ", ".join(done.kept))  # fmt: skip
        if wanted is not None and not switch and (ignored := not_followed(done.changed)):
            log.warning("reload: %s changed, but the demo PBX goes on (demo.enabled or --demo); "
                        "the bridge follows Asterisk once neither asks for the demo",
                        ", ".join(ignored))  # fmt: skip
        self.config = config = done.config
        if "log.level" in done.changed:
            logging.getLogger().setLevel(config.log_level.upper())
        if self.sip is not None:
            self.sip.stream_limits = settings.stream_limits(config)
        if self.store is not None and "store.path" in set(done.changed) - set(done.kept):
            self.store.move(config.store.path, loop.time())  # e.g. the demo's, then the site's
        if done.restart_source:
            await self._stop_source()
            if switch and (old := self.pbx) is not None:
                await old.close()  # the demo: Asterisk is followed from now on
            self.pbx = wanted
            self.core.source_restarting(loop.time())
            self._start_source()
            first = next(iter(self.sources.values()))
            log.info("reload: following %s", describe(first, config, local=self.pbx is not None))
        elif self.source is not None:
            self.source.refresh_groups()  # "refreshed on reload": Asterisk may have changed
        if self.sip is not None:
            self.sip.flush()  # final NOTIFYs of ended subscriptions, new bodies
        log.info("reloaded: %s", ", ".join(sorted(done.changed - set(done.kept))) or "nothing")

    def _on_event(self, pbx: str, event: AsteriskEvent) -> None:
        """Every normalized event of a PBX, in order: into the core, then out to the phones."""
        started = time.perf_counter()
        changed = self.core.asterisk_event(event, asyncio.get_running_loop().time(), pbx)
        if self.sip is not None and self.core.wants_flush():
            self.sip.flush()
        if changed:
            self.status.histogram.observe(time.perf_counter() - started)
        if self.core.take_status_change():
            self.status.change.fire()


def _status_line(bridge: Bridge) -> str:
    counters = bridge.status.counters()
    asterisk = "in sync with Asterisk" if counters.synced else "waiting for Asterisk"
    return f"{counters.subscriptions} subscriptions, {asterisk}"


async def run_until_signalled(
    config: Config, *, pbx: LocalPbx | None = None, reload: Callable[[], Config] | None = None,
    local_pbx: LocalPbxChoice | None = None,
) -> None:  # fmt: skip
    """Run the bridge (following ``pbx`` if given, or what ``local_pbx`` chooses for each
    configuration) until SIGTERM or SIGINT; SIGHUP reloads the configuration (``reload`` reads
    it again; a broken file is logged and the running one kept). Under systemd (Type=notify) it
    reports READY, STATUS, RELOADING, STOPPING and pings the watchdog from the event loop."""
    bridge = Bridge(config, pbx=pbx, local_pbx=local_pbx)
    systemd = SystemdNotifier()
    stop = asyncio.Event()
    hup = asyncio.Event()
    loop = asyncio.get_running_loop()
    handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    # Set before the start: a Ctrl-C while starting stops cleanly, no KeyboardInterrupt.
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, hup.set)
    helpers: list[asyncio.Task[None]] = []
    started = time.monotonic()
    try:
        await bridge.start()
        line = functools.partial(_status_line, bridge)
        helpers = [
            asyncio.create_task(tell_systemd(systemd, bridge.synced, line), name="systemd-status"),
            asyncio.create_task(keep_watchdog(systemd, systemd.watchdog_interval()),
                                name="watchdog"),
        ]
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
                systemd.ready(line())  # also after a refusal: still running
        log.info("stopping after %.0f s", time.monotonic() - started)
    finally:
        systemd.stopping()
        for sig in handled:
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
        await bridge.stop()
        for task in helpers:  # the watchdog last: the stop above must not look like a hang
            task.cancel()
