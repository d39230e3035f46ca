"""A TCP relay between a client and the gateway that can break the network path as
real networks do: cut it (every connection reset, no close frame reaching either side,
new connections refused for a while), or silence it (connections stay open but carry
nothing more)."""

from __future__ import annotations

import asyncio
import contextlib


class TcpRelay:
    """Forwards 127.0.0.1:``port`` to ``target_host``:``target_port``."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self._carrying: set[asyncio.Task[None]] = set()
        # Every open connection's two ends (kept so that a silenced one stays open).
        self._writers: list[asyncio.StreamWriter] = []
        self.port = 0
        #: The first line of every connection the relay carried, in order
        #: (``GET /ws?... HTTP/1.1``).
        self.request_lines: list[str] = []
        #: Set while the relay accepts connections.
        self.listening = asyncio.Event()

    def url(self, path: str = "/ws") -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    async def __aenter__(self) -> TcpRelay:
        await self._listen()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stop_listening()
        self._reset_all()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def cut(self, refuse_for: float) -> None:
        """Resets every connection and refuses new ones for ``refuse_for`` seconds (in
        the background; ``listening`` is set again afterwards)."""
        await self._stop_listening()
        self._reset_all()
        task = asyncio.get_running_loop().create_task(self._reopen_after(refuse_for))
        self._pipes.add(task)
        task.add_done_callback(self._pipes.discard)

    def reset(self) -> None:
        """Resets every connection (no close frame reaches either side); new ones are
        carried as usual."""
        self._reset_all()

    def silence(self) -> None:
        """Stops carrying bytes on every open connection without closing any of them,
        as a path that lost its route does; new connections are carried as usual."""
        for task in self._carrying:
            task.cancel()
        self._carrying.clear()

    async def _reopen_after(self, delay: float) -> None:
        await asyncio.sleep(delay)  # the outage itself
        await self._listen()

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        self.listening.set()

    async def _stop_listening(self) -> None:
        self.listening.clear()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def _reset_all(self) -> None:
        for writer in self._writers:
            writer.transport.abort()  # RST: neither side sees a close frame
        self._writers.clear()

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self._target)
        except OSError:
            client_writer.transport.abort()
            return
        self._writers += [client_writer, upstream_writer]
        first = asyncio.get_running_loop().create_task(
            self._pipe(client_reader, upstream_writer, record=True)
        )
        second = asyncio.get_running_loop().create_task(self._pipe(upstream_reader, client_writer))
        for task in (first, second):
            self._pipes.add(task)
            self._carrying.add(task)
            task.add_done_callback(self._pipes.discard)
            task.add_done_callback(self._carrying.discard)

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, record: bool = False
    ) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                if record:
                    self.request_lines.append(data.split(b"\r\n", 1)[0].decode("latin-1"))
                    record = False
                writer.write(data)
                await writer.drain()
        if not writer.transport.is_closing():
            writer.close()
