"""What a polyvis model must be to become a transformers LLaVA checkpoint: one ViT-like tower read
as a token sequence, the identity fusion, a Linear-GELU-Linear (or linear) projector, no tiles,
at most one prefix token. `check_exportable` says why not in one line (ConfigError), or gives the
LLaVA settings the model maps to (polyvis.export.llava builds the checkpoint)."""

from __future__ import annotations

from typing import Any

from polyvis.errors import ConfigError


def lora_message(model_dir: str = "MODEL") -> str:
    return (
        f"has a LoRA adapter (lora/); merge it first with `polyvis merge-lora {model_dir} --out "
        "MERGED`, then export MERGED"
    )


def check_exportable(config: Any) -> dict[str, Any]:
    """Why a PolyVisConfig cannot be LLaVA (ConfigError), else the LLaVA settings it maps to."""
    encoders = config.encoders
    for k, entry in enumerate(encoders):
        if entry.get("tiling"):
            raise ConfigError(
                f"model.encoders[{k}].tiling",
                "not exportable: LLaVA has no tiles, and LLaVA-NeXT's AnyRes lays them out "
                "differently (one stitched grid, padding rows cut, a learned newline per row; "
                "polyvis keeps whole tiles, tile after tile), so no exact mapping exists",
            )
    if len(encoders) != 1:
        names = ", ".join(e["name"] for e in encoders)
        raise ConfigError(
            "model.encoders",
            f"LLaVA has one vision tower; this model fuses {len(encoders)} encoders ({names})",
        )
    entry = encoders[0]
    check_vit_tower(entry)
    fusion = dict(config.fusion)
    if fusion.get("type") != "concat-channel" or fusion.get("proj_dim") is not None:
        raise ConfigError(
            "model.fusion",
            f"LLaVA feeds the tower's features straight to the projector; fusion {fusion} is not the "
            "identity (use concat-channel without proj_dim)",
        )
    if fusion.get("grid") is not None and list(fusion["grid"]) != list(entry["grid"]):
        raise ConfigError(
            "model.fusion.grid", f"{fusion['grid']} resamples the {entry['grid']} patch grid"
        )
    adapter = dict(config.adapter)
    kind = adapter.get("type")
    if kind == "mlp" and adapter.get("depth", 2) == 2:
        act, bias = "gelu", True
    elif kind == "linear":
        act, bias = "linear", bool(adapter.get("bias", True))
    else:
        raise ConfigError(
            "model.adapter",
            f"LLaVA's projector is Linear-GELU-Linear; adapter {adapter} cannot be expressed "
            "(export needs mlp with depth 2, or linear)",
        )
    prefix = int(entry.get("num_prefix_tokens", 0))
    if prefix not in (0, 1):
        raise ConfigError(
            "model.encoders[0]",
            f"encoder {entry['name']!r} puts {prefix} prefix tokens (class + registers) before its "
            "patches; LLaVA can drop one class token ('default') or none ('full')",
        )
    if entry.get("interpolate_pos_encoding"):
        raise ConfigError(
            "model.encoders[0].image_size",
            f"encoder {entry['name']!r} runs at {entry['image_size']} with interpolated position "
            "embeddings; LLaVA runs its tower at the config's image size",
        )
    layers = list(entry["layers"])
    depth = int(entry["config"].get("num_hidden_layers", max(layers)))
    feature_layer: int | list[int] = -1 if layers == [depth] else layers
    return {
        "vision_feature_layer": feature_layer,
        "vision_feature_select_strategy": "default" if prefix == 1 else "full",
        "projector_hidden_act": act,
        "multimodal_projector_bias": bias,
        "num_additional_image_tokens": prefix,
    }


def check_vit_tower(entry: dict[str, Any]) -> None:
    """LLaVA's vision tower is run on pixel_values alone and read as a ViT's token sequence
    (hidden_states[layer], prefix tokens dropped): refuse, in one line, backbones it cannot run
    that way, which polyvis reads by other means."""
    vision = entry.get("config") or {}
    kind = vision.get("model_type", "?")
    why = None
    if kind.startswith("siglip2"):
        why = "its forward needs the patch layout (spatial_shapes) that LLaVA does not pass"
    elif entry.get("feature_maps"):
        why = "polyvis reads its feature maps (reshaped_hidden_states), not a token sequence"
    elif "hidden_size" not in vision:
        why = "a convolutional backbone gives feature maps, not a ViT's token sequence"
    if why is not None:
        raise ConfigError(
            "model.encoders[0]",
            f"encoder {entry['name']!r} ({kind}) cannot be LLaVA's vision tower: {why}",
        )
