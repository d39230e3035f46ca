"""What listeners receive (one frozen dataclass per event) and the registry that
calls them."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

log = logging.getLogger("mcpmux")

EventName = Literal["status", "session", "connection", "frame", "error"]


@dataclass(frozen=True)
class StatusEvent:
    """A server's lifecycle state changed (``status`` frame, or a ``welcome`` that
    shows a different state): ``starting``, ``ready``, ``restarting`` or ``down``."""

    server: str
    state: str


@dataclass(frozen=True)
class SessionEvent:
    """This client's upstream session with a server: ``open`` (after ``initialize``),
    ``closed`` (after :meth:`ServerHandle.close`) or ``lost`` (the server restarted,
    the session expired, or the gateway refused to resume the client session)."""

    server: str
    state: Literal["open", "lost", "closed"]
    reason: str | None = None


@dataclass(frozen=True)
class ConnectionEvent:
    """The WebSocket's life.

    - ``open``: a ``welcome`` arrived; ``resumed`` says whether the session went on.
    - ``reconnecting``: the socket dropped (``code`` is None when it ended without a
      close frame); attempt number ``attempt`` starts after a backoff delay.
    - ``closed``: for good, by :meth:`Mux.close`, by a close code that must not be
      retried (4002, 4500-4999, 1002, 1003, 1007-1010), or when reconnecting gave up.
    """

    state: Literal["open", "reconnecting", "closed"]
    resumed: bool | None = None
    code: int | None = None
    reason: str | None = None
    attempt: int | None = None


@dataclass(frozen=True)
class FrameEvent:
    """Every frame, as sent (``out``) or received (``in``), for consoles and debugging."""

    direction: Literal["in", "out"]
    frame: dict[str, Any]


@dataclass(frozen=True)
class ErrorEvent:
    """An ``error`` frame: a notification, response or frame the gateway could not
    carry (protocol.md section 6)."""

    code: str
    message: str
    server: str | None = None
    ref: Any = None


class Listeners:
    """Listeners by event name. A listener that raises is logged and does not disturb
    the others or the connection."""

    def __init__(self) -> None:
        self._by_event: dict[str, list[Callable[[Any], object]]] = {}

    def add(self, event: str, listener: Callable[[Any], object]) -> Callable[[], None]:
        """Registers ``listener``; returns the function that removes it again."""
        self._by_event.setdefault(event, []).append(listener)

        def remove() -> None:
            listeners = self._by_event.get(event, [])
            if listener in listeners:
                listeners.remove(listener)

        return remove

    def has(self, event: str) -> bool:
        """Whether anyone listens to ``event`` (to skip building events nobody reads)."""
        return bool(self._by_event.get(event))

    def emit(self, event: str, value: Any) -> None:
        """Calls every listener of ``event`` with ``value``, in registration order."""
        for listener in list(self._by_event.get(event, ())):
            try:
                listener(value)
            except Exception:
                log.exception("a %s listener raised", event)
