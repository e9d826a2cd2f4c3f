"""Run directories across failures and resumes: a run that failed before training takes the
corrected config; skipped records, metrics rows and seconds survive a resume; pruning leaves no
half checkpoint; a data.max_length shorter than an image block is refused up front."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tests.test_checkpoint import OneProcess

from polyvis.config import dump_config, load_config
from polyvis.errors import ConfigError
from polyvis.train import train
from polyvis.train.checkpoint import clean_checkpoints, list_checkpoints, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
CFG = ROOT / "configs" / "nano-tiny.yaml"
CORRUPT = (3, 7)  # indices of the records whose image is not an image


class Interrupted(Exception):
    """Stands in for a kill: raised from the model's forward pass at a chosen call."""


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> Path:
    """12 ocr records, 2 of them with a corrupt image: 3 batches of 4 an epoch."""
    from polyvis.data.synthetic import generate

    out = tmp_path_factory.mktemp("data")
    generate(["ocr"], 16, 0, out / "synth", image_size=64, progress=False)
    source = out / "synth" / "ocr" / "train.jsonl"
    lines = []
    for i, line in enumerate(source.read_text().splitlines()[:12]):
        rec = json.loads(line)
        rec["image"] = str(source.parent / rec["image"])
        if i in CORRUPT:
            bad = out / f"bad-{i}.png"
            bad.write_bytes(b"not an image")
            rec["image"] = str(bad)
        lines.append(json.dumps(rec))
    path = out / "train.jsonl"
    path.write_text("\n".join(lines))
    return path


def config(records: Path, *extra: str):
    sets = ["train.stage=finetune", "train.batch_size=4", f"data.train=[{records}]", *extra]
    return load_config(CFG, sets)


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def slow_forward(monkeypatch, seconds: float, stop_at: int | None = None) -> None:
    """Each training forward pass sleeps (time the run must account for); call `stop_at`
    raises Interrupted instead (the process dies mid-step)."""
    from polyvis.models.modeling import PolyVisForConditionalGeneration

    original = PolyVisForConditionalGeneration.forward
    calls = {"n": 0}

    def forward(self, *args, **kwargs):
        if self.training:
            calls["n"] += 1
            if calls["n"] == stop_at:
                raise Interrupted
            time.sleep(seconds)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(PolyVisForConditionalGeneration, "forward", forward)


def test_a_run_that_failed_before_training_takes_the_corrected_config(tmp_path):
    """A LoRA target_modules typo fails while the model is built; the corrected command, same
    --out, trains instead of being refused as a different config."""
    from polyvis.data.synthetic import generate

    generate(["ocr"], 8, 0, tmp_path / "synth", image_size=64, progress=False)
    data = f"data.train=[{tmp_path / 'synth' / 'ocr' / 'train.jsonl'}]"
    base = ["train.stage=finetune", "train.batch_size=2", "train.max_steps=1", data]
    run = tmp_path / "run"
    typo = load_config(CFG, [*base, "train.lora={r: 4, alpha: 8, target_modules: [nope_proj]}"])
    with pytest.raises(Exception, match="nope_proj"):
        train(typo, run, progress=False)
    # an earlier version wrote the failed run's config.yaml: with no checkpoint it blocks nothing
    dump_config(typo, run / "config.yaml")
    fixed = load_config(CFG, [*base, "train.lora={r: 4, alpha: 8}"])
    final = train(fixed, run, progress=False)
    assert (final / "lora" / "adapter_config.json").is_file()
    saved = load_config(run / "config.yaml")
    assert saved.train.lora == fixed.train.lora


def test_skips_metrics_and_seconds_survive_a_resume(tmp_path, records, monkeypatch):
    """Interrupted at step 7 (checkpoint step-4), then resumed: the same weights as a run never
    interrupted, 2 skipped records (not one per encounter), one metrics row per step, and the
    seconds of both segments."""
    sets = ("train.max_steps=8", "train.save_every=4")
    ref = tmp_path / "ref"
    train(config(records, *sets), ref, progress=False)
    done_ref = json.loads((ref / "done.json").read_text())
    assert done_ref["skipped_records"] == len(CORRUPT)  # seen 6 times in 8 steps
    assert rows(ref)[-1]["skipped"] == len(CORRUPT)

    run = tmp_path / "run"
    pause = 0.5
    with monkeypatch.context() as m:
        slow_forward(m, pause, stop_at=7)
        with pytest.raises(Interrupted):
            train(config(records, *sets), run, progress=False)
    assert [r["step"] for r in rows(run)] == [1, 2, 3, 4, 5, 6]
    state = json.loads((run / "checkpoints" / "step-4" / "state.json").read_text())
    assert state["seconds"] >= 4 * pause
    assert len(state["skipped_ids"]) == len(CORRUPT)
    # what a kill while pruning left under an earlier version: half a checkpoint, a trash folder
    half = run / "checkpoints" / "step-1"
    half.mkdir()
    (half / "optimizer.pt").write_bytes(b"\0" * 16)
    (run / "checkpoints" / ".step-2.4242.trash").mkdir()

    with monkeypatch.context() as m:
        slow_forward(m, pause)
        final = train(config(records, *sets), run, progress=False)
    assert [r["step"] for r in rows(run)] == list(range(1, 9))
    done = json.loads((run / "done.json").read_text())
    assert done["skipped_records"] == len(CORRUPT)
    assert rows(run)[-1]["skipped"] == len(CORRUPT)
    assert done["seconds"] >= 8 * pause  # steps 1-4 before the interruption, 5-8 after it
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-4"]
    a, b = (
        load_file(str(ref / "final" / "model.safetensors")),
        load_file(str(final / "model.safetensors")),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _objects():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    return model, opt, sched


def test_a_kill_while_pruning_leaves_no_half_checkpoint(tmp_path, monkeypatch):
    """keep_last=2, save_every=1: the process dies half-way through deleting step-1. Nothing
    named step-1 is left without its state.json, and the next save removes the remains."""
    import polyvis.train.checkpoint as checkpoint

    run = tmp_path / "run"
    model, opt, sched = _objects()
    for step in (1, 2):
        save_checkpoint(run, step, model, opt, sched, {}, 2, OneProcess())
    real_rmtree = checkpoint.shutil.rmtree

    def killed_midway(path, ignore_errors=False):
        if Path(path).is_dir() and (Path(path) / "state.json").is_file():
            (Path(path) / "state.json").unlink()  # rmtree got this far
            raise Interrupted
        return real_rmtree(path, ignore_errors=ignore_errors)

    monkeypatch.setattr(checkpoint.shutil, "rmtree", killed_midway)
    with pytest.raises(Interrupted):
        save_checkpoint(run, 3, model, opt, sched, {}, 2, OneProcess())
    monkeypatch.setattr(checkpoint.shutil, "rmtree", real_rmtree)
    root = run / "checkpoints"
    assert not (root / "step-1").exists()
    assert [p.name for p in list_checkpoints(run)] == ["step-2", "step-3"]
    save_checkpoint(run, 4, model, opt, sched, {}, 2, OneProcess())
    assert sorted(p.name for p in root.iterdir()) == ["step-3", "step-4"]


def test_clean_checkpoints_keeps_complete_ones(tmp_path):
    """Leftovers go (trash, temporary, step-N without state.json older than the newest complete
    checkpoint); complete checkpoints, the one a resume starts from included, stay."""
    run = tmp_path / "run"
    model, opt, sched = _objects()
    for step in (3, 5):
        save_checkpoint(run, step, model, opt, sched, {}, 0, OneProcess())
    root = run / "checkpoints"
    for name in ("step-1", ".step-2.77.trash", ".step-6.77.tmp"):
        (root / name).mkdir()
        (root / name / "optimizer.pt").write_bytes(b"\0")
    clean_checkpoints(run)
    assert sorted(p.name for p in root.iterdir()) == ["step-3", "step-5"]
    assert [p.name for p in list_checkpoints(run)] == ["step-3", "step-5"]


def test_max_length_shorter_than_an_image_block_is_refused_up_front(tmp_path, monkeypatch):
    """One line naming data.max_length and the block's tokens, before any image is read."""
    import polyvis.data.dataset as dataset
    from polyvis.data.synthetic import generate
    from polyvis.models.build import build_model
    from polyvis.train.data import check_max_length

    generate(["ocr"], 8, 0, tmp_path / "synth", image_size=64, progress=False)
    data = f"data.train=[{tmp_path / 'synth' / 'ocr' / 'train.jsonl'}]"

    def no_image(*args, **kwargs):
        raise AssertionError("an image was loaded")

    monkeypatch.setattr(dataset, "load_image_and_hash", no_image)
    cfg = load_config(CFG, [data, "train.max_steps=2", "data.max_length=12"])
    with pytest.raises(
        ConfigError, match=r"^data\.max_length: 12 is less than the 66 tokens of one image block$"
    ):
        train(cfg, tmp_path / "run", progress=False)
    # nano-tiny: 64 image tokens between <img_start> and <img_end>; 66 is enough
    _, processor = build_model(load_config(CFG))
    assert processor.image_seq_length == 64
    check_max_length(load_config(CFG, ["data.max_length=66"]), processor)
    with pytest.raises(ConfigError, match="65 is less than the 66"):
        check_max_length(load_config(CFG, ["data.max_length=65"]), processor)


def test_training_on_records_files_without_records_names_them(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    cfg = load_config(CFG, [f"data.train=[{empty}]", "train.max_steps=2"])
    with pytest.raises(ConfigError, match=rf"^data\.train: no training records in {empty}: name"):
        train(cfg, tmp_path / "run", progress=False)


def test_init_from_trains_and_records_its_own_model_and_says_what_it_ignores(tmp_path, capsys):
    import yaml

    from polyvis.data.synthetic import generate

    generate(["ocr"], 8, 0, tmp_path / "synth", image_size=64, progress=False)
    data = f"data.train=[{tmp_path / 'synth' / 'ocr' / 'train.jsonl'}]"
    first = train(load_config(CFG, [data, "train.max_steps=1"]), tmp_path / "a", progress=False)
    recorded = yaml.safe_load((first / "polyvis.yaml").read_text())["model"]
    capsys.readouterr()
    other = ["model.adapter={type: linear}", "model.fusion={type: add}"]
    cfg = load_config(CFG, [data, "train.max_steps=1", f"train.init_from={tmp_path / 'a'}", *other])
    final = train(cfg, tmp_path / "b", progress=False)
    err = capsys.readouterr().err
    assert "the config's model.adapter, model.fusion differ from it and are not used" in err
    for path in (final / "polyvis.yaml", tmp_path / "b" / "config.yaml"):
        assert yaml.safe_load(path.read_text())["model"] == recorded  # what was trained
    assert json.loads((final / "config.json").read_text())["fusion"]["type"] != "add"


def test_eval_every_without_val_records_says_no_val_loss_is_logged(tmp_path, capsys):
    from polyvis.data.synthetic import generate

    generate(["ocr"], 8, 0, tmp_path / "synth", image_size=64, progress=False)
    data = f"data.train=[{tmp_path / 'synth' / 'ocr' / 'train.jsonl'}]"
    cfg = load_config(CFG, [data, "train.max_steps=1", "train.eval_every=1"])
    train(cfg, tmp_path / "run", progress=False)
    assert "train.eval_every is set but data.val has no records" in capsys.readouterr().err
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert "val_loss" not in rows[0]
