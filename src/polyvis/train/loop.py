"""`polyvis train`: one loop for both stages, on accelerate (one process, DDP, FSDP, DeepSpeed).

The loss is the mean over every answer token of the global batch (all micro-batches of an
optimizer step, on all processes), so one process and N processes with the same global batch
compute the same update, and gradient accumulation changes nothing but memory.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from polyvis.config import Config, dump_config
from polyvis.data.synthetic.cache import ensure_synthetic
from polyvis.errors import ConfigError, DataError, PolyVisError
from polyvis.progress import progress_bar
from polyvis.train.checkpoint import (
    clean_checkpoints,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from polyvis.train.data import check_max_length, data_files, make_loader
from polyvis.train.feature_cache import prepare_feature_cache
from polyvis.train.metrics import MetricsLog
from polyvis.train.run_dir import check_resumable, init_dir_of, model_of_init
from polyvis.train.scales import resolve_scales
from polyvis.train.sharding import (
    check_sharding,
    clip_parameters,
    fsdp_requested,
    full_model,
    is_fsdp,
    shard_on_cpu,
    sharding_kind,
    wrap_units,
)
from polyvis.train.stages import configure_stage, parameter_groups
from polyvis.train.sync_norm import plain_batch_norms, sync_batch_norms
from polyvis.train.teardown import end_training


class TrainingError(PolyVisError):
    pass


def _start_model(cfg: Config):
    from polyvis.models.build import build_model, load_model

    src = init_dir_of(cfg)
    return load_model(src) if src is not None else build_model(cfg)


def _fresh_model(cfg: Config):
    """The model as training starts it (stage, LoRA), to receive a sharded run's weights."""
    model, _ = _start_model(cfg)
    configure_stage(model, cfg.train)
    return model


def _model_inputs(batch: dict[str, Any], device: torch.device, cache=None) -> dict[str, Any]:
    keys = ("input_ids", "attention_mask", "labels", "pixel_values")
    inputs = {k: batch[k].to(device) for k in keys if k in batch}
    if cache is not None and batch["image_hashes"]:  # the feature cache replaces the encoders
        inputs["encoder_features"] = cache.lookup(batch["image_hashes"], device)
    return inputs


def _adamw(groups: list[dict[str, Any]], lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with the fused kernel (CPU and CUDA): one kernel per step instead of a loop of small
    ops per parameter, which on small models is a visible share of the step. Falls back to the
    default implementation where the fused one does not apply (e.g. a parameter dtype)."""
    try:
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)


def _answer_tokens(batch: dict[str, Any]) -> int:
    return int((batch["labels"][:, 1:] != -100).sum())


def _without_repeats(labels: torch.Tensor, accelerator) -> torch.Tensor:
    """Labels with the rows accelerate repeated to fill the last batch masked out: it splits
    every batch evenly between the processes, completing the last one with records from the
    start, which would otherwise count twice in a val loss on several processes."""
    state = accelerator.gradient_state
    if accelerator.num_processes == 1 or not state.end_of_dataloader or state.remainder <= 0:
        return labels
    rows = labels.shape[0]  # this process's slice of the global batch (split_batches)
    start = accelerator.process_index * rows
    repeated = torch.arange(start, start + rows) >= state.remainder
    if not repeated.any():
        return labels
    labels = labels.clone()
    labels[repeated.to(labels.device)] = -100
    return labels


@torch.no_grad()
def evaluate_loss(model, loader, accelerator, cache=None) -> float:
    """Mean answer-token loss over a validation loader."""
    model.eval()
    total, count = torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
    for batch in loader:
        labels = _without_repeats(batch["labels"], accelerator)
        n = _answer_tokens({"labels": labels})
        if n == 0 and accelerator.num_processes == 1:
            continue
        # several processes all run every batch (FSDP gathers weights in the forward pass);
        # one with nothing to count computes the loss of its rows and drops it
        out = model(
            **_model_inputs({**batch, "labels": labels if n else batch["labels"]},
                            accelerator.device, cache),
            num_items_in_batch=1,
            answer_logits_only=True,
        )  # fmt: skip
        if n:
            total += out.loss.double().cpu()  # sum over tokens (num_items_in_batch=1)
            count += n
    model.train()
    total = accelerator.reduce(total.to(accelerator.device), "sum")
    count = accelerator.reduce(count.to(accelerator.device), "sum")
    # nothing scored (every record unusable): nan, not a perfect-looking 0.0
    return float(total / count) if float(count) else float("nan")


def train(cfg: Config, out: str | Path, progress: bool = True) -> Path:
    """Train as the config says into the run directory `out`; resumes from its last checkpoint."""
    from accelerate import Accelerator, DataLoaderConfiguration, DistributedDataParallelKwargs
    from accelerate.utils import set_seed
    from transformers import get_cosine_schedule_with_warmup

    from polyvis.models.build import save_model
    from polyvis.train.precision import allow_precision, cpu_bf16_attention
    from polyvis.train.stages import has_lora

    run = Path(out)
    tc = cfg.train
    # Several processes on a machine without GPUs: accelerate's CPU path (DDP over gloo).
    multi_cpu = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    allow_precision(tc.mixed_precision)
    accelerator = Accelerator(
        cpu=multi_cpu or None,
        mixed_precision=tc.mixed_precision,
        dataloader_config=DataLoaderConfiguration(split_batches=True),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    if multi_cpu and fsdp_requested():
        shard_on_cpu(accelerator)
    check_sharding(accelerator, tc)
    if tc.batch_size % accelerator.num_processes:
        raise ConfigError(
            "train.batch_size",
            f"{tc.batch_size} is not divisible by {accelerator.num_processes} processes",
        )
    main = accelerator.is_main_process
    if cfg.data.synthetic is not None:  # generated here, so that --no-progress covers it too
        ensure_synthetic(cfg.data.synthetic, progress=progress and main)
    # measured scales are part of the model: resolved first, so a resumed run compares them
    init_dir = init_dir_of(cfg)
    init_config = json.loads((init_dir / "config.json").read_text()) if init_dir else None
    cfg = resolve_scales(cfg, init_config)
    if init_dir is not None:  # the run records the model it trains, not one it ignores
        cfg, ignored = model_of_init(cfg, init_dir)
        if ignored and main:
            fields = ", ".join(f"model.{k}" for k in ignored)
            print(
                f"warning: train.init_from starts from {init_dir}, whose model is used as it is; "
                f"the config's {fields} differ from it and are not used",
                file=sys.stderr,
            )
    check_resumable(run, cfg)
    if (run / "done.json").is_file() and (run / "final" / "config.json").is_file():
        if main:
            print(
                f"{run} is already finished; its model is {run / 'final'} (a new --out starts over)"
            )
        return run / "final"
    accelerator.wait_for_everyone()
    if main:
        run.mkdir(parents=True, exist_ok=True)
        clean_checkpoints(run)  # leftovers of a process killed while saving or deleting one
    set_seed(tc.seed)
    model, processor = _start_model(cfg)
    configure_stage(model, tc)
    check_max_length(cfg, processor)
    cpu_bf16_attention(accelerator, model)
    model.train()
    cache = prepare_feature_cache(cfg, model, processor, accelerator, progress)
    loader, sampler = make_loader(cfg, processor, "train", shuffle=True, cache=cache)
    if loader is None:
        files = ", ".join(str(f) for f in data_files(cfg, "train"))  # named files without records
        raise ConfigError(
            "data.train",
            f"no training records{f' in {files}' if files else ''}: name records files or "
            "data.synthetic families",
        )
    val_loader, _ = (
        make_loader(cfg, processor, "val", shuffle=False, cache=cache)
        if tc.eval_every
        else (None, None)
    )
    if tc.eval_every and val_loader is None and main:
        print("warning: train.eval_every is set but data.val has no records: no val_loss is logged",
              file=sys.stderr)  # fmt: skip
    if main:  # written once the model and data are built: what a resume must match
        dump_config(cfg, run / "config.yaml")
    optimizer = _adamw(parameter_groups(model, tc), tc.lr, tc.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, tc.warmup_steps, tc.max_steps)
    if accelerator.num_processes > 1:  # trained BatchNorm: the global batch's statistics
        sync_batch_norms(model)
    if is_fsdp(accelerator):
        wrap_units(accelerator, model)
    model, optimizer, scheduler, loader = accelerator.prepare(model, optimizer, scheduler, loader)
    if val_loader is not None:
        val_loader = accelerator.prepare(val_loader)

    step, micro, state = 0, 0, {}
    ckpt = latest_checkpoint(run)
    if ckpt is not None:
        state = load_checkpoint(ckpt, model, optimizer, scheduler, accelerator)
        step, micro = int(state["step"]), int(state["micro"])
        if main:
            print(f"resuming {run} from {ckpt.name}")
    log = MetricsLog(run / "metrics.jsonl", main, start_step=step)
    batches_per_epoch = len(loader)
    trainable = [p for p in model.parameters() if p.requires_grad]
    # distinct skipped record ids (a dict keeps their order), carried over a resume
    skipped: dict[Any, None] = dict.fromkeys(state.get("skipped_ids", []))
    # training seconds of the segments before this one (up to the checkpoint resumed from)
    seconds_before = float(state.get("seconds", 0.0))
    # micro-batches in a row without an answer token: twice an epoch's worth holds one whole
    # epoch, so data that never supervises a token stops with an error instead of looping
    empty_run = 0
    warned_val = False  # a val set with nothing to score is named once, not at every evaluation

    def note_skips(group: list[dict[str, Any]]) -> None:
        new = [i for b in group for i in b["skipped_ids"] if i not in skipped]
        if accelerator.num_processes > 1:  # each process sees its part of the batch
            n_new = accelerator.reduce(
                torch.tensor(float(len(new)), device=accelerator.device), "sum"
            )
            if float(n_new):  # all processes agree, so all take part in the gather
                from accelerate.utils import gather_object

                new = [i for part in gather_object([new]) for i in part]
        skipped.update(dict.fromkeys(new))

    def batches():
        nonlocal micro
        while True:
            epoch, pos = divmod(micro, batches_per_epoch)
            it = accelerator.skip_first_batches(loader, pos) if pos else loader
            # accelerate sets the sampler's epoch from the loader's own counter when iterating
            it.set_epoch(epoch) if hasattr(it, "set_epoch") else sampler.set_epoch(epoch)
            for batch in it:
                micro += 1
                yield batch

    stream = batches()
    bar = progress_bar(progress and main, label="train", fields="loss {task.fields[loss]:.4f}")
    task = bar.add_task("train", total=tc.max_steps, completed=step, loss=float("nan"))
    with bar:  # stopped on an error too, so the error's line is not drawn over
        t_start, tokens_seen, samples_seen = time.perf_counter(), 0, 0
        while step < tc.max_steps:
            group = [next(stream) for _ in range(tc.grad_accum)]
            note_skips(group)
            n_local = torch.tensor(
                float(sum(_answer_tokens(b) for b in group)), device=accelerator.device
            )
            n_global = accelerator.reduce(n_local, "sum")
            if float(n_global) == 0:
                empty_run += len(group)
                if empty_run >= 2 * batches_per_epoch:
                    unusable = f"; {len(skipped)} record(s) skipped as unusable" if skipped else ""
                    raise DataError(
                        "data.train: a whole epoch of training data has no answer token to learn "
                        f"(every answer is missing, masked or cut off by data.max_length{unusable})"
                    )
                continue
            empty_run = 0
            norm = n_global / accelerator.num_processes  # DDP averages gradients over processes
            loss_sum = torch.zeros((), device=accelerator.device)
            for i, batch in enumerate(group):
                sync = i == len(group) - 1
                ctx = accelerator.no_sync(model) if not sync else contextlib.nullcontext()
                with ctx:
                    out = model(
                        **_model_inputs(batch, accelerator.device, cache),
                        num_items_in_batch=norm,
                        answer_logits_only=True,
                    )
                    accelerator.backward(out.loss)
                loss_sum += out.loss.detach()
                tokens_seen += int(batch["attention_mask"].sum())
                samples_seen += int(batch["input_ids"].shape[0])
            loss = float(accelerator.reduce(loss_sum, "mean"))
            if not math.isfinite(loss):
                last = latest_checkpoint(run)
                raise TrainingError(
                    f"loss is {loss} at step {step + 1}; stopped. Last good checkpoint: {last or 'none'}"
                )
            if tc.max_grad_norm:
                norm_now = accelerator.clip_grad_norm_(
                    clip_parameters(accelerator, model, trainable), tc.max_grad_norm
                )
                grad_norm = float("nan") if norm_now is None else float(norm_now)
            else:
                grad_norm = float("nan")
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            elapsed = time.perf_counter() - t_start
            row = {
                "step": step,
                "loss": loss,
                "lr": scheduler.get_last_lr()[0],
                "grad_norm": grad_norm,
                "samples_per_s": samples_seen * accelerator.num_processes / max(elapsed, 1e-9),
                "tokens_per_s": tokens_seen * accelerator.num_processes / max(elapsed, 1e-9),
                "skipped": len(skipped),
            }
            if val_loader is not None and step % tc.eval_every == 0:
                row["val_loss"] = evaluate_loss(model, val_loader, accelerator, cache)
                if math.isnan(row["val_loss"]) and main and not warned_val:
                    warned_val = True
                    print("warning: data.val: no answer token could be scored (every record "
                          "skipped as unusable or cut off by data.max_length; see the warnings "
                          "above): val_loss is nan", flush=True)  # fmt: skip
            log.write(row)
            bar.update(task, completed=step, loss=loss)
            if tc.save_every and step % tc.save_every == 0 and step < tc.max_steps:
                save_checkpoint(
                    run,
                    step,
                    model,
                    optimizer,
                    scheduler,
                    {
                        "micro": micro,
                        "skipped_ids": list(skipped),
                        "seconds": seconds_before + time.perf_counter() - t_start,
                    },
                    tc.keep_last,
                    accelerator,
                )

    accelerator.wait_for_everyone()
    final = run / "final"
    unwrapped = full_model(accelerator, model, lambda: _fresh_model(cfg))
    if main:
        plain_batch_norms(unwrapped)
        unwrapped.eval()
        if has_lora(unwrapped):
            from polyvis.train.stages import LORA_DIR

            lm = unwrapped.language_model
            lm.save_pretrained(
                final / LORA_DIR
            )  # the adapter alone; merge with `polyvis merge-lora`
            unwrapped.language_model = lm.unload()
        save_model(unwrapped, processor, final)
        dump_config(cfg, final / "polyvis.yaml")
        summary = {
            "steps": step,
            "processes": accelerator.num_processes,
            "skipped_records": len(skipped),
            # training time of all segments of a resumed run, not only the last one
            "seconds": seconds_before + time.perf_counter() - t_start,
        }
        if sharding_kind(accelerator):  # "fsdp" / "deepspeed"; DDP and one process say nothing
            summary["sharding"] = sharding_kind(accelerator)
        (run / "done.json").write_text(json.dumps(summary, indent=1))
        if skipped:
            print(f"skipped {len(skipped)} unusable record(s) (see the warnings above)")
    end_training(accelerator)
    return final
