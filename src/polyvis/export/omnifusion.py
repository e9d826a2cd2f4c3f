"""Import an OmniFusion 1.x checkpoint (AIRI-Institute/OmniFusion) as a polyvis model directory.

OmniFusion's layout (README `gen_answer`, train_src dataset):

    SRC/tuned-model/          the tuned causal LM (Mistral-7B), a transformers directory
    SRC/tokenizer/            its tokenizer
    SRC/projection.pt         the adapter, VisualToGPTMapping: TransformerEncoderLayer(1024, 4 heads)
                              -> Linear(1024, 4096)
    SRC/special_embeddings.pt {"SOI", "EOI", "USER", "BOT"}: four (D,) embeddings
    CLIP-ViT-L/14-336         from the hub (openai/clip-vit-large-patch14-336): --encoder

and its prompt, as embeddings:

    embed(PROMPT) [SOI] CLIP(image).hidden_states[-2][:, 1:] -> projection [EOI] [USER] embed(Q) [BOT]

with PROMPT = "This is a dialog with AI assistant.\\n", no BOS, and each later turn
`A</s> [USER] Q [BOT]`. In polyvis: SOI / EOI are the `<img_start>` / `<img_end>` embeddings, the
adapter is `transformer` (same key names), the encoder reads layer -2 without the class token,
and USER / BOT become two added tokens whose LM embedding rows hold the learned vectors (the new
rows of the output head are suppressed in generation_config, as OmniFusion cannot emit them). The
chat template stored with the tokenizer writes exactly that layout.

.pt files are read with `torch.load(weights_only=True)` only. OmniFusion saves projection.pt as a
whole pickled module; it is read through an allow-list of torch's own layer classes plus an empty
stand-in for `models.VisualToGPTMapping`, so no code from the file is ever run.
"""

from __future__ import annotations

import collections
import json
import pickle
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from polyvis.errors import ConfigError, DataError

DEFAULT_PROMPT = "This is a dialog with AI assistant.\n"
USER_TOKEN = "<omnifusion_user>"
BOT_TOKEN = "<omnifusion_bot>"
SPECIAL_KEYS = ("SOI", "EOI", "USER", "BOT")
ADAPTER_KEYS = {
    "transformer_layer.self_attn.in_proj_weight",
    "transformer_layer.self_attn.in_proj_bias",
    "transformer_layer.self_attn.out_proj.weight",
    "transformer_layer.self_attn.out_proj.bias",
    "transformer_layer.linear1.weight",
    "transformer_layer.linear1.bias",
    "transformer_layer.linear2.weight",
    "transformer_layer.linear2.bias",
    "transformer_layer.norm1.weight",
    "transformer_layer.norm1.bias",
    "transformer_layer.norm2.weight",
    "transformer_layer.norm2.bias",
    "linear.weight",
    "linear.bias",
}


class _PickledMapping(nn.Module):
    """Stand-in for OmniFusion's `models.VisualToGPTMapping`: only holds the unpickled layers."""


_SAFE_MODULE_GLOBALS = [
    (_PickledMapping, "models.VisualToGPTMapping"),
    (_PickledMapping, "__main__.VisualToGPTMapping"),
    nn.TransformerEncoderLayer,
    nn.MultiheadAttention,
    nn.modules.linear.NonDynamicallyQuantizableLinear,
    nn.Linear,
    nn.LayerNorm,
    nn.Dropout,
    F.relu,
    F.gelu,
    collections.OrderedDict,
    set,
]


def load_pt(path: Path, what: str) -> Any:
    """torch.load(weights_only=True); a pickled OmniFusion module is read through an allow-list."""
    if not path.is_file():
        raise DataError(f"{path}: {what} not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err)
    try:
        with torch.serialization.safe_globals(_SAFE_MODULE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        bad = (
            first.split("Unsupported global: ")[-1].split(" was not")[0]
            if "Unsupported" in first
            else ""
        )
        raise DataError(
            f"{path}: cannot read {what} with weights_only=True (it pickles {bad or 'other objects'}); "
            "save its state_dict() in a trusted environment and pass that file instead"
        ) from None


def read_projection(path: Path) -> dict[str, torch.Tensor]:
    """The VisualToGPTMapping weights, keyed as polyvis's `transformer` adapter expects."""
    obj = load_pt(path, "projection (VisualToGPTMapping)")
    sd = obj.state_dict() if isinstance(obj, nn.Module) else obj
    if not isinstance(sd, dict):
        raise DataError(f"{path}: expected a state dict or module, got {type(obj).__name__}")
    missing = sorted(ADAPTER_KEYS - set(sd))
    extra = sorted(set(sd) - ADAPTER_KEYS)
    if missing or extra:
        raise DataError(
            f"{path}: not a VisualToGPTMapping state dict (missing {missing[:3]}, unexpected {extra[:3]})"
        )
    return {k: v.detach() for k, v in sd.items()}


def read_special(path: Path, width: int) -> dict[str, torch.Tensor]:
    """The SOI / EOI / USER / BOT embeddings, each flattened to (width,)."""
    obj = load_pt(path, "special embeddings")
    if not isinstance(obj, dict):
        raise DataError(
            f"{path}: expected a dict with keys {list(SPECIAL_KEYS)}, got {type(obj).__name__}"
        )
    out = {}
    for key in SPECIAL_KEYS:
        if key not in obj:
            raise DataError(f"{path}: no {key!r} embedding (keys: {sorted(obj)})")
        t = torch.as_tensor(obj[key]).detach().float().reshape(-1)
        if t.numel() != width:
            raise DataError(f"{path}: {key!r} has {t.numel()} values, the LM width is {width}")
        out[key] = t
    return out


def omnifusion_chat_template(prompt: str = DEFAULT_PROMPT, sep: str = "") -> str:
    """Jinja chat template writing OmniFusion's layout.

    A system message replaces `prompt`. A user message's images (raw `<image>` or expanded
    `<img_start><image>...<img_end>` blocks) go before its USER token, its text (stripped) after.
    `sep` goes between the USER token and the question (tokenizers differ on prefix spaces).
    """
    p, s = json.dumps(prompt), json.dumps(sep)
    return (
        "{%- if messages and messages[0]['role'] == 'system' -%}{{ messages[0]['content'] }}"
        "{%- set msgs = messages[1:] -%}{%- else -%}{{ "
        + p
        + " }}{%- set msgs = messages -%}{%- endif -%}"
        "{%- for m in msgs -%}"
        "{%- if m['role'] == 'user' -%}"
        "{%- set c = m['content'] -%}{%- set n = c.count('<img_start>') -%}"
        "{%- if n > 0 -%}"
        "{{ ('<img_start>' + '<image>' * (c.count('<image>') // n) + '<img_end>') * n }}"
        "{%- else -%}{{ '<image>' * c.count('<image>') }}{%- endif -%}"
        "{{ '" + USER_TOKEN + "' + " + s + " }}"
        "{{ c | replace('<img_start>', '') | replace('<img_end>', '') | replace('<image>', '') | trim }}"
        "{{ '" + BOT_TOKEN + "' }}"
        "{%- elif m['role'] == 'assistant' -%}"
        "{% generation %}{{ m['content'] }}{{ eos_token }}{% endgeneration %}"
        "{%- endif -%}"
        "{%- endfor -%}"
    )


def _pick_separator(tokenizer: Any, prompt: str) -> str:
    """The template separator that tokenises `PROMPT [USER] Q [BOT]` as OmniFusion does (pieces)."""
    user, bot = tokenizer.convert_tokens_to_ids([USER_TOKEN, BOT_TOKEN])
    q = "What is the sky color on this image?"

    def enc(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    want = enc(prompt) + [user] + enc(q) + [bot]
    for sep in ("", " "):
        if enc(prompt + USER_TOKEN + sep + q + BOT_TOKEN) == want:
            return sep
    print(
        "polyvis: warning: this tokenizer splits the question differently after the USER token "
        "than OmniFusion's separate encode() did; answers may differ slightly",
        file=sys.stderr,
    )
    return ""


def import_omnifusion(
    src: str | Path,
    out: str | Path,
    llm: str | Path | None = None,
    tokenizer: str | Path | None = None,
    encoder: str | None = None,
    projection: str | Path | None = None,
    special: str | Path | None = None,
    heads: int = 4,
    prompt: str = DEFAULT_PROMPT,
    dtype: str = "bfloat16",
) -> Path:
    """Convert an OmniFusion checkpoint folder into a polyvis model directory at `out`."""
    from polyvis.config import EncoderSpec, LLMSpec, ModelSection, TokenizerSpec
    from polyvis.models.build import build_model, save_model

    src = Path(src)
    if not src.is_dir():
        raise DataError(f"{src}: OmniFusion checkpoint folder not found")
    llm_path = Path(llm) if llm else src / "tuned-model"
    if not (llm_path / "config.json").is_file():
        raise ConfigError("--llm", f"{llm_path}: no causal LM here (config.json missing)")
    tok_path = (
        Path(tokenizer)
        if tokenizer
        else (src / "tokenizer" if (src / "tokenizer").is_dir() else llm_path)
    )
    enc_path = str(encoder) if encoder else str(src / "clip")
    if not encoder and not (src / "clip").is_dir():
        raise ConfigError(
            "--encoder", f"{src / 'clip'}: not found; give the CLIP tower with --encoder"
        )

    proj = read_projection(Path(projection) if projection else src / "projection.pt")
    in_dim, out_dim = proj["linear.weight"].shape[1], proj["linear.weight"].shape[0]
    specials = read_special(Path(special) if special else src / "special_embeddings.pt", out_dim)

    section = ModelSection(
        encoders=[EncoderSpec(name="clip", path=enc_path, layers=[-2])],
        fusion={"type": "concat-channel"},
        adapter={
            "type": "transformer",
            "heads": heads,
            "ffn_dim": int(proj["transformer_layer.linear1.weight"].shape[0]),
        },
        llm=LLMSpec(path=str(llm_path), tokenizer=TokenizerSpec(path=str(tok_path))),
        dtype=dtype,
    )
    model, processor = build_model(section)
    if model.fusion.out_dim != in_dim:
        raise ConfigError(
            "--encoder", f"the tower is {model.fusion.out_dim} wide, projection.pt expects {in_dim}"
        )
    if model.config.text_config.hidden_size != out_dim:
        raise ConfigError(
            "--llm",
            f"the LM is {model.config.text_config.hidden_size} wide, projection.pt maps to {out_dim}",
        )
    model_dtype = model.image_boundary_embeds.dtype
    model.adapter.load_state_dict({k: v.to(model_dtype) for k, v in proj.items()})
    with torch.no_grad():
        model.image_boundary_embeds.copy_(torch.stack([specials["SOI"], specials["EOI"]]))
    _add_turn_tokens(model, processor.tokenizer, specials["USER"], specials["BOT"])

    tok = processor.tokenizer
    if getattr(tok, "add_bos_token", False):
        tok.add_bos_token = False  # OmniFusion never feeds a BOS
    tok.chat_template = omnifusion_chat_template(prompt, _pick_separator(tok, prompt))
    out = save_model(model, processor, out)
    from polyvis.config import Config, dump_config

    dump_config(Config(model=section), out / "polyvis.yaml")
    return out


def _add_turn_tokens(model: Any, tok: Any, user: torch.Tensor, bot: torch.Tensor) -> None:
    """USER / BOT as added tokens whose embedding rows are OmniFusion's learned vectors."""
    from tokenizers import AddedToken

    tok.add_tokens(
        [AddedToken(t, special=True, normalized=False) for t in (USER_TOKEN, BOT_TOKEN)],
        special_tokens=True,
    )
    ids = tok.convert_tokens_to_ids([USER_TOKEN, BOT_TOKEN])
    lm = model.language_model
    old = lm.get_input_embeddings().weight.shape[0]
    new = max(old, max(ids) + 1)
    if new > old:
        lm.resize_token_embeddings(new, mean_resizing=False)
    with torch.no_grad():
        emb = lm.get_input_embeddings().weight
        emb[ids[0]] = user.to(emb.dtype)
        emb[ids[1]] = bot.to(emb.dtype)
        head = lm.get_output_embeddings()
        if head is not None and head.weight is not emb and new > old:
            head.weight[old:] = 0
    model.config.text_config.vocab_size = new
    lm.config.vocab_size = new
    if new > old:  # rows OmniFusion's LM never had: it could not generate them
        model.generation_config.suppress_tokens = list(range(old, new))
