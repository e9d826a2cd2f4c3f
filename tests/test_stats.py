"""Leaderboard statistics: paired two-level bootstrap CIs, comparisons, Holm, rank probabilities."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from polyvis.errors import DataError
from polyvis.eval.stats import CellScores, cell_scores, holm, leaderboard, load_item_scores

FAMS = {"scene": 40, "ocr": 25, "chart": 60}


def _items(fams: dict[str, int] = FAMS) -> dict[str, list[str]]:
    return {f: [f"{f}-{i:03d}" for i in range(n)] for f, n in fams.items()}


def _cell(name: str, rng: np.random.Generator, seeds=(0, 1, 2), p: float = 0.5) -> CellScores:
    fams = {f: (rng.random((len(seeds), n)) < p) * 100.0 for f, n in FAMS.items()}
    return CellScores(name, list(seeds), fams, _items())


def _write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _write_answers(path: Path, rows: list[tuple[str, str, float]]) -> Path:
    lines = [json.dumps({"id": i, "family": f, "score": s, "prediction": "x"}) for i, f, s in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_load_item_scores_groups_by_family_and_non_default_metric(tmp_path: Path) -> None:
    rows = [
        {"id": "a", "family": "chart", "metric": "relaxed_accuracy", "score": 1.0},
        {"id": "b", "family": "chart", "metric": "edit_similarity", "score": 0.25},
        {"id": "c", "family": "scene", "score": 0},
    ]
    path = _write_rows(tmp_path / "answers.jsonl", rows)
    assert load_item_scores(path) == {
        "chart": {"a": 1.0},
        "chart/edit_similarity": {"b": 0.25},
        "scene": {"c": 0.0},
    }


def test_cider_scores_enter_the_leaderboard_divided_by_their_top_of_10(tmp_path: Path) -> None:
    """CIDEr-D gives an exact caption 10 (pycocoevalcap's x10): a grid over real caption data
    crashed at the leaderboard, after every run had trained."""
    from polyvis.eval.captions import cider_item_scores
    from polyvis.nano.runs import family_scores

    refs = [["a red bus on a road"], ["two cats on a sofa"], ["a man riding a horse"]]
    items = cider_item_scores(["a red bus on a road", "a dog", "a man riding a horse"], refs)
    assert max(items) == pytest.approx(10.0)
    rows = [{"id": f"c{i}", "family": "caption", "score": v} for i, v in enumerate(items)]
    rows.append({"id": "s0", "family": "scene", "metric": "cider", "score": 2.5})
    path = _write_rows(tmp_path / "answers.jsonl", rows)
    loaded = load_item_scores(path)
    assert loaded["caption"] == {f"c{i}": v / 10 for i, v in enumerate(items)}
    assert loaded["scene/cider"] == {"s0": 0.25}
    points = cell_scores("clip", {0: path}).families["caption"]
    np.testing.assert_allclose(points, [[v * 10 for v in items]])  # points: CIDEr x 10
    # the fair protocol's val choice reads the same scale from results.json
    assert family_scores({"scores": {"caption": 5.0, "ocr": 0.5}}) == {"caption": 50.0, "ocr": 50.0}
    path.write_text(json.dumps({"id": "c9", "family": "caption", "score": 10.5}))
    with pytest.raises(DataError, match=r"record c9: score must be in 0\.\.10, got 10\.5"):
        load_item_scores(path)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"id": "q7", "family": "scene", "score": 4.2}, r"record q7: score must be in 0\.\.1,"),
        ({"id": "q7", "family": "scene"}, "answers.jsonl:2: not an answers row"),
        ({"id": "q1", "family": "scene", "score": 1}, "record q1 appears twice in scene"),
    ],
)
def test_load_item_scores_names_the_bad_row(tmp_path: Path, row: dict, message: str) -> None:
    path = tmp_path / "answers.jsonl"
    path.write_text(
        json.dumps({"id": "q1", "family": "scene", "score": 1}) + "\n" + json.dumps(row)
    )
    with pytest.raises(DataError, match=message):
        load_item_scores(path)


def test_cell_scores_in_points_sorted_ids(tmp_path: Path) -> None:
    a = _write_answers(tmp_path / "s0.jsonl", [("b", "ocr", 1.0), ("a", "ocr", 0.5)])
    b = _write_answers(tmp_path / "s1.jsonl", [("a", "ocr", 0.0), ("b", "ocr", 0.25)])
    cell = cell_scores("clip", {1: b, 0: a}, meta={"fusion": None})
    assert cell.seeds == [0, 1]
    assert cell.items == {"ocr": ["a", "b"]}
    np.testing.assert_array_equal(cell.families["ocr"], [[50.0, 100.0], [0.0, 25.0]])
    assert cell.meta == {"fusion": None}


def test_cell_scores_names_the_cell_when_items_differ(tmp_path: Path) -> None:
    a = _write_answers(tmp_path / "s0.jsonl", [("a", "ocr", 1.0), ("b", "ocr", 0.5)])
    b = _write_answers(tmp_path / "s1.jsonl", [("a", "ocr", 1.0), ("c", "ocr", 0.5)])
    with pytest.raises(DataError, match=r"cell clip\+dino gated: seed 1 \(.*s1.jsonl\)") as err:
        cell_scores("clip+dino gated", {0: a, 1: b})
    assert "\n" not in str(err.value)


def test_leaderboard_rejects_cells_on_other_items() -> None:
    rng = np.random.default_rng(0)
    a, b = _cell("a", rng), _cell("b", rng)
    b.items = {**b.items, "ocr": [f"other-{i}" for i in range(25)]}
    with pytest.raises(DataError, match="cell b: scored other test items than cell a"):
        leaderboard([a, b], baselines=["a"], n_boot=10)
    with pytest.raises(DataError, match="baseline dino: no such cell"):
        leaderboard([a], baselines=["dino"], n_boot=10)


def test_point_estimates_are_the_plain_means() -> None:
    rng = np.random.default_rng(1)
    cell = CellScores("x", [0, 1], {f: rng.random((2, n)) * 100 for f, n in FAMS.items()}, _items())
    stats = leaderboard([cell], baselines=[], n_boot=3000, seed=3)
    row = stats["cells"][0]
    fam_means = {f: cell.families[f].mean() for f in FAMS}
    for f in FAMS:
        assert row["families"][f]["mean"] == pytest.approx(fam_means[f], abs=1e-12)
    plain = sum(fam_means.values()) / len(FAMS)  # every family weighs the same
    assert row["mean"]["mean"] == pytest.approx(plain, abs=1e-12)
    seed_means = [np.mean([cell.families[f][s].mean() for f in FAMS]) for s in range(2)]
    assert row["seed_means"] == pytest.approx(seed_means, abs=1e-12)
    lo, hi = row["mean"]["ci"]
    assert lo < plain < hi


def test_bootstrap_replicates_are_centred_on_the_plain_mean() -> None:
    """Multinomial weights have expectation 1/n, so the replicates' average is the plain mean."""
    from polyvis.eval.stats import _replicates

    rng = np.random.default_rng(2)
    cell = _cell("x", rng)
    reps = _replicates([cell], list(FAMS), n_boot=20000, seed=0).mean(axis=1)[0]
    plain = np.mean([cell.families[f].mean() for f in FAMS])
    assert abs(reps.mean() - plain) < 4 * reps.std() / np.sqrt(reps.size)


def _simulated_cell(rng: np.random.Generator, n_items: int = 200) -> CellScores:
    """Items with difficulty p ~ Beta(2, 2), a small per-seed shift, Bernoulli answers: by
    symmetry the population mean is exactly 50 points."""
    fams = {}
    for f in ("a", "b"):
        p = rng.beta(2, 2, n_items)
        shift = rng.normal(0, 0.03, 3)
        fams[f] = (rng.random((3, n_items)) < np.clip(p[None] + shift[:, None], 0, 1)) * 100.0
    return CellScores("x", [0, 1, 2], fams, {f: [str(i) for i in range(n_items)] for f in fams})


def test_ci_covers_the_true_mean_at_about_the_nominal_rate() -> None:
    hits = 0
    for e in range(200):
        cell = _simulated_cell(np.random.default_rng(1000 + e))
        lo, hi = leaderboard([cell], [], n_boot=400, seed=e)["cells"][0]["mean"]["ci"]
        hits += lo <= 50.0 <= hi
    assert 0.90 <= hits / 200 <= 0.99


def test_paired_constant_shift_has_a_zero_width_ci_and_floor_p() -> None:
    rng = np.random.default_rng(4)
    base = _cell("dino", rng)
    shifted = CellScores(
        "clip+dino gated", base.seeds, {f: x + 5 for f, x in base.families.items()}, base.items
    )
    stats = leaderboard([base, shifted], baselines=["dino"], n_boot=500, seed=0)
    (comp,) = stats["comparisons"]
    assert (comp["cell"], comp["vs"]) == ("clip+dino gated", "dino")
    assert comp["diff"] == pytest.approx(5.0, abs=1e-9)
    assert comp["ci"] == pytest.approx([5.0, 5.0], abs=1e-9)
    assert comp["p"] == comp["p_holm"] == 1 / 500
    # each cell's own CI is wide (items vary), only the paired difference is exact
    lo, hi = stats["cells"][0]["mean"]["ci"]
    assert hi - lo > 5


def test_unpaired_noise_gives_a_wide_difference_ci() -> None:
    rng = np.random.default_rng(5)
    a, b = _cell("a", rng), _cell("b", rng)
    (comp,) = leaderboard([a, b], baselines=["a"], n_boot=1000, seed=0)["comparisons"]
    lo, hi = comp["ci"]
    assert hi - lo > 8 and lo < comp["diff"] < hi
    assert comp["p"] > 1 / 1000


def test_comparisons_use_the_best_baseline_and_holm() -> None:
    rng = np.random.default_rng(6)
    cells = [_cell("clip", rng, p=0.3), _cell("dino", rng, p=0.6)]
    cells += [_cell(f"fusion{k}", rng, p=0.5 + 0.05 * k) for k in range(4)]
    stats = leaderboard(cells, baselines=["clip", "dino"], n_boot=400, seed=1)
    comps = stats["comparisons"]
    assert [c["cell"] for c in comps] == [f"fusion{k}" for k in range(4)]
    assert {c["vs"] for c in comps} == {"dino"}
    assert [c["p_holm"] for c in comps] == holm([c["p"] for c in comps])
    means = {c["name"]: c["mean"]["mean"] for c in stats["cells"]}
    for c in comps:
        assert c["diff"] == pytest.approx(means[c["cell"]] - means["dino"], abs=1e-9)


def test_holm_matches_a_hand_worked_example() -> None:
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> max(0.06, 0.04)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # sorted: 0.1*3 = 0.3, 0.6*2 = 1.2 -> 1, 0.7 -> kept at 1 (monotone)
    assert holm([0.6, 0.7, 0.1]) == pytest.approx([1.0, 1.0, 0.3])
    assert holm([]) == []


def test_ranks_and_rank_probabilities() -> None:
    rng = np.random.default_rng(7)
    cells = [_cell(f"c{k}", rng, p=0.2 + 0.1 * k) for k in range(5)]
    cells += [_cell("c5", rng, seeds=(0, 1), p=0.4)]  # fewer seeds: own seed draws, same items
    stats = leaderboard(cells, baselines=["c0"], n_boot=300, seed=0)
    probs = np.array([c["rank_probabilities"] for c in stats["cells"]])
    assert probs.shape == (6, 6)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)  # per cell
    np.testing.assert_allclose(probs.sum(axis=0), 1.0)  # per rank
    by_mean = sorted(stats["cells"], key=lambda c: -c["mean"]["mean"])
    assert [c["rank"] for c in by_mean] == [1, 2, 3, 4, 5, 6]
    assert [c["p_best"] for c in stats["cells"]] == [p[0] for p in probs]
    assert by_mean[0]["p_best"] > 0.5


def test_deterministic_for_a_seed() -> None:
    cells = [_cell(f"c{k}", np.random.default_rng(k)) for k in range(3)]
    one = leaderboard(cells, baselines=["c0"], n_boot=200, seed=11)
    assert one == leaderboard(cells, baselines=["c0"], n_boot=200, seed=11)
    assert one != leaderboard(cells, baselines=["c0"], n_boot=200, seed=12)


def test_thirty_cells_of_a_few_hundred_items_is_fast() -> None:
    rng = np.random.default_rng(8)
    fams = {f: 400 for f in ("scene", "ocr", "latex", "chart", "table", "mixed")}
    items = _items(fams)
    cells = [
        CellScores(
            f"c{k}",
            [0, 1, 2],
            {f: (rng.random((3, n)) < 0.5) * 100.0 for f, n in fams.items()},
            items,
        )
        for k in range(30)
    ]
    start = time.perf_counter()
    stats = leaderboard(cells, baselines=["c0", "c1", "c2"], n_boot=2000)
    print(
        f"30 cells x 6 families x 400 items x 3 seeds, 2000 replicates: "
        f"{time.perf_counter() - start:.2f} s"
    )
    assert len(stats["comparisons"]) == 27


def test_question_types_group_by_the_id_suffix_and_mark_two_expert_ones(tmp_path: Path) -> None:
    from polyvis.eval.stats import question_type_stats

    rows = [
        ("mixed-test-000000-read", "mixed", 1.0),
        ("mixed-test-000000-describe", "mixed", 0.0),
        ("mixed-test-000001-describe", "mixed", 1.0),
        ("ocr-test-000000-read", "ocr", 0.5),
    ]
    runs = {
        "clip": {0: _write_answers(tmp_path / "c0.jsonl", rows)},
        "vary": {0: _write_answers(tmp_path / "v0.jsonl", [(i, f, 1.0) for i, f, _ in rows])},
    }
    out = question_type_stats(runs, n_boot=50)
    assert out["groups"] == ["ocr/read", "mixed/read", "mixed/describe"]
    assert out["two_expert"] == ["mixed/describe"]
    assert out["cells"]["clip"]["mixed/describe"]["mean"] == 50.0
    assert out["cells"]["clip"]["ocr/read"]["mean"] == 50.0
    assert out["cells"]["vary"]["mixed/describe"] == {"mean": 100.0, "ci": [100.0, 100.0]}
    # the ordinary grouping is by family only
    assert set(load_item_scores(runs["clip"][0])) == {"mixed", "ocr"}


def test_the_val_choice_averages_the_groups_the_leaderboard_averages(tmp_path: Path) -> None:
    """The fair protocol chose on a val mean without the "family/metric" groups (chart's
    to_table questions, scored by edit similarity) that the leaderboard's mean has."""
    from polyvis.nano.runs import family_scores

    rows = [
        {"id": "a", "family": "chart", "metric": "relaxed_accuracy", "score": 1.0},
        {"id": "b", "family": "chart", "metric": "edit_similarity", "score": 0.25},
        {"id": "c", "family": "ocr", "score": 0.5},
    ]
    path = _write_rows(tmp_path / "answers.jsonl", rows)
    results = {"scores": {"chart": 1.0, "chart/edit_similarity": 0.25, "ocr": 0.5}}
    val = family_scores(results)
    assert val == {"chart": 100.0, "chart/edit_similarity": 25.0, "ocr": 50.0}
    cell = cell_scores("clip", {0: path})
    assert {g: float(v.mean()) for g, v in cell.families.items()} == val
