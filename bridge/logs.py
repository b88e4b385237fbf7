"""Log lines for where they go: under systemd the journal, which reads a ``<N>`` prefix.

systemd sets ``JOURNAL_STREAM`` when stdout/stderr is connected to the journal; a line that
starts with ``<N>`` (N a syslog priority, see sd-daemon(3)) is then stored at that priority, so
``journalctl -p warning`` shows the bridge's warnings and errors. The journal stamps each line
itself, so no time is written there.
"""

from __future__ import annotations

import logging
import os
import sys

# syslog priorities (sd-daemon(3)): emerg 0 ... err 3, warning 4, notice 5, info 6, debug 7.
PRIORITIES = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}
PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JOURNAL_FORMAT = "%(levelname)s %(name)s: %(message)s"


def priority(levelno: int) -> int:
    """The syslog priority of a logging level (levels between two take the lower one's)."""
    for level in sorted(PRIORITIES, reverse=True):
        if levelno >= level:
            return PRIORITIES[level]
    return PRIORITIES[logging.DEBUG]


class JournalFormatter(logging.Formatter):
    """Prefixes every line of a record (a traceback included) with its ``<N>`` priority, so no
    line of a multi-line record falls back to the default priority."""

    def __init__(self) -> None:
        super().__init__(JOURNAL_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).split("\n"))


def under_journal() -> bool:
    """True when stderr goes to the journal (``JOURNAL_STREAM`` names stderr's device:inode)."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    if not stream:
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        return True  # no real stderr to compare: trust the variable
    return stream == f"{st.st_dev}:{st.st_ino}"


def setup_logging(level: str) -> None:
    """The root logger on stderr: with priorities for the journal, else with timestamps."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JournalFormatter() if under_journal() else logging.Formatter(PLAIN_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler])
