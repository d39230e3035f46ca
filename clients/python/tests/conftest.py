"""Test fixtures: the real mcpmux binary on 127.0.0.1:0 with the real mcp-proxy,
server-everything and server-memory from the repository's node_modules, and a TCP
relay that can cut the network path between a client and the gateway."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
BINARY = ROOT / "target" / "debug" / "mcpmux"
NODE_MODULES = ROOT / "node_modules"


def _module(path: str) -> str:
    full = NODE_MODULES / path
    if not full.exists():
        pytest.fail(f"{full} is missing: run scripts/setup in the repository root first")
    return str(full)


def gateway_config(
    servers: dict[str, object] | None = None, gateway: dict[str, object] | None = None
) -> dict[str, object]:
    """A configuration with ``servers`` (default: server-everything and server-memory,
    as the Rust integration tests use them) and the local mcp-proxy, plus ``gateway``
    settings."""
    return {
        "mcpServers": servers
        or {
            "everything": {
                "command": "node",
                "args": [_module("@modelcontextprotocol/server-everything/dist/index.js"), "stdio"],
            },
            "memory": {
                "command": "node",
                "args": [_module("@modelcontextprotocol/server-memory/dist/index.js")],
            },
        },
        "gateway": {
            "mcpProxy": ["node", _module("mcp-proxy/dist/bin/mcp-proxy.mjs")],
            "restartBackoffMinMs": 100,
            **(gateway or {}),
        },
    }


@dataclass
class Gateway:
    """A running mcpmux."""

    url: str
    host: str
    port: int
    process: subprocess.Popen[str]


def start_gateway(
    directory: Path, servers: dict[str, object] | None = None, gateway: dict[str, object] | None = None
) -> Gateway:
    """Starts target/debug/mcpmux with ``gateway_config(servers, gateway)`` on
    127.0.0.1:0 and waits for the line that says where it listens."""
    if not BINARY.exists():
        pytest.fail(f"{BINARY} is missing: run `cargo build --bin mcpmux` in the repository root")
    config = directory / "mcpmux.json"
    config.write_text(json.dumps(gateway_config(servers, gateway)))
    log = open(directory / "mcpmux.log", "w")
    process = subprocess.Popen(
        [str(BINARY), "--config", str(config), "--listen", "127.0.0.1:0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env={**os.environ, "NO_COLOR": "1"},
    )
    log.close()
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    prefix = "mcpmux listening on "
    if not line.startswith(prefix):
        process.kill()
        process.wait()
        pytest.fail(f"mcpmux did not start: {line!r}; see {directory / 'mcpmux.log'}")
    # Whatever else it prints is read and dropped, so that a full pipe never blocks it.
    threading.Thread(target=process.stdout.read, daemon=True).start()
    url = line[len(prefix) :]
    host, port = url.removeprefix("ws://").split("/")[0].rsplit(":", 1)
    return Gateway(url=url, host=host, port=int(port), process=process)


def stop_gateway(gateway: Gateway) -> None:
    gateway.process.terminate()
    try:
        gateway.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        gateway.process.kill()
        gateway.process.wait()
    if gateway.process.stdout is not None:
        gateway.process.stdout.close()


@pytest.fixture(scope="session")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """One gateway shared by the tests that need nothing special of it."""
    running = start_gateway(tmp_path_factory.mktemp("gateway"))
    yield running
    stop_gateway(running)


#: The API key of ``keyed_gateway``.
API_KEY = "test-key-0123456789abcdef"


@pytest.fixture(scope="session")
def keyed_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A gateway with one API key (:data:`API_KEY`) that may use every server."""
    keys = [{"name": "tests", "key": API_KEY, "servers": "*"}]
    running = start_gateway(tmp_path_factory.mktemp("keyed"), None, {"apiKeys": keys})
    yield running
    stop_gateway(running)


@pytest.fixture(scope="session")
def asking_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A gateway whose one server, ``asker``, is tests/asking_server.py over Streamable HTTP."""
    server = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("asking_server.py"))],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None
    url = server.stdout.readline().strip()
    try:
        if not url.startswith("http://127.0.0.1:"):
            pytest.fail(f"the asking server did not start: {url!r}")
        running = start_gateway(tmp_path_factory.mktemp("asking"), {"asker": {"url": url}})
        yield running
        stop_gateway(running)
    finally:
        server.terminate()
        server.wait(timeout=20)
        server.stdout.close()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
