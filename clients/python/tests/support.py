"""Helpers shared by the tests: the longest wait, and a log of a Mux's frames that a
test can wait on."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import mcpmux
from mcpmux import FrameEvent

# How long a test waits for something it expects, at most (never a sleep).
WAIT = 30.0


class FrameLog:
    """Every frame a Mux sends and receives from now on."""

    def __init__(self, mux: mcpmux.Mux) -> None:
        self.events: list[FrameEvent] = []
        self._changed = asyncio.Event()
        mux.on("frame", self._add)

    def _add(self, event: FrameEvent) -> None:
        self.events.append(event)
        self._changed.set()

    def sent(self, kind: str) -> list[dict[str, Any]]:
        """The frames of type ``kind`` sent so far."""
        return [e.frame for e in self.events if e.direction == "out" and e.frame.get("type") == kind]

    def cancellations(self) -> list[Any]:
        """The params of every ``notifications/cancelled`` sent so far."""
        return [
            f["message"].get("params")
            for f in self.sent("rpc")
            if f["message"].get("method") == "notifications/cancelled"
        ]

    async def wait(self, found: Callable[[FrameLog], list[Any]]) -> list[Any]:
        """Waits until ``found(self)`` is not empty, and returns it."""
        async with asyncio.timeout(WAIT):
            while not (result := found(self)):
                self._changed.clear()
                await self._changed.wait()
        return result
