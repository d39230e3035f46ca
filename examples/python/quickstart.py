"""Calls server-everything through mcpmux: an echo, then a long-running operation
whose progress arrives as it happens.

    .venv/bin/python examples/python/quickstart.py [ws://127.0.0.1:7300/ws]
"""

import asyncio
import sys

import mcpmux


async def main(url: str) -> None:
    async with mcpmux.connect(url, client={"name": "quickstart", "version": "1"}) as mux:
        everything = mux.server("everything")
        await everything.initialize()

        echo = {"name": "echo", "arguments": {"message": "hello from Python"}}
        echoed = await everything.request("tools/call", echo, timeout=30)
        print(echoed["content"][0]["text"])

        def show(progress: mcpmux.Progress) -> None:
            print(f"progress {progress.progress:g}/{progress.total:g}")

        work = {"name": "trigger-long-running-operation", "arguments": {"duration": 1, "steps": 4}}
        result = await everything.request("tools/call", work, timeout=30, on_progress=show)
        print(result["content"][0]["text"])


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "ws://127.0.0.1:7300/ws"))
