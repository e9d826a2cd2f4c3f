"""polyvis.malloc: freed activations stay in the process, so a step stops faulting pages in."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from polyvis.malloc import ENV, keep_freed_memory

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"

# Four 100 KB blocks allocated, written and freed 10 times, as a step does with its
# activations. With glibc's defaults the freed top of the heap (400 KB, past the 128 KB trim
# threshold) goes back to the kernel, so every round faults its pages in again; kept, the
# blocks are reused.
_ROUNDS = """
import ctypes, json, resource
from polyvis.malloc import keep_freed_memory
kept = keep_freed_memory()
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
size = 100 << 10
def once():
    blocks = [libc.malloc(size) for _ in range(4)]
    for block in blocks:
        ctypes.memset(block, 1, size)
    for block in blocks:
        libc.free(block)
once()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    once()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"kept": kept, "faults": faults}))
"""


def _rounds(keep: str) -> dict:
    # glibc's defaults, whatever this shell set: no tunables, no malloc variables, no preload
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("GLIBC_TUNABLES", "LD_PRELOAD") and not k.startswith("MALLOC_")
    }
    env.update({ENV: keep, "OMP_NUM_THREADS": "1"})
    out = subprocess.run(
        [sys.executable, "-c", _ROUNDS], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_freed_memory_is_reused_instead_of_faulted_in_again():
    default, kept = _rounds("0"), _rounds("1")
    assert default["kept"] is False and kept["kept"] is True
    pages = 10 * 4 * (100 << 10) // 4096
    # the trim keeps 128 KB of top pad, so about 68 of a round's 100 pages fault in again
    assert default["faults"] >= pages // 4, default
    assert kept["faults"] < pages // 10, kept


def test_turned_off_by_the_environment(monkeypatch):
    monkeypatch.setenv(ENV, "0")
    assert keep_freed_memory() is False


def test_set_by_the_polyvis_command_not_by_main_from_python(monkeypatch, capsys):
    """The `polyvis` command (polyvis.cli.entry, also `python -m polyvis`) keeps freed memory;
    `polyvis.cli.main` called from Python, as a user's script or these tests do, does not."""
    import polyvis.cli

    calls: list[int] = []
    monkeypatch.setattr(polyvis.cli, "keep_freed_memory", lambda: calls.append(1) or True)
    assert polyvis.cli.main(["list"]) == 0
    assert calls == []
    monkeypatch.setattr(sys, "argv", ["polyvis", "list"])
    with pytest.raises(SystemExit) as exit_:
        polyvis.cli.entry()
    assert exit_.value.code == 0 and calls == [1]
    assert "fusion: add" in capsys.readouterr().out
