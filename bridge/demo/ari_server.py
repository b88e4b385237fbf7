"""A replayed Asterisk speaking ARI: an aiohttp server that sends what a real Asterisk 22 sent.

Used by the tests as "the Asterisk" on a real socket. It loads each scenario's recorded event
websocket (``ari-events.jsonl``), emits those events on demand to every client of
``/ari/events``, and answers the REST calls a bridge makes from what the replay has put up so
far: ``GET /ari/channels``, ``/ari/bridges``, ``/ari/deviceStates``, ``/ari/endpoints`` (the
endpoints of the recorded PBX's ``asterisk-etc/pjsip.conf``), an endpoint's configuration
(``/ari/asterisk/config/dynamic/res_pjsip/endpoint/<name>``, from that pjsip.conf), an AOR's
(``…/res_pjsip/aor/<name>``: its contacts, see :mod:`bridge.demo.contacts`) and channel
variables. The pickup ids come from the same data as the AMI server's Getvar answers (recorded
Getvars, ``replaces.csv``, SIP traces).

Where Asterisk's behaviour is not on record, this is an assumption, said here: the answer of the
multi-variable ``GET …/variables`` is ``{"variables": {name: value}}`` with names split at commas
outside parentheses; ``/ari/deviceStates`` lists every device seen (a real Asterisk lists only
ARI-controlled ``Stasis:`` devices there); an endpoint's configuration lists the options its
pjsip.conf section sets (with templates), and ``call_group``/``pickup_group`` always, printed
as Asterisk prints groups (``1, 3, 4``), where a real Asterisk lists every option of the
endpoint; only ``res_pjsip``'s ``endpoint`` objects are there.
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import itertools
import json
import logging
import math
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import BasicAuth, web

from bridge.demo.contacts import Registrations, pjsip_conf, static_contacts
from bridge.demo.recording import Getvars, load_endpoints, load_objects, load_scenario, paced
from bridge.demo.rounds import RoundIds
from bridge.devices import parse_groups

log = logging.getLogger(__name__)

Json = dict[str, object]
EventPredicate = Callable[[Mapping[str, object]], bool]
REALM = 'Basic realm="Asterisk REST Interface"'
GROUP_OPTIONS = ("call_group", "pickup_group")


@dataclass(frozen=True, slots=True)
class RecordedAriEvent:
    """One event of the recorded websocket, at its recorded time (seconds since connect)."""

    t: float
    event: Json


@dataclass(slots=True)
class AriScenario:
    """One recording and how far it has been replayed (``position`` = events already sent)."""

    name: str
    events: list[RecordedAriEvent]
    getvars: Getvars
    position: int = 0
    registered: Registrations = field(default_factory=Registrations)  # as the recording begins


def event_is(kind: str, channel: str | None = None, state: str | None = None) -> EventPredicate:
    """A ``play(until=…)`` predicate: the event type, and optionally its channel's name/state."""

    def matches(event: Mapping[str, object]) -> bool:
        ch = event.get("channel") or event.get("peer")
        ch = ch if isinstance(ch, Mapping) else {}
        return (
            event.get("type") == kind
            and (channel is None or ch.get("name") == channel)
            and (state is None or ch.get("state") == state)
        )

    return matches


def load_ari_scenario(directory: Path) -> AriScenario:
    """One scenario folder: the recorded events, and the leg ids the AMI recording yields."""
    events = []
    for line in (directory / "ari-events.jsonl").read_text(encoding="utf-8").splitlines():
        if line.strip():
            record = json.loads(line)
            events.append(RecordedAriEvent(float(record["t"]), dict(record["event"])))
    ami = load_scenario(directory) if (directory / "ami-wire.jsonl").exists() else None
    if ami is None:
        return AriScenario(directory.name, events, {})
    # The AMI recording of the same scenario says who was registered as it begins.
    return AriScenario(directory.name, events, ami.getvars, registered=ami.registrations())


def load_ari_recordings(directory: Path) -> dict[str, AriScenario]:
    """All scenarios under ``directory`` (or the one scenario that ``directory`` is)."""
    if (directory / "ari-events.jsonl").exists():
        return {directory.name: load_ari_scenario(directory)}
    folders = sorted(p for p in directory.iterdir() if (p / "ari-events.jsonl").exists())
    return {p.name: load_ari_scenario(p) for p in folders}


def split_variables(value: str) -> list[str]:
    """A ``variables=`` list split at commas outside parentheses, names stripped."""
    names, depth, current = [], 0, ""
    for char in value:
        depth += (char == "(") - (char == ")")
        if char == "," and depth <= 0:
            names.append(current.strip())
            current = ""
        else:
            current += char
    names.append(current.strip())
    return [n for n in names if n]


@dataclass
class _World:
    """What the replayed Asterisk has up now: channels (latest snapshot of each), devices,
    bridges."""

    channels: dict[str, Json] = field(default_factory=dict)
    devices: dict[str, str] = field(default_factory=dict)
    bridges: dict[str, Json] = field(default_factory=dict)

    def apply(self, event: Mapping[str, object]) -> None:
        kind = event.get("type")
        bridge = event.get("bridge")
        if isinstance(bridge, Mapping) and isinstance(bridge.get("id"), str):
            if kind == "BridgeDestroyed":
                self.bridges.pop(str(bridge["id"]), None)
            else:  # every bridge event carries the bridge's members as they are now
                self.bridges[str(bridge["id"])] = dict(bridge)
        if kind == "DeviceStateChanged":
            state = event.get("device_state")
            if isinstance(state, Mapping):
                self.devices[str(state.get("name", ""))] = str(state.get("state", ""))
            return
        for key in ("channel", "peer", "caller"):
            ch = event.get(key)
            uid = ch.get("id") if isinstance(ch, Mapping) else None
            if not isinstance(ch, Mapping) or not isinstance(uid, str):
                continue
            if kind == "ChannelDestroyed":
                self.channels.pop(uid, None)
            elif kind == "ChannelCreated" or uid in self.channels:
                self.channels[uid] = dict(ch)

    def name_of(self, channel_id: str) -> str | None:
        """A channel that is up, given by id or name (as ``ast_channel_get_by_name`` takes)."""
        for uid, ch in self.channels.items():
            if channel_id in (uid, ch.get("name")):
                return str(ch.get("name", ""))
        return None

    def cleanup(self) -> Iterator[Json]:
        """Synthesized hangups for what a recording leaves up (the demo loop)."""
        for ch in list(self.channels.values()):
            yield {
                "type": "ChannelDestroyed",
                "cause": 16,
                "cause_txt": "Normal Clearing",
                "channel": ch,
            }
        for bridge in list(self.bridges.values()):
            yield {"type": "BridgeDestroyed", "bridge": {**bridge, "channels": []}}


@dataclass(eq=False)
class _Client:
    number: int
    app: str
    request: web.Request
    ws: web.WebSocketResponse


class RecordedAriServer:
    """An ARI server (REST + event websocket) on loopback that replays recorded scenarios."""

    def __init__(
        self,
        recordings_dir: Path | str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        username: str = "bridge",
        password: str = "bridgesecret",
        speed: float = 1.0,
    ) -> None:
        directory = Path(recordings_dir)
        self.scenarios = load_ari_recordings(directory)
        if not self.scenarios:
            raise ValueError(f"no ari-events.jsonl recordings under {directory}")
        # name → {option: value}: tests may change it (as RecordedAmiServer.endpoints)
        self.endpoints = _find_endpoints(directory, self.scenarios)
        # Every AOR's options and static contacts; its registrations (bridge.demo.contacts).
        conf = pjsip_conf(directory)
        self.aors = load_objects(conf, "aor") if conf is not None else {}
        self.resource_lists = load_objects(conf, "resource_list") if conf is not None else {}
        self.static_contacts = static_contacts(self.aors)
        self.registered = Registrations()
        self.host, self.port = host, port
        self.username, self.password = username, password
        self.speed = speed  # 1.0 = recorded pace, 0 = as fast as possible
        self.multi_variables = True  # False: an Asterisk before 22.10, no GET …/variables
        self.variable_delay = 0.0  # a slow Asterisk, to test the client's timeout
        self.answer_pings = True  # False: a hung Asterisk whose socket stays up
        self.before_answer: Callable[[web.Request], Awaitable[None]] | None = None
        self.log: list[tuple[str, str]] = []  # (recv|send|event|closed, path or event type)
        self.logins: list[tuple[str, bool]] = []  # websocket handshakes: (username, accepted)
        self._world = _World()
        self._ids = RoundIds(0)  # the demo loop's current round (bridge.demo.rounds)
        self._clients: set[_Client] = set()
        self._numbers = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self._tick = asyncio.Event()

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen; ``port`` then holds the real port when 0 was asked for."""
        app = web.Application(middlewares=[self._auth])
        app.router.add_get("/ari/events", self._events)
        app.router.add_get("/ari/channels", self._channels)
        app.router.add_get("/ari/channels/{id}", self._channel)
        app.router.add_get("/ari/channels/{id}/variable", self._variable)
        app.router.add_get("/ari/channels/{id}/variables", self._variables)
        app.router.add_get("/ari/deviceStates", self._device_states)
        app.router.add_get("/ari/deviceStates/{name}", self._device_state)
        app.router.add_get("/ari/endpoints", self._endpoints)
        app.router.add_get("/ari/bridges", self._bridges)
        app.router.add_get(
            "/ari/asterisk/config/dynamic/{config_class}/{object_type}/{id}", self._config_object
        )
        app.router.add_route("*", "/ari/{tail:.*}", self._not_found)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        self.port = int(self._runner.addresses[0][1])

    async def close(self) -> None:
        """Stop listening and cut every connection."""
        self.drop_clients()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> RecordedAriServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def drop_clients(self) -> None:
        """Abort every websocket at once, like a crashed or restarted Asterisk."""
        for client in list(self._clients):
            transport = client.request.transport
            if transport is not None:
                transport.abort()

    @property
    def connected(self) -> int:
        """How many event websockets are open now."""
        return len(self._clients)

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` holds; re-checked after every request, answer and event."""
        while not predicate():
            await self._tick.wait()

    # -- replay ------------------------------------------------------------------------------

    def rewind(self, scenario: str) -> None:
        """Start a scenario over from its first event."""
        self.scenarios[scenario].position = 0

    def select(self, scenario: str) -> None:
        """Take the phones registered as a scenario begins as the ones registered now."""
        self.registered = Registrations(
            item for contacts in self.scenarios[scenario].registered.by_aor.values()
            for item in contacts.values()
        )  # fmt: skip

    async def play(self, scenario: str, *, until: EventPredicate | None = None) -> None:
        """Emit the scenario's events from where it stands; with ``until``, stop right after the
        first matching event (call again to continue). Spaced by ``speed``."""
        async with contextlib.aclosing(paced(self.scenarios[scenario], self.speed)) as events:
            async for recorded in events:
                await self.emit(self._ids.ari(recorded.event))
                if until is not None and until(recorded.event):
                    return

    async def loop_forever(
        self, pause: float = 3.0, rounds: int | None = None, scenarios: Sequence[str] = ()
    ) -> None:
        """Demo mode: every scenario (or those named) in turn, each ended clean, forever (or
        ``rounds`` times); each round with fresh call identifiers (bridge.demo.rounds)."""
        done = 0
        while rounds is None or done < rounds:
            self._ids = RoundIds(done)
            for name in scenarios or self.scenarios:
                self.rewind(name)
                await self.play(name)
                for event in self._world.cleanup():
                    await self.emit(event)
                await asyncio.sleep(pause)
            done += 1

    async def emit(self, event: Mapping[str, object]) -> None:
        """Apply one event to the world and send it to every websocket client."""
        self._world.apply(event)
        self.registered.apply_ari(event)
        for client in list(self._clients):
            text = json.dumps({**event, "application": client.app})
            try:
                await client.ws.send_str(text)
            except (ConnectionError, RuntimeError):
                continue  # closing: its handler cleans up
            self._note("event", str(event.get("type", "")))

    async def send_raw(self, text: str) -> None:
        """Write a text frame as it is to every client (garbage tests)."""
        for client in list(self._clients):
            with contextlib.suppress(ConnectionError, RuntimeError):
                await client.ws.send_str(text)

    def _note(self, kind: str, what: str) -> None:
        self.log.append((kind, what))
        self._tick.set()
        self._tick = asyncio.Event()

    # -- HTTP --------------------------------------------------------------------------------

    @web.middleware
    async def _auth(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Basic auth (or ``api_key=user:password``) on everything, as Asterisk's http server."""
        user, password = "", ""
        with contextlib.suppress(ValueError, binascii.Error):
            if "Authorization" in request.headers:
                auth = BasicAuth.decode(request.headers["Authorization"])
                user, password = auth.login, auth.password
            elif "api_key" in request.query:
                user, _, password = request.query["api_key"].partition(":")
        accepted = (user, password) == (self.username, self.password)
        if request.path == "/ari/events":
            self.logins.append((user, accepted))
        self._note("recv", request.path_qs)
        if not accepted:
            self._note("send", request.path_qs)
            return web.json_response(
                {"message": "Authentication required"},
                status=401,
                headers={"WWW-Authenticate": REALM},
            )
        if self.before_answer is not None and request.path != "/ari/events":
            await self.before_answer(request)
        response = await handler(request)
        if request.path != "/ari/events":
            self._note("send", request.path_qs)
        return response

    async def _events(self, request: web.Request) -> web.StreamResponse:
        app = request.query.get("app", "")
        if not app:
            return web.json_response({"message": "Missing param 'app'"}, status=400)
        ws = web.WebSocketResponse(autoping=self.answer_pings)
        await ws.prepare(request)
        client = _Client(next(self._numbers), app, request, ws)
        self._clients.add(client)
        self._note("connected", str(client.number))
        try:
            async for _ in ws:  # Asterisk ignores what clients write; pings are answered
                pass
        finally:
            self._clients.discard(client)
            self._note("closed", str(client.number))
        return ws

    async def _channels(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(list(self._world.channels.values()))

    async def _channel(self, request: web.Request) -> web.StreamResponse:
        channel = self._world.channels.get(request.match_info["id"])
        if channel is None:
            return _error(404, "Channel not found")
        return web.json_response(channel)

    async def _variable(self, request: web.Request) -> web.StreamResponse:
        variable = request.query.get("variable", "")
        if not variable:
            return _error(400, "Variable name is required")
        if self.variable_delay > 0:
            await asyncio.sleep(self.variable_delay)
        name = self._world.name_of(request.match_info["id"])
        if name is None:
            return _error(404, "Provided channel was not found")
        value = self._value(name, variable)
        if value is None:
            return _error(404, "Provided variable was not found")
        return web.json_response({"value": value})

    async def _variables(self, request: web.Request) -> web.StreamResponse:
        if not self.multi_variables:
            return await self._not_found(request)
        names = split_variables(request.query.get("variables", ""))
        if not names:
            return _error(400, "Variable names are required")
        if self.variable_delay > 0:
            await asyncio.sleep(self.variable_delay)
        name = self._world.name_of(request.match_info["id"])
        if name is None:
            return _error(404, "Provided channel was not found")
        values = {n: self._value(name, n) for n in names}
        if any(v is None for v in values.values()):
            return _error(404, "Provided variable was not found")
        return web.json_response({"variables": values})

    def _value(self, channel: str, variable: str) -> str | None:
        """A variable's value; a function Asterisk cannot evaluate still reads as empty."""
        recorded = self._ids.recorded_channel(channel)
        for sc in self.scenarios.values():
            if (value := sc.getvars.get((recorded, variable))) is not None:
                return self._ids.variable(variable, value)
        return "" if variable.endswith(")") else None

    async def _device_states(self, request: web.Request) -> web.StreamResponse:
        return web.json_response([{"name": d, "state": s} for d, s in self._world.devices.items()])

    async def _device_state(self, request: web.Request) -> web.StreamResponse:
        # Asterisk answers any name, with UNKNOWN for a device nobody has set.
        name = request.match_info["name"]
        return web.json_response({"name": name, "state": self._world.devices.get(name, "UNKNOWN")})

    async def _endpoints(self, request: web.Request) -> web.StreamResponse:
        answer = []
        for resource in self.endpoints:
            prefix = f"PJSIP/{resource}-"
            ids = [u for u, ch in self._world.channels.items() if _name(ch).startswith(prefix)]
            answer.append(
                {"technology": "PJSIP", "resource": resource, "state": "online", "channel_ids": ids}
            )
        return web.json_response(answer)

    async def _bridges(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(list(self._world.bridges.values()))

    async def _config_object(self, request: web.Request) -> web.StreamResponse:
        """A sorcery object as ConfigTuples; the 404s carry Asterisk's messages."""
        match = request.match_info
        config_class, object_type, name = match["config_class"], match["object_type"], match["id"]
        if config_class != "res_pjsip":
            return _error(404, f"configClass '{config_class}' not found")
        if object_type == "aor":
            aor = self.aors.get(name)
            if aor is None and name not in self.registered.by_aor:
                return _error(404, f"Object with id '{name}' not found")
            return web.json_response(
                self.registered.aor_tuples(name, aor or {}, self.static_contacts)
            )
        if object_type == "resource_list":
            found = self.resource_lists.get(name)
            if found is None:
                return _error(404, f"Object with id '{name}' not found")
            return web.json_response([{"attribute": k, "value": v} for k, v in found.items()
                                      if k != "type"])  # fmt: skip
        if object_type != "endpoint":
            return _error(404, f"objectType '{object_type}' not found")
        options = self.endpoints.get(name)
        if options is None:
            return _error(404, f"Object with id '{name}' not found")
        values = {**dict.fromkeys(GROUP_OPTIONS, ""), **options}
        for option in GROUP_OPTIONS:
            values[option] = ", ".join(map(str, sorted(parse_groups(values[option]))))
        return web.json_response([{"attribute": k, "value": v} for k, v in values.items()])

    async def _not_found(self, request: web.Request) -> web.StreamResponse:
        return _error(404, "Resource not found")


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"message": message}, status=status)


def _name(channel: Mapping[str, object]) -> str:
    name = channel.get("name")
    return name if isinstance(name, str) else ""


def _find_endpoints(
    directory: Path, scenarios: Mapping[str, AriScenario]
) -> dict[str, dict[str, str]]:
    """The recorded PBX's PJSIP endpoints and their options: its pjsip.conf, else every PJSIP
    device recorded (with no options)."""
    for etc in (directory / "asterisk-etc", directory.parent / "asterisk-etc"):
        if (etc / "pjsip.conf").exists():
            return load_endpoints(etc / "pjsip.conf")
    seen: dict[str, None] = {}
    for sc in scenarios.values():
        for recorded in sc.events:
            state = recorded.event.get("device_state")
            device = state.get("name") if isinstance(state, Mapping) else None
            if isinstance(device, str) and device.upper().startswith("PJSIP/"):
                seen[device.partition("/")[2]] = None
    names = sorted(seen, key=lambda r: (not r.isdigit(), int(r) if r.isdigit() else math.inf, r))
    return {name: {"type": "endpoint"} for name in names}
