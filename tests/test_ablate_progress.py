"""`polyvis ablate` on an empty cache builds the nano world's data and experts first (minutes at
the full budget): with bars, as `polyvis demo` draws them, unless --no-progress."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from _inline_runs import Interrupted, inline_launcher, use_launcher

GRIDS = {
    "fair": {
        "nano": True,
        "quick": True,
        "grid": {"adapter": [{"type": "mlp", "depth": 2}], "encoders": [["vary"]]},
        "jobs": 1,
    },
    "none": {
        "nano": True,
        "quick": True,
        "protocol": "none",
        "grid": {"fusion": ["concat-channel"], "adapter": ["linear"], "encoders": [["vary"]]},
        "jobs": 1,
    },
}


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, bool]]:
    """(what, progress) of every data generation and expert build the grid asks for; the grid
    stops at its first run."""
    import polyvis.data.synthetic.cache as synthetic_cache
    import polyvis.nano.experts as experts

    calls: list[tuple[str, bool]] = []

    def spy(module, name):
        real = getattr(module, name)

        def wrapper(*args, **kwargs):
            calls.append((name, kwargs.get("progress", True)))
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapper)

    spy(synthetic_cache, "ensure_synthetic")
    spy(experts, "ensure_experts")
    use_launcher(monkeypatch, inline_launcher([], lambda spec, st: spec.out, 0))
    return calls


@pytest.mark.parametrize("protocol", ["fair", "none"])
@pytest.mark.parametrize("flag", [[], ["--no-progress"]])
def test_ablate_draws_bars_for_what_it_builds_unless_told_not_to(
    tmp_path: Path, built: list[tuple[str, bool]], protocol: str, flag: list[str]
) -> None:
    from polyvis.cli import main

    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(GRIDS[protocol]))
    with pytest.raises(Interrupted):
        main(["ablate", str(path), "--out", str(tmp_path / "out"), *flag])
    assert {what for what, _ in built} == {"ensure_synthetic", "ensure_experts"}
    assert {progress for _, progress in built} == {not flag}
