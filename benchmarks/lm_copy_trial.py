"""Val-only trial 3 of docs/protocol.md ("What val says"): an lm-nano that can also copy text.

It trains lm-nano's recipe on the world's text plus 6000 copy lines ("<text> What does the text
say? <text>", the OCR family's strings at easy, medium and hard), 360 steps, into OUT/lm:

    python benchmarks/lm_copy_trial.py $POLYVIS_CACHE/data/synth-<world> --out /tmp/copy

The trial then runs vary alone under the fair protocol with that LM in place of lm-nano: copy
$POLYVIS_CACHE into a new cache, overwrite its experts/lm-nano-<hash>/ files with OUT/lm's,
and run `polyvis ablate` on a `val_only: true` file (the one in docs/protocol.md) with
POLYVIS_CACHE pointing at the copy. Nothing here reads a test split.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from polyvis.data.synthetic.ocr import QUESTION, random_text
from polyvis.nano.budget import FAMILIES
from polyvis.nano.lm import LmSettings, train_lm


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("world", type=Path, help="the world's data folder (data seed 0)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--lines", type=int, default=6000)
    p.add_argument("--steps", type=int, default=360)
    a = p.parse_args()
    rng = np.random.default_rng(123)
    family = a.out / "data" / "copy"
    family.mkdir(parents=True, exist_ok=True)
    with open(family / "train.jsonl", "w") as f:
        for i in range(a.lines):
            text = random_text(rng, ("easy", "medium", "hard")[i % 3])
            turn = {"from": "human", "value": f"{text} {QUESTION} {text}"}
            f.write(json.dumps({"id": f"copy-{i}", "conversations": [turn]}) + "\n")
    settings = LmSettings(families=[*FAMILIES, "copy"], steps=a.steps)
    log = train_lm([a.world, a.out / "data"], a.out / "lm", settings, eval_dirs=[a.world])
    print(f"final loss {log['final_loss']:.3f}, world val loss {log['eval']['val']['loss']:.3f}")


if __name__ == "__main__":
    main()
