"""The nano world's families, runs and budgets: what `polyvis demo`, the ablations and the
experts' data share."""

from __future__ import annotations

FAMILIES = ["scene", "ocr", "latex", "chart", "table", "mixed"]

LM = {
    "model_type": "qwen2", "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 4,
    "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512,
    "tie_word_embeddings": True,
}  # fmt: skip
QUICK_LM = {**LM, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
            "num_key_value_heads": 1}  # fmt: skip

# One linear map, as LLaVA-1 and Vary project. Where it sees vary-nano's channels it starts from
# vary-nano's own projector (nano_config), so the LM, vary-nano's decoder, reads from step one.
ADAPTER = {"type": "linear"}

# name, encoders, fusion
RUNS = [
    ("clip-nano", ["clip"], "concat-channel"),
    ("vary-nano", ["vary"], "concat-channel"),
    ("clip+vary omnifusion", ["clip", "vary"], "omnifusion"),
    ("clip+vary concat-channel", ["clip", "vary"], "concat-channel"),
]

# Many small steps teach more per sample than few large ones, and 1000 keep a second run near 6
# minutes on 2 cores. The LM already reads, so it trains slower than the adapter: at the
# adapter's rate it forgot how to read before the adapter fed it (figures: docs/nano.md).
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
