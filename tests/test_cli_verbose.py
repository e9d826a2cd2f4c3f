"""`polyvis --verbose`: transformers' own progress bars ("Loading weights", "Writing model
shards") show only with it, in the command line as run from a shell and in-process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from polyvis.cli import main

ROOT = Path(__file__).resolve().parents[1]
NANO_TINY = ROOT / "configs" / "nano-tiny.yaml"
WRITING, LOADING = "Writing model shards", "Loading weights"


def test_bars_only_with_verbose_in_process(tiny_model_dir: Path, tmp_path: Path, capsys):
    from transformers.utils import logging as hf_logging

    assert hf_logging.is_progress_bar_enabled()  # transformers' default in this process
    for verbose in (False, True):
        flag = ["--verbose"] if verbose else []
        out = tmp_path / f"model-{verbose}"
        assert main([*flag, "init-model", str(NANO_TINY), "--out", str(out)]) == 0
        assert main([*flag, "chat", str(tiny_model_dir), "hi", "--max-new-tokens", "1"]) == 0
        captured = capsys.readouterr()
        assert "saved untrained model" in captured.out
        for bar in (WRITING, LOADING):
            assert (bar in captured.err) == verbose, (bar, verbose, captured.err)
        # the switch is the command's only: afterwards transformers is as it was
        assert hf_logging.is_progress_bar_enabled()
        assert "HF_HUB_DISABLE_PROGRESS_BARS" not in os.environ


@pytest.mark.parametrize("verbose", [False, True])
def test_bars_only_with_verbose_from_a_shell(tmp_path: Path, verbose: bool):
    # A fresh process imports transformers only inside the command, as `polyvis` run by hand does.
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"}
    argv = ["--verbose"] if verbose else []
    argv += ["init-model", str(NANO_TINY), "--out", str(tmp_path / "model")]
    code = "import sys; from polyvis.cli import main; sys.exit(main(sys.argv[1:]))"
    run = subprocess.run(
        [sys.executable, "-c", code, *argv], env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    assert "saved untrained model" in run.stdout
    assert (WRITING in run.stderr) == verbose, run.stderr
