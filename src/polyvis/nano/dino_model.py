"""dino-nano's model: a DINOv2-shaped ViT encoder trained as a masked autoencoder (MAE).

The encoder (a transformers Dinov2Model) sees only the visible patches (class token plus
a random 25 % of a 16 x 16 grid at the defaults); a small transformer decoder puts mask tokens
back in place, with fixed 2-D sine-cosine positions, and predicts the pixels of every patch.
The loss is the mean squared error on the masked patches, in the image processor's normalised
pixels: not normalised per patch as in the MAE paper, because most 4 px patches here are one flat
colour, and per-patch normalisation would leave the encoder nothing to learn about colour.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field, model_validator
from torch import nn

from polyvis.errors import ConfigError
from polyvis.nano._common import ExpertSettings, square_processor

# DINOv2's shape at nano scale: patch 4 at 64 px gives a 16 x 16 grid, twice as fine as
# clip-nano's and vary-nano's 8 x 8 (DINOv2 reads at 518 px where CLIP reads at 224-336).
DINO_NANO = {"model_type": "dinov2", "hidden_size": 128, "num_hidden_layers": 4,
             "num_attention_heads": 4, "mlp_ratio": 4, "patch_size": 4}  # fmt: skip
# DINOv2's own normalisation (ImageNet statistics), as its checkpoints' image processors have.
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


class DinoSettings(ExpertSettings):
    """Everything that decides a dino-nano encoder (the experts cache hashes these)."""

    families: list[str] = Field(default_factory=lambda: ["scene"])
    encoder: dict[str, Any] = Field(default_factory=lambda: dict(DINO_NANO))
    decoder_hidden: int = Field(default=64, gt=0)
    decoder_layers: int = Field(default=2, gt=0)
    decoder_heads: int = Field(default=4, gt=0)
    mask_ratio: float = Field(default=0.75, gt=0, lt=1)
    size: int = Field(default=64, ge=16)
    steps: int = Field(default=300, gt=0)
    batch_size: int = Field(default=64, gt=1)
    lr: float = Field(default=1.5e-3, gt=0)
    weight_decay: float = Field(default=0.05, ge=0)
    warmup: float = Field(default=0.05, ge=0, lt=1)
    eval_samples: int = Field(default=300, ge=0)  # held-out images for the reconstruction error
    seed: int = 0
    threads: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _shapes(self) -> DinoSettings:
        if "model_type" not in self.encoder:
            raise ValueError("encoder needs a 'model_type' (e.g. dinov2)")
        patch = self.encoder.get("patch_size")
        if not isinstance(patch, int) or self.size % patch:
            raise ValueError(f"encoder.patch_size must be an int that divides size {self.size}")
        if self.decoder_hidden % self.decoder_heads or self.decoder_hidden % 4:
            raise ValueError("decoder_hidden must be a multiple of decoder_heads and of 4")
        return self


def sincos_2d(grid: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine positions (grid * grid, dim), rows then columns (MAE's decoder)."""
    quarter = dim // 4
    freq = 1.0 / (10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter))
    ys, xs = torch.meshgrid(
        torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64),
        indexing="ij",
    )  # fmt: skip
    parts = []
    for coord in (ys.flatten(), xs.flatten()):
        angle = coord[:, None] * freq[None, :]
        parts += [angle.sin(), angle.cos()]
    return torch.cat(parts, dim=1).float()


def patchify(pixels: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, patch * patch * C), patches in raster order."""
    b, c, h, w = pixels.shape
    x = pixels.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // patch) * (w // patch), patch * patch * c)


class DinoNano(nn.Module):
    """The encoder plus MAE's decoder (mask token, fixed positions, blocks, pixel head)."""

    def __init__(self, encoder: nn.Module, s: DinoSettings):
        super().__init__()
        self.encoder = encoder
        self.patch = int(s.encoder["patch_size"])
        self.grid = s.size // self.patch
        dim, width = encoder.config.hidden_size, s.decoder_hidden
        self.embed = nn.Linear(dim, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        nn.init.normal_(self.mask_token, std=0.02)
        pos = torch.cat([torch.zeros(1, width), sincos_2d(self.grid, width)])
        self.register_buffer("dec_pos", pos[None], persistent=False)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(
                width,
                s.decoder_heads,
                4 * width,
                dropout=0.0,
                activation="gelu",
                batch_first=True,
                norm_first=True,
            )  # fmt: skip
            for _ in range(s.decoder_layers)
        )
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, self.patch * self.patch * 3)

    def encode_visible(self, pixels: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """The encoder on the class token and the kept patches: (B, 1 + K, D)."""
        enc = self.encoder
        tokens = enc.embeddings(pixels)  # class token first, positions added
        cls, patches = tokens[:, :1], tokens[:, 1:]
        visible = patches.gather(1, keep[..., None].expand(-1, -1, patches.shape[-1]))
        hidden = enc.encoder(torch.cat([cls, visible], dim=1)).last_hidden_state
        return enc.layernorm(hidden)

    def forward(self, pixels: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Predicted pixels of every patch (B, N, patch * patch * 3), from the kept patches."""
        x = self.embed(self.encode_visible(pixels, keep))
        b, n, width = x.shape[0], self.grid * self.grid, x.shape[-1]
        full = self.mask_token.expand(b, n, width).clone().to(x.dtype)  # x: bf16 under autocast
        full = full.scatter(1, keep[..., None].expand(-1, -1, width), x[:, 1:])
        x = torch.cat([x[:, :1], full], dim=1) + self.dec_pos
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))[:, 1:]


def random_keep(
    batch: int, n: int, mask_ratio: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """MAE's random masking: per image, the indices of the kept patches (B, K) and the mask
    (B, N; 1 = masked)."""
    kept = max(1, int(round(n * (1 - mask_ratio))))
    order = torch.rand(batch, n, generator=generator).argsort(dim=1, stable=True)
    keep = order[:, :kept]
    mask = torch.ones(batch, n).scatter(1, keep, 0.0)
    return keep, mask


def mae_loss(
    model: DinoNano, pixels: torch.Tensor, mask_ratio: float, generator: torch.Generator
) -> torch.Tensor:
    """Mean squared error of the predicted pixels on the masked patches."""
    target = patchify(pixels, model.patch)
    keep, mask = random_keep(len(pixels), target.shape[1], mask_ratio, generator)
    err = ((model(pixels, keep) - target) ** 2).mean(dim=-1)
    return (err * mask).sum() / mask.sum()


def build_dino(s: DinoSettings) -> tuple[DinoNano, Any]:
    """The encoder from its config (random init), MAE's decoder, and the image processor."""
    from transformers import AutoConfig, AutoModel

    cfg = dict(s.encoder)
    cfg["image_size"] = s.size
    try:
        encoder = AutoModel.from_config(AutoConfig.for_model(cfg.pop("model_type"), **cfg))
    except (KeyError, TypeError, ValueError) as err:
        raise ConfigError("encoder", str(err).splitlines()[0]) from None
    if not hasattr(encoder, "embeddings") or not hasattr(encoder, "layernorm"):
        raise ConfigError("encoder", "needs a ViT-like model (dinov2, vit): embeddings + encoder")
    processor = square_processor(s.size, IMAGENET_MEAN, IMAGENET_STD)
    return DinoNano(encoder, s), processor
