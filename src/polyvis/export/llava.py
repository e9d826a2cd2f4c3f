"""Export a one-encoder polyvis model as a transformers LLaVA checkpoint (LlavaForConditionalGeneration
plus LlavaProcessor), which LLaVA serving engines load as they are.

What maps onto what:
- the encoder -> `vision_tower` (polyvis already cut it after its deepest used layer, so the used
  layer is hidden_states[-1]; several layers become a `vision_feature_layer` list, concatenated in
  the same order); CLIP's class token is dropped by `vision_feature_select_strategy="default"`, a
  tower without prefix tokens (SigLIP) uses "full"; anything else (registers) cannot be exported;
- `mlp` (depth 2) -> `multi_modal_projector` (linear_1, GELU, linear_2); `linear` -> linear_1 with
  `projector_hidden_act="linear"` and linear_2 = identity (exact, one spare D x D matrix);
- `<img_start>` / `<img_end>` own embeddings -> their rows of the (resized) LM embedding matrix, so
  the same token ids give the same result. LLaVA's processor expands `<image>` only, so the
  exported chat template writes `<img_start><image><img_end>` where a message holds an image.
  Rows the LM never had (ids past its vocabulary) are listed in `generation_config.suppress_tokens`,
  as polyvis can never generate them.

The export checks itself before writing: the LLaVA vision path must give polyvis's image features,
and the LLaVA processor must give polyvis's token ids and pixels for a sample prompt.

A tiled model is refused (LlavaNextForConditionalGeneration, the LLaVA with tiles, included): its
tokens would not be the same ones in the same order (docs/tiling.md, "Export").
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

from polyvis.errors import ConfigError
from polyvis.export.llava_check import same_pixels, verify
from polyvis.export.llava_rules import check_exportable, lora_message
from polyvis.models.tokenizer import IMAGE_END_TOKEN, IMAGE_START_TOKEN, IMAGE_TOKEN

# Messages -> strings with `<img_start><image><img_end>` where images are, then the model's own
# template. Content may be a string with `<image>` markers or a list of {type: image|text} items.
_TEMPLATE_PREFIX = (
    "{%- set ns = namespace(msgs=[]) -%}"
    "{%- for m in messages -%}"
    "{%- if m['content'] is string -%}{%- set text = m['content'] -%}"
    "{%- else -%}{%- set parts = namespace(s='') -%}"
    "{%- for c in m['content'] -%}"
    "{%- if c['type'] == 'image' -%}{%- set parts.s = parts.s + '<image>\\n' -%}"
    "{%- elif c['type'] == 'text' -%}{%- set parts.s = parts.s + c['text'] -%}{%- endif -%}"
    "{%- endfor -%}{%- set text = parts.s -%}{%- endif -%}"
    "{%- set text = text | replace('"
    + IMAGE_START_TOKEN
    + IMAGE_TOKEN
    + IMAGE_END_TOKEN
    + "', '<image>')"
    " | replace('<image>', '" + IMAGE_START_TOKEN + IMAGE_TOKEN + IMAGE_END_TOKEN + "') -%}"
    "{%- set ns.msgs = ns.msgs + [{'role': m['role'], 'content': text}] -%}"
    "{%- endfor -%}"
    "{%- set messages = ns.msgs -%}"
)


_CLIP_KEYS = (
    "do_resize", "size", "resample", "do_center_crop", "crop_size", "do_rescale", "rescale_factor",
    "do_normalize", "image_mean", "image_std", "do_convert_rgb",
)  # fmt: skip


def _projector_state(model: Any, act: str) -> dict[str, torch.Tensor]:
    if act == "gelu":
        return model.adapter.llava_state_dict()
    proj = model.adapter.proj  # linear: y = W x + b, then an exact identity as linear_2
    d = proj.weight.shape[0]
    sd = {
        "linear_1.weight": proj.weight.detach(),
        "linear_2.weight": torch.eye(d, dtype=proj.weight.dtype),
    }
    if proj.bias is not None:
        sd["linear_1.bias"] = proj.bias.detach()
        sd["linear_2.bias"] = torch.zeros(d, dtype=proj.weight.dtype)
    return sd


def _split_lm(lm: Any) -> tuple[Any, str]:
    """The LM's base model (what LLaVA holds) and the key prefix of its weights."""
    if hasattr(lm, "peft_config"):  # LoRA weights live beside the base ones; LLaVA has no place
        raise ConfigError("model.llm", lora_message())
    prefix = lm.base_model_prefix
    base = getattr(lm, prefix, None)
    head = lm.get_output_embeddings()
    if base is None or head is None or getattr(head, "bias", None) is not None:
        raise ConfigError(
            "model.llm",
            f"{type(lm).__name__} is not a base model plus a bias-free lm_head, as LLaVA expects",
        )
    head_name = next(n for n, m in lm.named_modules() if m is head)
    extra = {k for k in lm.state_dict() if not k.startswith(prefix + ".")} - {f"{head_name}.weight"}
    if extra:
        raise ConfigError(
            "model.llm",
            f"{type(lm).__name__} has weights LLaVA has no place for: {sorted(extra)[:3]}",
        )
    return base, prefix


def build_llava(model: Any, processor: Any) -> LlavaForConditionalGeneration:
    """A LlavaForConditionalGeneration holding the polyvis model's weights (shared, not copied)."""
    cfg = model.config
    settings = check_exportable(cfg)
    entry = cfg.encoders[0]
    vision_cfg = dict(entry["config"])
    vision_cfg = AutoConfig.for_model(vision_cfg.pop("model_type"), **vision_cfg)
    if getattr(vision_cfg, "vision_use_head", False):
        # polyvis dropped SigLIP's pooling head (it has no weights to give); LLaVA reads hidden
        # states and never the pooled output, so the exported tower is built without one.
        vision_cfg.vision_use_head = False
    lm = model.language_model
    base, _ = _split_lm(lm)
    text_cfg = copy.deepcopy(lm.config)
    old_vocab = lm.get_input_embeddings().weight.shape[0]
    ids = [cfg.image_token_id, cfg.image_start_token_id, cfg.image_end_token_id]
    vocab = max(old_vocab, max(ids) + 1, len(processor.tokenizer))
    text_cfg.vocab_size = vocab
    # A tied head would change the boundary tokens' logits too; untie it when they are real words.
    tied = bool(
        getattr(cfg, "tie_word_embeddings", False)
        or getattr(text_cfg, "tie_word_embeddings", False)
    )
    untie = tied and min(cfg.image_start_token_id, cfg.image_end_token_id) < old_vocab
    if untie:
        tied = False
    text_cfg.tie_word_embeddings = tied
    llava_cfg = LlavaConfig(
        vision_config=vision_cfg,
        text_config=text_cfg,
        image_token_index=cfg.image_token_id,
        image_seq_length=cfg.image_seq_length,
        vision_feature_layer=settings["vision_feature_layer"],
        vision_feature_select_strategy=settings["vision_feature_select_strategy"],
        projector_hidden_act=settings["projector_hidden_act"],
        multimodal_projector_bias=settings["multimodal_projector_bias"],
        tie_word_embeddings=tied,
        pad_token_id=cfg.pad_token_id,
        bos_token_id=cfg.bos_token_id,
        eos_token_id=cfg.eos_token_id,
    )
    # On the meta device: no random init of billions of weights; everything is assigned below.
    with torch.device("meta"):
        llava = LlavaForConditionalGeneration(llava_cfg)

    dtype = lm.get_input_embeddings().weight.dtype
    emb_old = lm.get_input_embeddings().weight.detach()
    emb = torch.zeros(vocab, emb_old.shape[1], dtype=dtype)
    emb[:old_vocab] = emb_old
    emb[cfg.image_start_token_id] = model.image_boundary_embeds.detach()[0].to(dtype)
    emb[cfg.image_end_token_id] = model.image_boundary_embeds.detach()[1].to(dtype)
    sd: dict[str, torch.Tensor] = {}
    backbone = model.encoders[0].backbone
    sd.update({f"model.vision_tower.{k}": v for k, v in backbone.state_dict().items()})
    sd.update(
        {
            f"model.multi_modal_projector.{k}": v
            for k, v in _projector_state(model, settings["projector_hidden_act"]).items()
        }
    )
    sd.update({f"model.language_model.{k}": v for k, v in base.state_dict().items()})
    sd["model.language_model.embed_tokens.weight"] = emb
    if tied:
        sd["lm_head.weight"] = emb
    else:
        head_old = emb_old if untie else lm.get_output_embeddings().weight.detach()
        head = torch.zeros(vocab, head_old.shape[1], dtype=dtype)
        head[:old_vocab] = head_old
        sd["lm_head.weight"] = head
    expected = llava.state_dict()
    for key in [k for k in expected if k not in sd]:
        # Final norms polyvis replaced by Identity: LLaVA reads hidden_states, never their output.
        if key.startswith("model.vision_tower.") and key.split(".")[-1] in ("weight", "bias"):
            fill = torch.ones if key.endswith("weight") else torch.zeros
            sd[key] = fill(expected[key].shape, dtype=dtype)
    unknown = sorted(set(sd) - set(expected))
    missing = sorted(set(expected) - set(sd))
    if unknown or missing:
        raise ConfigError(
            "model", f"weights do not map onto LLaVA: unknown {unknown[:3]}, missing {missing[:3]}"
        )
    llava.load_state_dict(sd, strict=True, assign=True)
    if tied:
        llava.lm_head.weight = llava.model.language_model.embed_tokens.weight
    # Non-persistent buffers (position ids, rotary frequencies) are not in state dicts.
    for target, source in (
        (llava.model.vision_tower, backbone),
        (llava.model.language_model, base),
    ):
        src = dict(source.named_buffers())
        for name, buf in list(target.named_buffers()):
            if buf.is_meta:
                owner, _, attr = name.rpartition(".")
                mod = target.get_submodule(owner) if owner else target
                mod._buffers[attr] = src[name].clone() if name in src else None
    meta = [n for n, t in [*llava.named_parameters(), *llava.named_buffers()] if t.is_meta]
    if meta:
        raise ConfigError("model", f"could not fill LLaVA tensors {meta[:3]}")
    llava.config.dtype = dtype
    llava.generation_config = copy.deepcopy(model.generation_config)
    if vocab > old_vocab:
        llava.generation_config.suppress_tokens = list(range(old_vocab, vocab))
    return llava.eval()


def _clip_image_processor(src: Any, size: tuple[int, int]) -> Any:
    """The polyvis image processor as a CLIP one (what LLaVA checkpoints ship)."""
    if "CLIP" in type(src).__name__:
        proc = copy.deepcopy(src)
    else:
        try:
            from transformers import CLIPImageProcessorPil as CLIPProc
        except ImportError:  # pragma: no cover - older transformers
            from transformers import CLIPImageProcessor as CLIPProc
        d = src.to_dict()
        kw = {k: d[k] for k in _CLIP_KEYS if d.get(k) is not None}
        kw.setdefault("do_center_crop", False)
        kw["do_convert_rgb"] = True
        proc = CLIPProc(**kw)
    if not getattr(proc, "crop_size", None) or not getattr(proc, "do_center_crop", False):
        proc.crop_size = {"height": size[0], "width": size[1]}
    return proc


def build_llava_processor(model: Any, processor: Any) -> LlavaProcessor:
    """A LlavaProcessor (CLIP image processor, the tokenizer, an image-aware chat template)."""
    settings = check_exportable(model.config)
    entry = model.config.encoders[0]
    name = processor.encoder_names[0]
    size = tuple(processor.image_sizes[name])
    patch = entry["config"].get("patch_size")
    patch = patch if isinstance(patch, int) else (patch or [None])[0]
    if not patch or [size[0] // patch, size[1] // patch] != list(entry["grid"]):
        raise ConfigError(
            "model.encoders[0]",
            f"LLaVA counts image tokens as (H / patch_size) x (W / patch_size); {size} with patch "
            f"{patch} does not give the encoder's {entry['grid']} grid",
        )
    src = processor.image_processors[name]
    image_proc = _clip_image_processor(src, size)
    if not same_pixels(src, image_proc):
        image_proc = copy.deepcopy(src)  # still loads with LlavaProcessor; keeps exact pixels
        image_proc.crop_size = {"height": size[0], "width": size[1]}
    tokenizer = copy.deepcopy(processor.tokenizer)
    from polyvis.data.template import chat_template_of

    template = _TEMPLATE_PREFIX + chat_template_of(processor.tokenizer)
    tokenizer.chat_template = template
    _no_added_bos(tokenizer)
    return LlavaProcessor(
        image_processor=image_proc,
        tokenizer=tokenizer,
        patch_size=patch,
        vision_feature_select_strategy=settings["vision_feature_select_strategy"],
        chat_template=template,
        image_token=IMAGE_TOKEN,
        num_additional_image_tokens=settings["num_additional_image_tokens"],
    )


def _no_added_bos(tokenizer: Any) -> None:
    """Stop a tokenizer that adds BOS (Llama, Mistral) from adding it: LlavaProcessor(text=prompt)
    tokenises with special tokens, and polyvis trained on the rendered template alone, whose BOS
    (where it writes one) is then the only one, as in training."""
    bos_id = tokenizer.bos_token_id
    if bos_id is None:
        return

    def adds_bos() -> bool:
        ids = tokenizer("a")["input_ids"]
        return ids[:1] == [bos_id] and len(ids) > len(
            tokenizer("a", add_special_tokens=False)["input_ids"]
        )

    if not adds_bos():
        return
    tokenizer.add_bos_token = False
    if adds_bos():
        raise ConfigError(
            "model.llm.tokenizer",
            f"{type(tokenizer).__name__} adds {tokenizer.bos_token} itself and has no "
            "add_bos_token switch to turn off: LLaVA's processor would give ids polyvis never "
            "trained on",
        )


def export_llava(model_dir: str | Path, out: str | Path, dtype: str | None = None) -> Path:
    """Load a polyvis model directory and write it as a LLaVA checkpoint + processor to `out`."""
    from polyvis.models.build import load_model
    from polyvis.models.modeling import PolyVisConfig

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise ConfigError("", f"{model_dir}: not a polyvis model directory (no config.json)")
    if (model_dir / "lora").is_dir():  # a LoRA run's final/: say so before loading anything
        raise ConfigError("", f"{model_dir}: {lora_message(str(model_dir))}")
    check_exportable(PolyVisConfig.from_pretrained(model_dir))  # fail fast, before loading weights
    model, processor = load_model(model_dir, dtype=dtype)
    llava = build_llava(model, processor)
    llava_processor = build_llava_processor(model, processor)
    verify(model, processor, llava, llava_processor)
    out = Path(out)
    llava.save_pretrained(out)
    llava_processor.save_pretrained(out)
    return out
