"""clip-nano: a tiny CLIPModel trained contrastively on scene images and their captions.

The captions name colours, shapes, counts and positions, so the image tower must learn what is
where. Text is byte-level BPE trained on the captions, with an end-of-text token that has the
largest id: CLIP's text tower takes the old pooling path (argmax over token ids) when its
eos_token_id is 2, and with the largest id both paths pick the same position.

The contrastive loss reads the class token of the last layer, so the last layer's patch tokens
get no gradient: polyvis should read clip-nano's penultimate layer (`layers: [-2]`).
Saved with CLIPModel.save_pretrained + tokenizer + image processor in one dir; polyvis loads its
vision tower by path, as it would a real CLIP checkpoint.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from pydantic import Field

from polyvis.errors import ConfigError
from polyvis.models.load_checks import config_message, config_refusals
from polyvis.nano._common import (
    ExpertSettings,
    answer_of,
    collect_samples,
    count_params,
    load_pixels,
    question_of,
    square_processor,
)
from polyvis.nano.trainer import Recipe, train_expert

VISION_NANO = {"hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 4,
               "num_attention_heads": 4, "patch_size": 8}  # fmt: skip
TEXT_NANO = {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 3,
             "num_attention_heads": 4, "max_position_embeddings": 64}  # fmt: skip
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
EOT = "<|endoftext|>"


class ClipSettings(ExpertSettings):
    """Everything that decides a clip-nano model (the experts cache hashes these)."""

    families: list[str] = Field(default_factory=lambda: ["scene"])
    vision: dict[str, Any] = Field(default_factory=lambda: dict(VISION_NANO))
    text: dict[str, Any] = Field(default_factory=lambda: dict(TEXT_NANO))
    projection_dim: int = Field(default=64, gt=0)
    vocab_size: int = Field(default=512, gt=260)
    qa_texts: float = Field(default=0.0, ge=0, le=1)  # chance a step shows a "question answer" text
    size: int = Field(default=64, ge=16)
    steps: int = Field(default=500, gt=0)
    batch_size: int = Field(default=64, gt=1)
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=0.05, ge=0)
    warmup: float = Field(default=0.05, ge=0, lt=1)
    eval_samples: int = Field(default=300, ge=0)  # held-out captioned images for retrieval
    seed: int = 0
    threads: int = Field(default=1, ge=1)


def is_caption(rec: dict[str, Any], family: str) -> bool:
    return rec.get("task") == "caption" or rec.get("metric") == "cider"


def clip_tokenizer(texts: list[str], vocab_size: int) -> Any:
    """Byte-level BPE on the texts; every encoding ends with EOT, the token with the largest id."""
    from tokenizers import processors

    from polyvis.models.tokenizer import train_bpe_tokenizer

    tok = train_bpe_tokenizer(texts, vocab_size)
    tok.add_special_tokens({"eos_token": EOT})
    eot = tok.convert_tokens_to_ids(EOT)
    assert eot == len(tok) - 1, "the end-of-text token must have the largest id"
    tok.backend_tokenizer.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single=f"$A {EOT}", special_tokens=[(EOT, eot)]),
        ]
    )
    tok.model_max_length = TEXT_NANO["max_position_embeddings"]
    return tok


def build_clip(s: ClipSettings, tokenizer: Any) -> Any:
    from transformers import CLIPConfig, CLIPModel

    text = {**s.text, "vocab_size": len(tokenizer), "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id}  # fmt: skip
    vision = {**s.vision, "image_size": s.size}
    try:
        config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=s.projection_dim)
        return CLIPModel(config)
    except config_refusals() as err:  # huggingface_hub's validation errors are not ValueErrors
        raise ConfigError("text/vision", config_message(err)) from None


def image_processor(size: int) -> Any:
    return square_processor(size, CLIP_MEAN, CLIP_STD)


def _features(out: Any) -> torch.Tensor:
    """get_*_features returns a tensor in older transformers, an output with pooler_output now."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


@torch.no_grad()
def embed(
    model: Any, tokenizer: Any, pixels: torch.Tensor, texts: list[str], batch: int = 128
) -> tuple:
    """L2-normalised image and text embeddings."""
    model.eval()
    imgs, txts = [], []
    for i in range(0, len(pixels), batch):
        imgs.append(_features(model.get_image_features(pixel_values=pixels[i : i + batch])))
    for i in range(0, len(texts), batch):
        enc = tokenizer(texts[i : i + batch], padding=True, truncation=True, return_tensors="pt")
        txts.append(
            _features(
                model.get_text_features(
                    input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]
                )
            )
        )
    model.train()
    norm = torch.nn.functional.normalize
    return norm(torch.cat(imgs), dim=-1), norm(torch.cat(txts), dim=-1)


def retrieval(
    model: Any, tokenizer: Any, pixels: torch.Tensor, captions: list[str]
) -> dict[str, float]:
    """Top-1 / top-5 image->caption and caption->image retrieval among the held-out pairs.

    A retrieved caption counts as right when its text equals the true one (two images can share
    a caption); likewise a retrieved image is right when its caption equals the query.
    """
    img, txt = embed(model, tokenizer, pixels, captions)
    sim = img @ txt.T
    same = torch.tensor([[a == b for b in captions] for a in captions])
    out = {}
    for name, s in (("image_to_text", sim), ("text_to_image", sim.T)):
        top = s.topk(min(5, len(captions)), dim=1).indices
        hits = same.gather(1, top)
        out[f"{name}_top1"] = hits[:, 0].float().mean().item()
        out[f"{name}_top5"] = hits.any(1).float().mean().item()
    out["chance_top1"] = (same.sum(1).float() / len(captions)).mean().item()
    out["n"] = len(captions)
    return out


def _qa_collect(dirs: list[Path], families: list[str], split: str) -> dict[Path, list[str]]:
    from polyvis.data.records import read_records, record_image_paths

    out: dict[Path, list[str]] = {}
    for d in dirs:
        for fam in families:
            path = d / fam / f"{split}.jsonl"
            if path.is_file():
                for rec in read_records(path):
                    images = record_image_paths(rec, path.parent)
                    if len(images) == 1 and not is_caption(rec, fam):
                        out.setdefault(images[0], []).append(f"{question_of(rec)} {answer_of(rec)}")
    return out


class ClipRecipe(Recipe[ClipSettings]):
    """clip-nano in the shared loop: contrastive loss on image-caption batches."""

    name = "clip-nano"
    settings_class = ClipSettings
    samples = "captions"
    config_field = "text/vision"
    read_layer = -2

    @staticmethod
    def select(rec: dict[str, Any], family: str) -> bool:
        return is_caption(rec, family)

    def vocabulary(self) -> None:
        s = self.s
        self.qa = _qa_collect(self.dirs, s.families, "train") if s.qa_texts > 0 else {}
        corpus = [x.text for x in self.train] + [t for ts in self.qa.values() for t in ts]
        self.tokenizer = clip_tokenizer(corpus, s.vocab_size)

    def build(self) -> tuple[Any, Any]:
        return build_clip(self.s, self.tokenizer), image_processor(self.s.size)

    def prepare(self) -> None:
        s = self.s
        test = collect_samples(self.eval_dirs, s.families, "test", is_caption)[: s.eval_samples]
        self.test_px = load_pixels([x.image for x in test], self.processor) if test else None
        self.test_texts = [x.text for x in test]
        self.init_eval = self._retrieval()
        self.rng = random.Random(s.seed)

    def _retrieval(self) -> dict[str, float]:
        if not self.test_texts:
            return {}
        return retrieval(self.model, self.tokenizer, self.test_px, self.test_texts)

    def loss(
        self, idx: torch.Tensor, pixels: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float | None]]:
        texts = []
        for i in idx.tolist():
            extra = self.qa.get(self.train[i].image)
            use_qa = extra and self.rng.random() < self.s.qa_texts
            texts.append(self.rng.choice(extra) if use_qa else self.train[i].text)
        enc = self.tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        out = self.model(
            input_ids=enc["input_ids"],
            attention_mask=enc["attention_mask"],
            pixel_values=pixels,
            return_loss=True,
        )
        return out.loss, {}

    def after_step(self) -> None:
        with torch.no_grad():  # CLIP's temperature cap (logit scale <= 100)
            self.model.logit_scale.clamp_(max=4.6052)

    def evaluate(self) -> dict[str, Any]:
        return {"retrieval": self._retrieval(), "retrieval_random_init": self.init_eval}

    def save(self, out: Path) -> None:
        self.model.save_pretrained(out)
        self.tokenizer.save_pretrained(out)
        self.processor.save_pretrained(out)

    def facts(self, train_images: int) -> dict[str, Any]:
        return {"train_images": train_images, "vocab_size": len(self.tokenizer),
                "eos_token_id": self.tokenizer.eos_token_id}  # fmt: skip

    def params(self) -> dict[str, int]:
        return {"vision": count_params(self.model.vision_model),
                "text": count_params(self.model.text_model)}  # fmt: skip


def train_clip(
    data_dirs: list[str | Path],
    out: str | Path,
    settings: ClipSettings | dict | None = None,
    progress: bool = True,
    callback: Callable[[int, int, float], None] | None = None,
    eval_dirs: list[str | Path] | None = None,
) -> dict[str, Any]:
    """Train clip-nano on the caption records of `data_dirs`; save model + tokenizer to `out`.

    Retrieval is measured on the test split of `eval_dirs` (default: the data dirs).
    """
    return train_expert(ClipRecipe, data_dirs, out, settings, progress, callback, eval_dirs)
