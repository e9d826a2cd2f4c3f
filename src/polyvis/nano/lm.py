"""lm-nano: the nano world's LM, pretrained on the world's text alone (no images).

The fair protocol gives every cell this LM, so that no cell starts with an LM that already
reads one expert's features (vary-nano's decoder does). It has vary-nano's decoder's shape
(polyvis.nano.vary_model.DECODER_NANO) and its own byte-level BPE of the same size, trained on
the training split's text: every question and answer of every family, as
polyvis.nano.world.write_corpus collects it. Each line is one text followed by the end-of-text
token (answers in a run end with it too); the token stream is cut into blocks, and the model
trains as a plain causal LM on them with the experts' schedule (polyvis.nano._common). Every
random number has its fixed place, so a rebuild is the same bytes.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
from pydantic import Field

from polyvis.errors import ConfigError, DataError
from polyvis.models.load_checks import config_message, config_refusals
from polyvis.nano._common import (
    ExpertSettings,
    StepCallback,
    adamw_steps,
    parse_settings,
    torch_threads,
)
from polyvis.nano.vary_model import DECODER_NANO
from polyvis.paths import write_json_atomic


def _world_families() -> list[str]:
    from polyvis.nano.budget import FAMILIES

    return list(FAMILIES)


class LmSettings(ExpertSettings):
    """Everything that decides lm-nano (the experts cache hashes these)."""

    families: list[str] = Field(default_factory=_world_families)
    decoder: dict[str, Any] = Field(default_factory=lambda: dict(DECODER_NANO))
    # vary-nano's decoder's vocabulary size: 3 merges, in effect characters, so that the LM
    # differs from vary-nano's decoder in what it learnt, not in how it spells
    bpe_vocab_size: int = Field(default=262, gt=260)
    block: int = Field(default=128, gt=1)  # tokens per training sequence
    steps: int = Field(default=240, gt=0)
    batch_size: int = Field(default=32, gt=0)
    lr: float = Field(default=2e-3, gt=0)
    weight_decay: float = Field(default=0.01, ge=0)
    warmup: float = Field(default=0.05, ge=0, lt=1)
    eval_blocks: int = Field(default=64, ge=0)  # held-out (val split) blocks measured at the end
    seed: int = 0
    threads: int = Field(default=1, ge=1)


def text_lines(data_dir: Path, families: list[str], split: str = "train") -> list[str]:
    """Every conversation turn of the families' records in one split, image markers removed
    (for the train split, the lines of polyvis.nano.world.write_corpus)."""
    from polyvis.data.records import read_records

    lines = []
    for fam in families:
        path = Path(data_dir) / fam / f"{split}.jsonl"
        if path.is_file():
            for rec in read_records(path, validate=False):
                lines += [t["value"].replace("<image>", "") for t in rec["conversations"]]
    return lines


def _blocks(tokenizer: Any, lines: list[str], block: int) -> torch.Tensor:
    """(n, block) token ids: each line's tokens then end-of-text, in order; the tail dropped."""
    ids: list[int] = []
    for enc in tokenizer(lines, add_special_tokens=False)["input_ids"]:
        ids += [*enc, tokenizer.eos_token_id]
    n = len(ids) // block
    return torch.tensor(ids[: n * block], dtype=torch.long).view(n, block)


def _build(s: LmSettings, tokenizer: Any) -> Any:
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = dict(s.decoder)
    cfg.update(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    try:
        return AutoModelForCausalLM.from_config(AutoConfig.for_model(cfg.pop("model_type"), **cfg))
    except config_refusals() as err:  # one line naming the setting, not a traceback
        raise ConfigError("decoder", config_message(err)) from None


@torch.no_grad()
def _held_out(model: Any, blocks: torch.Tensor, batch_size: int) -> dict[str, float]:
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(blocks), batch_size):
        x = blocks[i : i + batch_size]
        n = x.numel() - len(x)  # predicted tokens
        total += float(model(input_ids=x, labels=x).loss) * n
        count += n
    model.train()
    loss = total / max(1, count)
    return {"loss": loss, "perplexity": math.exp(loss), "tokens": count}


def train_lm(
    data_dirs: list[str | Path],
    out: str | Path,
    settings: LmSettings | dict | None = None,
    progress: bool = True,
    callback: StepCallback | None = None,
    eval_dirs: list[str | Path] | None = None,
) -> dict[str, Any]:
    """Train lm-nano on the text of `data_dirs`' training splits and save it (model and tokenizer,
    loadable as `llm: {path: OUT}`) with OUT/training_log.json; returns the log. The held-out
    measurement reads the val split of `eval_dirs` (default: the data dirs)."""
    from polyvis.models.tokenizer import train_bpe_tokenizer

    s = settings if isinstance(settings, LmSettings) else parse_settings(LmSettings, settings)
    dirs, out = [Path(d) for d in data_dirs], Path(out)
    held = [Path(d) for d in eval_dirs] if eval_dirs is not None else dirs
    t0 = time.perf_counter()
    with torch_threads(s.threads):
        lines = [line for d in dirs for line in text_lines(d, s.families)]
        if not lines:
            where = ", ".join(str(d) for d in dirs)
            raise DataError(f"{where}: no training text of {','.join(s.families)} found")
        tokenizer = train_bpe_tokenizer(lines, s.bpe_vocab_size)
        train = _blocks(tokenizer, lines, s.block)
        val_lines = [line for d in held for line in text_lines(d, s.families, "val")]
        val = _blocks(tokenizer, val_lines, s.block)[: s.eval_blocks]
        torch.manual_seed(s.seed)
        model = _build(s, tokenizer)
        model.train()
        t_train = time.perf_counter()
        curve = _fit(model, train, s, progress, callback)
        train_secs = time.perf_counter() - t_train
        evals = {"val": _held_out(model, val, s.batch_size)} if len(val) else {}
        out.mkdir(parents=True, exist_ok=True)
        model.eval()
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
    log = {
        "expert": "lm-nano",
        "settings": s.model_dump(),
        "data": [str(d) for d in dirs],
        "train_lines": len(lines),
        "train_tokens": int(train.numel()),
        "tokens_seen": s.steps * min(s.batch_size, len(train)) * s.block,
        "params": {"lm": sum(p.numel() for p in model.parameters())},
        "final_loss": sum(curve[-20:]) / len(curve[-20:]),
        "train_seconds": train_secs,
        "total_seconds": time.perf_counter() - t0,
        "eval": evals,
        "loss_curve": curve,
    }
    write_json_atomic(out / "training_log.json", log)
    return log


def _fit(
    model: Any,
    blocks: torch.Tensor,
    s: LmSettings,
    progress: bool,
    callback: StepCallback | None,
) -> list[float]:
    """The experts' optimizer loop (polyvis.nano._common.adamw_steps) over blocks of text."""
    if not len(blocks):
        raise DataError(f"the training text is shorter than one block of {s.block} tokens")

    def step_loss(idx: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        x = blocks[idx]
        return model(input_ids=x, labels=x).loss, {}

    return adamw_steps(model, len(blocks), s, "lm-nano", step_loss, progress, callback)["loss"]
