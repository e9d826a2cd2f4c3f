"""vary-nano's training loss: next-token loss on the transcript, plus the auxiliary CTC loss.

The CTC head reads one line of text along the patch grid's columns (each column's rows pooled
by a learned attention), and a markdown table's cells along every patch in raster order (row by
row, as a table is read). Text sits at random positions in the images; the decoding loss alone
leaves the encoder without a local signal for hundreds of steps, and writes tables with invented
cells (docs/nano.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from polyvis.nano.vary_model import VaryNano
from polyvis.nano.vary_tokenizer import CharVocab

# (kind, char ids): "columns" for one line of text, "raster" for a table's cells
CtcTarget = tuple[str, list[int]]


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


def ctc_target(
    text: str, grid: tuple[int, int], families_ok: bool, vocab: CharVocab
) -> CtcTarget | None:
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


def batch_loss(
    model: VaryNano,
    pv: torch.Tensor,
    targets: list[list[int]],
    ctc: list[CtcTarget | None],
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
