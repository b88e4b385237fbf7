"""Yealink ``.cfg`` lines for BLF keys at the bridge with pickup by Replaces: pure, plain values
in, file bytes out.

A Yealink configuration file is ``key = value`` lines after the ``#!version:1.0.0.1`` header;
a line starting with ``#`` is a comment. A value runs to the end of its line, so nothing a
label holds may end it: line breaks of every kind and other control characters are dropped
(docs/YEALINK.md lists each setting and where Yealink documents it).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

HEADER = "#!version:1.0.0.1"  # must be the file's first line (Yealink's provisioning guide)
BLF = 16  # linekey.N.type of a BLF key
# Whatever could end a line or hide in one: C0/C1 controls, DEL, Unicode line/paragraph breaks.
_NOT_IN_A_LINE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ufeff]")


@dataclass(frozen=True, slots=True)
class LineKey:
    """One BLF line key: its index (``linekey.N``), the extension it watches, its label."""

    index: int
    exten: str
    label: str


def render(account: int, keys: Sequence[LineKey], *, list_uri: str = "", phone: str = "") -> bytes:
    """The ``.cfg`` for one phone: dialog-info pickup on for ``account``, then either one BLF
    list (``list_uri``) or a BLF key per extension on that account."""
    lines = [HEADER, f"# snom-blf-bridge: BLF keys of {_value(phone) or 'a phone'}"]
    prefix = f"account.{account}"
    lines.append(f"{prefix}.dialoginfo_callpickup = 1")  # INVITE with Replaces from the NOTIFY
    lines.append(f"{prefix}.blf.subscribe_event = 0")  # Event: dialog (not presence)
    if list_uri:
        lines.append(f"{prefix}.blf.blf_list_uri = {_value(list_uri)}")
    else:
        for key in keys:
            lines += [
                f"linekey.{key.index}.type = {BLF}",
                f"linekey.{key.index}.line = {account}",
                f"linekey.{key.index}.value = {_value(key.exten)}",
                f"linekey.{key.index}.label = {_value(key.label)}",
            ]
    return ("\n".join(lines) + "\n").encode("utf-8")


def _value(text: str) -> str:
    # Spaces around a value are not kept by the phone: trim them here too, so what is tested
    # is what the phone reads.
    return _NOT_IN_A_LINE.sub("", text).strip()
