"""Start a run from a document expert's projector, as Vary starts from its vision vocabulary.

vary-nano's decoder (every nano run's LM) was trained on vary-nano's tokens through one linear
map, saved as `<vary-nano>/decoder/projector.safetensors`. A run whose adapter is `linear` over
`concat-channel` features can start with that map on the expert's channels and zeros on the
other encoders' channels: its first step then feeds the LM what it learnt to read, and the
other encoders' columns grow from zero as training finds them useful. A freshly initialised
adapter instead left both the expert alone and the mixed model reading nothing after a 300-step
align stage, and the mixed model relearnt reading more slowly (docs/nano.md).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from polyvis.errors import ConfigError


def _unfit(fusion: dict[str, Any], adapter: dict[str, Any]) -> tuple[str, str] | None:
    """(field, why) when a model with this fusion and adapter cannot start from a projector."""
    if fusion.get("type") != "concat-channel" or fusion.get("proj_dim"):
        return "model.fusion", "a projector start needs concat-channel without proj_dim"
    if adapter.get("type") != "linear" or adapter.get("bias") is False:
        return "model.adapter", "a projector start needs a linear adapter with a bias"
    return None


def projector_start(config: dict[str, Any], encoder: str, projector: str | Path, out: Path) -> Path:
    """Build the model of `config`, set its linear adapter from `projector` (keys `0.weight`,
    `0.bias`: an nn.Sequential holding one nn.Linear) on `encoder`'s channels and zero
    elsewhere, and save it to `out` (a `train.init_from` directory)."""
    from safetensors.torch import load_file

    from polyvis.config import load_config
    from polyvis.models.build import build_model, quiet_transformers, save_model
    from polyvis.models.fusion.common import in_width

    cfg = load_config(config)
    unfit = _unfit(cfg.model.fusion, cfg.model.adapter)
    if unfit:
        raise ConfigError(*unfit)
    names = [e.name for e in cfg.model.encoders]
    if encoder not in names:
        raise ConfigError("model.encoders", f"no encoder {encoder!r} (have {', '.join(names)})")
    path = Path(projector)
    if not path.is_file():
        raise ConfigError("start.projector", f"{path}: projector weights not found")
    state = load_file(str(path))
    # the run's seed: the new weights (image-boundary embeddings, ...) are the same every time
    torch.manual_seed(cfg.train.seed)
    with quiet_transformers():
        model, processor = build_model(cfg)
    infos = model.fusion.encoders
    k = names.index(encoder)
    lo = sum(in_width(e) for e in infos[:k])
    hi = lo + in_width(infos[k])
    linear = model.adapter.proj
    weight, bias = state.get("0.weight"), state.get("0.bias")
    if weight is None or bias is None or tuple(weight.shape) != (linear.out_features, hi - lo):
        got = None if weight is None else tuple(weight.shape)
        raise ConfigError(
            "start.projector",
            f"{path}: expected 0.weight of shape {(linear.out_features, hi - lo)} and 0.bias, "
            f"got {got}",
        )
    with torch.no_grad():
        linear.weight.zero_()
        linear.weight[:, lo:hi] = weight
        linear.bias.copy_(bias)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with quiet_transformers():
        save_model(model, processor, tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)  # a reader never sees half a model
    return out


def expert_start(config: dict[str, Any]) -> dict[str, Any] | None:
    """{"encoder", "projector"} when `config` can start from an expert's projector: its LM is
    the decoder saved inside one of its encoders' directories (`<encoder>/decoder`, as
    vary-nano saves it) next to the projector it was trained with, the fusion is concat-channel
    and the adapter linear; otherwise None (the adapter starts from random weights)."""
    from polyvis.nano.vary import PROJECTOR_FILE

    model = config.get("model", {})
    if _unfit(model.get("fusion") or {}, model.get("adapter") or {}):
        return None
    lm = (model.get("llm") or {}).get("path")
    if not lm or not (Path(lm) / PROJECTOR_FILE).is_file():
        return None
    for enc in model.get("encoders", []):
        if enc.get("path") and Path(enc["path"]).resolve() == Path(lm).resolve().parent:
            return {"encoder": enc["name"], "projector": str(Path(lm) / PROJECTOR_FILE)}
    return None
