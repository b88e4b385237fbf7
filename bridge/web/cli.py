"""``snom-blf-bridge status``: the panel's overview in the terminal, from the JSON API."""

from __future__ import annotations

import aiohttp

# What a Snom key shows for each state, in one character (the panel's lamps, in text).
LAMPS = {"idle": "○", "ringing": "◉ ringing", "busy": "● busy", "held": "◐ on hold",
         "unknown": "? unknown"}  # fmt: skip


Json = list[dict[str, object]]


async def fetch_status(url: str, within: float = 5.0) -> tuple[Json, str, Json, Json]:
    """The entities (with their watchers), /healthz's answer, the LED rules' phones and the
    PBXs followed (endpoint, failovers) of a running bridge."""
    base = url.rstrip("/")
    limit = aiohttp.ClientTimeout(total=within)
    async with aiohttp.ClientSession(timeout=limit) as http:
        async with http.get(f"{base}/api/entities") as response:
            response.raise_for_status()
            entities: Json = await response.json()
        async with http.get(f"{base}/healthz") as response:
            health = (await response.text()).strip() or str(response.status)
        async with http.get(f"{base}/api/leds") as response:
            phones: Json = await response.json() if response.status == 200 else []
        async with http.get(f"{base}/api/asterisk") as response:
            pbxs: Json = await response.json() if response.status == 200 else []
    return entities, health, phones, pbxs


async def fetch_findings(url: str, within: float = 5.0) -> Json:
    """What a running bridge found wrong (``/api/findings``; empty from a bridge without it)."""
    timeout = aiohttp.ClientTimeout(total=within)
    async with (
        aiohttp.ClientSession(timeout=timeout) as http,
        http.get(f"{url.rstrip('/')}/api/findings") as response,
    ):
        found: Json = await response.json() if response.status == 200 else []
    return found


def format_status(
    entities: Json, health: str, phones: Json | None = None, pbxs: Json | None = None,
    findings: Json | None = None,
) -> str:
    """One line per watched extension: its key, who calls, who watches; then one per phone of
    an LED rule: reachable or not, and where. Before them, which endpoint each PBX follows and
    what needs attention (a setting waiting for a restart)."""
    lines = [f"bridge: {health}"]
    lines += [_pbx_line(pbx) for pbx in pbxs or () if pbx.get("endpoint")]
    lines += [f"{f.get('level')}: {f.get('subject')}: {f.get('text')}"
              + (f" (fix: {f['fix']})" if f.get("fix") else "")
              for f in findings or () if f.get("level") != "ok"]  # fmt: skip
    width = max((len(str(e.get("exten", ""))) for e in entities), default=4)
    for entity in entities:
        exten = str(entity.get("exten", ""))
        lamp = LAMPS.get(str(entity.get("state", "")), str(entity.get("state", "")))
        caller = str(entity.get("caller", "") or "")
        watchers = entity.get("watchers") or []
        watched = f"  watched by {len(watchers)}" if isinstance(watchers, list) and watchers else ""
        lines.append(f"{exten:>{width}}  {lamp}{'  ' + caller if caller else ''}{watched}")
    if phones:
        lines.append("LED phones:")
        lines += [_phone_line(phone) for phone in phones]
    return "\n".join(lines)


def _pbx_line(pbx: dict[str, object]) -> str:
    """"asterisk berlin: following 10.0.0.2:5038, 1 failover" (no name in the one-PBX form)."""
    name = f" {pbx['name']}" if pbx.get("name") else ""
    moves = pbx.get("failovers")
    after = f", {moves} failover{'s' * (moves != 1)}" if isinstance(moves, int) and moves else ""
    return f"asterisk{name}: following {pbx.get('endpoint')}{after}"


def _phone_line(phone: dict[str, object]) -> str:
    """A phone of an LED rule: reachable or not, its keys, its contacts and how each is doing."""
    keys, contacts = phone.get("keys"), phone.get("contacts")
    keys_text = ", ".join(map(str, keys)) if isinstance(keys, list) else ""
    where = ", ".join(f"{c.get('uri')} ({c.get('state')})" for c in contacts
                      if isinstance(c, dict)) if isinstance(contacts, list) else ""  # fmt: skip
    if phone.get("reachable"):
        return f"  {phone.get('phone')}  reachable  keys {keys_text}  at {where}"
    return f"  {phone.get('phone')}  NOT reachable (no contact known to Asterisk)  keys {keys_text}"
