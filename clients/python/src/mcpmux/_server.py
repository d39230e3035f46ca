"""One MCP server seen through the gateway: its requests in flight, its notification
listeners, its handlers for server-to-client requests, and the SDK transport attached
to it, if any."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ._errors import MuxError, MuxTimeoutError

if TYPE_CHECKING:
    from ._mux import Mux

log = logging.getLogger("mcpmux")

#: The prefix of the ids of requests made through a :class:`ServerHandle`.
REQUEST_ID_PREFIX = "mcpmux-"

#: The protocol revision :meth:`ServerHandle.initialize` asks for by default.
DEFAULT_PROTOCOL_VERSION = "2025-11-25"


@dataclass(frozen=True)
class Progress:
    """One ``notifications/progress`` of a request."""

    progress: float
    total: float | None = None
    message: str | None = None


NotificationListener = Callable[[Any, dict[str, Any]], object]
"""Called with a notification's ``params`` and the whole JSON-RPC message."""

RequestHandler = Callable[[Any, dict[str, Any]], Any]
"""Called with a server-to-client request's ``params`` and the whole message; returns
the result (or an awaitable of it). Raising :class:`MuxError` with ``rpc_code`` set
answers with that JSON-RPC error code; any other exception with -32603."""


class MessageSink(Protocol):
    """Takes every message of a server that no :meth:`ServerHandle.request` waits for
    (the MCP SDK adapter, :mod:`mcpmux.sdk`)."""

    async def deliver(self, message: dict[str, Any]) -> None:
        """A message from the server: a response, notification or request."""

    async def session_lost(self, error: MuxError) -> None:
        """The client session was not resumed: requests sent through the sink are lost."""

    def closed(self, error: MuxError) -> None:
        """The connection is closed for good."""

    async def given_up(self, request_id: Any, error: MuxError) -> None:
        """A request sent through the sink could not be kept for a resend."""

    async def upstream_lost(self, error: MuxError) -> None:
        """The gateway said the upstream session is lost (``session`` frame ``lost``):
        requests sent through the sink are lost, and the SDK must start over."""


@dataclass
class _Pending:
    """A request waiting for its response."""

    future: asyncio.Future[Any]
    method: str
    on_progress: Callable[[Progress], object] | None


class ServerHandle:
    """A server of the gateway, by name. Get one with :meth:`Mux.server`."""

    def __init__(self, mux: Mux, name: str) -> None:
        self._mux = mux
        self._name = name
        # Requests of this handle in flight, by id; ids are the client's own strings
        # ("mcpmux-N"), so they never collide with the ids of an SDK transport.
        self._pending: dict[str, _Pending] = {}
        self._notification_listeners: dict[str, list[NotificationListener]] = {}
        self._request_handlers: dict[str, RequestHandler] = {}
        self._close_waiters: list[asyncio.Future[None]] = []
        self._sink: MessageSink | None = None
        self._upstream_open = False

    @property
    def name(self) -> str:
        """The server's name in the gateway's configuration."""
        return self._name

    @property
    def state(self) -> str | None:
        """The server's live state (``starting``, ``ready``, ``restarting``, ``down``), or
        None when the gateway has not named it."""
        return self._mux.servers.get(self._name)

    async def initialize(
        self,
        *,
        protocol_version: str = DEFAULT_PROTOCOL_VERSION,
        capabilities: Mapping[str, Any] | None = None,
        client_info: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Sends ``initialize`` and then ``notifications/initialized``; returns the
        ``initialize`` result. It starts a fresh upstream session (and ends the one
        before, if any)."""
        params = {
            "protocolVersion": protocol_version,
            "capabilities": dict(capabilities or {}),
            "clientInfo": dict(client_info or self._mux.client_info),
        }
        result = await self.request("initialize", params, timeout=timeout)
        await self.notify("notifications/initialized")
        return result

    async def request(
        self,
        method: str,
        params: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
        on_progress: Callable[[Progress], object] | None = None,
    ) -> Any:
        """Sends a JSON-RPC request and returns its ``result``.

        ``timeout`` is in seconds: when it passes, the server is sent
        ``notifications/cancelled`` and :class:`MuxTimeoutError` is raised. Cancelling
        the awaiting task sends ``notifications/cancelled`` too. ``on_progress`` asks
        for progress (it adds ``_meta.progressToken``) and is called with each
        :class:`Progress`, in order, before the result.

        Raises :class:`MuxError` for a JSON-RPC error response (``code`` is the
        gateway's code, or ``"rpc_error"``), a refused resume (``"session_lost"``) and
        a closed connection (``"closed"``).
        """
        request_id = self._mux._next_request_id()
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None or on_progress is not None:
            body = dict(params or {})
            if on_progress is not None:
                meta = dict(body.get("_meta") or {})
                meta["progressToken"] = request_id
                body["_meta"] = meta
            message["params"] = body
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = _Pending(future, method, on_progress)
        try:
            await self._mux._send_rpc(self._name, message)
            if timeout is None:
                return await future
            try:
                async with asyncio.timeout(timeout):
                    return await future
            except TimeoutError:
                self._cancel_upstream(request_id, "timeout")
                raise MuxTimeoutError(
                    "timeout",
                    f"no response to {method} from {self._name} within {timeout} s",
                ) from None
        except asyncio.CancelledError:
            if not future.done() or future.cancelled():
                self._cancel_upstream(request_id, "cancelled by the client")
            raise
        finally:
            self._pending.pop(request_id, None)

    async def notify(self, method: str, params: Mapping[str, Any] | None = None) -> None:
        """Sends a JSON-RPC notification. Returns once it is written to the socket (or
        queued for the reconnection); the gateway's complaints, if any, arrive as
        ``error`` events."""
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            message["params"] = dict(params)
        await self._mux._send_rpc(self._name, message)

    def on_notification(self, method: str, listener: NotificationListener) -> Callable[[], None]:
        """Calls ``listener(params, message)`` for each notification ``method`` from
        this server (``"*"``: every notification). Returns the function that removes it."""
        self._notification_listeners.setdefault(method, []).append(listener)

        def remove() -> None:
            listeners = self._notification_listeners.get(method, [])
            if listener in listeners:
                listeners.remove(listener)

        return remove

    def on_request(self, method: str, handler: RequestHandler) -> Callable[[], None]:
        """Answers server-to-client requests ``method`` (sampling, elicitation, roots)
        with ``handler(params, message)``'s return value. Requests without a handler
        get -32601 (method not found). Returns the function that removes it."""
        self._request_handlers[method] = handler

        def remove() -> None:
            if self._request_handlers.get(method) is handler:
                del self._request_handlers[method]

        return remove

    async def close(self) -> None:
        """Ends this client's upstream session with the server (the ``close`` frame)
        and returns when the gateway confirms it, or at once while no socket is open
        (the frame goes out after the resume; a lost session needs none)."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._close_waiters.append(waiter)
        try:
            if not await self._mux._send_frame({"type": "close", "server": self._name}):
                return
            await waiter
        finally:
            if waiter in self._close_waiters:
                self._close_waiters.remove(waiter)

    def __repr__(self) -> str:
        return f"ServerHandle({self._name!r}, state={self.state!r})"

    # Called by the Mux and the SDK adapter.

    def _attach(self, sink: MessageSink) -> None:
        if self._sink is not None:
            raise MuxError("in_use", f"server {self._name!r} already has an MCP SDK transport")
        self._sink = sink

    def _detach(self, sink: MessageSink) -> None:
        if self._sink is sink:
            self._sink = None

    async def _send_message(self, message: dict[str, Any]) -> None:
        await self._mux._send_rpc(self._name, message)

    def _given_up(self, message: dict[str, Any], error: MuxError) -> None:
        """A request of this server's was given up before the gateway confirmed that it
        read it (the resend buffer overflowed): whoever waits for it is told."""
        request_id = message.get("id")
        if not isinstance(message.get("method"), str) or request_id is None:
            return
        pending = self._pending.get(request_id) if isinstance(request_id, str) else None
        if pending is not None:
            if not pending.future.done():
                pending.future.set_exception(error)
                self._cancel_upstream(request_id, "resend_overflow")
        elif self._sink is not None:
            self._mux._spawn(self._sink.given_up(request_id, error), quiet=True)

    def _cancel_upstream(self, request_id: str, reason: str) -> None:
        """Tells the server to stop working on a request the caller gave up on."""
        params = {"requestId": request_id, "reason": reason}
        self._mux._spawn(self.notify("notifications/cancelled", params), quiet=True)

    async def _receive(self, message: dict[str, Any]) -> None:
        """One JSON-RPC message from the server, in the order the gateway sent it."""
        method = message.get("method")
        if isinstance(method, str):
            if "id" in message:
                await self._on_server_request(method, message)
                return
            self._on_notification(method, message)
            if self._sink is not None:
                await self._sink.deliver(message)
            return
        request_id = message.get("id")
        if isinstance(request_id, str) and request_id.startswith(REQUEST_ID_PREFIX):
            # A handle request's: settled, or dropped if the caller gave up on it. Never
            # the SDK's, whose ids are its own.
            pending = self._pending.get(request_id)
            if pending is not None and not pending.future.done():
                if "error" in message:
                    pending.future.set_exception(MuxError.from_rpc_error(message["error"]))
                else:
                    pending.future.set_result(message.get("result"))
        elif self._sink is not None:
            await self._sink.deliver(message)

    def _on_notification(self, method: str, message: dict[str, Any]) -> None:
        params = message.get("params")
        if method == "notifications/progress" and isinstance(params, dict):
            token = params.get("progressToken")
            pending = self._pending.get(token) if isinstance(token, str) else None
            if pending is not None and pending.on_progress is not None:
                progress = Progress(
                    progress=params.get("progress", 0),
                    total=params.get("total"),
                    message=params.get("message"),
                )
                try:
                    pending.on_progress(progress)
                except Exception:
                    log.exception("an on_progress callback of %s raised", pending.method)
        for key in (method, "*"):
            for listener in list(self._notification_listeners.get(key, ())):
                try:
                    listener(params, message)
                except Exception:
                    log.exception("a %s listener of %s raised", key, self._name)

    async def _on_server_request(self, method: str, message: dict[str, Any]) -> None:
        if self._sink is not None:
            await self._sink.deliver(message)
            return
        self._mux._spawn(self._answer(method, message))

    async def _answer(self, method: str, message: dict[str, Any]) -> None:
        handler = self._request_handlers.get(method)
        reply: dict[str, Any] = {"jsonrpc": "2.0", "id": message["id"]}
        if handler is None:
            reply["error"] = {"code": -32601, "message": f"the client has no handler for {method}"}
        else:
            try:
                result = handler(message.get("params"), message)
                if inspect.isawaitable(result):
                    result = await result
                reply["result"] = result if result is not None else {}
            except MuxError as error:
                reply["error"] = {"code": error.rpc_code or -32603, "message": error.message}
                if error.data is not None:
                    reply["error"]["data"] = error.data
            except Exception as error:
                log.exception("the %s handler of %s raised", method, self._name)
                reply["error"] = {"code": -32603, "message": str(error) or type(error).__name__}
        await self._send_message(reply)

    def _on_session(self, state: str, reason: str | None = None) -> None:
        self._upstream_open = state == "open"
        if state == "closed":
            for waiter in self._close_waiters:
                if not waiter.done():
                    waiter.set_result(None)
        if state == "lost" and self._sink is not None:
            why = f" ({reason})" if reason else ""
            error = MuxError(
                "session_lost",
                f"the upstream session with {self._name} was lost{why}; start a new MCP session",
            )
            self._mux._spawn(self._sink.upstream_lost(error))

    def _socket_down(self) -> None:
        """The socket dropped: a close waiting for its answer settles now (the frame goes
        again after a resume if the gateway did not read it)."""
        for waiter in self._close_waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _fail_pending(self, error: MuxError) -> None:
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.set_exception(error)

    async def _session_lost(self, error: MuxError) -> bool:
        """The client session was not resumed. Returns whether this server had an
        upstream session (which is gone now)."""
        had_session = self._upstream_open
        self._upstream_open = False
        self._fail_pending(error)
        for waiter in self._close_waiters:
            if not waiter.done():
                waiter.set_result(None)
        if self._sink is not None:
            await self._sink.session_lost(error)
        return had_session

    def _closed(self, error: MuxError) -> None:
        self._upstream_open = False
        self._fail_pending(error)
        for waiter in self._close_waiters:
            if not waiter.done():
                waiter.set_exception(error)
        if self._sink is not None:
            self._sink.closed(error)
