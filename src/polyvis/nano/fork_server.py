"""Run workers forked from one process that has already imported torch and transformers.

Each nano run is a process of its own (its log, its memory, a kill that stops only it), but
importing torch, transformers and polyvis's training and scoring costs about 4 s of CPU, more
than a quick run's training. `RunServer` starts `python -m polyvis.nano.fork_server` at the
first run a `train_runs` call launches (or once for all of a grid's calls, `runs.run_server`):
it imports them, and what scoring imports lazily, with one thread (so it has no thread to
lose in a fork), then forks one child per run. A child starts from the imports alone, takes
the launcher's environment of that moment, writes to the run's log and exits with
`worker.run_stages`'s status, as a `python -m polyvis.nano.worker` process would. Linux only:
`runs.train_runs` uses plain worker processes elsewhere.

Requests (launcher -> server, standard input): an 8-byte length, then a pickle of
(stages, log path, environment, threads). Replies (server -> launcher, the server's original
standard output): JSON lines, {"started": pid} for each request, {"exited": pid, "code": n}
when a child ends. The server dies with the launching thread (worker.die_with_parent), and its
children with the server, so a killed grid leaves no run training. The server keeps freed
memory (polyvis.malloc) before its imports, so its children do too: POLYVIS_KEEP_FREED_MEMORY
is read from the server's environment when it starts, not from a launch's.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import json
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import traceback
from pathlib import Path
from typing import NoReturn

from polyvis.errors import PolyVisError
from polyvis.malloc import keep_freed_memory
from polyvis.nano.worker import PARENT_ENV, Stage, die_with_parent, run_stages

# what every run imports, lazily imported ones included (transformers' optimizers, matplotlib
# for each scoring's results.png); anything else a stage needs is imported by the child
PRELOAD = (
    "torch",
    "transformers",
    "transformers.optimization",
    "matplotlib.figure",
    "matplotlib.backends.backend_agg",
    "rich.progress",
    "polyvis.train.loop",
    "polyvis.eval.runner",
    "polyvis.eval.report",
    "polyvis.models.build",
)
_LENGTH = struct.Struct("<Q")


def _read_exact(fd: int, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = os.read(fd, n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _child(request: bytes, close: list[int], server: int) -> NoReturn:
    status = 1
    try:
        os.environ[PARENT_ENV] = str(server)  # a server gone before this: exit at once
        die_with_parent()
        stages, log, env, threads = pickle.loads(request)
        out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.close(out)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        for fd in close:
            os.close(fd)
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.environ.clear()
        os.environ.update({k: v for k, v in env.items() if k != PARENT_ENV})
        import torch

        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        status = run_stages(stages)
    except BaseException:  # noqa: BLE001 - a child never returns into the server's loop
        traceback.print_exc()
    finally:
        try:
            atexit._run_exitfuncs()  # what a worker process's exit would run
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(status)


def serve() -> int:
    """The server's loop: fork a child per request until standard input ends, reporting each
    child's start and exit; at the end its remaining children are killed."""
    die_with_parent()
    keep_freed_memory()  # before the imports; every child forked from here keeps the setting
    for name in PRELOAD:
        importlib.import_module(name)
    importlib.import_module("PIL.Image").preinit()  # the image formats a run opens or saves
    sys.stdout.flush()  # nothing of the server's own left in a buffer its children inherit
    reply = os.dup(1)
    os.dup2(2, 1)  # a stray print goes to the server's stderr, not into the replies
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the launcher stops the runs
    wake_r, wake_w = os.pipe()
    for fd in (wake_r, wake_w):
        os.set_blocking(fd, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    children: set[int] = set()
    server = os.getpid()

    def send(message: dict) -> None:
        os.write(reply, (json.dumps(message) + "\n").encode())

    def reap() -> None:
        while children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                return
            children.discard(pid)
            send({"exited": pid, "code": os.waitstatus_to_exitcode(status)})

    while True:
        ready = select.select([0, wake_r], [], [])[0]
        if wake_r in ready:
            while True:
                try:
                    if not os.read(wake_r, 512):
                        break
                except BlockingIOError:
                    break
            reap()
        if 0 in ready:
            head = _read_exact(0, _LENGTH.size)
            request = head and _read_exact(0, _LENGTH.unpack(head)[0])
            if not request:
                break
            pid = os.fork()
            if pid == 0:
                _child(request, [reply, wake_r, wake_w], server)
            children.add(pid)
            send({"started": pid})
            reap()
    for pid in children:
        os.kill(pid, signal.SIGKILL)
    while children:
        pid, _ = os.waitpid(-1, 0)
        children.discard(pid)
    return 0


class ForkedRun:
    """One forked run, with the part of subprocess.Popen's interface `train_runs` uses."""

    def __init__(self, server: RunServer, pid: int):
        self.server, self.pid = server, pid

    @property
    def returncode(self) -> int | None:
        return self.poll()

    def poll(self) -> int | None:
        """Its exit status, or None while it runs; -1 when the server died without saying."""
        with self.server.cond:
            return self.server.code(self.pid)

    def wait(self) -> int:
        with self.server.cond:
            self.server.cond.wait_for(lambda: self.server.code(self.pid) is not None)
            return self.server.code(self.pid)  # type: ignore[return-value]

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):  # already ended
            os.kill(self.pid, signal.SIGKILL)


class RunServer:
    """The launcher's end of a fork server (see the module's docstring). The server starts at
    the first `launch`, so one made for several calls that launch nothing costs nothing.
    `launch` blocks until the child is forked: the first call waits for the server's imports,
    at most `start_timeout` seconds (a server stuck there would otherwise hang the grid); later
    calls wait without a limit, since a server that forked once is past its imports and
    killing it would take its running children with it."""

    start_timeout = 600.0

    def __init__(self, env: dict[str, str]):
        self.cond = threading.Condition()
        self._env = {**env, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        self._codes: dict[int, int] = {}
        self._started: list[int] = []
        self._forked_any = False
        self._ended = False
        self._errors = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
        self._proc: subprocess.Popen | None = None

    def _start(self) -> subprocess.Popen:
        if self._proc is None:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "polyvis.nano.fork_server"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._errors,
                env=self._env,
            )
            self._reader = threading.Thread(target=self._read, daemon=True)
            self._reader.start()
        return self._proc

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            message = json.loads(line)
            with self.cond:
                if "started" in message:
                    self._started.append(message["started"])
                else:
                    self._codes[message["exited"]] = message["code"]
                self.cond.notify_all()
        with self.cond:
            self._ended = True
            self.cond.notify_all()

    def code(self, pid: int) -> int | None:
        """pid's exit status once known (call holding `cond`)."""
        if pid in self._codes:
            return self._codes[pid]
        return -1 if self._ended else None

    def launch(
        self, stages: list[Stage], log: Path, env: dict[str, str], threads: int
    ) -> ForkedRun:
        request = pickle.dumps((stages, str(log), env, threads))
        proc = self._start()
        assert proc.stdin is not None
        try:
            proc.stdin.write(_LENGTH.pack(len(request)) + request)
            proc.stdin.flush()
        except BrokenPipeError:
            pass  # the server is gone: the wait below says so
        limit = None if self._forked_any else self.start_timeout
        with self.cond:
            answered = self.cond.wait_for(lambda: self._started or self._ended, limit)
            if answered and self._started:
                self._forked_any = True
                return ForkedRun(self, self._started.pop(0))
        if not answered:
            proc.kill()  # it has no children yet
            proc.wait()
            raise PolyVisError(
                f"the run server forked no run within {self.start_timeout:g} s and was stopped "
                f"({self.errors()})"
            )
        raise PolyVisError(f"the run server stopped: {self.errors()}")

    def errors(self) -> str:
        """The end of the server's own error output (its children write to their logs)."""
        self._errors.seek(0)
        lines = self._errors.read().decode(errors="replace").strip().splitlines()
        status = self._proc.poll() if self._proc is not None else None
        return " | ".join(lines[-3:]) or f"no error output; exit status {status}"

    def close(self) -> None:
        """Stop the server; it kills any child still running."""
        proc = self._proc
        if proc is not None:
            assert proc.stdin is not None
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.close()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            self._reader.join(timeout=5)
        self._errors.close()


if __name__ == "__main__":
    sys.exit(serve())
