"""`polyvis ablate` over a real base (tiny checkpoints saved to disk and loaded by path, records
files on disk), both protocols: what would stop a grid only after some runs trained is refused
before the first one launches, and a refused rerun leaves the grid's record as it was."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers as T
import yaml
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from _inline_runs import inline_launcher, use_launcher
from polyvis.errors import ConfigError
from polyvis.nano.ablate import run_ablation

TINY = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 2, "image_size": 32, "patch_size": 8}  # fmt: skip


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CLIP encoder and a Qwen2 LM with its tokenizer, saved as a practitioner has them, and
    OCR records (32 px) in train, val and test files."""
    from polyvis.data.synthetic import generate

    root = tmp_path_factory.mktemp("real")
    torch.manual_seed(0)
    T.CLIPVisionModel(T.CLIPVisionConfig(**TINY)).save_pretrained(root / "clip")
    T.CLIPImageProcessorPil(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    ).save_pretrained(root / "clip")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=280,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(["What does the text say? sun 0123"] * 4, trainer=trainer)
    fast = T.PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )
    lm = T.Qwen2Config(**{k: TINY[k] for k in ("hidden_size", "intermediate_size")},
                       num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                       vocab_size=len(fast), tie_word_embeddings=True)  # fmt: skip
    T.Qwen2ForCausalLM(lm).save_pretrained(root / "lm")
    fast.save_pretrained(root / "lm")
    generate(["ocr"], n=5, seed=0, out=root / "data", image_size=32, splits=(0.6, 0.2, 0.2),
             progress=False)  # fmt: skip
    return root


def _base(root: Path, **data: list[str]) -> dict:
    files = {s: [str(root / "data" / "ocr" / f"{s}.jsonl")] for s in ("train", "val", "test")}
    return {
        "model": {
            "encoders": [{"name": "clip", "path": str(root / "clip"), "layers": [-2]}],
            "adapter": {"type": "mlp", "depth": 2},
            "llm": {"path": str(root / "lm")},
        },
        "data": {**files, **data, "max_length": 64},
        "train": {"max_steps": 3, "batch_size": 2, "lr": 1e-3, "lr_llm": 5e-4},
    }


def _ablation(tmp_path: Path, base: dict, **spec) -> Path:
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    grid = {"encoders": [["clip"]], "seeds": [0]}
    doc = {"base": "base.yaml", "protocol": "fair", "grid": grid, "jobs": 1, **spec}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _inline(launched: list):
    """Runs in this process (a worker would import torch again), each recorded by its name."""
    return inline_launcher(launched, lambda spec, stages: spec.name)


_BROKEN = [
    ("encoder", "base.model.encoders[1].path"),
    ("train", "base.data.train[1]"),
    ("val", "base.data.val[0]"),
    ("test", "base.data.test[0]"),
]


# protocol: none scores on eval.files (checked already) and reads no val: its cases are two
@pytest.mark.parametrize(
    "protocol, broken, field",
    [("fair", *b) for b in _BROKEN] + [("none", *b) for b in _BROKEN[:2]],
)
def test_a_missing_checkpoint_or_records_file_is_named_before_any_run_trains(
    world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, protocol: str, broken: str,
    field: str,
):  # fmt: skip
    """Each was found only by a run's worker: after the runs before it trained, and a missing
    test file only once every choice was made (fair)."""
    base = _base(world)
    gone = str(tmp_path / "gone" / "x")
    grid = {"encoders": [["clip"]], "seeds": [0]}
    if broken == "encoder":  # the second cell's: the first would train before it failed
        base["model"]["encoders"].append({"name": "dino", "path": gone, "layers": [-1]})
        grid.update(encoders=[["clip"], ["clip", "dino"]], fusion=["add"])
    else:
        files = base["data"][broken]
        files.insert(len(files) if broken == "train" else 0, gone + ".jsonl")
    extra = {"eval": {"files": base["data"]["test"]}} if protocol == "none" else {}
    path = _ablation(tmp_path, base, protocol=protocol, grid=grid, **extra)
    use_launcher(monkeypatch, _inline(launched := []))
    with pytest.raises(ConfigError) as err:
        run_ablation(path, tmp_path / "out")
    assert err.value.field == field and gone in str(err.value) and launched == []


@pytest.fixture(scope="module")
def finished(world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished fair grid over the real base: one cell, one candidate, one seed."""
    folder = tmp_path_factory.mktemp("grid")
    path = _ablation(folder, _base(world), select={"lr": [1e-3]})
    with pytest.MonkeyPatch.context() as mp:
        use_launcher(mp, _inline(launched := []))
        run_ablation(path, folder / "out")
    assert launched == ["clip | lr=0.001 | seed 0"] * 2  # val, then the test scores and FLOPs
    return folder


def _records(out: Path) -> dict[str, bytes]:
    return {n: (out / n).read_bytes() for n in ("protocol.json", "selection.json", "wall.json")}


def test_a_changed_train_value_is_refused_before_the_grid_record_is_rewritten(
    world: Path, finished: Path, monkeypatch: pytest.MonkeyPatch
):
    """The refusal came from the first launch, after protocol.json had been rewritten with the
    refused plan (its base, budget and align stage) and the wall clock had counted it."""
    out = finished / "out"
    before = _records(out)
    base = _base(world)
    base["train"]["lr_llm"] = 1e-4
    path = _ablation(finished, base, select={"lr": [1e-3]})
    use_launcher(monkeypatch, _inline(launched := []))
    with pytest.raises(ConfigError, match=r"run clip \| lr=0.001 \| seed 0: 0.0001 differs") as e:
        run_ablation(path, out)
    assert e.value.field == "train.lr_llm" and launched == []
    assert _records(out) == before


def test_other_select_candidates_are_refused_before_they_train(
    world: Path, finished: Path, monkeypatch: pytest.MonkeyPatch
):
    """New candidates trained first, then the grid stopped saying the val scores now choose
    otherwise: they had not, the candidates had changed."""
    out = finished / "out"
    before = _records(out)
    path = _ablation(finished, _base(world), select={"lr": [1e-3, 2e-3]})
    use_launcher(monkeypatch, _inline(launched := []))
    with pytest.raises(ConfigError, match="cell clip: candidates .* chose among") as e:
        run_ablation(path, out)
    assert e.value.field == "select" and launched == []
    assert _records(out) == before
    # the grid as it was is still whole: a rerun launches nothing and keeps its leaderboard
    path = _ablation(finished, _base(world), select={"lr": [1e-3]})
    doc = run_ablation(path, out)
    assert launched == [] and doc == json.loads((out / "leaderboard.json").read_text())


@pytest.mark.parametrize(
    ("extra", "field", "words"),
    [
        ({"select": {"lr": [-1.0, 1e-3]}}, "select.lr", "greater than 0"),
        ({"select": {"lr_typo": [1e-3]}}, "select.lr_typo", "unknown field"),
        # the budget and the seeds are every cell's: a candidate of them ran other budgets, or
        # (seed) the same run twice under two names
        ({"select": {"max_steps": [2, 4]}}, "select.max_steps", "the same for every cell"),
        ({"select": {"seed": [1, 2]}}, "select.seed", "grid.seeds"),
        ({"grid": {"encoders": [["clip", "clip2"]], "fusion": ["add", "nope"]}}, "grid.fusion[1]",
         "unknown fusion 'nope'"),
        ({"grid": {"encoders": [["clip"]], "adapter": ["nope"]}}, "grid.adapter[0]",
         "unknown adapter 'nope'"),
        # nano options a real base silently ignored: its own budget and data ran instead
        ({"steps": 10}, "steps", "train.max_steps"),
        ({"difficulty": {"ocr": "easy"}}, "difficulty", "nano ablations only"),
        # a string was read letter by letter as test files; a list as option names
        ({"eval": {"files": "test.jsonl"}}, "eval.files", "a list of records files"),
        ({"eval": ["files"]}, "eval", "by key"),
        # a grid without cells ran the selection, then failed in the statistics
        ({"grid": {"encoders": []}}, "grid", "no cells"),
        ({"grid": {"encoders": [["clip", "clip2"]], "fusion": []}}, "grid", "no cells"),
        ({"grid": {"encoders": [["clip"]], "seeds": [0, -1]}}, "grid.seeds[1]", "0 or more"),
    ],
)  # fmt: skip
def test_a_fair_real_grid_names_its_mistakes_where_they_are_written(
    world: Path, tmp_path: Path, extra: dict, field: str, words: str
):
    """select and grid mistakes were named as the run config's (train.lr, model.fusion.type),
    select accepted the budget and the seed as candidates, and a real base ignored or misread
    the options below."""
    from polyvis.nano.ablate import load_ablation
    from polyvis.nano.fair_plan import plan_fair

    base = _base(world)
    base["model"]["encoders"].append({**base["model"]["encoders"][0], "name": "clip2"})
    path = _ablation(tmp_path, base, **extra)
    with pytest.raises(ConfigError) as err:
        plan_fair(load_ablation(path), tmp_path / "out")
    assert err.value.field == field and words in str(err.value)


def test_protocol_json_says_the_test_set_was_read_only_once_it_was(
    world: Path, finished: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A real base names its test files from the start: protocol.json said `made: true` before
    any choice, and after a val_only grid that never reads them."""
    assert json.loads((finished / "out" / "protocol.json").read_text())["test"]["made"]
    path = _ablation(tmp_path, _base(world), val_only=True)
    use_launcher(monkeypatch, _inline(launched := []))
    assert run_ablation(path, tmp_path / "out")["val_only"] and len(launched) == 1
    test = json.loads((tmp_path / "out" / "protocol.json").read_text())["test"]
    assert test["made"] is False and not (tmp_path / "out" / "cells" / "clip" / "default" /
                                          "seed-0" / "test").exists()  # fmt: skip
