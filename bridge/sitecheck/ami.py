"""Read a site's Asterisk over AMI for the live check: log in as the bridge does, try each
action it sends, list hints, endpoints and contacts, and listen for events a while."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Mapping

from bridge.asterisk.ami_events import dialplan_of, events_of
from bridge.asterisk.ami_wire import MessageSplitter, parse_message
from bridge.devices import parse_groups
from bridge.events import ContactChanged
from bridge.sitecheck.facts import Endpoint, SiteFacts

Headers = dict[str, str]
# ParkedCalls: an "unknown command" (no res_parking) is no fault; "Permission denied" is.
LISTS = ("ExtensionStateList", "DeviceStateList", "CoreShowChannels", "ParkedCalls",
         "ShowDialPlan")
ENABLE = ("in manager.conf: `[general]` `enabled = yes`, `port = {port}`, `bindaddr` an address "
          "this host reaches; then `asterisk -rx 'manager reload'`")  # fmt: skip


class _Ami:
    """One AMI connection: actions with their answers (lists gathered), events counted."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 facts: SiteFacts) -> None:  # fmt: skip
        self.reader, self.writer, self.facts = reader, writer, facts
        self.ids = itertools.count(1)
        self.waiting: dict[str, tuple[asyncio.Future[list[Headers]], list[Headers]]] = {}
        self.splitter = MessageSplitter()
        self.reading = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while data := await self.reader.read(65536):
            for block in self.splitter.feed(data):
                try:
                    h = parse_message(block)
                except ValueError:
                    continue
                if h is not None:
                    self._message(h)
        for future, _ in self.waiting.values():
            if not future.done():
                future.set_exception(ConnectionError("Asterisk closed the connection"))

    def _message(self, h: Headers) -> None:
        action_id = h.get("actionid")
        if action_id is None or action_id not in self.waiting:
            if "event" in h:
                self.facts.events_seen += 1
                self.facts.booted |= h["event"] == "FullyBooted"
                privilege = {c.strip().lower() for c in h.get("privilege", "").split(",")}
                self.facts.event_classes |= privilege - {"all", ""}
            return
        future, items = self.waiting[action_id]
        items.append(h)
        listing = h.get("eventlist", "").lower() == "start" or len(items) > 1
        if not listing or h.get("eventlist", "").lower() == "complete":
            del self.waiting[action_id]
            if not future.done():
                future.set_result(items)

    async def ask(self, fields: Mapping[str, str], patience: float = 5.0) -> list[Headers]:
        """Send one action; its answer (a list's items included, header names in lower case)."""
        action_id = f"check-{next(self.ids)}"
        future: asyncio.Future[list[Headers]] = asyncio.get_running_loop().create_future()
        self.waiting[action_id] = (future, [])
        text = "".join(f"{k}: {v}\r\n" for k, v in {**fields, "ActionID": action_id}.items())
        self.writer.write(text.encode() + b"\r\n")
        try:
            return await asyncio.wait_for(future, patience)
        finally:
            self.waiting.pop(action_id, None)

    async def close(self) -> None:
        self.writer.close()
        self.reading.cancel()


def _refused(answer: list[Headers]) -> str | None:
    first = answer[0] if answer else {}
    if first.get("response", "").lower() == "error":
        return first.get("message", "error")
    return None


async def read_site(host: str, port: int, username: str, secret: str, *,
                    listen: float = 3.0, patience: float = 5.0) -> SiteFacts:  # fmt: skip
    """Everything the live check needs from Asterisk's manager interface at host:port."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    facts = SiteFacts(f"AMI {username}@{where}")
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), patience)
    except (OSError, TimeoutError) as exc:
        facts.login_error = f"cannot connect: {exc or 'patience'}"
        facts.login_fix = ENABLE.format(port=port) + "; ami.host/ami.port name it"
        return facts
    ami = _Ami(reader, writer, facts)
    try:
        await _read_all(ami, facts, username, secret, listen=listen, patience=patience)
    except (OSError, ConnectionError, TimeoutError) as exc:
        if not facts.login_error:
            facts.notes.append(f"AMI: {exc or 'patience'}")
            if facts.hints is None:
                facts.login_error = f"no answer: {exc or 'patience'}"
                facts.login_fix = "is this Asterisk's manager port? " + ENABLE.format(port=port)
    finally:
        await ami.close()
    return facts


async def _read_all(ami: _Ami, facts: SiteFacts, username: str, secret: str, *,
                    listen: float, patience: float) -> None:  # fmt: skip
    login = await ami.ask({"Action": "Login", "Username": username, "Secret": secret,
                           "Events": "call,system"}, patience)  # fmt: skip
    if (why := _refused(login)) is not None:
        facts.login_error = f"login as {username!r} refused: {why}"
        facts.login_fix = (f"manager.conf needs a section [{username}] whose `secret` is "
                           "ami.secret, with `permit` naming this host; "
                           "`asterisk -rx 'manager show user " + username + "'` shows it")
        return
    # Getvar of a global variable: allowed exactly when Getvar on a ringing leg is (write = call)
    getvar = await ami.ask({"Action": "Getvar", "Variable": "ASTERISK_CHECK_SITE"}, patience)
    facts.getvar_checked = True
    if (why := _refused(getvar)) is not None and "permission" in why.lower():
        facts.denied["Getvar"] = why
    hints: list[tuple[str, str, str]] = []
    for action in LISTS:
        answer = await ami.ask({"Action": action}, patience)
        if (why := _refused(answer)) is not None:
            if "permission" in why.lower():
                facts.denied[action] = why
            continue
        if action == "ShowDialPlan":
            facts.dialplan = dialplan_of(answer)
        if action == "ExtensionStateList":
            hints = [(h.get("exten", ""), h.get("context", ""), h.get("hint", ""))
                     for h in answer if h.get("event") == "ExtensionStatus"]  # fmt: skip
            facts.hints = hints
    facts.endpoints = await _endpoints(ami, facts, patience)
    facts.contacts = await _contacts(ami, facts, patience)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.sleep(listen)
    facts.listened = round(loop.time() - started, 1)


async def _endpoints(ami: _Ami, facts: SiteFacts, patience: float) -> dict[str, Endpoint] | None:
    listing = await ami.ask({"Action": "PJSIPShowEndpoints"}, patience)
    if (why := _refused(listing)) is not None:
        if "permission" in why.lower():
            facts.denied["PJSIPShowEndpoints"] = why
            return None
        return {}  # "No endpoints found"
    names = [h["objectname"] for h in listing if h.get("event") == "EndpointList"
             and h.get("objectname")]  # fmt: skip
    endpoints = {}
    for name in names:
        detail = await ami.ask({"Action": "PJSIPShowEndpoint", "Endpoint": name}, patience)
        for h in detail:
            if h.get("event") == "EndpointDetail":
                endpoints[name] = Endpoint(
                    name, h.get("context", ""), h.get("subscribecontext", ""),
                    parse_groups(h.get("callgroup", "")), parse_groups(h.get("pickupgroup", "")),
                )  # fmt: skip
    return endpoints


async def _contacts(ami: _Ami, facts: SiteFacts, patience: float) -> dict[str, list[str]] | None:
    contacts: dict[str, list[str]] = {}
    for action in ("PJSIPShowAors", "PJSIPShowContacts"):
        answer = await ami.ask({"Action": action}, patience)
        if (why := _refused(answer)) is not None:
            if "permission" in why.lower():
                facts.denied[action] = why
                return None
            continue  # "No Contacts found": an empty list
        for h in answer:
            if h.get("event") == "AorList" and h.get("objectname"):
                contacts.setdefault(h["objectname"], [])
            for event in events_of(h) if "event" in h else ():
                if isinstance(event, ContactChanged):
                    known = contacts.setdefault(event.aor, [])
                    if event.reachable and event.uri not in known:
                        known.append(event.uri)
                    elif not event.reachable and event.uri in known:
                        known.remove(event.uri)
    return contacts
