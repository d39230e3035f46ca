"""Server-to-client requests (here elicitation/create, from a server built on the
official MCP Python SDK) answered by handlers, and by the SDK's ClientSession."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import Gateway
from mcp import ClientSession
from mcp.client.context import ClientRequestContext
from mcp.types import ElicitRequestParams, ElicitResult, TextContent

import mcpmux
from mcpmux import MuxError

pytestmark = pytest.mark.anyio

ELICITATION: dict[str, Any] = {"elicitation": {"form": {}}}


def tool_text(result: dict[str, Any]) -> str:
    return str(result["content"][0]["text"])


async def test_a_handler_answers_the_servers_request(asking_gateway: Gateway) -> None:
    async with mcpmux.connect(asking_gateway.url) as mux:
        asker = mux.server("asker")
        asked: list[str] = []

        async def answer(params: Any, message: dict[str, Any]) -> dict[str, Any]:
            asked.append(params["message"])
            return {"action": "accept", "content": {"name": "Ada"}}

        asker.on_request("elicitation/create", answer)
        await asker.initialize(capabilities=ELICITATION)
        result = await asker.request("tools/call", {"name": "greet", "arguments": {}}, timeout=30)
        assert tool_text(result) == "Hello, Ada!"
        assert asked == ["What is your name?"]


async def test_a_handler_that_raises_answers_with_its_error(asking_gateway: Gateway) -> None:
    async with mcpmux.connect(asking_gateway.url) as mux:
        asker = mux.server("asker")

        def refuse(params: Any, message: dict[str, Any]) -> None:
            raise MuxError("rpc_error", "nobody is here to answer", rpc_code=-32042)

        asker.on_request("elicitation/create", refuse)
        await asker.initialize(capabilities=ELICITATION)
        # The server passes the client's error on as the tool call's error.
        with pytest.raises(MuxError) as failed:
            await asker.request("tools/call", {"name": "greet", "arguments": {}}, timeout=30)
        assert "nobody is here to answer" in failed.value.message


async def test_a_request_without_a_handler_gets_method_not_found(asking_gateway: Gateway) -> None:
    async with mcpmux.connect(asking_gateway.url) as mux:
        frames: list[dict[str, Any]] = []
        mux.on("frame", lambda e: frames.append(e.frame) if e.direction == "out" else None)
        asker = mux.server("asker")
        await asker.initialize(capabilities=ELICITATION)
        with pytest.raises(MuxError) as failed:
            await asker.request("tools/call", {"name": "greet", "arguments": {}}, timeout=30)
        assert "no handler for elicitation/create" in failed.value.message
        errors = [f["message"]["error"] for f in frames if "error" in f.get("message", {})]
        assert [e["code"] for e in errors] == [-32601]


async def test_the_sdk_client_session_answers_through_its_callback(asking_gateway: Gateway) -> None:
    async def elicit(context: ClientRequestContext, params: ElicitRequestParams) -> ElicitResult:
        return ElicitResult(action="accept", content={"name": "Grace"})

    async with mcpmux.connect(asking_gateway.url) as mux:
        async with (
            mux.transport("asker") as (read, write),
            ClientSession(read, write, elicitation_callback=elicit) as asker,
        ):
            await asker.initialize()
            result = await asker.call_tool("greet", {})
            content = result.content[0]
            assert isinstance(content, TextContent)
            assert content.text == "Hello, Grace!"
