"""The connection to the gateway: opening it (hello, welcome, the key), reading and
routing frames, acks, heartbeats, reconnecting with resume after a drop, and the
frames written but not yet known to be read (resent after a resume, from
``welcome.received``)."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import logging
from collections import deque
from collections.abc import Callable, Coroutine, Generator, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from types import MappingProxyType, TracebackType
from typing import TYPE_CHECKING, Any, Literal, overload
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.typing import Subprotocol

from ._backoff import STABLE_AFTER, Reconnect, close_action
from ._errors import MuxError
from ._events import (
    ConnectionEvent,
    ErrorEvent,
    FrameEvent,
    Listeners,
    SessionEvent,
    StatusEvent,
)
from ._server import REQUEST_ID_PREFIX, ServerHandle
from ._version import __version__

if TYPE_CHECKING:
    from .sdk import TransportStreams

log = logging.getLogger("mcpmux")

#: The WebSocket subprotocol of the gateway.
SUBPROTOCOL = "mcpmux.v1"

#: The gateway's heartbeat interval when a welcome does not say (protocol.md section 9).
DEFAULT_GATEWAY_HEARTBEAT = 15.0

#: Frames written but not yet known to be read are kept for a resend, at most this
#: many and this many bytes; beyond that the oldest is given up (its request, if still
#: waiting, fails with ``resend_overflow``).
MAX_UNCONFIRMED_FRAMES = 1024
MAX_UNCONFIRMED_BYTES = 8 * 1024 * 1024

#: When this many frames (or bytes) wait for confirmation, a ``ping`` frame asks for it:
#: the gateway answers a ping once it has read it, and reads frames in order.
CONFIRM_AFTER_FRAMES = 32
CONFIRM_AFTER_BYTES = 256 * 1024


@dataclass
class _Written:
    """A frame written after ``hello``, numbered as the gateway counts them."""

    number: int
    frame: dict[str, Any]
    text: str


class _Refused(Exception):
    """An attempt to open a socket that did not end in a ``welcome``."""

    def __init__(self, message: str, *, permanent: bool, code: int | None = None) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.code = code


class Mux:
    """One WebSocket to an mcpmux gateway, shared by every server. Made by
    :func:`connect`; close it with :meth:`close` or ``async with``."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None,
        key_in: Literal["hello", "subprotocol"],
        client: Mapping[str, str] | None,
        reconnect: bool | Reconnect,
        ack_every: int,
        max_queued_frames: int,
        max_queued_bytes: int,
        open_timeout: float,
        ping_interval: float | None,
        ping_timeout: float | None,
        max_frame_bytes: int,
    ) -> None:
        if key_in not in ("hello", "subprotocol"):
            raise ValueError('key_in must be "hello" or "subprotocol"')
        if ack_every < 1 or max_queued_frames < 1 or max_queued_bytes < 1:
            raise ValueError("ack_every, max_queued_frames and max_queued_bytes must be at least 1")
        self._url = url
        self._token = token
        self._key_in = key_in
        self._client = dict(client or {"name": "mcpmux-python", "version": __version__})
        self._policy: Reconnect | None = (
            (Reconnect() if reconnect is True else reconnect) if reconnect else None
        )
        self._ack_every = ack_every
        self._max_queued_frames = max_queued_frames
        self._max_queued_bytes = max_queued_bytes
        self._open_timeout = open_timeout
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        # The gateway's heartbeat interval, from the latest welcome.
        self._gateway_heartbeat = DEFAULT_GATEWAY_HEARTBEAT
        self._max_frame_bytes = max_frame_bytes

        self._listeners = Listeners()
        self._handles: dict[str, ServerHandle] = {}
        self._servers: dict[str, str] = {}
        self._session: str | None = None
        # The highest seq received, and the highest acked.
        self._last_seq = 0
        self._acked_seq = 0
        # The attached socket; None while connecting or reconnecting.
        self._ws: ClientConnection | None = None
        # Frames written while no socket is attached, sent after a resumed welcome.
        self._outbox: deque[tuple[dict[str, Any], str]] = deque()
        self._outbox_bytes = 0
        # Frames written after hello in this client session (the gateway's "received"),
        # those of them not known to be read, and the number of the ping whose pong
        # would confirm every frame up to it.
        self._written = 0
        self._unconfirmed: deque[_Written] = deque()
        self._unconfirmed_bytes = 0
        self._probe: int | None = None
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._runner: asyncio.Task[None] | None = None
        self._keepalive: asyncio.Task[None] | None = None
        self._closing = False
        self._closed = False
        # Reconnection attempts since a socket last stayed up a while, and when the
        # current socket got its welcome (the event loop's clock).
        self._attempt = 0
        self._welcomed_at = 0.0

    # Public surface.

    @property
    def session(self) -> str | None:
        """The current client session's id (from the latest ``welcome``)."""
        return self._session

    @property
    def servers(self) -> Mapping[str, str]:
        """Every server the gateway named, with its live state (read-only view)."""
        return MappingProxyType(self._servers)

    @property
    def client_info(self) -> Mapping[str, str]:
        """The ``client`` sent in ``hello`` (also the default ``clientInfo``)."""
        return {
            "name": self._client.get("name", "mcpmux-python"),
            "version": self._client.get("version", __version__),
        }

    @property
    def closed(self) -> bool:
        """Whether the connection is closed for good."""
        return self._closed

    def server(self, name: str) -> ServerHandle:
        """The handle of server ``name`` (the same object on every call)."""
        handle = self._handles.get(name)
        if handle is None:
            handle = self._handles[name] = ServerHandle(self, name)
        return handle

    def transport(self, name: str) -> AbstractAsyncContextManager[TransportStreams]:
        """An async context manager yielding the ``(read_stream, write_stream)`` pair
        that the official MCP Python SDK's ``ClientSession`` takes, for server
        ``name`` (needs the ``mcp`` extra; see :func:`mcpmux.sdk.mcp_streams`)."""
        from .sdk import mcp_streams

        return mcp_streams(self, name)

    @overload
    def on(
        self, event: Literal["status"], listener: Callable[[StatusEvent], object]
    ) -> Callable[[], None]: ...
    @overload
    def on(
        self, event: Literal["session"], listener: Callable[[SessionEvent], object]
    ) -> Callable[[], None]: ...
    @overload
    def on(
        self, event: Literal["connection"], listener: Callable[[ConnectionEvent], object]
    ) -> Callable[[], None]: ...
    @overload
    def on(self, event: Literal["frame"], listener: Callable[[FrameEvent], object]) -> Callable[[], None]: ...
    @overload
    def on(self, event: Literal["error"], listener: Callable[[ErrorEvent], object]) -> Callable[[], None]: ...
    def on(self, event: str, listener: Callable[[Any], object]) -> Callable[[], None]:
        """Calls ``listener`` with each event of kind ``event`` (``"status"``,
        ``"session"``, ``"connection"``, ``"frame"`` or ``"error"``). Listeners run
        synchronously, in the order frames arrive. Returns the function that removes it."""
        if event not in ("status", "session", "connection", "frame", "error"):
            raise ValueError(f"unknown event {event!r}")
        return self._listeners.add(event, listener)

    async def close(self) -> None:
        """Closes the connection with a close frame, which ends the client session at
        the gateway (and every upstream session of it). Requests in flight fail with
        :class:`MuxError` ``"closed"``."""
        if self._closed or self._closing:
            return
        self._closing = True
        ws = self._ws
        self._ws = None
        runner = self._runner
        if runner is not None and runner is not asyncio.current_task():
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
        self._stop_keepalive()
        if ws is not None:
            try:
                await ws.close(1000, "client closed")
            except Exception:  # the socket may be gone already
                log.debug("closing the socket failed", exc_info=True)
        self._finish(1000, "closed by the client")
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def __aenter__(self) -> Mux:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"Mux({self._url!r}, session={self._session!r}, closed={self._closed})"

    # Used by ServerHandle and the SDK adapter.

    def _next_request_id(self) -> str:
        return f"{REQUEST_ID_PREFIX}{next(self._ids)}"

    def _spawn(self, coroutine: Coroutine[Any, Any, Any], *, quiet: bool = False) -> None:
        """Runs ``coroutine`` in a task that :meth:`close` cancels."""
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)

        def done(task: asyncio.Task[Any]) -> None:
            self._tasks.discard(task)
            if not task.cancelled() and (error := task.exception()) is not None:
                if quiet and isinstance(error, MuxError):
                    log.debug("background send failed: %s", error)
                else:
                    log.error("background task failed", exc_info=error)

        task.add_done_callback(done)

    async def _send_rpc(self, server: str, message: dict[str, Any]) -> None:
        await self._send_frame({"type": "rpc", "server": server, "message": message})

    async def _send_frame(self, frame: dict[str, Any]) -> bool:
        """Writes one frame; while the socket is down, keeps it (bounded by
        ``max_queued_frames`` and ``max_queued_bytes``) for the reconnection. Returns
        whether it was written now (False: queued)."""
        if self._closed or self._closing:
            raise MuxError("closed", "the connection to the gateway is closed")
        text = json.dumps(frame, separators=(",", ":"), ensure_ascii=False)
        if self._listeners.has("frame"):
            self._listeners.emit("frame", FrameEvent("out", frame))
        ws = self._ws
        if ws is not None:
            if await self._transmit(ws, frame, text) or self._policy is not None:
                # Not known to be read: kept, and written again after a resume if the
                # gateway did not get it.
                return True
            raise MuxError("closed", "the connection to the gateway dropped")
        if self._policy is None:
            raise MuxError("closed", "the connection to the gateway dropped")
        full = self._outbox_bytes + len(text) > self._max_queued_bytes
        if full or len(self._outbox) >= self._max_queued_frames:
            raise MuxError(
                "queue_full",
                f"{len(self._outbox)} frames ({self._outbox_bytes} bytes) already wait for the "
                "reconnection (max_queued_frames, max_queued_bytes)",
            )
        self._outbox.append((frame, text))
        self._outbox_bytes += len(text)
        return False

    async def _transmit(self, ws: ClientConnection, frame: dict[str, Any], text: str) -> bool:
        """Writes a frame after ``hello``: numbers it as the gateway counts frames, and
        keeps it until the gateway is known to have read it. Returns whether the socket
        took it."""
        # Numbered and written in one step: frames are numbered in the order written.
        self._written += 1
        self._keep(_Written(self._written, frame, text))
        if frame.get("type") == "ping":
            self._probe = self._written
        try:
            await ws.send(text)
        except ConnectionClosed:
            return False
        if self._probe is None and (
            len(self._unconfirmed) >= CONFIRM_AFTER_FRAMES or self._unconfirmed_bytes >= CONFIRM_AFTER_BYTES
        ):
            ping = {"type": "ping"}
            if self._listeners.has("frame"):
                self._listeners.emit("frame", FrameEvent("out", ping))
            await self._transmit(ws, ping, json.dumps(ping))
        return True

    def _keep(self, written: _Written) -> None:
        """Keeps a written frame for a resend; gives up the oldest beyond the bounds."""
        self._unconfirmed.append(written)
        self._unconfirmed_bytes += len(written.text)
        while len(self._unconfirmed) > 1 and (
            len(self._unconfirmed) > MAX_UNCONFIRMED_FRAMES or self._unconfirmed_bytes > MAX_UNCONFIRMED_BYTES
        ):
            oldest = self._unconfirmed.popleft()
            self._unconfirmed_bytes -= len(oldest.text)
            error = MuxError(
                "resend_overflow",
                f"the gateway has not confirmed the last {len(self._unconfirmed)} frames written, more "
                f"than can be kept for a resend ({MAX_UNCONFIRMED_FRAMES} frames, "
                f"{MAX_UNCONFIRMED_BYTES} bytes): the oldest is given up",
            )
            server = oldest.frame.get("server")
            message = oldest.frame.get("message")
            handle = self._handles.get(server) if isinstance(server, str) else None
            if oldest.frame.get("type") == "rpc" and handle is not None and isinstance(message, dict):
                handle._given_up(message, error)

    def _confirm(self, number: int) -> None:
        """The gateway has read every frame up to ``number``."""
        while self._unconfirmed and self._unconfirmed[0].number <= number:
            self._unconfirmed_bytes -= len(self._unconfirmed.popleft().text)

    async def _resend(self, ws: ClientConnection, received: int) -> None:
        """After a resumed ``welcome``: the gateway read ``received`` frames of the
        session; those after them never arrived and are written again, in order,
        numbered on from ``received``. Pings and acks are not repeated."""
        self._confirm(received)
        again = list(self._unconfirmed)
        self._unconfirmed.clear()
        self._unconfirmed_bytes = 0
        self._probe = None
        self._written = max(received, 0)
        for entry in again:
            if entry.frame.get("type") in ("ping", "ack"):
                continue
            if self._listeners.has("frame"):
                self._listeners.emit("frame", FrameEvent("out", entry.frame))
            # A socket that is gone meanwhile keeps them for the next resume.
            await self._transmit(ws, entry.frame, entry.text)

    # Opening sockets.

    async def _start(self) -> None:
        """Opens the first socket; raises :class:`MuxError` if that fails."""
        try:
            ws, welcome = await self._open(resume=False)
        except _Refused as refused:
            self._closed = True
            raise MuxError("handshake", str(refused)) from None
        await self._adopt(ws, welcome, resume_asked=False)
        self._runner = asyncio.get_running_loop().create_task(self._run(ws))

    def _socket_url(self, resume: bool) -> str:
        if not (resume and self._session):
            return self._url
        parts = urlsplit(self._url)
        query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "session"]
        query.append(("session", self._session))
        return urlunsplit(parts._replace(query=urlencode(query)))

    async def _open(self, *, resume: bool) -> tuple[ClientConnection, dict[str, Any]]:
        subprotocols = [Subprotocol(SUBPROTOCOL)]
        if self._token is not None and self._key_in == "subprotocol":
            encoded = base64.urlsafe_b64encode(self._token.encode()).rstrip(b"=").decode()
            subprotocols.append(Subprotocol(f"mcpmux.bearer.{encoded}"))
        try:
            ws = await ws_connect(
                self._socket_url(resume),
                subprotocols=subprotocols,
                compression=None,
                open_timeout=self._open_timeout,
                ping_interval=None,  # our own heartbeat aborts without a close frame
                close_timeout=self._open_timeout,
                max_size=self._max_frame_bytes,
            )
        except InvalidStatus as error:
            status = error.response.status_code
            # 429 and 5xx may pass; any other refusal (401, 403, 400) will not by itself.
            permanent = 400 <= status < 500 and status != 429
            why = {401: " (a wrong or missing API key)", 403: " (an origin or host it does not allow)"}
            message = f"the gateway refused the upgrade with HTTP {status}{why.get(status, '')}"
            raise _Refused(message, permanent=permanent) from None
        except (OSError, TimeoutError, InvalidHandshake) as error:
            raise _Refused(f"cannot open the WebSocket: {error}", permanent=False) from None

        hello: dict[str, Any] = {"type": "hello", "client": self._client}
        if self._token is not None and self._key_in == "hello":
            hello["token"] = self._token
        if resume and self._session:
            hello["resume"] = {"session": self._session, "last_seq": self._last_seq}
        try:
            async with asyncio.timeout(self._open_timeout):
                await ws.send(json.dumps(hello, separators=(",", ":")))
                if self._listeners.has("frame"):
                    shown = {**hello, "token": "(hidden)"} if "token" in hello else hello
                    self._listeners.emit("frame", FrameEvent("out", shown))
                text = await ws.recv()
            welcome = json.loads(text)
            if not (
                isinstance(welcome, dict)
                and welcome.get("type") == "welcome"
                and isinstance(welcome.get("session"), str)
            ):
                raise ValueError(f"the first frame is not a welcome: {str(text)[:200]}")
        except ConnectionClosed as error:
            code = error.rcvd.code if error.rcvd else None
            reason = error.rcvd.reason if error.rcvd else ""
            raise _Refused(
                f"the gateway closed the socket before welcome (code {code}: {reason})",
                permanent=close_action(code) in ("moved", "fatal"),
                code=code,
            ) from None
        except (OSError, TimeoutError, ValueError) as error:
            # No close frame: a close frame would end a session that might still resume.
            ws.transport.abort()
            raise _Refused(f"no welcome: {error or type(error).__name__}", permanent=False) from None
        except asyncio.CancelledError:
            ws.transport.abort()  # close() during a reconnection
            raise
        return ws, welcome

    async def _adopt(self, ws: ClientConnection, welcome: dict[str, Any], *, resume_asked: bool) -> None:
        """Takes a socket that got its welcome into use."""
        resumed = welcome.get("resumed") is True
        previous = self._session
        self._welcomed_at = asyncio.get_running_loop().time()
        self._session = welcome["session"]
        heartbeat_ms = welcome.get("heartbeat_ms")
        if isinstance(heartbeat_ms, int) and not isinstance(heartbeat_ms, bool) and heartbeat_ms > 0:
            self._gateway_heartbeat = heartbeat_ms / 1000
        if self._listeners.has("frame"):
            self._listeners.emit("frame", FrameEvent("in", welcome))
        if not resumed:
            self._last_seq = 0
            self._acked_seq = 0
            self._written = 0
            self._unconfirmed.clear()
            self._unconfirmed_bytes = 0
            self._probe = None
        if resume_asked and not resumed:
            await self._session_lost(previous)
        for entry in welcome.get("servers") or ():
            if isinstance(entry, dict):
                self._set_state(entry.get("name"), entry.get("state"))
        if resumed:
            # What the gateway did not get goes first. A gateway that does not say what
            # it read gets nothing again.
            received = welcome.get("received")
            if not isinstance(received, int) or isinstance(received, bool):
                received = self._written
            await self._resend(ws, received)
        # Frames written while away go next, in order; frames written meanwhile queue
        # behind them until the outbox is empty.
        while self._outbox:
            frame, text = self._outbox.popleft()
            self._outbox_bytes -= len(text)
            await self._transmit(ws, frame, text)
        self._ws = ws
        if self._ping_interval:
            self._keepalive = asyncio.get_running_loop().create_task(self._heartbeat(ws))
        self._listeners.emit("connection", ConnectionEvent("open", resumed=resumed))

    async def _session_lost(self, previous: str | None) -> None:
        """The gateway did not resume the session: everything in flight is gone."""
        self._outbox.clear()
        self._outbox_bytes = 0
        error = MuxError(
            "session_lost",
            f"the connection dropped and the gateway did not resume session {previous} "
            "(the resume window passed, or the frames missed were no longer kept); "
            "requests in flight are lost and every server must be initialized again",
        )
        for handle in list(self._handles.values()):
            if await handle._session_lost(error):
                self._listeners.emit(
                    "session",
                    SessionEvent(handle.name, "lost", "the gateway did not resume the client session"),
                )

    def _set_state(self, server: Any, state: Any) -> None:
        if isinstance(server, str) and isinstance(state, str) and self._servers.get(server) != state:
            self._servers[server] = state
            self._listeners.emit("status", StatusEvent(server, state))

    # The connection's life.

    async def _run(self, ws: ClientConnection) -> None:
        """Reads until the socket ends, then reconnects or closes for good."""
        current: ClientConnection | None = ws
        while current is not None:
            code, reason = await self._read(current)
            self._ws = None
            self._stop_keepalive()
            for handle in list(self._handles.values()):
                handle._socket_down()
            if self._closing:
                return
            if asyncio.get_running_loop().time() - self._welcomed_at >= STABLE_AFTER:
                self._attempt = 0
            action = close_action(code)
            if action == "moved":
                self._finish(
                    code,
                    reason,
                    error_code="session_moved",
                    why="another connection resumed this session, which now lives there; "
                    "this one does not reconnect",
                )
                return
            if self._policy is None or action == "fatal":
                self._finish(code, reason)
                return
            current = await self._reconnect(self._policy, code, reason, slow=action == "slow")

    async def _reconnect(
        self, policy: Reconnect, code: int | None, reason: str, *, slow: bool
    ) -> ClientConnection | None:
        failures = 0
        while policy.max_attempts is None or self._attempt < policy.max_attempts:
            self._listeners.emit(
                "connection",
                ConnectionEvent("reconnecting", code=code, reason=reason or None, attempt=self._attempt + 1),
            )
            await asyncio.sleep(policy.delay(self._attempt, slow=slow))
            self._attempt += 1
            try:
                ws, welcome = await self._open(resume=True)
            except _Refused as refused:
                log.debug("reconnection attempt %d failed: %s", self._attempt, refused)
                if refused.permanent:
                    # An HTTP refusal, or a close code that is never retried.
                    action = None if refused.code is None else close_action(refused.code)
                    error_code = {None: "refused", "moved": "session_moved"}.get(action, "closed")
                    self._finish(refused.code, str(refused), error_code=error_code)
                    return None
                failures += 1
                if policy.max_failures is not None and failures >= policy.max_failures:
                    self._finish(
                        refused.code,
                        f"{failures} attempts in a row ended before the gateway said welcome "
                        f"(the last: {refused}): it is unreachable, or it refuses the upgrade",
                        error_code="reconnect_failed",
                    )
                    return None
                continue
            await self._adopt(ws, welcome, resume_asked=True)
            return ws
        self._finish(code, f"no reconnection after {self._attempt} attempts")
        return None

    async def _read(self, ws: ClientConnection) -> tuple[int | None, str]:
        """Routes every frame of ``ws``; returns its close code (None when it ended
        without a close frame) and reason."""
        try:
            while True:
                data = await ws.recv()
                if not isinstance(data, str):
                    continue  # binary messages are not part of the protocol
                try:
                    frame = json.loads(data)
                except ValueError:
                    log.warning("the gateway sent a frame that is not JSON")
                    continue
                if isinstance(frame, dict):
                    try:
                        await self._route(frame)
                    except Exception:
                        log.exception("routing a %s frame failed", frame.get("type"))
                if self._last_seq - self._acked_seq >= self._ack_every:
                    await self._ack(ws)
        except ConnectionClosed as error:
            if error.rcvd is None:
                return None, ""
            return error.rcvd.code, error.rcvd.reason

    async def _route(self, frame: dict[str, Any]) -> None:
        if frame.get("type") == "pong" and self._probe is not None:
            self._confirm(self._probe)
            self._probe = None
        seq = frame.get("seq")
        if isinstance(seq, int) and not isinstance(seq, bool):
            if seq <= self._last_seq:
                return  # seen already
            self._last_seq = seq
        if self._listeners.has("frame"):
            self._listeners.emit("frame", FrameEvent("in", frame))
        kind = frame.get("type")
        server = frame.get("server")
        handle = self._handles.get(server) if isinstance(server, str) else None
        if kind == "rpc":
            message = frame.get("message")
            if handle is not None and isinstance(message, dict):
                await handle._receive(message)
        elif kind == "status":
            self._set_state(server, frame.get("state"))
        elif kind == "session":
            state = frame.get("state")
            if isinstance(server, str) and state in ("open", "lost", "closed"):
                reason = frame.get("reason")
                if handle is not None:
                    handle._on_session(state, reason if isinstance(reason, str) else None)
                self._listeners.emit(
                    "session", SessionEvent(server, state, reason if isinstance(reason, str) else None)
                )
        elif kind == "error":
            self._listeners.emit(
                "error",
                ErrorEvent(
                    code=str(frame.get("code", "")),
                    message=str(frame.get("message", "")),
                    server=server if isinstance(server, str) else None,
                    ref=frame.get("ref"),
                ),
            )

    async def _ack(self, ws: ClientConnection) -> None:
        frame = {"type": "ack", "seq": self._last_seq}
        if self._listeners.has("frame"):
            self._listeners.emit("frame", FrameEvent("out", frame))
        if await self._transmit(ws, frame, json.dumps(frame)):
            self._acked_seq = frame["seq"]

    def _pong_deadline(self) -> float:
        """How long a ping may wait for its pong. By default as long as the gateway
        waits for a silent client (two of its heartbeat intervals), plus 5 s. Resuming
        earlier would also work: the session moves to the new socket (protocol.md
        section 8)."""
        if self._ping_timeout is not None:
            return self._ping_timeout
        return 2 * self._gateway_heartbeat + 5

    async def _heartbeat(self, ws: ClientConnection) -> None:
        """Pings the gateway; a socket whose pong does not come in time is aborted
        without a close frame, so that the session can be resumed."""
        assert self._ping_interval
        deadline = self._pong_deadline()
        try:
            while True:
                await asyncio.sleep(self._ping_interval)
                pong = await ws.ping()
                async with asyncio.timeout(deadline):
                    await pong
        except TimeoutError:
            log.info("no pong from the gateway within %s s; reconnecting", deadline)
            ws.transport.abort()
        except ConnectionClosed:
            pass

    def _stop_keepalive(self) -> None:
        if self._keepalive is not None:
            self._keepalive.cancel()
            self._keepalive = None

    def _finish(self, code: int | None, reason: str, *, error_code: str = "closed", why: str = "") -> None:
        """Closes for good: everything still waiting fails with ``error_code``."""
        if self._closed:
            return
        self._closed = True
        self._outbox.clear()
        self._outbox_bytes = 0
        self._unconfirmed.clear()
        self._unconfirmed_bytes = 0
        detail = f"code {code}: {reason}" if code is not None else reason or "no close frame"
        error = MuxError(
            error_code,
            f"the connection to the gateway is closed ({detail}){': ' + why if why else ''}",
            data={"code": code, "reason": reason},
        )
        for handle in list(self._handles.values()):
            handle._closed(error)
        self._listeners.emit("connection", ConnectionEvent("closed", code=code, reason=reason or None))


class Connecting:
    """What :func:`connect` returns: await it for a :class:`Mux`, or use it with
    ``async with`` to close the Mux at the end of the block."""

    def __init__(self, mux: Mux) -> None:
        self._mux = mux

    def __await__(self) -> Generator[Any, None, Mux]:
        return self._open().__await__()

    async def _open(self) -> Mux:
        await self._mux._start()
        return self._mux

    async def __aenter__(self) -> Mux:
        return await self._open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._mux.close()


def connect(
    url: str,
    *,
    token: str | None = None,
    key_in: Literal["hello", "subprotocol"] = "hello",
    client: Mapping[str, str] | None = None,
    reconnect: bool | Reconnect = True,
    ack_every: int = 100,
    max_queued_frames: int = 1024,
    max_queued_bytes: int = 8 * 1024 * 1024,
    open_timeout: float = 10.0,
    ping_interval: float | None = 20.0,
    ping_timeout: float | None = None,
    max_frame_bytes: int = 32 * 1024 * 1024,
) -> Connecting:
    """Connects to the gateway at ``url`` (``ws://HOST:PORT/ws`` or ``wss://...``).

    ``mux = await connect(url)`` or ``async with connect(url) as mux:``. It returns once
    the gateway's ``welcome`` arrived, and raises :class:`MuxError` (code
    ``"handshake"``) when the first connection fails.

    - ``token``: the API key, sent in ``hello`` (or, with ``key_in="subprotocol"``, as
      the subprotocol ``mcpmux.bearer.<base64url>``); never put in the URL.
    - ``client``: ``{"name": ..., "version": ...}`` for the gateway's logs.
    - ``reconnect``: True (the default policy), False, or a :class:`Reconnect`.
    - ``ack_every``: acknowledge after this many frames.
    - ``max_queued_frames``, ``max_queued_bytes``: frames kept while reconnecting; more
      raise ``queue_full``.
    - ``open_timeout``: seconds for the upgrade and for the ``welcome``.
    - ``ping_interval``: seconds between the client's pings (None: no heartbeat).
    - ``ping_timeout``: seconds a ping waits for its pong before the socket is dropped
      and resumed (None: two of the gateway's heartbeat intervals plus 5 s).
    - ``max_frame_bytes``: the largest gateway frame accepted.
    """
    return Connecting(
        Mux(
            url,
            token=token,
            key_in=key_in,
            client=client,
            reconnect=reconnect,
            ack_every=ack_every,
            max_queued_frames=max_queued_frames,
            max_queued_bytes=max_queued_bytes,
            open_timeout=open_timeout,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            max_frame_bytes=max_frame_bytes,
        )
    )
