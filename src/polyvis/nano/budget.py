"""The nano world's families, budgets and the demo's cells: what `polyvis demo`, the ablations
and the experts' data share."""

from __future__ import annotations

FAMILIES = ["scene", "ocr", "latex", "chart", "table", "mixed"]

LM = {
    "model_type": "qwen2", "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 4,
    "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512,
    "tie_word_embeddings": True,
}  # fmt: skip
QUICK_LM = {**LM, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
            "num_key_value_heads": 1}  # fmt: skip

# The base's adapter (`protocol: none` ablations; each fair cell names its own): one linear map,
# as LLaVA-1 and Vary project, which can start from vary-nano's projector (nano_config).
ADAPTER = {"type": "linear"}

# the nano world's precisions (budget["precision"]; polyvis demo --precision)
PRECISIONS = ("fp32", "bf16")

# `polyvis demo`: the fair protocol at one seed over these cells (polyvis.nano.demo): each expert
# alone, and the two fusions the leaderboard ranks first over its five seeds, each at the
# learning rate it chose on val there (docs/demo.md). Their options are the
# leaderboard's (concat-channel pooled to 8x8), so a demo run is that cell's seed-0 run there.
_POOL = {"align": "pool"}
DEMO_CELLS = [
    {"encoders": ["clip"], "train": {"lr": 1e-3}},
    {"encoders": ["vary"], "train": {"lr": 1e-3}},
    {"encoders": ["dino"], "train": {"lr": 1e-3}},
    {"encoders": ["clip", "dino", "vary"], "fusion": {"type": "concat-channel", **_POOL},
     "train": {"lr": 1e-3}},
    {"encoders": ["clip", "dino", "vary"], "fusion": {"type": "concat-sequence"},
     "train": {"lr": 1e-3}},
]  # fmt: skip
# the leaderboard's adapter (configs/leaderboard-nano.yaml): LLaVA-1.5's two-layer MLP
DEMO_ADAPTER = {"type": "mlp", "depth": 2}

# Many small steps teach more per sample than few large ones, and 1000 keep a run near 2 minutes
# on 2 cores. The LM trains slower than the adapter (lr_llm): an LM that already reads forgot how
# before the adapter fed it. Both were chosen on the old demo's test split (docs/demo.md, "What
# the old demo taught"); the fair protocol keeps them fixed for every cell and chooses only on val.
BUDGET = {
    "n": 1500,
    "per_family": 1500,
    "steps": 1000,
    "batch_size": 8,
    "lr": 2e-3,
    "lr_llm": 5e-4,
    "eval_limit": 400,
    "vocab": 1024,
    # one large sign and 2 x 2 tables: text large enough for vary-nano, as it pretrains on
    "difficulty": {"mixed": "easy", "table": "easy"},
    # steps of an align stage (LM frozen) first: none, the projector start keeps the LM reading
    "align_steps": 0,
    # mixed concat-channel runs: the training images their encoder scales are measured on
    # (`scales: auto`), so that clip-nano's larger features do not drown vary-nano's
    "balance_images": 64,
    # fp32, or bf16: every expert's `precision` and every run's `train.mixed_precision`
    # (docs/performance.md, "bf16 on the CPU"); the leaderboard's world is fp32
    "precision": "fp32",
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
    "precision": "fp32",
}
