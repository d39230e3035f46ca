"""A real MCP server (the official Python SDK's MCPServer) over Streamable HTTP whose
tool asks the client a question (an elicitation/create request) before answering.
mcp-proxy does not relay server-to-client requests, so the tests use this one for them.
Prints its URL on the first line of standard output."""

import socket

import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from pydantic import BaseModel

server = MCPServer("asker")


class Answer(BaseModel):
    name: str


@server.tool()
async def greet(ctx: Context) -> str:
    """Asks the client for a name, then greets it."""
    result = await ctx.elicit("What is your name?", Answer)
    if result.action != "accept" or result.data is None:
        return f"no name ({result.action})"
    return f"Hello, {result.data.name}!"


def main() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    print(f"http://127.0.0.1:{listener.getsockname()[1]}/mcp", flush=True)
    config = uvicorn.Config(server.streamable_http_app(), log_level="warning")
    uvicorn.Server(config).run(sockets=[listener])


if __name__ == "__main__":
    main()
