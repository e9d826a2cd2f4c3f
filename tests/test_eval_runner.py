"""The evaluation runner and `polyvis eval`: outputs, scores, batching, skips, beams, the CLI."""

from __future__ import annotations

import json
import shutil
from collections import defaultdict
from pathlib import Path

import pytest
import torch

from polyvis.cli import main
from polyvis.data.records import read_records, write_records
from polyvis.data.template import prompt_ids
from polyvis.errors import ConfigError, DataError
from polyvis.eval import runner
from polyvis.eval.generation import generate_batch
from polyvis.eval.metrics import FAMILY_METRICS, METRICS, score_item
from polyvis.eval.report import validate_results
from polyvis.eval.runner import evaluate, load_items
from polyvis.models.build import load_model, save_model
from polyvis.serve.chat import answer

NEW = 6  # new tokens per answer: enough to see differences, cheap on a CPU


def _perturb(model: torch.nn.Module) -> None:
    """Large random LM / adapter weights: the default init answers every prompt with the same
    whitespace, which would make equality tests vacuous."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, w in model.named_parameters():
            if w.dim() >= 2 and ("language_model" in name or "adapter" in name):
                w.copy_(torch.randn(w.shape, generator=g) * 0.5)


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    model, processor = load_model(tiny_model_dir)
    _perturb(model)
    return save_model(model, processor, tmp_path_factory.mktemp("evalmodel") / "model")


@pytest.fixture(scope="module")
def loaded(model_dir: Path):
    return load_model(model_dir)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    from polyvis.data.synthetic import generate

    out = tmp_path_factory.mktemp("evaldata")
    generate(["scene", "ocr", "chart"], n=10, seed=0, out=out, image_size=32, progress=False)
    return [out / fam / "val.jsonl" for fam in ("scene", "ocr", "chart")]


@pytest.fixture(scope="module")
def run(loaded, data, tmp_path_factory: pytest.TempPathFactory):
    """One evaluation (batch size 4) written to disk: (results, out_dir)."""
    model, processor = loaded
    out = tmp_path_factory.mktemp("run")
    res = evaluate(
        model, processor, data, out_dir=out, batch_size=4, max_new_tokens=NEW, progress=False
    )
    return res, out


def _answers(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]


def _key(row: dict) -> str:
    own = row["metric"] == FAMILY_METRICS.get(row["family"], "exact_match")
    return row["family"] if own else f"{row['family']}/{row['metric']}"


def test_outputs_are_written_and_consistent(run, data, loaded):
    res, out = run
    assert {p.name for p in out.iterdir()} >= {
        "answers.jsonl",
        "results.json",
        "results.md",
        "results.png",
    }
    validate_results(json.loads((out / "results.json").read_text()))
    rows = _answers(out)
    n_records = sum(len(read_records(f)) for f in data)
    assert len(rows) == n_records == sum(res["n"].values())
    assert res["skipped"] == {} and res["skipped_ids"] == []
    assert {r["family"] for r in rows} == {"scene", "ocr", "chart"}
    assert any(r["prediction"] for r in rows)  # the perturbed model really says something
    # Per-item metrics: each group's score is the mean of its items' scores, and each item's
    # score is score_item on its own.
    groups = defaultdict(list)
    for r in rows:
        groups[_key(r)].append(r)
        assert res["metrics"][_key(r)] == r["metric"]
        if METRICS.get(r["metric"]).per_item and r["metric"] != "bleu4":
            assert r["score"] == pytest.approx(
                score_item(r["metric"], r["prediction"], [r["reference"]])
            )
    assert set(groups) == set(res["scores"])
    for key, members in groups.items():
        assert res["n"][key] == len(members)
        assert res["scores"][key] == pytest.approx(sum(m["score"] for m in members) / len(members))
    assert res["overall"] == pytest.approx(sum(res["scores"].values()) / len(res["scores"]))
    # A scene record scored by CIDEr is its own group, never averaged with exact match.
    assert res["metrics"]["scene"] == "exact_match" and res["metrics"].get("scene/cider") == "cider"
    # Families in report order, each family's own group before its family/metric groups.
    assert list(res["scores"]) == [
        "scene",
        "scene/box_accuracy",
        "scene/cider",
        "ocr",
        "chart",
        "chart/edit_similarity",
    ]
    assert list(res["n"]) == list(res["metrics"]) == list(res["scores"])
    assert res["config"]["encoders"] == ["clip", "dino"]
    assert res["model"] == str(loaded[0].name_or_path) and res["seconds"] > 0
    assert "| **overall** |" in (out / "results.md").read_text()


def test_batched_answers_equal_one_at_a_time(run, loaded, data):
    model, processor = loaded
    out1 = run[1].parent / "single"
    res1 = evaluate(
        model, processor, data, out_dir=out1, batch_size=1, max_new_tokens=NEW, progress=False
    )
    batched = [r["prediction"] for r in _answers(run[1])]
    assert [r["prediction"] for r in _answers(out1)] == batched
    assert len(set(batched)) > 1  # different prompts really get different answers
    assert res1["scores"] == pytest.approx(run[0]["scores"])


def test_prediction_equal_to_reference_scores_one(loaded, data, monkeypatch):
    model, processor = loaded
    real = runner._predict
    target = "ocr-val-000000"

    def predict(model, processor, items, images, gen, cache=None):
        preds = real(model, processor, items, images, gen, cache)
        return [it.references[0] if it.id.startswith(target) else p for it, p in zip(items, preds)]

    monkeypatch.setattr(runner, "_predict", predict)
    res = evaluate(model, processor, data[1:2], batch_size=2, max_new_tokens=2, progress=False)
    assert res["n"] == {"ocr": 1} and res["scores"]["ocr"] == 1.0


def test_multi_turn_record_answers_its_last_turn_like_chat(loaded, data, tmp_path):
    model, processor = loaded
    src = read_records(data[0])[0]
    image = data[0].parent / src["image"]
    rec = {
        "id": "two-turns",
        "image": str(image),
        "family": "scene",
        "conversations": [
            {"from": "human", "value": "<image>\nWhat colour is the first shape?"},
            {"from": "gpt", "value": "blue"},
            {"from": "human", "value": "How many shapes are there?"},
            {"from": "gpt", "value": "3"},
        ],
    }
    path = write_records(tmp_path / "multi.jsonl", [rec])
    item = load_items([path])[0]
    assert item.question == "How many shapes are there?" and item.references == ["3"]
    assert [m["role"] for m in item.messages] == ["user", "assistant", "user"]
    res = evaluate(
        model, processor, [path], out_dir=tmp_path / "o", max_new_tokens=NEW, progress=False
    )
    pred = _answers(tmp_path / "o")[0]["prediction"]
    expected = answer(
        model,
        processor,
        image,
        "How many shapes are there?",
        history=[("<image>\nWhat colour is the first shape?", "blue")],
        max_new_tokens=NEW,
    )
    assert pred == expected and res["n"] == {"scene": 1}


def test_missing_and_corrupt_images_are_skipped_and_counted(loaded, data, tmp_path):
    model, processor = loaded
    folder = tmp_path / "chart"
    shutil.copytree(data[2].parent, folder)
    records = read_records(folder / "val.jsonl")
    (folder / "broken.png").write_bytes(b"not a png")
    records[0]["image"] = "images/val/nope.png"
    records[1]["image"] = "broken.png"
    write_records(folder / "val.jsonl", records)
    out = tmp_path / "out"
    res = evaluate(
        model, processor, [folder / "val.jsonl"], out_dir=out, max_new_tokens=2, progress=False
    )
    assert res["skipped"] == {"missing": 1, "corrupt": 1}
    assert res["skipped_ids"] == [records[0]["id"], records[1]["id"]]
    assert len(_answers(out)) == sum(res["n"].values()) == len(records) - 2
    for rec in records:
        rec["image"] = "images/val/nope.png"
    write_records(folder / "val.jsonl", records)
    with pytest.raises(DataError, match=f"no record could be evaluated: {len(records)} skipped"):
        evaluate(model, processor, [folder / "val.jsonl"], progress=False)


def test_metric_override_and_limit(loaded, data):
    model, processor = loaded
    res = evaluate(
        model, processor, data, metric="edit_similarity", limit=2, max_new_tokens=2, progress=False
    )
    assert res["n"] == {"scene": 2, "ocr": 1, "chart": 2}
    assert set(res["metrics"].values()) == {"edit_similarity"}
    with pytest.raises(ConfigError, match="metric: unknown metric 'bogus'"):
        load_items(data, metric="bogus")
    with pytest.raises(ConfigError, match="limit"):
        load_items(data, limit=0)


def test_generation_stops_at_eos(loaded, monkeypatch):
    model, processor = loaded
    tok = processor.tokenizer
    words = tok("yes no", add_special_tokens=False)["input_ids"]
    prompt = prompt_ids(processor, [{"role": "user", "content": "hi"}])

    def fake_generate(input_ids, **kw):  # the answer, EOS, then tokens that must be ignored
        tail = [*words, tok.eos_token_id, *words]
        return torch.cat([input_ids, torch.tensor([tail] * len(input_ids))], dim=1)

    monkeypatch.setattr(model, "generate", fake_generate)
    assert generate_batch(model, processor, [prompt], [[]], max_new_tokens=8) == ["yes no"]
    assert generate_batch(model, processor, [prompt], [[]], stop=[" no"]) == ["yes"]


def test_beam_search_gives_each_beam_all_images_of_its_prompt(loaded, data):
    """With one new token, beam search picks the greedy token; a two-image prompt only does so
    when every beam sees both images in order."""
    from PIL import Image

    model, processor = loaded
    colour = {c: Image.new("RGB", (32, 32), c) for c in ("blue", "red", "green", "black")}
    prompts = [
        prompt_ids(processor, [{"role": "user", "content": f"<image>\n<image>\n{q}"}])
        for q in ("which one is red?", "the same?")
    ]
    # Pairs whose answer depends on the second image (a beam seeing [blue, blue] answers otherwise).
    images = [[colour["blue"], colour["red"]], [colour["green"], colour["black"]]]
    greedy = generate_batch(model, processor, prompts, images, max_new_tokens=1)
    beams = generate_batch(model, processor, prompts, images, max_new_tokens=1, num_beams=3)
    assert beams == greedy


def test_cli_eval_and_compare(model_dir, tiny_model_dir, data, tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    common = ["--data", *map(str, data), "--limit", "2", "--max-new-tokens", "3", "--no-progress"]
    assert main(["eval", str(model_dir), "--out", str(a), "--name", "perturbed", *common]) == 0
    assert main(["eval", str(tiny_model_dir), "--out", str(b), "--batch-size", "2", *common]) == 0
    printed = capsys.readouterr().out
    assert "| **overall** |" in printed and "answers.jsonl" in printed
    assert json.loads((a / "results.json").read_text())["name"] == "perturbed"
    assert len(_answers(a)) == 5
    assert main(["compare", str(a), str(b), "--out", str(tmp_path / "cmp")]) == 0
    table = capsys.readouterr().out
    assert "| perturbed |" in table and "| model |" in table
    assert (tmp_path / "cmp" / "compare.png").is_file()


def test_cli_errors_are_one_line(model_dir, data, tmp_path, capsys):
    rc = main(
        ["eval", str(model_dir), "--data", str(data[0]), "--out", str(tmp_path), "--metric", "nope"]
    )
    assert rc == 2
    assert "metric: unknown metric 'nope'" in capsys.readouterr().err
    rc = main(["eval", str(model_dir), "--data", str(tmp_path / "x.jsonl"), "--out", str(tmp_path)])
    assert rc == 2
    assert "x.jsonl: records file not found" in capsys.readouterr().err
    rc = main(
        ["eval", str(model_dir), "--data", str(data[0]), "--out", str(tmp_path), "--beams", "0"]
    )
    assert rc == 2 and "--beams: must be at least 1" in capsys.readouterr().err


def test_feature_cache_gives_the_same_answers_and_encodes_each_image_once(
    loaded, data, tmp_path, monkeypatch
):
    from polyvis.train.feature_cache import FeatureCache

    model, processor = loaded
    monkeypatch.setenv("POLYVIS_CACHE", str(tmp_path / "cache"))
    plain = evaluate(model, processor, data, batch_size=4, max_new_tokens=NEW, progress=False,
                     out_dir=tmp_path / "plain")  # fmt: skip
    first = evaluate(model, processor, data, batch_size=4, max_new_tokens=NEW, progress=False,
                     out_dir=tmp_path / "first", feature_cache=True)  # fmt: skip
    assert first["settings"]["feature_cache"] is True
    stores = FeatureCache.for_model(model, processor).stores  # one per encoder, written to disk
    assert len(stores) == 2 and all(set(s.index) == _hashes(data) for s in stores)

    def no_encoders(*args, **kwargs):
        raise AssertionError("the encoders ran although every image was cached")

    monkeypatch.setattr(model, "encode_images", no_encoders)
    second = evaluate(model, processor, data, batch_size=4, max_new_tokens=NEW, progress=False,
                      out_dir=tmp_path / "second", feature_cache=True)  # fmt: skip
    rows = [[(r["id"], r["prediction"]) for r in _answers(tmp_path / k)]
            for k in ("plain", "first", "second")]  # fmt: skip
    assert rows[0] == rows[1] == rows[2]
    assert plain["scores"] == first["scores"] == second["scores"]
    images = sum(len(it.image_paths) for it in runner.load_items(data))
    # a batch whose images an earlier batch encoded already is read
    assert sum(first["feature_cache"].values()) == images and first["feature_cache"]["encoded"]
    assert second["feature_cache"] == {"read": images, "encoded": 0}
    assert "feature_cache" not in plain


def _hashes(files: list[Path]) -> set[str]:
    """The distinct images (by their bytes' sha1) of these records files."""
    from polyvis.data.images import image_hash

    return {image_hash(p) for it in runner.load_items(files) for p in it.image_paths}
