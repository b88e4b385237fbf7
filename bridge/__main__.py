"""Command line: ``snom-blf-bridge run|check-config|check-site|status|led|snom-keys`` (also
``python -m bridge``)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from functools import partial

import aiohttp

from bridge import __version__
from bridge.app import run_until_signalled
from bridge.config import Config, ConfigError, demo_store, load
from bridge.demo_pbx import DemoPbx
from bridge.event_loop import EventLoopUnavailable, choose_event_loop
from bridge.heap import settle
from bridge.led.buttons import LIGHTS
from bridge.led.cli import light_key
from bridge.logs import setup_logging
from bridge.provision import cli as provision_cli
from bridge.sitecheck import cli as site_cli
from bridge.web.cli import fetch_findings, fetch_status, format_status

DEFAULT_CONFIG = "/etc/snom-blf-bridge/snom-blf-bridge.toml"
EXIT_CONFIG = 2


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and run the chosen command; returns the exit status."""
    try:
        status = _command(argv)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`status | head`): what it wanted it has; nothing more to say,
        # and Python must not complain about the unwritable stdout at exit either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return status


def _command(argv: Sequence[str] | None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_CONFIG
    if args.command == "check-config":
        return _check_config(args.file, args.set)
    if args.command == "status":
        try:
            entities, health, phones, pbxs = asyncio.run(fetch_status(args.url))
            findings = asyncio.run(fetch_findings(args.url))
        except (OSError, aiohttp.ClientError, TimeoutError) as exc:
            print(f"cannot reach the bridge at {args.url}: {exc or 'timeout'} "
                  "(is it running, and is web.listen set?)", file=sys.stderr)  # fmt: skip
            return 1
        print(format_status(entities, health, phones, pbxs, findings))
        return 0
    if args.command == "led":
        ok, what = asyncio.run(
            light_key(args.phone, args.key, args.light, label=args.label, dial=args.dial,
                      action=args.action, domain=args.domain, wait=args.wait)
        )  # fmt: skip
        print(what, file=sys.stdout if ok else sys.stderr)
        return 0 if ok else 1
    if args.command == "check-site":
        return site_cli.check_site(args)
    if args.command in provision_cli.COMMANDS:
        return provision_cli.snom_keys(args, DEFAULT_CONFIG)
    return _run(args.config, args.set, demo=args.demo)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="snom-blf-bridge",
        description="Busy Lamp Field with call pickup for Snom phones on Asterisk.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="run the bridge")
    run.add_argument(
        "--config",
        "-c",
        help=f"configuration file (default: {DEFAULT_CONFIG} if it exists, else built-in "
        "defaults, which start the demo PBX)",
    )
    run.add_argument("--demo", action="store_true", help="use the built-in demo PBX")
    _add_set(run)
    status = sub.add_parser("status", help="what a running bridge sees, from its web API")
    status.add_argument(
        "--url", default="http://127.0.0.1:9065", help="the bridge's web.listen address"
    )
    led = sub.add_parser("led", help="light one key of a Snom phone by hand (SIP MESSAGE)")
    led.add_argument("phone", help="the phone: host[:port] or a SIP URI")
    led.add_argument("key", type=int, help="the key number (as in the phone's settings)")
    led.add_argument("light", choices=sorted(LIGHTS), help="what the key shows")
    led.add_argument("--label", default="", help="the key's label")
    led.add_argument("--dial", default="", help="what the key dials when pressed")
    led.add_argument("--action", default="", help="the key's action (default: invite)")
    led.add_argument("--domain", default="", help="the SIP domain for From/To (default: phone's)")
    led.add_argument("--wait", type=float, default=5.0, metavar="SECONDS",
                     help="how long to wait for the phone's answer (default: 5)")
    check = sub.add_parser("check-config", help="validate a configuration file and exit")
    check.add_argument("file", help="configuration file to check")
    _add_set(check)
    provision_cli.add_parser(sub, DEFAULT_CONFIG)
    site_cli.add_parser(sub, DEFAULT_CONFIG)
    return parser


def _add_set(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a setting of the file (value in TOML syntax); may be repeated",
    )


def _check_config(path: str, overrides: list[str]) -> int:
    try:
        config = load(path, overrides)
    except ConfigError as exc:
        for error in exc.errors:  # every mistake at once, one line each
            print(f"{path}: error: {error}", file=sys.stderr)
        return EXIT_CONFIG
    for warning in config_warnings(config):
        print(f"{path}: warning: {warning}", file=sys.stderr)
    try:
        _, loop_name = choose_event_loop(config.event_loop)
    except EventLoopUnavailable as exc:
        print(f"{path}: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if config.demo or not config.asterisk_configured:
        mode = "demo PBX"
    elif config.source == "ari":
        mode = f"ARI {config.ari.username}@{config.ari.url}"
    else:
        mode = f"AMI {config.ami.username}@{config.ami.host}:{config.ami.port}"
    print(f"{path}: OK ({mode}, event loop {loop_name})")
    return 0


def config_warnings(config: Config) -> list[str]:
    """Settings that are valid but probably not what the installer wants."""
    warnings = []
    if not config.asterisk_configured and not config.demo:
        user = "ari.username" if config.source == "ari" else "ami.username"
        warnings.append(f"{user} is empty: the bridge will run its demo PBX, not Asterisk")
    for path in config.security.secret_files:
        try:
            mode = os.stat(path).st_mode
        except OSError:
            continue
        if mode & 0o004:
            warnings.append(f"{path} holds secrets and is readable by everyone: chmod o-r {path}")
    if config.sip.tls_key:
        try:
            mode = os.stat(config.sip.tls_key).st_mode
        except OSError:
            mode = 0
        if mode & 0o044:  # group too: a private key is for the bridge's user alone
            warnings.append(f"sip.tls_key: {config.sip.tls_key} is readable by others than its "
                            f"owner: chmod 600 {config.sip.tls_key}")  # fmt: skip
    if config.security.auth == "off" and config.security.pickup != "nobody":
        allow = ", ".join(config.security.allow)
        warnings.append(
            "security.auth is off: watchers are known by their From user, which any device can "
            f"claim, so the pickup ids are only as safe as security.allow ({allow})"
        )
    if (
        config.ami.configured
        and not config.pbxs  # several PBXs: each names its own domain
        and not config.sip.domain
        and config.ami.host in ("127.0.0.1", "::1", "localhost")
    ):
        warnings.append(
            "sip.domain is empty and ami.host is loopback: URIs in NOTIFYs will name "
            f"{config.ami.host}, which phones cannot reach; set sip.domain to the PBX address"
        )
    return warnings


def _run(path: str | None, overrides: list[str], *, demo: bool) -> int:
    if path is None and os.path.exists(DEFAULT_CONFIG):
        path = DEFAULT_CONFIG
    try:
        config = load(path, overrides)
    except ConfigError as exc:
        print(f"snom-blf-bridge: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(config.log_level)  # <N> priorities when stderr is the journal
    log = logging.getLogger("bridge")
    for warning in config_warnings(config):
        log.warning("config: %s", warning)

    def reload() -> Config:
        new = load(path, overrides)
        return demo_store(new) if _wants_demo(new, forced=demo) else new

    try:
        loop_factory, loop_name = choose_event_loop(config.event_loop)
    except EventLoopUnavailable as exc:
        print(f"snom-blf-bridge: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    log.info("event loop: %s", loop_name)
    log.debug("%d objects frozen out of the collector's way", settle())  # bridge.heap
    if _wants_demo(config, forced=demo):
        config = demo_store(config)
        log.info("demo PBX: subscriptions are kept in %s", config.store.path or "memory only")
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(run_until_signalled(config, local_pbx=partial(_demo_pbx, forced=demo),
                                           reload=reload))  # fmt: skip
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return 1
    return 0


def _demo_pbx(config: Config, *, forced: bool) -> DemoPbx | None:
    """The demo PBX when asked for (--demo, demo.enabled) or when no Asterisk is configured;
    asked again on every reload, so setting ami.username and reloading follows Asterisk."""
    return DemoPbx() if _wants_demo(config, forced=forced) else None


def _wants_demo(config: Config, *, forced: bool) -> bool:
    """--demo, demo.enabled, or no Asterisk configured: the demo PBX (and its own store)."""
    return forced or config.demo or not config.asterisk_configured


if __name__ == "__main__":
    sys.exit(main())
