"""Reconnection policy: full-jitter exponential backoff, and the one table of what a
close code means for reconnecting (protocol.md section 10)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

CloseAction = Literal["reconnect", "slow", "moved", "fatal"]

#: A socket that stayed up this long after its ``welcome`` starts the attempt count again.
STABLE_AFTER = 15.0


@dataclass(frozen=True)
class Reconnect:
    """How the client reconnects after a dropped connection.

    Attempt ``n`` (from 0) waits a random time between 0 and
    ``min(max_delay, min_delay * 2**n)`` seconds ("full jitter"), so that many clients
    cut off at once do not come back at once; after close code 4029 (over a limit), a
    random time in the upper half of ``max_delay``. The count starts again only once a
    socket has stayed up 15 s, so a gateway that accepts and drops at once is not
    hammered. ``max_attempts`` (None: no limit) bounds the attempts; ``max_failures``
    (None: no limit) bounds the attempts in a row that end before a ``welcome`` (a
    gateway that is gone, or that refuses the upgrade). After either, the connection
    is closed for good.
    """

    min_delay: float = 0.5
    max_delay: float = 10.0
    max_attempts: int | None = None
    max_failures: int | None = 10

    def __post_init__(self) -> None:
        if self.min_delay < 0 or self.max_delay < self.min_delay:
            raise ValueError("Reconnect needs 0 <= min_delay <= max_delay")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError("Reconnect.max_attempts must be at least 1 (or None)")
        if self.max_failures is not None and self.max_failures < 1:
            raise ValueError("Reconnect.max_failures must be at least 1 (or None)")

    def delay(self, attempt: int, *, slow: bool = False) -> float:
        """The wait before attempt ``attempt`` (0-based), in seconds; ``slow`` after 4029."""
        if slow:
            return random.uniform(self.max_delay / 2, self.max_delay)
        ceiling = min(self.max_delay, self.min_delay * 2 ** min(attempt, 32))
        return random.uniform(0, ceiling)


def close_action(code: int | None) -> CloseAction:
    """What to do after a socket ended with close code ``code`` (None: without a close
    frame):

    - ``"reconnect"``: 1000, 1001, 4000-4499, and every code that says the network or the
      gateway failed (no close frame, 1006, 1011-1015);
    - ``"slow"``: 4029 (over a limit): reconnect, starting the backoff at its highest;
    - ``"moved"``: 4002, another socket resumed the session, which lives on there: never;
    - ``"fatal"``: 4500-4999 and the codes that say the client is wrong (1002, 1003,
      1007-1010): never retried unchanged.
    """
    if code is None:
        return "reconnect"
    if code == 4002:
        return "moved"
    if code == 4029:
        return "slow"
    if 4500 <= code <= 4999 or code in (1002, 1003, 1007, 1008, 1009, 1010):
        return "fatal"
    return "reconnect"
