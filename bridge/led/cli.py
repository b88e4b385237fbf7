"""``snom-blf-bridge led PHONE KEY LIGHT``: light one key by hand, for installers.

The same controller as the running bridge, with one rule, one phone and its own UDP socket:
the MESSAGE is retransmitted as usual and the phone's answer decides the exit status.
"""

from __future__ import annotations

import asyncio
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
    domain: str = "",
) -> tuple[bool, str]:  # fmt: skip
    """Send one key's light to ``phone`` (``host[:port]`` or a SIP URI); (success, what
    happened)."""
    uri = phone if phone.startswith(("sip:", "sips:")) else f"sip:{phone}"
    try:
        parsed = parse_uri(uri)
    except ParseError as exc:
        return False, f"{phone}: not a phone address ({exc.reason})"
    aor = parsed.user or "phone"
    rule = LedRule(aor, key, device="cli", default=light, label=label, dial=dial, action=action)
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(_Socket, local_addr=("0.0.0.0", 0))
    port = transport.get_extra_info("sockname")[1]

    def local(host: str, _transport: str) -> tuple[str, int]:
        return local_address_towards(host) or "127.0.0.1", port

    leds = LedController([rule], domain=domain or parsed.host, local=local)
    try:
        leds.contact(aor, uri, loop.time())
        if not leds.phones[aor].contacts:
            return False, f"{phone}: cannot send there"
        (state,) = leds.phones[aor].contacts.values()
        if state.transport != "udp":  # the running bridge sends over TCP/TLS; this tool cannot
            return False, f"{phone}: this command sends over UDP only, not {state.transport}"
        last = "no answer"
        while not state.confirmed and not state.failures:
            for data, to in leds.outgoing():
                transport.sendto(data, (to.host, to.port))
            when = leds.next_timer()
            wait = max(0.0, when - loop.time()) if when is not None else None
            try:
                response = await asyncio.wait_for(protocol.responses.get(), wait)
            except TimeoutError:
                leds.handle_timer(loop.time())
                continue
            leds.receive_response(response, loop.time())
            last = f"{response.status} {response.reason}"
    finally:
        transport.close()
    return bool(state.confirmed), f"{phone} answered {last}"
