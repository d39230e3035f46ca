"""Dropped connections: a cut network path in the middle of a streaming call loses
nothing; a resume the gateway refuses fails what was pending, clearly."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest
from conftest import API_KEY, Gateway, start_gateway, stop_gateway
from relay import TcpRelay
from support import WAIT, FrameLog
from websockets.asyncio.client import connect as ws_connect

import mcpmux
from mcpmux import ConnectionEvent, MuxError, Reconnect, SessionEvent

pytestmark = pytest.mark.anyio

QUICK = Reconnect(min_delay=0.05, max_delay=0.5)
#: Short delays and no limit on failed attempts: a 3 s outage takes more than 10 of them.
OUTAGE = Reconnect(min_delay=0.05, max_delay=0.5, max_failures=None)


def long_operation(duration: float, steps: int) -> dict[str, object]:
    return {"name": "trigger-long-running-operation", "arguments": {"duration": duration, "steps": steps}}


async def test_a_cut_during_a_streaming_call_loses_nothing(keyed_gateway: Gateway) -> None:
    # A gateway with API keys: only the key that opened the session may resume it.
    async with TcpRelay(keyed_gateway.host, keyed_gateway.port) as relay:
        async with mcpmux.connect(relay.url(), token=API_KEY, reconnect=OUTAGE) as mux:
            frames = FrameLog(mux)
            connection: list[ConnectionEvent] = []
            mux.on("connection", connection.append)
            session = mux.session
            everything = mux.server("everything")
            await everything.initialize()

            progress: list[float] = []
            fifth = asyncio.Event()

            def on_progress(p: mcpmux.Progress) -> None:
                progress.append(p.progress)
                if p.progress == 5:
                    fifth.set()

            call = asyncio.create_task(
                everything.request("tools/call", long_operation(8, 40), on_progress=on_progress)
            )
            async with asyncio.timeout(WAIT):
                await fifth.wait()
            # No close frame reaches either side, and for 3 s nothing can connect.
            await relay.cut(refuse_for=3.0)
            async with asyncio.timeout(WAIT):
                result = await call
            states = [(e.state, e.resumed) for e in connection]

    assert "completed" in result["content"][0]["text"]
    # Every progress notification, once, in order (mcp-proxy usually drops the last
    # one before the result).
    assert progress == list(range(1, len(progress) + 1)), progress
    assert len(progress) >= 39
    # The session went on; the attempts during the outage were refused.
    assert mux.session == session
    assert states[-1] == ("open", True)
    assert states.count(("reconnecting", None)) >= 2, states
    assert connection[0].code is None  # no close frame
    # The resume asked for the session in the URL (for load balancers) and in hello;
    # the key went in hello only, hidden from frame listeners. The id names its
    # gateway instance, and goes into the URL as it is: a balancer routes on it raw.
    assert re.fullmatch(r"[a-z0-9-]{1,32}\.[0-9a-f]{32}", session), session
    assert relay.request_lines[0] == "GET /ws HTTP/1.1"
    assert relay.request_lines[-1] == f"GET /ws?session={session} HTTP/1.1"
    resume_hello = frames.sent("hello")[-1]
    assert resume_hello["resume"]["session"] == session
    assert resume_hello["token"] == "(hidden)"
    assert API_KEY not in repr(frames.events) + repr(relay.request_lines)


async def test_a_refused_resume_fails_pending_calls_and_reports_lost_sessions(tmp_path: Path) -> None:
    # The gateway keeps a dropped session 1 s; the path stays cut for 3 s.
    gateway = start_gateway(tmp_path, None, {"resumeWindowMs": 1000})
    try:
        async with TcpRelay(gateway.host, gateway.port) as relay:
            async with mcpmux.connect(relay.url(), reconnect=OUTAGE) as mux:
                sessions: list[SessionEvent] = []
                mux.on("session", sessions.append)
                connection: list[ConnectionEvent] = []
                mux.on("connection", connection.append)
                everything = mux.server("everything")
                await everything.initialize()
                await mux.server("memory").initialize()
                started = asyncio.Event()
                call = asyncio.create_task(
                    everything.request(
                        "tools/call", long_operation(20, 40), on_progress=lambda p: started.set()
                    )
                )
                async with asyncio.timeout(WAIT):
                    await started.wait()
                old = mux.session
                await relay.cut(refuse_for=3.0)

                with pytest.raises(MuxError) as lost:
                    async with asyncio.timeout(WAIT):
                        await call
                assert lost.value.code == "session_lost"
                assert "initialized again" in lost.value.message
                assert sorted((e.server, e.state) for e in sessions if e.state == "lost") == [
                    ("everything", "lost"),
                    ("memory", "lost"),
                ]
                assert mux.session not in (None, old)
                assert connection[0].state == "reconnecting" and connection[0].code is None
                assert (connection[-1].state, connection[-1].resumed) == ("open", False)

                # A fresh start works on the new session.
                await everything.initialize()
                echoed = await everything.request(
                    "tools/call", {"name": "echo", "arguments": {"message": "again"}}
                )
                assert echoed["content"][0]["text"] == "Echo: again"
    finally:
        stop_gateway(gateway)


async def test_a_session_resumed_elsewhere_has_moved_and_is_not_taken_back(gateway: Gateway) -> None:
    async with mcpmux.connect(gateway.url, reconnect=QUICK) as mux:
        connection: list[ConnectionEvent] = []
        mux.on("connection", connection.append)
        everything = mux.server("everything")
        await everything.initialize()
        started = asyncio.Event()
        call = asyncio.create_task(
            everything.request("tools/call", long_operation(20, 40), on_progress=lambda p: started.set())
        )
        async with asyncio.timeout(WAIT):
            await started.wait()

        # Another socket resumes this session: it moves there, and ours is closed with 4002.
        async with ws_connect(gateway.url, subprotocols=["mcpmux.v1"]) as other:  # type: ignore[list-item]
            await other.send(json.dumps({"type": "hello", "resume": {"session": mux.session, "last_seq": 0}}))
            assert json.loads(await other.recv())["resumed"] is True

            with pytest.raises(MuxError) as moved:
                async with asyncio.timeout(WAIT):
                    await call
            assert moved.value.code == "session_moved"
            assert [(e.state, e.code) for e in connection] == [("closed", 4002)]
            assert mux.closed
            with pytest.raises(MuxError) as after:
                await everything.request("tools/list")
            assert after.value.code == "closed"


async def test_a_silent_network_path_is_noticed_by_the_heartbeat_and_resumed(tmp_path: Path) -> None:
    # A gateway that gives up on a silent client after 1 to 1.5 s (two or three of its
    # 500 ms heartbeats); the client waits 3 s for a pong, so the gateway has let go of
    # the old socket when the client comes back, and the resume is granted.
    gateway = start_gateway(tmp_path, None, {"heartbeatMs": 500})
    try:
        async with TcpRelay(gateway.host, gateway.port) as relay:
            async with mcpmux.connect(relay.url(), reconnect=QUICK, ping_interval=0.5, ping_timeout=3) as mux:
                connection: list[ConnectionEvent] = []
                mux.on("connection", connection.append)
                everything = mux.server("everything")
                await everything.initialize()
                progress: list[float] = []
                third = asyncio.Event()

                def on_progress(p: mcpmux.Progress) -> None:
                    progress.append(p.progress)
                    if p.progress == 3:
                        third.set()

                call = asyncio.create_task(
                    everything.request("tools/call", long_operation(6, 30), on_progress=on_progress)
                )
                async with asyncio.timeout(WAIT):
                    await third.wait()
                relay.silence()
                async with asyncio.timeout(WAIT):
                    result = await call
                states = [(e.state, e.code, e.resumed) for e in connection]
    finally:
        stop_gateway(gateway)
    assert "completed" in result["content"][0]["text"]
    assert progress == list(range(1, len(progress) + 1)), progress
    assert len(progress) >= 29
    # The heartbeat dropped the socket (no close frame got through) and resumed.
    assert states[0] == ("reconnecting", None, None)
    assert states[-1] == ("open", None, True)
    assert len(relay.request_lines) == 2


async def test_closing_while_reconnecting_fails_what_is_pending(gateway: Gateway) -> None:
    async with TcpRelay(gateway.host, gateway.port) as relay:
        mux = await mcpmux.connect(relay.url(), reconnect=OUTAGE)
        reconnecting = asyncio.Event()
        mux.on("connection", lambda e: reconnecting.set() if e.state == "reconnecting" else None)
        everything = mux.server("everything")
        await everything.initialize()
        started = asyncio.Event()
        call = asyncio.create_task(
            everything.request("tools/call", long_operation(20, 40), on_progress=lambda p: started.set())
        )
        async with asyncio.timeout(WAIT):
            await started.wait()
        await relay.cut(refuse_for=3.0)
        async with asyncio.timeout(WAIT):
            await reconnecting.wait()
        # Written while away: it waits for the reconnection.
        frames = FrameLog(mux)
        queued = asyncio.create_task(everything.request("ping"))
        await frames.wait(lambda log: [f for f in log.sent("rpc") if f["message"].get("method") == "ping"])
        await mux.close()
        for pending in (call, queued):
            with pytest.raises(MuxError) as closed:
                await pending
            assert closed.value.code == "closed"
        assert mux.closed
