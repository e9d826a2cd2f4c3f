"""The grid's wall clock: it adds up over invocations and survives a kill it cannot catch."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from polyvis.nano.wall import WallClock


def test_the_clock_adds_this_invocation_to_the_saved_seconds(tmp_path: Path):
    path = tmp_path / "wall.json"
    path.write_text(json.dumps({"seconds": 100.0}))
    with WallClock(path) as clock:
        time.sleep(0.05)
        assert 100.05 <= clock() < 110
    saved = json.loads(path.read_text())["seconds"]
    assert 100.05 <= saved < 110
    with pytest.raises(RuntimeError), WallClock(path):  # an invocation that fails still counts
        raise RuntimeError("a run failed")
    assert json.loads(path.read_text())["seconds"] >= saved


def test_a_killed_invocation_keeps_the_time_saved_before_the_kill(tmp_path: Path):
    path = tmp_path / "grid" / "wall.json"
    code = (
        "import sys, time\n"
        "from polyvis.nano.wall import WallClock\n"
        "with WallClock(sys.argv[1], every=0.05):\n"
        "    print('running', flush=True)\n"
        "    time.sleep(60)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE)
    try:
        assert child.stdout.readline() == b"running\n"
        time.sleep(0.5)
        child.send_signal(signal.SIGKILL)  # nothing runs after this: no finally, no atexit
        child.wait(timeout=30)
    finally:
        child.kill()
    assert child.returncode == -signal.SIGKILL
    assert json.loads(path.read_text())["seconds"] >= 0.3


def test_the_save_interval_must_be_positive(tmp_path: Path):
    with pytest.raises(ValueError, match="every must be positive"):
        WallClock(tmp_path / "wall.json", every=0)
