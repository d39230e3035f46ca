"""Client for mcpmux: every MCP server behind one WebSocket, with reconnection and
resume.

    async with mcpmux.connect("ws://127.0.0.1:7300/ws", token=KEY) as mux:
        everything = mux.server("everything")
        await everything.initialize()
        result = await everything.request("tools/call", {"name": "echo", "arguments": {"message": "hi"}})

The adapter for the official MCP Python SDK is :meth:`Mux.transport` (module
:mod:`mcpmux.sdk`, which needs the ``mcp`` extra).
"""

from ._backoff import Reconnect
from ._errors import MuxError, MuxTimeoutError
from ._events import ConnectionEvent, ErrorEvent, FrameEvent, SessionEvent, StatusEvent
from ._mux import SUBPROTOCOL, Connecting, Mux, connect
from ._server import DEFAULT_PROTOCOL_VERSION, Progress, ServerHandle
from ._version import __version__

__all__ = [
    "DEFAULT_PROTOCOL_VERSION",
    "SUBPROTOCOL",
    "Connecting",
    "ConnectionEvent",
    "ErrorEvent",
    "FrameEvent",
    "Mux",
    "MuxError",
    "MuxTimeoutError",
    "Progress",
    "Reconnect",
    "ServerHandle",
    "SessionEvent",
    "StatusEvent",
    "__version__",
    "connect",
]
