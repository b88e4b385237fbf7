"""Subscriptions kept in SQLite, so a restarted bridge resumes them without the phones noticing.

Writes are batched by the caller (one transaction per flush, run off the event loop); SQLite's
WAL journal makes every committed batch survive a crash of the process at any moment, and a
half-written batch is simply not there. Times are stored as wall-clock epoch seconds: the
notifier's monotonic clock means nothing to the next process.

A store that cannot be opened or read is never fatal: the bridge logs why and runs without
persistence; an unreadable file is moved aside, not overwritten, so nobody loses evidence.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from bridge.sip.subscription import DialogKey, Peer, SubscriptionSnapshot, Transport

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS subscriptions (
    call_id TEXT NOT NULL,
    remote_tag TEXT NOT NULL,
    local_tag TEXT NOT NULL,
    resource TEXT NOT NULL,
    transport TEXT NOT NULL,
    host TEXT NOT NULL,
    port INTEGER NOT NULL,
    local_host TEXT,
    local_port INTEGER,
    event TEXT NOT NULL,
    event_id TEXT,
    local_uri TEXT NOT NULL,
    remote_uri TEXT NOT NULL,
    target TEXT NOT NULL,
    route TEXT NOT NULL,
    remote_cseq INTEGER NOT NULL,
    cseq INTEGER NOT NULL,
    version INTEGER NOT NULL,
    expires REAL NOT NULL,
    watcher TEXT NOT NULL,
    PRIMARY KEY (call_id, remote_tag, local_tag)
);
"""
_COLUMNS = (
    "call_id, remote_tag, local_tag, resource, transport, host, port, local_host, local_port,"
    " event, event_id, local_uri, remote_uri, target, route, remote_cseq, cseq, version, expires,"
    " watcher"
)
_UPSERT = f"INSERT OR REPLACE INTO subscriptions ({_COLUMNS}) VALUES ({', '.join('?' * 20)})"
_DELETE = "DELETE FROM subscriptions WHERE call_id = ? AND remote_tag = ? AND local_tag = ?"

Row = tuple[str, str, str, str, str, str, int, str | None, int | None, str, str | None, str,
            str, str, str, int, int, int, float, str]  # fmt: skip


class StoreError(Exception):
    """The store cannot be used; the message says why and names the file."""


class SubscriptionStore:
    """One SQLite file of live subscriptions. Thread-safe: flushes run in a worker thread."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db = self._open()

    def _open(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = self._connect()
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open {self.path}: {exc}") from exc
        return db

    def _private(self) -> None:
        """The file holds every watched call's dialog ids (enough to pick it up): only the
        bridge's user may read it, with or without systemd's UMask. SQLite gives the -wal and
        -shm files the mode of the database file."""
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        for suffix in ("", "-wal", "-shm"):
            path = Path(f"{self.path}{suffix}")
            if path.exists() and path.stat().st_mode & 0o077:
                path.chmod(0o600)

    def _connect(self) -> sqlite3.Connection:
        self._private()
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # with WAL: survives a crash of the process
            db.executescript(_SCHEMA)
            found = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            if found is None:
                db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            elif found[0] != str(SCHEMA_VERSION):
                raise sqlite3.DatabaseError(f"schema version {found[0]}, expected {SCHEMA_VERSION}")
            db.execute("SELECT count(*) FROM subscriptions").fetchone()
        except sqlite3.DatabaseError as exc:
            db.close()
            aside = self.path.with_name(f"{self.path.name}.unreadable-{int(time.time())}")
            log.error("subscription store %s is unreadable (%s); moved to %s, starting empty",
                      self.path, exc, aside)  # fmt: skip
            for suffix in ("", "-wal", "-shm"):
                source = Path(f"{self.path}{suffix}")
                if source.exists():
                    source.rename(f"{aside}{suffix}")
            return self._connect()
        return db

    def load(self, wall_now: float | None = None) -> list[SubscriptionSnapshot]:
        """Every stored subscription that has not expired; rows that make no sense are skipped
        with a log line (never a crash)."""
        now = time.time() if wall_now is None else wall_now
        with self._lock:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM subscriptions").fetchall()
        out = []
        for row in rows:
            try:
                snap = _snapshot(row, now)
            except (TypeError, ValueError) as exc:
                log.warning("skipping an unreadable stored subscription %r: %s", row[:3], exc)
                continue
            if snap.expires_in > 0:
                out.append(snap)
        return out

    def write(
        self,
        changed: Iterable[SubscriptionSnapshot],
        removed: Iterable[DialogKey] = (),
        *,
        replace_all: bool = False,
        wall_now: float | None = None,
    ) -> None:
        """One transaction: upsert ``changed``, delete ``removed`` (or, with ``replace_all``,
        everything not in ``changed``). Blocking: call it from a worker thread."""
        now = time.time() if wall_now is None else wall_now
        rows = [_row(snap, now) for snap in changed]
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                if replace_all:
                    db.execute("DELETE FROM subscriptions")
                db.executemany(_DELETE, list(removed))
                db.executemany(_UPSERT, rows)
                db.execute("DELETE FROM subscriptions WHERE expires <= ?", (now,))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def count(self) -> int:
        """How many subscriptions are stored (expired ones included until the next write)."""
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM subscriptions").fetchone()[0])

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            self._db.close()


def _row(snap: SubscriptionSnapshot, now: float) -> Row:
    peer, local = snap.peer, snap.peer.local
    return (
        *snap.key,
        snap.resource,
        peer.transport,
        peer.host,
        peer.port,
        local[0] if local else None,
        local[1] if local else None,
        snap.event,
        snap.event_id,
        snap.local,
        snap.remote,
        snap.target,
        json.dumps(list(snap.route)),
        snap.remote_cseq,
        snap.cseq,
        snap.version,
        now + snap.expires_in,
        snap.watcher,
    )


def _snapshot(row: tuple[object, ...], now: float) -> SubscriptionSnapshot:
    (call_id, remote_tag, local_tag, resource, transport, host, port, local_host, local_port,
     event, event_id, local_uri, remote_uri, target, route, remote_cseq, cseq, version,
     expires, watcher) = row  # fmt: skip
    if transport not in ("udp", "tcp", "tls"):
        raise ValueError(f"transport {transport!r}")
    local = (str(local_host), _int(local_port)) if local_host is not None else None
    hops = json.loads(str(route))
    if not isinstance(hops, list):
        raise ValueError("route is not a list")
    return SubscriptionSnapshot(
        key=(str(call_id), str(remote_tag), str(local_tag)),
        resource=str(resource),
        peer=Peer(_TRANSPORTS[str(transport)], str(host), _int(port), local),
        event=str(event),
        event_id=None if event_id is None else str(event_id),
        local=str(local_uri),
        remote=str(remote_uri),
        target=str(target),
        route=tuple(str(hop) for hop in hops),
        remote_cseq=_int(remote_cseq),
        cseq=_int(cseq),
        version=_int(version),
        expires_in=float(str(expires)) - now,
        watcher=str(watcher),
    )


_TRANSPORTS: dict[str, Transport] = {"udp": "udp", "tcp": "tcp", "tls": "tls"}


def _int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{value!r} is not a whole number")
    return value
