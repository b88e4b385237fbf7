"""``snom-blf-bridge snom-keys``: write the Snom settings of one phone or of every phone,
from the configuration alone (no Asterisk needed)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from bridge.config import ConfigError, load
from bridge.provision.site import (
    ProvisionError,
    bridge_address,
    configured_extensions,
    known_phones,
    snom_document,
)
from bridge.settings import pickup_policy

EXIT_CONFIG = 2


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], default: str) -> None:
    """The ``snom-keys`` subcommand; ``default``: the configuration file used when it exists."""
    parser = sub.add_parser(
        "snom-keys",
        help="write the Snom settings XML for the BLF and LED keys of a phone (or all phones)",
        description="Writes Snom provisioning XML: a BLF key for each watched extension "
        "(watch.extensions) pointing at the bridge, filter_registrar off, dialog-info pickup "
        "on, and the phone's [[led]] keys. The running bridge serves the same document at "
        "/snom/<phone>.xml.",
    )
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--phone", metavar="USER", help="the phone (its SIP user)")
    which.add_argument("--all", action="store_true", help="every phone the configuration names")
    parser.add_argument(
        "--config", "-c", help=f"configuration file (default: {default} if it exists)"
    )
    parser.add_argument("--out", "-o", metavar="PATH",
                        help="write there (with --all: a directory, one <phone>.xml each); "
                        "default: standard output")  # fmt: skip
    parser.add_argument("--list", action="store_true", help="only list the phones (with --all)")


def snom_keys(args: argparse.Namespace, default: str) -> int:
    """Run ``snom-keys``; returns the exit status."""
    path = args.config or (default if os.path.exists(default) else None)
    try:
        config = load(path)
        extensions = configured_extensions(config)
        address = bridge_address(config)
    except (ConfigError, ProvisionError) as exc:
        print(f"snom-keys: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    policy = pickup_policy(config)
    phones = [args.phone] if args.phone else known_phones(config)
    if args.list:
        print("\n".join(phones))
        return 0
    if args.all and not args.out:
        print("snom-keys: --all writes one file per phone: give a directory with --out",
              file=sys.stderr)  # fmt: skip
        return EXIT_CONFIG
    for phone in phones:
        document = snom_document(config, phone, extensions, policy, address)
        if args.out is None:
            sys.stdout.buffer.write(document)
            continue
        target = Path(args.out) / f"{phone}.xml" if args.all else Path(args.out)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(document)
        except OSError as exc:
            print(f"snom-keys: cannot write {target}: {exc.strerror}", file=sys.stderr)
            return 1
        print(target)
    return 0
