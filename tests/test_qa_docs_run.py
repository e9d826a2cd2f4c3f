"""Documented commands that ran but did other than the docs say (QA pass over README and docs/)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NANO_TINY = ROOT / "configs" / "nano-tiny.yaml"


@pytest.fixture
def synth_calls(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Records the `progress` of every synthetic-data generation (and still generates)."""
    import polyvis.data.synthetic.generate  # noqa: F401  (the module, not the function)

    module = sys.modules["polyvis.data.synthetic.generate"]
    real = module.generate
    calls: list[bool] = []

    def spy(*args, **kwargs):
        calls.append(kwargs.get("progress", True))
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "generate", spy)
    return calls


def test_train_no_progress_covers_generated_data(tmp_path: Path, synth_calls: list[bool]) -> None:
    """docs/training.md runs `polyvis train ... --no-progress --set data.synthetic=...`; the data
    generated on first use drew a "rendering" progress bar all the same."""
    from polyvis.config import load_config
    from polyvis.train import train

    cfg = load_config(
        NANO_TINY,
        [
            "data.synthetic={families: [ocr], n: 10, seed: 9101}",
            "train.max_steps=1",
            "train.batch_size=2",
        ],
    )
    final = train(cfg, tmp_path / "run", progress=False)
    assert (final / "config.json").is_file()
    assert synth_calls == [False]  # generated once, without a bar


def test_cache_features_no_progress_covers_generated_data(
    tmp_path: Path, synth_calls: list[bool], capsys: pytest.CaptureFixture[str]
) -> None:
    """`polyvis cache-features CONFIG --no-progress` with data.synthetic: no bar either."""
    from polyvis.cli import main

    opts = "data.synthetic={families: [ocr], n: 10, seed: 9102}"
    assert main(["cache-features", str(NANO_TINY), "--no-progress", "--set", opts]) == 0
    assert synth_calls == [False]
    out = capsys.readouterr().out
    assert "clip: fingerprint" in out and "dino: fingerprint" in out
    assert main(["cache-features", str(NANO_TINY), "--set", opts]) == 0
    assert synth_calls == [False]  # the second run reuses the data: nothing generated


@pytest.mark.parametrize(("rank", "printed"), [("1", False), ("0", True), (None, True)])
def test_train_prints_final_model_once_per_launch(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    rank: str | None,
    printed: bool,
) -> None:
    """`accelerate launch ... -m polyvis train` (docs/training.md) printed `final model: ...`
    once per process, run together on one line; only the main process (rank 0) says it."""
    import polyvis.train
    from polyvis.cli import main

    if rank is None:
        monkeypatch.delenv("RANK", raising=False)
    else:
        monkeypatch.setenv("RANK", rank)
    monkeypatch.setattr(polyvis.train, "train", lambda cfg, out, progress=True: Path(out) / "final")
    assert main(["train", str(NANO_TINY), "--out", str(tmp_path / "r"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert (f"final model: {tmp_path / 'r' / 'final'}" in out) is printed
