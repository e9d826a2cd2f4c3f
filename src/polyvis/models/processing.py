"""PolyVisProcessor: the tokenizer plus one image processor per encoder.

It expands each `<image>` in the text into `<img_start>` + M x `<image>` + `<img_end>` (M = visual
tokens per image) before tokenising, so the model never loops over samples, and it packs each
image once per encoder into one (num_images, K, 3, H, W) tensor (zero-padded to the largest size).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoTokenizer, BatchFeature, PreTrainedTokenizerBase

from polyvis.errors import DataError
from polyvis.models.tokenizer import IMAGE_END_TOKEN, IMAGE_START_TOKEN, IMAGE_TOKEN

PROCESSOR_FILE = "polyvis_processor.json"


class PolyVisProcessor:
    """Tokenizer + one image processor per encoder (saved under image_processors/<name>/).

    Not a transformers ProcessorMixin, whose fixed attributes hold a single image processor;
    AutoProcessor finds it through the registration beside the model (models/modeling.py) and
    calls `from_pretrained`.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        image_processors: dict[str, Any],
        image_sizes: dict[str, tuple[int, int]],
        image_seq_length: int,
    ):
        self.tokenizer = tokenizer
        self.image_processors = dict(image_processors)
        self.image_sizes = {k: tuple(v) for k, v in image_sizes.items()}
        self.image_seq_length = int(image_seq_length)
        self.encoder_names = list(self.image_processors)

    # -- text ------------------------------------------------------------------------------------
    @property
    def image_token_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)

    def expand_image_tokens(self, text: str) -> str:
        block = IMAGE_START_TOKEN + IMAGE_TOKEN * self.image_seq_length + IMAGE_END_TOKEN
        return text.replace(IMAGE_TOKEN, block)

    def apply_chat_template(
        self, messages: list[dict[str, str]], add_generation_prompt: bool = True, **kw
    ) -> str:
        """Render messages ({role, content} with `<image>` markers in content) as prompt text."""
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt, **kw
        )

    # -- images ----------------------------------------------------------------------------------
    def preprocess_images(self, images: list[Image.Image]) -> torch.Tensor:
        """Images -> (n, K, 3, H, W): each encoder's own resize / normalisation, zero-padded."""
        if not images:
            return torch.zeros(0)
        images = [im.convert("RGB") if im.mode != "RGB" else im for im in images]
        hmax = max(h for h, _ in self.image_sizes.values())
        wmax = max(w for _, w in self.image_sizes.values())
        out = torch.zeros(len(images), len(self.encoder_names), 3, hmax, wmax)
        for k, name in enumerate(self.encoder_names):
            pv = self.image_processors[name](images=images, return_tensors="pt")["pixel_values"]
            h, w = pv.shape[-2:]
            if (h, w) != self.image_sizes[name]:
                raise DataError(
                    f"image processor of encoder {name!r} gives {h}x{w} images, the model expects "
                    f"{self.image_sizes[name][0]}x{self.image_sizes[name][1]}"
                )
            out[:, k, :, :h, :w] = pv
        return out

    # -- both ------------------------------------------------------------------------------------
    def __call__(
        self,
        text: str | list[str],
        images: Image.Image | list[Image.Image] | list[list[Image.Image]] | None = None,
        padding: bool | str = True,
        padding_side: str = "left",
        return_tensors: str = "pt",
        **kwargs: Any,
    ) -> BatchFeature:
        """Tokenise prompts and preprocess their images.

        images: for one prompt, an image or a list of images; for a batch, a list (one entry per
        prompt) of images or lists of images. The number of `<image>` markers in each prompt must
        equal its number of images. Left padding by default, as generation needs.
        """
        texts = [text] if isinstance(text, str) else list(text)
        per_prompt = _images_per_prompt(images, len(texts))
        flat = []
        for i, (t, imgs) in enumerate(zip(texts, per_prompt)):
            n = t.count(IMAGE_TOKEN)
            if n != len(imgs):
                raise DataError(
                    f"prompt {i} has {n} {IMAGE_TOKEN} marker(s) but {len(imgs)} image(s)"
                )
            flat.extend(imgs)
        expanded = [self.expand_image_tokens(t) for t in texts]
        enc = self.tokenizer(
            expanded,
            padding=padding,
            padding_side=padding_side,
            return_tensors=return_tensors,
            add_special_tokens=kwargs.pop("add_special_tokens", True),
            **kwargs,
        )
        data = dict(enc)
        if flat:
            data["pixel_values"] = self.preprocess_images(flat)
        return BatchFeature(data=data)

    def batch_decode(self, ids: Any, skip_special_tokens: bool = True, **kw) -> list[str]:
        return self.tokenizer.batch_decode(ids, skip_special_tokens=skip_special_tokens, **kw)

    def decode(self, ids: Any, skip_special_tokens: bool = True, **kw) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens, **kw)

    # -- persistence -----------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(directory)
        for name, proc in self.image_processors.items():
            proc.save_pretrained(directory / "image_processors" / name)
        meta = {
            "encoders": self.encoder_names,
            "image_sizes": {k: list(v) for k, v in self.image_sizes.items()},
            "image_seq_length": self.image_seq_length,
        }
        (directory / PROCESSOR_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")

    @classmethod
    def from_pretrained(cls, directory: str | Path, **hub_kwargs: Any) -> PolyVisProcessor:
        """Load the processor saved in a local model directory.

        hub_kwargs: what AutoProcessor.from_pretrained passes on (revision, cache_dir, ...);
        they concern downloads, and a local directory needs none, so they are not used.
        """
        directory = Path(directory)
        meta_path = directory / PROCESSOR_FILE
        if not meta_path.is_file():
            raise DataError(f"{meta_path}: not found; is {directory} a polyvis model directory?")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        tokenizer = AutoTokenizer.from_pretrained(directory)
        procs = {
            name: AutoImageProcessor.from_pretrained(directory / "image_processors" / name)
            for name in meta["encoders"]
        }
        return cls(tokenizer, procs, meta["image_sizes"], meta["image_seq_length"])


def _images_per_prompt(images: Any, n_prompts: int) -> list[list[Image.Image]]:
    if images is None:
        return [[] for _ in range(n_prompts)]
    if isinstance(images, Image.Image):
        images = [images]
    images = list(images)
    if n_prompts == 1 and all(isinstance(im, Image.Image) for im in images):
        return [images]
    if len(images) != n_prompts:
        raise DataError(
            f"{n_prompts} prompts but {len(images)} image entries; give one entry per prompt"
        )
    return [[im] if isinstance(im, Image.Image) else list(im or []) for im in images]
