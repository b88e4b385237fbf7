"""The live check's look at this host: are the bridge's SIP and web listeners answering, and
can its store be written."""

from __future__ import annotations

import asyncio
import os
import secrets
import ssl
from pathlib import Path

import aiohttp

from bridge.config import Config
from bridge.findings import Finding

START = ("start the bridge (`systemctl start snom-blf-bridge`; its log: "
         "`journalctl -u snom-blf-bridge`)")


def _target(host: str) -> str:
    """Where to reach a listener bound to ``host`` from this host."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


class _Answer(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.reply: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: object) -> None:
        if not self.reply.done():
            self.reply.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.reply.done():
            self.reply.set_exception(exc)


async def _options_udp(host: str, port: int, patience: float) -> str:
    """Send an OPTIONS; its status line, or why there was none."""
    loop = asyncio.get_running_loop()
    transport, answer = await loop.create_datagram_endpoint(_Answer, remote_addr=(host, port))
    local = transport.get_extra_info("sockname")
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    mine = f"[{local[0]}]:{local[1]}" if ":" in local[0] else f"{local[0]}:{local[1]}"
    tag = secrets.token_hex(4)
    request = (f"OPTIONS sip:{where} SIP/2.0\r\nVia: SIP/2.0/UDP {mine};rport;branch=z9hG4bK"
               f"{tag}\r\nMax-Forwards: 70\r\nFrom: <sip:check-site@{mine}>;tag={tag}\r\n"
               f"To: <sip:{where}>\r\nCall-ID: check-{tag}\r\nCSeq: 1 OPTIONS\r\n"
               "Content-Length: 0\r\n\r\n")  # fmt: skip
    try:
        transport.sendto(request.encode())
        data = await asyncio.wait_for(answer.reply, patience)
        return data.split(b"\r\n", 1)[0].decode("utf-8", "replace")
    finally:
        transport.close()


async def check_listeners(config: Config, patience: float = 2.0) -> list[Finding]:
    """One finding per SIP listener and one for the web side."""
    out = []
    for address in config.sip.udp:
        host = _target(address.host)
        try:
            status = await _options_udp(host, address.port, patience)
            out.append(Finding("ok", f"SIP listener udp {address}", f"answers OPTIONS: {status}"))
        except (OSError, TimeoutError) as exc:
            out.append(Finding("fail", f"SIP listener udp {address}",
                               f"no answer to OPTIONS: {exc or 'patience'}", START))  # fmt: skip
    for kind, addresses in (("tcp", config.sip.tcp), ("tls", config.sip.tls)):
        for address in addresses:
            host = _target(address.host)
            try:
                context = None
                if kind == "tls":
                    context = ssl.create_default_context()
                    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
                _, writer = await asyncio.wait_for(
                    asyncio.open_connection(host, address.port, ssl=context), patience)
                writer.close()
                out.append(Finding("ok", f"SIP listener {kind} {address}", "accepts connections"))
            except (OSError, TimeoutError) as exc:
                out.append(Finding("fail", f"SIP listener {kind} {address}",
                                   f"cannot connect: {exc or 'patience'}", START))  # fmt: skip
    if config.web is not None:
        host = _target(config.web.host)
        where = f"[{host}]:{config.web.port}" if ":" in host else f"{host}:{config.web.port}"
        try:
            limit = aiohttp.ClientTimeout(total=patience)
            async with aiohttp.ClientSession(timeout=limit) as http, \
                    http.get(f"http://{where}/healthz") as response:  # fmt: skip
                text = (await response.text()).strip().splitlines()[:1]
            ok = response.status == 200
            out.append(Finding("ok" if ok else "warn", f"web {config.web}",
                               f"/healthz: {response.status} {' '.join(text)}",
                               "" if ok else "the bridge is not in sync with "
                               "Asterisk yet: see `snom-blf-bridge status`"))  # fmt: skip
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            out.append(Finding("fail", f"web {config.web}", f"no answer: {exc or 'patience'}",
                               START))  # fmt: skip
    return out


def check_store(config: Config) -> Finding:
    """Whether the store's folder can be written (by the user running the check)."""
    if not config.store.path:
        return Finding("ok", "store", "memory only (store.path is empty): subscriptions do "
                       "not survive a restart")  # fmt: skip
    path = Path(config.store.path)
    folder = path.parent
    fix = (f"the unit's StateDirectory= makes {folder} at the service's first start "
           "(`systemctl start snom-blf-bridge`); another store.path must be writable by the "
           "bridge's user (`install -d -m 0700 -o <user> <folder>`)")
    if path.exists() and not os.access(path, os.W_OK):
        return Finding("fail", "store", f"{path} cannot be written by this user", fix)
    if not folder.is_dir():
        return Finding("fail", "store", f"{folder} does not exist", fix)
    if not os.access(folder, os.W_OK | os.X_OK):
        return Finding("fail", "store", f"{folder} cannot be written by this user", fix)
    return Finding("ok", "store", f"{path} is writable")
