"""A tiled model, whose images each have their own number of visual tokens, in chat, the server,
evaluation (runner and lmms-eval plugin), training and `polyvis init-model`: each answer equals
the model's own generate() on the processor's inputs for that request alone, and a record with
two images of different token counts encodes and trains. Untiled models keep their tokens."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
import torch
from PIL import Image

from _serve_helpers import answer_alone, post_all, user
from _tiling_helpers import CLIP, DINO, NANO_TINY, TILED
from polyvis.cli import main
from polyvis.config import load_config
from polyvis.data.dataset import ConversationDataset
from polyvis.data.records import make_record, write_records
from polyvis.data.template import encode_conversation, for_images, prompt_ids
from polyvis.errors import DataError
from polyvis.eval.lmms import PolyVisLMMsBase
from polyvis.eval.runner import evaluate
from polyvis.models.build import build_model, load_model, save_model
from polyvis.models.tokenizer import IMAGE_END_TOKEN, IMAGE_START_TOKEN
from polyvis.serve.app import create_app
from polyvis.serve.background import BackgroundServer
from polyvis.serve.chat import answer, chat_messages
from polyvis.serve.settings import ServeSettings

NEW = 6
# (width, height) -> tiles and visual tokens (M = 16, a thumbnail): 1x2 48, 2x1 48, 2x2 80
WIDE, TALL, SQUARE = (96, 32), (32, 96), (48, 48)
COUNTS = {WIDE: 48, TALL: 48, SQUARE: 80}


def overrides(tiled: bool) -> list[str]:
    return [
        f"model.encoders=[{TILED if tiled else CLIP + '}'}, {DINO}]",
        "model.fusion={type: add}",
    ]


def image(size: tuple[int, int], seed: int) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray((torch.rand(size[1], size[0], 3, generator=g) * 255).byte().numpy())


def _saved(tiled: bool, out: Path) -> Path:
    torch.manual_seed(0)
    model, processor = build_model(load_config(NANO_TINY, overrides(tiled)))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # large random weights: answers that depend on the image and prompt
        for name, w in model.named_parameters():
            if w.dim() >= 2 and ("language_model" in name or "adapter" in name):
                w.copy_(torch.randn(w.shape, generator=g) * 0.5)
    return save_model(model, processor, out)


@pytest.fixture(scope="module")
def tiled_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _saved(True, tmp_path_factory.mktemp("tiled") / "model")


@pytest.fixture(scope="module")
def tiled(tiled_dir: Path):
    model, processor = load_model(tiled_dir)
    assert processor.tokens_vary
    assert [processor.image_token_count((h, w)) for w, h in COUNTS] == list(COUNTS.values())
    return model, processor


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    return [image(size, i) for i, size in enumerate(COUNTS)]


def alone(model, processor, content: str, images: list) -> str:
    """Greedy generate() on processor(text, images) for this one prompt, cut at EOS (tokenised
    without special tokens, as prompt_ids is)."""
    text = processor.apply_chat_template([{"role": "user", "content": content}])
    enc = processor(text, images=images, add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=NEW, do_sample=False, num_beams=1)
    ids = out[0, enc["input_ids"].shape[1] :].tolist()
    eos = model.generation_config.eos_token_id
    ids = ids[: ids.index(eos)] if eos in ids else ids
    return processor.decode(ids).strip()


# -- chat ----------------------------------------------------------------------------------------
def test_chat_answers_equal_generate_on_the_processor_inputs(tiled, images):
    model, processor = tiled
    got, want = [], []
    for im in images:
        text = processor.apply_chat_template([{"role": "user", "content": "<image>\nread it"}])
        enc = processor(text, images=im, add_special_tokens=False)
        ids = prompt_ids(for_images(processor, [im]), chat_messages("read it"))
        assert ids == enc["input_ids"][0].tolist()  # each image's own count, as the processor
        got.append(answer(model, processor, im, "read it", max_new_tokens=NEW))
        want.append(alone(model, processor, "<image>\nread it", [im]))
    assert got == want
    assert len(set(got)) > 1  # the answers depend on the image
    # a later turn keeps the first turn's image block at that image's count
    later = chat_messages("and?", [("read it", got[2])])
    ids = prompt_ids(for_images(processor, [images[2]]), later)
    assert ids.count(processor.image_token_id) == COUNTS[SQUARE]
    with pytest.raises(DataError, match="tiles images, so each <image> has its own token count"):
        prompt_ids(processor, chat_messages("read it"))  # without the images: refused


# -- the server ----------------------------------------------------------------------------------
def test_server_batches_mixed_aspect_ratios_with_the_answers_alone(tiled_dir, tiled, images):
    settings = ServeSettings(model_name="tiled", max_batch=8, batch_window_ms=300)
    cases = [("describe", [images[0]]), ("what is it", [images[1]]), ("how many", [images[2]])]
    cases.append(("compare", [images[2], images[0]]))  # two images of 80 and 48 tokens
    bodies = [{"messages": user(t, ims), "max_tokens": NEW} for t, ims in cases]
    with BackgroundServer(create_app(tiled_dir, settings)) as url:
        responses = post_all(url, bodies)
        health = httpx.get(f"{url}/health").json()
    assert [r.status_code for r in responses] == [200] * len(cases)
    got = [
        (r.json()["choices"][0]["message"]["content"], r.json()["choices"][0]["finish_reason"])
        for r in responses
    ]
    expected = [answer_alone(tiled, t, ims, NEW) for t, ims in cases]
    assert got == [(text, reason) for text, reason, _ in expected]
    assert [r.json()["usage"]["prompt_tokens"] for r in responses] == [n for *_, n in expected]
    assert len({text for text, _, _ in expected}) > 1
    assert health["requests"] == len(cases) and health["max_batch_seen"] > 1  # really batched


# -- evaluation ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory, images) -> Path:
    d = tmp_path_factory.mktemp("records")
    for size, im in zip(COUNTS, images):
        im.save(d / f"{size[0]}x{size[1]}.png")
    names = [f"{w}x{h}.png" for w, h in COUNTS]
    recs = [make_record(f"r{i}", n, [("read it", f"thing {i}")]) for i, n in enumerate(names)]
    recs.append(make_record("two", [names[2], names[0]], [("compare them", "same")]))
    return write_records(d / "val.jsonl", recs)


def test_eval_answers_equal_generation_item_by_item(tiled_dir, tiled, images, records, tmp_path):
    model, processor = tiled
    evaluate(model, processor, records, tmp_path, batch_size=4, max_new_tokens=NEW, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "answers.jsonl").read_text().splitlines()]
    per_item = [
        alone(model, processor, "<image>\nread it", [images[0]]),
        alone(model, processor, "<image>\nread it", [images[1]]),
        alone(model, processor, "<image>\nread it", [images[2]]),
        alone(model, processor, "<image>\n<image>\ncompare them", [images[2], images[0]]),
    ]
    assert [r["prediction"] for r in rows] == per_item
    assert len(set(per_item)) > 1

    # the lmms-eval plugin: one batch of the same four questions, one marker per visual
    lm = PolyVisLMMsBase(pretrained=str(tiled_dir), batch_size=4, progress=False)
    docs = [[images[0]], [images[1]], [images[2]], [images[2], images[0]]]
    lm.task_dict = {"t": {"val": dict(enumerate(docs))}}
    gen = {"max_new_tokens": NEW, "do_sample": False}
    contexts = ["read it"] * 3 + ["compare them"]
    requests = [SimpleNamespace(args=(c, gen, list, i, "t", "val")) for i, c in enumerate(contexts)]
    assert lm.generate_until(requests) == per_item


# -- training ------------------------------------------------------------------------------------
def test_two_images_of_different_counts_encode_and_train(tiled, records, tmp_path):
    model, processor = tiled
    ds = ConversationDataset([records], processor)
    item = ds[3]  # the SQUARE image (80 tokens), then the WIDE one (48)
    ids = item["input_ids"].tolist()
    tok = processor.tokenizer
    starts = [i for i, t in enumerate(ids) if t == tok.convert_tokens_to_ids(IMAGE_START_TOKEN)]
    ends = [i for i, t in enumerate(ids) if t == tok.convert_tokens_to_ids(IMAGE_END_TOKEN)]
    assert [e - s - 1 for s, e in zip(starts, ends)] == [80, 48]
    assert ids.count(processor.image_token_id) == 128
    assert item["pixel_values"].shape[0] == 2
    with torch.no_grad():
        out = model(
            input_ids=item["input_ids"][None],
            labels=item["labels"][None],
            pixel_values=item["pixel_values"],
        )
    assert math.isfinite(float(out.loss))

    two = write_records(records.parent / "train.jsonl", [ds.records[3]])
    sets = [*overrides(True), f"data.train=[{two}]", "train.max_steps=1", "train.batch_size=1"]
    from polyvis.train import train

    train(load_config(NANO_TINY, sets), tmp_path / "run", progress=False)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    losses = [json.loads(line)["loss"] for line in lines]
    assert len(losses) == 1 and math.isfinite(losses[0])


def test_count_check_adds_up_each_image_and_names_the_record(tiled, tmp_path):
    _, processor = tiled
    rec = make_record("x", ["a.png", "b.png"], [("compare", "same")])
    sizes = [(48, 48), (32, 96)]  # (height, width): 2x2 and 1x2 tiles
    enc = encode_conversation(rec, for_images(processor, sizes))
    assert enc["input_ids"].count(processor.image_token_id) == 80 + 48
    one = make_record("y", "a.png", [("compare", "same")])
    want = r"^record y: 80 <image> .*expected 128 \(1 marker\(s\), images of \[80, 48\] tokens"
    with pytest.raises(DataError, match=want):
        encode_conversation(one, for_images(processor, sizes))


def test_untiled_models_keep_their_token_ids(tmp_path):
    torch.manual_seed(0)
    _, processor = build_model(load_config(NANO_TINY, overrides(False)))
    assert for_images(processor, [(48, 48), (32, 96)]) is processor
    rec = make_record("x", ["a.png", "b.png"], [("compare", "same")])
    plain = encode_conversation(rec, processor)
    assert plain == encode_conversation(rec, processor.for_images([(48, 48), (32, 96)]))
    assert plain["input_ids"].count(processor.image_token_id) == 2 * processor.image_seq_length


# -- init-model ----------------------------------------------------------------------------------
def test_init_model_prints_the_per_image_formula(tmp_path, capsys):
    def init(name: str, tiled: bool) -> str:
        argv = ["init-model", str(NANO_TINY), "--out", str(tmp_path / name), "--set"]
        assert main([*argv, *overrides(tiled)]) == 0
        return capsys.readouterr().out

    assert (
        "16 x (1 + rows x cols) visual tokens per image, 48 to 80: encoder 'clip' tiled on grids "
        "1x2 2x1 2x2) to " in init("t", True)
    )
    untiled = init("u", False)  # the line it always printed
    assert (
        untiled.startswith("saved untrained model (")
        and "M parameters, 16 visual tokens) to " in untiled
    )
