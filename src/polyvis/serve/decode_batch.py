"""DecodeBatch: the decoding state of the rows a continuous batcher runs together.

It holds one transformers `DynamicCache` (per layer, keys and values of shape
(rows, kv_heads, T, head_dim)), the (rows, T) attention mask and each row's next position id.
Rows are left-padded to the common length T: a row's padding is masked out and its position ids
count only its own tokens (0 for the first prompt token, as `generate` numbers them), so every
row computes what it would compute alone. Newcomers are prefilled as a group (images encoded and
spliced there) and merged in; finished rows are dropped at once, with their cache rows.

`next_tokens` picks each row's next token from its own settings: greedy, or temperature and
top-p sampling (as transformers' warpers do) with the row's own generator when it has a seed;
`choose_tokens` feeds them to the rows, so that a row whose own draw fails fails alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


class DecodeBatch:
    """Rows decoding together; `rows` is the caller's per-row objects, kept in batch order."""

    def __init__(
        self, cache: DynamicCache, mask: torch.Tensor, positions: torch.Tensor, rows: list[Any]
    ):
        self.cache, self.mask, self.positions, self.rows = cache, mask, positions, rows

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def length(self) -> int:
        """Columns of the cache (the longest row, padding included)."""
        return self.mask.shape[1]

    @classmethod
    @torch.inference_mode()
    def prefill(
        cls,
        model: Any,
        ids: Sequence[Sequence[int]],
        pixel_values: torch.Tensor | None,
        pad_id: int,
        rows: list[Any],
    ) -> tuple[DecodeBatch, torch.Tensor]:
        """Run the prompts (left-padded, their images in order) into a fresh cache; returns the
        batch and each row's next-token logits (rows, vocab) in float32."""
        length = max(len(x) for x in ids)
        input_ids = torch.full((len(ids), length), pad_id, dtype=torch.long)
        mask = torch.zeros((len(ids), length), dtype=torch.long)
        for i, row in enumerate(ids):
            input_ids[i, length - len(row) :] = torch.tensor(row, dtype=torch.long)
            mask[i, length - len(row) :] = 1
        device = model.device
        input_ids, mask = input_ids.to(device), mask.to(device)
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        if pixel_values is not None:
            pixel_values = pixel_values.to(device, model.dtype)
        cache = _new_cache(model)
        out = model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            attention_mask=mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        _check_layers(cache)
        positions = mask.sum(-1)
        return cls(cache, mask, positions, list(rows)), out.logits[:, -1].float()

    @torch.inference_mode()
    def step(self, model: Any, tokens: torch.Tensor) -> torch.Tensor:
        """Feed each row its last chosen token; returns the next-token logits (rows, vocab)."""
        tokens = tokens.to(self.mask.device)
        self.mask = F.pad(self.mask, (0, 1), value=1)
        out = model(
            input_ids=tokens[:, None],
            attention_mask=self.mask,
            position_ids=self.positions[:, None],
            cache=self.cache,
            use_cache=True,
        )
        self.positions = self.positions + 1
        return out.logits[:, -1].float()

    def merge(self, other: DecodeBatch) -> None:
        """Append `other`'s rows (their cache, mask and positions), left-padding the shorter side."""
        length = max(self.length, other.length)
        for mine, theirs in zip(self.cache.layers, other.cache.layers):
            mine.keys = torch.cat([_left_pad(mine.keys, length), _left_pad(theirs.keys, length)])
            mine.values = torch.cat(
                [_left_pad(mine.values, length), _left_pad(theirs.values, length)]
            )
        self.mask = torch.cat(
            [
                F.pad(self.mask, (length - self.length, 0)),
                F.pad(other.mask, (length - other.length, 0)),
            ]
        )
        self.positions = torch.cat([self.positions, other.positions])
        self.rows += other.rows

    def keep(self, indices: Sequence[int]) -> None:
        """Keep only these rows (in this order); columns that are padding in every row go too."""
        if list(indices) == list(range(len(self.rows))):
            return
        index = torch.tensor(list(indices), dtype=torch.long, device=self.mask.device)
        mask = self.mask[index]
        used = mask.any(0).nonzero()
        first = int(used[0]) if len(used) else mask.shape[1]
        for layer in self.cache.layers:
            layer.keys = layer.keys[index, :, first:]
            layer.values = layer.values[index, :, first:]
        self.mask = mask[:, first:]
        self.positions = self.positions[index]
        self.rows = [self.rows[i] for i in indices]


def _text_config(model: Any) -> Any:
    config = model.config
    return config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config


# Layer kinds whose state is keys and values along the sequence, so rows merge and trim alike.
_ATTENTION_LAYERS = {"full_attention", "sliding_attention", "chunked_attention"}


def _new_cache(model: Any) -> DynamicCache:
    """A cache of plain full layers. A sliding (or chunked) window is a mask that the model
    builds itself, so keeping every key gives the same attention (Mistral's answers equal
    generate's); it costs the memory the window would have saved."""
    kinds = set(getattr(_text_config(model), "layer_types", None) or ["full_attention"])
    if not kinds <= _ATTENTION_LAYERS:
        raise NotImplementedError(
            "continuous batching needs attention cache layers; this LM has "
            + ", ".join(sorted(kinds - _ATTENTION_LAYERS))
        )
    return DynamicCache()


def _check_layers(cache: DynamicCache) -> None:
    # Merging and trimming rows along the sequence axis is only right for plain full-attention
    # layers; a sliding window or a linear-attention state would need its own rules.
    for i, layer in enumerate(cache.layers):
        if type(layer) is not DynamicLayer:
            raise NotImplementedError(
                f"continuous batching needs full-attention cache layers; layer {i} is "
                f"{type(layer).__name__}"
            )


def _left_pad(states: torch.Tensor, length: int) -> torch.Tensor:
    """(rows, heads, T, dim) -> (rows, heads, length, dim), zeros in front (masked out)."""
    return F.pad(states, (0, 0, length - states.shape[2], 0))


def warp(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """One row's scores for sampling: logits / temperature, -inf outside the top-p nucleus
    (as transformers' TemperatureLogitsWarper then TopPLogitsWarper)."""
    scores = logits / temperature
    if not torch.isfinite(scores.max()):
        # A tiny temperature overflows the division; shifted, the top logits stay at 0 and the
        # rest go to -inf: the limit of sampling as the temperature falls (greedy, ties shared).
        scores = (logits - logits.max()) / temperature
    if top_p >= 1.0:
        return scores
    ordered, order = torch.sort(scores, descending=False)
    remove = ordered.softmax(-1).cumsum(-1) <= 1 - top_p
    remove[-1] = False  # keep at least the most likely token
    return scores.masked_fill(remove.scatter(0, order, remove), -float("inf"))


def next_tokens(
    logits: torch.Tensor,
    temperatures: Sequence[float],
    top_ps: Sequence[float],
    generators: Sequence[torch.Generator | None],
) -> list[int]:
    """Each row's next token: argmax where its temperature is 0, else a draw from `warp`'s
    softmax with the row's generator (None: torch's global one)."""
    out = logits.argmax(-1).tolist()
    for i, temperature in enumerate(temperatures):
        if temperature > 0:
            probs = warp(logits[i], temperature, top_ps[i]).softmax(-1)
            out[i] = int(torch.multinomial(probs, 1, generator=generators[i]))
    return out


def choose_tokens(rows: Sequence[Any], logits: torch.Tensor) -> None:
    """Feed each row (`temperature`, `top_p`, `generator`, `feed`, `fail`: a serve.jobs.Row)
    its next token from `next_tokens`. Should one row's settings make its draw fail, the others
    draw again alone, their generators rewound (a seeded row's sample stays the one it would
    draw alone), and only it fails."""
    states = [None if r.generator is None else r.generator.get_state() for r in rows]

    def draw(i: slice) -> list[int]:
        return next_tokens(
            logits[i],
            [r.temperature for r in rows[i]],
            [r.top_p for r in rows[i]],
            [r.generator for r in rows[i]],
        )

    try:
        tokens = draw(slice(None))
    except Exception:
        if len(rows) == 1:
            raise
        for i, row in enumerate(rows):
            if states[i] is not None:
                row.generator.set_state(states[i])
            try:
                (token,) = draw(slice(i, i + 1))
            except Exception as err:
                row.fail(err)
            else:
                row.feed(token)
        return
    for row, token in zip(rows, tokens):
        row.feed(token)
