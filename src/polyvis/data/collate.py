"""Batching: the Collator (pad, stack, drop skipped items) and a length-grouped sampler.

A batch is a dict:
    input_ids (B, T) long, attention_mask (B, T) long, labels (B, T) long (-100 at padding),
    pixel_values (N, S, 3, H, W): every sample's images in order (absent when the batch has none;
        S is one slot per encoder, a tiled encoder's one per view: docs/tiling.md; samples whose
        images have different token counts just have different lengths),
    ids: the B record ids, image_hashes: the N image hashes (row-aligned with pixel_values),
    skipped: how many None items (skipped records) were dropped from this batch.
`model_inputs(batch)` keeps only what the model's forward takes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import Sampler
from transformers.trainer_pt_utils import get_length_grouped_indices

from polyvis.data.template import IGNORE_INDEX
from polyvis.errors import ConfigError

MODEL_INPUT_KEYS = ("input_ids", "attention_mask", "labels", "pixel_values")


class Collator:
    """Pads a list of dataset items into a batch; None items (skipped records) are dropped.

    padding_side: "right" for training (positions of real tokens then match unpadded samples);
        "left" where a batch is continued by generation.
    pad_to_multiple_of: round the padded length up (tensor-core friendly shapes on GPUs).
    """

    def __init__(
        self,
        pad_token_id: int,
        padding_side: str = "right",
        pad_to_multiple_of: int | None = None,
    ):
        if padding_side not in ("right", "left"):
            raise ConfigError("padding_side", f"must be 'right' or 'left', got {padding_side!r}")
        if pad_token_id is None:
            raise ConfigError("pad_token_id", "the tokenizer has no pad token; set one")
        if pad_to_multiple_of is not None and pad_to_multiple_of < 1:
            raise ConfigError("pad_to_multiple_of", f"must be >= 1, got {pad_to_multiple_of}")
        self.pad_token_id = int(pad_token_id)
        self.padding_side = padding_side
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, items: Sequence[dict[str, Any] | None]) -> dict[str, Any]:
        kept = [x for x in items if x is not None]
        width = max((len(x["input_ids"]) for x in kept), default=0)
        if self.pad_to_multiple_of and width % self.pad_to_multiple_of:
            width += self.pad_to_multiple_of - width % self.pad_to_multiple_of
        input_ids = torch.full((len(kept), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(kept), width), dtype=torch.long)
        labels = torch.full((len(kept), width), IGNORE_INDEX, dtype=torch.long)
        for b, x in enumerate(kept):
            n = len(x["input_ids"])
            cols = slice(0, n) if self.padding_side == "right" else slice(width - n, width)
            input_ids[b, cols] = x["input_ids"]
            attention_mask[b, cols] = 1
            labels[b, cols] = x["labels"]
        batch: dict[str, Any] = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "ids": [x["id"] for x in kept],
            "image_hashes": [h for x in kept for h in x.get("image_hashes", [])],
            "skipped": len(items) - len(kept),
        }
        pixels = [x["pixel_values"] for x in kept if x.get("pixel_values") is not None]
        pixels = [p for p in pixels if p.shape[0] > 0]
        if pixels:
            batch["pixel_values"] = torch.cat(pixels)
        return batch


def model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """The part of a batch the model's forward takes (input_ids, attention_mask, labels, pixels)."""
    return {k: batch[k] for k in MODEL_INPUT_KEYS if k in batch}


class LengthGroupedSampler(Sampler[int]):
    """Indices shuffled so that each run of `batch_size` holds similar lengths (less padding).

    Uses transformers' grouping (shuffle, sort within mega-batches of ~50 batches, longest batch
    first so memory errors show at once), made deterministic: the order depends only on
    (seed, epoch); call set_epoch(e) before each epoch for a fresh order.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0):
        if batch_size < 1:
            raise ConfigError("batch_size", f"must be >= 1, got {batch_size}")
        self.lengths = [int(n) for n in lengths]
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        if not self.lengths:
            return iter([])
        # Distinct (seed, epoch) pairs give distinct generator seeds (epochs < 1e6).
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))
