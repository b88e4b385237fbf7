"""The AMI source adapter: Asterisk Manager Interface in, normalized events out.

Built on panoramisk's ``AMIProtocol`` (actions, ActionIDs, matching answers to actions; the
stream itself is read by :mod:`bridge.asterisk.ami_wire`, the same way, for a fraction of the
cost) but not on its ``Manager``: the Manager reconnects on a fixed 2 s timer with no backoff,
resends unanswered actions of the old connection after a reconnect (stale Getvars, duplicate
lists) and pings on its own schedule. This module owns one connection's life (login, keepalive,
resync); :class:`bridge.asterisk.retry.ReconnectLoop`, shared with ARI, runs one after another.

Ordering. Everything Asterisk says arrives on one ordered TCP stream, and the tracker gets it in
that order: live events and the items of the resync lists interleaved exactly as they arrived.
Asterisk writes an action's answer in one piece and queues the events raised meanwhile, so an
event read before a list answer is older than that snapshot and one read after it is newer:
applying both in arrival order is exact, where holding live events back until the lists are done
would let a stale event (say, Ringing) override the fresher snapshot (Up). Nothing is dropped.
A ChannelSeen that needs the leg's SIP ids (``needs_ids``) waits at its place in the stream for
its four Getvars (sent at once, bounded by ``getvar_timeout``); its LegIds goes out just before
it and everything after it waits behind it. Once the stream has named any hint, only legs of a
hinted device are asked about: no BLF key can show the others, and their Getvars were most of
the bridge's work under load. The hints are learnt from the stream itself (ExtensionStatus, live
and listed), so that decision is exact at each event's place, whatever the tracker has got yet.
Events are handed over in batches (everything read while the delivering task was busy), never
out of that order.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from panoramisk.actions import Action
from panoramisk.ami_protocol import AMIProtocol
from panoramisk.message import Message

from bridge.asterisk.ami_events import (
    MAPPED_EVENTS,
    dialplan_of,
    events_of,
    needs_ids,
    resource_lists,
)
from bridge.asterisk.ami_wire import (
    LIST_DETAIL,
    MessageSplitter,
    parse_message,
    renamed_list_event,
)
from bridge.asterisk.delivery import Batch, IdsTask, OrderedEvents, ids_result
from bridge.asterisk.retry import ReconnectLoop
from bridge.devices import device_of_channel, hint_devices, parse_groups
from bridge.events import (
    AsteriskEvent,
    ChannelGone,
    ChannelSeen,
    EndpointGroups,
    ExtensionHint,
    LegIds,
    ResyncFinished,
    ResyncStarted,
    RightsMissing,
    SourceLost,
)

log = logging.getLogger(__name__)

ID_VARIABLES = ("CHANNEL(pjsip,call-id)", "CHANNEL(pjsip,local_tag)", "CHANNEL(pjsip,remote_tag)")
# How the caller is presented to the ringing phone (allowed…, prohib…, unavailable); read in
# the same batch so a withheld caller is never shown on anybody's key.
PRESENTATION = "CONNECTEDLINE(pres)"
# ParkedCalls: who waits in which parking space (res_parking; without it Asterisk answers an
# error, which ends that list like an empty one).
# ShowDialPlan: the includes, to resolve a SUBSCRIBE as Asterisk does (bridge.dialplan); it needs
# the AMI user's read class `reporting` (or `config`).
RESYNC_ACTIONS = (
    "DeviceStateList", "ExtensionStateList", "CoreShowChannels", "ParkedCalls", "ShowDialPlan",
)  # fmt: skip
# Every contact of every phone, for the LED messages: the AORs' contacts (static contact= lines
# and registrations), then the registrations with their status (an unreachable one is dropped).
# Asterisk answers them in this order.
CONTACTS_ACTIONS = ("PJSIPShowAors", "PJSIPShowContacts")
MAX_UNPARSED = 1 << 20  # bytes of text without a message end before we give up on the stream
BANNER = b"Asterisk Call Manager/"  # Asterisk's first line, with the protocol version
GROUP_QUERIES = 16  # PJSIPShowEndpoint actions in flight at once while reading pickup groups
RELOAD_SETTLE = 0.5  # seconds after a Reload before the dialplan is read (reloads come in bursts)
# The CLI's `dialplan reload` sends AMI no Reload event (pbx_config calls pbx_load_module itself;
# `module reload`, `core reload` and the AMI Reload action, FreePBX's, do): the dialplan is read
# again this often anyway.
DIALPLAN_REREAD = 300.0


def _first(value: Any) -> str:
    """A header value of a panoramisk Message: a repeated header (a list) keeps its first."""
    return str((value[0] if value else "") if isinstance(value, list) else value)


def _headers(message: Any) -> dict[str, str]:
    """panoramisk's untyped Message as plain headers."""
    return {str(key): _first(value) for key, value in message.items()}


def _header(message: Any, name: str, default: str = "") -> str:
    """One header of a panoramisk Message (None: no answer), as ``_headers`` reads it; cheaper
    than all of them for the four answers of every ringing leg."""
    return _first(default if message is None else message.get(name, default))


def _hint_devices(hint: str) -> list[str]:
    """The devices a hint names, keyed as ``_leg_device`` keys a leg's device."""
    # Read as the tracker reads them, then casefolded whole: a leg fetched for needlessly
    # costs a Getvar, one wrongly skipped costs the pickup.
    return [device.casefold() for device in hint_devices(hint)]


def _leg_device(channel: str) -> str:
    """A channel's device ("PJSIP/202-0000001a" -> "pjsip/202"), as the tracker derives it."""
    return device_of_channel(channel).casefold()


class _Protocol(AMIProtocol):  # type: ignore[misc]  # panoramisk has no type hints
    """AMIProtocol that reads the stream itself and shows every message to the connection
    first, in arrival order. panoramisk's own parsing (a case-insensitive dict per message)
    cost three times as much as the rest of the bridge, so only what panoramisk must see goes
    through it: answers to its pending actions, and Shutdown."""

    version: str | None  # from the banner; AMIProtocol resets it on connecting

    def __init__(self, link: _Connection) -> None:
        super().__init__()
        self.link = link
        self.splitter = MessageSplitter()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.factory = self.link  # read by AMIProtocol on events and on connection loss
        self.encoding = "utf-8"
        self.link.protocol = self

    def data_received(self, data: bytes) -> None:
        try:
            self._read(data)
        except Exception:  # garbage that trips the parser: the stream can no longer be trusted
            log.exception("unreadable data from AMI; reconnecting")
            self.transport.abort()
            return
        if self.splitter.pending > MAX_UNPARSED:
            log.error("AMI sent %d bytes without a message end; reconnecting", MAX_UNPARSED)
            self.transport.abort()

    def _read(self, data: bytes) -> None:
        if self.version is None and data.startswith(BANNER):
            line = data.partition(b"\r\n")[0].decode("utf-8", "ignore")
            self.version = line.partition("/")[2].strip()
            self.log.info("protocol version: '%s'", self.version)
        responses, link = self.responses, self.link
        for text in self.splitter.feed(data):
            if text.startswith("Event: ") and _ignorable(text):
                continue
            block = renamed_list_event(text) if text.startswith(LIST_DETAIL) else text
            h = parse_message(block)
            if h is None:
                continue
            link.message(h)
            # What panoramisk's handle_message acts on; every other message it would ignore.
            if (
                h.get("actionid") in responses
                or h.get("commandid") in responses
                or h.get("event", "").lower() == "shutdown"
            ):
                self.handle_message(Message.from_line(block))


def _where(host: str, port: int) -> str:
    """An endpoint as the log names it: "10.0.0.1:5038", "[fd00::1]:5038"."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _ignorable(block: str) -> bool:
    """Whether an event (``block`` starts with "Event: ") is one nobody acts on: not mapped,
    not Shutdown, answering no action. Told without parsing it, for a third of what Asterisk
    says in a call (bridges, DialState, HangupRequest…); anything unusual is parsed."""
    end = block.find("\r\n")
    name = (block[7:end] if end >= 0 else block[7:]).lower()
    if name in MAPPED_EVENTS or name == "shutdown":
        return False
    text = block.lower()
    # A second Event header is garbage that parse_message must see (and reject).
    return "actionid: " not in text and "commandid: " not in text and text.count("event: ") == 1


class _Action(Action):  # type: ignore[misc]  # panoramisk has no type hints
    """panoramisk's Action, its ActionID kept as a plain string and its wire text written from
    the plain fields: read through panoramisk's case-insensitive dict, they made a Getvar (four
    per ringing leg) cost as much as reading fifty events. Same text, same ActionIDs."""

    def __init__(self, fields: dict[str, str]) -> None:
        super().__init__(fields)
        self._id = str(self["ActionID"])
        # As panoramisk writes it: the headers sorted, the ActionID among them, a blank line.
        lines = sorted({**fields, "ActionID": self._id}.items())
        self._text = "".join(f"{name}: {value}\r\n" for name, value in lines) + "\r\n"

    @property
    def id(self) -> str:
        return self._id

    action_id = id

    def __str__(self) -> str:
        return self._text


class _EveryAction:
    def __contains__(self, action: object) -> bool:
        return True


class _Connection:
    """One TCP connection's state; also the "factory" object AMIProtocol reports to."""

    # AMIProtocol parks unanswered actions of a lost connection for resending unless they are
    # "forgetable": here all are, a resync after the reconnect replaces whatever they asked.
    forgetable_actions = _EveryAction()

    def __init__(self, source: AmiSource) -> None:
        self.source = source
        self.protocol: _Protocol | None = None
        self.lost = asyncio.Event()
        self.awaiting_actions: deque[Any] = deque()  # required by AMIProtocol, stays empty
        self.login_id = ""
        self.lists: set[str] = set()  # ActionIDs of resync lists not complete yet
        self.list_names: dict[str, str] = {}  # ActionID → action, for the log
        # ShowDialPlan answers being read: ActionID → its ListDialplan items so far
        self.dialplans: dict[str, list[dict[str, str]]] = {}
        self._inflight: set[asyncio.Future[Any]] = set()

    def send(
        self, fields: dict[str, str], *, lists: bool = False
    ) -> tuple[str, asyncio.Future[Any]]:
        """Send an action; returns its ActionID and the future of its answer. With ``lists``
        the answer is every message up to the list's ...Complete event (or the lone error)."""
        action = _Action(fields)
        assert self.protocol is not None
        transport = self.protocol.transport
        if self.lost.is_set() or transport is None or transport.is_closing():
            # Lost meanwhile (Asterisk went away mid-sync): answered like an action in flight
            # when the connection drops, instead of panoramisk logging a traceback per write.
            gone: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            gone.cancel()
            return action.id, gone
        # panoramisk: as_list=None detects a list by "EventList: start"; False takes the first.
        future: asyncio.Future[Any] = self.protocol.send(action, as_list=None if lists else False)
        self._inflight.add(future)
        future.add_done_callback(self._inflight.discard)
        return action.id, future

    def close(self) -> None:
        """Drop the connection at once; ``connection_lost`` follows."""
        transport = None if self.protocol is None else self.protocol.transport
        if transport is not None:
            transport.abort()

    # AMIProtocol's factory interface
    def dispatch(self, message: Any) -> None:
        """Events are taken in ``message`` already, in stream order."""

    def connection_lost(self, exc: object) -> None:
        for future in list(self._inflight):
            future.cancel()  # wakes every waiter at once instead of at its timeout
        self.lost.set()

    def message(self, h: dict[str, str]) -> None:
        """Every message from Asterisk, in arrival order; header names in lower case."""
        action_id = h.get("actionid")
        if action_id is None:
            if "event" in h:
                if h["event"].lower() == "reload":  # the includes may have changed
                    self.source._reloaded(self)
                self.source._accept(events_of(h))
        elif action_id in self.dialplans:
            self._dialplan_item(action_id, h)
        elif action_id == self.login_id:
            if h.get("response") == "Success":
                self.source._begin_resync(self)
        elif action_id in self.lists:
            if "event" not in h and h.get("response") != "Success":
                message = h.get("message", "")
                # "No Contacts found" is how Asterisk says an empty list, "Invalid/unknown
                # command: ParkedCalls" that res_parking is not loaded: nothing wrong.
                quiet = "found" in message.lower() or "unknown command" in message.lower()
                level = logging.DEBUG if quiet else logging.WARNING
                action = self.list_names.get(action_id, action_id)
                log.log(level, "AMI refused %s: %s", action, message)
                if "permission" in message.lower():  # the panel says which right is missing
                    self.source._accept([_rights_missing(action)])
                self._list_done(action_id)
            elif h.get("eventlist", "").lower() == "complete":
                self._list_done(action_id)
            elif "event" in h:
                self.source._accept(events_of(h))

    def read_dialplan(self) -> str:
        """Send ShowDialPlan; its answer becomes one DialplanRead (``_dialplan_item``)."""
        action_id, _ = self.send({"Action": "ShowDialPlan"}, lists=True)
        self.dialplans[action_id] = []
        return action_id

    def _dialplan_item(self, action_id: str, h: dict[str, str]) -> None:
        """One message of a ShowDialPlan answer: the items are kept; at the end they go out
        as one DialplanRead, in stream order."""
        items = self.dialplans[action_id]
        if "event" not in h and h.get("response") != "Success":
            del self.dialplans[action_id]
            reason = h.get("message", "")
            # Only a refusal is the user's rights (Asterisk allows ShowDialPlan to a user with
            # config or reporting write rights); "Did not find context" is an empty dialplan.
            fix = ("give the AMI user `write = reporting`: " if "denied" in reason.lower()
                   else "")  # fmt: skip
            log.warning(
                "cannot list the dialplan's includes (ShowDialPlan: %s); %suntil then a phone "
                "watches its own context's hints, or where that has none, the naming context's",
                reason, fix,
            )
        elif h.get("eventlist", "").lower() == "complete":
            del self.dialplans[action_id]
            self.source._accept([dialplan_of(items)])
        elif h.get("event", "").lower() == "listdialplan":
            if "includecontext" in h or h.get("priority") == "hint":  # all the bridge reads
                items.append(h)
            return
        else:
            return
        if action_id in self.lists and action_id not in self.dialplans:
            self._list_done(action_id)

    def _list_done(self, action_id: str) -> None:
        self.lists.discard(action_id)
        if not self.lists:
            self.source._finish_resync(self)


def _rights_missing(action: str) -> RightsMissing:
    """What a refused resync list costs, and the manager.conf right that allows it."""
    if action == "ParkedCalls":
        return RightsMissing(action, "write = call", "callers shown on parking keys")
    if action.startswith("PJSIP"):
        return RightsMissing(action, "write = system", "phones' contacts for the LED keys")
    return RightsMissing(action, "write = call", "key states after a (re)connect")


class AmiSource:
    """Asterisk over AMI as a stream of :mod:`bridge.events`, resynced after every connect."""

    def __init__(
        self,
        host: str,
        port: int,
        username: str,
        secret: str,
        on_event: Callable[[AsteriskEvent], None],
        *,
        events: str = "call,system",
        backoff_min: float = 0.5,
        backoff_max: float = 30.0,
        ping_interval: float = 10.0,
        getvar_timeout: float = 1.0,
        connect_timeout: float = 5.0,
        contacts: bool = False,
        standby: Sequence[tuple[str, int]] = (),
    ) -> None:
        self.host, self.port = host, port  # the endpoint of the current (or last) session
        # Every endpoint of this PBX by its name in the log: the primary, then the standbys.
        self._endpoints = {_where(h, p): (h, p) for h, p in ((host, port), *standby)}
        self._username, self._secret = username, secret
        self._events = events  # "call,system": no dialplan class, the VarSet/Newexten flood
        self._ping_interval = ping_interval
        self._getvar_timeout = getvar_timeout
        self._connect_timeout = connect_timeout
        self._contacts = contacts  # also resync the phones' registrations (LED rules need them)
        self.connected = False  # TCP up and Login accepted
        self.synced = asyncio.Event()  # set once ResyncFinished has been delivered
        self._queue = OrderedEvents(on_event)
        self._ids: dict[str, IdsTask] = {}
        # Devices named by a hint on this connection, learnt in stream order: only a leg of one
        # can ever show on a BLF key. Empty (no hint seen yet): every leg is worth its ids.
        self._hinted: set[str] = set()
        self._conn: _Connection | None = None
        self._announced = False  # ResyncStarted sent and no SourceLost since
        self._told_rights = False  # RightsMissing sent on this connection
        self._logoff: asyncio.Future[Any] | None = None
        self._groups: asyncio.Task[None] | None = None
        self._reread: asyncio.Task[None] | None = None  # the dialplan read after a Reload
        self._loop = ReconnectLoop(
            "AMI", self._session, self._queue, log, backoff_min=backoff_min,
            backoff_max=backoff_max, endpoints=list(self._endpoints),
        )  # fmt: skip
        self._stopping = self._loop.stopping
        self._problems = self._loop.problems

    async def run(self) -> None:
        """Connect, resync and stream events until ``stop()`` or cancellation."""
        self._logoff = None
        try:
            await self._loop.run()
        finally:
            self.connected = False
            self.synced.clear()
            for task in self._ids.values():
                task.cancel()
            if self._groups is not None:
                self._groups.cancel()
            if self._reread is not None:
                self._reread.cancel()

    async def stop(self) -> None:
        """Log off and make ``run()`` return."""
        logging_off = self._conn is not None and self.connected
        self._loop.stop(cut_attempt=not logging_off)  # do not sit out a connect or login timeout
        if self._conn is not None and logging_off:
            _, self._logoff = self._conn.send({"Action": "Logoff"})

    async def _session(self, endpoint: str) -> bool:
        """One connection's life; True when Login was accepted (the backoff starts over)."""
        self.host, self.port = self._endpoints[endpoint]
        conn = self._conn = _Connection(self)
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(
                loop.create_connection(lambda: _Protocol(conn), self.host, self.port),
                self._connect_timeout,
            )
        except (OSError, TimeoutError) as exc:
            self._problems.report(
                f"cannot connect to AMI at {self.host}:{self.port}: {exc or 'timeout'}"
            )
            return False
        try:
            return await self._logged_in(conn)
        finally:  # however the session ends, even by a bug: the connection and the news go
            conn.close()
            await conn.lost.wait()
            self.connected = False
            self.synced.clear()
            if self._announced and not self._stopping.is_set():
                log.warning("lost the AMI connection to %s:%s", self.host, self.port)
                self._announced = False
                self._queue.put_nowait(Batch([SourceLost()]))

    async def _logged_in(self, conn: _Connection) -> bool:
        """Log in, then keep the connection until it goes or ``stop()``; False if refused."""
        self._ids.clear()
        self._told_rights = False
        self._hinted.clear()  # the resync's ExtensionStateList names them again
        login_action = {"Action": "Login", "Username": self._username, "Secret": self._secret}
        conn.login_id, login = conn.send({**login_action, "Events": self._events})
        done, _ = await asyncio.wait([login], timeout=self._connect_timeout)
        answer = _headers(login.result()) if done and not login.cancelled() else {}
        if answer.get("Response") != "Success":
            reason = answer.get("Message") or ("no answer" if not conn.lost.is_set() else "closed")
            self._problems.report(f"AMI login as {self._username!r} failed: {reason}")
            return False
        self._problems.clear()
        self._loop.following(_where(self.host, self.port))
        waits = [
            asyncio.create_task(self._keepalive(conn)),
            asyncio.create_task(self._stopping.wait()),
            asyncio.create_task(conn.lost.wait()),
        ]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                task.cancel()
        keepalive = waits[0]
        if keepalive.done() and not keepalive.cancelled() and keepalive.exception() is not None:
            raise RuntimeError("the AMI keepalive failed") from keepalive.exception()
        if self._stopping.is_set() and self._logoff is not None:
            await asyncio.wait([self._logoff], timeout=1.0)  # Goodbye, then Asterisk hangs up
        return True

    async def _keepalive(self, conn: _Connection) -> None:
        """Ping; an Asterisk that does not answer within an interval is treated as gone.
        Every ``DIALPLAN_REREAD`` seconds the dialplan is read again, too."""
        last_read = asyncio.get_running_loop().time()
        while True:
            await asyncio.sleep(self._ping_interval)
            now = asyncio.get_running_loop().time()
            if now - last_read >= DIALPLAN_REREAD and self.synced.is_set():
                last_read = now
                self._reloaded(conn, quiet=True)
            _, pong = conn.send({"Action": "Ping"})
            done, _ = await asyncio.wait([pong], timeout=self._ping_interval)
            if not done:
                log.warning("AMI did not answer a Ping within %.1f s", self._ping_interval)
                conn.close()
                return

    def _begin_resync(self, conn: _Connection) -> None:
        """Login accepted (seen in stream order): announce, then ask for the full state."""
        self.connected = True
        self._announced = True
        self._queue.put_nowait(Batch([ResyncStarted(_where(self.host, self.port))]))
        actions = (*RESYNC_ACTIONS, *CONTACTS_ACTIONS) if self._contacts else RESYNC_ACTIONS
        for action in actions:  # pipelined: Asterisk answers them in order
            if action == "ShowDialPlan":
                action_id = conn.read_dialplan()
            else:
                action_id, _ = conn.send({"Action": action})
            conn.lists.add(action_id)
            conn.list_names[action_id] = action

    def _finish_resync(self, conn: _Connection) -> None:
        def synced() -> None:
            if conn is self._conn and not conn.lost.is_set():
                self.synced.set()
                self.refresh_groups()

        self._queue.put_nowait(Batch([ResyncFinished()], then=synced))

    def refresh_groups(self) -> None:
        """Read every PJSIP endpoint's call and pickup groups again (after each sync, and on
        reload), in the background: the pickup policy needs them, the key states do not."""
        conn = self._conn
        if conn is None or not self.connected:
            return
        if self._groups is not None and not self._groups.done():
            self._groups.cancel()
        self._groups = asyncio.create_task(self._read_groups(conn), name="ami-groups")

    async def _read_lists(self, conn: _Connection) -> None:
        """Asterisk's resource_list objects (RFC 4662 BLF lists), the complete set."""
        try:
            answer = await asyncio.wait_for(
                conn.send({"Action": "PJSIPShowResourceLists"}, lists=True)[1], 10
            )
        except TimeoutError:
            log.warning("PJSIPShowResourceLists: no answer; the lists stay as they were")
            return
        messages = answer if isinstance(answer, list) else [answer]
        read = resource_lists([dict(m.items()) for m in messages])
        if read is None:
            why = _header(messages[0] if messages else None, "Message")
            self._problems.report(f"cannot read the resource lists: PJSIPShowResourceLists: {why}")
            return
        self._queue.put_nowait(Batch([read]))

    async def _read_groups(self, conn: _Connection) -> None:
        try:
            await self._read_lists(conn)
        except asyncio.CancelledError:
            return
        try:
            answer = await asyncio.wait_for(
                conn.send({"Action": "PJSIPShowEndpoints"}, lists=True)[1], 10
            )
        except (TimeoutError, asyncio.CancelledError):
            return
        listing = [_headers(m) for m in answer] if isinstance(answer, list) else [_headers(answer)]
        if listing and listing[0].get("Response") == "Error":
            self._problems.report(f"cannot read pickup groups: PJSIPShowEndpoints: "
                          f"{listing[0].get('Message', '')}")  # fmt: skip
            return
        names = [h["ObjectName"] for h in listing if h.get("Event") == "EndpointList"
                 and h.get("ObjectName")]  # fmt: skip
        window = asyncio.Semaphore(GROUP_QUERIES)

        async def one(name: str) -> None:
            async with window:
                action = {"Action": "PJSIPShowEndpoint", "Endpoint": name}
                try:
                    detail = await asyncio.wait_for(conn.send(action, lists=True)[1], 10)
                except TimeoutError:
                    log.warning("PJSIPShowEndpoint %s: no answer", name)
                    return
            for h in map(_headers, detail if isinstance(detail, list) else [detail]):
                if h.get("Event") == "EndpointDetail":
                    groups = (
                        parse_groups(h.get("CallGroup", "")),
                        parse_groups(h.get("PickupGroup", "")),
                    )
                    # Where its SUBSCRIBEs resolve: subscribe_context, else context (FreePBX).
                    contexts = h.get("SubscribeContext", ""), h.get("Context", "")
                    callerid = h.get("Callerid", "")  # the panel's name for its keys
                    self._queue.put_nowait(
                        Batch([EndpointGroups(name, *groups, *contexts, callerid)])
                    )

        await asyncio.gather(*(one(name) for name in names), return_exceptions=True)
        log.debug("read the pickup groups of %d endpoints", len(names))

    def _reloaded(self, conn: _Connection, *, quiet: bool = False) -> None:
        """A module reload (``module reload``, FreePBX's Apply Config), or the periodic read:
        read the includes and the hints again once the burst of Reload events has settled."""
        if self._reread is None or self._reread.done():
            reading = self._read_dialplan(conn, quiet=quiet)
            self._reread = asyncio.create_task(reading, name="ami-dialplan")

    async def _read_dialplan(self, conn: _Connection, *, quiet: bool) -> None:
        await asyncio.sleep(RELOAD_SETTLE)
        if conn is not self._conn or conn.lost.is_set():
            return
        log.log(logging.DEBUG if quiet else logging.INFO,
                "Asterisk reloaded: reading its dialplan's includes and hints again")  # fmt: skip
        conn.read_dialplan()
        _, hints = conn.send({"Action": "ExtensionStateList"}, lists=True)
        try:
            answer = await asyncio.wait_for(hints, 10)
        except (TimeoutError, asyncio.CancelledError):
            return
        for h in map(_headers, answer if isinstance(answer, list) else [answer]):
            if h.get("Event") == "ExtensionStatus":
                self._accept(events_of({k.lower(): v for k, v in h.items()}))

    def _accept(self, events: list[AsteriskEvent]) -> None:
        """Queue mapped events in stream order, starting id lookups for ringing legs."""
        for event in events:
            if isinstance(event, ChannelGone):
                task = self._ids.pop(event.uniqueid, None)
                if task is not None and not task.done():
                    task.cancel()
            elif isinstance(event, ExtensionHint):
                # Only added to: a hint that changes keeps its old devices until the next resync.
                self._hinted.update(_hint_devices(event.hint))
            ids = None
            if (
                isinstance(event, ChannelSeen)
                and needs_ids(event)
                and self._conn is not None
                and self._worth_ids(event)
            ):
                ids = self._ids.get(event.uniqueid)
                if ids is None or (ids.done() and ids_result(ids) is None):
                    ids = asyncio.create_task(self._fetch_ids(self._conn, event))
                    self._ids[event.uniqueid] = ids
            self._queue.add(event, ids)

    def _worth_ids(self, leg: ChannelSeen) -> bool:
        """Whether a BLF key could show this leg, so that its four Getvars are worth sending."""
        # Decided when the leg's event is read: a leg already ringing when a hint first names
        # its device shows no pickup ids unless a later event of that leg arrives (accepted).
        return not self._hinted or _leg_device(leg.name) in self._hinted

    async def _fetch_ids(self, conn: _Connection, leg: ChannelSeen) -> LegIds | None:
        """The Getvars of a leg, in flight at once (never Status: it can deadlock)."""
        futures = [
            conn.send({"Action": "Getvar", "Channel": leg.name, "Variable": v})[1]
            for v in (*ID_VARIABLES, PRESENTATION)
        ]
        _, pending = await asyncio.wait(futures, timeout=self._getvar_timeout)
        for future in pending:
            future.cancel()
        if conn.lost.is_set():
            return None
        if pending:
            log.warning("Getvar for %s timed out after %.1f s", leg.name, self._getvar_timeout)
            return None
        answers = [None if f.cancelled() else f.result() for f in futures]
        values = []
        for answer in answers[: len(ID_VARIABLES)]:
            value = _header(answer, "Value")
            if _header(answer, "Response") != "Success" or not value:
                variable = _header(answer, "Variable", "ids")
                problem = _header(answer, "Message", "empty value")
                log.warning("no %s for %s: %s", variable, leg.name, problem)
                if "permission" in problem.lower() and not self._told_rights:
                    self._told_rights = True  # once per connection: the panel shows it
                    self._queue.put_nowait(Batch([RightsMissing(
                        "Getvar", "write = call", "the pickup ids of ringing calls")]))
                return None
            values.append(value)
        presentation = _header(answers[-1], "Value").lower()
        hidden = presentation.startswith(("prohib", "unavailable"))
        call_id, local_tag, remote_tag = values
        return LegIds(leg.uniqueid, call_id, local_tag, remote_tag, caller_hidden=hidden)
