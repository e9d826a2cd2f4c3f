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
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from pydantic import Field

from polyvis.nano._common import (
    Sample,
    Settings,
    answer_of,
    batches,
    collect_samples,
    count_params,
    load_pixels,
    lr_at,
    make_progress,
    parse_settings,
    question_of,
    require_samples,
    smooth,
    torch_threads,
    unique_images,
    write_json,
)

VISION_NANO = {"hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 4,
               "num_attention_heads": 4, "patch_size": 8}  # fmt: skip
TEXT_NANO = {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 3,
             "num_attention_heads": 4, "max_position_embeddings": 64}  # fmt: skip
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
EOT = "<|endoftext|>"


class ClipSettings(Settings):
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

    from polyvis.errors import ConfigError

    text = {**s.text, "vocab_size": len(tokenizer), "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id}  # fmt: skip
    vision = {**s.vision, "image_size": s.size}
    try:
        config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=s.projection_dim)
        return CLIPModel(config)
    except (TypeError, ValueError) as err:
        raise ConfigError("text/vision", str(err).splitlines()[0]) from None


def image_processor(size: int) -> Any:
    try:
        from transformers import ViTImageProcessorPil as Proc
    except ImportError:  # pragma: no cover - older transformers
        from transformers import ViTImageProcessor as Proc
    return Proc(size={"height": size, "width": size}, image_mean=CLIP_MEAN, image_std=CLIP_STD)


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
    s = settings if isinstance(settings, ClipSettings) else parse_settings(ClipSettings, settings)
    dirs, out = [Path(d) for d in data_dirs], Path(out)
    t0 = time.perf_counter()
    with torch_threads(s.threads):
        train: list[Sample] = collect_samples(dirs, s.families, "train", is_caption)
        require_samples(train, dirs, f"captions of {','.join(s.families)}")
        qa = _qa_collect(dirs, s.families, "train") if s.qa_texts > 0 else {}
        corpus = [x.text for x in train] + [t for ts in qa.values() for t in ts]
        tokenizer = clip_tokenizer(corpus, s.vocab_size)
        torch.manual_seed(s.seed)
        model = build_clip(s, tokenizer)
        model.train()
        processor = image_processor(s.size)
        paths, where = unique_images(train)
        pixels = load_pixels(paths, processor, progress)
        where_t = torch.tensor(where)
        held_out = [Path(d) for d in eval_dirs] if eval_dirs is not None else dirs
        test = collect_samples(held_out, s.families, "test", is_caption)[: s.eval_samples]
        test_px = load_pixels([x.image for x in test], processor) if test else None
        init_eval = retrieval(model, tokenizer, test_px, [x.text for x in test]) if test else {}
        opt = torch.optim.AdamW(
            model.parameters(), lr=s.lr, weight_decay=s.weight_decay, betas=(0.9, 0.98)
        )
        gen, rng = torch.Generator().manual_seed(s.seed), random.Random(s.seed)
        losses: list[float] = []
        t_train = time.perf_counter()
        with make_progress(progress) as bar:
            task = bar.add_task("clip-nano", total=s.steps, loss=float("nan"))
            for step, idx in enumerate(batches(len(train), s.batch_size, s.steps, gen)):
                for group in opt.param_groups:
                    group["lr"] = lr_at(step, s.steps, s.lr, s.warmup)
                texts = []
                for i in idx.tolist():
                    extra = qa.get(train[i].image)
                    use_qa = extra and rng.random() < s.qa_texts
                    texts.append(rng.choice(extra) if use_qa else train[i].text)
                enc = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
                loss = model(
                    input_ids=enc["input_ids"],
                    attention_mask=enc["attention_mask"],
                    pixel_values=pixels[where_t[idx]],
                    return_loss=True,
                ).loss
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                with torch.no_grad():  # CLIP's temperature cap (logit scale <= 100)
                    model.logit_scale.clamp_(max=4.6052)
                losses.append(loss.item())
                shown = smooth(losses[-20:])[-1]
                bar.update(task, advance=1, loss=shown)
                if callback is not None:
                    callback(step + 1, s.steps, shown)
        train_secs = time.perf_counter() - t_train
        final_eval = retrieval(model, tokenizer, test_px, [x.text for x in test]) if test else {}
        out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        processor.save_pretrained(out)
    result = {
        "expert": "clip-nano",
        "settings": s.model_dump(),
        "data": [str(d) for d in dirs],
        "train_images": len(paths),
        "vocab_size": len(tokenizer),
        "eos_token_id": tokenizer.eos_token_id,
        "params": {
            "vision": count_params(model.vision_model),
            "text": count_params(model.text_model),
        },
        "read_layer": -2,
        "final_loss": sum(losses[-20:]) / len(losses[-20:]),
        "train_seconds": train_secs,
        "total_seconds": time.perf_counter() - t0,
        "eval": {"retrieval": final_eval, "retrieval_random_init": init_eval},
        "loss_curve": losses,
    }
    write_json(out / "training_log.json", result)
    return result
