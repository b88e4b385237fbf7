"""``snom-blf-bridge status``: the panel's overview in the terminal, from the JSON API."""

from __future__ import annotations

import aiohttp

# What a Snom key shows for each state, in one character (the panel's lamps, in text).
LAMPS = {"idle": "○", "ringing": "◉ ringing", "busy": "● busy", "held": "◐ on hold",
         "unknown": "? unknown"}  # fmt: skip


async def fetch_status(url: str, within: float = 5.0) -> tuple[list[dict[str, object]], str]:
    """The entities (with their watchers) and /healthz's answer of a running bridge."""
    base = url.rstrip("/")
    limit = aiohttp.ClientTimeout(total=within)
    async with aiohttp.ClientSession(timeout=limit) as http:
        async with http.get(f"{base}/api/entities") as response:
            response.raise_for_status()
            entities: list[dict[str, object]] = await response.json()
        async with http.get(f"{base}/healthz") as response:
            health = (await response.text()).strip() or str(response.status)
    return entities, health


def format_status(entities: list[dict[str, object]], health: str) -> str:
    """One line per watched extension: its key, who calls, who watches."""
    lines = [f"bridge: {health}"]
    width = max((len(str(e.get("exten", ""))) for e in entities), default=4)
    for entity in entities:
        exten = str(entity.get("exten", ""))
        lamp = LAMPS.get(str(entity.get("state", "")), str(entity.get("state", "")))
        caller = str(entity.get("caller", "") or "")
        watchers = entity.get("watchers") or []
        watched = f"  watched by {len(watchers)}" if isinstance(watchers, list) and watchers else ""
        lines.append(f"{exten:>{width}}  {lamp}{'  ' + caller if caller else ''}{watched}")
    return "\n".join(lines)
