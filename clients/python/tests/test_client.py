"""The client against a real mcpmux with real upstreams: requests, notifications,
progress, timeouts, cancellation, errors, listeners and the key in hello."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest
from conftest import API_KEY, Gateway
from support import WAIT, FrameLog

import mcpmux
from mcpmux import MuxError, MuxTimeoutError, Progress

pytestmark = pytest.mark.anyio


def long_operation(duration: float, steps: int) -> dict[str, Any]:
    return {"name": "trigger-long-running-operation", "arguments": {"duration": duration, "steps": steps}}


async def test_initialize_list_and_call_tools_on_two_servers(gateway: Gateway) -> None:
    async with mcpmux.connect(gateway.url, client={"name": "tests", "version": "1"}) as mux:
        # `<instance>.<32 hex digits>`: the gateway's form (the client keeps it opaque).
        assert mux.session is not None and re.fullmatch(r"[a-z0-9-]{1,32}\.[0-9a-f]{32}", mux.session)
        assert set(mux.servers) == {"everything", "memory"}
        sessions: list[mcpmux.SessionEvent] = []
        mux.on("session", sessions.append)

        everything = mux.server("everything")
        assert mux.server("everything") is everything
        initialized = await everything.initialize()
        assert initialized["protocolVersion"] == mcpmux.DEFAULT_PROTOCOL_VERSION
        tools = await everything.request("tools/list", timeout=WAIT)
        assert "echo" in {tool["name"] for tool in tools["tools"]}
        echoed = await everything.request("tools/call", {"name": "echo", "arguments": {"message": "hi"}})
        assert echoed["content"][0]["text"] == "Echo: hi"

        memory = mux.server("memory")
        await memory.initialize()
        entities = [{"name": "mcpmux", "entityType": "project", "observations": ["one socket"]}]
        await memory.request("tools/call", {"name": "create_entities", "arguments": {"entities": entities}})
        graph = await memory.request("tools/call", {"name": "read_graph", "arguments": {}})
        assert "one socket" in graph["content"][0]["text"]

        assert [(e.server, e.state) for e in sessions] == [("everything", "open"), ("memory", "open")]
        await everything.close()
        assert sessions[-1] == mcpmux.SessionEvent("everything", "closed")
        assert everything.state == "ready"


async def test_progress_arrives_in_order_before_the_result(gateway: Gateway) -> None:
    async with mcpmux.connect(gateway.url) as mux:
        everything = mux.server("everything")
        await everything.initialize()
        seen: list[Progress] = []
        notifications: list[str] = []
        everything.on_notification("*", lambda params, message: notifications.append(message["method"]))
        result = await everything.request("tools/call", long_operation(1, 5), on_progress=seen.append)
        assert "completed" in result["content"][0]["text"]
        values = [p.progress for p in seen]
        # mcp-proxy usually drops the last progress notification before a result.
        assert values in ([1, 2, 3, 4], [1, 2, 3, 4, 5]), values
        assert all(p.total == 5 for p in seen)
        assert notifications.count("notifications/progress") == len(values)


async def test_a_timeout_cancels_the_call_upstream_and_raises(gateway: Gateway) -> None:
    async with mcpmux.connect(gateway.url) as mux:
        frames = FrameLog(mux)
        everything = mux.server("everything")
        await everything.initialize()
        with pytest.raises(MuxTimeoutError) as raised:
            await everything.request("tools/call", long_operation(20, 4), timeout=0.3)
        assert raised.value.code == "timeout"
        assert isinstance(raised.value, TimeoutError)
        call = next(f for f in frames.sent("rpc") if f["message"].get("method") == "tools/call")
        # The cancellation goes out in the background: wait for it to be written.
        cancelled = await frames.wait(FrameLog.cancellations)
        assert cancelled == [{"requestId": call["message"]["id"], "reason": "timeout"}]
        # The server goes on answering.
        echoed = await everything.request("tools/call", {"name": "echo", "arguments": {"message": "after"}})
        assert echoed["content"][0]["text"] == "Echo: after"


async def test_cancelling_the_caller_cancels_the_call_upstream(gateway: Gateway) -> None:
    async with mcpmux.connect(gateway.url) as mux:
        frames = FrameLog(mux)
        everything = mux.server("everything")
        await everything.initialize()
        started = asyncio.Event()
        call = asyncio.create_task(
            everything.request("tools/call", long_operation(20, 40), on_progress=lambda p: started.set())
        )
        async with asyncio.timeout(WAIT):
            await started.wait()
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        cancelled = await frames.wait(FrameLog.cancellations)
        assert cancelled[0]["reason"] == "cancelled by the client"


async def test_errors_name_their_cause(gateway: Gateway) -> None:
    async with mcpmux.connect(gateway.url) as mux:
        errors: list[mcpmux.ErrorEvent] = []
        mux.on("error", errors.append)
        with pytest.raises(MuxError) as unknown:
            await mux.server("nowhere").request("tools/list")
        assert unknown.value.code == "unknown_server"
        assert unknown.value.data == {"gateway": "unknown_server", "server": "nowhere"}

        everything = mux.server("everything")
        await everything.initialize()
        with pytest.raises(MuxError) as missing:
            await everything.request("no/such/method")
        assert missing.value.code == "rpc_error"
        assert missing.value.rpc_code == -32601

        # A notification the gateway cannot carry comes back as an error event.
        got_error = asyncio.Event()
        mux.on("error", lambda e: got_error.set())
        await mux.server("nowhere").notify("notifications/initialized")
        async with asyncio.timeout(WAIT):
            await got_error.wait()
        assert (errors[0].code, errors[0].server) == ("unknown_server", "nowhere")


async def test_acks_follow_the_frames_received(gateway: Gateway) -> None:
    async with mcpmux.connect(gateway.url, ack_every=5) as mux:
        frames = FrameLog(mux)
        everything = mux.server("everything")
        await everything.initialize()
        await everything.request("tools/call", long_operation(1, 12), on_progress=lambda p: None)
        acks = [f["seq"] for f in frames.sent("ack")]
        assert acks and acks == sorted(acks)
        assert all(b - a >= 5 for a, b in zip([0, *acks], acks, strict=False))


async def test_a_key_can_be_presented_in_hello_or_the_subprotocol(keyed_gateway: Gateway) -> None:
    for key_in in ("hello", "subprotocol"):
        async with mcpmux.connect(keyed_gateway.url, token=API_KEY, key_in=key_in) as mux:
            everything = mux.server("everything")
            await everything.initialize()
            arguments = {"message": key_in}
            echoed = await everything.request("tools/call", {"name": "echo", "arguments": arguments})
            assert echoed["content"][0]["text"] == f"Echo: {key_in}"
        assert mux.closed
    with pytest.raises(ValueError):
        mcpmux.connect(keyed_gateway.url, token=API_KEY, key_in="url")  # type: ignore[arg-type]


async def test_a_wrong_or_missing_key_is_refused_for_good(keyed_gateway: Gateway) -> None:
    # In hello: the gateway closes with 4501, which is never retried.
    for token in ("not-the-key-0123456789", None):
        with pytest.raises(MuxError) as refused:
            await mcpmux.connect(keyed_gateway.url, token=token)
        assert refused.value.code == "handshake"
        assert "code 4501" in refused.value.message
    # In the subprotocol: refused with HTTP 401 before the upgrade.
    with pytest.raises(MuxError) as refused:
        await mcpmux.connect(keyed_gateway.url, token="not-the-key-0123456789", key_in="subprotocol")
    assert "HTTP 401" in refused.value.message
    assert "not-the-key" not in refused.value.message


async def test_a_refused_first_connection_raises() -> None:
    with pytest.raises(MuxError) as refused:
        await mcpmux.connect("ws://127.0.0.1:9/ws", open_timeout=5)
    assert refused.value.code == "handshake"


async def test_a_protocol_violation_closes_for_good_and_fails_what_is_pending(gateway: Gateway) -> None:
    async with mcpmux.connect(gateway.url) as mux:
        events: list[mcpmux.ConnectionEvent] = []
        mux.on("connection", events.append)
        everything = mux.server("everything")
        await everything.initialize()
        call = asyncio.create_task(everything.request("tools/call", long_operation(20, 4)))
        # A second hello is a protocol violation: the gateway closes with 4500, which
        # must never be retried unchanged.
        await mux._send_frame({"type": "hello"})
        with pytest.raises(MuxError) as closed:
            async with asyncio.timeout(WAIT):
                await call
        assert closed.value.code == "closed"
        assert "4500" in closed.value.message
        assert [(e.state, e.code) for e in events] == [("closed", 4500)]
        assert mux.closed
        with pytest.raises(MuxError):
            await everything.request("ping")
