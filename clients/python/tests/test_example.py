"""The example in examples/python runs against a real gateway and prints what it says."""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT, Gateway
from support import WAIT


def test_the_quickstart_example_calls_echo_and_shows_progress(gateway: Gateway) -> None:
    script = ROOT / "examples" / "python" / "quickstart.py"
    run = subprocess.run(
        [sys.executable, str(script), gateway.url], capture_output=True, text=True, timeout=WAIT
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == "Echo: hello from Python"
    assert lines[1] == "progress 1/4"
    assert all(line.startswith("progress ") for line in lines[1:-1])
    assert lines[-1].startswith("Long running operation completed")
