"""`polyvis demo --quick` end to end (data, experts, four runs, evaluation, report), and ablate."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from polyvis.cli import main
from polyvis.data.synthetic.cache import synthetic_dir
from polyvis.nano.demo import ADAPTER, FAMILIES, QUICK_BUDGET, RUNS
from polyvis.paths import cache_root


def test_quick_demo_end_to_end_then_reuses_everything(tmp_path: Path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 0
    # a smoke test, and it says so: its few steps cannot learn the tasks
    smoke = "SMOKE TEST (--quick): these numbers mean nothing."
    assert smoke in capsys.readouterr().out and smoke in (out / "results.md").read_text()
    results = json.loads((out / "results.json").read_text())
    assert [r["name"] for r in results["runs"]] == [name for name, _, _ in RUNS]
    for run, (_, encoders, fusion) in zip(results["runs"], RUNS):
        assert run["encoders"] == [f"{e}-nano" for e in encoders] and run["fusion"] == fusion
        assert set(run["scores"]) == set(FAMILIES)
        assert all(0.0 <= v <= 100.0 for v in run["scores"].values())
        assert abs(run["mean"] - sum(run["scores"].values()) / len(FAMILIES)) < 1e-9
        assert run["train_seconds"] > 0
    assert results["machine"] and results["seconds"] > 0
    assert (out / "results.md").read_text().count("\n|") >= len(RUNS) + 1
    assert (out / "results.png").stat().st_size > 1000
    done = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/done.json")}
    assert len(done) == len(RUNS)
    # each run trained its align stage first and started from it, all with the same adapter
    for run in (out / "runs").iterdir():
        assert (run / "align" / "done.json").is_file() and not (run / "start").exists()
        align = yaml.safe_load((run / "align" / "config.yaml").read_text())
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        assert align["train"]["stage"] == "align" and "init_from" not in align["train"]
        assert cfg["train"]["init_from"] == str(run / "align")
        # runs with vary-nano's channels start from its projector (omnifusion cannot)
        names = [e["name"] for e in cfg["model"]["encoders"]]
        from_projector = "vary" in names and cfg["model"]["fusion"]["type"] == "concat-channel"
        vary = Path(cfg["model"]["llm"]["path"]).parent
        init = {
            "init_from": str(vary / "decoder" / "projector.safetensors"),
            "init_encoder": "vary",
        }
        for stage in (align, cfg):
            assert stage["model"]["adapter"] == {**ADAPTER, **(init if from_projector else {})}
        # the mixed concat-channel run scales clip-nano to vary-nano's feature size, measured
        # when its align stage starts; the run itself takes them from that stage's model
        scales = cfg["model"]["fusion"].get("scales")
        assert align["model"]["fusion"].get("scales") == scales
        if from_projector and len(names) == 2:
            assert len(scales) == 2 and scales[names.index("vary")] == 1.0 and scales[0] > 0
        else:
            assert scales is None
    # The synthetic data lives in the cache, keyed by its settings, not in OUT.
    options = {"families": FAMILIES, "n": QUICK_BUDGET["n"], "seed": 0, "size": 64,
               "difficulty": QUICK_BUDGET.get("difficulty", "medium")}  # fmt: skip
    manifest = synthetic_dir(options) / "manifest.json"
    assert manifest.is_file() and manifest.parent.parent == cache_root() / "data"
    stamp = manifest.stat().st_mtime_ns
    assert not (out / "data").exists()
    # A second run reuses data, experts, trained runs and evaluations.
    assert main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 0
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/done.json")} == done
    assert manifest.stat().st_mtime_ns == stamp
    again = json.loads((out / "results.json").read_text())
    assert [r["scores"] for r in again["runs"]] == [r["scores"] for r in results["runs"]]


def test_ablate_grid_resumes_and_reports_mean_and_std(tmp_path: Path):
    spec = tmp_path / "ab.yaml"
    spec.write_text(
        "nano: true\nprotocol: none\nquick: true\ngrid:\n  fusion: [concat-channel, add]\n"
        "  encoders: [[clip, vary]]\n"
        "  seeds: [0, 1]\njobs: 2\n"
    )
    out = tmp_path / "ab"
    assert main(["ablate", str(spec), "--out", str(out)]) == 0
    result = json.loads((out / "ablation.json").read_text())
    assert result["runs"] == 4 and len(result["cells"]) == 2
    for stats in result["cells"].values():
        assert stats["mean"]["n"] == 2 and stats["mean"]["std"] >= 0
    assert "±" in (out / "ablation.md").read_text() and (out / "ablation.png").is_file()
    html = (out / "results.html").read_text()
    assert "<html" in html and "95 %" in html
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("cells/*/*/done.json")}
    assert main(["ablate", str(spec), "--out", str(out)]) == 0  # resumes: nothing retrained
    assert {p: p.stat().st_mtime_ns for p in out.glob("cells/*/*/done.json")} == stamps
