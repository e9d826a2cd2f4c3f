"""Batched generation and continuation scoring for evaluation (the runner and the lmms-eval plugin).

Prompts are token ids built by `polyvis.data.template.prompt_ids` (the chat template, tokenised
piece by piece exactly as training does), so an evaluation prompt, a chat prompt and a training
prompt for the same conversation are the same ids.

- `generate_batch`: left-padded batched generation; each answer is cut at its first EOS, decoded
  without special tokens, cut at the first stop string and stripped.
- `score_continuations`: the summed log-probability of given continuation tokens after each
  prompt, and whether greedy decoding would produce exactly those tokens (right padding, so the
  real tokens keep the positions they have unpadded).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image

__all__ = ["eos_ids", "generate_batch", "score_continuations"]


def eos_ids(model: Any, processor: Any) -> list[int]:
    """Every id that ends an answer: the generation config's EOS id(s) and the tokenizer's."""
    ids: list[int] = []
    configured = getattr(model.generation_config, "eos_token_id", None)
    for tid in configured if isinstance(configured, list) else [configured]:
        if tid is not None:
            ids.append(int(tid))
    if processor.tokenizer.eos_token_id is not None:
        ids.append(int(processor.tokenizer.eos_token_id))
    return list(dict.fromkeys(ids))


def _pad_id(processor: Any) -> int:
    tok = processor.tokenizer
    return int(tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)


def _pixel_values(model: Any, processor: Any, images: Sequence[Sequence[Image.Image]]):
    flat = [im for group in images for im in group]
    if not flat:
        return None
    return processor.preprocess_images(flat).to(model.device, model.dtype)


def _cut(text: str, stop: Sequence[str]) -> str:
    """`text` up to the earliest stop string (an empty stop string is ignored)."""
    end = len(text)
    for s in stop:
        if s:
            k = text.find(s)
            if 0 <= k < end:
                end = k
    return text[:end]


@torch.no_grad()
def generate_batch(
    model: Any,
    processor: Any,
    prompts: Sequence[Sequence[int]],
    images: Sequence[Sequence[Image.Image]],
    max_new_tokens: int = 32,
    num_beams: int = 1,
    do_sample: bool = False,
    temperature: float | None = None,
    top_p: float | None = None,
    stop: Sequence[str] = (),
    encoder_features: list[list[torch.Tensor]] | None = None,
) -> list[str]:
    """Answers to a batch of prompts (token ids), one list of images per prompt (in marker order).

    Greedy by default; `num_beams` > 1 is beam search, `do_sample` samples. Generation stops at
    EOS; an answer is also cut at the first of `stop` and stripped. `encoder_features`: the
    images' encoder outputs, computed already (the feature cache), in place of their pixels.
    """
    if not prompts:
        return []
    device = model.device
    pad = _pad_id(processor)
    width = max(len(p) for p in prompts)
    input_ids = torch.tensor([[pad] * (width - len(p)) + list(p) for p in prompts], device=device)
    attention_mask = torch.tensor(
        [[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device
    )
    eos = eos_ids(model, processor)
    gen: dict[str, Any] = {
        "max_new_tokens": int(max_new_tokens),
        "num_beams": int(num_beams),
        "do_sample": bool(do_sample),
        "eos_token_id": eos,
        "pad_token_id": pad,
    }
    if do_sample:
        gen.update({k: v for k, v in (("temperature", temperature), ("top_p", top_p)) if v})
    pixel_values = None if encoder_features is not None else _pixel_values(model, processor, images)
    inputs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
    if encoder_features is not None or (pixel_values is not None and num_beams > 1):
        # generate() expands every tensor per beam with repeat_interleave, which would hand a
        # two-image prompt's beams the images [a, a] and [b, b]; embedding the images first
        # leaves one row per prompt to expand, which is always right.
        embeds = model.embed_tokens(input_ids)
        features = model.get_image_features(pixel_values, encoder_features)
        inputs["inputs_embeds"] = model.splice_image_features(input_ids, embeds, features)
    elif pixel_values is not None:
        inputs["pixel_values"] = pixel_values
    out = model.generate(**inputs, **gen)
    new = out[:, width:].tolist()
    answers = []
    for row in new:
        for k, tid in enumerate(row):
            if tid in eos:
                row = row[:k]
                break
        text = processor.tokenizer.decode(row, skip_special_tokens=True)
        answers.append(_cut(text, stop).strip())
    return answers


@torch.no_grad()
def score_continuations(
    model: Any,
    processor: Any,
    prompts: Sequence[Sequence[int]],
    continuations: Sequence[Sequence[int]],
    images: Sequence[Sequence[Image.Image]],
) -> list[tuple[float, bool]]:
    """(sum of log p(continuation token | everything before it), is_greedy) per prompt.

    is_greedy: the argmax at every continuation position is the continuation's token. An empty
    continuation scores (0.0, True).
    """
    if not prompts:
        return []
    pad = _pad_id(processor)
    seqs = [list(p) + list(c) for p, c in zip(prompts, continuations)]
    width = max(len(s) for s in seqs)
    device = model.device
    input_ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs], device=device)
    attention_mask = torch.tensor(
        [[1] * len(s) + [0] * (width - len(s)) for s in seqs], device=device
    )
    inputs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
    pixel_values = _pixel_values(model, processor, images)
    if pixel_values is not None:
        inputs["pixel_values"] = pixel_values
    logits = model(**inputs).logits.float()
    results = []
    for i, (p, c) in enumerate(zip(prompts, continuations)):
        if not c:
            results.append((0.0, True))
            continue
        # Position t predicts token t + 1: the continuation's tokens are predicted by the
        # positions from the prompt's last token up to the one before the last continuation token.
        rows = logits[i, len(p) - 1 : len(p) + len(c) - 1]
        target = torch.tensor(list(c), device=rows.device)
        logprobs = torch.log_softmax(rows, dim=-1).gather(1, target[:, None])[:, 0]
        results.append((float(logprobs.sum()), bool((rows.argmax(-1) == target).all())))
    return results
