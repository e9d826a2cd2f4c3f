"""Generation with a tiny random polyvis model loaded by path: KV cache, left padding, several
images per prompt, image features computed once, and the placeholder-count checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from polyvis.errors import DataError
from polyvis.models.build import load_model

NEW = 6  # new tokens per generate call


@pytest.fixture(scope="module")
def loaded(tiny_model_dir: Path):
    return load_model(tiny_model_dir)


def image(seed: int, size: tuple[int, int] = (48, 40)) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    arr = (torch.rand(size[1], size[0], 3, generator=g) * 255).to(torch.uint8).numpy()
    return Image.fromarray(arr)


def prompt(processor, question: str) -> str:
    return processor.apply_chat_template([{"role": "user", "content": question}])


def greedy(model, inputs, **kw):
    """New tokens and per-step scores of a greedy run that never stops early."""
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


def test_cache_and_no_cache_agree(loaded):
    model, processor = loaded
    inputs = processor(prompt(processor, "<image>\nwhat is in the picture?"), images=[image(1)])
    tok_c, sc_c = greedy(model, inputs, use_cache=True)
    tok_n, sc_n = greedy(model, inputs, use_cache=False)
    assert torch.equal(tok_c, tok_n)
    torch.testing.assert_close(sc_c, sc_n, atol=1e-4, rtol=1e-4)


def test_left_padded_batch_equals_each_prompt_alone(loaded):
    model, processor = loaded
    questions = [
        "<image>\nhi",
        "<image>\nhow many red circles are there in this image?",
        "<image>\nthe table",
    ]
    texts = [prompt(processor, q) for q in questions]
    images = [image(10 + i) for i in range(3)]
    batch = processor(texts, images=images)
    lengths = batch["attention_mask"].sum(1)
    assert len(set(lengths.tolist())) == 3  # really different lengths
    assert bool((batch["attention_mask"][:, 0] == 0).any())  # and left padded
    tok_b, sc_b = greedy(model, batch)
    for i in range(3):
        tok_1, sc_1 = greedy(model, processor(texts[i], images=[images[i]]))
        assert torch.equal(tok_b[i], tok_1[0]), f"prompt {i}"
        torch.testing.assert_close(sc_b[i], sc_1[0], atol=1e-4, rtol=1e-4)


def test_two_images_in_one_prompt_are_spliced_in_order(loaded):
    model, processor = loaded
    m = processor.image_seq_length
    imgs = [image(21), image(22, size=(30, 60))]
    inputs = processor(prompt(processor, "<image> and <image>: which differs?"), images=imgs)
    assert inputs["pixel_values"].shape[0] == 2
    ids = inputs["input_ids"][0]
    assert int((ids == model.config.image_token_id).sum()) == 2 * m

    seen = {}

    def grab(module, args, kw):
        seen["embeds"] = kw["inputs_embeds"]

    hook = model.language_model.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        hook.remove()
    with torch.no_grad():  # each image on its own, in prompt order
        alone = [model.get_image_features(processor.preprocess_images([im])) for im in imgs]
    pos = (ids == model.config.image_token_id).nonzero().squeeze(1)
    spliced = seen["embeds"][0, pos]
    torch.testing.assert_close(spliced[:m], alone[0][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(spliced[m:], alone[1][0], atol=1e-5, rtol=1e-5)

    tokens, _ = greedy(model, inputs)
    assert tokens.shape == (1, NEW)


def test_batch_with_different_image_counts(loaded):
    model, processor = loaded
    texts = [prompt(processor, "<image><image> compare"), prompt(processor, "<image> describe")]
    imgs = [[image(31), image(32)], image(33)]
    batch = processor(texts, images=imgs)
    assert batch["pixel_values"].shape[0] == 3
    tok_b, _ = greedy(model, batch)
    tok_0, _ = greedy(model, processor(texts[0], images=imgs[0]))
    tok_1, _ = greedy(model, processor(texts[1], images=[imgs[1]]))
    assert torch.equal(tok_b[0], tok_0[0]) and torch.equal(tok_b[1], tok_1[0])


def test_generate_encodes_images_once(loaded):
    model, processor = loaded
    calls = {"features": 0, "encoders": [0] * len(model.encoders)}
    original = model.get_image_features

    def counting(*args, **kw):
        calls["features"] += 1
        return original(*args, **kw)

    hooks = [
        enc.register_forward_hook(
            lambda *_, k=k: calls["encoders"].__setitem__(k, calls["encoders"][k] + 1)
        )
        for k, enc in enumerate(model.encoders)
    ]
    model.get_image_features = counting
    try:
        inputs = processor(prompt(processor, "<image>\ncount"), images=[image(41)])
        greedy(model, inputs, use_cache=True)
    finally:
        del model.get_image_features
        for h in hooks:
            h.remove()
    assert calls["features"] == 1
    assert calls["encoders"] == [1] * len(model.encoders)


def test_placeholder_count_mismatch_names_both_counts(loaded):
    model, processor = loaded
    m = processor.image_seq_length
    inputs = processor(prompt(processor, "<image>\nhello"), images=[image(51)])
    ids = inputs["input_ids"].clone()
    first = int((ids[0] == model.config.image_token_id).nonzero()[0])
    ids[0, first] = processor.tokenizer.eos_token_id  # one placeholder fewer
    with pytest.raises(
        DataError, match=rf"{m - 1} <image> tokens.*1 image\(s\) x {m} tokens = {m} features"
    ):
        model(
            input_ids=ids,
            attention_mask=inputs["attention_mask"],
            pixel_values=inputs["pixel_values"],
        )
    # two images' pixels for one image's placeholders
    pixels = inputs["pixel_values"].repeat(2, 1, 1, 1, 1)
    with pytest.raises(DataError, match=rf"hold {m} <image> tokens.*= {2 * m} features"):
        model(input_ids=inputs["input_ids"], pixel_values=pixels)
    with pytest.raises(DataError, match="no pixel_values"):
        model(input_ids=inputs["input_ids"])


def test_processor_rejects_marker_image_mismatch(loaded):
    _, processor = loaded
    with pytest.raises(DataError, match=r"prompt 0 has 2 <image> marker\(s\) but 1 image\(s\)"):
        processor(prompt(processor, "<image> <image> two?"), images=[image(61)])
    with pytest.raises(DataError, match=r"prompt 1 has 1 <image> marker\(s\) but 0 image\(s\)"):
        processor(["no image here", "<image> one"], images=[[], []])
    with pytest.raises(DataError, match="2 prompts but 3 image entries"):
        processor(["<image> a", "<image> b"], images=[image(1), image(2), image(3)])
