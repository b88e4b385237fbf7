"""``snom-blf-bridge check-site``: the live check, one line per check, and an exit status for
scripts: 0 all passed, 1 a check failed, 2 the configuration cannot be read (as every command),
3 nothing failed but something needs a look (warnings)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from bridge.config import AmiConfig, AriConfig, Config, ConfigError, demo_store, load
from bridge.findings import Finding
from bridge.sitecheck import ami, ari
from bridge.sitecheck.facts import SiteFacts
from bridge.sitecheck.judge import judge
from bridge.sitecheck.local import check_listeners, check_store

EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_WARNINGS = 0, 1, 2, 3
LABELS = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], default: str) -> None:
    """The ``check-site`` command's options."""
    check = sub.add_parser(
        "check-site",
        help="check the site live: Asterisk's manager user, hints, pickup groups, the bridge's "
        "listeners and store (exit 0 ok, 1 failed, 3 warnings)",
    )
    check.add_argument("--config", "-c", default=default, help=f"the bridge's configuration "
                       f"(default: {default})")  # fmt: skip
    check.add_argument("--listen", type=float, default=3.0, metavar="SECONDS",
                       help="how long to listen for Asterisk's events (default: 3)")  # fmt: skip
    check.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS",
                       help="how long to wait for each answer (default: 5)")  # fmt: skip
    check.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="override a setting of the file (value in TOML syntax)")  # fmt: skip


def check_site(args: argparse.Namespace) -> int:
    """Run the live check with the parsed options; print every finding; the exit status."""
    try:
        config = load(args.config, args.set)
    except ConfigError as exc:
        print(f"{args.config}: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    found = asyncio.run(site_findings(config, listen=args.listen, patience=args.timeout))
    print_findings(found)
    return exit_status(found)


def exit_status(found: Sequence[Finding]) -> int:
    """0 when everything passed, 1 when a check failed, 3 when only warnings are left."""
    levels = {f.level for f in found}
    return EXIT_FAILED if "fail" in levels else EXIT_WARNINGS if "warn" in levels else EXIT_OK


def print_findings(found: Sequence[Finding]) -> None:
    """One line per finding; a failing or warning one ends with its fix."""
    width = max((len(f.subject) for f in found), default=0)
    for f in found:
        fix = f" → fix: {f.fix}" if f.fix and f.level != "ok" else ""
        print(f"{LABELS[f.level]} {f.subject:<{width}}  {f.text}{fix}")
    counts = {level: sum(1 for f in found if f.level == level) for level in LABELS}
    print(f"{counts['ok']} ok, {counts['warn']} warning(s), {counts['fail']} failed")


async def site_findings(config: Config, *, listen: float = 3.0,
                        patience: float = 5.0) -> list[Finding]:  # fmt: skip
    """Every finding of the live check for this configuration."""
    found: list[Finding] = []
    if config.demo or not config.asterisk_configured:
        config = demo_store(config)  # where the demo keeps its subscriptions
        user = "ari.username" if config.source == "ari" else "ami.username"
        found.append(Finding("fail", "asterisk", f"{user} is empty: the bridge runs its demo "
                             "PBX, not this site's Asterisk", f"set {user} and its secret in "
                             f"{config.source_file or 'the configuration'}, then "
                             "`systemctl reload snom-blf-bridge`"))  # fmt: skip
    else:
        aors = sorted({rule.phone for rule in config.leds})
        for name, source, ami_config, ari_config in _pbxs(config):
            if source == "ari":
                facts: SiteFacts = await ari.read_site(
                    ari_config.url, ari_config.username, ari_config.password, ari_config.app,
                    aors, listen=min(listen, 1.0), patience=patience)  # fmt: skip
            else:
                facts = await ami.read_site(
                    ami_config.host, ami_config.port, ami_config.username, ami_config.secret,
                    listen=listen, patience=patience)  # fmt: skip
            if name:
                facts.source = f"{name}: {facts.source}"
            found += judge(config, facts)
    found += await check_listeners(config, patience=min(patience, 2.0))
    found.append(check_store(config))
    return found


def _pbxs(config: Config) -> list[tuple[str, str, AmiConfig, AriConfig]]:
    if config.pbxs:
        return [(p.name, p.source, p.ami, p.ari) for p in config.pbxs]
    return [("", config.source, config.ami, config.ari)]
