"""Keeping the core's subscriptions in the store: resume them at start, write what changed now
and then (off the event loop, rewriting everything after a failed write), all at a clean stop."""

from __future__ import annotations

import asyncio
import logging

from bridge.core import BridgeCore
from bridge.sip.subscription import DialogKey
from bridge.store import StoreError, SubscriptionStore

__all__ = ["StoreKeeper"]

log = logging.getLogger("bridge")


class StoreKeeper:
    """The store of one core; ``open()`` it, run ``flush_forever()``, ``close()`` it."""

    def __init__(self, store: SubscriptionStore, core: BridgeCore, interval: float) -> None:
        self.store = store
        self.core = core
        self.interval = interval
        self.failed = False  # the last write failed: the next one rewrites everything

    @classmethod
    def open(cls, path: str, core: BridgeCore, interval: float, now: float) -> StoreKeeper | None:
        """Resume the subscriptions stored at ``path``; None (logged) when there is no store."""
        if not path:
            log.info("store.path is empty: subscriptions are not kept across restarts")
            return None
        try:
            store = SubscriptionStore(path)
            snapshots = store.load()
        except (StoreError, OSError) as exc:
            log.error("store.path: %s; running without keeping subscriptions", exc)
            return None
        resumed = core.restore(snapshots, now)
        # Reserve the resumed subscriptions' new CSeq/version blocks before any NOTIFY uses them.
        store.write(*core.store_changes(now))
        if resumed:
            log.info("resumed %d subscriptions from %s", resumed, path)
        return cls(store, core, interval)

    def move(self, path: str, now: float) -> bool:
        """``store.path`` changed on a reload (the demo's own store, then the site's): every
        running subscription goes to the new store, replacing what it held, and the old one is
        emptied, so neither a restart nor a later demo resumes what was moved. False (logged,
        the old store kept) when the new one cannot be written."""
        try:
            moved = SubscriptionStore(path)
            moved.write(self.core.snapshot_all(now), replace_all=True)
        except (StoreError, OSError) as exc:
            log.error("store.path: %s; the subscriptions stay in %s", exc, self.store.path)
            return False
        old, self.store, self.failed = self.store, moved, False
        try:
            old.write([], replace_all=True)
        finally:
            old.close()
        log.info("store.path: subscriptions are kept in %s now (was %s)", path, old.path)
        return True

    async def flush_forever(self) -> None:
        """Write what changed, in one transaction per interval, off the event loop."""
        core = self.core
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.interval)
            store = self.store  # a reload may have moved it
            if not (core.has_store_changes or self.failed):
                continue
            whole = self.failed  # after a failed write, rewrite everything
            removed: list[DialogKey] = []
            if whole:
                changed = core.snapshot_all(loop.time())
            else:
                changed, removed = core.store_changes(loop.time())
            try:
                await asyncio.to_thread(store.write, changed, removed, replace_all=whole)
            except Exception as exc:
                if not self.failed:
                    log.error("store.path: writing %s failed: %s; retrying", store.path, exc)
                self.failed = True
            else:
                if self.failed:
                    log.info("store.path: %s is written again", store.path)
                self.failed = False

    def close(self, now: float) -> None:
        """Keep every subscription with its exact CSeq and version (nothing may be sent after
        this), and close the store."""
        snapshots = self.core.snapshot_all(now, exact=True)
        try:
            self.store.write(snapshots, replace_all=True)
            log.info("kept %d subscriptions in %s", len(snapshots), self.store.path)
        except Exception as exc:
            log.error("store.path: could not keep the subscriptions: %s", exc)
        self.store.close()
