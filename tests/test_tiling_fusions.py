"""Tiling with every fusion: one tiled encoder (CLIP, 32 px tiles, grids 1x2 / 2x1 / 2x2 and a
thumbnail) beside an untiled one (DINOv2): a forward pass, generation with and without the KV
cache, a left-padded batch of a wide, a tall and a square image equal to each alone, and an exact
save / load round trip."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from _tiling_helpers import DINO, NANO_TINY, TILED
from polyvis.config import load_config
from polyvis.models.build import build_model, load_model, save_model

FUSIONS = {
    "add": "{type: add}",
    "mul": "{type: mul}",
    "gated": "{type: gated}",
    "concat-channel": "{type: concat-channel}",
    "omnifusion": "{type: omnifusion}",
    "sva": "{type: sva, heads: 2}",
    "concat-sequence": "{type: concat-sequence}",
    "interleave": "{type: interleave}",
    "resampler": "{type: resampler, num_queries: 4, depth: 1, heads: 2}",
}
NEW = 4  # new tokens per generate call
# (width, height): 1x2, 2x1 and 2x2 tiles of 32 px
WIDE, TALL, SQUARE = (96, 32), (32, 96), (48, 48)


def tiled_config(fusion: str, *extra: str):
    return load_config(
        NANO_TINY, [f"model.encoders=[{TILED}, {DINO}]", f"model.fusion={fusion}", *extra]
    )


def image(size: tuple[int, int], seed: int) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    arr = (torch.rand(size[1], size[0], 3, generator=g) * 255).to(torch.uint8).numpy()
    return Image.fromarray(arr)


def prompt(processor, question: str) -> str:
    return processor.apply_chat_template([{"role": "user", "content": f"<image>\n{question}"}])


def greedy(model, inputs, **kw):
    n_in = inputs["input_ids"].shape[1]
    out = model.generate(
        **inputs,
        max_new_tokens=NEW,
        min_new_tokens=NEW,
        do_sample=False,
        return_dict_in_generate=True,
        output_scores=True,
        **kw,
    )
    return out.sequences[:, n_in:], torch.stack(out.scores, dim=1)


@pytest.fixture(scope="module", params=list(FUSIONS))
def built(request):
    torch.manual_seed(0)
    model, processor = build_model(tiled_config(FUSIONS[request.param]))
    return request.param, model, processor


def test_forward_pass(built):
    name, model, processor = built
    images = [image(WIDE, 1), image(TALL, 2), image(SQUARE, 3)]
    batch = processor([prompt(processor, "what is here?")] * 3, images=images)
    counts = [processor.image_token_count((im.height, im.width)) for im in images]
    placeholders = (batch["input_ids"] == model.config.image_token_id).sum(1).tolist()
    assert placeholders == counts
    m = processor.image_seq_length
    # three views (thumbnail + 2 tiles) for the wide and tall images, five for the square one
    assert counts == ([m, m, m] if name == "resampler" else [3 * m, 3 * m, 5 * m])
    cfg = model.config
    image_ids = torch.tensor([cfg.image_token_id, cfg.image_start_token_id, cfg.image_end_token_id])
    text = (batch["attention_mask"] == 1) & ~torch.isin(batch["input_ids"], image_ids)
    labels = batch["input_ids"].masked_fill(~text, -100)
    model.train()
    try:
        out = model(**batch, labels=labels)
        out.loss.backward()
    finally:
        model.eval()
    assert torch.isfinite(out.loss)
    # the tiles reach the loss: the tiled encoder and the adapter get finite, non-zero gradients
    for module in (model.encoders[0], model.adapter):
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
        assert sum(float(g.abs().sum()) for g in grads) > 0
    model.zero_grad(set_to_none=True)


def test_generation_with_and_without_cache(built):
    _, model, processor = built
    inputs = processor(prompt(processor, "describe the page"), images=[image(SQUARE, 4)])
    tok_c, sc_c = greedy(model, inputs, use_cache=True)
    tok_n, sc_n = greedy(model, inputs, use_cache=False)
    assert torch.equal(tok_c, tok_n)
    torch.testing.assert_close(sc_c, sc_n, atol=1e-4, rtol=1e-4)


def test_left_padded_batch_equals_each_alone(built):
    _, model, processor = built
    texts = [prompt(processor, q) for q in ("hi", "how many red circles are here?", "the table")]
    images = [image(WIDE, 10), image(TALL, 11), image(SQUARE, 12)]
    batch = processor(texts, images=images)
    assert len(set(batch["attention_mask"].sum(1).tolist())) == 3
    assert bool((batch["attention_mask"][:, 0] == 0).any())  # left padded
    tok_b, sc_b = greedy(model, batch)
    for i in range(3):
        tok_1, sc_1 = greedy(model, processor(texts[i], images=[images[i]]))
        assert torch.equal(tok_b[i], tok_1[0]), f"prompt {i}"
        torch.testing.assert_close(sc_b[i], sc_1[0], atol=1e-4, rtol=1e-4)


def test_save_load_round_trip_is_exact(built, tmp_path):
    _, model, processor = built
    out = save_model(model, processor, tmp_path / "m")
    entry = json.loads((out / "config.json").read_text())["encoders"][0]
    assert entry["tiling"] == {"grids": [[1, 2], [2, 1], [2, 2]], "thumbnail": True}
    assert json.loads((out / "polyvis_processor.json").read_text())["tiling"] == processor.tiling
    loaded, processor2 = load_model(out)
    sd1, sd2 = model.state_dict(), loaded.state_dict()
    assert sd1.keys() == sd2.keys() and all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    texts = [prompt(processor, "what?")] * 2
    images = [image(WIDE, 20), image(SQUARE, 21)]
    a, b = processor(texts, images=images), processor2(texts, images=images)
    assert torch.equal(a["input_ids"], b["input_ids"])
    assert torch.equal(a["pixel_values"].isnan(), b["pixel_values"].isnan())
    assert torch.equal(a["pixel_values"].nan_to_num(), b["pixel_values"].nan_to_num())
    with torch.no_grad():
        assert torch.equal(model(**a).logits, loaded(**b).logits)
