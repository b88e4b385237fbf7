"""A replayed Asterisk: an asyncio AMI server that speaks what a real Asterisk 22 said.

Used by the tests as "the Asterisk" on a real TCP socket and by the demo mode. It loads scenario
recordings (``ami-wire.jsonl`` + optional ``replaces.csv``), answers actions with the recorded
answers (ActionID rewritten to the client's), and emits the recorded events on demand.

List actions are answered with the recorded answer when one was taken while the replay stands
where it stands now (no event between the recorded answer and the current position); otherwise
the answer is built from what the replay has put up so far (``_World``). The same state lets the
demo loop end every round clean: channels a recording leaves up (``pickup-replaces`` ends with
the call still bridged) get a *synthesized* Hangup, DeviceStateChange and ExtensionStatus.
Each round of the demo loop after the first renames the calls' identifiers (``rounds``), so
that a bridge takes the second round for new calls, not for late news of the first.
``PJSIPShowContacts`` and ``PJSIPShowAors`` are answered from :mod:`bridge.demo.contacts`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from bridge.demo.contacts import static_contacts
from bridge.demo.recording import (
    Headers,
    Scenario,
    load_dialplan,
    load_endpoints,
    load_objects,
    load_recordings,
    paced,
    parse_frames,
)

# Where the demo's recordings are: from here as well, where the CLI has always imported it.
from bridge.demo.recording import bundled_recordings as bundled_recordings  # noqa: PLC0414
from bridge.demo.rounds import RoundIds

log = logging.getLogger(__name__)

BANNER = b"Asterisk Call Manager/11.0.0\r\n"
ALL_EVENTS = frozenset({"all"})
_TRUE = frozenset({"on", "yes", "true", "y", "t", "1"})
_FALSE = frozenset({"off", "no", "false", "n", "f", "0"})
_CHANNEL_BLOCK = (  # the headers every channel event carries
    "Channel ChannelState ChannelStateDesc CallerIDNum CallerIDName ConnectedLineNum"
    " ConnectedLineName Language AccountCode Context Exten Priority Uniqueid Linkedid"
)
_CHANNEL_KEYS = tuple(_CHANNEL_BLOCK.split())
_SHOWN_KEYS = (*_CHANNEL_KEYS, "Application", "ApplicationData", "Duration", "BridgeId")
_EXTENSION_KEYS = ("Exten", "Context", "Hint", "Status", "StatusText")
# list action → (its item event, Message of its first response); it ends with <action>Complete
_LISTS = {
    "DeviceStateList": ("DeviceStateChange", "Device State Changes will follow"),
    "ExtensionStateList": ("ExtensionStatus", "Extension Statuses will follow"),
    "CoreShowChannels": ("CoreShowChannel", "Channels will follow"),
    "ParkedCalls": ("ParkedCall", "Parked calls will follow"),
}
_UNPARKED = frozenset({"UnParkedCall", "ParkedCallTimeOut", "ParkedCallGiveUp"})
_LIST_NAMES = {name.lower(): name for name in _LISTS}
# The write classes Asterisk requires of an action (any one of them will do): manager.c and
# res_pjsip register them so. Actions missing here need none.
_RIGHTS = {
    "getvar": {"call", "reporting"},
    "devicestatelist": {"call", "reporting"},
    "extensionstatelist": {"call", "reporting"},
    "coreshowchannels": {"system", "call", "reporting"},
    "parkedcalls": {"call"},
    "pjsipshowendpoints": {"system"},
    "pjsipshowendpoint": {"system"},
    "pjsipshowcontacts": {"system"},
    "pjsipshowaors": {"system"},
    "showdialplan": {"config", "reporting"},
}
_MAX_PENDING = 1 << 20
EventPredicate = Callable[[Mapping[str, str]], bool]


def event_matches(**expected: str) -> EventPredicate:
    """A ``play(until=…)`` predicate: every given header has exactly the given value."""
    return lambda headers: all(headers.get(k) == v for k, v in expected.items())


def parse_event_mask(value: str | None) -> frozenset[str]:
    """Asterisk's ``Events``/``EventMask`` value as a set of classes (``ALL_EVENTS`` for on)."""
    if value is None or value.strip().lower() in _TRUE:
        return ALL_EVENTS
    if value.strip().lower() in _FALSE:
        return frozenset()
    return frozenset(part.strip().lower() for part in value.split(",") if part.strip())


def _hints_listed(scenario: Scenario) -> int:
    answers = scenario.answers.get("extensionstatelist", [])[:1]
    return sum(f.get("Event") == "ExtensionStatus" for a in answers for f in a.frames)


class _World:
    """What the replayed Asterisk has up now: channels, device and extension states."""

    def __init__(self, scenarios: Iterable[Scenario]) -> None:
        self.channels: dict[str, Headers] = {}
        self.devices: dict[str, str] = {}
        self.extensions: dict[tuple[str, str], Headers] = {}
        self.parked: dict[str, Headers] = {}  # parked Uniqueid → its ParkedCall event
        # Every device and hint any recording listed at its start: newer recordings were made
        # on a PBX with more hints (210, 211, 701), which the older ones never name.
        for scenario in scenarios:
            for action in ("devicestatelist", "extensionstatelist"):
                for answer in scenario.answers.get(action, [])[:1]:
                    for frame in answer.frames:
                        self.apply(frame)
        self.baseline = (dict(self.devices), dict(self.extensions))

    def apply(self, h: Mapping[str, str]) -> None:
        event, uid = h.get("Event", ""), h.get("Uniqueid", "")
        if event == "DeviceStateChange":
            self.devices[h.get("Device", "")] = h.get("State", "")
        elif event == "ExtensionStatus":
            self.extensions[(h.get("Exten", ""), h.get("Context", ""))] = {
                k: h.get(k, "") for k in _EXTENSION_KEYS
            }
        elif event == "ParkedCall":
            self.parked[h.get("ParkeeUniqueid", "")] = {k: v for k, v in h.items()
                                                        if k not in ("Event", "Privilege")}
        elif event in _UNPARKED:
            self.parked.pop(h.get("ParkeeUniqueid", ""), None)
        elif event == "Hangup":
            self.channels.pop(uid, None)
            self.parked.pop(uid, None)
        elif uid and "ChannelState" in h and (event == "Newchannel" or uid in self.channels):
            channel = self.channels.setdefault(uid, {**dict.fromkeys(_SHOWN_KEYS, "")})
            channel.update({k: h.get(k, "") for k in _CHANNEL_KEYS}, Duration="00:00:00")
            if event == "Newexten":
                channel["Application"] = h.get("Application", "")
                channel["ApplicationData"] = h.get("AppData", "")
            elif event in ("BridgeEnter", "BridgeLeave"):
                channel["BridgeId"] = h.get("BridgeUniqueid", "") if event == "BridgeEnter" else ""

    def items(self, action: str) -> list[Headers]:
        """The items of a list action's answer, as Asterisk would list them now."""
        if action == "DeviceStateList":
            return [{"Device": d, "State": s} for d, s in self.devices.items()]
        if action == "ExtensionStateList":
            return [dict(e) for e in self.extensions.values()]
        if action == "ParkedCalls":
            return [dict(p) for p in self.parked.values()]
        return [dict(ch) for ch in reversed(self.channels.values())]  # newest first, as Asterisk

    def name_of(self, channel: str) -> str | None:
        """A channel that is up, given by name or Uniqueid (as Getvar accepts either)."""
        for uid, ch in self.channels.items():
            if channel in (uid, ch["Channel"]):
                return ch["Channel"]
        return None

    def cleanup(self) -> list[Headers]:
        """Synthesized events that hang up what is left and return devices to the baseline."""
        call = {"Privilege": "call,all"}
        out = [
            {"Event": "Hangup", **call, **{k: ch[k] for k in _CHANNEL_KEYS}, "Cause": "16"}
            for ch in self.channels.values()
        ]
        devices, extensions = self.baseline
        for device, state in self.devices.items():
            idle = devices.get(device, "NOT_INUSE")
            if state != idle:
                out.append({"Event": "DeviceStateChange", **call, "Device": device, "State": idle})
        for key, ext in self.extensions.items():
            # A hint the first scenario did not list (device-states' 210) ends idle too.
            resting = extensions.get(key, {**ext, "Status": "0", "StatusText": "Idle"})
            if ext != resting:
                out.append({"Event": "ExtensionStatus", **call, **resting})
        return out


@dataclass(eq=False)
class _Client:
    number: int
    writer: asyncio.StreamWriter
    mask: frozenset[str] | None = None  # None until logged in
    read: frozenset[str] = ALL_EVENTS  # the user's manager.conf `read` classes

    def wants(self, event: Mapping[str, str]) -> bool:
        if self.mask is None:
            return False
        classes = {c.strip().lower() for c in event.get("Privilege", "").split(",")} - {"all", ""}
        if classes and "all" not in self.read and not classes & self.read:
            return False  # Asterisk sends a user only the classes it may read
        if "all" in self.mask:
            return True
        return bool(classes & self.mask) if classes else bool(self.mask)

    def send(self, frames: Iterable[Mapping[str, str]], action_id: str | None = None) -> None:
        self.writer.write(b"".join(_wire(f, action_id) for f in frames))


def _wire(frame: Mapping[str, str], action_id: str | None) -> bytes:
    """Serialize one message; with ``action_id``, it replaces (or becomes) the 2nd header."""
    lines: list[str] = []
    for key, value in frame.items():
        if key == "ActionID" and action_id is not None:
            continue
        lines.append(f"{key}: {value}")
        if len(lines) == 1 and action_id:
            lines.append(f"ActionID: {action_id}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class RecordedAmiServer:
    """An AMI server on loopback that replays recorded Asterisk scenarios."""

    def __init__(
        self,
        recordings: Path | str | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        username: str = "bridge",
        secret: str = "bridgesecret",
        speed: float = 1.0,
        auth_fail_delay: float = 0.0,
    ) -> None:
        folder = Path(recordings or bundled_recordings())
        self.scenarios = load_recordings(folder)
        # Endpoint options (call_group, pickup_group, …) as PJSIPShowEndpoint reports them;
        # tests may change them.
        self.endpoints = load_endpoints(folder / "asterisk-etc" / "pjsip.conf")
        # Every AOR's static contacts (the recorded PBX's), and its registrations (see
        # bridge.demo.contacts); tests change the first, and register phones by emitting
        # ContactStatus events.
        self.static_contacts = static_contacts(
            load_objects(folder / "asterisk-etc" / "pjsip.conf", "aor")
        )
        if not self.scenarios:
            raise ValueError(f"no ami-wire.jsonl recordings under {recordings}")
        # ShowDialPlan: a recorded answer (the dialplan stays as it was through the recordings),
        # else the hints and includes of the recorded PBX's extensions.conf; tests may change it.
        self.dialplan = next(
            (answer.frames[1:-1] for sc in self.scenarios.values()
             for answer in sc.answers.get("showdialplan", [])[:1]),
            load_dialplan(folder / "asterisk-etc" / "extensions.conf"),
        )  # fmt: skip
        self.host, self.port = host, port
        self.username, self.secret = username, secret
        self.speed = speed  # 1.0 = recorded pace, 0 = as fast as possible
        self.auth_fail_delay = auth_fail_delay  # Asterisk itself waits 1 s before refusing
        self.getvar_delay = 0.0  # a slow Asterisk, to test the client's timeout
        # The user's manager.conf `read` and `write` classes (tests take rights away).
        self.read: frozenset[str] = ALL_EVENTS
        self.write: frozenset[str] = ALL_EVENTS
        self.before_answer: Callable[[Mapping[str, str]], Awaitable[None]] | None = None
        self.log: list[tuple[str, str, str]] = []  # (recv|send|event, action/event, id/client)
        self.logins: list[Headers] = []
        self._current = next(iter(self.scenarios.values()))  # see select()
        self._world = _World(self.scenarios.values())
        self._ids = RoundIds(0)  # the demo loop's current round
        self.registered = self._current.registrations()
        self._clients: set[_Client] = set()
        self._numbers = itertools.count(1)
        self._server: asyncio.Server | None = None
        self._tick = asyncio.Event()

    async def start(self) -> None:
        """Listen; ``port`` then holds the real port when 0 was asked for."""
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def __aenter__(self) -> RecordedAmiServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop listening and cut every connection."""
        if self._server is not None:
            self._server.close()
        self.drop_clients()
        if self._server is not None:
            await self._server.wait_closed()

    def drop_clients(self) -> None:
        """Abort every TCP connection at once, like a crashed or restarted Asterisk."""
        for client in list(self._clients):
            client.writer.transport.abort()

    def send_raw(self, data: bytes) -> None:
        """Write bytes as they are to every connected client (garbage tests)."""
        for client in self._clients:
            client.writer.write(data)

    @property
    def logged_in(self) -> int:
        """How many clients are logged in now."""
        return sum(1 for c in self._clients if c.mask is not None)

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` holds; re-checked after every action, answer and event."""
        while not predicate():
            await self._tick.wait()

    def rewind(self, scenario: str) -> None:
        """Start a scenario over from its first event."""
        self.scenarios[scenario].position = 0

    def select(self, scenario: str) -> None:
        """Answer actions from this scenario's recording from now on (``play`` selects its
        scenario too): a client that logs in next is resynced as Asterisk was before it, and the
        phones registered are the ones it lists."""
        self._current = self.scenarios[scenario]
        self.registered = self._current.registrations()

    def select_fullest(self) -> None:
        """Select the recording that lists the most hints at its start, the fullest view of the
        recorded PBX (the older recordings were made before it had hints 210, 211, 701): what
        the demo's bridge should see at its first login."""
        self.select(max(self.scenarios, key=lambda name: _hints_listed(self.scenarios[name])))

    async def play(self, scenario: str, *, until: EventPredicate | None = None) -> None:
        """Emit the scenario's events from where it stands; with ``until``, stop right after the
        first matching event (call again to continue). Spaced by ``speed``."""
        sc = self._current = self.scenarios[scenario]
        async with contextlib.aclosing(paced(sc, self.speed)) as events:
            async for event in events:
                self._emit(self._ids.ami(event.headers))
                if until is not None and until(event.headers):
                    return

    async def loop_forever(
        self, scenarios: Sequence[str] | None = None, pause: float = 3.0, rounds: int | None = None
    ) -> None:
        """Demo mode: play the scenarios one after another, end each clean, forever (or
        ``rounds`` times)."""
        names = list(scenarios or self.scenarios)
        for number in itertools.count() if rounds is None else range(rounds):
            self._ids = RoundIds(number)
            for name in names:
                self.rewind(name)
                await self.play(name)
                for event in self._world.cleanup():  # synthesized, see module docstring
                    self._emit(event)
                await asyncio.sleep(pause)

    def _note(self, kind: str, name: str, detail: str) -> None:
        self.log.append((kind, name, detail))
        self._tick.set()
        self._tick = asyncio.Event()

    def _emit(self, event: Mapping[str, str]) -> None:
        self._world.apply(event)
        self.registered.apply_ami(event)
        for client in self._clients:
            if client.wants(event):
                client.send([event])
                self._note("event", event.get("Event", ""), str(client.number))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = _Client(next(self._numbers), writer)
        self._clients.add(client)
        writer.write(BANNER)
        pending = ""
        try:
            while data := await reader.read(65536):
                frames, pending = parse_frames(pending + data.decode("utf-8", "replace"))
                for frame in frames:  # all noted first: shows what was in flight at once
                    self._note("recv", frame.get("Action", ""), frame.get("ActionID", ""))
                for frame in frames:
                    if not await self._answer(client, frame):
                        return
                if len(pending) > _MAX_PENDING:
                    log.warning("client %d sends no message end; dropping it", client.number)
                    return
        except OSError as exc:
            log.debug("client %d: %s", client.number, exc)
        finally:
            self._clients.discard(client)
            writer.close()
            self._note("closed", "", str(client.number))

    async def _answer(self, client: _Client, frame: Mapping[str, str]) -> bool:
        """Answer one action like Asterisk would; False closes the connection."""
        name, action_id = frame.get("Action", ""), frame.get("ActionID", "")
        action = name.lower()

        def reply(*frames: Mapping[str, str]) -> None:
            client.send(frames, action_id)
            self._note("send", name, action_id)

        if action == "login":
            self.logins.append(dict(frame))
            if (frame.get("Username"), frame.get("Secret")) != (self.username, self.secret):
                await asyncio.sleep(self.auth_fail_delay)
                reply({"Response": "Error", "Message": "Authentication failed"})
                return False
            client.mask = parse_event_mask(frame.get("Events"))
            client.read = self.read
            reply({"Response": "Success", "Message": "Authentication accepted"})
            client.send(b for b in self._current.booted if client.wants(b))
        elif action == "logoff":
            reply({"Response": "Goodbye", "Message": "Thanks for all the fish."})
            return False
        elif client.mask is None:
            reply({"Response": "Error", "Message": "Permission denied"})
        elif not action:
            reply({"Response": "Error", "Message": "Missing action in request"})
        elif "all" not in self.write and action in _RIGHTS and not _RIGHTS[action] & self.write:
            reply({"Response": "Error", "Message": "Permission denied"})
        else:
            if self.before_answer is not None:
                await self.before_answer(frame)
            if action == "getvar" and self.getvar_delay > 0:
                await asyncio.sleep(self.getvar_delay)
            reply(*self._respond(client, action, frame))
        return True

    def _respond(self, client: _Client, action: str, frame: Mapping[str, str]) -> list[Headers]:
        if action == "ping":
            return [{"Response": "Success", "Ping": "Pong", "Timestamp": f"{time.time():.6f}"}]
        if action == "events":
            client.mask = parse_event_mask(frame.get("EventMask", "off"))
            return [{"Response": "Success", "Events": "On" if client.mask else "Off"}]
        if action in _LIST_NAMES:
            recorded = self._current.answer_in_place(action)
            if recorded is not None:
                return [self._ids.ami(frame) for frame in recorded.frames]
            name = _LIST_NAMES[action]
            item, message = _LISTS[name]
            items = [{"Event": item, **i} for i in self._world.items(name)]
            return [
                {"Response": "Success", "EventList": "start", "Message": message},
                *items,
                {"Event": f"{name}Complete", "EventList": "Complete", "ListItems": str(len(items))},
            ]
        if action == "getvar":
            return [self._getvar(frame)]
        if action == "showdialplan":
            return self._dialplan()
        if action == "pjsipshowendpoints":
            return self._endpoint_list()
        if action == "pjsipshowcontacts":
            return self.registered.contact_list()
        if action == "pjsipshowaors":
            return self.registered.aor_list(self.static_contacts)
        if action == "pjsipshowendpoint":
            return self._endpoint_detail(frame.get("Endpoint", ""))
        if action == "pjsipshowresourcelists":
            return self._resource_lists()
        name = frame.get("Action", "")
        text = (
            f"Invalid/unknown command: {name}. Use Action: ListCommands to show available commands."
        )
        return [{"Response": "Error", "Message": text}]

    def _dialplan(self) -> list[Headers]:
        if not self.dialplan:
            return [{"Response": "Error", "Message": "Did not find context"}]
        return [
            {"Response": "Success", "EventList": "start",
             "Message": "DialPlan list will follow"},
            *self.dialplan,
            {"Event": "ShowDialPlanComplete", "EventList": "Complete",
             "ListItems": str(len(self.dialplan)), "ListExtensions": "0",
             "ListPriorities": "0", "ListContexts": "0"},
        ]  # fmt: skip

    def _endpoint_list(self) -> list[Headers]:
        if not self.endpoints:  # Asterisk answers an error, not an empty list
            return [{"Response": "Error", "Message": "No endpoints found"}]
        items = [{"Event": "EndpointList", "ObjectType": "endpoint", "ObjectName": name,
                  "Transport": "", "Aor": opts.get("aors", ""), "DeviceState": "Not in use"}
                 for name, opts in self.endpoints.items()]  # fmt: skip
        return [
            {"Response": "Success", "EventList": "start",
             "Message": "A listing of Endpoints follows, presented as EndpointList events"},
            *items,
            {"Event": "EndpointListComplete", "EventList": "Complete",
             "ListItems": str(len(items))},
        ]  # fmt: skip

    def _resource_lists(self) -> list[Headers]:
        """The resource lists a recording's Asterisk answered (the lists recording has them),
        or Asterisk's answer when pjsip.conf has none."""
        for scenario in self.scenarios.values():
            for answer in scenario.answers.get("pjsipshowresourcelists", [])[:1]:
                return [self._ids.ami(frame) for frame in answer.frames]
        return [{"Response": "Error", "Message": "No resource lists found"}]

    def emit(self, event: Mapping[str, str]) -> None:
        """Send one synthesized event to every client that wants it (tests)."""
        self._emit(event)

    def _endpoint_detail(self, name: str) -> list[Headers]:
        opts = self.endpoints.get(name)
        if opts is None:
            return [{"Response": "Error", "Message": "Unable to retrieve endpoint " + name}]
        detail = {"Event": "EndpointDetail", "ObjectType": "endpoint", "ObjectName": name,
                  "Context": opts.get("context", ""), "CallGroup": opts.get("call_group", ""),
                  "PickupGroup": opts.get("pickup_group", ""),
                  "SubscribeContext": opts.get("subscribe_context", ""),
                  "Callerid": opts.get("callerid", "")}  # fmt: skip
        return [
            {"Response": "Success", "EventList": "start",
             "Message": "Following are Events for each object associated with the Endpoint"},
            detail,
            {"Event": "EndpointDetailComplete", "EventList": "Complete", "ListItems": "1"},
        ]  # fmt: skip

    def _getvar(self, frame: Mapping[str, str]) -> Headers:
        variable, channel = frame.get("Variable", ""), frame.get("Channel", "")
        if not variable:
            return {"Response": "Error", "Message": "No variable specified"}
        name = self._world.name_of(channel) if channel else ""
        if name is None:
            return {"Response": "Error", "Message": "No such channel"}
        recorded = self._ids.recorded_channel(name)
        values = (sc.getvars.get((recorded, variable)) for sc in self.scenarios.values())
        # A function Asterisk cannot evaluate still gets a Success with an empty Value.
        value = self._ids.variable(variable, next((v for v in values if v is not None), ""))
        return {"Response": "Success", "Variable": variable, "Value": value}
