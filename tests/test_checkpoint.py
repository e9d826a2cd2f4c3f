"""Training checkpoints: layout, exact round trip, atomicity (one process; DDP is in test_train)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from polyvis.train.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint


class OneProcess:
    """The parts of accelerate's Accelerator that checkpoints use, for a single process."""

    is_main_process = True
    process_index = 0

    def unwrap_model(self, model):
        return model

    def wait_for_everyone(self) -> None:
        pass


def training_objects(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    model[0].requires_grad_(False)  # frozen weights are not a checkpoint's business
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (s + 1))
    model(torch.randn(5, 4)).sum().backward()
    opt.step()
    sched.step()
    return model, opt, sched


def save(run: Path, step: int, model, opt, sched, keep_last: int = 2) -> Path:
    return save_checkpoint(run, step, model, opt, sched, {"seen": step}, keep_last, OneProcess())


def test_layout_keep_last_and_no_temporary_left(tmp_path):
    run = tmp_path / "run"
    model, opt, sched = training_objects()
    save(run, 2, model, opt, sched)
    stale = run / "checkpoints" / ".step-5.4242.tmp"  # a writer killed half-way
    stale.mkdir()
    (stale / "state.json").write_text("{}")
    save(run, 4, model, opt, sched)
    final = save(run, 6, model, opt, sched)
    assert final == run / "checkpoints" / "step-6"
    assert list_checkpoints(run) == [run / "checkpoints" / "step-4", final]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-4", "step-6"]
    assert sorted(p.name for p in final.iterdir()) == [
        "optimizer.pt",
        "rng-0.json",
        "scheduler.pt",
        "state.json",
        "trainable.safetensors",
    ]
    assert json.loads((final / "state.json").read_text()) == {"step": 6, "seen": 6}
    tensors = load_file(str(final / "trainable.safetensors"))
    assert sorted(tensors) == ["1.bias", "1.weight"]
    assert torch.equal(tensors["1.weight"], model[1].weight)


def test_saving_a_step_again_replaces_it(tmp_path):
    run = tmp_path / "run"
    model, opt, sched = training_objects()
    save(run, 4, model, opt, sched)
    with torch.no_grad():
        model[1].weight.add_(1.0)
    save(run, 4, model, opt, sched)
    tensors = load_file(str(run / "checkpoints" / "step-4" / "trainable.safetensors"))
    assert torch.equal(tensors["1.weight"], model[1].weight)


def test_round_trip_restores_weights_optimizer_and_rng(tmp_path):
    run = tmp_path / "run"
    model, opt, sched = training_objects()
    path = save(run, 3, model, opt, sched)
    after_save = (random.random(), np.random.rand(), torch.rand(3))
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    opt_state = opt.state_dict()

    other, other_opt, other_sched = training_objects(seed=1)
    other(torch.randn(2, 4)).sum().backward()
    other_opt.step()
    state = load_checkpoint(path, other, other_opt, other_sched, OneProcess())

    assert state == {"step": 3, "seen": 3}
    assert (random.random(), np.random.rand()) == after_save[:2]
    assert torch.equal(torch.rand(3), after_save[2])
    # trainable weights come back; the frozen layer keeps the (other) start model's weights
    assert torch.equal(other[1].weight, weights["1.weight"])
    assert torch.equal(other[1].bias, weights["1.bias"])
    assert not torch.equal(other[0].weight, weights["0.weight"])
    loaded = other_opt.state_dict()
    for k, v in opt_state["state"].items():
        assert all(torch.equal(v[n], loaded["state"][k][n]) for n in v)
    assert other_sched.state_dict()["last_epoch"] == sched.state_dict()["last_epoch"]


def test_an_error_while_writing_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    run = tmp_path / "run"
    model, opt, sched = training_objects()
    save(run, 2, model, opt, sched)
    before = (run / "checkpoints" / "step-2" / "trainable.safetensors").read_bytes()

    def broken():
        raise RuntimeError("disk full")

    monkeypatch.setattr(sched, "state_dict", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        save(run, 4, model, opt, sched)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-2"]
    assert (run / "checkpoints" / "step-2" / "trainable.safetensors").read_bytes() == before


def test_a_full_disk_is_named_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    from polyvis.errors import PolyVisError

    run = tmp_path / "run"
    model, opt, sched = training_objects()
    save(run, 2, model, opt, sched)

    def full(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 2980480")

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(torch, "save", full)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9, 5 * 2**20))
    with pytest.raises(PolyVisError, match=r"step-4: the disk is full \(5 MiB free\)"):
        save(run, 4, model, opt, sched)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-2"]
    # with space left, the error is not about the disk and passes through as it is
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**12, 0, 10**11))
    with pytest.raises(RuntimeError, match="unexpected pos"):
        save(run, 4, model, opt, sched)
