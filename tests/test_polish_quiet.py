"""Known third-party noise: `polyvis -v chat` printed huggingface_hub's "Cannot disable progress
bars" (our quiet block asking while --verbose's env var forbids), and every LoRA model printed
transformers' FutureWarning about `is_gradient_checkpointing` (asked by peft)."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import warnings
from pathlib import Path

from PIL import Image

from polyvis.models.quiet import quiet_transformers

ROOT = Path(__file__).resolve().parents[1]
NANO_TINY = ROOT / "configs" / "nano-tiny.yaml"
HUB_WARNING = "Cannot disable progress bars"
PEFT_WARNING = "is_gradient_checkpointing"


def _python(code: str, *argv: str) -> subprocess.CompletedProcess:
    """A fresh process (huggingface_hub reads its env var once, on import), warnings as shipped."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("HF_HUB_DISABLE_PROGRESS_BARS", "PYTHONWARNINGS")
    }
    env["OMP_NUM_THREADS"] = "1"
    run = subprocess.run(
        [sys.executable, "-c", code, *argv], env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    return run


def test_quiet_block_says_nothing_when_the_env_var_keeps_bars_on(monkeypatch) -> None:
    hub_tqdm = importlib.import_module("huggingface_hub.utils.tqdm")  # the module, not the class
    monkeypatch.setattr(hub_tqdm, "HF_HUB_DISABLE_PROGRESS_BARS", False)  # as after `-v`
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with quiet_transformers():
            pass
    assert not [w for w in caught if HUB_WARNING in str(w.message)]


def test_verbose_chat_shows_bars_but_no_hub_warning(tiny_model_dir: Path, tmp_path: Path) -> None:
    img = tmp_path / "red.png"
    Image.new("RGB", (40, 30), (200, 30, 30)).save(img)
    code = "import sys; from polyvis.cli import main; sys.exit(main(sys.argv[1:]))"
    argv = ["-v", "chat", str(tiny_model_dir), "--image", str(img), "hi", "--max-new-tokens", "1"]
    run = _python(code, *argv)
    assert "Loading weights" in run.stderr  # --verbose still shows transformers' bars
    assert HUB_WARNING not in run.stderr, run.stderr


def test_a_lora_model_prints_no_peft_future_warning() -> None:
    code = (
        "import sys\n"
        "from polyvis.config import load_config\n"
        "from polyvis.models.build import build_model\n"
        "from polyvis.train.stages import configure_stage, has_lora\n"
        "cfg = load_config(sys.argv[1], ['train.stage=finetune', 'train.lora={r: 2}'])\n"
        "model, _ = build_model(cfg)\n"
        "configure_stage(model, cfg.train)\n"
        "print('lora', has_lora(model))\n"
    )
    run = _python(code, str(NANO_TINY))
    assert run.stdout.strip() == "lora True"
    assert PEFT_WARNING not in run.stderr, run.stderr
