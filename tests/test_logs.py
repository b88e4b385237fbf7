"""journald priorities: ``<N>`` before every line when stderr is the journal."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bridge.logs import JournalFormatter, priority, under_journal


def record(level: int, message: str = "hello", exc: bool = False) -> logging.LogRecord:
    info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            info = sys.exc_info()
    return logging.LogRecord("bridge.x", level, __file__, 1, message, None, info)


@pytest.mark.parametrize(
    ("level", "prefix"),
    [(logging.DEBUG, "<7>"), (logging.INFO, "<6>"), (logging.WARNING, "<4>"),
     (logging.ERROR, "<3>"), (logging.CRITICAL, "<2>")],
)  # fmt: skip
def test_each_level_gets_its_syslog_priority(level: int, prefix: str) -> None:
    line = JournalFormatter().format(record(level))
    assert line == f"{prefix}{logging.getLevelName(level)} bridge.x: hello"


def test_every_line_of_a_traceback_keeps_the_priority() -> None:
    text = JournalFormatter().format(record(logging.ERROR, "first\nsecond", exc=True))
    lines = text.split("\n")
    assert len(lines) > 3 and all(line.startswith("<3>") for line in lines)
    assert lines[-1] == "<3>ValueError: boom"


def test_levels_between_the_named_ones_take_the_lower_priority() -> None:
    assert priority(logging.WARNING + 5) == 4 and priority(1) == 7 and priority(100) == 2


def test_journal_stream_must_name_stderr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    assert not under_journal()
    monkeypatch.setenv("JOURNAL_STREAM", "1:2")  # inherited from a parent, stderr redirected
    assert not under_journal()
    st = os.fstat(sys.stderr.fileno())
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    assert under_journal()


def test_the_running_cli_writes_priorities_for_the_journal(tmp_path: Path) -> None:
    log = tmp_path / "stderr"
    with open(log, "wb") as stderr:
        st = os.fstat(stderr.fileno())
        env = {**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        # No ami.username: the bridge warns that it runs the demo PBX, then logs at info.
        proc = subprocess.Popen(
            [sys.executable, "-m", "bridge", "run", "--set", 'sip.udp=["127.0.0.1:0"]',
             "--set", "sip.tcp=[]", "--set", "web.listen=", "--set", "store.path="],
            stdout=subprocess.DEVNULL, stderr=stderr, env=env,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 20
            while "listening for SUBSCRIBEs" not in log.read_text():
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)
    lines = log.read_text().splitlines()
    warning = "<4>WARNING bridge: config: ami.username is empty"
    assert any(line.startswith(warning) for line in lines)
    assert any(line.startswith("<6>INFO bridge: listening for SUBSCRIBEs") for line in lines)
    assert all(line[:3] in ("<7>", "<6>", "<4>", "<3>", "<2>") for line in lines), lines
