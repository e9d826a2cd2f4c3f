"""The fair protocol of `polyvis ablate` with the quick nano budget: selection on val, a test set
made afterwards from another data seed, the leaderboard, fresh starts, the sensitivity arm,
random-init twins, resuming, and lm-nano (the same LM for every cell). The world's own options
(difficulty, precision, steps, expert_seed) are in test_fair_world.py."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch
import yaml

from _inline_runs import Interrupted, inline_launcher, use_launcher
from polyvis.errors import ConfigError, PolyVisError
from polyvis.nano.ablate import load_ablation, run_ablation
from polyvis.nano.worker import EvalStage, TrainStage

GRID = {
    "nano": True,
    "quick": True,
    "grid": {
        "fusion": ["add"],
        "adapter": [{"type": "mlp", "depth": 2}],
        "encoders": [["vary"], ["clip", "vary"]],
        "seeds": [0, 1],
    },
    "select": {"lr": [1.0e-3, 3.0e-3]},
    "jobs": 1,
}


def inline(launched: list, stop_at: int | None = None):
    """Runs in this process, each recorded as (its folder, its stages)."""
    return inline_launcher(launched, lambda spec, st: (spec.out, [_what(s) for s in st]), stop_at)


def _what(stage) -> str:
    if isinstance(stage, TrainStage):
        return "train:" + stage.out.name  # align, or the run itself (seed-N)
    if isinstance(stage, EvalStage):
        return "eval:" + stage.out.name  # val or test
    return "flops"


def write(path: Path, spec: dict) -> Path:
    path.write_text(yaml.safe_dump(spec))
    return path


def test_a_fair_grid_selects_on_val_then_tests_on_a_fresh_seed_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    # a cache of its own: another test may already have made the same test set in the shared one
    monkeypatch.setenv("POLYVIS_CACHE", str(tmp_path / "cache"))
    out, path = tmp_path / "lb", write(tmp_path / "grid.yaml", GRID)
    first: list = []
    use_launcher(monkeypatch, inline(first, stop_at=3))
    with pytest.raises(Interrupted):  # stopped during the selection
        run_ablation(path, out)
    protocol = json.loads((out / "protocol.json").read_text())
    test_dir = Path(protocol["test"]["folder"])
    assert not (out / "selection.json").exists() and not test_dir.exists()
    finished = {o: (o / "done.json").read_bytes() for o, _ in first}
    assert len(finished) == 3

    again: list = []
    use_launcher(monkeypatch, inline(again))
    doc = run_ablation(path, out, command="polyvis ablate grid.yaml --out lb")
    # finished runs are neither trained nor scored on val again
    redone = [s for o, stages in again if o in finished for s in stages if s != "eval:test"]
    assert set(redone) <= {"flops"}
    assert {o: (o / "done.json").read_bytes() for o in finished} == finished

    # every candidate of every cell trained at seed 0 and was scored on val; the best val mean won
    selection = json.loads((out / "selection.json").read_text())["cells"]
    assert set(selection) == {"vary", "clip+vary add"}
    for cell, sel in selection.items():
        slug = "vary" if cell == "vary" else "clip_vary_add"
        means = []
        for cand in sel["candidates"]:
            run = out / "cells" / slug / f"lr-{cand['setting']['lr']}" / "seed-0"
            scores = json.loads((run / "val" / "results.json").read_text())["scores"]
            fams = {k: 100 * v for k, v in scores.items() if "/" not in k}
            assert cand["val"] == pytest.approx(fams)
            means.append(sum(fams.values()) / len(fams))
        assert [c["val_mean"] for c in sel["candidates"]] == pytest.approx(means)
        assert sel["chosen"] == sel["candidates"][means.index(max(means))]["setting"]
        lr = sel["chosen"]["lr"]
        # the other seeds ran at the chosen setting only; seed 0 is the selection's own run
        assert sorted(p.name for p in (out / "cells" / slug).glob("lr-*/seed-1")) == ["seed-1"]
        assert (out / "cells" / slug / f"lr-{lr}" / "seed-1" / "test" / "answers.jsonl").is_file()
        chosen0 = out / "cells" / slug / f"lr-{lr}" / "seed-0"
        assert [s for o, s in again if o == chosen0] == [["eval:test", "flops"]]

    # the test set: its own folder, generated from seed 1 after every choice was written
    data_dir = Path(protocol["data"]["folder"])
    assert test_dir != data_dir and protocol["test"]["seed"] == 1
    manifests = [json.loads((d / "manifest.json").read_text()) for d in (data_dir, test_dir)]
    assert {f["seed"] for f in manifests[0]["families"].values()} == {0}
    assert {f["seed"] for f in manifests[1]["families"].values()} == {1}
    assert all(f["images"] == {"test": 8} for f in manifests[1]["families"].values())
    made = (test_dir / "manifest.json").stat().st_mtime_ns
    assert (out / "selection.json").stat().st_mtime_ns < made
    val = json.loads((out / "protocol.json").read_text())["val"]["files"]
    assert all(Path(f).parent.parent == data_dir and f.endswith("val.nano.jsonl") for f in val)

    # the leaderboard: every schema key, single experts as the baselines
    for ext in ("json", "md", "png"):
        assert (out / f"leaderboard.{ext}").stat().st_size > 100
    assert doc == json.loads((out / "leaderboard.json").read_text())
    assert "<html" in (out / "results.html").read_text()
    assert doc["command"] == "polyvis ablate grid.yaml --out lb" and doc["wall_seconds"] > 0
    assert doc["date"] and doc["machine"]
    cells = {c["name"]: c for c in doc["cells"]}
    for c in cells.values():
        assert {"encoders", "fusion", "adapter", "seeds", "seed_means", "families", "mean",
                "rank", "p_best", "train_seconds", "flops_per_step", "selection"} <= set(c)  # fmt: skip
        assert c["seeds"] == [0, 1] and c["adapter"] == "mlp(depth=2)" and c["train_seconds"] > 0
        assert set(c["families"]) == {"scene", "ocr", "latex", "chart", "table", "mixed"}
    assert cells["vary"]["fusion"] is None and cells["clip+vary add"]["fusion"] == "add"
    assert cells["clip+vary add"]["flops_per_step"] > cells["vary"]["flops_per_step"] > 0
    (comp,) = doc["comparisons"]
    assert comp["cell"] == "clip+vary add" and comp["vs"] == "vary" and "p_holm" in comp
    types = doc["question_types"]
    assert types["two_expert"] == ["mixed/describe"] and set(types["cells"]) == set(cells)
    assert "## Questions that need two experts" in (out / "leaderboard.md").read_text()
    # the floor: one constant per question type, chosen on the val answers of a seed-0 run
    floor = doc["floor"]
    assert set(floor["families"]) == {"scene", "ocr", "latex", "chart", "table", "mixed"}
    assert Path(floor["chosen_on"]).name == "answers.jsonl"
    assert Path(floor["chosen_on"]).parent.name == "val" and Path(floor["answers"]).is_file()
    assert {"scene/count", "mixed/describe"} <= set(floor["constants"])
    assert "**Floor.** One constant answer" in (out / "leaderboard.md").read_text()
    assert set(types["floor"]) == set(types["groups"])  # and each question type's floor
    assert "| (floor) |" in (out / "leaderboard.md").read_text()
    assert "(floor: one constant answer per question type)" in (out / "results.html").read_text()

    # every run: a fresh fusion and adapter, the align stage first, lm-nano as the LM
    lm = protocol["lm"]["path"]
    assert Path(lm).name.startswith("lm-nano-")
    for cfg_file in out.glob("cells/*/*/seed-*/**/config.yaml"):
        cfg = yaml.safe_load(cfg_file.read_text())
        model = cfg["model"]
        assert "init_from" not in model["adapter"] and "scales" not in model["fusion"]
        assert model["llm"]["path"] == lm
        assert cfg["train"]["stage"] == ("align" if cfg_file.parent.name == "align" else "finetune")
    # a third call finds everything done, and keeps the choices it recorded
    stamp = (out / "selection.json").stat().st_mtime_ns
    use_launcher(monkeypatch, inline(third := []))
    assert run_ablation(path, out)["cells"] == doc["cells"] and third == []
    assert (out / "selection.json").stat().st_mtime_ns == stamp
    # val scores that would now choose otherwise stop the grid: choices never change once made
    sel = json.loads((out / "selection.json").read_text())
    sel["cells"]["vary"]["chosen"] = {"lr": 0.5}
    (out / "selection.json").write_text(json.dumps(sel))
    with pytest.raises(PolyVisError, match="choose otherwise than recorded"):
        run_ablation(path, out)


def test_sensitivity_arm_gives_the_starts_to_every_cell_the_main_arm_to_none(tmp_path: Path):
    from polyvis.nano.fair_plan import plan_fair

    grid = {"fusion": ["concat-channel", "add"], "adapter": ["linear"],
            "encoders": [["clip"], ["vary"], ["clip", "vary"]], "controls": ["clip"]}  # fmt: skip
    spec = {"nano": True, "quick": True, "grid": grid}
    main = plan_fair(spec, tmp_path / "o")
    assert [c.name for c in main.cells] == [
        "clip", "vary", "clip+vary concat-channel", "clip+vary add", "clip (random init)",
    ]  # fmt: skip
    assert [c.baseline for c in main.cells] == [True, True, False, False, False]
    for cell in main.cells:
        assert "init_from" not in cell.model["adapter"] and "scales" not in cell.model["fusion"]
        assert cell.model["llm"] == main.world.llm
    arm = {**spec, "arm": "sensitivity", "warm_start": True, "balance": True}
    sens = plan_fair(arm, tmp_path / "o")
    assert sens.root == tmp_path / "o" / "sensitivity-warm_start-balance"
    decoder = str(Path(main.world.encoders["vary"]["path"]) / "decoder")
    for cell in sens.cells:
        model, names = cell.model, cell.meta["encoders"]
        assert model["llm"] == {"path": decoder}  # the LM the projector was trained into
        assert cell.meta["warm_lm"]
        can_warm = "vary" in names and model["fusion"]["type"] == "concat-channel"
        can_warm = can_warm and not cell.meta["random_init"]
        assert cell.meta["warm_start"] == can_warm == ("init_from" in model["adapter"])
        can_balance = len(names) == 2 and model["fusion"]["type"] == "concat-channel"
        assert cell.meta["balanced"] == can_balance == ("scales" in model["fusion"])
    assert [c.name for c in sens.cells if c.meta["warm_start"]] == [
        "vary", "clip+vary concat-channel",
    ]  # fmt: skip
    # with an MLP adapter no cell starts from the projector; every cell still gets the warm LM
    mlp = {**arm, "balance": False, "grid": {**grid, "adapter": [{"type": "mlp", "depth": 2}]}}
    warm_lm = plan_fair(mlp, tmp_path / "o")
    assert all(c.meta["warm_lm"] and not c.meta["warm_start"] for c in warm_lm.cells)
    assert {c.model["llm"]["path"] for c in warm_lm.cells} == {decoder}


def test_a_random_init_twin_is_the_experts_architecture_read_the_same_way(tmp_path: Path):
    from polyvis.config import EncoderSpec
    from polyvis.models.build import build_encoder
    from polyvis.nano.fair_plan import plan_fair

    spec = {
        "nano": True,
        "quick": True,
        "grid": {"encoders": [["clip"]], "controls": ["clip", "vary"]},
    }
    plan = plan_fair(spec, tmp_path / "o")
    expert, *twins = [c.model["encoders"][0] for c in plan.cells]
    assert [c.name for c in plan.cells] == ["clip", "clip (random init)", "vary (random init)"]
    clip_twin = twins[0]
    assert "path" not in clip_twin and clip_twin["layers"] == expert["layers"]
    on_disk = json.loads((Path(expert["path"]) / "config.json").read_text())
    assert clip_twin["config"] == on_disk
    built = [build_encoder(EncoderSpec(**e), 0, torch.float32) for e in (expert, clip_twin)]
    (m_exp, p_exp, e_exp), (m_twin, p_twin, e_twin) = built
    for key in ("size", "do_normalize", "do_resize", "resample", "rescale_factor"):
        assert getattr(p_twin, key) == getattr(p_exp, key), key
    for key in ("image_mean", "image_std"):
        assert list(getattr(p_twin, key)) == list(getattr(p_exp, key)), key
    # the same architecture (the names of where it was loaded from aside), other weights
    skip = ("_name_or_path", "dtype")
    assert {k: v for k, v in e_twin["config"].items() if k not in skip} == {
        k: v for k, v in e_exp["config"].items() if k not in skip
    }
    assert e_twin["grid"] == e_exp["grid"] and e_twin["layers"] == e_exp["layers"]
    w_exp, w_twin = m_exp.state_dict(), m_twin.state_dict()
    assert list(w_twin) == list(w_exp)
    assert not all(torch.equal(w_twin[k], w_exp[k]) for k in w_exp)


@pytest.mark.parametrize(
    ("extra", "field", "words"),
    [
        ({"protocol": "none", "select": {"lr": [1e-3]}}, "select", "only with protocol: fair"),
        ({"align": {"train": {"max_steps": 3}}}, "align", "align_share"),
        ({"protocol": "fairer"}, "protocol", "fair or none"),
        ({"grid": {"adapter": [{"type": "linear", "init_from": "p"}]}}, "grid.adapter.init_from",
         "sensitivity arm"),
        ({"grid": {"fusion": [{"type": "concat-channel", "scales": [1, 1]}]}},
         "grid.fusion.scales", "sensitivity arm"),
        ({"test_data_seed": 0}, "test_data_seed", "training data"),
        ({"warm_start": True}, "warm_start", "sensitivity arm"),
        ({"arm": "sensitivity"}, "arm", "warm_start: true or balance: true"),
        ({"arm": "sensitivity", "balance": True, "grid": {"fusion": ["add"],
          "encoders": [["clip", "vary"]]}}, "balance", "no cell can take it"),
        ({"select": {"lr": 1e-3}}, "select", "candidate lists"),
        ({"align_share": 1.0}, "align_share", "fraction"),
        ({"eval": {"files": ["t.jsonl"]}}, "eval.files", "valid: val_limit, test_limit"),
    ],
)  # fmt: skip
def test_fair_protocol_errors_name_their_field(tmp_path: Path, extra: dict, field: str, words: str):
    from polyvis.nano.fair_plan import plan_fair

    spec = {"nano": True, "quick": True, **extra}
    with pytest.raises(ConfigError) as err:
        plan_fair(load_ablation(write(tmp_path / "a.yaml", spec)), tmp_path / "o")
    assert err.value.field == field and words in str(err.value)


def test_lm_nano_learns_the_worlds_text_and_rebuilds_to_the_same_bytes(tmp_path: Path):
    from polyvis.config import LLMSpec
    from polyvis.data.synthetic.cache import ensure_synthetic
    from polyvis.models.build import build_language_model
    from polyvis.nano.budget import QUICK_BUDGET
    from polyvis.nano.experts import QUICK_DATA, resolve_settings
    from polyvis.nano.lm import text_lines, train_lm
    from polyvis.nano.world import write_corpus

    (opts,) = QUICK_DATA["lm-nano"]
    data = ensure_synthetic({**opts, "seed": 0, "size": 64}, progress=False)
    assert opts["n"] == QUICK_BUDGET["n"]  # the demo's quick world, in the same cache folder
    settings = resolve_settings("lm-nano", None, quick=True)
    lines = text_lines(data, settings["families"])
    assert "\n".join(lines) == write_corpus(data, tmp_path / "c.txt").read_text()
    logs = [train_lm([data], tmp_path / d, settings, progress=False) for d in ("a", "b")]
    assert logs[0]["loss_curve"] == logs[1]["loss_curve"] and len(logs[0]["loss_curve"]) == 12
    assert logs[0]["loss_curve"][-1] < logs[0]["loss_curve"][0]
    assert logs[0]["eval"]["val"]["tokens"] > 0
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    lm, tok = build_language_model(LLMSpec(path=str(tmp_path / "a")), torch.float32)
    assert lm.config.hidden_size == 32 and len(tok) == 262


def test_a_real_config_under_the_fair_protocol_chooses_on_its_val_files(tmp_path: Path):
    from polyvis.config import load_config
    from polyvis.nano.fair_plan import plan_fair

    root = Path(__file__).resolve().parents[1]
    base = load_config(root / "configs" / "nano-tiny.yaml").model_dump(mode="json")
    base["data"].update(val=["val.jsonl"], test=["test.jsonl"])
    base["train"].update(lr_llm=5e-4, max_steps=20)
    grid = {"fusion": ["add", "omnifusion"], "encoders": [["clip"], ["clip", "dino"]]}
    spec = {"base": base, "protocol": "fair", "grid": grid, "select": {"lr": [1e-3, 2e-3]}}
    plan = plan_fair(spec, tmp_path / "o")
    assert [c.name for c in plan.cells] == ["clip", "clip+dino add", "clip+dino omnifusion"]
    assert plan.world.val_files == [Path("val.jsonl")]
    assert plan.world.test_files == [Path("test.jsonl")]  # given, read only after the choices
    run = plan.spec(plan.cells[1], plan.settings[1], 0, "val")
    assert run.align.train.max_steps == 4 and run.align.train.stage == "align"
    assert run.config.train.max_steps == 16 and run.config.train.lr == 2e-3
    assert run.config.model.llm == load_config(base).model.llm and run.eval_dir == "val"
    # random-init twins need an expert's local checkpoint; these encoders are random already
    with pytest.raises(ConfigError, match="grid.controls: clip: a random-init twin needs"):
        plan_fair({**spec, "grid": {**grid, "controls": ["clip"]}}, tmp_path / "o")
    del base["data"]["val"]
    with pytest.raises(ConfigError, match="base.data.val"):
        plan_fair(spec, tmp_path / "o")


def test_every_nano_cell_reads_the_same_text_however_many_image_tokens_it_has(tmp_path: Path):
    from polyvis.nano.fair_plan import plan_fair
    from polyvis.nano.fair_world import TEXT_TOKENS

    spec = {**GRID, "grid": {**GRID["grid"], "fusion": ["concat-sequence"],
                             "encoders": [["clip"], ["dino"], ["clip", "dino"]]}}  # fmt: skip
    plan = plan_fair(spec, tmp_path / "out")
    lengths = {}
    for cell in plan.cells:
        run = plan.spec(cell, plan.settings[0], 0, "val")
        tokens = plan.image_tokens(cell)
        assert run.config.data.max_length == tokens + 2 + TEXT_TOKENS, cell.name
        lengths[cell.name] = tokens
    # a sequence fusion's tokens are its encoders' together, and each cell's text is the same
    assert lengths["clip+dino concat-sequence"] == lengths["clip"] + lengths["dino"]
    assert len(set(lengths.values())) == 3


def test_sigterm_unwinds_a_grid_like_ctrl_c_and_is_restored_after():
    import signal

    from polyvis.nano.protocol import _terminate_as_exit

    before = signal.getsignal(signal.SIGTERM)
    unwound = []
    with pytest.raises(SystemExit) as exc, _terminate_as_exit():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises before this ends
        finally:
            unwound.append(True)  # run_fair's finally (the wall clock) runs the same way
    assert exc.value.code == 128 + signal.SIGTERM and unwound == [True]
    assert signal.getsignal(signal.SIGTERM) == before


def test_val_only_chooses_on_val_and_never_makes_the_test_set(tmp_path: Path, monkeypatch, capsys):
    spec = {**GRID, "val_only": True, "grid": {**GRID["grid"], "encoders": [["vary"]]}}
    path = write(tmp_path / "grid.yaml", spec)
    out = tmp_path / "lb"
    use_launcher(monkeypatch, inline(launched := []))
    doc = run_ablation(path, out)
    assert doc["val_only"] and set(doc["selection"]) == {"vary"}
    # both candidates at seed 0, then the chosen one at seed 1, on val too (its spread)
    assert [what for _, what in launched] == [["train:align", "train:seed-0", "eval:val"]] * 2 + [
        ["train:align", "train:seed-1", "eval:val"]
    ]
    chosen = doc["selection"]["vary"]["chosen"]["lr"]
    assert f"lr-{chosen}" in str(launched[2][0]) and "seed-1" in str(launched[2][0])
    spread = json.loads((out / "val_seeds.json").read_text())["vary"]
    assert spread == doc["val_seeds"]["vary"] and spread["seeds"] == [0, 1]
    picked = [c for c in doc["selection"]["vary"]["candidates"] if c["setting"]["lr"] == chosen]
    assert spread["val_means"][0] == picked[0]["val_mean"]  # seed 0 is the selection's run
    assert spread["mean"] == sum(spread["val_means"]) / 2
    protocol = json.loads((out / "protocol.json").read_text())
    assert not protocol["test"]["made"] and not protocol["test"]["files"]
    assert not (out / "leaderboard.json").exists()
    printed = capsys.readouterr().out
    assert "vary | lr=0.001 | val mean" in printed and "vary | lr=0.003 | val mean" in printed
