"""PolyVisProcessor: the tokenizer plus one image processor per encoder.

It expands each `<image>` in the text into `<img_start>` + M x `<image>` + `<img_end>` (M = visual
tokens per image) before tokenising, so the model never loops over samples, and it packs each
image once per encoder into one (num_images, K, 3, H, W) tensor (zero-padded to the largest size).

With a tiled encoder (models/tiling.py) that encoder has one slot per view, so the tensor is
(num_images, S, 3, H, W), and unless the fusion's output length is fixed each image has its own
token count, M x its views (docs/tiling.md): expanding `<image>` then needs the images.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoTokenizer, BatchFeature, PreTrainedTokenizerBase

from polyvis.errors import DataError
from polyvis.models.quiet import quiet_transformers
from polyvis.models.rgb import as_rgb
from polyvis.models.tiling import Tiling, resample_of, tile_image
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
        tiling: dict[str, Any] | None = None,
    ):
        """tiling: {encoder, grids, thumbnail, per_view} of the tiled encoder, or None."""
        self.tokenizer = tokenizer
        self.image_processors = dict(image_processors)
        self.image_sizes = {k: tuple(v) for k, v in image_sizes.items()}
        self.image_seq_length = int(image_seq_length)
        self.encoder_names = list(self.image_processors)
        self.tiling = dict(tiling) if tiling else None
        self._tiled = Tiling.from_dict(self.tiling) if self.tiling else None
        self._slots = [
            self._tiled.views if self.tiling and name == self.tiling["encoder"] else 1
            for name in self.encoder_names
        ]

    @property
    def num_slots(self) -> int:
        """Slots per image in pixel_values: one per encoder, one per view for a tiled one."""
        return sum(self._slots)

    @property
    def tokens_vary(self) -> bool:
        """Whether an image's token count depends on its size (a tiled encoder, per view)."""
        return bool(self.tiling and self.tiling["per_view"])

    def tile_grid(self, size: tuple[int, int]) -> tuple[int, int] | None:
        """The [rows, cols] of tiles an image of (height, width) gets; None when untiled."""
        if self._tiled is None:
            return None
        return self._tiled.select(size, self.image_sizes[self.tiling["encoder"]])

    def image_token_count(self, size: tuple[int, int]) -> int:
        """Visual tokens of an image of (height, width): M, or M x (thumbnail + rows x cols)."""
        if not self.tokens_vary:
            return self.image_seq_length
        return self.image_seq_length * self._tiled.num_views(self.tile_grid(size))

    def image_token_counts(self, images: list[Image.Image | tuple[int, int]]) -> list[int]:
        """image_token_count of each image (a PIL image or its (height, width))."""
        return [
            self.image_token_count(im if isinstance(im, tuple) else (im.height, im.width))
            for im in images
        ]

    def for_images(self, images: list[Image.Image | tuple[int, int]]) -> ImageTokenView:
        """This processor, its `expand_image_tokens` expanding the markers (over as many calls as
        it takes, in order) with these images' own counts: for code that renders text before
        tokenising, such as polyvis.data.template."""
        return ImageTokenView(self, self.image_token_counts(images))

    # -- text ------------------------------------------------------------------------------------
    @property
    def image_token_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)

    def expand_image_tokens(self, text: str, counts: list[int] | None = None) -> str:
        """Each `<image>` -> `<img_start>` + n x `<image>` + `<img_end>`; n from `counts` (one
        per marker, in order), else image_seq_length, which a model whose tokens vary refuses."""
        if counts is None:
            if self.tokens_vary:
                raise DataError(
                    f"encoder {self.tiling['encoder']!r} tiles images, so each {IMAGE_TOKEN} has "
                    "its own token count: pass the images (processor(text, images=...) or "
                    "processor.for_images(images))"
                )
            block = IMAGE_START_TOKEN + IMAGE_TOKEN * self.image_seq_length + IMAGE_END_TOKEN
            return text.replace(IMAGE_TOKEN, block)
        parts = text.split(IMAGE_TOKEN)
        if len(parts) - 1 != len(counts):
            raise DataError(
                f"text has {len(parts) - 1} {IMAGE_TOKEN} marker(s) but {len(counts)} token counts"
            )
        blocks = [IMAGE_START_TOKEN + IMAGE_TOKEN * int(n) + IMAGE_END_TOKEN for n in counts]
        return parts[0] + "".join(b + part for b, part in zip(blocks, parts[1:]))

    def apply_chat_template(
        self, messages: list[dict[str, str]], add_generation_prompt: bool = True, **kw
    ) -> str:
        """Render messages ({role, content} with `<image>` markers in content) as prompt text."""
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt, **kw
        )

    # -- images ----------------------------------------------------------------------------------
    def preprocess_images(self, images: list[Image.Image]) -> torch.Tensor:
        """Images -> (n, S, 3, H, W): each encoder's own resize / normalisation, zero-padded; a
        tiled encoder's views in its slots, NaN in the slots an image does not use."""
        if not images:
            return torch.zeros(0)
        images = [as_rgb(im) for im in images]  # as the data pipeline decodes files: alpha on white
        hmax = max(h for h, _ in self.image_sizes.values())
        wmax = max(w for _, w in self.image_sizes.values())
        out = torch.zeros(len(images), self.num_slots, 3, hmax, wmax)
        for k, name in enumerate(self.encoder_names):
            start = sum(self._slots[:k])
            if self.tiling and name == self.tiling["encoder"]:
                self._tile_into(out, start, name, images)
                continue
            pv = self._process(name, images)
            h, w = pv.shape[-2:]
            out[:, start, :, :h, :w] = pv
        return out

    def _process(self, name: str, images: list[Image.Image]) -> torch.Tensor:
        pv = self.image_processors[name](images=images, return_tensors="pt")["pixel_values"]
        h, w = pv.shape[-2:]
        if (h, w) != self.image_sizes[name]:
            raise DataError(
                f"image processor of encoder {name!r} gives {h}x{w} images, the model expects "
                f"{self.image_sizes[name][0]}x{self.image_sizes[name][1]}"
            )
        return pv

    def _tile_into(self, out: torch.Tensor, start: int, name: str, images: list) -> None:
        tiling, tile = self._tiled, self.image_sizes[name]
        resample = resample_of(self.image_processors[name])
        for i, im in enumerate(images):
            grid = tiling.select((im.height, im.width), tile)
            views = [im] if tiling.thumbnail else []
            pv = self._process(name, views + tile_image(im, grid, tile, resample))
            block = torch.full((tiling.views, *out.shape[2:]), float("nan"))
            slots = tiling.slots(grid)
            block[slots] = 0.0
            block[slots, :, : tile[0], : tile[1]] = pv
            out[i, start : start + tiling.views] = block

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
        equal its number of images. Left padding by default, as generation needs. The tokenizer
        adds no special tokens of its own unless `add_special_tokens=True` is passed: the text is
        a rendered chat template, which holds the ones training saw.
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
        expanded = [
            self.expand_image_tokens(t, self.image_token_counts(imgs) if self.tokens_vary else None)
            for t, imgs in zip(texts, per_prompt)
        ]
        # Training tokenises the rendered chat template without the tokenizer's own special
        # tokens (data/template.py), so a BOS is there only where the template writes it: the
        # same default here keeps a Llama / Mistral tokenizer from adding one training never saw.
        enc = self.tokenizer(
            expanded,
            padding=padding,
            padding_side=padding_side,
            return_tensors=return_tensors,
            add_special_tokens=kwargs.pop("add_special_tokens", False),
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
        if self.tiling:  # absent for untiled models, whose file stays as it was
            meta["tiling"] = self.tiling
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
        with quiet_transformers():  # it reads config.json and warns that "polyvis" is no LM type
            tokenizer = AutoTokenizer.from_pretrained(directory)
        procs = {
            name: AutoImageProcessor.from_pretrained(directory / "image_processors" / name)
            for name in meta["encoders"]
        }
        return cls(
            tokenizer, procs, meta["image_sizes"], meta["image_seq_length"], meta.get("tiling")
        )


class ImageTokenView:
    """A processor whose `expand_image_tokens(text)` uses one conversation's per-image counts.

    Everything else is the processor's. `image_seq_length` is the images' count when they all
    have the same one (what a per-image check that multiplies needs), else a DataError.
    """

    def __init__(self, processor: PolyVisProcessor, counts: list[int]):
        self._processor = processor
        self.counts = list(counts)
        self._next = 0

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # never reached for set attributes; keeps copy / pickle sane
            raise AttributeError(name)
        return getattr(self._processor, name)

    def expand_image_tokens(self, text: str, counts: list[int] | None = None) -> str:
        if counts is None:
            n = text.count(IMAGE_TOKEN)
            counts = self.counts[self._next : self._next + n]
            if len(counts) != n:
                raise DataError(
                    f"the text holds more {IMAGE_TOKEN} markers than the {len(self.counts)} "
                    "image(s) given"
                )
            self._next += n
        return self._processor.expand_image_tokens(text, counts)

    @property
    def image_seq_length(self) -> int:
        if len(set(self.counts)) > 1:
            raise DataError(
                f"images with different token counts {self.counts} in one conversation: the "
                "per-image count check needs one count per image"
            )
        return self.counts[0] if self.counts else self._processor.image_seq_length


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
