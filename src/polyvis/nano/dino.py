"""dino-nano: a DINOv2-shaped ViT trained self-supervised on scene images, without captions.

What it has over clip-nano, following DINOv2 against CLIP: a finer grid (patch 4 at 64 px, a
16 x 16 grid against clip-nano's 8 x 8), images only (no caption decides what it keeps), and a
patch-level objective: MAE, 75 % of the patches masked, their pixels predicted
(polyvis.nano.dino_model). The encoder is saved (Dinov2Model.save_pretrained + its image
processor), so a polyvis config lists it as an encoder `path:`; configs read it at
`layers: [-3, -1]` (READ_LAYERS; docs/nano.md says why).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from polyvis.nano._common import collect_samples, count_params, load_pixels
from polyvis.nano.clip import is_caption
from polyvis.nano.dino_model import DinoNano, DinoSettings, build_dino, mae_loss, patchify
from polyvis.nano.trainer import Recipe, train_expert
from polyvis.nano.vary import is_transcription

# The layers a polyvis config reads (hidden-state indices): the second block and the last.
READ_LAYERS = [-3, -1]
# Tiny settings for tests and smoke runs (what `quick=True` builds).
QUICK_SETTINGS: dict[str, Any] = {
    "encoder": {"model_type": "dinov2", "hidden_size": 32, "num_hidden_layers": 2,
                "num_attention_heads": 2, "mlp_ratio": 2, "patch_size": 8},
    "decoder_hidden": 16, "decoder_layers": 1, "decoder_heads": 2, "size": 32, "steps": 12,
    "batch_size": 8, "lr": 3e-3, "eval_samples": 4,
}  # fmt: skip
# Fixed masks for the held-out reconstruction error, the same at initialisation and at the end.
_EVAL_SEED = 1234


def one_per_image(rec: dict[str, Any], family: str) -> bool:
    """One record per image: dino-nano reads only the image, so a record here just names one
    (a scene's or detail image's caption record, another family's transcription record; the text
    is never read)."""
    captioned = family in ("scene", "detail")
    return is_caption(rec, family) if captioned else is_transcription(rec, family)


class DinoRecipe(Recipe[DinoSettings]):
    """dino-nano in the shared loop: MAE on the images, nothing else."""

    name = "dino-nano"
    settings_class = DinoSettings
    samples = "images (one record per image: scene and detail captions, other transcriptions)"
    read_layer = -1

    @staticmethod
    def select(rec: dict[str, Any], family: str) -> bool:
        return one_per_image(rec, family)

    def build(self) -> tuple[DinoNano, Any]:
        return build_dino(self.s)

    def prepare(self) -> None:
        s = self.s
        # the masks come from their own generator, so batches and masks never share a stream
        self.masks = torch.Generator().manual_seed(s.seed + 1)
        test = collect_samples(self.eval_dirs, s.families, "test", one_per_image)
        test = test[: s.eval_samples]
        self.test_px = load_pixels([x.image for x in test], self.processor) if test else None
        self.init_eval = self._held_out()

    @torch.no_grad()
    def _held_out(self) -> dict[str, float]:
        """Masked-patch MSE on held-out images with fixed masks, and the error of predicting
        zero (the normalised pixels' own size) for scale."""
        if self.test_px is None:
            return {}
        self.model.eval()
        gen = torch.Generator().manual_seed(_EVAL_SEED)
        mse = mae_loss(self.model, self.test_px, self.s.mask_ratio, gen).item()
        self.model.train()
        zero = patchify(self.test_px, self.model.patch).pow(2).mean().item()
        return {"masked_mse": mse, "zero_mse": zero, "n": len(self.test_px)}

    def loss(
        self, idx: torch.Tensor, pixels: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float | None]]:
        return mae_loss(self.model, pixels, self.s.mask_ratio, self.masks), {}

    def evaluate(self) -> dict[str, Any]:
        return {"reconstruction": self._held_out(), "reconstruction_random_init": self.init_eval}

    def save(self, out: Path) -> None:
        self.model.encoder.save_pretrained(out)
        self.processor.save_pretrained(out)

    def facts(self, train_images: int) -> dict[str, Any]:
        grid = self.model.grid
        return {"train_images": train_images, "grid": [grid, grid],
                "read_layers": list(READ_LAYERS)}  # fmt: skip

    def params(self) -> dict[str, int]:
        m = self.model
        return {"encoder": count_params(m.encoder),
                "decoder": count_params(m) - count_params(m.encoder)}  # fmt: skip


def train_dino(
    data_dirs: list[str | Path],
    out: str | Path,
    settings: DinoSettings | dict | None = None,
    progress: bool = True,
    callback: Callable[[int, int, float], None] | None = None,
    eval_dirs: list[str | Path] | None = None,
) -> dict[str, Any]:
    """Train dino-nano on the images of `data_dirs` (no text); save the encoder to `out`.

    The held-out reconstruction error is measured on the test split of `eval_dirs` (default:
    the data dirs).
    """
    return train_expert(DinoRecipe, data_dirs, out, settings, progress, callback, eval_dirs)
