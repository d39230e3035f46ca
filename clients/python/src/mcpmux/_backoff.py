"""Reconnection policy: full-jitter exponential backoff and which close codes may be
retried (protocol.md section 10)."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Reconnect:
    """How the client reconnects after a dropped connection.

    Attempt ``n`` (from 0) waits a random time between 0 and
    ``min(max_delay, min_delay * 2**n)`` seconds ("full jitter"), so that many clients
    cut off at once do not come back at once. ``max_attempts`` (None: no limit) bounds
    the attempts in a row; after the last one the connection is closed for good.
    """

    min_delay: float = 0.5
    max_delay: float = 10.0
    max_attempts: int | None = None

    def __post_init__(self) -> None:
        if self.min_delay < 0 or self.max_delay < self.min_delay:
            raise ValueError("Reconnect needs 0 <= min_delay <= max_delay")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError("Reconnect.max_attempts must be at least 1 (or None)")

    def delay(self, attempt: int) -> float:
        """The wait before attempt ``attempt`` (0-based), in seconds."""
        ceiling = min(self.max_delay, self.min_delay * 2 ** min(attempt, 32))
        return random.uniform(0, ceiling)


def may_reconnect(code: int | None) -> bool:
    """Whether a socket that ended with close code ``code`` (None: without a close
    frame) may be reconnected and resumed.

    1000, 1001, 1006 (abnormal end), 1011-1014 (server trouble) and 4000-4499 may; the
    other codes say the client did something wrong (4500-4999 explicitly: "never retry
    unchanged"), so the client stops.
    """
    if code is None or code in (1000, 1001, 1006, 1011, 1012, 1013, 1014):
        return True
    return 4000 <= code <= 4499
