"""Every `polyvis` command shown in README.md and docs/*.md parses with today's CLI: a renamed
flag or sub-command fails here, naming the file and line, instead of in a reader's shell."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from polyvis.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)")
SHELLS = {"", "bash", "sh", "shell", "console"}
SEPARATORS = {"&&", "||", ";", "|", "&"}
# commands of a converter that the page itself defines (docs/converters.md, "Adding a converter")
DEFINED_IN_THE_PAGE = [["data", "convert", "words"]]


def _shell_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, command) for each command in the file's shell blocks, continuations joined."""
    out: list[tuple[int, str]] = []
    lang, start, pending = None, 0, ""
    for n, line in enumerate(path.read_text().splitlines(), 1):
        fence = FENCE.match(line.strip())
        if fence:
            lang = None if lang is not None else fence.group(1)
            continue
        if lang not in SHELLS:
            continue
        text = line.strip().removeprefix("$ ")
        if not pending:
            start = n
        if text.endswith("\\"):
            pending += text[:-1] + " "
            continue
        out.append((start, pending + text))
        pending = ""
    return out


def _polyvis_argv(command: str) -> list[list[str]]:
    """The argument lists of every polyvis invocation in a shell command line."""
    try:
        words = shlex.split(command, comments=True)
    except ValueError:  # an unclosed quote: not a command meant to be copied
        return []
    found, current = [], []
    for w in [*words, ";"]:
        if w in SEPARATORS:
            if current:
                found.append(current)
            current = []
        else:
            current.append(w)
    argvs = []
    for words in found:
        # a synopsis's optional parts, `[--size 64]`: the options inside must exist all the same
        words = [w.removeprefix("[").removesuffix("]") for w in words]
        words = [w for w in words if w and w != "..."]
        while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):  # VAR=value before a command
            words = words[1:]
        for k, w in enumerate(words):
            if w.endswith("/polyvis") or w == "polyvis":
                if k == 0 or words[k - 1] == "-m" or words[0] in ("time", "/usr/bin/time"):
                    argvs.append(words[k + 1 :])
                break
    return argvs


def _cases() -> list[tuple[str, list[str]]]:
    cases = []
    for path in DOCS:
        for n, line in _shell_lines(path):
            for argv in _polyvis_argv(line):
                cases.append((f"{path.relative_to(ROOT)}:{n}", argv))
    return cases


CASES = _cases()
INLINE = re.compile(r"`(?:\.venv/bin/)?polyvis ([a-z][^`]*)`")


def _inline_cases() -> list[tuple[str, list[str]]]:
    """Commands quoted in prose (`polyvis eval ... --out X`): often partial, so only their
    sub-command and flags are checked."""
    cases = []
    for path in DOCS:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            for m in INLINE.finditer(line):
                try:
                    words = shlex.split(m.group(1))
                except ValueError:
                    continue
                cases.append((f"{path.relative_to(ROOT)}:{n}", words))
    return cases


INLINE_CASES = _inline_cases()


def _command_parser(parser: argparse.ArgumentParser, words: list[str]):
    """(the parser of the sub-command `words` start with, the words left), walking sub-commands."""
    while words:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs or words[0] not in subs[0].choices:
            break
        parser, words = subs[0].choices[words[0]], words[1:]
    return parser, words


def test_the_docs_show_many_commands():
    # the extraction itself works: README and docs are full of them
    assert len(CASES) > 50 and len(INLINE_CASES) > 100


@pytest.mark.parametrize(("where", "words"), INLINE_CASES, ids=[w for w, _ in INLINE_CASES])
def test_a_command_quoted_in_prose_names_a_real_command_and_flags(where: str, words: list[str]):
    top = build_parser()
    parser, rest = _command_parser(top, words)
    if parser is top:
        pytest.fail(f"{where}: polyvis {shlex.join(words)}: no such command")
    known = set(parser._option_string_actions)
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if subs and rest and rest[0].isupper():  # `data convert KIND --out DIR`: any kind's flags
        known |= {o for p in subs[0].choices.values() for o in p._option_string_actions}
    bare = [w.removeprefix("[").removesuffix("]") for w in rest]  # a synopsis's [--flag X]
    flags = {w.split("=", 1)[0] for w in bare if w.startswith("--")}
    unknown = sorted(flags - known - {"--"})
    if unknown:
        pytest.fail(f"{where}: polyvis {shlex.join(words)}: unknown {', '.join(unknown)}")


@pytest.mark.parametrize(("where", "argv"), CASES, ids=[w for w, _ in CASES])
def test_a_documented_command_parses(where: str, argv: list[str], capsys):
    if any(argv[: len(d)] == d for d in DEFINED_IN_THE_PAGE):
        return
    parser = build_parser()
    try:
        parser.parse_args(argv)
    except SystemExit as stop:
        if stop.code not in (0, None):  # 0: --help / --version
            err = capsys.readouterr().err.strip().splitlines()[-1:]
            pytest.fail(f"{where}: polyvis {shlex.join(argv)}: {' '.join(err)}")
