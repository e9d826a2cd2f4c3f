"""Val-only pilot of docs/protocol.md ("A neutral LM that reads?"): can lm-nano learn to read image
tokens from a front end that is no expert's, so that its LM could serve every cell alike?

The reader is a Fuyu-style model: a random-init ViT patch embedding (64 px, patch 8, read at
`layers: [0]`, trained), the leaderboard's MLP adapter and lm-nano, everything trained together
(rate 1e-3 for all) on the world's training split for 4000 steps of batch 8, then scored on the
val split as the protocol scores a cell (150 questions per family, greedy, 48 new tokens):

    python benchmarks/reader_pilot.py RUN/config.yaml --out runs/reader-pilot

RUN is any fair-protocol run of the world (the demo's `cells/vary/lr-0.001/seed-0`, say): its
config gives the data files and lm-nano's path. Nothing here reads a test split.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import yaml

PATCHES = {
    "name": "patches",
    "config": {
        "model_type": "clip_vision_model",
        "hidden_size": 128,
        "intermediate_size": 512,
        "num_hidden_layers": 1,
        "num_attention_heads": 4,
        "image_size": 64,
        "patch_size": 8,
    },  # fmt: skip
    "layers": [0],  # the patch embedding (and position embedding), before any layer
    "image_size": 64,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
}


def reader_config(run_config: Path, steps: int) -> dict:
    cfg = yaml.safe_load(run_config.read_text())
    cfg["model"].update(encoders=[PATCHES], fusion={"type": "concat-channel"},
                        adapter={"type": "mlp", "depth": 2})  # fmt: skip
    train = cfg["train"]
    train.pop("init_from", None)
    train.update(stage="finetune", max_steps=steps, lr=1e-3, lr_llm=1e-3, warmup_steps=100,
                 unfreeze_encoders=True, cache_features=False, save_every=500, keep_last=1)  # fmt: skip
    return cfg


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_config", type=Path, help="a fair-protocol run's config.yaml")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, default=4000)
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    cfg = reader_config(a.run_config, a.steps)
    (a.out / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    val = [str(Path(f).parent / "val.nano.jsonl") for f in cfg["data"]["train"]]
    polyvis = [sys.executable, "-m", "polyvis"]
    subprocess.run([*polyvis, "train", str(a.out / "config.yaml"), "--out", str(a.out / "run")],
                   check=True)  # fmt: skip
    subprocess.run([*polyvis, "eval", str(a.out / "run"), "--data", *val, "--limit", "150",
                    "--batch-size", "32", "--max-new-tokens", "48", "--device", "cpu",
                    "--no-progress", "--out", str(a.out / "val")], check=True)  # fmt: skip


if __name__ == "__main__":
    main()
