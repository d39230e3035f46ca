"""A scripted stand-in for the gateway, for what the real one cannot be made to do on
demand: close with a chosen code, claim what it read, never confirm a frame."""

from __future__ import annotations

import asyncio
import json
from http import HTTPStatus
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from support import WAIT
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response


class FakeConnection:
    """One socket to the fake gateway: the frames it received, and ways to answer."""

    def __init__(self, ws: ServerConnection, index: int) -> None:
        self.ws = ws
        self.index = index
        #: The path of the upgrade request (with its query).
        self.path = ws.request.path if ws.request is not None else ""
        self.frames: list[dict[str, Any]] = []
        self._taken = 0
        self._changed = asyncio.Event()

    async def send(self, frame: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(frame))

    async def welcome(self, **fields: Any) -> None:
        frame = {
            "type": "welcome",
            "session": "s1",
            "protocol": "mcpmux.v1",
            "resumed": False,
            "resume_window_ms": 60000,
            "heartbeat_ms": 60000,
            "received": 0,
            "servers": [{"name": "a", "state": "ready"}],
        }
        await self.send({**frame, **fields})

    async def next(self, test: Callable[[dict[str, Any]], bool] = lambda frame: True) -> dict[str, Any]:
        """The first frame not yet taken by ``next`` for which ``test`` holds."""
        async with asyncio.timeout(WAIT):
            while True:
                for index in range(self._taken, len(self.frames)):
                    if test(self.frames[index]):
                        self._taken = index + 1
                        return self.frames[index]
                self._changed.clear()
                await self._changed.wait()

    def _received(self, frame: dict[str, Any]) -> None:
        self.frames.append(frame)
        self._changed.set()


Script = Callable[[FakeConnection], Awaitable[None]]


class FakeGateway:
    def __init__(self, url: str, connections: list[FakeConnection]) -> None:
        self.url = url
        self.connections = connections


@asynccontextmanager
async def fake_gateway(script: Script, *, refuse_after: int | None = None) -> AsyncIterator[FakeGateway]:
    """Serves on 127.0.0.1:0; runs ``script`` on each connection once its hello arrived,
    while its frames keep being recorded. With ``refuse_after``, upgrades after that many
    are refused with HTTP 401."""
    connections: list[FakeConnection] = []
    upgrades = 0

    def process_request(ws: ServerConnection, request: Request) -> Response | None:
        nonlocal upgrades
        upgrades += 1
        if refuse_after is not None and upgrades > refuse_after:
            return ws.respond(HTTPStatus.UNAUTHORIZED, "a wrong API key\n")
        return None

    async def handler(ws: ServerConnection) -> None:
        connection = FakeConnection(ws, len(connections))
        connections.append(connection)
        hello = json.loads(await ws.recv())
        connection._received(hello)
        task = asyncio.get_running_loop().create_task(script(connection))
        try:
            async for message in ws:
                connection._received(json.loads(message))
        except Exception:
            pass
        finally:
            await asyncio.wait([task], timeout=WAIT)
            task.cancel()

    subprotocols = ["mcpmux.v1"]
    async with serve(
        handler, "127.0.0.1", 0, subprotocols=subprotocols, process_request=process_request
    ) as server:  # type: ignore[arg-type]
        port = next(iter(server.sockets)).getsockname()[1]
        yield FakeGateway(f"ws://127.0.0.1:{port}/ws", connections)
