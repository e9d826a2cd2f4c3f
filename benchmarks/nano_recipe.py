"""One nano-world training run with recipe knobs the demo fixes: families, batch, steps, lr,
the starting LM, adapter, data. Prints per-family scores (points) and the time taken.

    python benchmarks/nano_recipe.py --name ocr-b8 --encoders vary --families ocr \
        --steps 800 --out /tmp/nano-recipe
    python benchmarks/nano_recipe.py --name scratch --lm scratch --vocab 1024 --steps 1600

The data (`--n` images per family, `--difficulty`) and the experts are made once in
$POLYVIS_CACHE and reused; each run trains in OUT/runs/NAME with the feature cache, one thread, and is scored on
the held-out scored questions (at most --eval-limit per family): the old demo's recipe trials
(docs/demo.md, "What the old demo taught"), whose test-split figures are withdrawn; use the val
split (select_split(..., "val")) for new choices.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from polyvis.nano import budget as nano_budget
from polyvis.nano import world as nano_world
from polyvis.nano.runs import RunSpec, family_scores, read_results, train_runs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--name", required=True)
    p.add_argument("--out", default="/tmp/nano-recipe")
    p.add_argument("--encoders", default="clip,vary", help="clip, vary or clip,vary")
    p.add_argument("--fusion", default="concat-channel")
    p.add_argument("--adapter", default=json.dumps(nano_budget.ADAPTER), help="JSON")
    p.add_argument("--families", default=",".join(nano_budget.FAMILIES))
    p.add_argument("--n", type=int, default=nano_budget.BUDGET["n"])
    p.add_argument("--per-family", type=int, default=nano_budget.BUDGET["per_family"])
    p.add_argument("--steps", type=int, default=nano_budget.BUDGET["steps"])
    p.add_argument("--batch-size", type=int, default=nano_budget.BUDGET["batch_size"])
    p.add_argument("--lr", type=float, default=nano_budget.BUDGET["lr"])
    p.add_argument("--vocab", type=int, default=nano_budget.BUDGET["vocab"])
    p.add_argument(
        "--lm", default=None,
        help="'scratch' (a random LM, BPE of --vocab), or a causal-LM dir (with its tokenizer); "
        "default: the demo's (vary-nano's decoder)",
    )  # fmt: skip
    p.add_argument("--eval-limit", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=JSON",
        help="override a config field, e.g. train.lr_llm=2e-3 (repeatable)",
    )  # fmt: skip
    p.add_argument(
        "--difficulty", default=None,
        help='JSON: "easy" or {"ocr": "easy"} (default: the demo\'s)',
    )  # fmt: skip
    p.add_argument("--per-image", action="store_true", help="one multi-turn record per image")
    p.add_argument(
        "--align-steps", type=int, default=None,
        help="steps of an align stage (LLM frozen) within --steps (default: the demo's)",
    )  # fmt: skip
    p.add_argument(
        "--no-start", action="store_true",
        help="a fresh adapter even where it could start from vary-nano's projector",
    )  # fmt: skip
    a = p.parse_args()

    out = Path(a.out)
    budget = dict(nano_budget.BUDGET, n=a.n, per_family=a.per_family, steps=a.steps, lr=a.lr)
    budget.update(batch_size=a.batch_size, vocab=a.vocab, per_image=a.per_image)
    if a.align_steps is not None:
        budget["align_steps"] = a.align_steps
    if a.difficulty is not None:
        budget["difficulty"] = json.loads(a.difficulty)
    if a.lm == "scratch":
        budget["lm"] = "scratch"
    world = nano_world.prepare_world(out, budget, quick=False, seed=0, workers=2, progress=False)
    families = a.families.split(",")
    pick = [i for i, f in enumerate(nano_budget.FAMILIES) if f in families]
    cfg = nano_world.run_config(
        a.encoders.split(","), a.fusion, world.experts, [world.train[i] for i in pick],
        world.corpus, budget, False, a.seed,
    )  # fmt: skip
    cfg["model"]["adapter"] = json.loads(a.adapter)
    for item in a.set:
        key, _, value = item.partition("=")
        *parents, last = key.split(".")
        node = cfg
        for k in parents:
            node = node.setdefault(k, {})
        node[last] = json.loads(value)
    if a.lm and a.lm != "scratch":
        cfg["model"]["llm"] = {"path": a.lm}
    init = nano_world.projector_init(cfg)
    if init and not a.no_start:
        cfg["model"]["adapter"] = {**cfg["model"]["adapter"], **init}
    spec = RunSpec.build(
        a.name, cfg, out / "runs" / a.name, [world.test[i] for i in pick], a.eval_limit,
        align=nano_world.align_stage(budget),
    )  # fmt: skip
    t0 = time.perf_counter()
    train_runs([spec], jobs=1)
    t1 = time.perf_counter()
    scores = family_scores(read_results(spec))
    t2 = time.perf_counter()
    mean = sum(scores.values()) / max(1, len(scores))
    print("| run | " + " | ".join(scores) + " | mean | train s | eval s |")
    print("|---|" + "---:|" * (len(scores) + 3))
    cells = " | ".join(f"{v:.1f}" for v in scores.values())
    print(f"| {a.name} | {cells} | {mean:.1f} | {t1 - t0:.0f} | {t2 - t1:.0f} |")


if __name__ == "__main__":
    main()
