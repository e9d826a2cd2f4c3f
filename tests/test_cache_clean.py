"""`polyvis cache-clean`: what killed builds left in the cache goes, by age; nothing else does."""

from __future__ import annotations

import os
import time

from polyvis.cli import main


def _aged(path, hours: float) -> None:
    t = time.time() - hours * 3600
    os.utime(path, (t, t))


def test_old_leftovers_go_and_everything_else_stays(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("POLYVIS_CACHE", str(tmp_path))
    experts = tmp_path / "experts"
    kept = experts / "clip-nano-abc"  # a finished entry
    kept.mkdir(parents=True)
    (kept / "model.safetensors").write_bytes(b"x")
    old = experts / ".clip-nano-abc.4242.tmp"  # a worker killed with SIGKILL, two days ago
    (old / "inner").mkdir(parents=True)
    (old / "inner" / ".x.7.tmp").write_text("inside a leftover: goes with it")
    _aged(old, 48)
    stale = tmp_path / "data" / ".synth-1.99.stale"
    stale.mkdir(parents=True)
    _aged(stale, 30)
    live = experts / ".vary-nano-def.77.tmp"  # a build running now
    live.mkdir()
    hidden = experts / ".notes"  # not ours
    hidden.mkdir()
    _aged(hidden, 100)

    assert main(["cache-clean", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"would remove {old}" in out and f"would remove {stale}" in out
    assert "2 leftover(s)" in out and old.is_dir()  # a dry run removes nothing

    assert main(["cache-clean"]) == 0
    assert not old.exists() and not stale.exists()
    assert kept.is_dir() and live.is_dir() and hidden.is_dir()
    assert main(["cache-clean", "--older-than", "0"]) == 0  # now the young one too
    assert not live.exists() and hidden.is_dir()


def test_a_bad_age_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("POLYVIS_CACHE", str(tmp_path))
    assert main(["cache-clean", "--older-than", "-1"]) == 2
    assert capsys.readouterr().err.strip().startswith("polyvis: error: --older-than: must be")
