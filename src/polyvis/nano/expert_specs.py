"""What each nano expert is: its data, its settings (full and quick), its recipe version and its
trainer. polyvis.nano.experts builds and caches them."""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import Any

from polyvis.nano.budget import BUDGET, FAMILIES, QUICK_BUDGET
from polyvis.nano.dino import QUICK_SETTINGS as DINO_QUICK

EXPERTS = ("clip-nano", "vary-nano", "dino-nano", "lm-nano")
VISION_EXPERTS = ("clip-nano", "vary-nano")  # what the demo and ensure_experts() build
# Bump an expert's version when its trainer changes what it produces for the same settings
# (invalidates its cache entries; the versions' history is in docs/nano.md).
RECIPE_VERSION = {"clip-nano": 1, "vary-nano": 2, "dino-nano": 1, "lm-nano": 1}
# lm-nano reads the nano world's own training text: the demo's data options (seed 0, 64 px),
# so that it shares their cached folder (polyvis.nano.world.prepare_world)
_WORLD, _QUICK_WORLD = (
    {"families": list(FAMILIES), "n": b["n"], "difficulty": b.get("difficulty", "medium")}
    for b in (BUDGET, QUICK_BUDGET)
)

# What each expert trains on when no data folder is given: ensure_synthetic options (seed 0 and
# 64 px unless set; "eval": false keeps a set out of the held-out measurement, "train": false
# makes it a held-out set only). Easy OCR is where an encoder trained from scratch first learns
# glyphs; the medium set is what the nano world's models see. Few latex, table and chart images:
# their long transcripts cost the most and teach mostly layout; easy tables are the exception,
# so that vary-nano learns to read their cells (docs/nano.md, "Tables vary-nano can read").
DATA: dict[str, list[dict[str, Any]]] = {
    "clip-nano": [{"families": ["scene"], "n": 3000}],
    "vary-nano": [
        {"families": ["ocr"], "n": 2000, "difficulty": "easy"},
        {"families": ["ocr"], "n": 2500},
        {"families": ["latex", "table", "chart"], "n": 200},
        {"families": ["table"], "n": 2000, "difficulty": "easy"},
        {"families": ["mixed"], "n": 1600, "difficulty": "easy"},
    ],
    # dino-nano sees clip-nano's scene images, without their captions
    "dino-nano": [{"families": ["scene"], "n": 3000}],
    "lm-nano": [_WORLD],
}
QUICK_DATA: dict[str, list[dict[str, Any]]] = {
    "clip-nano": [{"families": ["scene"], "n": 40}],
    "vary-nano": [{"families": ["ocr", "table"], "n": 40}],
    "dino-nano": [{"families": ["scene"], "n": 40}],
    "lm-nano": [_QUICK_WORLD],
}
SYNTH_KEYS = {"families", "n", "seed", "size", "difficulty", "train", "eval"}

# vary-nano's decoder is every nano run's starting LM (polyvis.nano.world.nano_lm), so it needs a
# transformers tokenizer saved beside it: a byte-level BPE with 3 merges, in effect characters,
# which a decoder learns to read from the patches far faster than word-sized tokens.
NANO_LM_TOKENIZER = {"tokenizer": "bpe", "bpe_vocab_size": 262}
SETTINGS: dict[str, dict[str, Any]] = {
    "clip-nano": {},
    "vary-nano": {
        "families": ["ocr", "latex", "table", "chart", "mixed"],
        # the CTC loss per column on the one-word signs too, and in raster order on tables'
        # cells: without it vary-nano reads few signs and invents the cells (docs/nano.md)
        "aux_families": ["ocr", "mixed", "table"],
        # a projector without LayerNorm: one linear map, which the runs' adapters start from
        "projector_norm": False,
        "steps": 540,
        **NANO_LM_TOKENIZER,
    },
    "dino-nano": {},
    "lm-nano": {},
}
_QUICK_VIT = {"model_type": "vit", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
              "intermediate_size": 64, "patch_size": 8}  # fmt: skip
_QUICK_DEC = {"model_type": "qwen2", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
              "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 256,
              "tie_word_embeddings": True}  # fmt: skip
QUICK_SETTINGS: dict[str, dict[str, Any]] = {
    "clip-nano": {
        "vision": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                   "num_attention_heads": 2, "patch_size": 8},
        "text": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                 "num_attention_heads": 2, "max_position_embeddings": 64},
        "projection_dim": 16, "vocab_size": 300, "steps": 12, "batch_size": 8, "lr": 3e-3,
        "eval_samples": 4,
    },
    "vary-nano": {
        "families": ["ocr", "table"], "encoder": _QUICK_VIT, "decoder": _QUICK_DEC, "steps": 12,
        "batch_size": 8, "lr": 3e-3, "max_target_len": 48, "eval_samples": 2, **NANO_LM_TOKENIZER,
        "projector_norm": False,
    },
    "dino-nano": dict(DINO_QUICK),
    "lm-nano": {"decoder": _QUICK_DEC, "block": 32, "steps": 12, "batch_size": 8, "lr": 3e-3,
                "eval_blocks": 4},
}  # fmt: skip


# name -> (module, its settings class, its train function); imported only when that expert is used
_MODULES = {
    "clip-nano": ("polyvis.nano.clip", "ClipSettings", "train_clip"),
    "vary-nano": ("polyvis.nano.vary", "VarySettings", "train_vary"),
    "dino-nano": ("polyvis.nano.dino", "DinoSettings", "train_dino"),
    "lm-nano": ("polyvis.nano.lm", "LmSettings", "train_lm"),
}


def settings_class(name: str) -> type:
    module, cls, _ = _MODULES[name]
    return getattr(import_module(module), cls)


def trainer(name: str) -> Callable[..., dict[str, Any]]:
    """The expert's train function: train(data_dirs, out, settings, progress, callback, eval_dirs)."""
    module, _, fn = _MODULES[name]
    return getattr(import_module(module), fn)
