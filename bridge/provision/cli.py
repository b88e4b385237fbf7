"""``snom-blf-bridge snom-keys`` (and ``yealink-keys``, ``poly-keys``): write the settings of
one phone or of every phone, from the configuration alone (no Asterisk needed)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from bridge.config import ConfigError, load
from bridge.provision.site import (
    VENDORS,
    ProvisionError,
    bridge_address,
    configured_extensions,
    known_phones,
    phone_document,
)
from bridge.settings import pickup_policy

EXIT_CONFIG = 2


# command → (vendor, what it writes, what the running bridge serves)
COMMANDS = {
    "snom-keys": ("snom", "the Snom settings XML for the BLF and LED keys",
                  "a BLF key for each watched extension (watch.extensions) pointing at the "
                  "bridge, filter_registrar off, dialog-info pickup on, and the phone's [[led]] "
                  "keys", "/snom/<phone>.xml"),
    "yealink-keys": ("yealink", "the Yealink .cfg lines for the BLF keys",
                     "a BLF line key (linekey.N.type = 16) for each watched extension on "
                     "yealink.account, or its BLF list (yealink.blf_list), and dialog-info "
                     "pickup on (account.X.dialoginfo_callpickup = 1)", "/yealink/<phone>.cfg"),
    "poly-keys": ("poly", "the Poly configuration XML for the BLF resources",
                  "an attendant.resourceList.N entry at the bridge for each watched extension, "
                  "or one list (poly.blf_list), and native directed call pickup",
                  "/poly/<phone>.xml"),
}  # fmt: skip


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], default: str) -> None:
    """The ``snom-keys``, ``yealink-keys`` and ``poly-keys`` subcommands; ``default``: the
    configuration file used when it exists."""
    for command, (_, what, details, served) in COMMANDS.items():
        parser = sub.add_parser(
            command,
            help=f"write {what} of a phone (or all phones)",
            description=f"Writes {details}. The running bridge serves the same document at "
            f"{served}.",
        )
        which = parser.add_mutually_exclusive_group(required=True)
        which.add_argument("--phone", metavar="USER", help="the phone (its SIP user)")
        which.add_argument("--all", action="store_true",
                           help="every phone the configuration names")  # fmt: skip
        parser.add_argument(
            "--config", "-c", help=f"configuration file (default: {default} if it exists)"
        )
        parser.add_argument("--out", "-o", metavar="PATH",
                            help="write there (with --all: a directory, one file per phone); "
                            "default: standard output")  # fmt: skip
        parser.add_argument("--list", action="store_true",
                            help="only list the phones (with --all)")  # fmt: skip


def snom_keys(args: argparse.Namespace, default: str) -> int:
    """Run ``snom-keys`` (or ``yealink-keys``, ``poly-keys``: ``args.command``); returns the
    exit status."""
    command = getattr(args, "command", "snom-keys")
    vendor = COMMANDS[command][0]
    suffix = VENDORS[vendor][0]
    path = args.config or (default if os.path.exists(default) else None)
    try:
        config = load(path)
        extensions = configured_extensions(config)
        address = bridge_address(config)
    except (ConfigError, ProvisionError) as exc:
        print(f"{command}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    policy = pickup_policy(config)
    phones = [args.phone] if args.phone else known_phones(config)
    if args.list:
        print("\n".join(phones))
        return 0
    if args.all and not args.out:
        print(f"{command}: --all writes one file per phone: give a directory with --out",
              file=sys.stderr)  # fmt: skip
        return EXIT_CONFIG
    for phone in phones:
        document = phone_document(config, phone, extensions, policy, address, vendor=vendor)
        if args.out is None:
            sys.stdout.buffer.write(document)
            continue
        target = Path(args.out) / f"{phone}.{suffix}" if args.all else Path(args.out)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(document)
        except OSError as exc:
            print(f"{command}: cannot write {target}: {exc.strerror}", file=sys.stderr)
            return 1
        print(target)
    return 0
