"""polyvis.malloc: freed activations stay in the process, so a step stops faulting pages in."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from polyvis.malloc import ENV, keep_freed_memory

GLIBC = sys.platform.startswith("linux") and os.confstr("CS_GNU_LIBC_VERSION") is not None

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
    env = {**os.environ, ENV: keep, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", _ROUNDS], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_freed_memory_is_reused_instead_of_faulted_in_again():
    default, kept = _rounds("0"), _rounds("1")
    assert default["kept"] is False and kept["kept"] is True
    pages = 10 * 4 * (100 << 10) // 4096
    assert default["faults"] >= pages // 4, default  # 680 here: the trim leaves 128 KB of top pad
    assert kept["faults"] < pages // 10, kept


def test_turned_off_by_the_environment(monkeypatch):
    monkeypatch.setenv(ENV, "0")
    assert keep_freed_memory() is False


def test_set_by_the_polyvis_command(monkeypatch, capsys):
    """Every `polyvis` subcommand keeps freed memory; importing polyvis does not."""
    import polyvis.cli

    calls: list[int] = []
    monkeypatch.setattr(polyvis.cli, "keep_freed_memory", lambda: calls.append(1) or True)
    assert polyvis.cli.main(["list"]) == 0
    assert calls == [1]
    assert "fusion: add" in capsys.readouterr().out
