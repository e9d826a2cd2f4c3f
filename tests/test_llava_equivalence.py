"""A one-encoder `mlp` polyvis model is LLaVA: same weights in transformers' LLaVA, same logits.

The LLaVA model is assembled here by hand from the polyvis model's parts (not by polyvis.export),
so this checks the polyvis forward itself against an independent implementation.
"""

from __future__ import annotations

import torch
from transformers import AutoConfig, LlavaConfig, LlavaForConditionalGeneration

from polyvis.models.build import load_model


def _llava_from(model) -> LlavaForConditionalGeneration:
    cfg = model.config
    entry = cfg.encoders[0]
    vision_cfg = dict(entry["config"])
    vision_cfg = AutoConfig.for_model(vision_cfg.pop("model_type"), **vision_cfg)
    # polyvis cut the tower after its deepest used layer, so that layer is the last hidden state.
    assert entry["layers"] == [vision_cfg.num_hidden_layers]
    assert entry["num_prefix_tokens"] == 1  # CLIP's class token, which "default" drops
    text_cfg = AutoConfig.for_model(**cfg.text_config.to_dict())
    old_vocab = text_cfg.vocab_size
    special = [cfg.image_token_id, cfg.image_start_token_id, cfg.image_end_token_id]
    text_cfg.vocab_size = max(old_vocab, max(special) + 1)
    llava_cfg = LlavaConfig(
        vision_config=vision_cfg,
        text_config=text_cfg,
        image_token_index=cfg.image_token_id,
        image_seq_length=cfg.image_seq_length,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        multimodal_projector_bias=True,
    )
    llava = LlavaForConditionalGeneration(llava_cfg).eval()
    backbone = model.encoders[0].backbone
    missing, unexpected = llava.model.vision_tower.load_state_dict(
        backbone.state_dict(), strict=False
    )
    # polyvis replaced the final norm by Identity: LLaVA reads hidden_states, never that norm.
    assert not unexpected and all(k.startswith("post_layernorm") for k in missing), missing
    llava.model.multi_modal_projector.load_state_dict(model.adapter.llava_state_dict())
    lm = model.language_model
    body = {k: v for k, v in lm.model.state_dict().items() if k != "embed_tokens.weight"}
    missing, unexpected = llava.model.language_model.load_state_dict(body, strict=False)
    assert missing == ["embed_tokens.weight"] and not unexpected
    with torch.no_grad():
        emb = llava.model.language_model.embed_tokens.weight
        emb.zero_()
        emb[:old_vocab] = lm.get_input_embeddings().weight
        emb[cfg.image_start_token_id] = model.image_boundary_embeds[0]
        emb[cfg.image_end_token_id] = model.image_boundary_embeds[1]
        if not llava_cfg.tie_word_embeddings:
            llava.lm_head.weight.zero_()
            llava.lm_head.weight[:old_vocab] = lm.get_output_embeddings().weight
    return llava


def test_single_encoder_mlp_model_equals_transformers_llava(tiny_single_model_dir) -> None:
    model, processor = load_model(tiny_single_model_dir)
    assert model.config.adapter["type"] == "mlp" and len(model.config.encoders) == 1
    llava = _llava_from(model)
    vocab = model.config.text_config.vocab_size

    torch.manual_seed(1)
    pixel_values = torch.randn(2, 1, 3, 32, 32)
    texts = ["USER: <image>\nwhat is in the image? ASSISTANT:", "<image> how many objects"]
    expanded = [processor.expand_image_tokens(t) for t in texts]
    enc = processor.tokenizer(expanded, padding=True, padding_side="left", return_tensors="pt")
    n_image = int((enc["input_ids"] == model.config.image_token_id).sum())
    assert n_image == 2 * model.image_seq_length  # both prompts hold a full image block

    with torch.no_grad():
        ours = model(
            input_ids=enc["input_ids"],
            attention_mask=enc["attention_mask"],
            pixel_values=pixel_values,
        )
        theirs = llava(
            input_ids=enc["input_ids"],
            attention_mask=enc["attention_mask"],
            pixel_values=pixel_values[:, 0],
        )
    mask = enc["attention_mask"].bool()
    assert ours.logits.shape[-1] == vocab
    torch.testing.assert_close(
        theirs.logits[..., :vocab][mask], ours.logits[mask], atol=1e-5, rtol=1e-5
    )
    # and the image features themselves, before the LM
    with torch.no_grad():
        feats = model.get_image_features(pixel_values)
        ref = llava.model.get_image_features(pixel_values[:, 0]).pooler_output
    torch.testing.assert_close(torch.stack(list(ref)), feats, atol=1e-6, rtol=1e-6)
