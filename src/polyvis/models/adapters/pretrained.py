"""A pretrained projector as the adapter's starting weights: `model.adapter.init_from`.

LLaVA's second stage starts from the projector its first stage trained (`mm_projector`); Vary
starts a mixed model from the projector its vision vocabulary was trained with. `init_from`
names a safetensors file of projector weights; with `init_encoder` the projector was trained on
that encoder's features alone, so it fills that encoder's columns of a linear adapter over
concat-channel features and the other encoders' columns start at zero: the first step then feeds
the LM what it learnt to read, and the other encoders' columns grow as training finds them useful.

The two keys only say where the weights start: build_model strips them before the model's
config is made, so a saved model loads without the file.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from polyvis.config import check_adapter_init
from polyvis.errors import ConfigError
from polyvis.models.fusion.common import in_width

FIELD = "model.adapter.init_from"


def load_projector(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a safetensors file, as one-line ConfigErrors naming init_from."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise ConfigError(FIELD, f"{path}: projector weights not found")
    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises its own error types for a bad header
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(FIELD, f"{path}: not a safetensors file ({first})") from None


def _natural(key: str) -> list[Any]:
    """'mlp.10.weight' sorts after 'mlp.2.weight' (strings and numbers alternate, so comparable)."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]


def _split(key: str) -> tuple[str, str]:
    prefix, _, leaf = key.rpartition(".")
    return prefix, leaf


def _grouped(keys: list[str]) -> list[tuple[str, list[str]]]:
    """Keys by module (the part before the last dot), modules in the order first seen."""
    groups: dict[str, list[str]] = {}
    for key in keys:
        prefix, leaf = _split(key)
        groups.setdefault(prefix, []).append(leaf)
    return list(groups.items())


def _describe(shapes: dict[str, tuple[int, ...]], limit: int = 8) -> str:
    items = [f"{k} {tuple(v)}" for k, v in list(shapes.items())[:limit]]
    more = f", ... ({len(shapes)} tensors)" if len(shapes) > limit else ""
    return ", ".join(items) + more


def match_projector(
    state: dict[str, Tensor], targets: dict[str, tuple[int, ...]], path: str | Path
) -> dict[str, Tensor]:
    """Map the file's tensors onto `targets` (parameter name -> shape, in module order).

    Exact keys first; otherwise module by module in order (the file's modules in natural order,
    e.g. `0.weight, 0.bias` -> `proj.weight, proj.bias`), with the same tensor names inside
    each module and equal shapes. Anything else is an error that shows both sides.
    """
    got = {k: tuple(state[k].shape) for k in sorted(state, key=_natural)}
    if set(got) == set(targets):
        if all(got[k] == tuple(shape) for k, shape in targets.items()):
            return {k: state[k] for k in targets}
    else:
        ours = _grouped(list(targets))
        theirs = _grouped(list(got))
        if len(ours) == len(theirs) and all(
            sorted(a[1]) == sorted(b[1]) for a, b in zip(ours, theirs)
        ):
            out = {}
            for (mine, leaves), (other, _) in zip(ours, theirs):
                for leaf in leaves:
                    name = f"{mine}.{leaf}" if mine else leaf
                    src = f"{other}.{leaf}" if other else leaf
                    out[name] = state[src]
            if all(tuple(out[k].shape) == tuple(s) for k, s in targets.items()):
                return out
    raise ConfigError(
        FIELD,
        f"{path}: the tensors do not fit the adapter: expected {_describe(targets)}; "
        f"got {_describe(got)}",
    )


@torch.no_grad()
def apply_adapter_init(model: Any, fusion: dict[str, Any], adapter: dict[str, Any]) -> None:
    """Set `model.adapter`'s weights from `adapter['init_from']` (nothing when it is absent)."""
    if adapter.get("init_from") is None:
        return
    infos = model.fusion.encoders
    names = [e.name for e in infos]
    check_adapter_init(fusion, adapter, names)
    path = adapter["init_from"]
    state = load_projector(path)
    encoder = adapter.get("init_encoder")
    params = dict(model.adapter.named_parameters())
    if encoder is None:
        targets = {k: tuple(p.shape) for k, p in params.items()}
        for key, tensor in match_projector(state, targets, path).items():
            params[key].copy_(tensor)
        return
    # the projector saw only this encoder's channels: its slice of the concatenation
    widths = [in_width(e) for e in infos]
    k = names.index(encoder)
    lo, hi = sum(widths[:k]), sum(widths[: k + 1])
    linear = model.adapter.proj
    targets = {"proj.weight": (linear.out_features, hi - lo), "proj.bias": (linear.out_features,)}
    mapped = match_projector(state, targets, path)
    linear.weight.zero_()
    linear.weight[:, lo:hi] = mapped["proj.weight"]
    linear.bias.copy_(mapped["proj.bias"])
