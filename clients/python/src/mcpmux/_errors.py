"""The one exception type of the client: JSON-RPC errors, gateway errors and the
client's own failures (timeouts, a refused resume, a closed connection)."""

from __future__ import annotations

from typing import Any


class MuxError(Exception):
    """A request or frame that did not succeed.

    ``code`` says why, as a short string:

    - a gateway code from protocol.md section 6 (``"unknown_server"``,
      ``"server_unavailable"``, ``"timeout"``, ``"session_lost"``, ...) when the gateway
      answered a request with an error carrying ``data.gateway``;
    - ``"rpc_error"`` for a JSON-RPC error sent by the MCP server itself (its numeric
      code is in ``rpc_code``);
    - the client's own codes: ``"timeout"`` (no response within the request's timeout),
      ``"session_lost"`` (the connection dropped and the gateway refused to resume the
      session), ``"closed"`` (the connection is closed for good), ``"queue_full"`` (too
      many frames waiting for a reconnection), ``"handshake"`` (the gateway refused the
      connection), ``"in_use"`` (a server already has an SDK transport attached),
      ``"resend_overflow"`` (a request written but never confirmed could not be kept
      for a resend).
    """

    code: str
    rpc_code: int | None
    data: Any

    def __init__(self, code: str, message: str, *, rpc_code: int | None = None, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.rpc_code = rpc_code
        self.data = data

    @property
    def message(self) -> str:
        """The sentence for people."""
        return str(self.args[0]) if self.args else ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r})"

    @classmethod
    def from_rpc_error(cls, error: Any) -> MuxError:
        """The exception for a JSON-RPC ``error`` member."""
        if not isinstance(error, dict):
            return cls("rpc_error", f"malformed JSON-RPC error: {error!r}", data=error)
        data = error.get("data")
        rpc_code = error.get("code") if isinstance(error.get("code"), int) else None
        message = str(error.get("message", "JSON-RPC error"))
        gateway = data.get("gateway") if isinstance(data, dict) else None
        code = gateway if isinstance(gateway, str) else "rpc_error"
        if code == "timeout":
            return MuxTimeoutError(code, message, rpc_code=rpc_code, data=data)
        return cls(code, message, rpc_code=rpc_code, data=data)


class MuxTimeoutError(MuxError, TimeoutError):
    """A request that got no response in time (``code == "timeout"``); also a
    :class:`TimeoutError`."""
