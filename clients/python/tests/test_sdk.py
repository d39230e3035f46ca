"""The official MCP Python SDK's ClientSession over mcpmux: two servers, one WebSocket."""

from __future__ import annotations

import asyncio

import pytest
from conftest import Gateway
from mcp import ClientSession
from mcp.types import CallToolResult, TextContent
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
        async with mcpmux.connect(relay.url(), reconnect=Reconnect(min_delay=0.05, max_delay=0.5)) as mux:
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
