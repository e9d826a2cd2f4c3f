"""The demo: synthetic data -> train the nano-tiny model (align stage) -> answer questions.

This is the first version of the nano world (issue 6 grows it into experts, fused models and a
comparison table). Everything goes through the same code paths as real checkpoints.
"""

from __future__ import annotations

import time
from pathlib import Path

from polyvis.config import load_config

PRESET = Path(__file__).resolve().parents[3] / "configs" / "nano-tiny.yaml"


def preset_path() -> Path:
    """configs/nano-tiny.yaml from the checkout, or the copy shipped inside the package."""
    if PRESET.is_file():
        return PRESET
    return Path(__file__).resolve().parent / "presets" / "nano-tiny.yaml"


def run_demo(out: str | Path, quick: bool = False, steps: int | None = None) -> dict:
    from polyvis.data.records import read_records, record_image_paths
    from polyvis.models.build import load_model
    from polyvis.serve.chat import answer
    from polyvis.train import train

    out = Path(out)
    t0 = time.perf_counter()
    steps = steps or (20 if quick else 150)
    n = 40 if quick else 400
    cfg = load_config(
        preset_path(),
        [
            f"train.max_steps={steps}",
            "data.synthetic={families: [scene, ocr], n: %d, seed: 0, size: 64}" % n,
            f"data.synthetic.dir={out / 'data'}",
        ],
    )
    final = train(cfg, out / "run", progress=True)
    model, processor = load_model(final)
    from PIL import Image

    print("\nexample answers (held-out test images):")
    for fam in ("scene", "ocr"):
        recs = read_records(out / "data" / fam / "test.jsonl")[:2]
        for rec in recs:
            img = record_image_paths(rec, out / "data" / fam)[0]
            question = rec["conversations"][0]["value"].replace("<image>", "").strip()
            pred = answer(model, processor, Image.open(img), question, max_new_tokens=16)
            print(f"  {img}\n    Q: {question}\n    A: {pred!r}  (reference {rec['conversations'][1]['value']!r})")
    secs = time.perf_counter() - t0
    print(f"\ndemo finished in {secs:.0f} s; model: {final}")
    return {"final": str(final), "seconds": secs}
