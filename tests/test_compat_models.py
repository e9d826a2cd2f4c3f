"""Whole models on checkpoints polyvis did not make: a frozen BatchNorm encoder stays as loaded
while the model trains, a BOS-adding tokenizer without a chat template still gets its BOS, an LM
whose class name transformers cannot read trains without a warning, and an LM path that holds a
vision model is one line naming it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers as T
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers.loss.loss_utils import LOSS_MAPPING

from polyvis.config import Config
from polyvis.data.template import encode_conversation, prompt_ids
from polyvis.errors import ConfigError
from polyvis.models.answer_rows import causal_loss
from polyvis.models.build import build_model
from polyvis.models.tokenizer import PLAIN_CHAT_TEMPLATE

CLIP = {
    "name": "clip",
    "config": {"model_type": "clip_vision_model", "hidden_size": 32, "intermediate_size": 64,
               "num_hidden_layers": 1, "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
}  # fmt: skip
RESNET = {
    "name": "res",
    "config": {"model_type": "resnet", "embedding_size": 8, "hidden_sizes": [8, 16], "depths": [1, 1]},
    "layers": [-1],
    "image_size": 32,
}  # fmt: skip
SIZES = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
         "num_attention_heads": 2, "num_key_value_heads": 1}  # fmt: skip
QWEN = {"model_type": "qwen2", **SIZES}
RECORD = {
    "id": "r",
    "conversations": [
        {"from": "human", "value": "<image>\nwhat is it?"},
        {"from": "gpt", "value": "a red circle"},
    ],
}


def _config(encoders: list[dict], llm: dict) -> Config:
    return Config.model_validate({"model": {"encoders": encoders, "llm": llm}})


def _tokenizer(bos_adding: bool) -> T.PreTrainedTokenizerFast:
    """A byte-level BPE like Llama's (BOS added by the post-processor, no pad token) or GPT-2's."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=280,
        special_tokens=["<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(["what is in the image? a red circle"] * 4, trainer=trainer)
    if bos_adding:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
        )
    return T.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")


@pytest.mark.parametrize("bos_adding", [True, False])
def test_template_gives_a_bos_adding_tokenizer_its_bos(tmp_path: Path, bos_adding: bool):
    """polyvis tokenises templated text without special tokens: a Llama-style tokenizer without
    a chat template lost its BOS in training and in prompts."""
    tok = _tokenizer(bos_adding)
    T.LlamaForCausalLM(T.LlamaConfig(**SIZES, vocab_size=len(tok))).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    _, proc = build_model(_config([CLIP], {"path": str(tmp_path)}))
    ids = encode_conversation(RECORD, proc)["input_ids"]
    prompt = prompt_ids(proc, [{"role": "user", "content": "<image>\nwhat is it?"}])
    bos = proc.tokenizer.bos_token_id
    assert (ids[0] == bos, prompt[0] == bos) == (bos_adding, bos_adding)
    assert bos not in ids[1:]
    assert proc.tokenizer.chat_template.endswith(PLAIN_CHAT_TEMPLATE)


def test_frozen_batchnorm_encoder_stays_as_loaded_while_training():
    """model.train() used to put frozen encoders in training mode: BatchNorm then normalised
    with batch statistics and moved its running ones (the "frozen" weights changed, and the
    features differed from inference and from the feature cache)."""
    torch.manual_seed(0)
    model, _ = build_model(
        _config([CLIP, RESNET], {"config": QWEN, "tokenizer": {"vocab_size": 280}})
    )
    model.set_trainable(projector=True)
    buffers = {k: v.clone() for k, v in model.encoders.state_dict().items()}
    pixels = torch.randn(3, 2, 3, 32, 32)
    with torch.no_grad():
        want = model.get_image_features(pixels)
    model.train()
    got = model.get_image_features(pixels)
    torch.testing.assert_close(got, want)
    assert all(torch.equal(v, model.encoders.state_dict()[k]) for k, v in buffers.items())
    assert model.encoders[1].training  # the mode is left as the model set it


def test_unfrozen_encoder_still_trains_in_training_mode():
    torch.manual_seed(0)
    model, _ = build_model(_config([RESNET], {"config": QWEN, "tokenizer": {"vocab_size": 280}}))
    model.set_trainable(encoders=True, projector=True)
    before = model.encoders[0].backbone.embedder.embedder.normalization.running_mean.clone()
    model.train()
    model.get_image_features(torch.randn(3, 1, 3, 32, 32))
    after = model.encoders[0].backbone.embedder.embedder.normalization.running_mean
    assert not torch.equal(before, after)


def test_lm_with_unreadable_class_name_trains_without_a_warning(monkeypatch):
    """GPT2LMHeadModel: transformers cannot read a loss type from the class name and warned
    `loss_type=None ... unrecognized` on the answer-only loss, then took ForCausalLM anyway."""
    from transformers import modeling_utils

    warned = []
    monkeypatch.setattr(modeling_utils.logger, "warning_once", lambda msg, *a: warned.append(msg))
    gpt2 = {"model_type": "gpt2", "n_embd": 32, "n_layer": 1, "n_head": 2}
    model, proc = build_model(_config([CLIP], {"config": gpt2, "tokenizer": {"vocab_size": 280}}))
    item = encode_conversation(RECORD, proc)
    kw = {
        "input_ids": torch.tensor([item["input_ids"]]),
        "labels": torch.tensor([item["labels"]]),
        "pixel_values": torch.zeros(1, 1, 3, 32, 32),
    }
    with torch.no_grad():
        loss = model(**kw, answer_logits_only=True).loss
    assert not [m for m in warned if "loss_type" in str(m)]
    assert causal_loss(model.language_model) is LOSS_MAPPING["ForCausalLM"]
    with torch.no_grad():
        torch.testing.assert_close(loss, model(**kw).loss)


def test_llm_path_holding_a_vision_model_is_one_line(tmp_path: Path):
    T.ViTModel(T.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)).save_pretrained(tmp_path)  # fmt: skip
    with pytest.raises(ConfigError) as err:
        build_model(_config([CLIP], {"path": str(tmp_path)}))
    assert err.value.field == "model.llm.path" and "\n" not in str(err.value)
    assert "is not a causal language model (model_type 'vit')" in str(err.value)
