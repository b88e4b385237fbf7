"""A TCP relay in front of an AMI or ARI endpoint that can die on cue: the failover demo.

A PBX can go two ways. It crashes or restarts, and the kernel closes its connections (the
bridge hears it at once): :meth:`TcpRelay.cut`. Or the host vanishes (powered off, cable
pulled, a hung VM): no reset, no byte, the connection just stays quiet and only the bridge's
keepalive can tell: :meth:`TcpRelay.freeze`. Put a relay in front of the primary, point the
bridge's primary endpoint at it and its standby at the real server, and kill the relay.

``python -m bridge.demo.relay LISTEN TARGET`` runs one until killed; ``kill -STOP`` it for a
silent death.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging

log = logging.getLogger(__name__)


class TcpRelay:
    """Forwards every connection to ``host:port`` until :meth:`cut` or :meth:`freeze`."""

    def __init__(self, host: str, port: int, *, listen_host: str = "127.0.0.1",
                 listen_port: int = 0) -> None:  # fmt: skip
        self.target = (host, port)
        self.host, self.port = listen_host, listen_port  # the port is real after start()
        self.frozen = asyncio.Event()  # set: nothing more is forwarded, nothing is closed
        self._dead = asyncio.Event()  # set by cut(): frozen connections may end too
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._pipes: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Listen; ``port`` then holds the real port when 0 was asked for."""
        self._server = await asyncio.start_server(self._relay, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def __aenter__(self) -> TcpRelay:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.cut()

    async def cut(self) -> None:
        """Die loudly: stop listening and reset every connection (a crashed PBX)."""
        self._dead.set()
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        for pipe in list(self._pipes):
            pipe.cancel()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def freeze(self) -> None:
        """Die silently: forward nothing more, close nothing (a powered-off PBX). New
        connections are accepted by the kernel and then hear nothing either."""
        self.frozen.set()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            if self.frozen.is_set():
                await self._dead.wait()  # held open, silent, until cut()
                return
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError as exc:
            log.debug("relay: cannot reach %s:%s: %s", *self.target, exc)
            writer.transport.abort()
            self._writers.discard(writer)
            return
        self._writers.add(up_writer)
        pipes = [asyncio.create_task(self._pipe(reader, up_writer)),
                 asyncio.create_task(self._pipe(up_reader, writer))]  # fmt: skip
        self._pipes.update(pipes)
        try:
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pipe in pipes:
                pipe.cancel()
                self._pipes.discard(pipe)
            if not self.frozen.is_set():
                for w in (writer, up_writer):
                    w.transport.abort()
            self._writers.discard(writer)
            self._writers.discard(up_writer)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            if self.frozen.is_set():
                await self._dead.wait()  # swallow: the far end hears nothing more
            writer.write(data)
            await writer.drain()
        if self.frozen.is_set():
            await self._dead.wait()


def main() -> None:
    """``python -m bridge.demo.relay 127.0.0.1:5039 127.0.0.1:5038``"""
    parser = argparse.ArgumentParser(prog="python -m bridge.demo.relay", description=__doc__)
    parser.add_argument("listen", help="host:port to listen on")
    parser.add_argument("target", help="host:port to forward to")
    args = parser.parse_args()
    listen_host, _, listen_port = args.listen.rpartition(":")
    host, _, port = args.target.rpartition(":")
    logging.basicConfig(level=logging.INFO)

    async def serve() -> None:
        relay = TcpRelay(host, int(port), listen_host=listen_host, listen_port=int(listen_port))
        await relay.start()
        log.info("relaying %s:%s to %s:%s", relay.host, relay.port, host, port)
        await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


if __name__ == "__main__":
    main()
