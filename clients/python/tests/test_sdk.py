"""The official MCP Python SDK's ClientSession over mcpmux: two servers, one WebSocket."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from conftest import Gateway, start_gateway, stop_gateway
from fake_gateway import FakeConnection, fake_gateway
from mcp import ClientSession, MCPError
from mcp.shared.message import SessionMessage
from mcp.types import CallToolResult, TextContent, jsonrpc_message_adapter
from relay import TcpRelay
from support import WAIT

import mcpmux
from mcpmux import MuxError, Reconnect

pytestmark = pytest.mark.anyio


def text_of(result: CallToolResult) -> str:
    content = result.content[0]
    assert isinstance(content, TextContent)
    return content.text


async def test_client_sessions_list_and_call_tools_on_two_servers_over_one_websocket(
    gateway: Gateway,
) -> None:
    async with TcpRelay(gateway.host, gateway.port) as relay:
        async with mcpmux.connect(relay.url()) as mux:
            async with (
                mux.transport("everything") as (everything_read, everything_write),
                mux.transport("memory") as (memory_read, memory_write),
                ClientSession(everything_read, everything_write) as everything,
                ClientSession(memory_read, memory_write) as memory,
            ):
                await everything.initialize()
                await memory.initialize()

                everything_tools = {tool.name for tool in (await everything.list_tools()).tools}
                memory_tools = {tool.name for tool in (await memory.list_tools()).tools}
                assert {"echo", "trigger-long-running-operation"} <= everything_tools
                assert {"create_entities", "read_graph"} <= memory_tools

                echoed = await everything.call_tool("echo", {"message": "from the SDK"})
                assert text_of(echoed) == "Echo: from the SDK"
                entity = {"name": "sdk-test", "entityType": "test", "observations": ["over mcpmux"]}
                await memory.call_tool("create_entities", {"entities": [entity]})
                graph = await memory.call_tool("read_graph", {})
                assert "over mcpmux" in text_of(graph)

                # Both sessions at once, with progress.
                seen: list[float] = []

                async def on_progress(progress: float, total: float | None, message: str | None) -> None:
                    seen.append(progress)

                long_call = everything.call_tool(
                    "trigger-long-running-operation",
                    {"duration": 1, "steps": 5},
                    progress_callback=on_progress,
                )
                finished, searched = await asyncio.gather(
                    long_call, memory.call_tool("search_nodes", {"query": "sdk-test"})
                )
                assert "completed" in text_of(finished)
                assert "sdk-test" in text_of(searched)
                assert seen[:4] == [1, 2, 3, 4]

                with pytest.raises(MuxError) as in_use:
                    async with mux.transport("everything"):
                        pass
                assert in_use.value.code == "in_use"
    # One WebSocket carried both sessions.
    assert len(relay.request_lines) == 1


async def test_a_client_session_survives_a_cut_network_path(gateway: Gateway) -> None:
    async with TcpRelay(gateway.host, gateway.port) as relay:
        outage = Reconnect(min_delay=0.05, max_delay=0.5, max_failures=None)
        async with mcpmux.connect(relay.url(), reconnect=outage) as mux:
            async with mux.transport("everything") as (read, write), ClientSession(read, write) as everything:
                await everything.initialize()
                seen: list[float] = []
                third = asyncio.Event()

                async def on_progress(progress: float, total: float | None, message: str | None) -> None:
                    seen.append(progress)
                    if progress == 3:
                        third.set()

                call = asyncio.create_task(
                    everything.call_tool(
                        "trigger-long-running-operation",
                        {"duration": 4, "steps": 20},
                        progress_callback=on_progress,
                    )
                )
                async with asyncio.timeout(WAIT):
                    await third.wait()
                await relay.cut(refuse_for=1.0)
                async with asyncio.timeout(WAIT):
                    result = await call
                assert "completed" in text_of(result)
                assert seen == list(range(1, len(seen) + 1))
                assert len(seen) >= 19
    assert len(relay.request_lines) >= 2


def status_of(gateway: Gateway, server: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://{gateway.host}:{gateway.port}/status", timeout=WAIT) as response:
        servers = json.load(response)["servers"]
    return next(entry for entry in servers if entry["name"] == server)


async def test_an_upstream_session_lost_under_a_client_session_ends_it(tmp_path: Path) -> None:
    gateway = start_gateway(tmp_path)
    try:
        async with mcpmux.connect(gateway.url) as mux:
            lost = asyncio.Event()
            mux.on("session", lambda e: lost.set() if (e.server, e.state) == ("everything", "lost") else None)
            async with mux.transport("everything") as (read, write), ClientSession(read, write) as everything:
                await everything.initialize()
                started = asyncio.Event()

                async def on_progress(progress: float, total: float | None, message: str | None) -> None:
                    started.set()

                call = asyncio.create_task(
                    everything.call_tool(
                        "trigger-long-running-operation",
                        {"duration": 20, "steps": 20},
                        progress_callback=on_progress,
                    )
                )
                async with asyncio.timeout(WAIT):
                    await started.wait()
                # The server dies; the gateway restarts it and reports the session lost.
                os.killpg(status_of(gateway, "everything")["pid"], signal.SIGKILL)
                async with asyncio.timeout(WAIT):
                    await lost.wait()
                    # Failed: by the gateway's answer, or, when the SDK sees the end of
                    # its read stream first, as "Connection closed".
                    with pytest.raises(MCPError):
                        await call
                    # The SDK is told its transport ended: what it sends next fails at once.
                    with pytest.raises(MCPError) as closed:
                        await everything.list_tools()
                assert closed.value.message == "Connection closed"
    finally:
        stop_gateway(gateway)


def request(request_id: int, method: str) -> SessionMessage:
    return SessionMessage(
        jsonrpc_message_adapter.validate_python({"jsonrpc": "2.0", "id": request_id, "method": method})
    )


def cancel(request_id: int) -> SessionMessage:
    message = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": request_id}}
    return SessionMessage(jsonrpc_message_adapter.validate_python(message))


async def test_responses_no_one_waits_for_never_reach_the_sdk() -> None:
    # The real gateway stops a cancelled request's response, so only a scripted one can
    # send a late one.
    async def script(c: FakeConnection) -> None:
        await c.welcome()
        cancelled = await c.next(lambda f: f.get("message", {}).get("method") == "notifications/cancelled")
        timed_out = await c.next(lambda f: f.get("message", {}).get("method") == "notifications/cancelled")
        for frame in (cancelled, timed_out):
            late = {"jsonrpc": "2.0", "id": frame["message"]["params"]["requestId"], "result": {}}
            await c.send({"type": "rpc", "server": "a", "seq": 1, "message": late})
        params = {"level": "info", "data": "done"}
        done = {"jsonrpc": "2.0", "method": "notifications/message", "params": params}
        await c.send({"type": "rpc", "server": "a", "seq": 2, "message": done})

    async with fake_gateway(script) as fake:
        async with mcpmux.connect(fake.url) as mux, mux.transport("a") as (read, write):
            # The SDK sends a request and cancels it; a handle request times out.
            await write.send(request(7, "tools/list"))
            await write.send(cancel(7))
            with pytest.raises(MuxError) as timed_out:
                await mux.server("a").request("ping", timeout=0.01)
            assert timed_out.value.code == "timeout"
            async with asyncio.timeout(WAIT):
                first = await read.receive()
    assert isinstance(first, SessionMessage)
    assert first.message.model_dump(exclude_unset=True)["method"] == "notifications/message"
    assert len(fake.connections) == 1
