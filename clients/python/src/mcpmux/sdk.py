"""The adapter for the official MCP Python SDK (PyPI ``mcp``): the
``(read_stream, write_stream)`` pair that ``mcp.ClientSession`` takes, for one server
of the gateway. Several of them, one per server, share one WebSocket.

    async with mux.transport("everything") as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            tools = await session.list_tools()

The streams carry ``SessionMessage`` objects, as the SDK's own transports do; messages
pass through unchanged, so the SDK speaks MCP with the server itself (its ids, its
``initialize``, its cancellations). Leaving the block ends the upstream session (the
``close`` frame), as the SDK's HTTP transport ends its session on exit.

If the connection drops and the gateway resumes the session, nothing changes for the
SDK. If it does not, every request the SDK has in flight on this server is answered
with a JSON-RPC error (``data.gateway == "session_lost"``) and the upstream session is
gone: make a new ``ClientSession`` (it sends ``initialize`` again). The same happens
when the gateway reports the upstream session lost (the server restarted, or dropped
the session), and then the read stream ends too, so that the SDK fails whatever it
sends next. When the Mux closes for good, the read stream ends, and the SDK fails what
is still pending. Responses to requests the SDK no longer waits for (it cancelled
them, or they were answered here) are dropped.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.shared.message import SessionMessage
from mcp.types import jsonrpc_message_adapter
from pydantic import ValidationError

from ._errors import MuxError

if TYPE_CHECKING:
    from ._mux import Mux
    from ._server import ServerHandle

__all__ = ["READ_BUFFER", "TransportStreams", "mcp_streams"]

log = logging.getLogger("mcpmux")

TransportStreams = tuple[
    MemoryObjectReceiveStream[SessionMessage | Exception], MemoryObjectSendStream[SessionMessage]
]
"""What ``mcp.ClientSession(read_stream, write_stream)`` takes."""

#: Messages from the server that wait for the SDK to read them. When the SDK reads
#: slower than the server writes, the Mux stops reading the socket (for every server)
#: until there is room: nothing is dropped, and the gateway's own flow control
#: (protocol.md section 9) takes over.
READ_BUFFER = 256


class _SdkSink:
    """Takes the server's messages into the SDK's read stream; remembers the ids of
    the SDK's requests in flight, to answer them if the session is lost."""

    def __init__(
        self, handle: ServerHandle, reader: MemoryObjectSendStream[SessionMessage | Exception]
    ) -> None:
        self._handle = handle
        self._reader = reader
        self.in_flight: dict[Any, None] = {}  # insertion-ordered set of request ids

    async def deliver(self, message: dict[str, Any]) -> None:
        if "method" not in message:
            # A response: only to a request the SDK still waits for.
            request_id = message.get("id")
            if not _hashable(request_id) or request_id not in self.in_flight:
                log.debug("a response to %r, which the SDK no longer waits for, was dropped", request_id)
                return
            del self.in_flight[request_id]
        try:
            item: SessionMessage | Exception = SessionMessage(
                jsonrpc_message_adapter.validate_python(message, by_name=False)
            )
        except ValidationError as error:
            item = error
        try:
            await self._reader.send(item)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            log.debug("the SDK's read stream for %s is closed; message dropped", self._handle.name)

    async def session_lost(self, error: MuxError) -> None:
        lost = list(self.in_flight)
        for request_id in lost:
            await self.deliver(_error_reply(request_id, error, self._handle.name))

    def closed(self, error: MuxError) -> None:
        self.in_flight.clear()
        self._reader.close()

    async def upstream_lost(self, error: MuxError) -> None:
        await self.session_lost(error)
        self._reader.close()

    async def given_up(self, request_id: Any, error: MuxError) -> None:
        if request_id in self.in_flight:
            await self.deliver(_error_reply(request_id, error, self._handle.name))


def _error_reply(request_id: Any, error: MuxError, server: str) -> dict[str, Any]:
    """The JSON-RPC error response that tells the SDK its request failed with ``error``."""
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "error": {
            "code": -32000,
            "message": error.message,
            "data": {"gateway": error.code, "server": server},
        },
    }


def _hashable(value: Any) -> bool:
    return isinstance(value, (str, int, float, type(None)))


@asynccontextmanager
async def mcp_streams(mux: Mux, server: str) -> AsyncIterator[TransportStreams]:
    """Yields the ``(read_stream, write_stream)`` pair for ``mcp.ClientSession`` that
    talks to ``server`` through ``mux``. One at a time per server (a second raises
    :class:`MuxError` ``"in_use"``)."""
    handle = mux.server(server)
    read_writer, read_stream = anyio.create_memory_object_stream[SessionMessage | Exception](READ_BUFFER)
    write_stream, write_reader = anyio.create_memory_object_stream[SessionMessage](0)
    streams = (read_writer, read_stream, write_stream, write_reader)
    sink = _SdkSink(handle, read_writer)
    try:
        handle._attach(sink)
    except MuxError:
        for stream in streams:
            stream.close()
        raise

    async def forward_writes() -> None:
        async with write_reader:
            async for session_message in write_reader:
                message = session_message.message.model_dump(by_alias=True, mode="json", exclude_unset=True)
                request_id = message.get("id")
                is_request = "method" in message and request_id is not None and _hashable(request_id)
                if is_request:
                    sink.in_flight[request_id] = None
                elif message.get("method") == "notifications/cancelled":
                    # The SDK gave up on it: its response, if one comes, is dropped.
                    cancelled = (message.get("params") or {}).get("requestId")
                    if _hashable(cancelled):
                        sink.in_flight.pop(cancelled, None)
                try:
                    await handle._send_message(message)
                except MuxError as error:
                    if is_request:
                        sink.in_flight.pop(request_id, None)
                        reply = {
                            "jsonrpc": "2.0",
                            "id": request_id,
                            "error": {
                                "code": -32000,
                                "message": error.message,
                                "data": {"gateway": error.code},
                            },
                        }
                        await sink.deliver(reply)

    try:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(forward_writes)
            try:
                yield read_stream, write_stream
            finally:
                tasks.cancel_scope.cancel()
    finally:
        handle._detach(sink)
        for stream in streams:
            stream.close()
        if not mux.closed:
            # Even when the block was cancelled, and never for long.
            with anyio.move_on_after(5, shield=True):
                try:
                    await mux._send_frame({"type": "close", "server": server})
                except MuxError:
                    pass
