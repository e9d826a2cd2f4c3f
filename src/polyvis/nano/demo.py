"""`polyvis demo`: the founding research question in miniature, on a CPU, offline.

1. Synthetic data for the six families (scene, ocr, latex, chart, table, mixed).
2. The nano experts (clip-nano: contrastive on scene captions; vary-nano: Vary-tiny on documents),
   cached by their settings, saved with save_pretrained and loaded by path like real checkpoints.
3. Models with the same budget: clip-nano alone, vary-nano alone, and both mixed (omnifusion and
   concat-channel). Every run starts from the same tiny LM, vary-nano's decoder: as a real
   recipe starts from a pretrained LLM that can spell, so that the runs' few thousand samples
   per family go to the adapter and the questions, not to learning to read from nothing.
4. Held-out evaluation per family; DIR/results.json, results.md and results.png side by side.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from polyvis.errors import ConfigError
from polyvis.nano.runs import RunSpec, evaluate_run, family_scores, train_runs
from polyvis.nano.start import expert_start
from polyvis.nano.tasks import select_split

FAMILIES = ["scene", "ocr", "latex", "chart", "table", "mixed"]

LM = {
    "model_type": "qwen2", "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 4,
    "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512,
    "tie_word_embeddings": True,
}  # fmt: skip
QUICK_LM = {**LM, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
            "num_key_value_heads": 1}  # fmt: skip

# One linear map, as LLaVA-1 (and Vary) project: the runs with vary-nano and concat-channel
# start it from vary-nano's own projector (polyvis.nano.start), so the LM, vary-nano's decoder,
# reads from the first step. Concat-channel then kept vary-nano's OCR (40 vs 43 alone; with a
# fresh 512-wide MLP 25 vs 31, with LLaVA-1.5's 128-wide one 19 vs 35; docs/nano.md).
ADAPTER = {"type": "linear"}

# name, encoders, fusion
RUNS = [
    ("clip-nano", ["clip"], "concat-channel"),
    ("vary-nano", ["vary"], "concat-channel"),
    ("clip+vary omnifusion", ["clip", "vary"], "omnifusion"),
    ("clip+vary concat-channel", ["clip", "vary"], "concat-channel"),
]

# Batch 8: at the same number of samples, 2400 steps of 8 taught a run to read OCR (16.7 exact)
# where 600 steps of 32 did not (1.3), and smaller batches pad less (docs/nano.md). 1000 steps
# keep a second run (experts cached) near 6 minutes on 2 cores. The LM (vary-nano's decoder,
# which already reads) trains at a quarter of the adapter's rate: at the adapter's rate it
# forgot how to read before the adapter had learnt to feed it (OCR 0 vs 30 exact, docs/nano.md).
BUDGET = {
    "n": 1500,
    "per_family": 1500,
    "steps": 1000,
    "batch_size": 8,
    "lr": 2e-3,
    "lr_llm": 5e-4,
    "eval_limit": 400,
    "vocab": 1024,
    # One large sign (at 3 signs per 64 px image the words were too small for vary-nano to read)
    # and 2 x 2 tables (larger text than medium's 3 x 3), as vary-nano pretrains on.
    "difficulty": {"mixed": "easy", "table": "easy"},
    # No align stage (LM frozen) first: with a fresh adapter it kept the mixed model reading
    # (OCR 19 vs 5), but the start from vary-nano's projector does that job better (docs/nano.md).
    # `polyvis demo` and the ablations still train one when this is set.
    "align_steps": 0,
    # concat-channel runs scale each encoder's features to the RMS of the one whose projector
    # they start from (polyvis.nano.balance), measured on this many training images: unscaled,
    # clip-nano's 1.8x larger features cost the mixed model part of vary-nano's reading
    # (mean 36.2 vs 37.0 scaled, over 3 seeds, docs/nano.md item 7).
    "balance_images": 64,
}
QUICK_BUDGET = {
    "n": 12,
    "per_family": 16,
    "steps": 6,
    "batch_size": 8,
    "lr": 3e-3,
    "lr_llm": 3e-3,
    "eval_limit": 4,
    "vocab": 400,
    "align_steps": 2,
    "balance_images": 4,
}


def _slug(name: str) -> str:
    return name.replace("+", "-").replace(" ", "-")


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
) -> World:
    """Synthetic data (generated once per setting into the cache), the experts (cached), the
    training and test selections and the tokenizer corpus (OUT/corpus.txt)."""
    import hashlib

    from polyvis.data.synthetic.cache import ensure_synthetic, synthetic_dir
    from polyvis.nano.experts import ensure_experts

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
    log("[2/4] nano experts (cached by their settings)")
    experts = ensure_experts(quick=quick, progress=progress)
    # The selection files sit beside the cached records (image paths stay relative); the name
    # says which selection it is, so runs with other selections never overwrite it.
    per_image = bool(budget.get("per_image"))
    key = json.dumps([budget["per_family"], seed, per_image])
    suffix = "nano-" + hashlib.sha1(key.encode()).hexdigest()[:8]
    out.mkdir(parents=True, exist_ok=True)
    return World(
        experts,
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
                "trains with tokenizer 'bpe' (the default); rebuild with `polyvis experts build`",
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
        },
    }


def balance_images(world: World, budget: dict[str, Any]) -> list[Path]:
    """The training images the runs' encoder scales are measured on ([] when not balancing)."""
    from polyvis.nano.balance import sample_images

    n = int(budget.get("balance_images", 0))
    return sample_images(world.train, n) if n else []


def finish_config(cfg: dict[str, Any], images: list[Path]) -> tuple[dict[str, Any], dict | None]:
    """A run's config with its encoder scales (when `images` are given), and its projector
    start (polyvis.nano.start); the scales are relative to the encoder the start is for."""
    from polyvis.nano.balance import balanced

    start = expert_start(cfg)
    if images:
        cfg = balanced(cfg, images, start["encoder"] if start else None)
    return cfg, start


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


def run_demo(
    out: str | Path,
    quick: bool = False,
    steps: int | None = None,
    jobs: int = 2,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    from polyvis.eval.report import compare_table, plot_compare

    out = Path(out)
    start = time.perf_counter()
    budget = dict(QUICK_BUDGET if quick else BUDGET)
    if steps:  # the align stage keeps its share of the steps
        budget["align_steps"] = budget.get("align_steps", 0) * steps // budget["steps"]
        budget["steps"] = steps
    world = prepare_world(out, budget, quick, seed, jobs, progress, log=print)
    images = balance_images(world, budget)
    specs = []
    for name, encoders, fusion in RUNS:
        cfg, expert = finish_config(
            run_config(
                encoders, fusion, world.experts, world.train, world.corpus, budget, quick, seed
            ),
            images,
        )
        specs.append(
            RunSpec(
                name,
                cfg,
                out / "runs" / _slug(name),
                world.test,
                budget["eval_limit"],
                {
                    "encoders": [f"{e}-nano" for e in encoders],
                    "fusion": fusion,
                    "adapter": ADAPTER["type"],
                },
                align=align_stage(budget),
                start=expert,
            )
        )
    print(
        f"[3/4] training {len(specs)} models, {budget['steps']} steps each, {jobs} at a time, "
        "each scored on the held-out test sets when it is trained"
    )
    seconds = train_runs(
        specs,
        jobs=jobs,
        on_done=lambda s, t: print(f"      {s.name}: trained and scored in {t:.0f} s"),
    )
    print("[4/4] results")
    runs = []
    for spec in specs:
        res = evaluate_run(spec)
        scores = family_scores(res)
        runs.append(
            {
                "name": spec.name,
                **spec.meta,
                "scores": scores,
                "mean": sum(scores.values()) / max(1, len(scores)),
                "train_seconds": seconds.get(spec.name, 0.0),
            }
        )
    results = {
        "runs": runs,
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, {_cpus()} cores",
        "seconds": time.perf_counter() - start,
        "budget": budget,
        "quick": quick,
    }
    (out / "results.json").write_text(json.dumps(results, indent=1))
    as_results = [
        {"name": r["name"], "scores": {k: v / 100 for k, v in r["scores"].items()}} for r in runs
    ]
    table = compare_table([r["name"] for r in runs], as_results)
    (out / "results.md").write_text(_markdown(results, table), encoding="utf-8")
    plot_compare([r["name"] for r in runs], as_results, out / "results.png")
    print("\n" + table)
    _print_examples(specs)
    print(
        f"\nresults: {out / 'results.md'}, {out / 'results.png'}; {results['seconds']:.0f} s in all"
    )
    return results


def _cpus() -> int:
    import os

    return os.cpu_count() or 1


def _markdown(results: dict[str, Any], table: str) -> str:
    b = results["budget"]
    return (
        "# polyvis demo: which encoders, mixed how?\n\n"
        f"Same budget for every model: {b['steps']} steps of batch {b['batch_size']}, "
        f"{b['n']} synthetic images per family. Scores are per family on held-out test records "
        "(exact match, edit similarity, relaxed accuracy or ANLS by family), 0-1.\n\n"
        f"{table}\n\nMachine: {results['machine']}; {results['seconds']:.0f} s in all.\n"
    )


def _print_examples(specs: list[RunSpec], per_run: int = 2) -> None:
    print("\nexample answers:")
    for spec in specs:
        path = spec.out / "eval" / "answers.jsonl"
        if not path.is_file():
            continue
        rows = [json.loads(line) for line in path.read_text().splitlines()[:per_run]]
        for row in rows:
            print(
                f"  [{spec.name}] {row.get('image', row['id'])}: {row['question'][:60]!r} -> {row['prediction'][:40]!r} (ref {row['reference'][:40]!r})"
            )
