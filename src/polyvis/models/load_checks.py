"""What a checkpoint must be for polyvis to build on it, checked when it loads: one-line errors
naming the config field, where transformers would fail later or not at all (a missing local
path read as a hub id, a language model given as an encoder, a tokenizer past the LM's
vocabulary, an encoder LM that attends both ways, an LM path that holds no causal LM)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, PretrainedConfig

from polyvis.config import EncoderSpec, LLMSpec
from polyvis.errors import ConfigError
from polyvis.models.encoders import vision_config_of
from polyvis.models.tokenizer import IMAGE_TOKENS

# Attributes every vision config in transformers has at least one of; a config without them is
# still a vision model when transformers lists its type among the image models (timm_wrapper).
_VISION_ATTRS = ("num_channels", "image_size", "patch_size")
_VISION_MAPPINGS = ("IMAGE", "IMAGE_CLASSIFICATION", "BACKBONE", "ZERO_SHOT_IMAGE_CLASSIFICATION")
_OTHER_MAPPINGS = {  # audio first: speech-to-text models (whisper) are also seq2seq LMs
    "an audio model": ("CTC", "AUDIO_CLASSIFICATION", "SPEECH_SEQ_2_SEQ"),
    "a language model": ("CAUSAL_LM", "MASKED_LM", "SEQ_TO_SEQ_CAUSAL_LM"),
}


def _model_types(*tasks: str) -> set[str]:
    from transformers.models.auto import modeling_auto

    return {
        t for task in tasks for t in getattr(modeling_auto, f"MODEL_FOR_{task}_MAPPING_NAMES", {})
    }


def non_vision_kind(config: PretrainedConfig) -> str | None:
    """What a config that is not a vision model is ('a language model'), or None. Unknown types
    (remote code) give None: only models transformers knows as text or audio are turned away."""
    vcfg = vision_config_of(config)
    model_type = getattr(vcfg, "model_type", None)
    if any(getattr(vcfg, a, None) is not None for a in _VISION_ATTRS):
        return None
    if model_type in _model_types(*_VISION_MAPPINGS):
        return None
    for kind, tasks in _OTHER_MAPPINGS.items():
        if model_type in _model_types(*tasks):
            return kind
    return None


def _looks_local(path: str) -> bool:
    """A filesystem path, not a hub id: a hub id is `name` or `org/name` (one slash, no ./ or ~)."""
    return (
        path.startswith(("/", "./", "../", "~"))
        or path.count("/") > 1
        or (os.sep != "/" and os.sep in path)
    )


def missing_local(field: str, path: str) -> ConfigError | None:
    """The error for a local path (not a hub id) that does not exist; None otherwise."""
    if _looks_local(path) and not Path(path).expanduser().exists():
        # HF would read it as a malformed hub id ("Repo id must be in the form ...")
        return ConfigError(field, f"cannot load {path!r}: no such directory")
    return None


def load_error(field: str, path: str, err: Exception) -> ConfigError:
    """One line for a checkpoint transformers could not load: a missing local path as such, else
    the first line of transformers' message (with the next one where the first ends in ':')."""
    missing = missing_local(field, path)
    if missing is not None:
        return missing
    exists = Path(path).expanduser().exists()
    lines = [x.strip() for x in str(err).strip().splitlines() if x.strip()]
    first = lines[0] if lines else type(err).__name__
    if first.endswith(":") and len(lines) > 1:  # "... from one of:" and its list on the next line
        first = f"{first} {lines[1]}"
    where = "local directory" if exists else "local directory or reachable hub checkpoint"
    return ConfigError(field, f"cannot load {path!r} (not a usable {where}): {first}")


def check_vision(config: Any, field: str, source: str) -> None:
    """An encoder must be a vision model: a language model would otherwise fail much later, at
    a confusing place (no image_size, or a forward without pixel_values)."""
    kind = non_vision_kind(config)
    if kind is not None:
        model_type = getattr(vision_config_of(config), "model_type", None)
        raise ConfigError(
            field,
            f"{source} is not a vision model (model_type {model_type!r}, {kind}); an encoder "
            "needs a vision backbone, e.g. clip_vision_model, siglip_vision_model, dinov2",
        )


def check_tokenizer(tokenizer: Any, spec: LLMSpec) -> None:
    """A tokenizer that turns text into tokens: transformers 5 loads a checkpoint directory
    without tokenizer files (config.json and weights only) as an empty tokenizer, which encodes
    every text as no ids, and a model trained on it learns nothing, without an error."""
    if tokenizer.encode("a b", add_special_tokens=False):
        return
    field = "model.llm.tokenizer.path" if spec.tokenizer.path else "model.llm.path"
    raise ConfigError(
        field,
        f"{str(spec.tokenizer.path or spec.path)!r} has no tokenizer (no tokenizer.json or "
        "vocabulary files: text becomes no tokens); save the checkpoint's tokenizer beside it, "
        "or name one with model.llm.tokenizer.path",
    )


def check_vocab(lm: Any, tokenizer: Any, spec: LLMSpec) -> None:
    """Every token id needs an embedding row (and a logit): an id past the LM's vocabulary fails
    only in training, as an IndexError. polyvis' own image tokens do not count: they never reach
    the LM's embeddings (modeling.embed_tokens), the same rule as the `config:` branch."""
    rows = [lm.get_input_embeddings().weight.shape[0]]
    out = lm.get_output_embeddings()
    if out is not None and getattr(out, "weight", None) is not None:
        rows.append(out.weight.shape[0])
    vocab = min(rows)
    ids = [i for t, i in tokenizer.get_vocab().items() if t not in IMAGE_TOKENS]
    needed = max(ids) + 1 if ids else 0
    if needed <= vocab:
        return
    # with `path:` the tokenizer is the checkpoint's own unless tokenizer.path names another
    field = "model.llm.tokenizer.path" if spec.tokenizer.path else "model.llm.path"
    raise ConfigError(
        field,
        f"the language model's vocab_size {vocab} is smaller than the tokenizer's {needed} "
        "tokens (ids past the vocabulary have no embedding)",
    )


def check_causal(config: Any, field: str) -> None:
    """An encoder model that transformers also offers as a causal LM (BERT, RoBERTa) attends both
    ways unless its config says is_decoder: it would train, on answers it can see."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    if config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not config.is_decoder:
        raise ConfigError(
            field,
            f"a {config.model_type} model attends in both directions (is_decoder is false): the "
            "LM must be causal; use a decoder LM, or set is_decoder: true in its config",
        )


def check_causal_lm(config: Any, field: str, source: str) -> None:
    """model.llm must be a model AutoModelForCausalLM loads: a vision or CLIP checkpoint would
    otherwise fail on its (missing) tokenizer or with transformers' list of config classes."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    model_type = getattr(config, "model_type", None)
    if model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return
    if "AutoModelForCausalLM" in (getattr(config, "auto_map", None) or {}):  # remote code
        return
    raise ConfigError(
        field,
        f"{source} is not a causal language model (model_type {model_type!r}); model.llm needs "
        "a checkpoint AutoModelForCausalLM loads, e.g. qwen2, llama, gemma3_text",
    )


@torch.no_grad()
def probe_lm(lm: Any, field: str) -> None:
    """Two tokens through a randomly initialised LM: a config transformers accepts but whose
    layers do not fit together (a width its heads do not divide, an odd rotary size) fails
    here, as one line naming `field`, not at the first training step. Random state and the
    training mode are left as they were, so the model built next is the same."""
    was_training = lm.training
    lm.eval()
    try:
        with torch.random.fork_rng(devices=[]):
            lm(input_ids=torch.zeros(1, 2, dtype=torch.long, device=lm.device))
    except (RuntimeError, ValueError, IndexError) as err:
        first = next((x.strip() for x in str(err).splitlines() if x.strip()), type(err).__name__)
        raise ConfigError(field, f"the LM it builds fails on its first tokens ({first})") from None
    finally:
        lm.train(was_training)


def checked_config(spec: EncoderSpec | LLMSpec, field: str, check: Any) -> Any:
    """The checkpoint's config (`spec.path`), checked to be the kind `field` needs (`check`):
    a missing path or the wrong kind of model is one line naming `field.path`."""
    kw = {"revision": spec.revision, "trust_remote_code": spec.trust_remote_code}
    try:
        config = AutoConfig.from_pretrained(spec.path, **kw)
    except (OSError, ValueError) as err:
        raise load_error(f"{field}.path", spec.path, err) from None
    check(config, f"{field}.path", repr(spec.path))
    return config


def config_refusals() -> tuple[type[Exception], ...]:
    """What transformers raises for a model config it refuses: TypeError / ValueError / KeyError
    (a missing model_type), and huggingface_hub's strict-dataclass errors (not ValueErrors)."""
    try:
        from huggingface_hub.errors import StrictDataclassError
    except ImportError:  # pragma: no cover - older huggingface_hub
        return (KeyError, TypeError, ValueError)
    return (KeyError, TypeError, ValueError, StrictDataclassError)


def config_message(err: Exception) -> str:
    """One line for a refused model config: the underlying cause (strict-dataclass errors wrap
    it under a heading), without the list of every type it tried."""
    if isinstance(err, KeyError):
        return f"needs {err.args[0]!r}" if err.args else "a key is missing"
    cause = err.__cause__ if err.__cause__ is not None else err
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    return (lines[0] if lines else type(cause).__name__).split(" Errors: ")[0]
