"""The nano world's options under the fair protocol: difficulty, precision, steps and the experts'
seed (each validated with an error naming its field, and each reaching the world it builds), and
the machine line that says which CPU kernels made the bytes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from tests.test_protocol import GRID

from polyvis.errors import ConfigError
from polyvis.nano.ablate import load_ablation


@pytest.mark.parametrize(
    ("value", "field", "words"),
    [
        ({"ocrr": "easy"}, "difficulty.ocrr", "unknown family; valid: "),
        ({"ocr": "simple"}, "difficulty.ocr", "is not a difficulty"),
        ("easy", "difficulty", "give levels by family"),
    ],
)
def test_world_difficulty_errors_name_the_family(tmp_path: Path, value, field: str, words: str):
    from polyvis.nano.fair_plan import plan_fair

    with pytest.raises(ConfigError, match=rf"^{field}: .*{words}"):
        plan_fair({**GRID, "difficulty": value}, tmp_path / "out")


def test_world_precision_other_than_fp32_or_bf16_names_the_field(tmp_path: Path):
    from polyvis.nano.fair_plan import plan_fair

    with pytest.raises(ConfigError, match=r"^precision: must be fp32 or bf16, got 'fp16'$"):
        plan_fair({**GRID, "precision": "fp16"}, tmp_path / "out")
    from polyvis.config import load_config

    tiny = Path(__file__).resolve().parents[1] / "configs" / "nano-tiny.yaml"
    base = load_config(tiny).model_dump(mode="json")
    with pytest.raises(
        ConfigError, match=r"^precision: nano ablations only .*train.mixed_precision"
    ):
        plan_fair({"base": base, "protocol": "fair", "precision": "bf16"}, tmp_path / "real")
    spec = tmp_path / "ab.yaml"  # an ablation file may name it
    spec.write_text("nano: true\nprecision: bf16\ngrid:\n  encoders: [[clip]]\n")
    assert load_ablation(spec)["precision"] == "bf16"


@pytest.mark.parametrize("value", [-1, True, "1", 1.5])
def test_expert_seed_must_be_a_non_negative_integer(tmp_path: Path, value):
    from polyvis.nano.fair_plan import plan_fair

    with pytest.raises(ConfigError, match=r"^expert_seed: must be a non-negative integer, got "):
        plan_fair({**GRID, "expert_seed": value}, tmp_path / "out")


def test_expert_seed_is_a_nano_option_and_an_ablation_file_may_name_it(tmp_path: Path):
    from polyvis.config import load_config
    from polyvis.nano.fair_plan import plan_fair

    tiny = Path(__file__).resolve().parents[1] / "configs" / "nano-tiny.yaml"
    base = load_config(tiny).model_dump(mode="json")
    with pytest.raises(ConfigError, match=r"^expert_seed: nano ablations only"):
        plan_fair({"base": base, "protocol": "fair", "expert_seed": 1}, tmp_path / "real")
    spec = tmp_path / "ab.yaml"
    spec.write_text("nano: true\nexpert_seed: 2\ngrid:\n  encoders: [[clip]]\n")
    assert load_ablation(spec)["expert_seed"] == 2


def test_a_grid_on_another_draw_of_the_experts_says_so_first():
    from polyvis.nano.protocol import world_notes

    assert world_notes({"budget": {"steps": 1000}}) == []
    assert world_notes({}) == []
    (note,) = world_notes({"budget": {"expert_seed": 2}})
    assert note.startswith("Experts rebuilt at seed 2 (expert_seed)")


def test_expert_seed_reseeds_every_expert_into_cache_entries_of_its_own():
    from polyvis.nano import experts
    from polyvis.nano.expert_specs import EXPERTS
    from polyvis.nano.world import expert_settings

    assert expert_settings({"expert_seed": 0}) is None  # seed 0 is the default world
    reseeded = expert_settings({"expert_seed": 3, "precision": "bf16"})
    assert reseeded == {n: {"seed": 3, "precision": "bf16"} for n in EXPERTS}
    for name in EXPERTS:
        data = experts.resolve_data(None, name, quick=True)
        default = experts.resolve_settings(name, None, quick=True)
        same = experts.resolve_settings(name, {name: {"seed": 0}}, quick=True)
        other = experts.resolve_settings(name, expert_settings({"expert_seed": 3}), quick=True)
        assert other["seed"] == 3
        assert experts.expert_dir(name, same, data) == experts.expert_dir(name, default, data)
        assert experts.expert_dir(name, other, data) != experts.expert_dir(name, default, data)


def test_world_difficulty_reaches_the_worlds_data(tmp_path: Path):
    from polyvis.nano.fair_plan import plan_fair

    plan = plan_fair({**GRID, "difficulty": {"ocr": "easy"}}, tmp_path / "out")
    from polyvis.nano.budget import QUICK_BUDGET

    want = {**QUICK_BUDGET.get("difficulty", {}), "ocr": "easy"}
    assert plan.world.info["data"]["difficulty"] == want
    assert plan.world.test_options["difficulty"]["ocr"] == "easy"  # the test set alike
    base = plan_fair(GRID, tmp_path / "base")
    assert base.world.info["data"]["folder"] != plan.world.info["data"]["folder"]


def test_world_steps_set_every_cells_budget_and_its_align_share(tmp_path: Path):
    from polyvis.nano.fair_plan import plan_fair

    plan = plan_fair({**GRID, "steps": 20, "align_share": 0.25}, tmp_path / "out")
    run = plan.spec(plan.cells[0], plan.settings[0], 0, "val")
    assert plan.world.info["budget"]["steps"] == 20 and plan.world.align["train"]["max_steps"] == 5
    assert run.config.train.max_steps == 15  # fine-tuning: the rest of the budget
    with pytest.raises(ConfigError, match=r"^steps: must be an integer"):
        plan_fair({**GRID, "steps": 1.5}, tmp_path / "bad")


def test_the_machine_line_names_the_cpu_kernels_that_decide_the_bytes():
    from polyvis.nano.protocol import machine

    line = machine()
    assert f"torch kernels {torch.backends.cpu.get_cpu_capability()}" in line
    assert f"{os.cpu_count()} CPUs" in line


def test_an_ablation_file_that_is_not_yaml_or_not_a_mapping_is_one_line(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("nano: true\ngrid: {cells: [\n")
    with pytest.raises(ConfigError, match=rf"^{bad}: not valid YAML \(line 3, column 1: "):
        load_ablation(bad)
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match=r"the top level must be a mapping$"):
        load_ablation(bad)
