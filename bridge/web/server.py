"""The HTTP side output: metrics, health, JSON, server-sent events and the live key panel."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import importlib.resources
import ipaddress
import json
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from aiohttp import web

from bridge.web.metrics import CONTENT_TYPE, MetricsSnapshot, render_metrics
from bridge.web.status import (
    Counters,
    EntityStatus,
    LedPhoneStatus,
    PbxHealth,
    StatusView,
    SubscriptionStatus,
)

if TYPE_CHECKING:  # bridge.provision.web reads bridge.web.status: no import cycle at run time
    from bridge.provision.web import SnomDocuments

VIEW: web.AppKey[StatusView] = web.AppKey("view")
STOPPING = web.AppKey("stopping", asyncio.Event)
PANEL = web.AppKey("panel", bytes)
PANEL_CSP = web.AppKey("panel_csp", str)
HOSTS = web.AppKey("hosts", frozenset[str])
SNOM: web.AppKey[SnomDocuments] = web.AppKey("snom")

# A comment line this often keeps proxies from closing an idle stream and finds dead clients.
SSE_KEEPALIVE = 15.0
NO_CACHE = {"Cache-Control": "no-store"}


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def host_name(host: str) -> str:
    """The name part of a Host header value: without the port, IPv6 brackets kept off."""
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def served(host: str, names: frozenset[str]) -> bool:
    """Whether a request naming ``host`` is ours: an address (a browser rebinding a name of
    its own to this address sends the name, never an address), localhost, or a listed name."""
    name = host_name(host).strip().lower().rstrip(".")
    if name in ("localhost", *names):
        return True
    try:
        ipaddress.ip_address(name.split("%", 1)[0])
    except ValueError:
        return False
    return True


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse requests for other host names (DNS rebinding: a web page whose name now points
    at this address could read the JSON from an admin's browser)."""
    if not served(request.host, request.app[HOSTS]):
        return web.Response(
            status=421,
            text=f"this server does not answer for {host_name(request.host)!r}: "
            "add it to web.hosts\n",
            headers=NO_CACHE,
        )
    return await handler(request)


async def _nosniff(request: web.Request, response: web.StreamResponse) -> None:
    """Every answer, streams and errors included: browsers must take the declared type."""
    response.headers["X-Content-Type-Options"] = "nosniff"


def make_app(
    view: StatusView, hosts: Sequence[str] = (), snom: SnomDocuments | None = None
) -> web.Application:
    """The web endpoint over a running bridge's ``StatusView``; ``hosts``: names it answers
    for besides addresses and localhost (web.hosts); ``snom``: serves /snom/<phone>.xml,
    /yealink/<phone>.cfg and /poly/<phone>.xml."""
    app = web.Application(middlewares=[guard])
    app[HOSTS] = frozenset(h.lower().rstrip(".") for h in hosts)
    app[VIEW] = view
    app[STOPPING] = asyncio.Event()
    app[PANEL] = importlib.resources.files("bridge.web").joinpath("panel.html").read_bytes()
    app[PANEL_CSP] = _panel_csp(app[PANEL].decode())
    app.router.add_get("/", panel)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/api/entities", api_entities)
    app.router.add_get("/api/subscriptions", api_subscriptions)
    app.router.add_get("/api/leds", api_leds)
    app.router.add_get("/api/asterisk", api_asterisk)
    app.router.add_get("/api/status", api_status)
    app.router.add_get("/api/findings", api_findings)
    app.router.add_get("/events", events)
    if snom is not None:
        app[SNOM] = snom
        app.router.add_get("/snom/{phone}.xml", snom_settings)
        app.router.add_get("/yealink/{phone}.cfg", yealink_settings)
        app.router.add_get("/poly/{phone}.xml", poly_settings)
    app.on_shutdown.append(_stop_streams)
    app.on_response_prepare.append(_nosniff)
    return app


async def start_web(
    view: StatusView,
    host: str,
    port: int,
    hosts: Sequence[str] = (),
    snom: SnomDocuments | None = None,
) -> web.AppRunner:
    """Serve ``make_app(view)`` on host:port (port 0: any); ``await runner.cleanup()`` stops it.
    The bound address is ``runner.addresses[0]``."""
    # Short shutdown: the only long requests are event streams, and they end on shutdown.
    runner = web.AppRunner(make_app(view, hosts, snom), handle_signals=False, shutdown_timeout=2.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


def entities_json(view: StatusView) -> list[dict[str, object]]:
    """Every entity with the watchers of its key, as the panel and /api/entities show them."""
    watchers: dict[str, list[str]] = {}
    for sub in view.subscriptions():
        watchers.setdefault(sub.resource, []).append(sub.watcher)
    return [_entity(e, sorted(set(watchers.get(e.exten, ())))) for e in view.entities()]


def _entity(e: EntityStatus, watchers: Sequence[str]) -> dict[str, object]:
    return {
        "exten": e.exten,
        "state": e.state,
        "activity": e.activity,
        "label": e.label,
        "number": e.number or e.exten,
        "pbx": e.pbx,
        "context": e.context,
        "groups": list(e.groups),
        "caller": e.caller,
        "dialogs": [dict(d) for d in e.dialogs],
        "watchers": list(watchers),
    }


def status_json(view: StatusView) -> dict[str, object]:
    """The panel's top line: each PBX connected and in sync, the bridge's own figures and the
    site findings that need attention."""
    counters = view.counters()
    return {
        "pbxs": [
            {"name": p.name, "connected": p.connected, "synced": p.synced, "endpoint": p.endpoint}
            for p in _pbxs(counters)
        ],
        "bridge": {
            "subscriptions": counters.subscriptions,
            "notifies_sent": counters.notifies_sent,
            "notifies_failed": counters.notifies_failed,
        },
        "findings": [dataclasses.asdict(f) for f in view.attention()],
    }


def _pbxs(counters: Counters) -> tuple[PbxHealth, ...]:
    """Each PBX followed; the one-PBX form as one unnamed PBX."""
    return counters.pbxs or (PbxHealth("", counters.ami_connected, counters.synced,
                                       counters.events_total, counters.endpoint,
                                       counters.failovers),)  # fmt: skip


def _subscription(s: SubscriptionStatus) -> dict[str, object]:
    return {
        "resource": s.resource,
        "watcher": s.watcher,
        "peer": s.peer,
        "expires_in": round(s.expires_in, 1),
    }


async def panel(request: web.Request) -> web.Response:
    """The live key panel: one self-contained page."""
    headers = {
        **NO_CACHE,
        "Content-Security-Policy": request.app[PANEL_CSP],
        "X-Content-Type-Options": "nosniff",
    }
    return web.Response(
        body=request.app[PANEL], content_type="text/html", charset="utf-8", headers=headers
    )


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition format 0.0.4: the bridge's figures and the process's."""
    snapshot = MetricsSnapshot.of(request.app[VIEW])  # on the loop: the view is not thread-safe
    body = await asyncio.to_thread(render_metrics, snapshot)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE, **NO_CACHE})


async def snom_settings(request: web.Request) -> web.Response:
    """A Snom phone's settings XML (its BLF and LED keys), read-only."""
    return _phone_settings(request, "snom", "application/xml")


async def yealink_settings(request: web.Request) -> web.Response:
    """A Yealink phone's ``.cfg`` lines for its BLF keys, read-only."""
    return _phone_settings(request, "yealink", "text/plain")


async def poly_settings(request: web.Request) -> web.Response:
    """A Poly phone's configuration XML for its BLF resources, read-only."""
    return _phone_settings(request, "poly", "application/xml")


def _phone_settings(request: web.Request, vendor: str, content_type: str) -> web.Response:
    phone = request.match_info["phone"]
    answer = request.app[SNOM].answer(phone, request.remote or "", vendor)
    if answer.status != 200:
        return web.Response(status=answer.status, body=answer.body, headers=NO_CACHE)
    return web.Response(body=answer.body, content_type=content_type, charset="utf-8",
                        headers=NO_CACHE)  # fmt: skip


async def healthz(request: web.Request) -> web.Response:
    """200 while Asterisk is connected and synced (the keys are current), 503 otherwise."""
    counters = request.app[VIEW].counters()
    if counters.ami_connected and counters.synced:
        return web.Response(text="ok\n", headers=NO_CACHE)
    why = "asterisk not connected" if not counters.ami_connected else "asterisk not synced yet"
    if counters.pbxs:  # several PBXs: which
        why += ": " + ", ".join(p.name for p in counters.pbxs if not (p.connected and p.synced))
    return web.Response(status=503, text=why + "\n", headers=NO_CACHE)


async def api_entities(request: web.Request) -> web.Response:
    """Every watchable extension, its key state, dialogs and watchers."""
    return web.json_response(entities_json(request.app[VIEW]), headers=NO_CACHE)


async def api_asterisk(request: web.Request) -> web.Response:
    """Each PBX followed (one, unnamed, in the one-PBX form): its health, the AMI/ARI endpoint
    its state comes from and how often it moved to a standby."""
    pbxs = _pbxs(request.app[VIEW].counters())
    return web.json_response([dataclasses.asdict(p) for p in pbxs], headers=NO_CACHE)


async def api_status(request: web.Request) -> web.Response:
    """What the panel shows at its top (the stream's ``status`` events say the same)."""
    return web.json_response(status_json(request.app[VIEW]), headers=NO_CACHE)


async def api_findings(request: web.Request) -> web.Response:
    """What the bridge found wrong while running, e.g. settings changed in the file that only
    a restart takes over (each with its fix)."""
    found = [dataclasses.asdict(f) for f in request.app[VIEW].findings()]
    return web.json_response(found, headers=NO_CACHE)


async def api_subscriptions(request: web.Request) -> web.Response:
    """Every live subscription."""
    subs = [_subscription(s) for s in request.app[VIEW].subscriptions()]
    return web.json_response(subs, headers=NO_CACHE)


def _led_phone(p: LedPhoneStatus) -> dict[str, object]:
    return {
        "phone": p.phone,
        "reachable": p.reachable,
        "keys": list(p.keys),
        "contacts": [dict(c) for c in p.contacts],
    }


async def api_leds(request: web.Request) -> web.Response:
    """Every phone of an LED rule: reachable or not, and its contacts."""
    phones = [_led_phone(p) for p in request.app[VIEW].led_phones()]
    return web.json_response(phones, headers=NO_CACHE)


async def events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: the entities now, then again after every change (unnamed events);
    before them a ``status`` event whenever the panel's top line changed."""
    view, stopping = request.app[VIEW], request.app[STOPPING]
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",  # nginx would otherwise hold the stream back
        }
    )
    await response.prepare(request)
    last_status = ""
    try:
        while not stopping.is_set():
            # Taken before the snapshot: a change while we write is not missed.
            change = view.next_change()
            status = json.dumps(status_json(view), separators=(",", ":"))
            if status != last_status:
                await response.write(f"event: status\ndata: {status}\n\n".encode())
                last_status = status
            data = json.dumps(entities_json(view), separators=(",", ":"))
            await response.write(f"data: {data}\n\n".encode())
            while True:
                try:
                    async with asyncio.timeout(SSE_KEEPALIVE):
                        await _wait_any(change, stopping)
                    break
                except TimeoutError:
                    await response.write(b": keepalive\n\n")
    except ConnectionResetError:
        pass  # the browser went away
    return response


async def _wait_any(a: asyncio.Event, b: asyncio.Event) -> None:
    """Wait until either event is set."""
    waiters = {asyncio.ensure_future(a.wait()), asyncio.ensure_future(b.wait())}
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


async def _stop_streams(app: web.Application) -> None:
    app[STOPPING].set()


def _panel_csp(html: str) -> str:
    """A policy allowing only the page's own inline style and script (by hash) and its stream."""
    hashes = {
        kind: " ".join(
            f"'sha256-{base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()}'"
            for body in re.findall(rf"<{kind}>(.*?)</{kind}>", html, re.DOTALL)
        )
        for kind in ("style", "script")
    }
    return (
        f"default-src 'none'; style-src {hashes['style']}; script-src {hashes['script']}; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
