"""Kill a launcher with kill -9 and see which of the processes it started outlive it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def survivors_of_kill9(script: str, *args: str) -> list[int]:
    """Run `python -c script ARGS`, which prints the pids it started on its first line and then
    waits; kill it with SIGKILL (no finally, no cleanup) once they are up, and return those still
    running 10 s later. Any survivor is killed before returning."""
    parent = subprocess.Popen(
        [sys.executable, "-c", script, *args], stdout=subprocess.PIPE, text=True
    )
    assert parent.stdout is not None
    pids = [int(p) for p in parent.stdout.readline().split()]
    try:
        time.sleep(1.0)
        assert pids and all(map(alive, pids)), "they did not start, or failed at once"
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 10  # at once in practice; slack for a loaded machine
        while any(map(alive, pids)) and time.monotonic() < deadline:
            time.sleep(0.05)
        return [p for p in pids if alive(p)]
    finally:
        for pid in pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        if parent.poll() is None:
            parent.kill()
