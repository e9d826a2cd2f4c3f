"""`polyvis ablate` mistakes: a bad grid value, axis, base, eval section or jobs is a one-line
ConfigError naming its field before any run trains (a cell whose values cannot be built together
is still skipped with a printed line); a killed ablation leaves no worker training on."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from _orphans import survivors_of_kill9
from polyvis.cli import main
from polyvis.config import load_config
from polyvis.errors import ConfigError
from polyvis.nano.ablate import load_ablation, plan, run_ablation
from polyvis.nano.runs import train_runs
from polyvis.nano.worker import PARENT_ENV

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "nano-tiny.yaml"


def base() -> dict[str, Any]:
    cfg = load_config(TINY).model_dump(mode="json")
    cfg["train"].update(stage="finetune", lr_llm=5e-4, max_steps=2)
    return cfg


def write(path: Path, spec: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(spec))
    return path


def spec_with(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    test = tmp_path / "test.jsonl"
    test.write_text("")
    return {"base": base(), "eval": {"files": [str(test)]}, "jobs": 1, **extra}


def errors(tmp_path: Path, spec: dict[str, Any]) -> ConfigError:
    """The error of load_ablation, else of plan (neither trains anything)."""
    with pytest.raises(ConfigError) as err:
        plan(load_ablation(write(tmp_path / "ab.yaml", spec)), tmp_path / "out")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()
    return err.value


@pytest.mark.parametrize(
    ("grid", "field", "words"),
    [
        ({"fusion": ["add", "bogus"]}, "grid.fusion[1]", "unknown fusion 'bogus'; valid: add,"),
        ({"seeds": [0, "x"]}, "grid.seeds[1]", "must be an integer, got 'x'"),
        ({"seeds": [0, True]}, "grid.seeds[1]", "must be an integer, got True"),
        ({"adapter": ["mlp", "nope"]}, "grid.adapter[1]", "unknown adapter 'nope'"),
        ({"adapter": [{"depth": 2}]}, "grid.adapter[0]", "a mapping with 'type'"),
        ({"fusion": [{"type": "add", "foo": 1}]}, "grid.fusion[0].foo", "takes no such option"),
        ({"encoders": [["clip"], []]}, "grid.encoders[1]", "an empty encoder set"),
        ({"encoders": [["clip", "clip"]]}, "grid.encoders[0]", "lists 'clip' twice"),
        ({"encoders": [["clip", 3]]}, "grid.encoders[0]", "encoder names are strings, got 3"),
        ({"encoders": [["clip", "vary"]]}, "grid.encoders[0]", "unknown encoder 'vary'"),
        # each axis a list: a string would be read letter by letter
        ({"fusion": "add"}, "grid.fusion", "must be a list (e.g. [add, mul])"),
        ({"adapter": "mlp"}, "grid.adapter", "must be a list (e.g. [mlp, linear])"),
        ({"seeds": 0}, "grid.seeds", "must be a list (e.g. [0, 1, 2])"),
        ({"encoders": ["clip"]}, "grid.encoders",
         "must be a list of encoder lists (e.g. [[clip], [clip, vary]])"),
        ({"encoders": "clip"}, "grid.encoders", "must be a list of encoder lists"),
        # an empty axis: no runs
        ({"fusion": []}, "grid.fusion", "the grid would have no runs"),
        ({"seeds": []}, "grid.seeds", "the grid would have no runs"),
        ({"encoders": []}, "grid.encoders", "the grid would have no runs"),
        # one value twice: two runs in one folder
        ({"seeds": [0, 1, 0]}, "grid.seeds[2]", "the same as grid.seeds[0] (0)"),
        ({"fusion": ["add", {"type": "add"}]}, "grid.fusion[1]", "the same as grid.fusion[0]"),
        ({"encoders": [["clip"], ["clip"]]}, "grid.encoders[1]", "the same as grid.encoders[0]"),
    ],
)  # fmt: skip
def test_a_bad_grid_value_names_its_field_before_anything_trains(
    tmp_path: Path, grid: dict, field: str, words: str
):
    err = errors(tmp_path, spec_with(tmp_path, grid=grid))
    assert err.field == field and words in str(err), str(err)


def test_the_command_exits_2_with_one_line_and_trains_nothing(tmp_path: Path, capsys):
    spec = spec_with(tmp_path, grid={"fusion": ["add", "bogus"]})
    out = tmp_path / "out"
    assert main(["ablate", str(write(tmp_path / "ab.yaml", spec)), "--out", str(out)]) == 2
    err = capsys.readouterr()
    assert err.err.strip().splitlines() == [
        "polyvis: error: grid.fusion[1]: unknown fusion 'bogus'; valid: add, concat-channel, "
        "concat-sequence, gated, interleave, mul, omnifusion, resampler, sva"
    ]
    assert "skipping" not in err.out and not out.exists()


def test_a_cell_that_cannot_be_built_together_is_still_skipped(tmp_path: Path, capsys):
    auto = {"type": "concat-channel", "scales": "auto"}  # needs 2+ encoders
    linear = {"type": "linear", "init_encoder": "clip", "init_from": "p.bin"}  # concat-channel
    grid = {
        "fusion": [auto, "add"],
        "adapter": ["mlp", linear],
        "encoders": [["clip"], ["clip", "dino"]],
    }
    runs = plan(load_ablation(write(tmp_path / "ab.yaml", spec_with(tmp_path, grid=grid))),
                tmp_path / "out")  # fmt: skip
    assert [cell for cell, _, _ in runs] == [
        "clip+dino | concat-channel(scales=auto) | mlp",
        "clip+dino | concat-channel(scales=auto) | linear(init_encoder=clip,init_from=p.bin)",
        "clip | add | mlp",
        "clip+dino | add | mlp",
    ]
    printed = capsys.readouterr().out.splitlines()
    assert printed == [
        "skipping clip | concat-channel(scales=auto) | mlp: model.fusion.scales: 'auto' needs a "
        "concat-channel fusion over 2 or more encoders (got concat-channel over 1)",
        "skipping clip | concat-channel(scales=auto) | linear(init_encoder=clip,init_from=p.bin): "
        "model.fusion.scales: 'auto' needs a concat-channel fusion over 2 or more encoders (got "
        "concat-channel over 1)",
        "skipping clip | add | linear(init_encoder=clip,init_from=p.bin): "
        "model.adapter.init_encoder: needs a concat-channel fusion without proj_dim (got add)",
        "skipping clip+dino | add | linear(init_encoder=clip,init_from=p.bin): "
        "model.adapter.init_encoder: needs a concat-channel fusion without proj_dim (got add)",
    ]
    # every cell skipped: the grid has no runs, an error rather than an empty table
    err = errors(tmp_path, spec_with(tmp_path, grid={"fusion": [auto], "encoders": [["clip"]]}))
    assert err.field == "grid" and "the grid has no runs" in str(err)


@pytest.mark.parametrize(
    ("extra", "field", "words"),
    [
        ({"jobs": 0}, "jobs", "must be a positive integer (runs at a time), got 0"),
        ({"jobs": "many"}, "jobs", "got 'many'"),
        ({"jobs": True}, "jobs", "got True"),
        ({"base": 5}, "base", "give a config file's path or the config inline (a mapping), got 5"),
        ({"base": {"model": {}}}, "base.model.encoders", "Field required"),
        ({"base": {"model": {"encoders": [], "llm": {"config": {"model_type": "qwen2"}}}}},
         "base.model.encoders", "at least 1 item"),
        ({"base": "no-such.yaml"}, "base", "no-such.yaml: config file not found"),
        ({"grid": ["fusion"]}, "grid", "give the axes by name"),
        ({"eval": {"files": "t.jsonl"}}, "eval.files", "give a list of records files"),
        ({"eval": {"limit": "many"}}, "eval.limit", "must be a positive integer, got 'many'"),
        ({"eval": {"limit": 0}}, "eval.limit", "must be a positive integer, got 0"),
        ({"eval": {"limt": 5}}, "eval.limt", "unknown field; valid: files, limit"),
    ],
)  # fmt: skip
def test_a_bad_base_eval_or_jobs_names_its_field(
    tmp_path: Path, extra: dict, field: str, words: str
):
    err = errors(tmp_path, {**spec_with(tmp_path), **extra})
    assert err.field == field and words in str(err), str(err)


def test_a_base_file_with_a_mistake_names_the_file_and_its_field(tmp_path: Path):
    bad = tmp_path / "base.yaml"
    bad.write_text("model: {}\n")
    err = errors(tmp_path, spec_with(tmp_path, base=str(bad)))
    assert str(err) == f"base: {bad}: model.encoders: Field required"


def test_a_missing_eval_file_is_found_before_any_run_trains(tmp_path: Path):
    spec = spec_with(tmp_path)
    spec["eval"]["files"].append(str(tmp_path / "gone.jsonl"))
    out = tmp_path / "out"
    with pytest.raises(ConfigError) as err:
        run_ablation(write(tmp_path / "ab.yaml", spec), out)
    assert str(err.value) == f"eval.files[1]: {tmp_path / 'gone.jsonl'}: records file not found"
    assert not out.exists()
    # a converter's --out folder given as a records file: named a folder, with its files
    folder = tmp_path / "converted"
    folder.mkdir()
    (folder / "val.jsonl").write_text("")
    spec["eval"]["files"][1] = str(folder)
    with pytest.raises(ConfigError) as err:
        run_ablation(write(tmp_path / "ab.yaml", spec), out)
    assert err.value.field == "eval.files[1]"
    assert f"{folder}: a folder, not a records file" in str(err.value)
    assert str(folder / "val.jsonl") in str(err.value) and not out.exists()


def test_train_runs_refuses_no_jobs_rather_than_wait_forever():
    for kwargs, field in (({"jobs": 0}, "jobs"), ({"threads": 0}, "threads")):
        with pytest.raises(ConfigError, match=rf"^{field}: must be a positive integer, got 0$"):
            train_runs([], **kwargs)


# A parent that launches a worker the way train_runs does (runs._launch), then waits. The stage
# unpickles as a call to time.sleep: a worker that stays up without importing torch.
PARENT = textwrap.dedent(
    """
    import sys, time, types
    from pathlib import Path
    from polyvis.nano.runs import _launch

    class Sleep:
        def __reduce__(self):
            return (time.sleep, (60,))

    proc, log = _launch(types.SimpleNamespace(out=Path(sys.argv[1])), Sleep(), 1)
    print(proc.pid, flush=True)
    time.sleep(60)
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_worker_dies_with_the_ablation_that_launched_it(tmp_path: Path):
    assert survivors_of_kill9(PARENT, str(tmp_path)) == [], "the worker outlived its ablation"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_worker_whose_launcher_is_already_gone_exits_at_once():
    check = "from polyvis.nano.worker import die_with_parent; die_with_parent(); print('alive')"
    for parent, code, printed in ((os.getpid(), 0, "alive\n"), (1, 1, "")):
        env = {**os.environ, PARENT_ENV: str(parent)}  # 1: not the pid that started it
        done = subprocess.run(
            [sys.executable, "-c", check], env=env, capture_output=True, text=True, timeout=60
        )
        assert (done.returncode, done.stdout) == (code, printed), done.stderr
