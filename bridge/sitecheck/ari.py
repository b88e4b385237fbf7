"""Read a site's Asterisk over ARI for the live check: the same calls the ARI source makes
(the event websocket, endpoints, their configuration, the LED phones' AORs)."""

from __future__ import annotations

import urllib.parse

import aiohttp
from yarl import URL

from bridge.asterisk.ari import AOR_CONFIG, ENDPOINT_CONFIG, _ari_base, _config_groups, _pjsip_names
from bridge.asterisk.ari_events import aor_contacts
from bridge.events import ContactChanged
from bridge.sitecheck.facts import Endpoint, SiteFacts

ENABLE = ("in http.conf: `enabled = yes` and `bindaddr`/`bindport`; in ari.conf: `[general]` "
          "`enabled = yes` and a user section; then `asterisk -rx 'module reload res_ari.so'`")


async def read_site(url: str, username: str, password: str, app: str, aors: list[str], *,
                    listen: float = 1.0, patience: float = 5.0) -> SiteFacts:  # fmt: skip
    """Everything the live check needs from Asterisk's REST interface at ``url``."""
    base = _ari_base(url)
    facts = SiteFacts(f"ARI {username}@{base}", "ari")
    authorization = {"Authorization": aiohttp.encode_basic_auth(username, password)}
    limit = aiohttp.ClientTimeout(total=patience)
    async with aiohttp.ClientSession(headers=authorization, timeout=limit) as http:

        async def get(target: URL) -> tuple[int, object]:
            async with http.get(target) as response:
                try:
                    return response.status, await response.json(content_type=None)
                except ValueError:
                    return response.status, None

        try:
            status, endpoints = await get(base / "endpoints")
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            facts.login_error = f"cannot connect: {exc or 'patience'}"
            facts.login_fix = ENABLE + "; ari.url names it"
            return facts
        if status == 401:
            facts.login_error = f"login as {username!r} refused (401)"
            facts.login_fix = (f"ari.conf needs a section [{username}] with `type = user` and "
                               "`password` = ari.password; `asterisk -rx 'ari show users'` "
                               "lists them")  # fmt: skip
            return facts
        if status != 200 or not isinstance(endpoints, list):
            facts.login_error = f"GET /ari/endpoints answered HTTP {status}"
            facts.login_fix = "is ari.url Asterisk's HTTP server? " + ENABLE
            return facts
        try:
            events = (base / "events").with_query(app=app, subscribeAll="true")
            async with http.ws_connect(events) as ws:
                facts.booted = True
                try:
                    message = await ws.receive(timeout=listen)
                    if message.type == aiohttp.WSMsgType.TEXT:
                        facts.events_seen += 1
                except TimeoutError:
                    pass
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            facts.notes.append(f"event websocket: {exc}")
        facts.listened = listen
        found = {}
        for name in _pjsip_names(endpoints):
            target = base.joinpath(*ENDPOINT_CONFIG, urllib.parse.quote(name, safe=""),
                                   encoded=True)  # fmt: skip
            status, body = await get(target)
            if status == 403:
                facts.denied["GET /ari/asterisk/config"] = "403 Forbidden"
                break
            groups = _config_groups(body) if status == 200 else None
            call, pickup, subscribe_context, own_context, _callerid = groups or (
                frozenset(), frozenset(), "", "", "")
            found[name] = Endpoint(name, own_context, subscribe_context, call, pickup)
        else:
            facts.endpoints = found
        contacts: dict[str, list[str]] = {}
        for aor in aors:
            target = base.joinpath(*AOR_CONFIG, urllib.parse.quote(aor, safe=""), encoded=True)
            status, body = await get(target)
            if status == 200:
                contacts[aor] = [e.uri for e in aor_contacts(aor, body)
                                 if isinstance(e, ContactChanged)]  # fmt: skip
        facts.contacts = contacts
    return facts
