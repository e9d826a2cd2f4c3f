"""What the training loop does differently when accelerate shards the model (FSDP, DeepSpeed).

With one process or DDP every process holds whole parameters, and none of this applies. Under
FSDP a process holds a shard of each parameter, so gradient clipping, checkpoints and the final
model gather through torch's distributed state-dict API; checkpoints keep the unsharded format
(the trainable weights by name, optimizer state by parameter index), so a sharded run resumes
from an unsharded run's checkpoint and the other way round.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from polyvis.config import TrainSection
from polyvis.errors import ConfigError

# Parts of parameter names that wrappers add (FSDP1 units, activation checkpointing, compile).
_WRAPPER_PARTS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


def _distributed_type(accelerator: Any) -> str:
    return str(getattr(accelerator, "distributed_type", "")).rsplit(".", 1)[-1]


def is_fsdp(accelerator: Any) -> bool:
    return _distributed_type(accelerator) == "FSDP"


def is_deepspeed(accelerator: Any) -> bool:
    return _distributed_type(accelerator) == "DEEPSPEED"


def is_sharded(accelerator: Any) -> bool:
    """FSDP or DeepSpeed: a process may not hold whole parameters."""
    return is_fsdp(accelerator) or is_deepspeed(accelerator)


def sharding_kind(accelerator: Any) -> str | None:
    """The sharding in use: "fsdp", "deepspeed", or None (one process or DDP)."""
    return "fsdp" if is_fsdp(accelerator) else "deepspeed" if is_deepspeed(accelerator) else None


def fsdp_requested() -> bool:
    """The launcher was given an FSDP config (accelerate's launcher sets this variable)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def shard_on_cpu(accelerator: Any) -> None:
    """Turn a CPU multi-process Accelerator into an FSDP one, with the launcher's FSDP settings.

    accelerate only shards on accelerator devices: on CPUs an FSDP launch would not shard (these
    processes would run DDP). torch's FSDP runs over gloo as well, so on CPUs the same config
    shards for real, which is how the FSDP configs are tested on machines without GPUs.
    """
    from accelerate import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    plugin = FullyShardedDataParallelPlugin()  # reads the FSDP_* variables the launcher set
    if accelerator.mixed_precision != "no":
        plugin.set_mixed_precision(accelerator.mixed_precision)
    accelerator.state.fsdp_plugin = plugin
    # every new AcceleratorState copies the process-wide PartialState: both must say FSDP
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    accelerator.state.distributed_type = DistributedType.FSDP


def check_sharding(accelerator: Any, train: TrainSection) -> None:
    """Refuse what polyvis does not do under DeepSpeed, naming the field (checked before work)."""
    if not is_deepspeed(accelerator):
        return
    steps = accelerator.state.deepspeed_plugin.deepspeed_config.get("gradient_accumulation_steps")
    if train.grad_accum != 1 or steps not in (1, "auto", None):
        raise ConfigError(
            "train.grad_accum",
            f"must be 1 with DeepSpeed, and so must the accelerate config's "
            f"gradient_accumulation_steps (here {train.grad_accum} and {steps}): DeepSpeed "
            "would accumulate and scale the loss a second time; raise train.batch_size instead",
        )
    if train.save_every:
        raise ConfigError(
            "train.save_every",
            "checkpoints are not supported with DeepSpeed (its optimizer state is partitioned "
            "across processes); use 0, or an FSDP config to resume runs",
        )


def wrap_units(accelerator: Any, model: nn.Module) -> None:
    """FSDP: one unit per transformer block of the LM and of every encoder.

    accelerate's transformer wrap policy takes the block classes from the top model's
    `_no_split_modules`, which names the LM's blocks only; the encoders' blocks would all sit in
    the root unit and be gathered at once. An accelerate config that names its classes
    (fsdp_transformer_layer_cls_to_wrap) is followed as it is.
    """
    from transformers import PreTrainedModel

    plugin = accelerator.state.fsdp_plugin
    if plugin.transformer_cls_names_to_wrap is not None:
        return
    present = {type(m).__name__ for m in model.modules()}
    names: set[str] = set()
    for m in model.modules():
        if isinstance(m, PreTrainedModel):
            names.update(n for n in (type(m)._no_split_modules or []) if n in present)
    plugin.transformer_cls_names_to_wrap = sorted(names)


def clip_parameters(accelerator: Any, model: nn.Module, trainable: list[nn.Parameter]):
    """What accelerator.clip_grad_norm_ is given: under FSDP the prepared model's own parameter
    list (its norm then covers every shard, not this process's alone)."""
    return model.parameters() if is_fsdp(accelerator) else trainable


def clean_name(name: str) -> str:
    for part in _WRAPPER_PARTS:
        name = name.replace(part, "")
    return name


def _optimizer_names(accelerator: Any, model: nn.Module, optimizer: Any) -> list[str]:
    """The parameter name behind each optimizer index (param_groups order, as state_dict counts)."""
    names = {id(p): clean_name(n) for n, p in accelerator.unwrap_model(model).named_parameters()}
    inner = getattr(optimizer, "optimizer", optimizer)
    return [names[id(p)] for group in inner.param_groups for p in group["params"]]


def gather_trainable(
    accelerator: Any, model: nn.Module, optimizer: Any
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Full trainable weights and optimizer state, on the main process (empty elsewhere), in the
    unsharded checkpoint format. Every process must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    inner = getattr(optimizer, "optimizer", optimizer)
    options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
    weights, optim = get_state_dict(model, inner, options=options)
    if not accelerator.is_main_process:
        return {}, {}
    order = _optimizer_names(accelerator, model, optimizer)
    index = {name: i for i, name in enumerate(order)}
    # named_parameters() lists a tied weight once, under its first name, as unsharded runs save it
    tensors = {n: weights[n].contiguous() for n in order}
    state = {
        "state": {index[n]: v for n, v in optim["state"].items() if n in index},
        "param_groups": [
            {**g, "params": [index[n] for n in g["params"] if n in index]}
            for g in optim["param_groups"]
        ],
    }
    return tensors, state


def load_trainable(
    accelerator: Any,
    model: nn.Module,
    optimizer: Any,
    tensors: dict[str, torch.Tensor],
    optim_state: dict[str, Any],
) -> None:
    """Load full trainable weights and an index-keyed optimizer state into a sharded model: each
    process keeps its shard. Every process must call it, each with the whole checkpoint."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    order = _optimizer_names(accelerator, model, optimizer)
    by_name = {
        "state": {order[int(i)]: v for i, v in optim_state["state"].items()},
        "param_groups": [
            {**g, "params": [order[int(i)] for i in g["params"]]}
            for g in optim_state["param_groups"]
        ],
    }
    inner = getattr(optimizer, "optimizer", optimizer)
    set_state_dict(
        model,
        inner,
        model_state_dict=tensors,
        optim_state_dict=by_name,
        options=StateDictOptions(full_state_dict=True, strict=False),
    )


def full_model(accelerator: Any, model: nn.Module, rebuild) -> nn.Module | None:
    """The whole trained model on the main process (None elsewhere). Every process must call it.

    Sharded: the weights are gathered and loaded into `rebuild()`, a fresh copy of the model as
    training started (same stage, LoRA included), since the prepared one holds shards only.
    """
    if not is_sharded(accelerator):
        return accelerator.unwrap_model(model) if accelerator.is_main_process else None
    state = accelerator.get_state_dict(model)
    if not accelerator.is_main_process:
        return None
    whole = rebuild()
    whole.load_state_dict(state)
    return whole
