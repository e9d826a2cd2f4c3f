"""Linear probes in closed form: ridge regression on one-hot labels, solved in the dual.

A probe is a linear classifier on frozen features: the class with the largest ridge output
wins. Features are standardised on the training images; the intercept is left unpenalised
(features centred on the probe's own training images). The ridge strength is picked per
probe from a fixed grid on an inner split of the training images (every fifth one held out),
then the probe is refitted on all its training images and scored on val. Everything is
deterministic: no random numbers, float64 linear algebra.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

# Ridge strengths, as multiples of the centred features' mean squared norm (the centred
# kernel's mean diagonal).
LAMBDAS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)


@dataclass
class Task:
    """One probe: its training and val images (row indices into the features) and their labels."""

    name: str
    train: list[int]
    train_labels: list[str]
    val: list[int]
    val_labels: list[str]


@dataclass
class Score:
    correct: int
    n: int
    lam: float  # the chosen ridge strength (relative)


def standardise(feats: torch.Tensor, train_rows: int) -> torch.Tensor:
    """Features z-scored by the first `train_rows` rows' mean and std (float32)."""
    x = feats.float()
    mean = x[:train_rows].mean(0)
    std = x[:train_rows].std(0).clamp_min(1e-6)
    return (x - mean) / std


class _Fit:
    """Ridge fits on training rows A, read out on rows B, for any number of label sets and
    strengths. Solved in the dual (the kernel's eigendecomposition) when there are more features
    than training rows, else in the primal (the covariance's); the two give the same fit."""

    def __init__(self, z: torch.Tensor, a: list[int], b: list[int], gram: torch.Tensor | None):
        # long even when empty (an inner split of under 5 training rows holds none out)
        ia, ib = torch.tensor(a, dtype=torch.long), torch.tensor(b, dtype=torch.long)
        if gram is not None:  # dual: the kernel of features centred on A's mean
            k_aa, k_ba = gram[ia][:, ia], gram[ib][:, ia]
            col = k_aa.mean(0)
            k_aa = k_aa - col[None, :] - col[:, None] + col.mean()
            self.read = k_ba - col[None, :] - k_ba.mean(1, keepdim=True) + col.mean()
            self.w, self.q = torch.linalg.eigh(k_aa)
        else:  # primal
            za = z[ia].double()
            mean = za.mean(0)
            self.centred = za - mean
            self.read = z[ib].double() - mean
            self.w, self.q = torch.linalg.eigh(self.centred.T @ self.centred)
        self.dual = gram is not None
        self.scale = float(self.w.clamp_min(0).sum() / len(a)) or 1.0

    def predict(self, labels: Sequence[str], lam: float) -> list[str]:
        classes = sorted(set(labels))
        index = {c: i for i, c in enumerate(classes)}
        y = torch.zeros(len(labels), len(classes), dtype=torch.float64)
        y[torch.arange(len(labels)), torch.tensor([index[c] for c in labels])] = 1.0
        mean = y.mean(0)
        rhs = y - mean if self.dual else self.centred.T @ (y - mean)
        coef = self.q @ ((self.q.T @ rhs) / (self.w.clamp_min(0) + lam * self.scale)[:, None])
        out = self.read @ coef + mean
        return [classes[i] for i in out.argmax(1).tolist()]


def _hits(pred: Sequence[str], truth: Sequence[str]) -> int:
    return sum(p == t for p, t in zip(pred, truth))


def score_tasks(z: torch.Tensor, tasks: Sequence[Task]) -> dict[str, Score]:
    """Each task's val accuracy (as counts) on standardised features `z`, with its ridge
    strength chosen on an inner split. Tasks with the same training rows share the
    eigendecompositions."""
    gram = (z @ z.T).double() if z.shape[1] >= z.shape[0] else None
    groups: dict[tuple[int, ...], list[Task]] = {}
    for t in tasks:
        groups.setdefault(tuple(t.train), []).append(t)
    out: dict[str, Score] = {}
    for rows, group in groups.items():
        inner = [i for i in range(len(rows)) if i % 5 != 4]
        held = [i for i in range(len(rows)) if i % 5 == 4]
        pick = _Fit(z, [rows[i] for i in inner], [rows[i] for i in held], gram)
        full = {}  # the refit on all training rows, per distinct val set
        for t in group:
            labels_in = [t.train_labels[i] for i in inner]
            truth = [t.train_labels[i] for i in held]
            # the largest strength among the best on the inner split (ties go to simpler)
            acc = [_hits(pick.predict(labels_in, lam), truth) for lam in LAMBDAS]
            lam = max(lam for lam, a in zip(LAMBDAS, acc) if a == max(acc))
            key = tuple(t.val)
            if key not in full:
                full[key] = _Fit(z, list(rows), list(t.val), gram)
            pred = full[key].predict(t.train_labels, lam)
            out[t.name] = Score(_hits(pred, t.val_labels), len(t.val), lam)
    return out


def majority(task: Task) -> Score:
    """The most common training label, predicted for every val image (ties: the first sorted)."""
    counts: dict[str, int] = {}
    for c in task.train_labels:
        counts[c] = counts.get(c, 0) + 1
    top = min(counts, key=lambda c: (-counts[c], c))
    return Score(sum(v == top for v in task.val_labels), len(task.val_labels), 0.0)
