"""The nano world every nano run shares: its data and experts (prepare_world), a run's config
(run_config: the experts as encoders, the nano LM, the budget), the align stage, and the
projector start and encoder scales of `protocol: none` ablations and the sensitivity arm
(nano_config, projector_init). `polyvis demo`, `polyvis ablate` and the fair protocol build on it.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from polyvis.errors import ConfigError
from polyvis.nano.budget import ADAPTER, FAMILIES, LM, QUICK_LM
from polyvis.nano.tasks import select_split


def write_corpus(data_dir: Path, out: Path) -> Path:
    """All training text (questions and answers) for the BPE tokenizer."""
    from polyvis.data.records import read_records

    lines = []
    for fam in FAMILIES:
        path = data_dir / fam / "train.jsonl"
        if path.is_file():
            for rec in read_records(path, validate=False):
                lines += [t["value"].replace("<image>", "") for t in rec["conversations"]]
    out.write_text("\n".join(lines), encoding="utf-8")
    return out


@dataclass
class World:
    """What every nano run trains and is scored on."""

    experts: dict[str, Path]
    train: list[Path]  # per family: its scored questions, the same number of records each
    test: list[Path]  # per family: every scored held-out question
    corpus: Path  # the text the runs' BPE tokenizer is trained on


def prepare_world(
    out: Path,
    budget: dict[str, Any],
    quick: bool,
    seed: int = 0,
    workers: int = 1,
    progress: bool = True,
    log: Callable[[str], Any] = lambda _: None,
    experts: tuple[str, ...] | None = None,
) -> World:
    """Synthetic data (generated once per setting into the cache), the experts (cached; default
    the vision experts clip-nano and vary-nano), the training and test selections and the
    tokenizer corpus (OUT/corpus.txt)."""
    import hashlib

    from polyvis.data.synthetic.cache import ensure_synthetic, synthetic_dir
    from polyvis.nano.experts import VISION_EXPERTS, ensure_experts

    options = {
        "families": FAMILIES, "n": budget["n"], "seed": seed, "size": 64,
        "difficulty": budget.get("difficulty", "medium"),
    }  # fmt: skip
    data_dir = synthetic_dir(options)
    if (data_dir / "manifest.json").is_file():
        log(f"[1/4] synthetic data: reusing {data_dir}")
    else:
        log(f"[1/4] generating synthetic data ({budget['n']} images per family)")
    ensure_synthetic(options, progress=progress, workers=workers)
    names = experts or VISION_EXPERTS
    log(f"[2/4] nano experts: {', '.join(names)} (cached by their settings)")
    built = ensure_experts(
        settings=expert_settings(budget), quick=quick, progress=progress, names=names
    )
    # The selection files sit beside the cached records (image paths stay relative); the name
    # says which selection it is, so runs with other selections never overwrite it.
    per_image = bool(budget.get("per_image"))
    key = json.dumps([budget["per_family"], seed, per_image])
    suffix = "nano-" + hashlib.sha1(key.encode()).hexdigest()[:8]
    out.mkdir(parents=True, exist_ok=True)
    return World(
        built,
        select_split(
            data_dir,
            FAMILIES,
            "train",
            budget["per_family"],
            seed,
            suffix=suffix,
            per_image=per_image,
        ),  # fmt: skip
        select_split(data_dir, FAMILIES, "test"),
        write_corpus(data_dir, out / "corpus.txt"),
    )


def expert_settings(budget: dict[str, Any]) -> dict[str, dict[str, Any]] | None:
    """What every expert's settings take from the world: its precision and its experts' seed
    (None at fp32 and seed 0: the defaults, and the cache entries they always had)."""
    from polyvis.nano.expert_specs import EXPERTS

    extra: dict[str, Any] = {}
    if budget.get("precision", "fp32") != "fp32":
        extra["precision"] = budget["precision"]
    if budget.get("expert_seed", 0):
        extra["seed"] = budget["expert_seed"]
    return {n: dict(extra) for n in EXPERTS} if extra else None


def nano_lm(experts: dict[str, Path], corpus: Path, budget: dict, quick: bool) -> dict[str, Any]:
    """The starting LM of every run: vary-nano's decoder (a tiny causal LM that already reads,
    as a pretrained LLM does), or with budget["lm"] == "scratch" a random one of the same shape
    with a BPE trained on the corpus."""
    if budget.get("lm", "vary-decoder") == "vary-decoder":
        decoder = Path(experts["vary-nano"]) / "decoder"
        if not (decoder / "config.json").is_file():
            raise ConfigError(
                "vary-nano.tokenizer",
                f"{decoder} is missing: the nano LM is vary-nano's decoder, saved only when it "
                "trains with tokenizer 'bpe' (the default); rebuild with `polyvis nano experts build`",
            )
        return {"path": str(decoder)}
    return {
        "config": QUICK_LM if quick else LM,
        "tokenizer": {"vocab_size": budget["vocab"], "corpus": [str(corpus)]},
    }


def run_config(
    encoders: list[str],
    fusion: str,
    experts: dict[str, Path],
    train_files: list[Path],
    corpus: Path,
    budget: dict,
    quick: bool,
    seed: int,
) -> dict[str, Any]:
    specs = {
        "clip": {"name": "clip", "path": str(experts["clip-nano"]), "layers": [-2]},
        "vary": {"name": "vary", "path": str(experts["vary-nano"]), "layers": [-1]},
    }
    if "dino-nano" in experts:
        from polyvis.nano.dino import READ_LAYERS

        specs["dino"] = {
            "name": "dino",
            "path": str(experts["dino-nano"]),
            "layers": list(READ_LAYERS),
        }
    return {
        "model": {
            "encoders": [specs[e] for e in encoders],
            "fusion": {"type": fusion},
            "adapter": dict(ADAPTER),
            "llm": nano_lm(experts, corpus, budget, quick),
        },
        "data": {
            "train": [str(p) for p in train_files],
            "val": [],
            "max_length": 256,
        },
        "train": {
            "stage": "finetune",
            "max_steps": budget["steps"] - budget.get("align_steps", 0),
            "batch_size": budget["batch_size"],
            "lr": budget["lr"],
            "lr_llm": budget.get("lr_llm"),
            "warmup_steps": max(1, budget["steps"] // 20),
            "seed": seed,
            "save_every": max(1, budget["steps"] // 4),
            "cache_features": not quick,
            **({"mixed_precision": "bf16"} if budget.get("precision") == "bf16" else {}),
        },
    }


def projector_init(config: dict[str, Any]) -> dict[str, str] | None:
    """{"init_from", "init_encoder"}: where the config's adapter can start from an expert's
    projector. That needs an LM that is the decoder saved inside one of its encoders' folders,
    beside the projector it was trained with (as vary-nano saves it), a concat-channel fusion
    without proj_dim and a linear adapter with a bias; otherwise None (a random start)."""
    from polyvis.nano.vary import PROJECTOR_FILE

    model = config.get("model", {})
    fusion, adapter = model.get("fusion") or {}, model.get("adapter") or {}
    if fusion.get("type") != "concat-channel" or fusion.get("proj_dim"):
        return None
    if adapter.get("type") != "linear" or adapter.get("bias") is False:
        return None
    lm = (model.get("llm") or {}).get("path")
    if not lm or not (Path(lm) / PROJECTOR_FILE).is_file():
        return None
    for enc in model.get("encoders", []):
        if enc.get("path") and Path(enc["path"]).resolve() == Path(lm).resolve().parent:
            return {"init_from": str(Path(lm) / PROJECTOR_FILE), "init_encoder": enc["name"]}
    return None


def nano_config(config: dict[str, Any], budget: dict[str, Any]) -> dict[str, Any]:
    """A copy of a run's config with the nano world's starts: the adapter from an expert's
    projector where it can (projector_init), and for concat-channel over 2+ encoders, encoder
    scales measured when training starts (`scales: auto` on budget["balance_images"] training
    images, relative to that expert; none when 0). Given init_from or scales are kept."""
    out = copy.deepcopy(config)
    model = out["model"]
    init = projector_init(out)
    if init and "init_from" not in model["adapter"]:
        model["adapter"] = {**model["adapter"], **init}
    fusion = model.get("fusion") or {}
    n = int(budget.get("balance_images", 0))
    multi = len(model.get("encoders") or []) >= 2
    if n and multi and fusion.get("type") == "concat-channel" and not fusion.get("scales"):
        model["fusion"] = {**fusion, "scales": "auto", "scale_images": n}
    return out


def align_stage(budget: dict[str, Any]) -> dict[str, Any] | None:
    """Config overrides of the runs' align stage (RunSpec.align): the run's own data with the LM
    frozen. None when the budget has no align steps. Its steps are part of budget["steps"], so
    every run trains the same number of steps."""
    steps = int(budget.get("align_steps", 0))
    if not steps:
        return None
    if steps >= budget["steps"]:
        raise ConfigError(
            "budget.align_steps", f"{steps} leaves no finetune steps of {budget['steps']}"
        )
    return {
        "train": {
            "max_steps": steps,
            "warmup_steps": max(1, steps // 20),
            "save_every": max(1, steps // 2),
        }
    }
