"""``snom-blf-bridge led PHONE KEY LIGHT``: light one key by hand, for installers.

The same controller as the running bridge, with one rule, one phone and its own UDP socket:
the MESSAGE is retransmitted as usual and the phone's answer decides the exit status.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass, field

from bridge.led.controller import LedController
from bridge.led.rules import LedRule
from bridge.sip.headers import ParseError, parse_uri
from bridge.sip.message import Response, parse_message
from bridge.sip.transport import local_address_towards


@dataclass
class _Socket(asyncio.DatagramProtocol):
    responses: asyncio.Queue[Response] = field(default_factory=asyncio.Queue)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            message = parse_message(data)
        except ParseError:
            return
        if isinstance(message, Response):
            self.responses.put_nowait(message)


async def light_key(
    phone: str, key: int, light: str, *, label: str = "", dial: str = "", action: str = "",
    domain: str = "", wait: float = 5.0,
) -> tuple[bool, str]:  # fmt: skip
    """Send one key's light to ``phone`` (``host[:port]`` or a SIP URI); (success, what
    happened), within ``wait`` seconds."""
    uri = phone if phone.startswith(("sip:", "sips:")) else f"sip:{phone}"
    try:
        parsed = parse_uri(uri)
    except ParseError as exc:
        return False, f"{phone}: not a phone address ({exc.reason})"
    over = "tls" if parsed.scheme == "sips" else (parsed.param("transport") or "udp").lower()
    if over != "udp":  # the running bridge sends over TCP/TLS; this tool has a UDP socket only
        return False, f"{phone}: this command sends over UDP only, not {over}"
    host, port = parsed.host.strip("[]"), parsed.port or 5060
    if not host or host.isdigit():
        return False, (f"{phone!r} is not an address: give the phone's IP address or host name, "
                       f"e.g. `led 192.0.2.10 {key} {light}` or "
                       f"`led sip:{host or 'user'}@192.0.2.10:5060 {key} {light}`")  # fmt: skip
    loop = asyncio.get_running_loop()
    try:
        found = await asyncio.wait_for(
            loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM), min(wait, 5.0))
        address = str(found[0][4][0])
    except (OSError, TimeoutError) as exc:
        return False, f"cannot find the phone's address {host!r}: {exc or 'no answer from DNS'}"
    where = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
    user = f"{parsed.user}@" if parsed.user else ""
    target = f"sip:{user}{where}"
    aor = parsed.user or host
    rule = LedRule(aor, key, device="cli", default=light, label=label, dial=dial, action=action)
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    transport, protocol = await loop.create_datagram_endpoint(
        _Socket, local_addr=("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
    local_port = transport.get_extra_info("sockname")[1]

    def local(to: str, _transport: str) -> tuple[str, int]:
        return local_address_towards(to) or "127.0.0.1", local_port

    leds = LedController([rule], domain=domain or host, local=local)
    quiet = logging.getLogger("bridge.led")  # this command says what happened itself
    level, quiet.level = quiet.level, logging.ERROR
    deadline = loop.time() + wait
    answer = ""
    try:
        leds.contact(aor, target, loop.time())
        if not leds.phones[aor].contacts:
            return False, f"{phone}: cannot send there"
        (state,) = leds.phones[aor].contacts.values()
        while not state.confirmed and not state.failures and loop.time() < deadline:
            for data, to in leds.outgoing():
                transport.sendto(data, (to.host, to.port))
            when = leds.next_timer()
            until = deadline if when is None else min(when, deadline)
            try:
                response = await asyncio.wait_for(protocol.responses.get(),
                                                   max(0.0, until - loop.time()))  # fmt: skip
            except TimeoutError:
                leds.handle_timer(loop.time())
                continue
            leds.receive_response(response, loop.time())
            answer = f"{response.status} {response.reason}"
    finally:
        quiet.level = level
        transport.close()
    if state.confirmed:
        return True, f"{phone}: key {key} is {light} ({answer})"
    if answer:
        return False, (f"{phone} ({where}) refused the MESSAGE: {answer} (a Snom takes "
                       "MESSAGEs from other hosts than its registrar only with \"Support broken "
                       "Registrar\" on: docs/LEDS.md)")  # fmt: skip
    return False, (f"no answer from {where} within {wait:g} s: is the phone on, is that its "
                   "address, and may this host reach its SIP port?")
