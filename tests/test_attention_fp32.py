"""`train.mixed_precision: bf16` on CPU: linear layers autocast to bf16, attention stays float32
(polyvis.models.attention), in transformers' layers and in the answer-rows last layer alike."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from polyvis.models import answer_rows
from polyvis.models.attention import FP32_SDPA, use_fp32_attention
from polyvis.models.build import load_model


def _image(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8))


def _batch(proc, padding_side: str) -> dict:
    """Two rows of different lengths, labels on their text: padding the model must mask."""
    texts = [
        proc.apply_chat_template(
            [{"role": "user", "content": f"<image>\n{q}"}, {"role": "assistant", "content": a}],
            add_generation_prompt=False,
        )
        for q, a in (("what?", "red"), ("what is at the left of the picture?", "two blue squares"))
    ]
    batch = dict(proc(texts, images=[_image(1), _image(2)], padding_side=padding_side))
    ids = batch["input_ids"]
    image_ids = proc.tokenizer.convert_tokens_to_ids(["<img_start>", "<image>", "<img_end>"])
    text = (batch["attention_mask"] == 1) & ~torch.isin(ids, torch.tensor(image_ids))
    batch["labels"] = ids.masked_fill(~text, -100)
    return batch


def _sdpa_inputs(monkeypatch) -> list[torch.dtype]:
    """The dtypes every call of torch's SDPA receives from now on."""
    seen: list[torch.dtype] = []
    real = torch.nn.functional.scaled_dot_product_attention

    def recording(q, k, v, *args, **kwargs):
        seen.append(q.dtype)
        return real(q, k, v, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recording)
    return seen


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_fp32_attention_without_autocast_is_exactly_sdpa_padding_masks_included(
    tiny_model_dir: Path, padding_side: str
):
    model, proc = load_model(tiny_model_dir)
    batch = _batch(proc, padding_side)
    del batch["labels"]
    with torch.no_grad():
        ref = model(**batch).logits
        assert use_fp32_attention(model) >= 2  # the LM and the encoders
        assert model.language_model.config._attn_implementation == FP32_SDPA
        out = model(**batch).logits
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    # the padded row equals that row alone: the padding mask is still built
    row = {k: v[:1] for k, v in batch.items()}
    keep = batch["attention_mask"][0].bool()
    with torch.no_grad():
        alone = model(**{k: (v[:, keep] if v.ndim == 2 else v) for k, v in row.items()}).logits
    torch.testing.assert_close(out[0][keep], alone[0], rtol=1e-5, atol=1e-5)


def test_under_cpu_bf16_autocast_attention_gets_float32_and_the_rest_bf16(
    tiny_model_dir: Path, monkeypatch
):
    model, proc = load_model(tiny_model_dir)
    model.set_trainable(projector=True, llm=True)
    model.train()
    batch = _batch(proc, "right")
    n = int((batch["labels"][:, 1:] != -100).sum())
    with torch.no_grad():
        ref = model(**batch, num_items_in_batch=n, answer_logits_only=True).loss
    seen = _sdpa_inputs(monkeypatch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = model(**batch, num_items_in_batch=n, answer_logits_only=True)
    assert torch.bfloat16 in seen  # the LM attends in bf16 under autocast by default
    seen.clear()
    use_fp32_attention(model)
    assert answer_rows.supported(model.language_model)  # the answer-rows path still runs
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**batch, num_items_in_batch=n, answer_logits_only=True)
    layers = model.language_model.config.num_hidden_layers
    assert len(seen) >= layers and set(seen) == {torch.float32}
    assert out.logits.dtype == plain.logits.dtype == torch.bfloat16  # the head is still bf16
    # bf16 rounding, not a different model: both within 2 % of the fp32 loss
    for loss in (out.loss.detach(), plain.loss.detach()):
        assert abs(loss.item() - ref.item()) < 0.02 * ref.item()
    out.loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and g.dtype == torch.float32 for g in grads)


def test_bf16_on_a_cpu_without_native_bf16_warns_once_naming_the_setting(monkeypatch, caplog):
    from polyvis.train import precision

    monkeypatch.setattr(precision, "_warned", set())
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    with caplog.at_level(logging.WARNING, logger="polyvis.train.precision"):
        assert precision.warn_slow_cpu_bf16("train.mixed_precision") is False
    assert not caplog.records
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    with caplog.at_level(logging.WARNING, logger="polyvis.train.precision"):
        assert precision.warn_slow_cpu_bf16("train.mixed_precision") is True
        assert precision.warn_slow_cpu_bf16("train.mixed_precision") is True
        precision.warn_slow_cpu_bf16("clip-nano.precision")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert lines[0].startswith("train.mixed_precision=bf16: this CPU has no native bf16")
    assert torch.backends.cpu.get_cpu_capability() in lines[0]
    assert lines[1].startswith("clip-nano.precision=bf16")
