"""From what the live check read to findings, one per line, each failing one with its fix.
Pure: no I/O, so every verdict is tested without an Asterisk."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable

from bridge.config import Config
from bridge.dialplan import DialplanResolver
from bridge.findings import Finding, pickup_group_finding
from bridge.sitecheck.facts import SiteFacts

RELOAD_AMI = "then `asterisk -rx 'manager reload'`"
# What AMI's actions need (Asterisk's manager.c / res_pjsip): Getvar reads the pickup ids,
# the lists resync the keys, PJSIPShow* read pickup groups and phones' registrations.
RIGHTS = {
    "Getvar": "write = call",  # or reporting; call also lets ParkedCalls tell parked callers
    "ParkedCalls": "write = call",
    "ExtensionStateList": "write = call",
    "DeviceStateList": "write = call",
    "CoreShowChannels": "write = call",
    "PJSIPShowEndpoints": "write = system",
    "PJSIPShowEndpoint": "write = system",
    "PJSIPShowContacts": "write = system",
    "PJSIPShowAors": "write = system",
    "ShowDialPlan": "write = reporting",  # or config: the includes a phone's keys resolve through
}


def judge(config: Config, facts: SiteFacts) -> list[Finding]:
    """Every finding about Asterisk: login, rights, events, hints, endpoints, LED phones."""
    if facts.login_error:
        return [Finding("fail", "login", f"{facts.source}: {facts.login_error}", facts.login_fix)]
    found = [Finding("ok", "login", f"{facts.source}: logged in")]
    found += _rights(facts)
    found += _events(facts)
    found += _hints(config, facts)
    found += _endpoints(config, facts)
    found += _led_phones(config, facts)
    return found


def _rights(facts: SiteFacts) -> list[Finding]:
    ami = facts.kind == "ami"
    out = []
    for action, why in sorted(facts.denied.items()):
        if ami:
            right = RIGHTS.get(action, "write = system,call")
            fix = f"add `{right}` to the user's section of manager.conf, {RELOAD_AMI}"
            what = {"Getvar": "the pickup ids of ringing calls",
                    "ParkedCalls": "the callers waiting in parking spaces"}.get(
                action, "the keys' state after each (re)connect")  # fmt: skip
        else:
            fix = ("give the ari.conf user `read_only = no`, then "
                   "`asterisk -rx 'module reload res_ari.so'`")
            what = "what the bridge reads"
        out.append(Finding("fail", "manager rights", f"{action} refused ({why}): needed for {what}",
                           fix))  # fmt: skip
    if not out:
        text = "every action the bridge sends is allowed"
        if ami and facts.getvar_checked:
            text += " (Getvar: write = call)"
        out.append(Finding("ok", "manager rights", text))
    return out


def _events(facts: SiteFacts) -> list[Finding]:
    if facts.kind != "ami":
        if facts.events_seen or facts.booted:
            return [Finding("ok", "events", "the event websocket is open")]
        return [Finding("fail", "events", "the event websocket did not open",
                        "check `enabled = yes` in ari.conf and http.conf, and the app name "
                        "(ari.app)")]  # fmt: skip
    out = []
    if facts.booted or "system" in facts.event_classes:
        out.append(Finding("ok", "events", "system events arrive (read = system)"))
    else:
        out.append(Finding("fail", "events", "no system event arrived (no FullyBooted at login)",
                           f"add `read = system,call` to the user's section of manager.conf, "
                           f"{RELOAD_AMI}"))  # fmt: skip
    calls = sum(1 for c in facts.event_classes if c == "call")
    if calls:
        out.append(Finding("ok", "events", f"call events arrive ({facts.events_seen} events in "
                                           f"{facts.listened:g} s)"))  # fmt: skip
    else:
        out.append(Finding("warn", "events", f"no call event in {facts.listened:g} s: an idle "
                           "PBX sends none, a user without `read = call` never gets one",
                           "make a call while the check listens (--listen 30); if none shows, "
                           f"add `read = system,call` to manager.conf, {RELOAD_AMI}"))  # fmt: skip
    return out


def default_context(config: Config, facts: SiteFacts) -> str:
    """The context whose keys go by their bare extension: watch.context, else the one with the
    most hints (as the tracker chooses)."""
    if config.watch.context:
        return config.watch.context
    counts = Counter(context for _, context, _ in facts.hints or ())
    return counts.most_common(1)[0][0] if counts else ""


def _hints(config: Config, facts: SiteFacts) -> list[Finding]:
    if facts.hints is None:
        if config.hints or facts.kind != "ami":
            keys = len(config.hints)
            return [Finding("ok", "hints", "ARI lists no hints: every PJSIP endpoint is a key"
                            + (f", and {keys} from [hints]" if keys else ""))]  # fmt: skip
        return [Finding("fail", "hints", "the hints could not be read",
                        "see the manager rights above")]  # fmt: skip
    if not facts.hints:
        return [Finding("fail", "hints", "Asterisk has no hints: no key can be watched",
                        "add `exten => 201,hint,PJSIP/201` (one per extension) to the "
                        "dialplan of the phones' context, then "
                        "`asterisk -rx 'dialplan reload'`")]  # fmt: skip
    by_context: dict[str, list[str]] = defaultdict(list)
    for exten, context, _ in facts.hints:
        by_context[context].append(exten)
    home = default_context(config, facts)
    out = []
    for context in sorted(by_context, key=lambda c: (c != home, c)):
        extens = sorted(by_context[context])
        shown = ", ".join(extens[:12]) + (f" … ({len(extens)})" if len(extens) > 12 else "")
        how = "by their bare extension" if context == home else f"as <exten>@{context}"
        out.append(Finding("ok", "hints", f"context {context}: {shown} (keys go {how})"))
    if config.watch.context and config.watch.context not in by_context:
        out.append(Finding("fail", "hints", f"watch.context is {config.watch.context!r}, which "
                           "has no hints", f"set watch.context to one of: "
                           f"{', '.join(sorted(by_context))}"))  # fmt: skip
    missing = sorted((config.watch.extensions or frozenset()) - set(by_context.get(home, ())))
    for exten in missing:
        out.append(Finding("fail", f"extension {exten}", f"watch.extensions lists {exten}, "
                           f"which has no hint in context {home}",
                           f"add `exten => {exten},hint,PJSIP/{exten}` to [{home}] in the "
                           "dialplan, or drop it from watch.extensions"))  # fmt: skip
    return out


def _endpoints(config: Config, facts: SiteFacts) -> list[Finding]:
    if facts.endpoints is None:
        return [Finding("warn", "endpoints", "the PJSIP endpoints could not be read: pickup "
                        "groups and contexts unchecked", "see the manager rights above")]
    if not facts.endpoints:
        return [Finding("warn", "endpoints", "Asterisk has no PJSIP endpoints")]
    out = []
    home = default_context(config, facts)
    watch: dict[str, list[str]] = defaultdict(list)
    for endpoint in sorted(facts.endpoints.values(), key=lambda e: e.name):
        # Where Asterisk resolves its SUBSCRIBEs: subscribe_context, else context.
        watch[endpoint.subscribe_context or endpoint.context or home].append(endpoint.name)
    reach = _reach(facts)
    for start, names in sorted(watch.items()):
        shown = ", ".join(names[:12]) + (f" … ({len(names)})" if len(names) > 12 else "")
        if reach is None:
            out.append(Finding("ok", "keys", f"phones {shown} watch from context {start or '?'}"))
            continue
        found = reach(start)
        if not found:
            out.append(Finding("warn", "keys", f"phones {shown} watch from context {start}, "
                               "which reaches no hint (itself or through its includes): Asterisk "
                               "answers their SUBSCRIBEs 404 and so does the bridge",
                               "add the hints to that context or include the context that "
                               "holds them (`include => ext-local`), or set subscribe_context "
                               "in pjsip.conf"))  # fmt: skip
            continue
        where = ", ".join(f"{ctx} ({n})" for ctx, n in sorted(found.items()))
        out.append(Finding("ok", "keys", f"phones {shown} watch from context {start}: the "
                           f"hints of {where}"))  # fmt: skip
    mode = config.security.pickup
    if mode != "group":
        out.append(Finding("ok", "pickup groups", f"not used (security.pickup = {mode!r})"))
        return out
    missing = [f for e in sorted(facts.endpoints.values(), key=lambda e: e.name)
               if (f := pickup_group_finding(e.name, e.call_groups, e.pickup_groups)) is not None]
    out += missing
    if not missing:
        out.append(Finding("ok", "pickup groups", f"all {len(facts.endpoints)} endpoints have "
                           "call_group and pickup_group"))  # fmt: skip
    return out


def _reach(facts: SiteFacts) -> Callable[[str], dict[str, int]] | None:
    """For a context a phone watches from: how many of its keys each context supplies, found
    as the bridge and Asterisk find them (bridge.dialplan: its hints, then its includes). None
    without the includes (ARI, or ShowDialPlan refused): the check cannot tell."""
    if facts.hints is None or facts.dialplan is None:
        return None
    resolver = DialplanResolver()
    resolver.set_dialplan(facts.dialplan.includes, facts.dialplan.pattern_hints)
    for exten, context, _ in facts.hints:
        resolver.add_hint(context, exten)
    extens = sorted({exten for exten, _, _ in facts.hints})

    def reach(start: str) -> dict[str, int]:
        return dict(Counter(c for e in extens if (c := resolver.find(start, e)) is not None))

    return reach


def _led_phones(config: Config, facts: SiteFacts) -> list[Finding]:
    phones = sorted({rule.phone for rule in config.leds})
    if not phones:
        return []
    if facts.contacts is None:
        return [Finding("warn", "LED phones", "the phones' registrations could not be read",
                        "see the manager rights above")]  # fmt: skip
    out = []
    for phone in phones:
        contacts = facts.contacts.get(phone, [])
        if contacts:
            out.append(Finding("ok", f"LED phone {phone}", f"registered ({', '.join(contacts)})"))
        elif phone in facts.contacts:
            out.append(Finding("warn", f"LED phone {phone}", "not registered: its LED keys "
                               "are lit once it registers", "check the phone is on and "
                               f"registers to AOR {phone}"))  # fmt: skip
        else:
            out.append(Finding("fail", f"LED phone {phone}", f"Asterisk has no AOR {phone} "
                               "([[led]] phone)", "name the phone by its PJSIP AOR in the "
                               "[[led]] rule"))  # fmt: skip
    return out
