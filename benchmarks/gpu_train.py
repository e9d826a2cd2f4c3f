"""Training-step speed on one CUDA GPU at real sizes: Qwen2-0.5B + CLIP-L/14-336 + DINOv2-L/14.

The three are randomly initialised from their configs (no download), fused by OmniFusion's
projection & summation into a 2-layer MLP adapter, as configs/qwen2-0.5b-clip-dinov2.yaml does
with the real checkpoints. One step = forward + backward + AdamW on a batch of random samples
(text tokens + 578 visual tokens each; encoders frozen). Reports step time, tokens/s, peak GPU
memory and MFU: the step's FLOPs (counted by torch.utils.flop_counter, so frozen parts cost only
what they really compute) per second over the GPU's dense bf16 peak (--peak-tflops; H100 SXM:
989). Attention is flash-attention 2 where the flash_attn package is installed (and a model
supports it), else PyTorch's SDPA (--attn picks one).

    python benchmarks/gpu_train.py                         # finetune stage, bf16 autocast
    python benchmarks/gpu_train.py --stage align --cached-features   # align with the feature cache
    python benchmarks/gpu_train.py --dry-run --tiny        # check the script on a CPU (tiny shapes)
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

QWEN2_0_5B = {
    "model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
    "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936,
    "max_position_embeddings": 32768, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
}  # fmt: skip
CLIP_L_336 = {
    "model_type": "clip_vision_model", "hidden_size": 1024, "intermediate_size": 4096,
    "num_hidden_layers": 24, "num_attention_heads": 16, "image_size": 336, "patch_size": 14,
    "hidden_act": "quick_gelu", "projection_dim": 768,
}  # fmt: skip
DINOV2_L = {
    "model_type": "dinov2", "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
    "mlp_ratio": 4, "image_size": 518, "patch_size": 14, "layerscale_value": 1.0,
}  # fmt: skip
# The same structure at nano-tiny widths, for --tiny.
TINY = {
    "llm": {"model_type": "qwen2", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1024,
            "max_position_embeddings": 2048, "tie_word_embeddings": True},
    "clip": {"model_type": "clip_vision_model", "hidden_size": 64, "intermediate_size": 128,
             "num_hidden_layers": 3, "num_attention_heads": 2, "image_size": 56, "patch_size": 14},
    "dino": {"model_type": "dinov2", "hidden_size": 48, "num_hidden_layers": 3, "num_attention_heads": 2,
             "mlp_ratio": 2, "image_size": 98, "patch_size": 14},
}  # fmt: skip


def polyvis_config(tiny: bool) -> dict[str, Any]:
    llm, clip, dino = (
        (TINY["llm"], TINY["clip"], TINY["dino"]) if tiny else (QWEN2_0_5B, CLIP_L_336, DINOV2_L)
    )
    size = clip["image_size"]  # DINOv2 at CLIP's size: the same patch grid (positions interpolated)
    return {
        "model": {
            "encoders": [
                {"name": "clip", "config": clip, "layers": [-2]},
                {"name": "dinov2", "config": dino, "layers": [-2], "image_size": size},
            ],
            "fusion": {"type": "omnifusion", "dim": clip["hidden_size"]},
            "adapter": {"type": "mlp", "depth": 2},
            "llm": {"config": llm},
        }
    }


def build(tiny: bool, stage: str, precision: str):
    """The random-initialised model (encoders frozen, as the chosen stage trains) and processor."""
    import torch

    from polyvis.config import load_config
    from polyvis.models.build import build_model

    cfg = load_config(
        polyvis_config(tiny), [f"model.dtype={'bfloat16' if precision == 'bf16' else 'float32'}"]
    )
    torch.manual_seed(0)
    model, processor = build_model(cfg)
    model.set_trainable(encoders=False, projector=True, llm=stage == "finetune")
    return model, processor


def pick_attention(requested: str, cuda: bool) -> str:
    """--attn auto: flash-attention 2 on a GPU with the flash_attn package, else SDPA."""
    if requested != "auto":
        return requested
    has_flash = importlib.util.find_spec("flash_attn") is not None
    return "flash_attention_2" if cuda and has_flash else "sdpa"


def set_attention(model, implementation: str) -> dict[str, str]:
    """Each transformers model inside (encoders, LLM) to `implementation`, or SDPA where it has
    no such kernel; returns what each one uses."""
    from transformers import PreTrainedModel

    used = {}
    parts = [(e.name, e.backbone) for e in model.encoders] + [("llm", model.language_model)]
    for name, part in parts:
        assert isinstance(part, PreTrainedModel), name
        try:
            part.set_attn_implementation(implementation)
        except (ValueError, ImportError, OSError):  # no such kernel here for this architecture
            part.set_attn_implementation("sdpa")
        used[name] = part.config._attn_implementation
    return used


def make_batch(model, batch: int, text: int, device) -> dict[str, Any]:
    """[text/2, <img_start>, M x <image>, <img_end>, text/2]; loss on the second half of the text."""
    import torch

    c, m = model.config, model.image_seq_length
    g = torch.Generator().manual_seed(0)
    vocab = model.language_model.config.vocab_size
    half = torch.randint(3, vocab, (batch, text // 2), generator=g)
    special = torch.tensor([c.image_token_id, c.image_start_token_id, c.image_end_token_id])
    half[torch.isin(half, special)] = 3  # random text must not hold image placeholders
    img = torch.tensor([c.image_start_token_id] + [c.image_token_id] * m + [c.image_end_token_id])
    ids = torch.cat([half, img.expand(batch, -1), half.flip(1)], dim=1)
    labels = ids.clone()
    labels[:, : -(text // 2)] = -100
    h = max(e["image_size"][0] for e in c.encoders)
    w = max(e["image_size"][1] for e in c.encoders)
    pixels = torch.randn(batch, len(c.encoders), 3, h, w, generator=g)
    inputs = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "labels": labels,
        "pixel_values": pixels,
    }
    return {k: v.to(device) for k, v in inputs.items()}


def run(args: argparse.Namespace) -> dict[str, float]:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    cuda = torch.cuda.is_available() and not args.dry_run
    device = torch.device("cuda" if cuda else "cpu")
    t0 = time.perf_counter()
    model, _ = build(args.tiny, args.stage, args.precision)
    model.to(device).train()
    if args.gradient_checkpointing:
        model.language_model.gradient_checkpointing_enable()
    built_s = time.perf_counter() - t0
    inputs = make_batch(model, args.batch_size, args.text_tokens, device)
    if args.cached_features:  # the feature cache hands the step precomputed encoder outputs
        with torch.no_grad():
            inputs["encoder_features"] = model.encode_images(inputs.pop("pixel_values"))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, fused=cuda)
    autocast = torch.autocast(
        device.type, dtype=torch.bfloat16, enabled=args.precision == "autocast" and cuda
    )

    def step() -> None:
        with autocast:
            loss = model(**inputs).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    # FLOPs are counted with SDPA: torch's counter does not see flash_attn's kernels (same math)
    set_attention(model, "sdpa")
    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    attention = set_attention(model, pick_attention(args.attn, cuda))
    for _ in range(args.warmup):
        step()
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.steps):
        sync()
        t = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t)
    step_s = statistics.median(times)
    tokens = inputs["attention_mask"].numel()
    return {
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "trainable_m": sum(p.numel() for p in params) / 1e6,
        "seq_len": inputs["input_ids"].shape[1],
        "build_s": built_s,
        "step_s": step_s,
        "tokens_per_s": tokens / step_s,
        "samples_per_s": args.batch_size / step_s,
        "tflop_per_step": flops / 1e12,
        "mfu": flops / step_s / (args.peak_tflops * 1e12),
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan"),
        "device": torch.cuda.get_device_name() if cuda else "cpu (dry run)",
        "attention": ", ".join(f"{k} {v}" for k, v in attention.items()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", choices=["align", "finetune"], default="finetune")
    parser.add_argument("--precision", choices=["autocast", "bf16"], default="autocast",
                        help="autocast: fp32 weights, bf16 compute (train.mixed_precision: bf16); bf16: bf16 weights")  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--text-tokens", type=int, default=256, help="text tokens per sample (+ visual tokens)"
    )
    parser.add_argument("--steps", type=int, default=10, help="timed steps (median)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--peak-tflops", type=float, default=989.0, help="the GPU's dense bf16 peak (H100 SXM: 989)"
    )
    parser.add_argument(
        "--cached-features", action="store_true", help="encoder outputs precomputed (feature cache)"
    )
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument(
        "--attn",
        choices=["auto", "sdpa", "flash_attention_2", "eager"],
        default="auto",
        help="attention kernel (auto: flash_attention_2 when flash_attn is installed, else sdpa)",
    )
    parser.add_argument("--tiny", action="store_true", help="tiny shapes of the same structure")
    parser.add_argument(
        "--dry-run", action="store_true", help="run on the CPU (with --tiny: checks the script)"
    )
    args = parser.parse_args(argv)
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if not args.dry_run and not torch.cuda.is_available():
        print(
            "gpu_train.py: no CUDA GPU found (torch.cuda.is_available() is False); this benchmark needs one. "
            "Use --dry-run --tiny to check the script on a CPU.",
            file=sys.stderr,
        )
        return 2
    r = run(args)
    size = "tiny shapes" if args.tiny else "Qwen2-0.5B + CLIP-L/14-336 + DINOv2-L/14"
    print(f"# gpu_train: {r['device']}, {size}, stage {args.stage}, precision {args.precision}"
          f"{', cached features' if args.cached_features else ''}, torch {torch.__version__}")  # fmt: skip
    print(f"# attention: {r['attention']}")
    print(f"# parameters {r['params_m']:.1f} M ({r['trainable_m']:.1f} M trainable), batch {args.batch_size} "
          f"x {r['seq_len']} tokens, model built in {r['build_s']:.0f} s")  # fmt: skip
    print("| step (ms) | samples/s | tokens/s | TFLOP/step | MFU | peak memory (GiB) |")
    print("|---:|---:|---:|---:|---:|---:|")
    print(f"| {r['step_s'] * 1e3:.1f} | {r['samples_per_s']:.1f} | {r['tokens_per_s']:.0f} | "
          f"{r['tflop_per_step']:.3f} | {r['mfu']:.1%} | {r['peak_mem_gib']:.1f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
