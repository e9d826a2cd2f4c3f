"""Two-process launches through `accelerate launch`, as the DDP and FSDP tests run them."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path


def free_port() -> int:
    """A port no one listens on now: a fixed one can meet another job's rendezvous store."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(args: list[str], env: dict[str, str], timeout: int) -> subprocess.CompletedProcess:
    """The launch, in a session of its own: on a timeout every process of it is killed (the
    launcher and both workers) and the result reads as killed by a signal."""
    proc = subprocess.Popen(
        args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        err += f"\nSignal: no exit within {timeout} s, killed"
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def launch(config: Path, command: list[str], run: Path, *, timeout: int = 150) -> None:
    """Run `command` (a module and its arguments) on two processes; fail with the launch's log.

    A process killed by a signal (gloo has aborted once at exit on a loaded two-core CI machine)
    or a launch that does not exit (gloo has also hung once at exit, after the run had finished)
    is run once more from the run folder as it was before the launch; the first log is kept next
    to the run, and a second failure fails the test.
    """
    env = dict(os.environ, OMP_NUM_THREADS="1")
    before = run.with_name(run.name + ".before")
    if run.exists():
        shutil.copytree(run, before)
    for attempt in (1, 2):
        args = [
            *[sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config)],
            *["--num_processes", "2", "--main_process_port", str(free_port()), *command],
        ]
        res = _run(args, env, timeout)
        log = run.with_name(f"{run.name}.launch-{attempt}.log")
        log.write_text(f"$ {' '.join(args)}\n--- stdout\n{res.stdout}\n--- stderr\n{res.stderr}")
        if res.returncode == 0:
            return
        if attempt == 2 or "Signal" not in res.stderr:
            raise AssertionError(f"two-process launch failed (log: {log}):\n{res.stderr[-3000:]}")
        shutil.rmtree(run, ignore_errors=True)
        if before.exists():
            shutil.copytree(before, run)
