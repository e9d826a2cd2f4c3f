"""QA of the nano experts' cache (docs/nano.md, "Build them (cached)") where
tests/test_nano_experts.py does not look: a stale entry (a copy cut short) is rebuilt and
replaced, not retrained on every call; a worker stopped by the parent leaves no temporary folder;
a cache that is a file, or an OS error in a worker, is one line; `polyvis nano experts list`
tells entries apart and survives an unreadable one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from polyvis.errors import ConfigError


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("POLYVIS_CACHE", str(root))
    return root


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from polyvis.data.synthetic import generate

    out = tmp_path_factory.mktemp("qa-scene")
    generate(["scene"], n=12, seed=0, out=out, image_size=64, progress=False)
    return out


def test_atomic_dir_replaces_a_stale_folder_and_keeps_a_finished_one(tmp_path: Path) -> None:
    from polyvis.paths import atomic_dir

    done = lambda p: (p / "done").is_file()  # noqa: E731
    stale = tmp_path / "entry"
    stale.mkdir()
    (stale / "half.bin").write_bytes(b"x")  # a copy cut short: no marker
    with atomic_dir(stale, complete=done) as tmp:
        (tmp / "done").write_text("new")
    assert sorted(p.name for p in stale.iterdir()) == ["done"]
    # a finished folder is another process's: ours is discarded, theirs kept
    with atomic_dir(stale, complete=done) as tmp:
        (tmp / "done").write_text("late")
    assert (stale / "done").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["entry"]  # nothing left beside it


def test_an_entry_with_expert_json_but_no_weights_is_not_built(tmp_path: Path) -> None:
    from polyvis.nano.experts import BUILT_FILES, is_built

    (tmp_path / "expert.json").write_text("{}")  # copied first, the weights never came
    assert not is_built(tmp_path)
    for name in BUILT_FILES:
        (tmp_path / name).write_text("{}")
    assert is_built(tmp_path)


def test_a_stale_expert_entry_is_rebuilt_into_place(cache: Path, scene_dir: Path) -> None:
    """Before: a folder without expert.json was trained again on every call, the new copy thrown
    away (the rename onto a non-empty folder failed silently), and the broken folder returned."""
    from polyvis.nano import experts

    paths = experts.ensure_experts(scene_dir, quick=True, progress=False, names=["dino-nano"])
    entry = paths["dino-nano"]
    (entry / "expert.json").unlink()
    (entry / "model.safetensors").write_bytes(b"cut short")
    again = experts.ensure_experts(scene_dir, quick=True, progress=False, names=["dino-nano"])
    assert again == paths and experts.is_built(entry)
    assert (entry / "model.safetensors").read_bytes() != b"cut short"
    assert not [p.name for p in entry.parent.iterdir() if p.name.startswith(".")]


def test_a_cache_that_is_a_file_is_named_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from polyvis.cli import main
    from polyvis.nano.experts import ensure_experts

    blocker = tmp_path / "cache-file"
    blocker.write_text("")
    monkeypatch.setenv("POLYVIS_CACHE", str(blocker / "sub"))
    with pytest.raises(ConfigError, match=rf"^POLYVIS_CACHE: {blocker} is a file"):
        ensure_experts(quick=True, progress=False)
    assert main(["nano", "experts", "list"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"polyvis: error: POLYVIS_CACHE: {blocker} is a file, not a folder"
    )


def test_a_workers_os_error_is_reported_as_one_line(
    cache: Path, capsys: pytest.CaptureFixture
) -> None:
    """Before: the worker's OSError was a traceback, which the parent printed as 15 lines."""
    from polyvis.nano import experts

    cache.mkdir()
    (cache / "data").write_text("")  # the synthetic data's folder is a file
    name = "dino-nano"
    job = {"name": name, "settings": experts.resolve_settings(name, None, True),
           "data": experts.resolve_data(None, name, True), "out": str(cache / "experts" / "x")}  # fmt: skip
    before = signal.getsignal(signal.SIGTERM)
    try:
        assert experts._worker(json.dumps(job)) == 2
    finally:
        signal.signal(signal.SIGTERM, before)
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert events[-1] == {"event": "error", "kind": "OSError",
                          "message": f"{cache / 'data'}: File exists"}  # fmt: skip


def test_a_stopped_worker_removes_its_temporary_folder(cache: Path, scene_dir: Path) -> None:
    """The parent stops its workers with SIGTERM (Ctrl-C, kill); before, each left its
    half-built `.NAME.PID.tmp` folder in the cache for good."""
    from polyvis.nano import experts

    name = "dino-nano"
    settings = experts.resolve_settings(name, {name: {"steps": 100000}}, True)
    data = experts.resolve_data(scene_dir, name, True)
    out = experts.expert_dir(name, settings, data)
    job = json.dumps({"name": name, "settings": settings, "data": data, "out": str(out)})
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "polyvis.nano.experts", job],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)  # fmt: skip
    try:
        for line in proc.stdout:  # training has started: its temporary folder exists
            if json.loads(line).get("event") == "step":
                break
        assert [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert list(out.parent.iterdir()) == []


def _fake_entry(cache: Path, name: str, key: str, settings: dict, log: str | None) -> Path:
    folder = cache / "experts" / f"{name}-{key}"
    folder.mkdir(parents=True)
    info = {"expert": name, "settings": settings, "final_loss": 1.5, "eval": {}}
    (folder / "expert.json").write_text(json.dumps(info))
    if log is not None:
        (folder / "training_log.json").write_text(log)
    return folder


def test_experts_list_tells_entries_apart_and_survives_a_broken_one(
    cache: Path, capsys: pytest.CaptureFixture
) -> None:
    from polyvis.cli import main
    from polyvis.nano.experts import resolve_settings

    full = resolve_settings("clip-nano", None, False)
    log = json.dumps({"expert": "clip-nano", "final_loss": 0.5, "eval": {}, "train_seconds": 9})
    _fake_entry(cache, "clip-nano", "a" * 12, full, log)
    _fake_entry(cache, "clip-nano", "b" * 12, {**full, "seed": 4}, log)
    _fake_entry(cache, "clip-nano", "c" * 12, resolve_settings("clip-nano", None, True), None)
    (cache / "experts" / f"dino-nano-{'d' * 12}").mkdir()
    (cache / "experts" / f"dino-nano-{'d' * 12}" / "expert.json").write_text("{")
    assert main(["nano", "experts", "list"]) == 0
    out = capsys.readouterr().out
    assert "  settings: default\n" in out and "  settings: seed=4\n" in out
    # no training log: its expert.json still has the measured numbers
    assert "clip-nano: final loss 1.5000\n  settings: --quick\n" in out
    assert f"dino-nano-{'d' * 12}: unreadable entry" in out
