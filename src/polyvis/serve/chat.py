"""Ask a polyvis model about an image: one answer (`answer`) or a conversation (`ChatSession`).

Prompts are built exactly as training builds them: the tokenizer's chat template renders the
conversation (the image marker `<image>` before the first question, as in the LLaVA records), each
`<image>` becomes the `<img_start>` + M x `<image>` + `<img_end>` block (M the image's own count
with a tiled encoder), and the text is tokenised piece by piece at the borders of earlier answers
(polyvis.data.template), so a multi-turn prompt has the same ids the model saw in training.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from polyvis.data.template import for_images, prompt_ids
from polyvis.errors import DataError
from polyvis.models.tokenizer import IMAGE_TOKEN
from polyvis.serve.jobs import lm_context

History = list[tuple[str, str]]

# Greedy decoding unless the caller asks otherwise; generation_config supplies pad / eos.
DEFAULT_GEN: dict[str, Any] = {"max_new_tokens": 256, "do_sample": False, "num_beams": 1}


def as_image(image: Image.Image | str | Path | None) -> Image.Image | None:
    """A PIL image (RGB) from an image or a file path; the file is named when it cannot be read."""
    if image is None or isinstance(image, Image.Image):
        return image
    from polyvis.data.images import load_image

    return load_image(image)


def chat_messages(
    question: str,
    history: History | None = None,
    with_image: bool = True,
    system: str | None = None,
) -> list[dict[str, str]]:
    """Messages for the chat template: the image marker goes before the first question."""
    turns = [*(history or []), (question, None)]
    messages = [{"role": "system", "content": system}] if system else []
    for i, (q, a) in enumerate(turns):
        if i == 0 and with_image and IMAGE_TOKEN not in q:
            q = f"{IMAGE_TOKEN}\n{q}"
        messages.append({"role": "user", "content": q})
        if a is not None:
            messages.append({"role": "assistant", "content": a})
    return messages


def generation_kwargs(**gen: Any) -> dict[str, Any]:
    """DEFAULT_GEN updated with the caller's options (None values ignored)."""
    out = dict(DEFAULT_GEN)
    out.update({k: v for k, v in gen.items() if v is not None})
    if not out.get("do_sample"):
        out.pop("temperature", None)
        out.pop("top_p", None)
    return out


@torch.no_grad()
def answer(
    model: Any,
    processor: Any,
    image: Image.Image | str | Path | None,
    question: str,
    history: History | None = None,
    system: str | None = None,
    streamer: Any | None = None,
    **gen: Any,
) -> str:
    """The model's answer to `question` about `image`, after the earlier (question, answer) turns.

    gen: generate() options (max_new_tokens, do_sample, temperature, top_p, num_beams, ...);
    greedy with 256 new tokens by default. streamer: a transformers streamer (not with beams).
    """
    pil = as_image(image)
    messages = chat_messages(question, history, with_image=pil is not None, system=system)
    text_processor = for_images(processor, [pil] if pil is not None else [])
    ids = torch.tensor([prompt_ids(text_processor, messages)], device=model.device)
    kwargs = generation_kwargs(**gen)
    context = lm_context(model.config)
    if context is not None:  # past the LM's positions it fails or answers nonsense, silently
        room = context - ids.shape[1]
        if room < 1:
            raise DataError(
                f"the prompt is {ids.shape[1]} tokens, and the LM's context is {context}: "
                "start a new conversation (/reset) or ask a shorter question"
            )
        kwargs["max_new_tokens"] = min(int(kwargs["max_new_tokens"]), room)
    inputs: dict[str, Any] = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if pil is not None:
        pixel_values = processor.preprocess_images([pil])
        inputs["pixel_values"] = pixel_values.to(model.device, model.dtype)
    if streamer is not None and kwargs.get("num_beams", 1) == 1:
        kwargs["streamer"] = streamer
    out = model.generate(**inputs, **kwargs)
    return processor.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()


@dataclass
class ChatSession:
    """A conversation about one image: `ask` keeps the history; a new image starts afresh."""

    model: Any
    processor: Any
    image: Image.Image | None = None
    system: str | None = None
    gen: dict[str, Any] = field(default_factory=dict)
    history: History = field(default_factory=list)

    def set_image(self, image: Image.Image | str | Path | None) -> None:
        """Switch images; the conversation restarts (earlier turns were about the old image)."""
        self.image = as_image(image)
        self.history = []

    def reset(self) -> None:
        self.history = []

    def ask(self, question: str, streamer: Any | None = None) -> str:
        reply = answer(
            self.model,
            self.processor,
            self.image,
            question,
            history=self.history,
            system=self.system,
            streamer=streamer,
            **self.gen,
        )
        self.history.append((question, reply))
        return reply
