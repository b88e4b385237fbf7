"""The ARI source adapter: Asterisk REST Interface in, normalized events out.

aiohttp on both halves: the event websocket ``/ari/events?app=<app>&subscribeAll=true`` and the
REST calls of the resync and of the pickup ids. Same contract as the AMI source: ResyncStarted,
the full state, ResyncFinished after every (re)connect; SourceLost once when an established
connection goes; one task calls ``on_event``, strictly in order. The sessions are run by
:class:`bridge.asterisk.retry.ReconnectLoop`, as the AMI source's are.

Resync ordering. The websocket is opened first, so nothing said afterwards is missed; then the
REST snapshot is read. Websocket and REST are separate connections, so nothing tells whether an
event read meanwhile is older or newer than the snapshot. The rule: events read during the
resync are held back and delivered right after the snapshot, in arrival order, before
ResyncFinished; nothing is dropped. A held event older than the snapshot only replays history
the snapshot already holds, and whatever superseded it follows it (held or live); the tracker's
forward-only channel states and tombstones keep a late Ringing from undoing Up and a late event
from bringing back a channel that hung up. Every channel a held event names is real (in the
snapshot, created since, or hung up within the held events), so the ResyncFinished sweep, which
keeps what was seen since ResyncStarted, stays right.

Pickup ids. A ChannelSeen that needs them (``needs_ids``) waits at its place in the stream: the
Call-ID is the channel's ``protocol_id``, the tags (and the caller's presentation) are read with
one multi-variable GET (Asterisk 22.10+) or, where that does not work, single-variable GETs all
in flight at once; the LegIds goes out just before the ChannelSeen, bounded by ``ids_timeout``.

Contacts (for the LED rules). ARI lists no registrations, but an AOR's configuration
(``GET /ari/asterisk/config/dynamic/res_pjsip/aor/<name>``) has one ``contact`` tuple per
contact, static and registered alike: the snapshot reads that of every AOR it is asked about
(``contacts``); ``ContactStatusChange`` events follow each change after that.

Pickup groups. After each sync, in the background, every PJSIP endpoint's ``call_group`` and
``pickup_group`` are read from ARI's dynamic configuration (``GET /ari/asterisk/config/dynamic/
res_pjsip/endpoint/<name>``, a list of ConfigTuples) and go out as EndpointGroups, like the AMI
source's PJSIPShowEndpoint. Over a connection where that fails once, they are not asked again.

Hints. ARI lists no hints: every PJSIP endpoint is a key hinted ``PJSIP/<name>``, and the
configuration's ``[hints]`` add (or redefine) keys with any device expression. ``GET
/ari/deviceStates`` lists only ARI-controlled ``Stasis:`` devices, so the current state of each
other device those hints name is read one by one (``GET /ari/deviceStates/<device>``, which asks
Asterisk's ``ast_device_state``); live changes come as DeviceStateChanged for every device.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from typing import cast

import aiohttp
from yarl import URL

from bridge.asterisk.ami_events import needs_ids
from bridge.asterisk.ari_events import (
    DialPairs,
    ParkedChannels,
    aor_contacts,
    bridged,
    listed_channel,
    listed_device,
    listed_endpoint,
    protocol_ids,
    to_events,
)
from bridge.asterisk.delivery import Batch, IdsTask, OrderedEvents, ids_result
from bridge.asterisk.retry import ReconnectLoop
from bridge.devices import device_key, hint_parts, is_channel_device, parse_groups
from bridge.events import (
    AsteriskEvent,
    ChannelGone,
    ChannelSeen,
    EndpointGroups,
    ExtensionHint,
    LegIds,
    ResourceListEntry,
    ResourceListsRead,
    ResyncFinished,
    ResyncStarted,
    SourceLost,
)

log = logging.getLogger(__name__)

CALL_ID = "CHANNEL(pjsip,call-id)"
LOCAL_TAG = "CHANNEL(pjsip,local_tag)"
REMOTE_TAG = "CHANNEL(pjsip,remote_tag)"
PRESENTATION = "CONNECTEDLINE(pres)"  # allowed…, prohib…, unavailable: a withheld caller
ID_NAMES = (LOCAL_TAG, REMOTE_TAG, PRESENTATION)
GROUP_QUERIES = 16  # configuration GETs in flight at once while reading pickup groups
ENDPOINT_CONFIG = ("asterisk", "config", "dynamic", "res_pjsip", "endpoint")
AOR_CONFIG = ("asterisk", "config", "dynamic", "res_pjsip", "aor")
LIST_CONFIG = ("asterisk", "config", "dynamic", "res_pjsip", "resource_list")

Answer = tuple[int, object]  # HTTP status, decoded JSON body (None if there was none)
# call, pickup groups; subscribe_context, context (where its SUBSCRIBEs resolve); callerid (the
# panel's name for the endpoint's keys)
Groups = tuple[frozenset[int], frozenset[int], str, str, str]


class _ResyncFailed(Exception):
    """A REST call of the resync gave no usable answer."""


def _ari_base(url: str) -> URL:
    """``http://pbx:8088`` or ``http://pbx:8088/ari`` → the ``…/ari`` root of every call."""
    parsed = URL(url)
    path = parsed.path.rstrip("/")
    if not path.endswith("/ari"):
        path += "/ari"
    return parsed.with_path(path).with_query(None).with_fragment(None)


def _multi_values(body: object, names: Sequence[str]) -> list[str] | None:
    """The values a multi-variable GET returned for ``names``, or None if it did not answer them.

    The answer is read leniently (``{"variables": {...}}``, a list of name/value objects, or a
    flat object) but strictly checked: every asked name must come back with a string value.
    """
    found = body.get("variables", body) if isinstance(body, Mapping) else body
    pairs: dict[str, object] = {}
    if isinstance(found, Mapping):
        pairs = {str(k).strip(): v for k, v in found.items()}
    elif isinstance(found, list):
        for entry in found:
            if isinstance(entry, Mapping):
                name = entry.get("name", entry.get("variable"))
                pairs[str(name).strip()] = entry.get("value")
    values = [pairs.get(name) for name in names]
    strings = [v for v in values if isinstance(v, str)]
    return strings if len(strings) == len(names) else None


def _pjsip_names(endpoints: Sequence[object]) -> list[str]:
    """The names of the PJSIP endpoints in a ``GET /ari/endpoints`` answer, in its order."""
    names: dict[str, None] = {}
    for endpoint in endpoints:
        if not isinstance(endpoint, Mapping):
            continue
        tech, resource = endpoint.get("technology"), endpoint.get("resource")
        if isinstance(tech, str) and tech.upper() == "PJSIP" and isinstance(resource, str):
            names[resource] = None
    names.pop("", None)
    return list(names)


def _config_groups(body: object) -> Groups | None:
    """``call_group``, ``pickup_group`` (and ``subscribe_context``, ``context``) from a list of
    ConfigTuples; None if the groups are not there.

    Asterisk prints groups as ``1, 3, 4`` (empty for none); parse_groups also takes ranges.
    """
    if not isinstance(body, list):
        return None
    values: dict[str, str] = {}
    for entry in body:
        if isinstance(entry, Mapping):
            attribute, value = entry.get("attribute"), entry.get("value")
            if isinstance(attribute, str) and isinstance(value, str):
                values[attribute] = value
    if "call_group" not in values or "pickup_group" not in values:
        return None
    groups = parse_groups(values["call_group"]), parse_groups(values["pickup_group"])
    # where it watches; the caller id names its keys on the panel
    contexts = values.get("subscribe_context", ""), values.get("context", "")
    return (*groups, *contexts, values.get("callerid", ""))


def resource_list_entry(name: str, body: object) -> ResourceListEntry | None:
    """A resource_list's ConfigTuples as a list entry; None without ``list_item``."""
    if not isinstance(body, list):
        return None
    values = {str(e.get("attribute")): str(e.get("value")) for e in body
              if isinstance(e, Mapping)}  # fmt: skip
    if "list_item" not in values:
        return None
    interval = values.get("notification_batch_interval", "0").strip()
    return ResourceListEntry(
        name,
        values.get("event", "dialog").strip(),
        tuple(item.strip() for item in values["list_item"].split(",") if item.strip()),
        full_state=values.get("full_state", "").strip().lower() in ("yes", "true", "on", "1"),
        batch_interval_ms=int(interval) if interval.isdigit() else 0,
    )


def _why(answer: Answer) -> str:
    status, body = answer
    message = body.get("message") if isinstance(body, Mapping) else None
    return f"HTTP {status}" + (f" {message}" if isinstance(message, str) else "")


class AriSource:
    """Asterisk over ARI as a stream of :mod:`bridge.events`, resynced after every connect."""

    def __init__(
        self,
        url: str,
        username: str,
        password: str,
        on_event: Callable[[AsteriskEvent], None],
        *,
        app: str = "snom-blf-bridge",
        backoff_min: float = 0.5,
        backoff_max: float = 30.0,
        connect_timeout: float = 5.0,
        request_timeout: float = 5.0,
        ids_timeout: float = 1.0,
        ping_interval: float = 10.0,
        hints: Sequence[tuple[str, str]] = (),
        contacts: Sequence[str] = (),
        standby: Sequence[str] = (),
        lists: Sequence[str] = (),
    ) -> None:
        # Every endpoint of this PBX by its URL as configured: the primary, then the standbys.
        self._endpoints = {u: _ari_base(u) for u in (url, *standby)}
        self._current = url  # the endpoint of the current (or last) session
        self._base = self._endpoints[url]
        self._hints = tuple(hints)  # (exten, device expression) from the configuration
        # The devices of those hints whose state no channel tells, as Asterisk spells them.
        named = (d for _, hint in self._hints for d in hint_parts(hint))
        self._stateful = list(dict.fromkeys(
            d for d in named if d and not is_channel_device(device_key(d))
        ))  # fmt: skip
        self.host = self._base.host or ""
        self.port = self._base.port or 0
        self._username = username
        self._authorization = aiohttp.encode_basic_auth(username, password)
        self._app = app
        self._connect_timeout = connect_timeout
        self._request_timeout = request_timeout
        self._ids_timeout = ids_timeout
        self._ping_interval = ping_interval
        self.connected = False  # event websocket up (basic auth accepted)
        self.synced = asyncio.Event()  # set once ResyncFinished has been delivered
        self._queue = OrderedEvents(on_event)
        self._ids: dict[str, IdsTask] = {}
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._held: list[Batch] | None = None  # events read while a resync is in progress
        self._dials = DialPairs()
        self._parked = ParkedChannels()
        self._multi: bool | None = None  # does GET …/variables work? None: not known yet
        self._announced = False  # ResyncStarted sent and no SourceLost since
        self._loop = ReconnectLoop(
            "ARI", self._session, self._queue, log, backoff_min=backoff_min,
            backoff_max=backoff_max, endpoints=list(self._endpoints),
        )  # fmt: skip
        self._stopping = self._loop.stopping
        self._problems = self._loop.problems
        self._pjsip: list[str] = []  # the PJSIP endpoints of the last snapshot
        self._groups: asyncio.Task[None] | None = None
        self._groups_failed = False  # reading groups failed on this connection: not again
        self._groups_problem = ""  # the last one logged: the same again only at debug level
        self._contact_aors = tuple(dict.fromkeys(contacts))  # AORs whose contacts a sync reads
        # Resource lists read by name at each sync: ARI reads a sorcery object by its id only
        # (GET …/resource_list answers 405), so only the lists the configuration names.
        self._list_names = tuple(dict.fromkeys(lists))
        self._lists: asyncio.Task[None] | None = None
        self._contact_problems: set[str] = set()  # logged at warning level once each

    async def run(self) -> None:
        """Connect, resync and stream events until ``stop()`` or cancellation."""
        self._http = aiohttp.ClientSession(headers={"Authorization": self._authorization})
        try:
            await self._loop.run()
        finally:
            self.connected = False
            self.synced.clear()
            self._cancel_ids()
            self._cancel_groups()
            await self._http.close()

    async def stop(self) -> None:
        """Close the websocket and make ``run()`` return."""
        self._loop.stop(cut_attempt=self._ws is None)  # do not sit out a connect timeout

    # -- one connection ----------------------------------------------------------------------

    async def _session(self, endpoint: str) -> bool:
        """One websocket's life; True when its resync went through (the backoff starts over)."""
        http = self._http
        assert http is not None, "run() opens the HTTP session"
        self._current, self._base = endpoint, self._endpoints[endpoint]
        self.host, self.port = self._base.host or "", self._base.port or 0
        where = f"{self.host}:{self.port}"
        url = (self._base / "events").with_query(app=self._app, subscribeAll="true")
        try:
            async with asyncio.timeout(self._connect_timeout):
                ws = await http.ws_connect(
                    url,
                    heartbeat=self._ping_interval,
                    timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=1.0),
                )
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status == 401:
                self._problems.report(f"ARI login as {self._username!r} refused: 401 Unauthorized")
            else:
                self._problems.report(
                    f"ARI at {where} refused the event websocket: HTTP {exc.status}"
                )
            return False
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            self._problems.report(f"cannot connect to ARI at {where}: {exc or 'timeout'}")
            return False
        self._ws, self.connected = ws, True
        self._cancel_ids()
        self._dials = DialPairs()  # a new stream: every Dial in progress is news again
        self._parked = ParkedChannels()
        self._multi = None  # a restarted Asterisk may be another version
        self._groups_failed = False  # nor may it refuse the configuration API any more
        self._held = []
        reader = asyncio.create_task(self._read(ws))
        stopping = asyncio.create_task(self._stopping.wait())
        established = False
        try:
            established = await self._resync(ws, reader, stopping)
            if established:
                await asyncio.wait([reader, stopping], return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._held = None
            for task in (reader, stopping):
                task.cancel()
            with contextlib.suppress(Exception):
                await ws.close()
            self._ws = None
            self._cancel_groups()  # nothing of this connection may follow its SourceLost
            self._cancel_ids()  # waiting items go out without ids at once
            self.connected = False
            self.synced.clear()
            if self._announced and not self._stopping.is_set():  # even when a bug ended it
                why = ws.exception()  # e.g. a ping not answered in time
                log.warning("lost the ARI connection to %s%s", where, f": {why!r}" if why else "")
                self._announced = False
                self._queue.put_nowait(Batch([SourceLost()]))
        return established

    async def _resync(
        self,
        ws: aiohttp.ClientWebSocketResponse,
        reader: asyncio.Task[None],
        stopping: asyncio.Task[bool],
    ) -> bool:
        """Read the snapshot; queue it, then the events held back meanwhile (module docstring)."""
        snapshot = asyncio.create_task(self._snapshot())
        await asyncio.wait([snapshot, reader, stopping], return_when=asyncio.FIRST_COMPLETED)
        if not snapshot.done():
            snapshot.cancel()
            if not self._stopping.is_set():
                self._problems.report(
                    f"ARI at {self.host}:{self.port} closed the websocket during resync"
                )
            return False
        try:
            items = snapshot.result()
        except Exception as exc:  # refused, timed out, cut: retried with backoff
            self._problems.report(
                f"ARI resync from {self.host}:{self.port} failed: {exc or repr(exc)}"
            )
            return False
        self._problems.clear()
        self._loop.following(self._current)
        self._announced = True
        held, self._held = self._held or [], None
        for item in [Batch([ResyncStarted(self._current)]), *items, *held]:
            self._queue.put_nowait(item)

        def synced() -> None:
            if ws is self._ws and not ws.closed:
                self.synced.set()
                self._start_groups(ws, self._pjsip)  # the snapshot's list is fresh
                self._start_lists(ws)

        self._queue.put_nowait(Batch([ResyncFinished()], then=synced))
        return True

    async def _snapshot(self) -> list[Batch]:
        """Asterisk's current state from REST, as items: devices, hints, then channels (each
        grouped with its call by the bridge it is in)."""
        # All three finish (none is left running) before a failure is raised.
        lists = await asyncio.gather(
            *(self._list(r) for r in ("deviceStates", "endpoints", "bridges", "channels")),
            return_exceptions=True,
        )
        for answer in lists:
            if isinstance(answer, BaseException):
                raise answer
        devices, endpoints, bridges, channels = cast(list[list[object]], lists)
        devices = devices + await self._stateful_devices()
        self._pjsip = _pjsip_names(endpoints)
        in_bridge = bridged(bridges)
        events: list[AsteriskEvent] = []
        for device in devices:
            events += listed_device(device)
        for endpoint in endpoints:
            events += listed_endpoint(endpoint)
        events += [  # "202@tenant-b" is tenant B's 202; a bare name is the default context's
            ExtensionHint(exten.partition("@")[0], exten.partition("@")[2], hint, 0)
            for exten, hint in self._hints
        ]
        for found in await asyncio.gather(*(self._aor_contacts(a) for a in self._contact_aors)):
            events += found
        items = self._items(events, {})
        for channel in channels:
            uid = channel.get("id") if isinstance(channel, Mapping) else None
            seen = listed_channel(channel, in_bridge.get(uid, "") if isinstance(uid, str) else "")
            items += self._items(seen, protocol_ids({"channel": channel}))
        return items

    async def _stateful_devices(self) -> list[object]:
        """The current state of every stateful device of the configured hints (module
        docstring); one that cannot be read stays unknown (its key dark) until it changes."""
        answers = await asyncio.gather(
            *(self._safe_get(self._base / "deviceStates" / d, {}) for d in self._stateful)
        )
        found: list[object] = []
        for device, answer in zip(self._stateful, answers, strict=True):
            if answer[0] == 200:
                found.append(answer[1])
            else:
                log.warning("cannot read the state of %s (hints): %s", device, _why(answer))
        return found

    async def _aor_contacts(self, aor: str) -> list[AsteriskEvent]:
        """Every contact of one AOR; none (and a warning, once) when it cannot be read."""
        url = self._base.joinpath(*AOR_CONFIG, urllib.parse.quote(aor, safe=""), encoded=True)
        try:
            answer = await self._safe_get(url, {})
        except TimeoutError:  # aiohttp's total timeout is no ClientError
            answer = 0, {"message": f"no answer in {self._request_timeout:g} s"}
        if answer[0] == 200:
            return aor_contacts(aor, answer[1])
        if answer[0] == 404:
            problem = f"led: Asterisk has no PJSIP AOR {aor!r}: {_why(answer)}"
        else:
            problem = f"cannot read the contacts of {aor} over ARI: {_why(answer)}"
        level = logging.DEBUG if problem in self._contact_problems else logging.WARNING
        log.log(level, "%s (GET /ari/%s/%s)", problem, "/".join(AOR_CONFIG), aor)
        self._contact_problems.add(problem)
        return []

    async def _list(self, resource: str) -> list[object]:
        answer = await self._get(self._base / resource, {})
        status, body = answer
        if status != 200 or not isinstance(body, list):
            raise _ResyncFailed(f"GET /ari/{resource}: {_why(answer)}")
        return body

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Every websocket message, in arrival order, until the connection closes."""
        async for message in ws:
            if message.type is aiohttp.WSMsgType.TEXT:
                self._receive(message.data)
            elif message.type is aiohttp.WSMsgType.ERROR:
                log.debug("ARI websocket error: %s", ws.exception())

    def _receive(self, text: str) -> None:
        try:
            msg = json.loads(text)
        except Exception:  # not JSON, or nested beyond the parser: skip it, keep the stream
            log.warning("unreadable message from ARI skipped: %.80r", text)
            return
        items = self._items(to_events(msg, self._dials, self._parked), protocol_ids(msg))
        if self._held is not None:
            self._held += items
        else:
            for item in items:
                self._queue.put_nowait(item)

    # -- pickup groups -------------------------------------------------------------------------

    def refresh_groups(self) -> None:
        """Read every PJSIP endpoint's call and pickup groups again (after each sync, and on
        reload), in the background: the pickup policy needs them, the key states do not.

        A no-op while not synced (a sync reads them anyway) or after they failed on this
        connection.
        """
        ws = self._ws
        if ws is None or ws.closed or not self.synced.is_set():
            return
        self._start_groups(ws, None)
        self._start_lists(ws)

    def _start_groups(self, ws: aiohttp.ClientWebSocketResponse, names: list[str] | None) -> None:
        if self._groups_failed:
            return
        self._cancel_groups()  # a newer read supersedes one still running
        self._groups = asyncio.create_task(self._read_groups(ws, names), name="ari-groups")

    def _start_lists(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        if not self._list_names:
            return
        if self._lists is not None and not self._lists.done():
            self._lists.cancel()
        self._lists = asyncio.create_task(self._read_lists(ws), name="ari-lists")

    async def _read_lists(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Queue the resource lists the configuration names, as Asterisk has them now."""
        found: list[ResourceListEntry] = []
        try:
            for name in self._list_names:
                url = self._base.joinpath(*LIST_CONFIG, urllib.parse.quote(name, safe=""),
                                          encoded=True)  # fmt: skip
                try:
                    status, body = await self._safe_get(url, {})
                except TimeoutError:
                    status, body = 0, {"message": f"no answer in {self._request_timeout:g} s"}
                entry = resource_list_entry(name, body) if status == 200 else None
                if entry is not None:
                    found.append(entry)
                elif status != 404:  # 404: Asterisk has no such list (it is not served)
                    why = _why((status, body)) if status != 200 else "no list_item"
                    log.warning("cannot read resource list %s over ARI: %s; the lists stay as "
                                "they were", name, why)  # fmt: skip
                    return
        except Exception:  # a bug here must cost the lists, never the source
            log.exception("reading resource lists over ARI failed")
            return
        if ws is self._ws and not ws.closed:
            self._queue.put_nowait(Batch([ResourceListsRead(tuple(found))]))

    def _cancel_groups(self) -> None:
        """Stop reading groups (and resource lists): the connection they belong to is gone,
        or a newer read starts."""
        for task in (self._groups, self._lists):
            if task is not None and not task.done():
                task.cancel()
        self._groups = self._lists = None

    async def _read_groups(
        self, ws: aiohttp.ClientWebSocketResponse, names: list[str] | None
    ) -> None:
        """Queue an EndpointGroups per endpoint (``names``, or listed anew), as they come in."""
        try:
            if names is None:
                try:
                    names = _pjsip_names(await self._list("endpoints"))
                except Exception as exc:  # refused, cut, timed out: as a refused GET below
                    self._groups_unreadable(str(exc) or type(exc).__name__)
                    return
            window = asyncio.Semaphore(GROUP_QUERIES)

            async def one(name: str) -> None:
                async with window:
                    if self._groups_failed:
                        return  # one refusal is enough: the others would be refused too
                    url = self._base.joinpath(
                        *ENDPOINT_CONFIG, urllib.parse.quote(name, safe=""), encoded=True
                    )
                    try:
                        answer = await self._safe_get(url, {})
                    except TimeoutError:  # aiohttp's total timeout is no ClientError
                        answer = 0, {"message": f"no answer in {self._request_timeout:g} s"}
                groups = _config_groups(answer[1]) if answer[0] == 200 else None
                if groups is None:
                    why = _why(answer) if answer[0] != 200 else "no call_group/pickup_group"
                    self._groups_unreadable(f"GET /ari/{'/'.join(ENDPOINT_CONFIG)}/{name}: {why}")
                elif ws is self._ws and not ws.closed:
                    self._queue.put_nowait(Batch([EndpointGroups(name, *groups)]))

            await asyncio.gather(*(one(name) for name in names))
        except Exception:  # a bug here must cost the groups, never the source
            log.exception("reading pickup groups over ARI failed")
            return
        if not self._groups_failed:
            self._groups_problem = ""
            log.debug("read the pickup groups of %d endpoints over ARI", len(names))

    def _groups_unreadable(self, why: str) -> None:
        """Give up on the groups for this connection; a problem that repeats is logged once."""
        if self._groups_failed:
            return
        self._groups_failed = True
        reason = why.partition(": ")[2] or why  # without the endpoint, which varies
        level = logging.DEBUG if reason == self._groups_problem else logging.WARNING
        log.log(level, "cannot read pickup groups over ARI: %s", why)
        self._groups_problem = reason

    # -- pickup ids --------------------------------------------------------------------------

    def _items(self, events: list[AsteriskEvent], call_ids: Mapping[str, str]) -> list[Batch]:
        """Events as items in stream order, starting id lookups for ringing legs."""
        items = []
        for event in events:
            if isinstance(event, ChannelGone):
                task = self._ids.pop(event.uniqueid, None)
                if task is not None and not task.done():
                    task.cancel()
            ids = None
            if isinstance(event, ChannelSeen) and needs_ids(event) and self._http is not None:
                ids = self._ids.get(event.uniqueid)
                if ids is None or (ids.done() and ids_result(ids) is None):
                    call_id = call_ids.get(event.uniqueid, "")
                    ids = asyncio.create_task(self._fetch_ids(event, call_id))
                    self._ids[event.uniqueid] = ids
            items.append(Batch([event], ids))
        return items

    async def _fetch_ids(self, leg: ChannelSeen, call_id: str) -> LegIds | None:
        """The leg's Call-ID (its ``protocol_id``, else read too), both tags and how the caller
        is presented to the ringing phone (read with them, as the AMI source does)."""
        names = [*ID_NAMES] if call_id else [CALL_ID, *ID_NAMES]
        try:
            async with asyncio.timeout(self._ids_timeout):
                found, why = await self._variables(leg, names)
        except TimeoutError:
            log.warning("reading the ids of %s timed out after %.1f s", leg.name, self._ids_timeout)
            return None
        if call_id:
            found[CALL_ID] = call_id
        for name in (CALL_ID, LOCAL_TAG, REMOTE_TAG):
            if not found.get(name):
                log.warning("no %s for %s: %s", name, leg.name, why.get(name, "empty value"))
                return None
        # A presentation that cannot be read is not a reason to withhold the pickup ids.
        hidden = found.get(PRESENTATION, "").lower().startswith(("prohib", "unavailable"))
        return LegIds(
            leg.uniqueid, found[CALL_ID], found[LOCAL_TAG], found[REMOTE_TAG], caller_hidden=hidden
        )

    async def _variables(
        self, leg: ChannelSeen, names: list[str]
    ) -> tuple[dict[str, str], dict[str, str]]:
        """One multi-variable GET if it works, else one GET per variable, all in flight at once.

        Returns the values read, and why the others could not be.
        """
        channel = self._base / "channels" / leg.uniqueid
        multi_failed = False
        if self._multi is not False:
            answer = await self._safe_get(channel / "variables", {"variables": ",".join(names)})
            values = _multi_values(answer[1], names) if answer[0] == 200 else None
            if values is not None:
                self._multi = True
                return dict(zip(names, values, strict=True)), {}
            multi_failed = True
        answers = await asyncio.gather(
            *(self._safe_get(channel / "variable", {"variable": name}) for name in names)
        )
        found: dict[str, str] = {}
        why: dict[str, str] = {}
        for name, answer in zip(names, answers, strict=True):
            status, body = answer
            value = body.get("value") if isinstance(body, Mapping) else None
            if status == 200 and isinstance(value, str):
                found[name] = value
            else:
                why[name] = _why(answer)
        if multi_failed and self._multi is None and not why:
            # Only now is it sure the multi-variable call (not the channel) was the problem.
            self._multi = False
            log.info("ARI cannot read several variables at once; reading one per request")
        return found, why

    async def _safe_get(self, url: URL, params: Mapping[str, str]) -> Answer:
        """A GET whose transport failure is an answer (status 0) rather than an exception."""
        try:
            return await self._get(url, params)
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            return 0, {"message": str(exc) or type(exc).__name__}

    async def _get(self, url: URL, params: Mapping[str, str]) -> Answer:
        assert self._http is not None
        limit = aiohttp.ClientTimeout(total=self._request_timeout)
        async with self._http.get(url, params=params, timeout=limit) as response:
            try:
                body: object = await response.json(content_type=None)
            except ValueError:
                body = None
            return response.status, body

    def _cancel_ids(self) -> None:
        for task in self._ids.values():
            task.cancel()
        self._ids.clear()

    # -- delivery ----------------------------------------------------------------------------
