"""The connection's rules against a scripted gateway (and one real one): frames written
into a socket that was already dead are resent after a resumed welcome from
``welcome.received``, confirmed by a pong and bounded while unconfirmed; and the one
close-code table decides what reconnects."""

from __future__ import annotations

import asyncio

import pytest
from conftest import Gateway
from fake_gateway import FakeConnection, fake_gateway
from relay import TcpRelay
from support import WAIT, FrameLog

import mcpmux
from mcpmux import MuxError, Reconnect
from mcpmux._backoff import close_action
from mcpmux._mux import CONFIRM_AFTER_FRAMES, MAX_UNCONFIRMED_FRAMES

pytestmark = pytest.mark.anyio

QUICK = Reconnect(min_delay=0.01, max_delay=0.1)


def is_call(frame: dict[str, object]) -> bool:
    message = frame.get("message")
    return (
        frame.get("type") == "rpc"
        and isinstance(message, dict)
        and message.get("params", {}).get("arguments", {}).get("message") == "into the void"
    )


async def test_a_request_written_into_a_silent_path_completes_after_the_resume(gateway: Gateway) -> None:
    async with TcpRelay(gateway.host, gateway.port) as relay:
        async with mcpmux.connect(relay.url(), reconnect=QUICK) as mux:
            everything = mux.server("everything")
            await everything.initialize()
            # Answered, so every frame before it was read: only what follows can be missing.
            await everything.request("tools/call", {"name": "echo", "arguments": {"message": "before"}})
            frames = FrameLog(mux)
            opened = asyncio.Event()
            mux.on("connection", lambda e: opened.set() if e.state == "open" else None)

            relay.silence()  # the path is dead, and nothing says so yet
            call = asyncio.create_task(
                everything.request("tools/call", {"name": "echo", "arguments": {"message": "into the void"}})
            )
            await frames.wait(lambda log: [f for f in log.sent("rpc") if is_call(f)])
            relay.reset()
            async with asyncio.timeout(WAIT):
                await opened.wait()
                result = await call
            sent = [e.frame for e in frames.events if e.direction == "out"]

    assert result["content"][0]["text"] == "Echo: into the void"
    assert len([f for f in sent if is_call(f)]) == 2, "written again after the resume, once"
    hello = next(i for i, f in enumerate(sent) if f.get("type") == "hello")
    assert is_call(sent[hello + 1]), "resent first, right after hello"


async def test_frames_after_received_go_again_in_order_before_anything_new() -> None:
    async def script(c: FakeConnection) -> None:
        if c.index == 0:
            await c.welcome()
            await c.next(lambda f: f.get("message", {}).get("method") == "n3")
            await c.ws.close(4000, "slow")
        else:
            await c.welcome(resumed=True, received=1)

    async with fake_gateway(script) as fake:
        async with mcpmux.connect(fake.url, reconnect=QUICK) as mux:
            opened = asyncio.Event()
            mux.on("connection", lambda e: opened.set() if e.state == "open" else None)
            a = mux.server("a")
            for method in ("n1", "n2", "n3"):
                await a.notify(method)
            async with asyncio.timeout(WAIT):
                await opened.wait()
            await a.notify("n4")
            second = fake.connections[1]
            methods = []
            for _ in range(3):
                methods.append((await second.next(lambda f: f["type"] == "rpc"))["message"]["method"])
    assert methods == ["n2", "n3", "n4"]


async def test_a_pong_confirms_every_frame_before_its_ping() -> None:
    async def script(c: FakeConnection) -> None:
        if c.index == 0:
            await c.welcome()
            await c.next(lambda f: f["type"] == "ping")  # asked for after 32 frames
            await c.next(lambda f: f.get("message", {}).get("method") == "n40")
            await c.send({"type": "pong"})
            await c.send({"type": "status", "server": "a", "seq": 1, "state": "confirmed"})
        else:
            # Claims nothing was read: only the frames after the confirmed ones come again.
            await c.welcome(resumed=True, received=0)

    async with fake_gateway(script) as fake:
        async with mcpmux.connect(fake.url, reconnect=QUICK) as mux:
            confirmed = asyncio.Event()
            opened = asyncio.Event()
            mux.on("status", lambda e: confirmed.set() if e.state == "confirmed" else None)
            a = mux.server("a")
            for i in range(1, 41):
                await a.notify(f"n{i}")
            async with asyncio.timeout(WAIT):
                await confirmed.wait()
            mux.on("connection", lambda e: opened.set() if e.state == "open" else None)
            await fake.connections[0].ws.close(4000, "slow")
            async with asyncio.timeout(WAIT):
                await opened.wait()
            first = await fake.connections[1].next(lambda f: f["type"] == "rpc")
            ping = next(i for i, f in enumerate(fake.connections[0].frames) if f["type"] == "ping")
    # frames[0] is hello, so the ping's index is its number in the session.
    assert ping == CONFIRM_AFTER_FRAMES + 1
    assert first["message"]["method"] == f"n{ping}"


async def test_unconfirmed_frames_are_bounded_and_the_oldest_request_fails() -> None:
    async def script(c: FakeConnection) -> None:
        await c.welcome()  # reads everything, confirms nothing (no pong)

    async with fake_gateway(script) as fake:
        async with mcpmux.connect(fake.url, reconnect=QUICK) as mux:
            a = mux.server("a")
            frames = FrameLog(mux)
            first = asyncio.create_task(a.request("tools/list"))
            await frames.wait(lambda log: log.sent("rpc"))  # written: the oldest frame
            for _ in range(MAX_UNCONFIRMED_FRAMES):
                await a.notify("notifications/message")
            with pytest.raises(MuxError) as given_up:
                async with asyncio.timeout(WAIT):
                    await first
            cancel = await fake.connections[0].next(
                lambda f: f.get("message", {}).get("method") == "notifications/cancelled"
            )
    assert given_up.value.code == "resend_overflow"
    assert cancel["message"]["params"]["requestId"] == "mcpmux-1"


@pytest.mark.parametrize(
    ("action", "codes"),
    [
        ("reconnect", [None, 1000, 1001, 1006, 1011, 1012, 1013, 1014, 4000, 4001, 4003, 4499]),
        ("slow", [4029]),
        ("moved", [4002]),
        ("fatal", [1002, 1003, 1007, 1008, 1009, 1010, 4500, 4501, 4508, 4999]),
    ],
)
def test_one_close_code_table(action: str, codes: list[int | None]) -> None:
    for code in codes:
        assert close_action(code) == action, code


def test_after_4029_the_backoff_starts_at_its_highest() -> None:
    policy = Reconnect(min_delay=0.25, max_delay=10)
    assert all(5 <= policy.delay(0, slow=True) <= 10 for _ in range(100))


async def test_close_code_4002_ends_the_connection_with_session_moved() -> None:
    async def script(c: FakeConnection) -> None:
        await c.welcome()
        await c.next(lambda f: f["type"] == "rpc")
        await c.ws.close(4002, "the session moved to another connection")

    async with fake_gateway(script) as fake:
        async with mcpmux.connect(fake.url, reconnect=QUICK) as mux:
            events: list[mcpmux.ConnectionEvent] = []
            mux.on("connection", events.append)
            with pytest.raises(MuxError) as moved:
                async with asyncio.timeout(WAIT):
                    await mux.server("a").request("tools/list")
    assert moved.value.code == "session_moved"
    assert [(e.state, e.code) for e in events] == [("closed", 4002)]
    assert len(fake.connections) == 1


async def test_a_welcome_alone_does_not_start_the_attempt_count_again() -> None:
    async def script(c: FakeConnection) -> None:
        await c.welcome(resumed=c.index > 0)
        await c.ws.close(4000, "slow")

    async with fake_gateway(script) as fake:
        policy = Reconnect(min_delay=0.001, max_delay=0.005, max_attempts=3)
        mux = await mcpmux.connect(fake.url, reconnect=policy)
        closed = asyncio.Event()
        mux.on("connection", lambda e: closed.set() if e.state == "closed" else None)
        async with asyncio.timeout(WAIT):
            await closed.wait()
        await mux.close()
    assert len(fake.connections) == 4, "the first socket and three attempts"


async def test_attempts_that_end_before_a_welcome_stop_after_max_failures() -> None:
    async def script(c: FakeConnection) -> None:
        if c.index > 0:
            c.ws.transport.abort()  # as a refused upgrade looks without its status
            return
        await c.welcome()
        await c.next(lambda f: f["type"] == "rpc")
        await c.ws.close(1001, "going away")

    policy = Reconnect(min_delay=0.001, max_delay=0.005, max_failures=3)
    async with fake_gateway(script) as fake:
        async with mcpmux.connect(fake.url, reconnect=policy) as mux:
            with pytest.raises(MuxError) as failed:
                async with asyncio.timeout(WAIT):
                    await mux.server("a").request("tools/list")
    assert failed.value.code == "reconnect_failed"
    assert "3 attempts in a row" in failed.value.message
    assert len(fake.connections) == 4


async def test_an_upgrade_refused_with_401_on_a_reconnect_ends_the_connection_at_once() -> None:
    async def script(c: FakeConnection) -> None:
        await c.welcome()
        await c.next(lambda f: f["type"] == "rpc")
        await c.ws.close(1001, "going away")

    async with fake_gateway(script, refuse_after=1) as fake:
        async with mcpmux.connect(fake.url, reconnect=QUICK) as mux:
            with pytest.raises(MuxError) as refused:
                async with asyncio.timeout(WAIT):
                    await mux.server("a").request("tools/list")
    assert refused.value.code == "refused"
    assert "HTTP 401" in refused.value.message
    assert len(fake.connections) == 1


async def test_closing_a_servers_session_settles_while_reconnecting_and_when_its_socket_drops() -> None:
    async def script(c: FakeConnection) -> None:
        if c.index > 0:
            return  # never welcomes: the client stays reconnecting
        await c.welcome()
        await c.next(lambda f: f["type"] == "close")  # read, never answered
        await c.ws.close(4000, "slow")

    async with fake_gateway(script) as fake:
        async with mcpmux.connect(fake.url, reconnect=QUICK) as mux:
            reconnecting = asyncio.Event()
            mux.on("connection", lambda e: reconnecting.set() if e.state == "reconnecting" else None)
            async with asyncio.timeout(WAIT):
                await mux.server("a").close()  # its socket drops before the gateway answers
                await reconnecting.wait()
                await mux.server("b").close()  # no socket: settles at once
    assert [f["type"] for f in fake.connections[0].frames].count("close") == 1


async def test_frames_written_while_reconnecting_are_bounded_in_bytes_too() -> None:
    async def script(c: FakeConnection) -> None:
        if c.index > 0:
            return  # never welcomes: the client stays reconnecting
        await c.welcome()
        await c.next(lambda f: f["type"] == "rpc")
        await c.ws.close(4000, "slow")

    async with fake_gateway(script) as fake:
        async with mcpmux.connect(fake.url, reconnect=QUICK, max_queued_bytes=1000) as mux:
            reconnecting = asyncio.Event()
            mux.on("connection", lambda e: reconnecting.set() if e.state == "reconnecting" else None)
            a = mux.server("a")
            await a.notify("first")
            async with asyncio.timeout(WAIT):
                await reconnecting.wait()
            await a.notify("small")  # queued for the resume
            with pytest.raises(MuxError) as full:
                await a.notify("large", {"data": "x" * 1000})
    assert full.value.code == "queue_full"
    assert "max_queued_bytes" in full.value.message
