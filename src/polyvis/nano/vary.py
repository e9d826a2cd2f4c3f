"""vary-nano: a vision encoder trained Vary-tiny style to transcribe document-like images.

The encoder's last-layer patch tokens are projected (LayerNorm + Linear) and put in front of the
transcript's tokens as `inputs_embeds` of a small causal LM built from a config (OPT in Vary-tiny,
Qwen2 here by default); every parameter trains on next-token loss over the transcript (OCR text,
LaTeX source, table markdown, chart data). The text's position varies at random in the images,
and with the decoding loss alone the encoder takes hundreds of steps to start localising
characters; an auxiliary CTC loss over the patch-grid columns (each column pooled over rows by a
learned attention) on single-line text gets it learning within a small budget. A markdown
table gets the same CTC head over its patch tokens in raster order (row by row, as a table is
read) against its cells' text: with the decoding loss alone the decoder wrote well-formed tables
with invented cells.

The encoder is saved (save_pretrained + its image processor), so a polyvis config lists it
as an encoder `path:` (layers: [-1], the layer the decoder read). With the BPE tokenizer the
decoder is saved too, with its tokenizer, in OUT/decoder: a causal LM that already reads the
encoder's tokens, which a config can name as its `llm: {path: ...}`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from safetensors.torch import save_file
from torch import nn

from polyvis.nano._common import (
    Sample,
    Settings,
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
from polyvis.nano.vary_tokenizer import BpeVocab, CharVocab

# The default encoder: a small ResNet (stem /4, a 64-channel stage, a 128-channel stage /2), an
# 8x8 grid of 128-d tokens at 64 px. On the same budget a from-scratch ViT of the same size barely
# learned to read (greedy char accuracy 0.24 on easy OCR after 1000 steps); this convnet reads
# easy OCR at 0.97 exact after 450 (docs/nano.md).
RESNET_NANO = {"model_type": "resnet", "embedding_size": 32, "hidden_sizes": [64, 128], "depths": [1, 2],
               "layer_type": "basic", "downsample_in_first_stage": False}  # fmt: skip
PROJECTOR_FILE = "projector.safetensors"
DECODER_NANO = {"model_type": "qwen2", "hidden_size": 128, "intermediate_size": 256,
                "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
                "max_position_embeddings": 512, "tie_word_embeddings": True}  # fmt: skip

# family -> (task name of the synthetic generator, question the generator and converters ask)
TRANSCRIPTION = {
    "ocr": ("read", "What does the text say?"),
    "latex": ("transcribe", "Write the LaTeX for the formula."),
    "table": ("markdown", "Transcribe the table as markdown."),
    "chart": ("to_table", "Give the data as a table."),
    "mixed": ("transcribe", "Read the signs."),
}
_PROMPTS = {prompt for _, prompt in TRANSCRIPTION.values()}


class VarySettings(Settings):
    """Everything that decides a vary-nano encoder (the experts cache hashes these)."""

    families: list[str] = Field(default_factory=lambda: ["ocr", "latex", "table", "chart"])
    init: str | None = None  # a checkpoint dir (CLIP: its vision tower) ...
    encoder: dict[str, Any] | None = None  # ... or a vision config (default RESNET_NANO)
    decoder: dict[str, Any] = Field(default_factory=lambda: dict(DECODER_NANO))
    tokenizer: Literal["chars", "bpe"] = "chars"
    bpe_vocab_size: int = Field(default=512, gt=260)
    size: int = Field(default=64, ge=16)
    steps: int = Field(default=450, gt=0)
    batch_size: int = Field(default=32, gt=0)
    lr: float = Field(default=2e-3, gt=0)
    weight_decay: float = Field(default=0.01, ge=0)
    warmup: float = Field(default=0.05, ge=0, lt=1)
    max_target_len: int = Field(default=64, gt=0)
    aux_ctc: float = Field(default=1.0, ge=0)  # weight of the auxiliary CTC loss (0 = off)
    aux_families: list[str] = Field(default_factory=lambda: ["ocr"])
    # LayerNorm before the projector's linear map; without it the projector is one linear map,
    # which a polyvis `linear` adapter can start from (OUT/decoder/projector.safetensors)
    projector_norm: bool = True
    eval_samples: int = Field(default=200, ge=0)  # held-out images per family decoded at the end
    seed: int = 0
    threads: int = Field(default=1, ge=1)


def is_transcription(rec: dict[str, Any], family: str) -> bool:
    """A record whose answer is the image's full text: the Vary-tiny target."""
    if family in TRANSCRIPTION:
        task, prompt = TRANSCRIPTION[family]
        return rec.get("task") == task or question_of(rec) == prompt
    return question_of(rec) in _PROMPTS


class VaryNano(nn.Module):
    """Encoder + projector + causal decoder, plus the auxiliary CTC head (per column, or per
    patch in raster order for tables)."""

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        entry: dict[str, Any],
        ctc_classes: int,
        projector_norm: bool = True,
    ):
        super().__init__()
        self.encoder, self.decoder = encoder, decoder
        self.prefix = entry["num_prefix_tokens"]
        self.grid = tuple(entry["grid"])
        self.kwargs = (
            {"interpolate_pos_encoding": True} if entry["interpolate_pos_encoding"] else {}
        )
        dim, width = entry["dim"], decoder.config.hidden_size
        norm = [nn.LayerNorm(dim)] if projector_norm else []
        self.proj = nn.Sequential(*norm, nn.Linear(dim, width))
        self.col_score = nn.Linear(dim, 1)
        self.col_head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, ctc_classes))

    def patches(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The last layer's patch tokens (B, N, D): what polyvis reads with layers [-1]."""
        out = self.encoder(pixel_values=pixel_values, output_hidden_states=True, **self.kwargs)
        h = out.hidden_states[-1]
        if h.dim() == 4:  # convolutional backbones
            h = h.flatten(2).transpose(1, 2)
        return h[:, self.prefix :]

    def column_logits(self, patches: torch.Tensor) -> torch.Tensor:
        """(B, N, D) -> (B, columns, classes): rows pooled by a learned attention per column."""
        b, _, d = patches.shape
        grid = patches.reshape(b, self.grid[0], self.grid[1], d)
        weights = self.col_score(grid).softmax(dim=1)
        return self.col_head((weights * grid).sum(dim=1))

    def decoder_inputs(self, patches: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        embed = self.decoder.get_input_embeddings()
        return torch.cat([self.proj(patches), embed(ids)], dim=1)


def build_vary(settings: VarySettings, vocab_size: int, ctc_classes: int) -> tuple[VaryNano, Any]:
    """The encoder (from init or config), a decoder for `vocab_size`, and the image processor."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from polyvis.config import EncoderSpec
    from polyvis.models.build import load_vision_backbone, make_image_processor
    from polyvis.models.encoders import describe

    if settings.init is not None and settings.encoder is not None:
        from polyvis.errors import ConfigError

        raise ConfigError(
            "encoder", "give either init (a checkpoint) or encoder (a config), not both"
        )
    if settings.init is not None:
        spec = EncoderSpec(name="vary-nano", path=settings.init, image_size=settings.size)
    else:
        cfg = dict(settings.encoder or RESNET_NANO)
        cfg["image_size"] = settings.size
        spec = EncoderSpec(name="vary-nano", config=cfg, image_size=settings.size)
    encoder = load_vision_backbone(spec, "encoder", torch.float32)
    if spec.config is not None:
        processor = _plain_processor(settings.size)
    else:  # a checkpoint keeps its own normalisation
        processor = make_image_processor(spec, encoder.config, "encoder")
    # The last hidden state, as patches() reads it (num_hidden_layers means blocks for a ViT but
    # stages, or nothing, for convolutional backbones).
    entry = describe(encoder, [-1], (settings.size, settings.size), "encoder")
    dcfg = dict(settings.decoder)
    dcfg.update(vocab_size=vocab_size, pad_token_id=0)
    try:
        decoder = AutoModelForCausalLM.from_config(
            AutoConfig.for_model(dcfg.pop("model_type"), **dcfg)
        )
    except (KeyError, TypeError, ValueError) as err:
        from polyvis.errors import ConfigError

        raise ConfigError("decoder", str(err).splitlines()[0]) from None
    return VaryNano(encoder, decoder, entry, ctc_classes, settings.projector_norm), processor


def _plain_processor(size: int) -> Any:
    """Resize to size x size, scale to [-1, 1]: what a document encoder trained here expects."""
    try:
        from transformers import ViTImageProcessorPil as Proc
    except ImportError:  # pragma: no cover - older transformers
        from transformers import ViTImageProcessor as Proc
    return Proc(size={"height": size, "width": size}, image_mean=[0.5] * 3, image_std=[0.5] * 3)


def _pad(seqs: list[list[int]], value: int) -> torch.Tensor:
    width = max(len(s) for s in seqs)
    return torch.tensor([s + [value] * (width - len(s)) for s in seqs], dtype=torch.long)


def table_cells(text: str) -> str | None:
    """The visible text of a markdown table in reading order (cells joined by spaces, the
    `---` rule left out), or None when the text is not a markdown table."""
    lines = text.split("\n")
    if len(lines) < 2 or not all(ln.startswith("|") and ln.endswith("|") for ln in lines):
        return None
    rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]
    return " ".join(c for row in rows if not all(set(c) <= {"-", ":"} for c in row) for c in row)


def _fits(text: str, positions: int) -> bool:
    # CTC needs a blank between two equal neighbours
    return bool(text) and len(text) + sum(a == b for a, b in zip(text, text[1:])) <= positions


def _ctc_target(
    text: str, grid: tuple[int, int], families_ok: bool, vocab: CharVocab
) -> tuple[str, list[int]] | None:
    """("columns", char ids) for one line of text that fits the grid's columns (read left to
    right, rows pooled); ("raster", char ids) for a markdown table whose cells fit the patch
    grid in raster order (row by row, as a table is read); else None."""
    if not families_ok:
        return None
    if "\n" not in text:
        return ("columns", vocab.encode(text)) if _fits(text, grid[1]) else None
    cells = table_cells(text)
    if cells is not None and _fits(cells, grid[0] * grid[1]):
        return "raster", vocab.encode(cells)
    return None


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
    import json

    try:
        return json.loads((folder / "manifest.json").read_text())["families"][family]["difficulty"]
    except (OSError, KeyError, ValueError, TypeError):
        return folder.name


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
    s = settings if isinstance(settings, VarySettings) else parse_settings(VarySettings, settings)
    dirs, out = [Path(d) for d in data_dirs], Path(out)
    t0 = time.perf_counter()
    with torch_threads(s.threads):
        train = collect_samples(dirs, s.families, "train", is_transcription)
        require_samples(train, dirs, f"transcription records of {','.join(s.families)}")
        texts = [x.text for x in train]
        vocab = CharVocab(texts) if s.tokenizer == "chars" else BpeVocab(texts, s.bpe_vocab_size)
        ctc_vocab = CharVocab([t for x in train if x.family in s.aux_families for t in [x.text]])
        torch.manual_seed(s.seed)
        model, processor = build_vary(s, len(vocab), len(ctc_vocab))
        model.train()
        paths, where = unique_images(train)
        pixels = load_pixels(paths, processor, progress)
        where_t = torch.tensor(where)
        targets, truncated = [], 0
        for x in train:
            ids = vocab.encode(x.text)
            truncated += len(ids) > s.max_target_len
            targets.append(
                [vocab.bos_id]
                + (ids[: s.max_target_len] if len(ids) > s.max_target_len else ids + [vocab.eos_id])
            )
        ctc = [
            _ctc_target(x.text, model.grid, x.family in s.aux_families, ctc_vocab) for x in train
        ]
        opt = torch.optim.AdamW(
            model.parameters(), lr=s.lr, weight_decay=s.weight_decay, betas=(0.9, 0.98)
        )
        gen = torch.Generator().manual_seed(s.seed)
        log: dict[str, list[float]] = {"loss": [], "decode_loss": [], "ctc_loss": []}
        t_train = time.perf_counter()
        with make_progress(progress) as bar:
            task = bar.add_task("vary-nano", total=s.steps, loss=float("nan"))
            # Mixed-family batches: within a batch the image is then the only thing that tells the
            # samples apart. With one-family batches (less padding) the decoder went on ignoring
            # the image (a table image read as an OCR word after 600 steps).
            for step, idx in enumerate(batches(len(train), s.batch_size, s.steps, gen)):
                for group in opt.param_groups:
                    group["lr"] = lr_at(step, s.steps, s.lr, s.warmup)
                loss, dec, aux = _step(model, pixels[where_t[idx]], [targets[i] for i in idx],
                                       [ctc[i] for i in idx], s.aux_ctc, vocab.pad_id)  # fmt: skip
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                log["loss"].append(loss.item())
                log["decode_loss"].append(dec)
                log["ctc_loss"].append(aux)
                shown = smooth(log["loss"][-20:])[-1]
                bar.update(task, advance=1, loss=shown)
                if callback is not None:
                    callback(step + 1, s.steps, shown)
        train_secs = time.perf_counter() - t_train
        evals = {}
        if s.eval_samples:
            sets = held_out_sets([Path(d) for d in eval_dirs] if eval_dirs is not None else dirs, s)
            if sets:
                evals = evaluate(model, vocab, sets, processor, s.max_target_len)
        out.mkdir(parents=True, exist_ok=True)
        model.encoder.save_pretrained(out)
        processor.save_pretrained(out)
        if isinstance(vocab, BpeVocab):
            # The decoder with its tokenizer is a causal LM that already reads this encoder's
            # tokens: a starting LM for models that list the encoder (`llm: {path: .../decoder}`).
            model.decoder.config.update(
                {"bos_token_id": vocab.bos_id, "eos_token_id": vocab.eos_id}
            )
            model.decoder.save_pretrained(out / "decoder")
            vocab.tok.save_pretrained(out / "decoder")
            # the map from the encoder's tokens to the decoder's inputs it was trained with
            state = {k: v.detach().contiguous() for k, v in model.proj.state_dict().items()}
            save_file(state, out / "decoder" / PROJECTOR_FILE)
    result = {
        "expert": "vary-nano",
        "settings": s.model_dump(),
        "data": [str(d) for d in dirs],
        "train_samples": len(train),
        "train_images": len(paths),
        "truncated_targets": truncated,
        "vocab_size": len(vocab),
        "params": {"encoder": count_params(model.encoder), "decoder": count_params(model.decoder)},
        "read_layer": -1,
        "final_loss": sum(log["loss"][-20:]) / len(log["loss"][-20:]),
        "final_decode_loss": sum(log["decode_loss"][-20:]) / len(log["decode_loss"][-20:]),
        "train_seconds": train_secs,
        "total_seconds": time.perf_counter() - t0,
        "eval": evals,
        "loss_curve": log["loss"],
        "decode_loss_curve": log["decode_loss"],
        "ctc_loss_curve": log["ctc_loss"],
    }
    write_json(out / "training_log.json", result)
    return result


def _step(
    model: VaryNano,
    pv: torch.Tensor,
    targets: list[list[int]],
    ctc: list[tuple[str, list[int]] | None],
    aux_weight: float,
    pad_id: int,
) -> tuple[torch.Tensor, float, float | None]:
    """One batch: decoding loss on the transcript (+ weighted CTC loss); returns the loss and
    its parts as numbers (the CTC part None when no sample had a CTC target)."""
    ids = _pad(targets, pad_id)
    text_mask = _pad([[1] * len(t) for t in targets], 0)
    patches = model.patches(pv)
    b, p = patches.shape[:2]
    labels = ids.masked_fill(text_mask == 0, -100)
    labels[:, 0] = -100  # the BOS is given, not predicted
    out = model.decoder(
        inputs_embeds=model.decoder_inputs(patches, ids),
        attention_mask=torch.cat([torch.ones(b, p, dtype=torch.long), text_mask], dim=1),
        labels=torch.cat([torch.full((b, p), -100, dtype=torch.long), labels], dim=1),
    )
    loss, aux = out.loss, None  # None: no sample of this batch has a CTC target
    if aux_weight > 0:
        for kind in ("columns", "raster"):
            rows = [i for i, t in enumerate(ctc) if t and t[0] == kind]
            if not rows:
                continue
            feats = patches[rows]
            logits = model.column_logits(feats) if kind == "columns" else model.col_head(feats)
            ctc_loss = _ctc_loss(logits, [ctc[i][1] for i in rows])  # type: ignore[index]
            aux = (aux or 0.0) + ctc_loss.item()
            loss = loss + aux_weight * ctc_loss
    return loss, out.loss.item(), aux


def _ctc_loss(logits: torch.Tensor, targets: list[list[int]]) -> torch.Tensor:
    """CTC of (B, T, classes) logits against each row's char ids (blank: the pad id)."""
    logp = logits.log_softmax(-1).transpose(0, 1)  # (T, B, C)
    return F.ctc_loss(
        logp,
        torch.tensor([c for t in targets for c in t]),
        torch.full((len(targets),), logp.shape[0], dtype=torch.long),
        torch.tensor([len(t) for t in targets]),
        blank=CharVocab.pad_id,
        zero_infinity=True,
    )
