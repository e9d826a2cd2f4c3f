"""The fair protocol's `families` and `variants` options, on the quick nano budget: the tiling
measurement of configs/tiling-ocr-nano.yaml (vary-nano untiled against tiled on the page
families) end to end, and the errors that name their field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from tests.test_protocol import inline, write

from _inline_runs import use_launcher
from polyvis.errors import ConfigError
from polyvis.nano.ablate import load_ablation, run_ablation
from polyvis.nano.fair_world import TEXT_TOKENS

ROOT = Path(__file__).resolve().parents[1]
TILING = {"grids": [[1, 2], [2, 1], [2, 2], [1, 3]], "thumbnail": True}


def measurement(**changes) -> dict:
    """configs/tiling-ocr-nano.yaml on the quick budget, one job."""
    spec = yaml.safe_load((ROOT / "configs" / "tiling-ocr-nano.yaml").read_text())
    return {**spec, "quick": True, "jobs": 1, **changes}


def test_the_tiling_measurement_runs_end_to_end_with_the_tiling_in_the_tiled_cell_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from polyvis.models.processing import PolyVisProcessor

    spec = measurement(grid={**measurement()["grid"], "seeds": [0, 1]})
    assert spec["variants"]["vary-tiled"]["tiling"] == TILING
    out, launched = tmp_path / "out", []
    use_launcher(monkeypatch, inline(launched))
    doc = run_ablation(write(tmp_path / "t.yaml", spec), out)

    cells = {c["name"]: c for c in doc["cells"]}
    assert set(cells) == {"vary", "vary-tiled"}
    for cell in cells.values():
        assert set(cell["families"]) == {"ocrpage", "tablepage"} and cell["seeds"] == [0, 1]
        assert cell["adapter"] == "mlp(depth=2)" and cell["fusion"] is None
    # four views of vary-nano's tokens at most (2x2 + thumbnail) against one
    assert cells["vary-tiled"]["flops_per_step"] > 2 * cells["vary"]["flops_per_step"]
    (comp,) = doc["comparisons"]  # the variant against the expert it derives from
    assert (comp["cell"], comp["vs"]) == ("vary-tiled", "vary") and "p_holm" in comp

    # the world: the page families at data seed 0 to train and choose, seed 1 to test
    protocol = doc["protocol"]
    assert protocol["data"]["families"] == ["ocrpage", "tablepage"]
    assert [Path(f).parent.name for f in protocol["val"]["files"]] == ["ocrpage", "tablepage"]
    test = json.loads((Path(protocol["test"]["folder"]) / "manifest.json").read_text())
    assert {f: m["seed"] for f, m in test["families"].items()} == {"ocrpage": 1, "tablepage": 1}

    configs = sorted(out.glob("cells/*/*/seed-*/**/config.yaml"))
    assert {p.relative_to(out).parts[1] for p in configs} == {"vary", "vary-tiled"}
    for path in configs:
        cfg = yaml.safe_load(path.read_text())
        (enc,) = cfg["model"]["encoders"]
        tiled = path.relative_to(out).parts[1] == "vary-tiled"
        assert ("tiling" in enc) == tiled, path
        assert [Path(f).parent.name for f in cfg["data"]["train"]] == ["ocrpage", "tablepage"]
        # the same text for both: the image tokens (at most 5 x 64 tiled, 64 untiled) + 2 + 190
        assert cfg["data"]["max_length"] == (5 if tiled else 1) * 64 + 2 + TEXT_TOKENS
        if tiled:
            assert enc["tiling"] == {"grids": TILING["grids"], "thumbnail": True}
    untiled = yaml.safe_load(next(p for p in configs if "vary-tiled" not in str(p)).read_text())
    tiled = yaml.safe_load(next(p for p in configs if "vary-tiled" in str(p)).read_text())
    assert {**tiled["model"]["encoders"][0], "tiling": None, "name": "vary"} == {
        **untiled["model"]["encoders"][0],
        "tiling": None,
    }  # the same checkpoint and layers: only the tiling and the name differ
    # each page gets its grid: 2x2 for the 128 px square, 1x3 for the 192 x 64 table
    final = next(out.glob("cells/vary-tiled/*/seed-0/final"))
    proc = PolyVisProcessor.from_pretrained(final)
    assert proc.tile_grid((128, 128)) == (2, 2) and proc.image_token_count((128, 128)) == 5 * 64
    assert proc.tile_grid((64, 192)) == (1, 3) and proc.image_token_count((64, 192)) == 4 * 64


@pytest.mark.parametrize(
    ("extra", "field", "words"),
    [
        ({"families": ["ocrpages"]}, "families", "unknown family 'ocrpages'"),
        ({"families": []}, "families", "list of family names"),
        ({"families": ["ocr", "ocr"]}, "families", "listed twice"),
        ({"variants": {"vary": {"from": "clip"}}}, "variants.vary", "base encoder's name"),
        ({"variants": {"t": {"tiling": TILING}}}, "variants.t", "from: ENCODER"),
        ({"variants": {"t": {"from": "varry"}}}, "variants.t.from", "unknown encoder 'varry'"),
        ({"variants": {"t": {"from": "vary", "path": "x"}}}, "variants.t.path", "keeps its weights"),
        ({"variants": {"t": {"from": "vary", "tiling": {"grids": [[1, 2], [1, 2]]}}}},
         "variants.t.tiling.grids", "repeat a grid"),
        ({"variants": {"t": {"from": "vary", "tilling": TILING}}}, "variants.t.tilling",
         "unknown field"),
        ({"variants": {"t": {"from": "vary"}}, "grid": {}}, "grid.encoders", "in no set"),
        ({"grid": {"encoders": [["vary"], ["vary-tiled"]]}}, "grid.encoders[1]",
         "unknown encoder 'vary-tiled'"),
    ],
)  # fmt: skip
def test_families_and_variants_errors_name_their_field(
    tmp_path: Path, extra: dict, field: str, words: str
):
    from polyvis.nano.fair_plan import plan_fair

    spec = {"nano": True, "quick": True, "grid": {"encoders": [["vary"]]}, **extra}
    with pytest.raises(ConfigError) as err:
        plan_fair(load_ablation(write(tmp_path / "a.yaml", spec)), tmp_path / "o")
    assert err.value.field == field and words in str(err.value)


def test_a_variants_mistake_is_named_before_the_world_is_built(tmp_path: Path, monkeypatch):
    from polyvis.nano import fair_world
    from polyvis.nano.fair_plan import plan_fair

    # it used to surface after the experts and data were built: minutes of silence first
    monkeypatch.setattr(fair_world, "_nano_world", lambda *a: pytest.fail("built the world"))
    bad = {"t": {"from": "vary", "tiling": {"grids": [[1, 2], [1, 2]]}}}
    spec = {"nano": True, "quick": True, "grid": {"encoders": [["t"]]}, "variants": bad}
    with pytest.raises(ConfigError, match=r"^variants\.t\.tiling\.grids: .*repeat a grid"):
        plan_fair(load_ablation(write(tmp_path / "a.yaml", spec)), tmp_path / "o")


def test_the_options_belong_to_the_fair_protocol_and_families_to_nano(tmp_path: Path):
    from polyvis.config import load_config
    from polyvis.nano.fair_plan import plan_fair

    old = {"nano": True, "protocol": "none", "families": ["ocrpage"]}
    with pytest.raises(ConfigError, match="families: only with protocol: fair"):
        load_ablation(write(tmp_path / "a.yaml", old))
    base = load_config(ROOT / "configs" / "nano-tiny.yaml").model_dump(mode="json")
    real = {"base": base, "protocol": "fair", "families": ["ocrpage"]}
    with pytest.raises(ConfigError, match="families: nano ablations only"):
        plan_fair(real, tmp_path / "o")


def test_without_the_options_the_world_is_the_six_families_and_the_base_encoders(tmp_path: Path):
    from polyvis.nano.budget import FAMILIES
    from polyvis.nano.fair_plan import plan_fair

    plan = plan_fair({"nano": True, "quick": True}, tmp_path / "o")
    assert [Path(f).parent.name for f in plan.world.val_files] == FAMILIES
    assert list(plan.world.encoders) == ["clip", "vary", "dino"] and plan.world.variants == ()
    assert "families" not in plan.world.info["data"]
    (cell,) = plan.cells  # the default set: the base's encoders, no variant among them
    assert cell.meta["encoders"] == ["clip", "vary", "dino"]


def test_a_level_for_another_family_goes_to_that_familys_data_not_the_six(tmp_path: Path):
    from polyvis.data.synthetic.cache import synthetic_dir
    from polyvis.nano.fair_plan import plan_fair

    spec = {"nano": True, "quick": True, "families": ["binding", "detail"],
            "difficulty": {"binding": "easy"}}  # fmt: skip
    plan = plan_fair(spec, tmp_path / "o")  # the six families' world data took no binding level
    assert [Path(f).parent.name for f in plan.world.val_files] == ["binding", "detail"]
    data = plan.world.info["data"]
    assert data["difficulty"] == {"binding": "easy"}
    options = {"families": ["binding", "detail"], "n": 12, "seed": 0, "size": 64,
               "difficulty": {"binding": "easy"}}  # fmt: skip
    assert Path(data["folder"]) == synthetic_dir(options)
