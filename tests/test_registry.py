"""The registry: exact keys, and discovery (a registry imports the modules that fill it when it is
first looked up or listed, so the config layer needs no import of polyvis.models)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from polyvis.errors import RegistryError
from polyvis.registry import PROVIDERS, Registry, load_all_registries, registry

NANO_TINY = Path(__file__).resolve().parents[1] / "configs" / "nano-tiny.yaml"


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300
    )


def test_unknown_key_lists_the_valid_ones_and_duplicates_are_errors():
    reg: Registry[int] = Registry("thing")
    reg.add("b", 2)
    reg.register("a")(1)
    assert reg.get("a") == 1 and reg.names() == ["a", "b"] and list(reg) == ["a", "b"]
    with pytest.raises(RegistryError, match=r"^unknown thing 'c'; valid: a, b$"):
        reg.get("c")
    with pytest.raises(RegistryError, match=r"^thing 'a' is already registered$"):
        reg.add("a", 3)
    assert reg.get("a") == 1


def test_config_imports_without_the_models_layer():
    res = run_python(
        """
        import sys
        import polyvis.config
        loaded = sorted(m for m in sys.modules if m.startswith("polyvis.models"))
        assert not loaded, loaded
        """
    )
    assert res.returncode == 0, res.stderr[-2000:]


def test_a_registry_fills_itself_when_first_looked_up():
    res = run_python(
        f"""
        import sys
        from polyvis.registry import registry
        fusions = registry("fusion")
        assert "polyvis.models.fusion" not in sys.modules
        assert "concat-channel" in fusions.names()
        assert "polyvis.models.fusion" in sys.modules

        # config validation finds the adapters the same way
        from polyvis.config import load_config
        from polyvis.errors import ConfigError
        try:
            load_config({str(NANO_TINY)!r}, ["model.adapter.type=bogus"])
        except ConfigError as err:
            print(err)
        """
    )
    assert res.returncode == 0, res.stderr[-2000:]
    adapters = ", ".join(registry("adapter").names())
    assert res.stdout.strip() == f"model.adapter.type: unknown adapter 'bogus'; valid: {adapters}"


def test_load_all_registries_fills_every_kind():
    regs = load_all_registries()
    assert set(PROVIDERS) <= set(regs)
    assert all(len(regs[kind]) > 0 for kind in PROVIDERS)
    assert len(regs["fusion"]) == 9 and len(regs["adapter"]) == 7
