"""The SQLite subscription store: round trips, expiry, damage, and a crash in the middle."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bridge.sip.subscription import Peer, SubscriptionSnapshot
from bridge.store import StoreError, SubscriptionStore


def snap(n: int, expires_in: float = 600.0, **changes: object) -> SubscriptionSnapshot:
    values: dict[str, object] = {
        "key": (f"call-{n}", f"from-{n}", f"to-{n}"),
        "resource": "202",
        "peer": Peer("udp", "127.0.0.1", 5000 + n, ("127.0.0.1", 5065)),
        "event": "dialog",
        "event_id": None,
        "local": f"<sip:202@pbx>;tag=to-{n}",
        "remote": f"<sip:w@127.0.0.1>;tag=from-{n}",
        "target": f"sip:w@127.0.0.1:{5000 + n}",
        "route": ("<sip:proxy;lr>",),
        "remote_cseq": 3,
        "cseq": 1000 + n,
        "version": 2000 + n,
        "expires_in": expires_in,
    }
    values.update(changes)
    return SubscriptionSnapshot(**values)  # type: ignore[arg-type]


def test_round_trip_keeps_every_field(tmp_path: Path) -> None:
    store = SubscriptionStore(tmp_path / "s.sqlite3")
    tcp = snap(2, peer=Peer("tcp", "::1", 5080, None), event="dialog;id=7", event_id="7", route=())
    store.write([snap(1), tcp], wall_now=1000.0)
    loaded = sorted(store.load(wall_now=1010.0), key=lambda s: s.key)
    store.close()
    assert [s.expires_in for s in loaded] == [590.0, 590.0]
    assert loaded[0] == snap(1, expires_in=590.0)
    assert loaded[1] == dataclasses.replace(tcp, expires_in=590.0)
    # Peer equality ignores the local address: check it on its own.
    assert loaded[0].peer.local == ("127.0.0.1", 5065) and loaded[1].peer.local is None


def test_expired_ones_are_not_loaded_and_are_purged_on_write(tmp_path: Path) -> None:
    store = SubscriptionStore(tmp_path / "s.sqlite3")
    store.write([snap(1, expires_in=5), snap(2, expires_in=600)], wall_now=1000.0)
    assert [s.key[0] for s in store.load(wall_now=1006.0)] == ["call-2"]
    store.write([], wall_now=1006.0)
    assert store.count() == 1


def test_removed_and_replace_all(tmp_path: Path) -> None:
    store = SubscriptionStore(tmp_path / "s.sqlite3")
    store.write([snap(1), snap(2), snap(3)])
    store.write([snap(4)], [snap(1).key])
    assert sorted(s.key[0] for s in store.load()) == ["call-2", "call-3", "call-4"]
    store.write([snap(5)], replace_all=True)
    assert [s.key[0] for s in store.load()] == ["call-5"]


def test_a_file_that_is_no_database_is_moved_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "s.sqlite3"
    path.write_bytes(b"this is not SQLite" * 100)
    with caplog.at_level(logging.ERROR):
        store = SubscriptionStore(path)
    assert store.load() == []
    store.write([snap(1)])
    assert store.count() == 1
    aside = [p for p in tmp_path.iterdir() if ".unreadable-" in p.name]
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"this is not SQLite")
    assert "unreadable" in caplog.text


def test_rows_that_make_no_sense_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    SubscriptionStore(path).write([snap(1), snap(2)])
    db = sqlite3.connect(path)
    db.execute("UPDATE subscriptions SET transport = 'sctp' WHERE call_id = 'call-1'")
    db.commit()
    db.close()
    assert [s.key[0] for s in SubscriptionStore(path).load()] == ["call-2"]


def test_an_unusable_path_is_a_store_error_naming_it(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StoreError, match=r"file/sub/s\.sqlite3"):
        SubscriptionStore(blocker / "sub" / "s.sqlite3")


def test_only_the_bridges_user_may_read_the_file(tmp_path: Path) -> None:
    # Every watched call's dialog ids are in it: enough to pick the call up.
    path = tmp_path / "s.sqlite3"
    old_umask = os.umask(0o022)  # what a shell or a container gives, unlike systemd's UMask
    try:
        SubscriptionStore(path).write([snap(1)])
        assert {f.name: f.stat().st_mode & 0o777 for f in tmp_path.iterdir()} == {
            name: 0o600 for name in ("s.sqlite3", "s.sqlite3-wal", "s.sqlite3-shm")
        }  # fmt: skip
        path.chmod(0o644)  # written by an older version
        assert len(SubscriptionStore(path).load()) == 1
        assert path.stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old_umask)


WRITER = textwrap.dedent(
    """
    import sys
    from tests.test_store import snap
    from bridge.store import SubscriptionStore
    store = SubscriptionStore(sys.argv[1])
    batch = 0
    while True:  # each batch replaces 200 rows by the next 200: always exactly 200 stored
        batch += 1
        rows = [snap(batch * 1000 + i) for i in range(200)]
        store.write(rows, replace_all=True)
        if batch == 3:
            print("writing", flush=True)
    """
)


def test_killed_in_the_middle_of_writing_leaves_a_readable_store(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    root = Path(__file__).parent.parent
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)], cwd=root, stdout=subprocess.PIPE, text=True
    )
    assert writer.stdout is not None
    assert writer.stdout.readline() == "writing\n"
    time.sleep(0.3)  # many batches later, somewhere inside one
    writer.send_signal(signal.SIGKILL)
    writer.wait(10)
    loaded = SubscriptionStore(path).load()
    assert len(loaded) == 200  # a whole batch, never a mix or a torn one
    assert len({s.key[0][: -3] for s in loaded}) == 1
