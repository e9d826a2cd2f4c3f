"""What each stage trains: align (fusion, adapter, boundary tokens) and finetune (+ LLM, LoRA)."""

from __future__ import annotations

from typing import Any

from torch import nn

from polyvis.config import TrainSection
from polyvis.errors import ConfigError
from polyvis.models.modeling import PolyVisForConditionalGeneration

LORA_DIR = "lora"
DEFAULT_LORA = {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"}


def _lora_number(opts: dict[str, Any], key: str, kind: type) -> Any:
    try:
        return kind(opts[key])
    except (TypeError, ValueError):
        raise ConfigError(
            f"train.lora.{key}",
            f"must be a{'n integer' if kind is int else ' number'}, got {opts[key]!r}",
        ) from None


def _linear_names(lm: nn.Module) -> list[str]:
    """The distinct short names of the LM's linear layers: what target_modules usually lists."""
    return sorted({n.rsplit(".", 1)[-1] for n, m in lm.named_modules() if isinstance(m, nn.Linear)})


def _check_targets(lm: nn.Module, targets: Any) -> None:
    """Every listed name must match a module (peft's rule: the full name or its last parts);
    peft itself only complains when none matches, so one typo in a list is silently skipped."""
    if not isinstance(targets, (list, tuple)) or not all(isinstance(t, str) for t in targets):
        return  # a regex or "all-linear": peft checks it
    names = [n for n, _ in lm.named_modules()]
    missing = [t for t in targets if not any(n == t or n.endswith(f".{t}") for n in names)]
    if missing:
        raise ConfigError(
            "train.lora.target_modules",
            f"{missing} not found in the language model; "
            f"its linear layers: {', '.join(_linear_names(lm))}",
        )


def apply_lora(model: PolyVisForConditionalGeneration, options: dict[str, Any]) -> None:
    """Wrap the language model in peft LoRA adapters (only the adapters train)."""
    from peft import LoraConfig, get_peft_model

    opts = {**DEFAULT_LORA, **options}
    unknown = set(opts) - set(DEFAULT_LORA)
    if unknown:
        raise ConfigError(
            f"train.lora.{sorted(unknown)[0]}", f"unknown option; valid: {', '.join(DEFAULT_LORA)}"
        )
    _check_targets(model.language_model, opts["target_modules"])
    try:
        config = LoraConfig(
            r=_lora_number(opts, "r", int),
            lora_alpha=_lora_number(opts, "alpha", int),
            lora_dropout=_lora_number(opts, "dropout", float),
            target_modules=opts["target_modules"],
            task_type="CAUSAL_LM",
        )
        model.language_model = get_peft_model(model.language_model, config)
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:  # peft's NoMatchingPeftModuleError is a ValueError
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if "target" not in reason.lower():
            raise ConfigError("train.lora", reason) from None
        linear = ", ".join(_linear_names(model.language_model))
        raise ConfigError(
            "train.lora.target_modules", f"{reason} (the language model's linear layers: {linear})"
        ) from None


def has_lora(model: PolyVisForConditionalGeneration) -> bool:
    return hasattr(model.language_model, "peft_config")


def configure_stage(model: PolyVisForConditionalGeneration, train: TrainSection) -> None:
    """Freeze / unfreeze by stage; LoRA (finetune only) leaves the LLM's base weights frozen."""
    if train.stage == "align":
        if train.lora:
            raise ConfigError(
                "train.lora",
                "LoRA trains the LLM, which the align stage keeps frozen; use stage: finetune",
            )
        model.set_trainable(encoders=train.unfreeze_encoders, projector=True, llm=False)
        return
    model.set_trainable(encoders=train.unfreeze_encoders, projector=True, llm=not train.lora)
    if train.lora:
        apply_lora(model, train.lora)  # peft freezes the base LM and adds trainable adapters
    if train.gradient_checkpointing:
        model.language_model.gradient_checkpointing_enable()
        if hasattr(model.language_model, "enable_input_require_grads"):
            model.language_model.enable_input_require_grads()


def parameter_groups(
    model: PolyVisForConditionalGeneration, train: TrainSection
) -> list[dict[str, Any]]:
    """Trainable parameters in groups with their own learning rates (no decay on norms, biases)."""
    lrs = {
        "projector": train.lr,
        "llm": train.lr_llm if train.lr_llm is not None else train.lr,
        "encoders": train.lr_encoders if train.lr_encoders is not None else train.lr,
    }
    roles = {
        "encoders": model.encoders,
        "projector": nn.ModuleList([model.fusion, model.adapter, model.query_embeds]),
        "llm": model.language_model,
    }
    groups = []
    boundary = model.image_boundary_embeds
    for role, module in roles.items():
        decay, no_decay = [], []
        for name, p in module.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
        if role == "projector" and boundary.requires_grad:
            no_decay.append(boundary)
        for params, wd in ((decay, train.weight_decay), (no_decay, 0.0)):
            if params:
                groups.append({"params": params, "lr": lrs[role], "weight_decay": wd, "role": role})
    if not groups:
        raise ConfigError("train.stage", "nothing to train: every parameter is frozen")
    return groups
