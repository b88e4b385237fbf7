"""The manual page, snom-blf-bridge(1), written from the command line's own argparse parser, so
the page and ``--help`` cannot disagree. ``python -m bridge.manpage > man/snom-blf-bridge.1``
regenerates the shipped page (a test checks it is current)."""

from __future__ import annotations

import argparse
import sys

from bridge import __version__
from bridge.__main__ import DEFAULT_CONFIG, _parser

SECTIONS_AFTER = f"""\
.SH FILES
.TP
.I {DEFAULT_CONFIG}
The configuration (TOML); every setting is documented in the shipped example file.
.SH SIGNALS
.TP
.B SIGHUP
Read the configuration again (\\fBsystemctl reload\\fR), the TLS certificate and key included,
without dropping a subscription; a broken file is refused and the running configuration kept.
.TP
.B SIGTERM
Store every subscription and stop; the next start resumes them.
.SH ENVIRONMENT
.TP
.B JOURNAL_STREAM
Set by systemd when standard error is the journal: log lines then start with their syslog
priority (\\fB<4>\\fR warning, \\fB<3>\\fR error, ...), so \\fBjournalctl -p\\fR filters them.
.TP
.B CREDENTIALS_DIRECTORY
Where relative secret file names are looked up first (systemd \\fBLoadCredential=\\fR).
.SH EXIT STATUS
0 on success, 1 when the bridge cannot start or a command fails, 2 for a configuration error.
.SH SEE ALSO
.BR systemctl (1),
.BR journalctl (1),
.BR asterisk (8)
"""


def render(parser: argparse.ArgumentParser | None = None) -> str:
    """The whole page in roff (man macros)."""
    parser = parser or _parser()
    name = parser.prog
    out = [
        f'.TH {name.upper()} 1 "" "{name} {__version__}" "User Commands"',
        ".SH NAME",
        f"{_roff(name)} \\- {_roff(parser.description or '')}",
        ".SH SYNOPSIS",
    ]
    commands = _commands(parser)
    for command, sub in commands:
        out.append(f".B {name} {command}")
        out.append(_roff(_usage_args(sub)))
        out.append(".br")
    out += [".SH COMMANDS"]
    for command, sub in commands:
        out += [".TP", f".B {command}", _roff(sub.description or _help_of(parser, command))]
    for command, sub in commands:
        options = [a for a in sub._actions if not isinstance(a, argparse._HelpAction)]
        if not options:
            continue
        out.append(f".SH OPTIONS OF {command.upper()}")
        for action in options:
            out += [".TP", _option_heading(action), _roff(action.help or "")]
    return "\n".join(out) + "\n" + SECTIONS_AFTER


def _commands(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return list(action.choices.items())
    return []


def _help_of(parser: argparse.ArgumentParser, command: str) -> str:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                if choice.dest == command:
                    return choice.help or ""
    return ""


def _usage_args(parser: argparse.ArgumentParser) -> str:
    usage = parser.format_usage().split(None, 1)[1]  # drop "usage:"
    return " ".join(usage.split()[len(parser.prog.split()):])


def _option_heading(action: argparse.Action) -> str:
    if not action.option_strings:
        return f".I {action.dest}"
    metavar = "" if action.nargs == 0 else f" \\fI{action.metavar or action.dest.upper()}\\fR"
    return ", ".join(f"\\fB{_roff(o)}\\fR{metavar}" for o in action.option_strings)


def _roff(text: str) -> str:
    """Text safe in roff: backslashes and hyphens escaped, no line starting with a dot."""
    text = " ".join(text.replace("%(prog)s", "snom-blf-bridge").split())
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\\&" + text if text.startswith((".", "'")) else text


if __name__ == "__main__":
    sys.stdout.write(render())
