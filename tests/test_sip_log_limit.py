"""The log limiter: once per source and interval, a few lines a second in all."""

from __future__ import annotations

import logging
import re

import pytest

from bridge.sip.log_limit import LogLimiter

LOGGER = logging.getLogger("test.log_limit")
HELD = re.compile(r"\((\d+) log lines about peers were left out")


def test_one_line_per_source_and_interval(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER.name)
    limiter = LogLimiter(LOGGER, interval=60.0, per_second=5.0)
    written = [limiter.log(logging.INFO, ("10.0.0.1", "framing"), t / 10, "bad from %s", "a")
               for t in range(100)]  # fmt: skip
    assert written == [True] + [False] * 99  # 10 s of one line every 0.1 s
    assert limiter.log(logging.INFO, ("10.0.0.1", "timeout"), 10.0, "another kind")
    assert limiter.log(logging.INFO, ("10.0.0.2", "framing"), 10.0, "another source")
    assert limiter.log(logging.INFO, ("10.0.0.1", "framing"), 60.0, "bad from %s", "b")
    assert [r.getMessage() for r in caplog.records] == [
        "bad from a",
        "another kind (99 log lines about peers were left out before this one)",
        "another source",
        "bad from b",
    ]


def test_many_sources_get_a_few_lines_a_second_in_all(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER.name)
    limiter = LogLimiter(LOGGER, interval=60.0, per_second=5.0)
    for i in range(10_000):  # 10,000 sources within 10 s
        limiter.log(logging.WARNING, (f"fd00::{i:x}", "refused"), i / 1000, "refusing %d", i)
    assert 10 <= len(caplog.records) <= 2 * 5 + 10 * 5  # the burst, then 5 a second
    said = sum(int(m[1]) for r in caplog.records if (m := HELD.search(r.getMessage())))
    assert said + limiter.suppressed + len(caplog.records) == 10_000  # every line accounted for


def test_a_level_that_is_off_costs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER.name)
    limiter = LogLimiter(LOGGER)
    assert not limiter.log(logging.DEBUG, ("h", "k"), 0.0, "hidden")
    assert limiter.log(logging.WARNING, ("h", "k"), 0.0, "shown")
    assert limiter.suppressed == 0
