"""Checkpoints: written atomically (polyvis.paths.atomic_dir), the last K kept.

Old checkpoints are renamed to a hidden trash name before they are deleted, so a process killed
while deleting leaves a folder `clean_checkpoints` recognises, never a `step-N` without its
state.json that nothing would remove.

A checkpoint holds what training changes and nothing more: the trainable parameters
(safetensors), optimizer and scheduler state (torch.save, read back with weights_only=True), the
RNG states of every process and the data position. Frozen weights come from the run's start model.
BatchNorm's running statistics are buffers, not parameters, and a trained BatchNorm encoder moves
them every step: they are kept too (buffers.safetensors, only for models that have BatchNorm).
A sharded run (FSDP) gathers its shards into the same format (polyvis.train.sharding).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.utils import gather_object
from safetensors.torch import load_file, save_file
from torch import nn

from polyvis.errors import PolyVisError
from polyvis.paths import atomic_dir
from polyvis.train.sharding import clean_name, gather_trainable, is_fsdp, load_trainable

PREFIX = "step-"
TRASH_SUFFIX = ".trash"


def checkpoint_dir(run: Path) -> Path:
    return Path(run) / "checkpoints"


def list_checkpoints(run: Path) -> list[Path]:
    root = checkpoint_dir(run)
    if not root.is_dir():
        return []
    found = [
        p
        for p in root.iterdir()
        if p.is_dir() and p.name.startswith(PREFIX) and (p / "state.json").is_file()
    ]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX) :]))


def latest_checkpoint(run: Path) -> Path | None:
    found = list_checkpoints(run)
    return found[-1] if found else None


def _step_of(path: Path) -> int | None:
    tail = path.name[len(PREFIX) :]
    return int(tail) if path.name.startswith(PREFIX) and tail.isdigit() else None


def _discard(path: Path) -> None:
    """Delete a checkpoint folder: renamed first (atomic), so a kill half-way through the delete
    leaves a hidden trash folder, not a `step-N` that is half a checkpoint."""
    trash = path.with_name(f".{path.name}.{os.getpid()}{TRASH_SUFFIX}")
    shutil.rmtree(trash, ignore_errors=True)  # a leftover of an earlier process with our pid
    try:
        os.replace(path, trash)
    except FileNotFoundError:
        return
    shutil.rmtree(trash, ignore_errors=True)


def clean_checkpoints(run: Path) -> None:
    """Remove what interrupted saves and deletes left in RUN/checkpoints: temporary and trash
    folders, and `step-N` folders without state.json older than the newest complete checkpoint
    (deleted half-way by an earlier version). Complete checkpoints are never touched. Call it
    from the main process only, while no checkpoint is being written."""
    root = checkpoint_dir(run)
    if not root.is_dir():
        return
    # temporary names carry the writer's pid; ours is not writing while this runs
    for stale in [*root.glob(f".{PREFIX}*.tmp"), *root.glob(f".{PREFIX}*{TRASH_SUFFIX}")]:
        shutil.rmtree(stale, ignore_errors=True)
    newest = latest_checkpoint(run)
    if newest is None:
        return
    newest_step = _step_of(newest)
    for path in root.iterdir():
        step = _step_of(path)
        if step is None or step >= newest_step or not path.is_dir():
            continue
        if not (path / "state.json").is_file():
            _discard(path)


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "torch": torch.get_rng_state().tolist(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npst = state["numpy"]
    np.random.set_state((npst[0], np.array(npst[1], dtype=np.uint32), *npst[2:]))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))


_LOW_SPACE = 64 * 1024 * 1024


@contextlib.contextmanager
def _disk_full_named(folder: Path) -> Iterator[None]:
    """A write that fails on a full disk (torch says only "unexpected pos ...") is reported as
    such, naming the folder; the previous checkpoint stays, so the run resumes from it."""
    try:
        yield
    except (OSError, RuntimeError) as err:
        free = shutil.disk_usage(folder.parent).free
        if free >= _LOW_SPACE:
            raise
        raise PolyVisError(
            f"{folder}: the disk is full ({free // (1024 * 1024)} MiB free) while writing this "
            "checkpoint; free some space and run the same command again: it resumes from the "
            "last checkpoint"
        ) from err


def norm_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """BatchNorm running statistics (running_mean, running_var, num_batches_tracked) by name:
    what training changes besides the parameters. FSDP2 leaves buffers whole on each process."""
    from torch.nn.modules.batchnorm import _BatchNorm

    found = {}
    for prefix, module in model.named_modules():
        if isinstance(module, _BatchNorm):
            for name, buf in module.named_buffers(recurse=False):
                if buf is not None:
                    found[clean_name(f"{prefix}.{name}")] = buf
    return found


def save_checkpoint(
    run: Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: dict[str, Any],
    keep_last: int,
    accelerator: Any,
) -> Path:
    """Write RUN/checkpoints/step-N atomically, with every process's RNG state.

    The main process writes the folder; the others' RNG states reach it by gather_object (a
    no-op with one process), so no process writes into another's temporary folder.
    """
    root = checkpoint_dir(run)
    final = root / f"{PREFIX}{step}"
    rng_states = gather_object([rng_state()])
    sharded = is_fsdp(accelerator)
    if sharded:  # every process takes part in gathering the shards
        tensors, optim_state = gather_trainable(accelerator, model, optimizer)
    if accelerator.is_main_process:
        if final.is_dir() and not (final / "state.json").is_file():
            _discard(final)  # half a folder (a kill while deleting it): replaced as a whole
        with _disk_full_named(final), atomic_dir(final, replace=True) as tmp:
            for index, rng in enumerate(rng_states):
                (tmp / f"rng-{index}.json").write_text(json.dumps(rng))
            if not sharded:
                unwrapped = accelerator.unwrap_model(model)
                tensors = {
                    n: p.detach().cpu().contiguous()
                    for n, p in unwrapped.named_parameters()
                    if p.requires_grad
                }
                optim_state = optimizer.state_dict()
            save_file(tensors, str(tmp / "trainable.safetensors"))
            buffers = norm_buffers(accelerator.unwrap_model(model))
            if buffers:
                save_file(
                    {n: b.detach().cpu().contiguous() for n, b in buffers.items()},
                    str(tmp / "buffers.safetensors"),
                )
            torch.save(optim_state, tmp / "optimizer.pt")
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            (tmp / "state.json").write_text(json.dumps({"step": step, **state}, indent=1))
        for old in list_checkpoints(run)[:-keep_last]:
            _discard(old)
        clean_checkpoints(run)  # what a process killed while writing or deleting left
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, accelerator: Any
) -> dict[str, Any]:
    """Restore a checkpoint into prepared objects; returns its state.json."""
    path = Path(path)
    try:
        tensors = load_file(str(path / "trainable.safetensors"))
        state = json.loads((path / "state.json").read_text())
    except (OSError, ValueError) as err:
        raise PolyVisError(f"{path}: unreadable checkpoint ({err})") from None
    unwrapped = accelerator.unwrap_model(model)
    params = {clean_name(n): p for n, p in unwrapped.named_parameters()}
    missing = [n for n, p in params.items() if p.requires_grad and n not in tensors]
    if missing:
        raise PolyVisError(
            f"{path}: checkpoint lacks trainable parameter {missing[0]} (changed config?)"
        )
    optim_state = torch.load(path / "optimizer.pt", weights_only=True)
    if is_fsdp(accelerator):  # each process keeps its shard of the whole checkpoint
        load_trainable(accelerator, model, optimizer, tensors, optim_state)
    else:
        with torch.no_grad():
            for name, value in tensors.items():
                params[name].copy_(value)
        optimizer.load_state_dict(optim_state)
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    if (path / "buffers.safetensors").is_file():  # checkpoints before 2026-12-07 lack it
        buffers = norm_buffers(unwrapped)
        with torch.no_grad():
            for name, value in load_file(str(path / "buffers.safetensors")).items():
                if name in buffers:
                    buffers[name].copy_(value)
    rng_file = path / f"rng-{accelerator.process_index}.json"
    if rng_file.is_file():
        set_rng_state(json.loads(rng_file.read_text()))
    return state
