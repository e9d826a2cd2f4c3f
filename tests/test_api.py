"""The top-level API: `from polyvis import ...`, and transformers' Auto classes loading a saved
model directory exactly as load_model does."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from PIL import Image

import polyvis

NAMES = [
    "PolyVisConfig",
    "PolyVisForConditionalGeneration",
    "PolyVisProcessor",
    "build_model",
    "load_model",
]


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=600
    )


def inputs(processor) -> dict:
    g = torch.Generator().manual_seed(3)
    img = Image.fromarray((torch.rand(40, 52, 3, generator=g) * 255).to(torch.uint8).numpy())
    return processor("<image>\nwhat is shown?", images=[img])


def test_top_level_names_are_the_models_own():
    from polyvis.models.build import build_model, load_model
    from polyvis.models.modeling import PolyVisConfig, PolyVisForConditionalGeneration
    from polyvis.models.processing import PolyVisProcessor

    expected = [
        PolyVisConfig,
        PolyVisForConditionalGeneration,
        PolyVisProcessor,
        build_model,
        load_model,
    ]
    assert [getattr(polyvis, n) for n in NAMES] == expected
    assert set(NAMES) <= set(polyvis.__all__) and set(NAMES) <= set(dir(polyvis))
    with pytest.raises(AttributeError, match="has no attribute 'bogus'"):
        polyvis.bogus  # noqa: B018


def test_import_polyvis_stays_light():
    res = run_python(
        """
        import sys
        import polyvis
        heavy = sorted(m for m in ("torch", "transformers", "polyvis.models") if m in sys.modules)
        assert not heavy, heavy
        from polyvis import PolyVisConfig
        assert PolyVisConfig.model_type == "polyvis"
        """
    )
    assert res.returncode == 0, res.stderr[-2000:]


def test_auto_classes_give_the_same_logits_as_load_model(tiny_model_dir: Path):
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    config = AutoConfig.from_pretrained(tiny_model_dir)
    assert type(config) is polyvis.PolyVisConfig
    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir).eval()
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    assert type(model) is polyvis.PolyVisForConditionalGeneration
    assert type(processor) is polyvis.PolyVisProcessor

    ref_model, ref_processor = polyvis.load_model(tiny_model_dir)
    batch, ref_batch = inputs(processor), inputs(ref_processor)
    assert batch.keys() == ref_batch.keys()
    for key in batch:
        assert torch.equal(batch[key], ref_batch[key]), key
    with torch.no_grad():
        logits = model(**batch).logits
        ref_logits = ref_model(**ref_batch).logits
    assert torch.equal(logits, ref_logits)


def test_auto_classes_work_after_a_polyvis_name_in_a_fresh_process(tiny_model_dir: Path):
    """Nothing else imported: using polyvis's names is what registers the Auto classes."""
    res = run_python(
        f"""
        import torch
        from polyvis import load_model
        from transformers import AutoModelForImageTextToText, AutoProcessor

        d = {str(tiny_model_dir)!r}
        model = AutoModelForImageTextToText.from_pretrained(d).eval()
        processor = AutoProcessor.from_pretrained(d)
        ref_model, _ = load_model(d)
        for (name, p), (ref_name, q) in zip(
            model.state_dict().items(), ref_model.state_dict().items(), strict=True
        ):
            assert name == ref_name and torch.equal(p, q), name
        print(type(model).__name__, type(processor).__name__)
        """
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split() == ["PolyVisForConditionalGeneration", "PolyVisProcessor"]


@pytest.mark.parametrize(
    "imports",
    ["import polyvis\nimport transformers", "import transformers\nimport polyvis"],
    ids=["polyvis-first", "transformers-first"],
)
def test_auto_classes_work_after_a_plain_import_polyvis(tiny_model_dir: Path, imports: str):
    """`import polyvis` alone, in either order with transformers: AutoConfig,
    AutoModelForImageTextToText and AutoProcessor load a saved polyvis directory."""
    res = run_python(
        imports
        + f"""
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor
d = {str(tiny_model_dir)!r}
print(type(AutoConfig.from_pretrained(d)).__name__)
print(type(AutoModelForImageTextToText.from_pretrained(d)).__name__)
print(type(AutoProcessor.from_pretrained(d)).__name__)
"""
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split() == [
        "PolyVisConfig",
        "PolyVisForConditionalGeneration",
        "PolyVisProcessor",
    ]
