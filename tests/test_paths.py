"""polyvis.paths: the one way to write files and folders atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from polyvis import paths
from polyvis.paths import (
    atomic_dir,
    atomic_file,
    temporary_name,
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
)


def listing(folder: Path) -> list[str]:
    """Every name under `folder`, hidden ones included, relative and sorted."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_temporary_names_are_hidden_siblings_that_carry_the_pid(tmp_path):
    target = tmp_path / "sub" / "model"
    assert temporary_name(target) == tmp_path / "sub" / f".model.{os.getpid()}.tmp"
    seen = []
    with atomic_dir(target) as tmp:
        seen.append(tmp)
        with atomic_file(tmp_path / "x.json") as tmp_file:
            seen.append(tmp_file)
            tmp_file.write_text("{}")
    assert seen == [temporary_name(target), temporary_name(tmp_path / "x.json")]


def test_atomic_dir_renames_the_finished_folder(tmp_path):
    target = tmp_path / "out" / "model"
    with atomic_dir(target) as tmp:
        assert tmp.is_dir() and not list(tmp.iterdir())
        assert not target.exists()  # nothing visible until the block succeeds
        (tmp / "weights.bin").write_bytes(b"abc")
        (tmp / "nested").mkdir()
        (tmp / "nested" / "config.json").write_text("{}")
    assert (target / "weights.bin").read_bytes() == b"abc"
    assert (target / "nested" / "config.json").read_text() == "{}"
    expected = ["model", "model/nested", "model/nested/config.json", "model/weights.bin"]
    assert listing(tmp_path / "out") == expected


@pytest.mark.parametrize("replace", [False, True])
def test_atomic_dir_error_leaves_neither_temporary_nor_target(tmp_path, replace):
    target = tmp_path / "model"
    with pytest.raises(RuntimeError, match="boom"), atomic_dir(target, replace=replace) as tmp:
        (tmp / "half.bin").write_bytes(b"half")
        raise RuntimeError("boom")
    assert listing(tmp_path) == []


@pytest.mark.parametrize("replace", [False, True])
def test_atomic_dir_error_keeps_an_existing_target(tmp_path, replace):
    target = tmp_path / "model"
    target.mkdir()
    (target / "old.bin").write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"), atomic_dir(target, replace=replace) as tmp:
        (tmp / "new.bin").write_bytes(b"new")
        raise RuntimeError("boom")
    assert listing(tmp_path) == ["model", "model/old.bin"]
    assert (target / "old.bin").read_bytes() == b"old"


def test_atomic_dir_lost_race_keeps_the_other_copy(tmp_path):
    target = tmp_path / "cache" / "entry"
    with atomic_dir(target) as tmp:
        (tmp / "data.bin").write_bytes(b"ours")
        # another process finishes the same entry while we are still building ours
        target.mkdir(parents=True)
        (target / "data.bin").write_bytes(b"theirs")
    assert (target / "data.bin").read_bytes() == b"theirs"
    assert listing(tmp_path / "cache") == ["entry", "entry/data.bin"]


def test_atomic_dir_replace_true_replaces(tmp_path):
    target = tmp_path / "step-4"
    target.mkdir()
    (target / "old.bin").write_bytes(b"old")
    (target / "shared.json").write_text("old")
    with atomic_dir(target, replace=True) as tmp:
        (tmp / "shared.json").write_text("new")
    assert listing(tmp_path) == ["step-4", "step-4/shared.json"]
    assert (target / "shared.json").read_text() == "new"


def test_atomic_dir_clears_its_own_leftover_from_a_killed_run(tmp_path):
    target = tmp_path / "model"
    stale = temporary_name(target)  # same pid: e.g. a container that restarts with pid 1
    stale.mkdir()
    (stale / "half.bin").write_bytes(b"half")
    with atomic_dir(target) as tmp:
        assert not list(tmp.iterdir())
        (tmp / "a").write_text("a")
    assert listing(tmp_path) == ["model", "model/a"]


def test_atomic_file_success_and_error(tmp_path):
    target = tmp_path / "sub" / "shard.safetensors"
    with atomic_file(target) as tmp:
        assert tmp.parent.is_dir() and not target.exists()
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    with pytest.raises(RuntimeError, match="boom"), atomic_file(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("boom")
    assert target.read_bytes() == b"new"
    assert listing(tmp_path) == ["sub", "sub/shard.safetensors"]


def test_write_atomic_contents_and_no_temporary_left(tmp_path):
    data = {"images": {"ab": 0, "cd": 1}, "format": 1, "name": "é"}
    assert write_bytes_atomic(tmp_path / "a" / "b.bin", b"\x00\x01") == tmp_path / "a" / "b.bin"
    write_text_atomic(tmp_path / "t.txt", "héllo\n")
    write_json_atomic(tmp_path / "pretty.json", data)
    write_json_atomic(tmp_path / "compact.json", data, indent=None)
    write_json_atomic(tmp_path / "compact.json", data, indent=None)  # overwrite in place
    assert (tmp_path / "a" / "b.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "t.txt").read_text(encoding="utf-8") == "héllo\n"
    assert (tmp_path / "pretty.json").read_text() == json.dumps(data, indent=1) + "\n"
    # the feature cache's index format: one line, no trailing newline
    assert (tmp_path / "compact.json").read_text() == json.dumps(data)
    assert listing(tmp_path) == ["a", "a/b.bin", "compact.json", "pretty.json", "t.txt"]


def test_write_atomic_failed_rename_leaves_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "index.json"
    target.write_text("old")

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(paths.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_json_atomic(target, {"a": 1})
    assert listing(tmp_path) == ["index.json"] and target.read_text() == "old"
