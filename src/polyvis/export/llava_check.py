"""The export's check of itself: LLaVA must see what polyvis sees, the same token ids, pixels
and image features for a sample prompt and image, before anything is written."""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from polyvis.errors import ConfigError
from polyvis.models.tokenizer import IMAGE_TOKEN


def _probe_images() -> list[Image.Image]:
    g = torch.Generator().manual_seed(0)
    arrays = [
        torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8)
        for h, w in ((37, 53), (64, 48))
    ]
    return [Image.fromarray(a.numpy()) for a in arrays]


def same_pixels(a: Any, b: Any) -> bool:
    images = _probe_images()
    pa = a(images=images, return_tensors="pt")["pixel_values"]
    pb = b(images=images, return_tensors="pt")["pixel_values"]
    return pa.shape == pb.shape and torch.allclose(pa, pb, atol=1e-5)


@torch.no_grad()
def verify(model: Any, processor: Any, llava: Any, llava_processor: Any) -> None:
    """Raise ConfigError unless LLaVA sees what polyvis sees: same ids, pixels and image features."""
    image = _probe_images()[0]
    messages = [{"role": "user", "content": f"{IMAGE_TOKEN}\nWhat is shown?"}]
    text = processor.apply_chat_template(messages)
    ours = processor(text, images=image)  # as users call both processors, each with its default
    llava_text = llava_processor.apply_chat_template(
        [
            {
                "role": "user",
                "content": [{"type": "image"}, {"type": "text", "text": "What is shown?"}],
            }
        ],
        add_generation_prompt=True,
    )
    theirs = llava_processor(text=llava_text, images=image, return_tensors="pt")
    if ours["input_ids"].tolist() != theirs["input_ids"].tolist():
        raise ConfigError(
            "processor", "the LLaVA processor tokenises the sample prompt differently"
        )
    pv = ours["pixel_values"][:, 0]
    if not torch.allclose(pv, theirs["pixel_values"].to(pv.dtype), atol=1e-5):
        raise ConfigError("processor", "the LLaVA image processor gives different pixels")
    pv = pv.to(model.device, model.dtype)
    want = model.get_image_features(pv[:, None])
    got = torch.stack(list(llava.model.get_image_features(pv).pooler_output))
    scale = 1e-3 * (1 + want.abs().max().item())
    if got.shape != want.shape or (got.float() - want.float()).abs().max().item() > scale:
        raise ConfigError(
            "model.encoders[0]", "the LLaVA vision path does not reproduce the image features"
        )
