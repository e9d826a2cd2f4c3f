"""`polyvis demo --quick` end to end (the fair protocol at one seed over the demo's cells: data,
experts, val, a fresh test set, the leaderboard, the printout), reused and rerun, and ablate."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from polyvis.cli import main
from polyvis.data.synthetic.cache import synthetic_dir
from polyvis.nano.budget import DEMO_ADAPTER, DEMO_CELLS, FAMILIES, QUICK_BUDGET
from polyvis.nano.demo_report import one_seed_note, quick_notice
from polyvis.nano.fair_cells import label, slug, typed
from polyvis.nano.fork_server import RunServer
from polyvis.nano.runs import FORK_RUNS
from polyvis.paths import cache_root

# the leaderboard's names: the expert alone, or the encoders and the fusion
NAMES = [
    "+".join(c["encoders"]) + (f" {label(typed(c['fusion'], 'f'))}" if "fusion" in c else "")
    for c in DEMO_CELLS
]


def _runs(out: Path) -> list[Path]:
    return sorted(p.parent for p in out.glob("cells/*/*/seed-*/done.json"))


def _count_servers(monkeypatch) -> list[int]:
    """One entry per fork server process started from now on."""
    started: list[int] = []
    start = RunServer._start

    def counted(self: RunServer):
        if self._proc is None:
            started.append(1)
        return start(self)

    monkeypatch.setattr(RunServer, "_start", counted)
    return started


def test_quick_demo_runs_the_fair_protocol_at_one_seed_then_reuses_and_repeats(
    tmp_path: Path, capsys, monkeypatch
):
    servers = _count_servers(monkeypatch)
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 0
    # the selection's runs and the test runs forked from one server (Linux)
    assert servers == ([1] if FORK_RUNS else [])
    printed = capsys.readouterr().out
    smoke, last = quick_notice(QUICK_BUDGET), one_seed_note(0)
    assert smoke.startswith("SMOKE TEST (--quick): these numbers mean nothing.")
    # the smoke test is said before the table (where the zeros are); the leaderboard's place last
    assert printed.index(smoke) < printed.index(f"| {NAMES[3]} |")
    # under the cells, what one constant answer per question type (chosen on val) scores
    assert printed.index(f"| {NAMES[-1]} |") < printed.index(
        "| (floor: one constant answer per question type) |"
    )
    assert printed.rstrip().endswith(last) and "docs/leaderboard.md holds the answer" in last
    doc = json.loads((out / "leaderboard.json").read_text())
    assert NAMES[:3] == ["clip", "vary", "dino"]  # each expert alone, then the best fusions
    assert [c["name"] for c in doc["cells"]] == NAMES and doc["baselines"] == NAMES[:3]
    for cell, listed in zip(doc["cells"], DEMO_CELLS):
        assert cell["encoders"] == listed["encoders"] and cell["fusion"] == (
            label(typed(listed["fusion"], "f")) if "fusion" in listed else None
        )
        assert cell["adapter"] == "mlp(depth=2)" and cell["seeds"] == [0]
        assert cell["train"] == listed["train"] == cell["selection"]["chosen"]
        assert set(cell["families"]) == set(FAMILIES)
        for entry in [*cell["families"].values(), cell["mean"]]:
            lo, hi = entry["ci"]
            assert 0 <= lo <= entry["mean"] <= hi <= 100
        # the printed row: every family and the mean with the CI of its one seed
        row = re.search(rf"^\| {re.escape(cell['name'])} \|(.*)\|$", printed, re.M).group(1)
        assert len(re.findall(r"\d+\.\d \[\d+\.\d, \d+\.\d\]", row)) == len(FAMILIES) + 1
    assert doc["command"] == f"polyvis demo --out {out} --quick --seed 0"
    # leaderboard.md and results.html open with the same notes
    md = (out / "leaderboard.md").read_text()
    assert md.index(f"**{smoke}**") < md.index(f"**{last}**") < md.index("| rank |")
    page = (out / "results.html").read_text()
    assert re.findall(r'<p class="note">(.*?)</p>', page)[:2] == [smoke, last]
    # and the page shows every cell's test answers side by side
    header = re.search(r'<table id="answers"><thead><tr>(.*?)</tr>', page).group(1)
    assert all(f"<th>{n}</th>" in header for n in NAMES)
    assert (out / "leaderboard.png").stat().st_size > 1000
    # every run: the demo's one seed, a fresh fusion and the leaderboard's adapter on lm-nano,
    # an align stage first, at the cell's own learning rate
    protocol = json.loads((out / "protocol.json").read_text())
    runs = _runs(out)
    assert len(runs) == len(NAMES)
    for cell, name in zip(DEMO_CELLS, NAMES):
        (run,) = [r for r in runs if r.parent.parent.name == slug(name)]
        assert run.parent.name == f"lr-{cell['train']['lr']}" and run.name == "seed-0"
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        align = yaml.safe_load((run / "align" / "config.yaml").read_text())
        assert cfg["train"]["lr"] == cell["train"]["lr"] and cfg["train"]["seed"] == 0
        assert cfg["train"]["init_from"] == str(run / "align")
        assert align["train"]["stage"] == "align"
        for stage in (cfg, align):
            assert stage["model"]["adapter"] == DEMO_ADAPTER
            assert "scales" not in stage["model"]["fusion"]
            assert stage["model"]["llm"]["path"] == protocol["lm"]["path"]
        assert (run / "val" / "results.json").is_file()
        assert (run / "test" / "answers.jsonl").is_file()
    assert protocol["test"]["seed"] == 1 and protocol["seeds"] == [0]
    # The synthetic data lives in the cache, keyed by its settings, not in OUT.
    options = {"families": FAMILIES, "n": QUICK_BUDGET["n"], "seed": 0, "size": 64,
               "difficulty": QUICK_BUDGET.get("difficulty", "medium")}  # fmt: skip
    manifest = synthetic_dir(options) / "manifest.json"
    assert manifest.is_file() and manifest.parent.parent == cache_root() / "data"
    assert not (out / "data").exists()
    stamps = {p: p.stat().st_mtime_ns for p in [manifest, *cache_root().glob("experts/*/*.json")]}
    done = {r: (r / "done.json").stat().st_mtime_ns for r in runs}
    # A second run reuses data, experts, trained runs and evaluations, and starts no server.
    assert main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 0
    assert servers == ([1] if FORK_RUNS else [])
    assert {r: (r / "done.json").stat().st_mtime_ns for r in _runs(out)} == done
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    again = json.loads((out / "leaderboard.json").read_text())
    assert again["cells"] == doc["cells"]
    # A fresh OUT with the same cache trains every run again, to the same bytes and scores.
    fresh = tmp_path / "fresh"
    assert main(["demo", "--quick", "--out", str(fresh), "--no-progress"]) == 0
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    for run in runs:
        twin = fresh / run.relative_to(out)
        for name in ("final/model.safetensors", "val/answers.jsonl", "test/answers.jsonl"):
            assert (twin / name).read_bytes() == (run / name).read_bytes(), twin / name
    redo = json.loads((fresh / "leaderboard.json").read_text())
    keep = ("families", "mean", "rank", "p_best")
    assert [{k: c[k] for k in keep} for c in redo["cells"]] == [
        {k: c[k] for k in keep} for c in doc["cells"]
    ]


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


def test_the_demo_runs_the_experts_and_the_leaderboards_two_best_fusions_at_their_rates():
    """DEMO_CELLS follows docs/leaderboard.json: each expert, then the two fused cells ranked
    first over its seeds, each at the rate its selection chose on val."""
    doc = json.loads((Path(__file__).resolve().parents[1] / "docs/leaderboard.json").read_text())
    fused = sorted((c for c in doc["cells"] if c["fusion"]), key=lambda c: c["rank"])
    cells = {c["name"]: c for c in doc["cells"]}
    assert ["clip", "vary", "dino", fused[0]["name"], fused[1]["name"]] == NAMES
    for cell, name in zip(DEMO_CELLS, NAMES):
        assert cell["train"] == cells[name]["selection"]["chosen"]
        assert cells[name]["adapter"] == "mlp(depth=2)"
    assert DEMO_ADAPTER == {"type": "mlp", "depth": 2}


def test_a_bf16_demo_builds_its_own_experts_and_trains_every_stage_in_bf16(
    tmp_path: Path, capsys, monkeypatch
):
    """--precision bf16: a world of its own (experts under their own cache keys, every run's
    stages with mixed_precision bf16), said first in the printout and the files."""
    from polyvis.nano import demo
    from polyvis.nano.demo_report import precision_notice

    # one cell that reads all three experts: bf16 is emulated (slow) on CPUs without AVX512-BF16
    cells = [c for c in DEMO_CELLS if c.get("fusion", {}).get("type") == "concat-channel"]
    monkeypatch.setattr(demo, "DEMO_CELLS", cells)
    out = tmp_path / "demo-bf16"
    argv = ["demo", "--quick", "--precision", "bf16", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    notice = precision_notice("bf16")
    assert notice in printed and printed.index(notice) < printed.index("| cell |")
    assert notice in (out / "leaderboard.md").read_text()
    protocol = json.loads((out / "protocol.json").read_text())
    assert protocol["budget"]["precision"] == "bf16"
    built = [json.loads(p.read_text()) for p in cache_root().glob("experts/*/expert.json")]
    bf16 = {e["expert"] for e in built if e["settings"]["precision"] == "bf16"}
    assert bf16 == {"clip-nano", "vary-nano", "dino-nano", "lm-nano"}
    assert Path(protocol["lm"]["path"]).name.startswith("lm-nano-")
    assert (
        json.loads((Path(protocol["lm"]["path"]) / "expert.json").read_text())["settings"][
            "precision"
        ]
        == "bf16"
    )
    runs = _runs(out)
    assert len(runs) == len(cells) == 1
    for run in runs:
        for stage in (run / "config.yaml", run / "align" / "config.yaml"):
            cfg = yaml.safe_load(stage.read_text())
            assert cfg["train"]["mixed_precision"] == "bf16"
            for enc in cfg["model"]["encoders"]:
                info = json.loads((Path(enc["path"]) / "expert.json").read_text())
                assert info["settings"]["precision"] == "bf16", enc["path"]
