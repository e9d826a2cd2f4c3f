"""YAML files and `--set` overrides as plain data, before the typed config sees them: a file
whose top level is a mapping, `key.path=value` overrides applied to nested dicts and lists, and
one-line errors naming the file or the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from polyvis.errors import ConfigError


def read_yaml_mapping(path: str | Path, what: str) -> dict[str, Any]:
    """A YAML file whose top level is a mapping (empty: {}); one-line errors naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("", f"{path}: {what} not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError("", f"{path}: not valid YAML ({_yaml_problem(err)})") from None
    if not isinstance(data, dict):
        raise ConfigError("", f"{path}: the top level must be a mapping")
    return data


def _yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML error in one line: where (line and column, 1-based) and what, without the
    excerpt PyYAML spreads over several lines."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None)
    if mark is None or problem is None:
        return " ".join(str(err).split())
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"


def parse_override(text: str) -> tuple[list[str | int], Any]:
    """'model.fusion.type=add' -> (['model', 'fusion', 'type'], 'add'); values parse as YAML."""
    if "=" not in text:
        raise ConfigError(text, "an override must look like key.path=value")
    key, raw = text.split("=", 1)
    parts: list[str | int] = [
        int(p) if p.lstrip("-").isdigit() else p for p in key.strip().split(".")
    ]
    if not raw.strip():
        return parts, ""
    try:
        return parts, yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise ConfigError(
            key.strip(), f"the value is not valid YAML ({_yaml_problem(err)})"
        ) from None


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        parts, value = parse_override(text)
        node: Any = data
        for i, part in enumerate(parts[:-1]):
            nxt = parts[i + 1]
            if isinstance(node, list):
                if not isinstance(part, int) or not -len(node) <= part < len(node):
                    raise ConfigError(".".join(map(str, parts[: i + 1])), "no such list item")
                node = node[part]
                continue
            if part not in node or node[part] is None:
                node[part] = [] if isinstance(nxt, int) else {}
            node = node[part]
        last = parts[-1]
        if isinstance(node, list) and (
            not isinstance(last, int) or not -len(node) <= last < len(node)
        ):
            raise ConfigError(".".join(map(str, parts)), "no such list item")
        node[last] = value
    return data
