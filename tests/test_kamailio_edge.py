"""The bridge behind a real Kamailio edge proxy, over real sockets.

Kamailio (Debian package ``kamailio``) runs etc/kamailio/kamailio.cfg unchanged, its site
settings given as ``-A`` defines and a dispatcher.list naming the bridges under test. Each bridge
is a real ``python -m bridge run`` process following a replayed Asterisk 22 on AMI; SIPp is the
phone, with the edge as the only address it knows. What is checked is what a provider relies on:
the subscription dialog stays on the edge (Record-Route in the 200, Route in every NOTIFY and
refresh), the bridge's NOTIFYs reach the phone through the edge and never straight, and the
edge picks the bridge by the Request-URI's domain.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
from collections.abc import Sequence
from pathlib import Path

import pytest
from bridge_process import BridgeProcess
from lxml import etree
from sipp import SCENARIOS, SippWatcher, TracedMessage, free_port
from test_app import NS, collapsed, dialogs, key_state, replaces_csv

from bridge.demo.ami_server import RecordedAmiServer

pytestmark = pytest.mark.skipif(shutil.which("kamailio") is None, reason="kamailio not installed")

ROOT = Path(__file__).parent.parent
EDGE_CONFIG = ROOT / "etc" / "kamailio" / "kamailio.cfg"
RECORDINGS = Path(__file__).parent / "fixtures" / "asterisk-22.10.1"
IDLE_MS = 2500

AMI_REPLAY_SPEED = 4  # tests/conftest.py's `server`: recorded gaps, quarter length


class Kamailio:
    """A Kamailio process on loopback running the example edge configuration."""

    def __init__(self, workdir: Path, bridges: dict[int, Sequence[int]], **defines: str) -> None:
        """``bridges``: dispatcher set -> the bridges' SIP ports on 127.0.0.1 (empty: the shipped
        dispatcher.list); ``defines``:
        more site settings of the configuration (``-A NAME=value``)."""
        self.port = free_port()
        self.workdir = workdir
        lines = [f"{s} sip:127.0.0.1:{p}" for s, ports in bridges.items() for p in ports]
        self.dispatcher_list = workdir / "dispatcher.list"
        if lines:
            self.dispatcher_list.write_text("\n".join(lines) + "\n")
        else:  # none given: the example as shipped
            shutil.copy(EDGE_CONFIG.parent / "dispatcher.list", self.dispatcher_list)
        (workdir / "run").mkdir(exist_ok=True)
        self.defines = defines
        self.probe = bool(lines)
        self.lines: list[str] = []
        self.process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Kamailio:
        defines = {
            "EDGE_UDP": f"udp:127.0.0.1:{self.port}",
            "EDGE_TCP": f"tcp:127.0.0.1:{self.port}",
            "DISPATCHER_LIST": f'"{self.dispatcher_list}"',
            # The shipped example's bridges are not ours to probe.
            "BRIDGE_PING_INTERVAL": "1" if self.probe else "0",
            **self.defines,
        }
        # One UDP worker: the bridge's 200 and its first NOTIFY are then relayed in the order
        # they came. With several, either may overtake the other (RFC 6665 allows it; a phone
        # copes, SIPp only mostly: tests/sipp/watcher.xml).
        args = ["-f", str(EDGE_CONFIG), "-DD", "-E", "-m", "32", "-M", "4", "-n", "1"]
        args += ["-Y", str(self.workdir / "run"), "-w", str(self.workdir)]
        for name, value in defines.items():
            args += ["-A", f"{name}={value}"]
        # Its own process group: Kamailio forks workers that hold its stderr, and all of them
        # must go at the end (a worker left behind kept the log pipe open: a test hung).
        self.process = await asyncio.create_subprocess_exec(
            "kamailio", *args, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )  # fmt: skip
        self._reader = asyncio.create_task(self._read())
        try:
            async with asyncio.timeout(10):
                # Up when it answers: a keep-alive OPTIONS to the edge itself gets 200.
                while (await options(self.port)) != 200:
                    assert self.process.returncode is None, self.log
                    await asyncio.sleep(0.1)
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def _read(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        while line := await self.process.stderr.readline():
            self.lines.append(line.decode(errors="replace"))

    async def __aexit__(self, *exc: object) -> None:
        if self.process is not None:
            group = self.process.pid  # the session leader's pid names its group
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.process.wait(), 10)
            with contextlib.suppress(ProcessLookupError):  # workers that outlived it
                os.killpg(group, signal.SIGKILL)
            await self.process.wait()
        if self._reader is not None:
            await asyncio.wait_for(self._reader, 10)  # the pipe closes with the last worker

    @property
    def log(self) -> str:
        return "".join(self.lines)


async def options(port: int, user: str | None = None) -> int | None:
    """Status of the answer to one OPTIONS sent to 127.0.0.1:``port`` (None: no answer)."""
    ruri = f"sip:{user}@127.0.0.1:{port}" if user else f"sip:127.0.0.1:{port}"
    return await exchange(port, [f"OPTIONS {ruri} SIP/2.0", f"To: <{ruri}>", "CSeq: 1 OPTIONS"])


async def exchange(port: int, lines: list[str], wait: float = 0.5) -> int | None:
    """Send one request over UDP from a fresh socket; the status of the first answer."""
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        own = sock.getsockname()[1]
        head = [lines[0], f"Via: SIP/2.0/UDP 127.0.0.1:{own};branch=z9hG4bK{own}x;rport"]
        head += [f"From: <sip:probe@127.0.0.1:{own}>;tag=p{own}", f"Call-ID: probe-{own}"]
        # Contact: this socket, so that nothing the request starts is sent anywhere else.
        head += [f"Contact: <sip:probe@127.0.0.1:{own}>", "Max-Forwards: 70", *lines[1:]]
        head += ["Content-Length: 0", "", ""]
        await loop.sock_sendto(sock, "\r\n".join(head).encode(), ("127.0.0.1", port))
        try:
            data = await asyncio.wait_for(loop.sock_recv(sock, 65536), wait)
        except TimeoutError:
            return None
    return int(data.split(b" ", 2)[1])


class DomainBridge(BridgeProcess):
    """A bridge process following ``server`` that writes ``domain`` into its URIs."""

    def __init__(self, tmp_path: Path, server: RecordedAmiServer, domain: str) -> None:
        config = tmp_path / f"{domain}.toml"
        config.write_text("# everything comes from --set\n")
        self.sip_port = free_port()
        super().__init__(config, self.sip_port, server.port, tmp_path / f"{domain}.sqlite3")
        self.args += ["--set", f"sip.domain={domain}"]


def vias(message: TracedMessage) -> list[str]:
    """Every Via entry of a message, top first (one header may list several)."""
    return [v.strip() for line in message.headers.get("via", []) for v in line.split(",")]


def through_edge(message: TracedMessage, edge: int, bridge: int) -> bool:
    """Sent by the bridge and relayed by the edge: the edge's Via on top of the bridge's."""
    hops = vias(message)
    return len(hops) == 2 and f"127.0.0.1:{edge};" in hops[0] and f"127.0.0.1:{bridge};" in hops[1]


def entity(notify: TracedMessage) -> str | None:
    return etree.fromstring(notify.body).get("entity") if notify.body else None


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_a_subscription_lives_through_the_edge(
    server: RecordedAmiServer, tmp_path: Path, transport: str
) -> None:
    """Subscribe, ring (with pickup ids), refresh and un-SUBSCRIBE, all through Kamailio. Over
    TCP the phone's side differs from the bridge's (UDP): two Record-Route entries."""
    bridge = DomainBridge(tmp_path, server, "a.example")
    sip_port = bridge.sip_port
    try:
        await bridge.start()
        async with Kamailio(tmp_path, {1: [sip_port]}) as edge:
            async with SippWatcher(
                "202", ("127.0.0.1", edge.port), transport,  # type: ignore[arg-type]
                domain="a.example", idle_ms=IDLE_MS, refresh=True, unsubscribe=True,
            ) as watcher:  # fmt: skip
                await bridge.wait_for("subscribed to 202")
                await server.play("pickup-replaces")
                await bridge.wait_for("202: idle")
                result = await watcher.finish()
            await bridge.wait_for("unsubscribed from 202")
    finally:
        await bridge.close()
    assert result.ok, result.output + bridge.log

    # The 200 that set the dialog up carries the edge's Record-Route (one per side it relays
    # between), which the phone turns into the Route of its refresh and its un-SUBSCRIBE.
    ok = [m for m in result.messages if m.direction == "received" and m.status == 200]
    record_route = ok[0].headers.get("record-route", [])
    assert record_route and all(f"127.0.0.1:{edge.port}" in r for r in record_route), ok[0].raw
    assert len(record_route) == (2 if transport == "tcp" else 1)
    refreshes = [m for m in result.messages if m.direction == "sent" and m.method == "SUBSCRIBE"]
    assert [m.header("Expires") for m in refreshes] == ["600", "600", "0"]
    for sent in refreshes[1:]:
        assert sent.headers.get("route") and sent.start_line.startswith("SUBSCRIBE sip:")
        assert f":{sip_port}" in sent.start_line  # in-dialog: aimed at the bridge's Contact
    assert len([m for m in ok if m.cseq in {r.cseq for r in refreshes}]) >= 3

    # Every NOTIFY left the bridge for the edge (the route set) and reached the phone relayed:
    # the edge's Via on top of the bridge's, the edge's Route entry consumed on the way.
    notifies = result.notifies
    for n in notifies:
        assert through_edge(n, edge.port, sip_port), n.raw
        assert not n.headers.get("route"), n.raw
        assert n.header("Call-ID") == refreshes[0].header("Call-ID")
    assert [n.cseq for n in notifies] == list(range(1, len(notifies) + 1))
    states = [n.header("Subscription-State") or "" for n in notifies]
    assert all(s.startswith("active;") for s in states[:-1])
    assert states[-1].startswith("terminated"), states
    assert all(entity(n) == "sip:202@a.example" for n in notifies if n.body)
    assert collapsed([key_state(n) for n in notifies if n.body]) == [
        "idle", "early/recipient", "idle"
    ]  # fmt: skip
    # The ringing key's NOTIFY carries the ids of the real ringing leg, as without the edge.
    call_id, asterisk_tag, phone_tag = replaces_csv("pickup-replaces")
    early = [
        d for n in notifies if n.body for d in dialogs(n)
        if d.findtext("d:state", namespaces=NS) == "early"
    ]  # fmt: skip
    assert early
    for d in early:
        assert (d.get("call-id"), d.get("remote-tag"), d.get("local-tag")) == (
            call_id, asterisk_tag, phone_tag
        )  # fmt: skip
    assert "Traceback" not in bridge.log


async def test_digest_signed_before_the_edge_rewrote_the_request_uri_is_taken(
    server: RecordedAmiServer, tmp_path: Path
) -> None:
    """The edge writes the chosen bridge's address into the Request-URI (as an SBC does) after
    the phone signed sip:202@a.example: the bridge takes the answer (its sip.domain) and the
    phone gets its NOTIFYs, through the edge, refresh included. SIPp signs with its own code."""
    users = tmp_path / "users.toml"
    users.write_text('203 = "s3cret-203"\n')
    users.chmod(0o600)
    bridge = DomainBridge(tmp_path, server, "a.example")
    bridge.args += ["--set", "security.auth=digest", "--set", f"security.users_file={users}"]
    sip_port = bridge.sip_port
    login = ["-au", "203", "-ap", "s3cret-203", "-auth_uri", "202@a.example"]
    try:
        await bridge.start()
        async with (
            Kamailio(tmp_path, {1: [sip_port]}, BRIDGE_REWRITE_RURI="1") as edge,
            SippWatcher(
                "202", ("127.0.0.1", edge.port), domain="a.example", idle_ms=IDLE_MS,
                scenario=SCENARIOS / "watcher-auth.xml", extra_args=login, timeout=20,
            ) as watcher,
        ):  # fmt: skip
            await bridge.wait_for("subscribed to 202")
            await server.play("ring-cancel")
            await bridge.wait_for("202: idle")
            result = await watcher.finish()
    finally:
        await bridge.close()
    assert result.ok, result.output + bridge.log
    # The bridge saw the Request-URI the edge wrote, not the one the phone signed.
    assert f"SUBSCRIBE for sip:202@127.0.0.1:{sip_port} from" in edge.log  # rewritten
    answers = [m.status for m in result.messages if m.direction == "received" and m.status]
    assert answers == [401, 200, 401, 200], answers
    signed = [m for m in result.messages if m.direction == "sent" and m.header("Authorization")]
    assert all('uri="sip:202@a.example"' in (m.header("Authorization") or "") for m in signed)
    notifies = result.notifies
    assert all(through_edge(n, edge.port, sip_port) for n in notifies)
    assert collapsed([key_state(n) for n in notifies if n.body]) == [
        "idle", "early/recipient", "idle"
    ]  # fmt: skip
    assert "Authorization uri" not in bridge.log


async def test_two_bridges_behind_one_edge_each_answer_for_their_domain(tmp_path: Path) -> None:
    """a.example goes to bridge A (PBX A), b.example to bridge B (PBX B): two PBXs with the same
    extension 202, one address for the phones, and no state crosses between them."""
    async with (
        RecordedAmiServer(RECORDINGS, speed=4) as pbx_a,
        RecordedAmiServer(RECORDINGS, speed=4) as pbx_b,
    ):
        bridge_a = DomainBridge(tmp_path, pbx_a, "a.example")
        bridge_b = DomainBridge(tmp_path, pbx_b, "b.example")
        try:
            await asyncio.gather(bridge_a.start(), bridge_b.start())
            sets = {1: [bridge_a.sip_port], 2: [bridge_b.sip_port]}
            async with (
                Kamailio(tmp_path, sets) as edge,
                SippWatcher("202", ("127.0.0.1", edge.port), domain="a.example",
                            idle_ms=IDLE_MS) as watcher_a,
                SippWatcher("202", ("127.0.0.1", edge.port), domain="b.example",
                            idle_ms=IDLE_MS) as watcher_b,
            ):  # fmt: skip
                await asyncio.gather(
                    bridge_a.wait_for("subscribed to 202"), bridge_b.wait_for("subscribed to 202")
                )
                # A domain no bridge serves is refused at the edge.
                assert await subscribe_status(edge.port, "202@c.example") == 404
                # Different calls on the two PBXs at the same time.
                await asyncio.gather(pbx_a.play("ring-cancel"), pbx_b.play("outbound-from-202"))
                result_a, result_b = await asyncio.gather(watcher_a.finish(), watcher_b.finish())
        finally:
            await asyncio.gather(bridge_a.close(), bridge_b.close())
    for result, bridge, domain, states in (
        (result_a, bridge_a, "a.example", ["idle", "early/recipient", "idle"]),
        (result_b, bridge_b, "b.example", ["idle", "confirmed/initiator", "idle"]),
    ):
        assert result.ok, result.output
        assert all(through_edge(n, edge.port, bridge.sip_port) for n in result.notifies)
        assert {entity(n) for n in result.notifies} == {f"sip:202@{domain}"}
        assert collapsed([key_state(n) for n in result.notifies]) == states, domain
        assert bridge.log.count("subscribed to 202") == 1  # the other domain's never came here
    assert "c.example" in edge.log


async def test_a_bridge_that_is_down_is_passed_over(
    server: RecordedAmiServer, tmp_path: Path
) -> None:
    """Two bridges in one set, one of them not running: every new subscription reaches the live
    one. The Call-ID hash sends some SUBSCRIBEs to the dead one first (then the edge tries the
    next on its timeout: "bridge failed, trying" in its log); once its OPTIONS probes go
    unanswered it is not chosen at all."""
    bridge = DomainBridge(tmp_path, server, "a.example")
    try:
        await bridge.start()
        async with Kamailio(tmp_path, {1: [free_port(), bridge.sip_port]}) as edge:
            watchers = [
                SippWatcher("202", ("127.0.0.1", edge.port), domain="a.example", idle_ms=1000,
                            watcher=f"20{i}")
                for i in (3, 4, 5)
            ]  # fmt: skip
            async with contextlib.AsyncExitStack() as stack:
                for w in watchers:
                    await stack.enter_async_context(w)
                results = await asyncio.gather(*(w.finish() for w in watchers))
    finally:
        await bridge.close()
    for result in results:
        assert result.ok, result.output + edge.log
        assert result.notifies and all(
            through_edge(n, edge.port, bridge.sip_port) for n in result.notifies
        )
    assert bridge.log.count("subscribed to 202") == 3


async def subscribe_status(port: int, target: str, *extra: str) -> int | None:
    """Status of the answer to one out-of-dialog SUBSCRIBE (Event: dialog unless ``extra``
    names another) sent to the edge."""
    headers = list(extra) or ["Event: dialog"]
    return await exchange(
        port,
        [f"SUBSCRIBE sip:{target} SIP/2.0", f"To: <sip:{target}>", "CSeq: 1 SUBSCRIBE",
         "Expires: 600", *headers],
        wait=2,
    )  # fmt: skip


async def test_the_edge_carries_only_blf(server: RecordedAmiServer, tmp_path: Path) -> None:
    """What is not a dialog SUBSCRIBE, or an in-dialog request the edge never record-routed,
    is answered at the edge and never reaches a bridge."""
    bridge = DomainBridge(tmp_path, server, "a.example")
    try:
        await bridge.start()
        async with Kamailio(tmp_path, {1: [bridge.sip_port]}) as edge:
            assert await options(edge.port) == 200  # keep-alive to the edge itself
            assert await subscribe_status(edge.port, "202@a.example", "Event: presence") == 489
            assert await exchange(
                edge.port, ["INVITE sip:202@a.example SIP/2.0", "To: <sip:202@a.example>",
                            "CSeq: 1 INVITE"],
            ) == 405  # fmt: skip
            # A refresh-like SUBSCRIBE with a To tag but no Route naming the edge.
            assert await exchange(
                edge.port, [f"SUBSCRIBE sip:202@127.0.0.1:{bridge.sip_port} SIP/2.0",
                            "To: <sip:202@a.example>;tag=forged", "CSeq: 2 SUBSCRIBE",
                            "Event: dialog", "Expires: 600"],
            ) == 404  # fmt: skip
            # In-dialog with the edge's Route, but not a subscription's method: not relayed
            # (towards a port where nothing answers, so only the edge itself can say 405).
            route = f"Route: <sip:127.0.0.1:{edge.port};lr>"
            assert await exchange(
                edge.port, [f"MESSAGE sip:202@127.0.0.1:{free_port()} SIP/2.0", route,
                            "To: <sip:202@a.example>;tag=forged", "CSeq: 3 MESSAGE"],
            ) == 405  # fmt: skip
            # A NOTIFY with the edge's Route from anyone but a bridge: not relayed either.
            assert await exchange(
                edge.port, [f"NOTIFY sip:203@127.0.0.1:{free_port()} SIP/2.0", route,
                            "To: <sip:203@a.example>;tag=forged", "CSeq: 4 NOTIFY",
                            "Event: dialog", "Subscription-State: active;expires=600"],
            ) == 403  # fmt: skip
            # The one thing that goes through: a SUBSCRIBE for a served domain.
            assert await subscribe_status(edge.port, "202@a.example") == 200
            await bridge.wait_for("subscribed to 202")
    finally:
        await bridge.close()
    assert bridge.log.count("subscribed to 202") == 1


async def test_one_pbx_needs_no_domain_list(server: RecordedAmiServer, tmp_path: Path) -> None:
    """DEFAULT_BRIDGE_SET=1: a phone that subscribes to the edge's address (no domain of the
    list) reaches the bridge, as on a site with one PBX."""
    bridge = DomainBridge(tmp_path, server, "a.example")
    try:
        await bridge.start()
        async with (
            Kamailio(tmp_path, {1: [bridge.sip_port]}, DEFAULT_BRIDGE_SET="1") as edge,
            SippWatcher("202", ("127.0.0.1", edge.port), idle_ms=1000) as watcher,
        ):
            result = await watcher.finish()
    finally:
        await bridge.close()
    assert result.ok, result.output
    assert result.notifies and through_edge(result.notifies[0], edge.port, bridge.sip_port)


async def test_the_shipped_files_load_as_they_are(tmp_path: Path) -> None:
    """kamailio -c accepts the example with its defaults, and it starts with the example
    dispatcher.list (its bridges are never contacted here)."""
    check = await asyncio.create_subprocess_exec(
        "kamailio", "-c", "-f", str(EDGE_CONFIG), "-A",
        f'DISPATCHER_LIST="{EDGE_CONFIG.parent / "dispatcher.list"}"',
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await check.communicate()
    assert check.returncode == 0, output.decode()
    async with Kamailio(tmp_path, {}) as edge:
        assert await options(edge.port) == 200
    assert "ERROR" not in edge.log, edge.log
