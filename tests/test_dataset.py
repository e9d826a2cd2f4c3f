"""Records -> training batches: templates and label masks, safe images, dataset, collator, sampler."""

from __future__ import annotations

import hashlib
import struct
import zlib
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from polyvis.data.collate import Collator, LengthGroupedSampler, model_inputs
from polyvis.data.dataset import ConversationDataset
from polyvis.data.images import ImageError, image_hash, load_image
from polyvis.data.records import make_record, write_records
from polyvis.data.template import IGNORE_INDEX, encode_conversation
from polyvis.errors import ConfigError, DataError
from polyvis.models.tokenizer import PLAIN_CHAT_TEMPLATE

ZEPHYR_LIKE = (  # no {% generation %} markers: the incremental path
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}"
    "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
# Not prefix-stable (the header depends on the whole conversation): answers are located by text.
COUNTING = "{{ messages|length }} messages\n" + ZEPHYR_LIKE


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from polyvis.models.build import load_model

    model, processor = load_model(tiny_model_dir)
    return model.eval(), processor


def _png(path: Path, seed: int, size: tuple[int, int] = (40, 32), mode: str = "RGB") -> Path:
    g = torch.Generator().manual_seed(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    arr = torch.randint(0, 256, (size[1], size[0], channels), generator=g, dtype=torch.uint8)
    arr = arr.squeeze(-1) if channels == 1 else arr
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.numpy(), mode).save(path)
    return path


def _png_header(path: Path, width: int, height: int) -> Path:
    """A PNG that declares width x height pixels and holds (almost) no data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


def _answer_spans(tokenizer, enc) -> list[str]:
    """Decoded runs of consecutive label tokens."""
    runs, cur = [], []
    for tok, lab in zip(enc["input_ids"], enc["labels"]):
        if lab != IGNORE_INDEX:
            assert lab == tok  # labels are the ids themselves (the LM shifts them)
            cur.append(lab)
        elif cur:
            runs.append(cur)
            cur = []
    runs += [cur] if cur else []
    return [tokenizer.decode(r, skip_special_tokens=False) for r in runs]


# -- templates and labels ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "image, turns",
    [
        ("a.png", [("How many circles?", "3")]),
        (
            ["a.png", "b.png"],
            [("Compare them.", "the left one is red"), ("And the right?", "blue")],
        ),
        (None, [("hello there", "hi"), ("what is 2 + 2?", "4"), ("thanks", "you are welcome")]),
    ],
)
def test_labels_decode_to_answers(tiny, image, turns):
    _, proc = tiny
    tok = proc.tokenizer
    rec = make_record("r", image, turns)
    enc = encode_conversation(rec, proc, max_length=None)
    assert _answer_spans(tok, enc) == [a + tok.eos_token for _, a in turns]
    n_images = 0 if image is None else len(image) if isinstance(image, list) else 1
    assert enc["input_ids"].count(proc.image_token_id) == n_images * proc.image_seq_length
    assert not enc["truncated"]
    # The prompt before the first answer is tokenised exactly as the inference prompt is.
    first = rec["conversations"][0]["value"]
    prompt = proc.apply_chat_template(
        [{"role": "user", "content": first}], add_generation_prompt=True
    )
    blank = [Image.new("RGB", (32, 32))] * first.count("<image>")
    prompt_ids = proc(prompt, images=blank or None)["input_ids"][0].tolist()
    assert enc["input_ids"][: len(prompt_ids)] == prompt_ids
    assert enc["labels"][len(prompt_ids)] != IGNORE_INDEX


def test_templates_without_generation_markers(tiny):
    _, proc = tiny
    tok = proc.tokenizer
    rec = make_record("r", "a.png", [("How many?", "3"), ("And squares?", "two of them")])
    answers = ["3</s>", "two of them</s>"]
    marked = encode_conversation(rec, proc)
    # The plain template with its markers removed renders the same text: same ids, same labels.
    unmarked = PLAIN_CHAT_TEMPLATE.replace("{% generation %}", "").replace(
        "{% endgeneration %}\n", ""
    )
    assert encode_conversation(rec, proc, template=unmarked) == marked
    for template in (ZEPHYR_LIKE, COUNTING):
        enc = encode_conversation(rec, proc, template=template)
        assert _answer_spans(tok, enc) == answers, template
        assert enc["input_ids"].count(proc.image_token_id) == proc.image_seq_length
    drops_answers = "{{ messages|length }}\n{% for m in messages if m['role'] == 'user' %}{{ m['content'] }}{% endfor %}"
    with pytest.raises(DataError, match="record r: .* does not contain the answer"):
        encode_conversation(rec, proc, template=drops_answers)
    # The tokenizer's own template is used when it has one.
    saved = tok.chat_template
    try:
        tok.chat_template = ZEPHYR_LIKE
        assert encode_conversation(rec, proc) == encode_conversation(
            rec, proc, template=ZEPHYR_LIKE
        )
    finally:
        tok.chat_template = saved


def test_truncation_keeps_image_blocks_and_an_answer(tiny):
    _, proc = tiny
    rec = make_record("r", "a.png", [("How many?", "3"), ("And squares?", "two of them")])
    full = encode_conversation(rec, proc)
    answer_pos = [i for i, x in enumerate(full["labels"]) if x != IGNORE_INDEX]
    image_end = max(i for i, t in enumerate(full["input_ids"]) if t == proc.image_token_id) + 1
    cut = answer_pos[0] + 1  # keeps exactly one answer token
    enc = encode_conversation(rec, proc, max_length=cut)
    assert enc["truncated"] and enc["input_ids"] == full["input_ids"][:cut]
    assert enc["labels"] == full["labels"][:cut]
    assert encode_conversation(rec, proc, max_length=answer_pos[0]) is None  # no answer left
    assert encode_conversation(rec, proc, max_length=image_end - 5) is None  # would cut the image
    assert encode_conversation(rec, proc, max_length=len(full["input_ids"])) == full


# -- images ------------------------------------------------------------------------------------------
def test_load_image_modes_and_hash(tmp_path):
    for mode in ("RGB", "RGBA", "L"):
        path = _png(tmp_path / f"{mode}.png", 1, mode=mode)
        im = load_image(path)
        assert im.mode == "RGB" and im.size == (40, 32)
        assert image_hash(path) == hashlib.sha1(path.read_bytes()).hexdigest()
    # Fully transparent pixels become white, not the colour stored under alpha 0.
    Image.new("RGBA", (4, 4), (255, 0, 0, 0)).save(tmp_path / "clear.png")
    assert load_image(tmp_path / "clear.png").getpixel((0, 0)) == (255, 255, 255)


def test_broken_images_raise_naming_the_file(tmp_path):
    good = _png(tmp_path / "good.png", 2)
    (tmp_path / "noise.png").write_bytes(b"definitely not an image")
    (tmp_path / "cut.png").write_bytes(good.read_bytes()[:100])
    cases = {"missing.png": "missing", "noise.png": "corrupt", "cut.png": "corrupt"}
    for name, reason in cases.items():
        with pytest.raises(ImageError) as info:
            load_image(tmp_path / name)
        assert info.value.reason == reason and name in str(info.value)
        assert isinstance(info.value, DataError)


def test_decompression_bombs_are_refused(tmp_path):
    bomb = _png_header(tmp_path / "bomb.png", 9000, 9000)  # 81 Mpx, under PIL's own limit
    with pytest.raises(ImageError, match=r"bomb\.png: image declares 9000x9000") as info:
        load_image(bomb)
    assert info.value.reason == "too_large"
    huge = _png_header(tmp_path / "huge.png", 100_000, 100_000)  # PIL's own check fires first
    with pytest.raises(ImageError, match="huge.png") as info:
        load_image(huge)
    assert info.value.reason == "too_large"
    small = _png(tmp_path / "small.png", 3)
    with pytest.raises(ImageError, match="over the limit of 1000"):
        load_image(small, max_pixels=1000)
    assert load_image(small, max_pixels=40 * 32).size == (40, 32)


# -- dataset, collator, model ------------------------------------------------------------------------
def _mixed_records(root: Path) -> Path:
    _png(root / "img" / "a.png", 10)
    _png(root / "img" / "b.png", 11, size=(64, 48))
    _png(root / "img" / "c.png", 12, size=(24, 24), mode="L")
    recs = [
        make_record("one", "img/a.png", [("How many circles?", "3")]),
        make_record("text", None, [("Say hi.", "hi"), ("Again?", "hi again")]),
        make_record("two", ["img/b.png", "img/c.png"], [("Which is larger?", "the first")]),
    ]
    return write_records(root / "train.jsonl", recs)


def test_batch_loss_matches_samples_one_at_a_time(tiny, tmp_path):
    model, proc = tiny
    ds = ConversationDataset([_mixed_records(tmp_path)], proc, max_length=256)
    items = [ds[i] for i in range(len(ds))]
    assert [x["pixel_values"].shape[0] for x in items] == [1, 0, 2]
    assert items[0]["pixel_values"].shape[1:] == (2, 3, 64, 64)
    collate = Collator(proc.tokenizer.pad_token_id)
    batch = next(iter(DataLoader(ds, batch_size=3, collate_fn=collate)))
    assert batch["ids"] == ["one", "text", "two"] and batch["skipped"] == 0
    assert torch.equal(
        batch["pixel_values"], torch.cat([items[0]["pixel_values"], items[2]["pixel_values"]])
    )
    assert batch["image_hashes"] == items[0]["image_hashes"] + items[2]["image_hashes"]
    n_placeholders = int((batch["input_ids"] == proc.image_token_id).sum())
    assert n_placeholders == batch["pixel_values"].shape[0] * proc.image_seq_length
    with torch.no_grad():
        loss = model(**model_inputs(batch)).loss
        # Reference: each sample alone, weighted by its number of predicted (shifted) tokens.
        total, count = 0.0, 0
        for x in items:
            single = collate([x])
            n = int((single["labels"][:, 1:] != IGNORE_INDEX).sum())
            total += model(**model_inputs(single)).loss.item() * n
            count += n
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(total / count, rel=1e-4)


def test_bad_records_are_skipped_counted_and_the_rest_trains(tiny, tmp_path):
    model, proc = tiny
    _mixed_records(tmp_path)
    (tmp_path / "img" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    _png_header(tmp_path / "img" / "bomb.png", 9000, 9000)
    long_q = " ".join(["word"] * 400)
    bad = [
        make_record("corrupt", "img/broken.png", [("What is it?", "a cat")]),
        make_record("missing", "img/nowhere.png", [("What is it?", "a dog")]),
        make_record("bomb", "img/bomb.png", [("What is it?", "a bomb")]),
        make_record("long", "img/a.png", [(long_q, "too late")]),
    ]
    extra = write_records(tmp_path / "more" / "bad.json", bad)
    ds = ConversationDataset(
        [tmp_path / "train.jsonl", extra], proc, max_length=256, image_root=tmp_path
    )
    assert ds.image_paths(3) == [tmp_path / "img" / "broken.png"]  # image_root, not more/
    assert ds.skipped == {}  # lazy: nothing opened yet
    loader = DataLoader(ds, batch_size=len(ds), collate_fn=Collator(proc.tokenizer.pad_token_id))
    batch = next(iter(loader))
    assert batch["ids"] == ["one", "text", "two"] and batch["skipped"] == 4
    assert ds.skipped == {"corrupt": 1, "missing": 1, "too_large": 1, "too_long": 1}
    assert ds.skipped_ids == ["corrupt", "missing", "bomb", "long"]
    model.set_trainable(projector=True)
    loss = model(**model_inputs(batch)).loss
    loss.backward()
    grads = [p.grad for p in model.parameter_groups()["projector"] if p.grad is not None]
    assert torch.isfinite(loss) and grads and all(torch.isfinite(g).all() for g in grads)
    model.zero_grad(set_to_none=True)
    next(iter(loader))  # a second epoch counts each record once
    assert sum(ds.skipped.values()) == 4


def test_skips_found_in_worker_processes_reach_the_main_process(tiny, tmp_path):
    _, proc = tiny
    _png(tmp_path / "ok.png", 4)
    recs = [
        make_record(f"r{i}", "ok.png" if i % 2 else "gone.png", [("Q?", "A")]) for i in range(6)
    ]
    ds = ConversationDataset(write_records(tmp_path / "r.jsonl", recs), proc)
    loader = DataLoader(
        ds,
        batch_size=2,
        num_workers=2,
        collate_fn=Collator(proc.tokenizer.pad_token_id),
        multiprocessing_context="fork",
    )
    assert all(n > 0 for n in ds.lengths())  # tokenised in the main process, before the fork
    batches = list(loader)
    assert sum(b["skipped"] for b in batches) == 3
    assert ds.skipped == {"missing": 3} and ds.skipped_ids == ["r0", "r2", "r4"]


def test_lengths_and_paths_relative_to_each_file(tiny, tmp_path):
    _, proc = tiny
    _png(tmp_path / "sub" / "x.png", 5)
    recs = [
        make_record("x", "x.png", [("Q?", "A")]),
        make_record("t", None, [("Only text?", "yes")]),
        make_record("cut", "x.png", [("Q?", " ".join(["long answer"] * 200))]),
        make_record("drop", "x.png", [(" ".join(["question"] * 300), "A")]),
    ]
    ds = ConversationDataset(write_records(tmp_path / "sub" / "r.json", recs), proc, max_length=128)
    assert ds.image_paths(0) == [tmp_path / "sub" / "x.png"]
    lengths = ds.lengths()
    assert lengths[:3] == [len(ds[i]["input_ids"]) for i in range(3)]
    assert lengths[2] == 128 and lengths[3] == 0 and ds[3] is None
    assert ds.truncated_ids == ["cut"] and ds.skipped == {"too_long": 1}
    assert ds[1]["pixel_values"].shape == (0, 2, 3, 64, 64) and ds[1]["image_hashes"] == []
    with pytest.raises(DataError, match="record id 'x' is also in"):
        ConversationDataset([tmp_path / "sub" / "r.json", tmp_path / "sub" / "r.json"], proc)


def test_collator_padding_sides_and_empty_batches():
    a = {"id": "a", "input_ids": torch.tensor([5, 6, 7]), "labels": torch.tensor([-100, 6, 7])}
    b = {"id": "b", "input_ids": torch.tensor([8]), "labels": torch.tensor([8])}
    right = Collator(pad_token_id=0)([a, None, b])
    assert right["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert right["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert right["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert right["skipped"] == 1 and right["ids"] == ["a", "b"] and "pixel_values" not in right
    left = Collator(pad_token_id=1, padding_side="left", pad_to_multiple_of=4)([a, b])
    assert left["input_ids"].tolist() == [[1, 5, 6, 7], [1, 1, 1, 8]]
    assert left["labels"].tolist() == [[-100, -100, 6, 7], [-100, -100, -100, 8]]
    empty = Collator(pad_token_id=0)([None, None])
    assert empty["input_ids"].shape == (0, 0) and empty["skipped"] == 2
    with pytest.raises(ConfigError, match="padding_side"):
        Collator(0, padding_side="middle")


def test_length_grouped_sampler_groups_and_is_deterministic():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 500, (256,), generator=g).tolist()
    sampler = LengthGroupedSampler(lengths, batch_size=4, seed=7)
    first = list(sampler)
    assert sorted(first) == list(range(256)) and first == list(sampler)
    assert list(LengthGroupedSampler(lengths, 4, seed=8)) != first
    sampler.set_epoch(1)
    second = list(sampler)
    assert second != first and sorted(second) == list(range(256))
    sampler.set_epoch(0)
    assert list(sampler) == first

    def mean_spread(order):
        batches = [[lengths[i] for i in order[k : k + 4]] for k in range(0, len(order), 4)]
        return sum(max(b) - min(b) for b in batches) / len(batches)

    shuffled = torch.randperm(256, generator=torch.Generator().manual_seed(7)).tolist()
    assert mean_spread(first) < 0.25 * mean_spread(shuffled)
    assert lengths[first[0]] == max(lengths)  # the longest batch comes first
    assert list(LengthGroupedSampler([], 4)) == []
