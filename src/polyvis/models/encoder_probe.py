"""What an encoder yields, learnt by running its backbone once on a blank image: each selected
layer's patch grid, width and prefix (class, register) tokens, or a feature-map layout; its
first runs' failures as one-line errors naming the config field."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from transformers import PreTrainedModel

from polyvis.models.encoders import (
    feature_map_layout,
    forward_params,
    hidden_states_of,
    patch_size_of,
    run_backbone,
)


@torch.no_grad()
def hidden_state_count(backbone: PreTrainedModel, image_size: tuple[int, int]) -> int:
    """How many hidden states the backbone returns (configs without num_hidden_layers)."""
    dummy = torch.zeros(1, 3, *image_size, dtype=next(backbone.parameters()).dtype)
    return len(run_backbone(backbone, dummy, forward_params(backbone)).hidden_states)


@contextmanager
def probe_errors(field: str, size: tuple[int, int], size_given: bool) -> Iterator[None]:
    """The backbone's first runs (on a blank image of the processor's size) as one line: a size
    its position embeddings cannot follow (Hiera), or a forward that needs other inputs."""
    from polyvis.errors import ConfigError

    try:
        yield
    except ConfigError:
        raise
    except (RuntimeError, ValueError, TypeError, IndexError) as err:
        lines = [x.strip() for x in str(err).splitlines() if x.strip()]
        first = lines[0] if lines else type(err).__name__
        hint = (
            "leave image_size out to use the checkpoint's own size"
            if size_given
            else "this backbone does not work as a polyvis encoder"
        )
        raise ConfigError(
            f"{field}.image_size" if size_given else f"{field}.path",
            f"the backbone fails on {size[0]}x{size[1]} images ({first}); {hint}",
        ) from None


@torch.no_grad()
def describe(
    backbone: PreTrainedModel, layers: list[int], image_size: tuple[int, int], field: str
) -> dict:
    """Probe the backbone once to learn each selected layer's grid, width and prefix tokens."""
    from polyvis.errors import ConfigError

    config = backbone.config
    params = forward_params(backbone)
    cfg_size = getattr(config, "image_size", None)
    interpolate = cfg_size is not None and tuple(image_size) != (
        (cfg_size, cfg_size) if isinstance(cfg_size, int) else tuple(cfg_size)
    )
    kwargs = (
        {"interpolate_pos_encoding": True}
        if interpolate and "interpolate_pos_encoding" in params
        else {}
    )
    param = next(backbone.parameters())
    dummy = torch.zeros(
        1, getattr(config, "num_channels", 3), *image_size, dtype=param.dtype, device=param.device
    )
    was_training = backbone.training
    backbone.eval()
    out = run_backbone(backbone, dummy, params, **kwargs)
    feature_maps = feature_map_layout(out, layers) if out.hidden_states else None
    if feature_maps is not None:
        # told apart by values: a random image, as zeros can make both layouts match
        gen = torch.Generator().manual_seed(0)
        noise = torch.rand(dummy.shape, generator=gen).to(dummy)
        feature_maps = feature_map_layout(run_backbone(backbone, noise, params, **kwargs), layers)
    hidden = hidden_states_of(out, feature_maps)
    backbone.train(was_training)
    shapes = {tuple(hidden[i].shape[1:]) for i in layers}
    if len(shapes) != 1:
        raise ConfigError(
            field,
            f"selected layers have different shapes {sorted(shapes)}; pick layers of one stage",
        )
    shape = shapes.pop()
    if len(shape) == 3:  # (C, H, W)
        dim, grid, prefix = shape[0], (shape[1], shape[2]), 0
    else:
        n, dim = shape
        patch = patch_size_of(config)
        if patch is not None:
            left = (image_size[0] % patch[0], image_size[1] % patch[1])
            if any(left):  # the patch embedding's stride would drop the last rows and columns
                h, w = image_size
                raise ConfigError(
                    f"{field.removesuffix('.layers')}.image_size",
                    f"{h}x{w} is not a multiple of the patch size {patch[0]}x{patch[1]}: the "
                    f"last {left[0]} rows and {left[1]} columns of pixels would never be seen; "
                    f"use a multiple (e.g. {h - left[0] or patch[0]}x{w - left[1] or patch[1]})",
                )
            grid = (image_size[0] // patch[0], image_size[1] // patch[1])
        else:
            side = int(round(n**0.5))
            if side * side != n:
                raise ConfigError(
                    field, f"cannot tell the patch grid of {n} tokens (no patch_size in the config)"
                )
            grid = (side, side)
        prefix = n - grid[0] * grid[1]
        if prefix < 0:
            raise ConfigError(field, f"backbone gives {n} tokens, fewer than its {grid} patch grid")
    return {
        "layers": list(layers),
        "num_prefix_tokens": int(prefix),
        "grid": [int(grid[0]), int(grid[1])],
        "dim": int(dim),
        "image_size": [int(image_size[0]), int(image_size[1])],
        "interpolate_pos_encoding": bool(kwargs),
        # only where used, so other backbones' saved configs stay as they were
        **({"feature_maps": feature_maps} if feature_maps else {}),
    }
