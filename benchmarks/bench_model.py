"""Speed of a polyvis model against transformers' LLaVA of the same sizes, and the cost of fusion.

1. A single-encoder polyvis model (CLIP vision tower, layer -2, concat-channel, 2-layer GELU MLP
   adapter, Qwen2 LM) and a LlavaForConditionalGeneration built from the same vision and text
   configs (its projector is the same MLP): the time of one training step (forward + backward +
   AdamW step; encoders frozen, projector and LM trained) and greedy generation tokens/s.
2. For every fusion method: the step time with 2 and 3 encoders (+ DINOv2, + SigLIP) relative to
   1 encoder (CLIP), same adapter and LM.

Calls are timed in turns (A B A B ...) and both wall-clock and process CPU time are reported;
ratios use CPU time, which other jobs on a shared machine hardly disturb. Results and how to
read them: docs/performance.md ("Model").

Random weights, CPU, no download:

    .venv/bin/python benchmarks/bench_model.py            # prints markdown tables
    .venv/bin/python benchmarks/bench_model.py --quick    # fewer repetitions (smoke test)
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import date

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Idle OpenMP threads sleep instead of spinning, so CPU time counts work, not waiting.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch
from transformers import LlavaConfig, LlavaForConditionalGeneration
from transformers.utils import logging as hf_logging

from polyvis.config import load_config
from polyvis.models.build import build_model
from polyvis.models.fusion import FUSIONS

HIDDEN, LAYERS, HEADS, FFN = 256, 4, 4, 1024
IMAGE, PATCH = 224, 16
VOCAB = 1024
BATCH, TEXT = 4, 32  # training: 4 samples of 32 text tokens + the image tokens
NEW_TOKENS = 32  # generation: greedy, batch 1

CLIP = {
    "model_type": "clip_vision_model",
    "hidden_size": HIDDEN,
    "intermediate_size": FFN,
    "num_hidden_layers": LAYERS,
    "num_attention_heads": HEADS,
    "image_size": IMAGE,
    "patch_size": PATCH,
}
DINO = {  # a different width and grid: 224 / 14 = 16 x 16
    "model_type": "dinov2",
    "hidden_size": 192,
    "intermediate_size": 768,
    "num_hidden_layers": LAYERS,
    "num_attention_heads": HEADS,
    "image_size": IMAGE,
    "patch_size": 14,
}
SIGLIP = {**CLIP, "model_type": "siglip_vision_model"}
LLM = {
    "model_type": "qwen2",
    "hidden_size": HIDDEN,
    "intermediate_size": FFN,
    "num_hidden_layers": LAYERS,
    "num_attention_heads": HEADS,
    "num_key_value_heads": 2,
    "max_position_embeddings": 2048,
    "vocab_size": VOCAB,
}
ENCODERS = [("clip", CLIP, [-2]), ("dino", DINO, [-2]), ("siglip", SIGLIP, [-2])]


def polyvis_config(num_encoders: int, fusion: dict) -> dict:
    return {
        "model": {
            "encoders": [
                {"name": n, "config": c, "layers": ly} for n, c, ly in ENCODERS[:num_encoders]
            ],
            "fusion": fusion,
            "adapter": {"type": "mlp", "depth": 2},
            "llm": {"config": LLM, "tokenizer": {"vocab_size": 600}},
        }
    }


def build_polyvis(num_encoders: int = 1, fusion: dict | None = None):
    torch.manual_seed(0)
    model, _ = build_model(
        load_config(polyvis_config(num_encoders, fusion or {"type": "concat-channel"}))
    )
    model.set_trainable(encoders=False, projector=True, llm=True)
    return model


def build_llava() -> LlavaForConditionalGeneration:
    torch.manual_seed(0)
    vision = {k: v for k, v in CLIP.items() if k != "model_type"}
    config = LlavaConfig(
        vision_config={"model_type": "clip_vision_model", **vision},
        text_config=LLM,
        image_token_index=VOCAB - 1,
        image_seq_length=(IMAGE // PATCH) ** 2,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    model = LlavaForConditionalGeneration(config)
    model.model.vision_tower.requires_grad_(False)
    return model


def polyvis_inputs(model, batch: int, with_labels: bool) -> dict:
    """[text, <img_start>, M x <image>, <img_end>, text] per sample, random text ids."""
    cfg, m = model.config, model.image_seq_length
    g = torch.Generator().manual_seed(0)
    half = torch.randint(3, 300, (batch, TEXT // 2), generator=g)
    img = torch.tensor(
        [cfg.image_start_token_id] + [cfg.image_token_id] * m + [cfg.image_end_token_id]
    )
    ids = torch.cat([half, img.expand(batch, -1), half.flip(1)], dim=1)
    k = len(model.encoders)
    pixels = torch.randn(batch, k, 3, IMAGE, IMAGE, generator=g)
    out = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": pixels}
    if with_labels:
        labels = ids.clone()
        labels[:, : -TEXT // 2] = -100  # the answer: the text after the image
        out["labels"] = labels
    return out


def llava_inputs(model, batch: int, with_labels: bool) -> dict:
    cfg = model.config
    g = torch.Generator().manual_seed(0)
    half = torch.randint(3, 300, (batch, TEXT // 2), generator=g)
    img = torch.full((batch, cfg.image_seq_length), cfg.image_token_index)
    ids = torch.cat([half, img, half.flip(1)], dim=1)
    out = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "pixel_values": torch.randn(batch, 3, IMAGE, IMAGE, generator=g),
    }
    if with_labels:
        labels = ids.clone()
        labels[:, : -TEXT // 2] = -100
        out["labels"] = labels
    return out


def interleaved_medians(
    fns: dict[str, Callable[[], object]], repeats: int, warmup: int
) -> dict[str, tuple[float, float]]:
    """(wall, CPU) median seconds per call of each function, the calls taken in turns
    (A B C A B C ...) so that other load on a shared machine falls on all of them alike.

    CPU time is this process's (all threads): it hardly moves when other processes compete for
    the cores, while wall time does, so ratios are taken from CPU time.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            cpu[key].append(time.process_time() - c0)
            wall[key].append(time.perf_counter() - t0)
    return {k: (statistics.median(wall[k]), statistics.median(cpu[k])) for k in fns}


def train_step(model, inputs: dict) -> Callable[[], None]:
    """One training step (forward + backward + AdamW step) of the trainable parameters."""
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step() -> None:
        loss = model(**inputs).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def greedy_generate(model, inputs: dict) -> Callable[[], None]:
    """Greedy generation of exactly NEW_TOKENS tokens with the KV cache."""
    model.eval()

    @torch.no_grad()
    def run() -> None:
        out = model.generate(
            **inputs,
            max_new_tokens=NEW_TOKENS,
            min_new_tokens=NEW_TOKENS,
            do_sample=False,
            use_cache=True,
            pad_token_id=0,
            eos_token_id=2,  # the same stopping rule and logits processors for both models
        )
        assert out.shape[1] == inputs["input_ids"].shape[1] + NEW_TOKENS

    return run


def n_params(model, trainable: bool = False) -> float:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable) / 1e6


def compare_with_llava(steps: int, gen_repeats: int) -> list[str]:
    pv, lv = build_polyvis(1), build_llava()
    step = interleaved_medians(
        {
            "pv": train_step(pv, polyvis_inputs(pv, BATCH, True)),
            "lv": train_step(lv, llava_inputs(lv, BATCH, True)),
        },
        steps,
        warmup=2,
    )
    gen = interleaved_medians(
        {
            "pv": greedy_generate(pv, polyvis_inputs(pv, 1, False)),
            "lv": greedy_generate(lv, llava_inputs(lv, 1, False)),
        },
        gen_repeats,
        warmup=1,
    )
    (pw, pc), (lw, lc) = step["pv"], step["lv"]
    (gpw, gpc), (glw, glc) = gen["pv"], gen["lv"]
    n = NEW_TOKENS
    return [
        "| measure | polyvis | LLaVA (transformers) | polyvis / LLaVA |",
        "|---|---:|---:|---:|",
        f"| parameters (M): all, trainable | {n_params(pv):.2f}, {n_params(pv, True):.2f} | "
        f"{n_params(lv):.2f}, {n_params(lv, True):.2f} | |",
        f"| visual tokens per image | {pv.image_seq_length} + 2 | {lv.config.image_seq_length} | |",
        f"| training step, CPU time (ms, median of {steps}) | {pc * 1e3:.0f} | {lc * 1e3:.0f} | {pc / lc:.2f} |",
        f"| training step, wall (ms, median of {steps}) | {pw * 1e3:.0f} | {lw * 1e3:.0f} | {pw / lw:.2f} |",
        f"| greedy generation, CPU ms per token ({n} new, median of {gen_repeats}) | "
        f"{gpc / n * 1e3:.1f} | {glc / n * 1e3:.1f} | {gpc / glc:.2f} |",
        f"| greedy generation, wall tokens/s | {n / gpw:.1f} | {n / glw:.1f} | {glw / gpw:.2f} |",
    ]


def fusion_costs(steps: int) -> list[str]:
    rows = [
        "| fusion | 1 encoder: step CPU time (ms) | 2 encoders / 1 | 3 encoders / 1 "
        "| visual tokens (1 / 2 / 3 encoders) |",
        "|---|---:|---:|---:|---|",
    ]
    for name in FUSIONS.names():
        models = {k: build_polyvis(k, {"type": name}) for k in (1, 2, 3)}
        times = interleaved_medians(
            {k: train_step(m, polyvis_inputs(m, BATCH, True)) for k, m in models.items()},
            steps,
            warmup=1,
        )
        tokens = " / ".join(str(m.image_seq_length) for m in models.values())
        cpu = {k: c for k, (_, c) in times.items()}
        rows.append(
            f"| {name} | {cpu[1] * 1e3:.0f} | {cpu[2] / cpu[1]:.2f} | {cpu[3] / cpu[1]:.2f} | {tokens} |"
        )
        del models
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=9, help="timed training steps (median)")
    parser.add_argument("--fusion-steps", type=int, default=3, help="timed steps per fusion model")
    parser.add_argument("--gen-repeats", type=int, default=5, help="timed generate calls (median)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="1 repetition each (smoke test)")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps = args.fusion_steps = args.gen_repeats = 1
    torch.set_num_threads(args.threads)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    print(
        f"# bench_model: {date.today()}, {platform.processor() or platform.machine()}, "
        f"torch {torch.__version__}, {args.threads} threads"
    )
    print(
        f"# sizes: hidden {HIDDEN}, {LAYERS} layers (vision and LM), {IMAGE} px / patch {PATCH}, "
        f"batch {BATCH} x ({TEXT} text + image tokens)\n"
    )
    print("\n".join(compare_with_llava(args.steps, args.gen_repeats)))
    print()
    print("\n".join(fusion_costs(args.fusion_steps)))
    load = os.getloadavg()[0]
    print(
        f"\n# total {time.perf_counter() - t0:.0f} s; load average {load0:.1f} at start, {load:.1f} at end"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
