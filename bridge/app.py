"""The running bridge: Asterisk source → CallTracker → dialog-info → SIP notifier.

This module wires the pieces and owns the lifecycle (start, stop, signals); the protocol and
call logic live in the pieces themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import signal

from bridge.asterisk.ami import AmiSource
from bridge.config import Config, ListenAddress
from bridge.demo.ami_server import RecordedAmiServer, bundled_recordings
from bridge.dialoginfo import DialogInfoDocument, RenderSettings, render
from bridge.events import AsteriskEvent, ResyncFinished
from bridge.sip.notifier import Notifier, NotifierSettings
from bridge.sip.transport import SipService, start_sip
from bridge.tracker import CallTracker, TrackerSettings

log = logging.getLogger("bridge")

DEMO_PAUSE = 3.0  # seconds of quiet between two replayed calls in the demo loop


class Documents:
    """The notifier's document source: each extension's state rendered once per change."""

    def __init__(self, tracker: CallTracker, settings: RenderSettings) -> None:
        self._tracker = tracker
        self._settings = settings
        self._rendered: dict[str, DialogInfoDocument] = {}

    def knows(self, resource: str) -> bool:
        """Whether phones may watch this extension."""
        return self._tracker.watchable(resource)

    def document(self, resource: str) -> DialogInfoDocument:
        """The current body of an extension, rendered at most once per state."""
        doc = self._rendered.get(resource)
        if doc is None:
            doc = self._rendered[resource] = render(self._tracker.state(resource), self._settings)
        return doc

    def changed(self, exten: str) -> bool:
        """Forget the old rendering; True when the new body differs from it (or none was
        rendered), i.e. when watchers must be told."""
        old = self._rendered.pop(exten, None)
        if old is None or not self._tracker.watchable(exten):
            return True
        new = self.document(exten)
        return (new.prefix, new.suffix) != (old.prefix, old.suffix)


def _contacts(config: Config) -> dict[str, tuple[str, int]]:
    """Fallback Contact/Via addresses per transport (port 0: the port once bound)."""
    first = {"udp": config.sip.udp, "tcp": config.sip.tcp}
    some: ListenAddress = (config.sip.udp or config.sip.tcp)[0]
    out = {}
    for transport, addresses in first.items():
        address = addresses[0] if addresses else some
        out[transport] = (config.sip.contact_host or address.host, address.port)
    return out


class Bridge:
    """One running bridge; ``start()``, then ``stop()``."""

    def __init__(self, config: Config, *, demo: bool = False) -> None:
        self.config = config
        self.demo = demo
        self.tracker = CallTracker(
            TrackerSettings(
                outgoing_blinks=config.watch.outgoing_blinks, watch=config.watch.extensions
            )
        )
        self.domain = config.sip.domain or config.ami.host
        self.documents = Documents(self.tracker, RenderSettings(self.domain))
        sip = config.sip
        self.notifier = Notifier(
            self.documents,
            NotifierSettings(
                min_expires=sip.min_expires,
                default_expires=sip.default_expires,
                max_expires=sip.max_expires,
                contacts=_contacts(config),
                user_agent=sip.user_agent,
                contact_from_local=not sip.contact_host,
            ),
        )
        self.sip: SipService | None = None
        self.source: AmiSource | None = None
        self.demo_pbx: RecordedAmiServer | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Bind the SIP listeners and start following Asterisk (or the demo PBX)."""
        sip, ami = self.config.sip, self.config.ami
        host, port, username, secret = ami.host, ami.port, ami.username, ami.secret
        try:
            if self.demo:
                secret = secrets.token_hex(16)
                self.demo_pbx = RecordedAmiServer(bundled_recordings(), username="demo",
                                                  secret=secret)  # fmt: skip
                await self.demo_pbx.start()
                host, port, username = self.demo_pbx.host, self.demo_pbx.port, "demo"
                self._tasks.append(asyncio.create_task(self._demo_loop(), name="demo-pbx"))
            self.sip = await start_sip(
                self.notifier,
                [(a.host, a.port) for a in sip.udp],
                [(a.host, a.port) for a in sip.tcp],
                max_datagram=sip.max_message_size,
                max_message=sip.max_message_size,
            )
        except BaseException:
            await self.stop()
            raise
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
        )
        self._tasks.append(asyncio.create_task(self.source.run(), name="ami-source"))
        listening = [f"udp {t.get_extra_info('sockname')[1]}" for t in self.sip.udp] + [
            f"tcp {s.sockets[0].getsockname()[1]}" for s in self.sip.tcp
        ]
        origin = (
            f"the demo PBX (recorded Asterisk 22 calls, AMI on {host}:{port})"
            if self.demo
            else f"Asterisk AMI {username}@{host}:{port}"
        )
        log.info(
            "listening for SUBSCRIBEs on %s; following %s; URIs name %s",
            ", ".join(listening), origin, self.domain,
        )  # fmt: skip

    def bound(self, transport: str) -> tuple[str, int]:
        """The first address a transport's listener is bound to (for tests and the log)."""
        assert self.sip is not None, "start() first"
        if transport == "udp":
            host, port = self.sip.udp[0].get_extra_info("sockname")[:2]
        else:
            host, port = self.sip.tcp[0].sockets[0].getsockname()[:2]
        return str(host), int(port)

    async def stop(self) -> None:
        """Log off Asterisk, close the listeners; idempotent."""
        if self.source is not None:
            await self.source.stop()
        for task in self._tasks:
            if task.get_name() != "ami-source":
                task.cancel()
        if self._tasks:
            done, pending = await asyncio.wait(self._tasks, timeout=5.0)
            for task in pending:
                task.cancel()
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    log.error("%s failed", task.get_name(), exc_info=task.exception())
        self._tasks.clear()
        if self.demo_pbx is not None:
            await self.demo_pbx.close()
            self.demo_pbx = None
        if self.sip is not None:
            await self.sip.close()
            self.sip = None

    async def _demo_loop(self) -> None:
        assert self.demo_pbx is not None
        await self.demo_pbx.loop_forever(pause=DEMO_PAUSE)

    def _on_event(self, event: AsteriskEvent) -> None:
        """Every normalized Asterisk event, in order: update the tracker, notify the watchers."""
        now = asyncio.get_running_loop().time()
        for exten in sorted(self.tracker.apply(event, now)):
            if self.documents.changed(exten):
                log.info("%s: %s", exten, self.tracker.state(exten).summary())
                if self.sip is not None:
                    self.sip.resource_changed(exten)
        if isinstance(event, ResyncFinished):
            extensions = sorted(self.tracker.extensions())
            log.info(
                "in sync with Asterisk; %d watchable extensions: %s",
                len(extensions), ", ".join(extensions) or "none (no hints?)",
            )  # fmt: skip


async def run_until_signalled(config: Config, *, force_demo: bool = False) -> None:
    """Run the bridge until SIGTERM or SIGINT."""
    bridge = Bridge(config, demo=force_demo or config.demo or not config.ami.configured)
    await bridge.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
        log.info("stopping")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
        await bridge.stop()
