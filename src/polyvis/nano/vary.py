"""vary-nano: a vision encoder trained Vary-tiny style to transcribe document-like images.

The encoder's last-layer patch tokens are projected and put in front of the transcript's tokens
as `inputs_embeds` of a small causal LM built from a config (OPT in Vary-tiny, Qwen2 here by
default; polyvis.nano.vary_model); every parameter trains on next-token loss over the transcript
(OCR text, LaTeX source, table markdown, chart data), plus an auxiliary CTC loss on one-line text
(per grid column) and markdown tables (per patch, raster order): polyvis.nano.vary_loss.

The encoder is saved (save_pretrained + its image processor), so a polyvis config lists it
as an encoder `path:` (layers: [-1], the layer the decoder read). With the BPE tokenizer the
decoder is saved too, with its tokenizer, in OUT/decoder: a causal LM that already reads the
encoder's tokens, which a config can name as its `llm: {path: ...}`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from polyvis.nano._common import (
    Sample,
    collect_samples,
    count_params,
    load_pixels,
    question_of,
)
from polyvis.nano.trainer import Recipe, train_expert
from polyvis.nano.vary_loss import batch_loss, ctc_target
from polyvis.nano.vary_model import VaryNano, VarySettings, build_vary
from polyvis.nano.vary_tokenizer import BpeVocab, CharVocab

# the decoder's map from the encoder's tokens to its inputs, saved beside it (OUT/decoder/)
PROJECTOR_FILE = "projector.safetensors"

# family -> (task name of the synthetic generator, question the generator and converters ask)
TRANSCRIPTION = {
    "ocr": ("read", "What does the text say?"),
    "latex": ("transcribe", "Write the LaTeX for the formula."),
    "table": ("markdown", "Transcribe the table as markdown."),
    "chart": ("to_table", "Give the data as a table."),
    "mixed": ("transcribe", "Read the signs."),
}
_PROMPTS = {prompt for _, prompt in TRANSCRIPTION.values()}


def is_transcription(rec: dict[str, Any], family: str) -> bool:
    """A record whose answer is the image's full text: the Vary-tiny target."""
    if family in TRANSCRIPTION:
        task, prompt = TRANSCRIPTION[family]
        return rec.get("task") == task or question_of(rec) == prompt
    return question_of(rec) in _PROMPTS


class VaryRecipe(Recipe[VarySettings]):
    """vary-nano in the shared loop. Its batches mix families (drawn from all the records):
    within a batch the image is then the only thing that tells the samples apart, where
    one-family batches let the decoder ignore it (docs/nano.md)."""

    name = "vary-nano"
    settings_class = VarySettings
    samples = "transcription records"
    config_field = "encoder/decoder"  # either config may be the one refused
    read_layer = -1
    curves = ("loss", "decode_loss", "ctc_loss")
    finals = ("loss", "decode_loss")

    @staticmethod
    def select(rec: dict[str, Any], family: str) -> bool:
        return is_transcription(rec, family)

    def vocabulary(self) -> None:
        s, texts = self.s, [x.text for x in self.train]
        self.vocab = (
            CharVocab(texts) if s.tokenizer == "chars" else BpeVocab(texts, s.bpe_vocab_size)
        )
        self.ctc_vocab = CharVocab([x.text for x in self.train if x.family in s.aux_families])

    def build(self) -> tuple[VaryNano, Any]:
        return build_vary(self.s, len(self.vocab), len(self.ctc_vocab))

    def prepare(self) -> None:
        s, vocab = self.s, self.vocab
        self.targets, self.truncated = [], 0
        for x in self.train:
            ids = vocab.encode(x.text)
            self.truncated += len(ids) > s.max_target_len
            self.targets.append(
                [vocab.bos_id]
                + (ids[: s.max_target_len] if len(ids) > s.max_target_len else ids + [vocab.eos_id])
            )
        self.ctc = [
            ctc_target(x.text, self.model.grid, x.family in s.aux_families, self.ctc_vocab)
            for x in self.train
        ]

    def loss(
        self, idx: torch.Tensor, pixels: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float | None]]:
        targets, ctc = [self.targets[i] for i in idx], [self.ctc[i] for i in idx]
        loss, dec, aux = batch_loss(self.model, pixels, targets, ctc, self.s.aux_ctc,
                                    self.vocab.pad_id)  # fmt: skip
        return loss, {"decode_loss": dec, "ctc_loss": aux}

    def evaluate(self) -> dict[str, Any]:
        if not self.s.eval_samples:
            return {}
        sets = held_out_sets(self.eval_dirs, self.s)
        if not sets:
            return {}
        return evaluate(self.model, self.vocab, sets, self.processor, self.s.max_target_len)

    def save(self, out: Path) -> None:
        model, vocab = self.model, self.vocab
        model.encoder.save_pretrained(out)
        self.processor.save_pretrained(out)
        if isinstance(vocab, BpeVocab):
            # The decoder with its tokenizer is a causal LM that already reads this encoder's
            # tokens: a starting LM for models that list the encoder (`llm: {path: .../decoder}`).
            model.decoder.config.update(
                {"bos_token_id": vocab.bos_id, "eos_token_id": vocab.eos_id}
            )
            model.decoder.save_pretrained(out / "decoder")
            vocab.tok.save_pretrained(out / "decoder")
            state = {k: v.detach().contiguous() for k, v in model.proj.state_dict().items()}
            save_file(state, out / "decoder" / PROJECTOR_FILE)

    def facts(self, train_images: int) -> dict[str, Any]:
        return {"train_samples": len(self.train), "train_images": train_images,
                "truncated_targets": self.truncated, "vocab_size": len(self.vocab)}  # fmt: skip

    def params(self) -> dict[str, int]:
        return {"encoder": count_params(self.model.encoder),
                "decoder": count_params(self.model.decoder)}  # fmt: skip


def train_vary(
    data_dirs: list[str | Path],
    out: str | Path,
    settings: VarySettings | dict | None = None,
    progress: bool = True,
    callback: Callable[[int, int, float], None] | None = None,
    eval_dirs: list[str | Path] | None = None,
) -> dict[str, Any]:
    """Train vary-nano on the transcription records of `data_dirs`; save the encoder to `out`.

    The held-out measurement decodes the test split of `eval_dirs` (default: the data dirs).
    """
    return train_expert(VaryRecipe, data_dirs, out, settings, progress, callback, eval_dirs)


@torch.no_grad()
def transcribe(
    model: VaryNano, vocab: Any, pixels: torch.Tensor, max_new_tokens: int, batch: int = 64
) -> list[str]:
    """Greedy decoding with the decoder's KV cache."""
    model.eval()
    out = []
    for i in range(0, len(pixels), batch):
        pv = pixels[i : i + batch]
        bos = torch.full((len(pv), 1), vocab.bos_id, dtype=torch.long)
        embeds = model.decoder_inputs(model.patches(pv), bos)
        gen = model.decoder.generate(
            inputs_embeds=embeds,
            attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=vocab.eos_id,
            pad_token_id=vocab.pad_id,
        )
        out += [vocab.decode(row.tolist()) for row in gen]
    model.train()
    return out


def evaluate(
    model: VaryNano, vocab: Any, sets: dict[str, list[Sample]], processor: Any, max_len: int
) -> dict:
    """Per held-out set: char accuracy (1 - normalised edit distance) and exact match of the
    greedy transcription."""
    from rapidfuzz.distance import Levenshtein

    samples = [x for xs in sets.values() for x in xs]
    preds = iter(
        transcribe(model, vocab, load_pixels([x.image for x in samples], processor), max_len + 1)
    )
    result: dict[str, Any] = {}
    for key, xs in sets.items():
        pairs = [(next(preds), x.text) for x in xs]
        result[key] = {
            "n": len(pairs),
            "char_accuracy": sum(Levenshtein.normalized_similarity(p, t) for p, t in pairs)
            / len(pairs),
            "exact": sum(p.strip() == t.strip() for p, t in pairs) / len(pairs),
            "examples": [{"prediction": p, "reference": t} for p, t in pairs[:3]],
        }
    return result


def held_out_sets(dirs: list[Path], s: VarySettings) -> dict[str, list[Sample]]:
    """Test (else val) transcriptions per family, at most eval_samples each; a family found in
    several folders is measured per folder, named family@difficulty (from its manifest)."""
    sets: dict[str, list[Sample]] = {}
    found: dict[str, int] = {}
    for d in dirs:
        for fam in s.families:
            xs = collect_samples([d], [fam], "test", is_transcription) or collect_samples(
                [d], [fam], "val", is_transcription
            )
            if xs:
                found[fam] = found.get(fam, 0) + 1
                sets[f"{fam}\t{d}"] = xs[: s.eval_samples]
    out = {}
    for key, xs in sets.items():
        fam, d = key.split("\t")
        out[fam if found[fam] == 1 else f"{fam}@{_difficulty(Path(d), fam)}"] = xs
    return dict(sorted(out.items()))


def _difficulty(folder: Path, family: str) -> str:
    """The generator's difficulty from a synthetic manifest, else the folder's name."""
    try:
        return json.loads((folder / "manifest.json").read_text())["families"][family]["difficulty"]
    except (OSError, KeyError, ValueError, TypeError):
        return folder.name
