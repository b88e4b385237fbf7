"""``snom-blf-bridge snom-keys`` (and ``yealink-keys``, ``poly-keys``): write the settings of
one phone or of every phone, from the configuration alone (no Asterisk needed)."""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
from pathlib import Path

import aiohttp

from bridge.config import Config, ConfigError, load
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
        parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                            help="override a setting of the file (TOML syntax)")  # fmt: skip


def snom_keys(args: argparse.Namespace, default: str) -> int:
    """Run ``snom-keys`` (or ``yealink-keys``, ``poly-keys``: ``args.command``); returns the
    exit status."""
    command = getattr(args, "command", "snom-keys")
    vendor = COMMANDS[command][0]
    suffix = VENDORS[vendor][0]
    path = args.config or (default if os.path.exists(default) else None)
    try:
        config = load(path, args.set)
        address = bridge_address(config, towards=_this_host())
    except (ConfigError, ProvisionError) as exc:
        print(f"{command}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if address.host == _this_host() and not config.snom.address and not config.sip.contact_host:
        print(f"{command}: the bridge listens on every address; the keys name {address.host} "
              "(this host's address towards the network): set snom.address if phones reach "
              "it at another", file=sys.stderr)  # fmt: skip
    if config.watch.extensions:
        extensions = configured_extensions(config)
    else:
        extensions, source = asyncio.run(pbx_extensions(config))
        if not extensions:
            print(f"{command}: watch.extensions is empty, so the keys are the extensions "
                  f"Asterisk has hints for, and {source}. Start the bridge (`make run`, or "
                  "`systemctl start snom-blf-bridge`) and run this again, or list the keys: "
                  """--set 'watch.extensions=["201", "202"]'""", file=sys.stderr)  # fmt: skip
            return 1
        print(f"{command}: keys for the {len(extensions)} extensions {source} "
              "(watch.extensions is empty)", file=sys.stderr)  # fmt: skip
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


def _this_host() -> str:
    """This host's address towards the network (the source of its default route); no packet
    is sent. Loopback when there is no route."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: routed like any outside address
            return str(probe.getsockname()[0])
        except OSError:
            return "127.0.0.1"


async def pbx_extensions(config: Config) -> tuple[list[str], str]:
    """The extensions that have keys when watch.extensions is empty: those the running bridge
    knows (its web API), else those Asterisk has hints for (asked directly); with where they
    came from, or why none could be learnt."""
    tried = []
    if config.web is not None:
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(config.web.host, config.web.host)
        url = f"http://[{host}]:{config.web.port}" if ":" in host else \
            f"http://{host}:{config.web.port}"  # fmt: skip
        try:
            limit = aiohttp.ClientTimeout(total=3)
            async with aiohttp.ClientSession(timeout=limit) as http, \
                    http.get(f"{url}/api/entities") as response:  # fmt: skip
                response.raise_for_status()
                entities = await response.json()
            names = sorted({str(e.get("exten", "")) for e in entities if isinstance(e, dict)})
            bare = [n for n in names if n and "@" not in n and ":" not in n]
            if bare:
                return bare, f"the running bridge at {url} knows"
            tried.append(f"the running bridge at {url} knows none yet")
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
            tried.append(f"no bridge answers at {url} (web.listen)")
    else:
        tried.append("web.listen is off (the running bridge cannot be asked)")
    if config.asterisk_configured and not config.demo and not config.pbxs:
        # Imported here: the live check's AMI reader, only needed on this path.
        from bridge.sitecheck import ami  # noqa: PLC0415
        from bridge.sitecheck.judge import default_context  # noqa: PLC0415

        if config.source == "ami":
            facts = await ami.read_site(config.ami.host, config.ami.port, config.ami.username,
                                        config.ami.secret, listen=0, patience=3)  # fmt: skip
            home = default_context(config, facts)
            hinted = sorted({e for e, c, _ in facts.hints or () if c == home})
            if hinted:
                return hinted, f"Asterisk has hints for in context {home}"
            tried.append(f"Asterisk at {facts.source} told none: "
                         f"{facts.login_error or 'no hints'}")  # fmt: skip
    elif not config.asterisk_configured:
        tried.append("no Asterisk is configured (ami.username is empty: the demo PBX)")
    return [], "; ".join(tried)
