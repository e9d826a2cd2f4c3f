"""results.html shows a prediction's every character: control characters, bidi controls and lone
surrogates as visible escapes (\\x1b, \\u202e), never raw, and markup still as text. No browser."""

from __future__ import annotations

import json
import re
from pathlib import Path

from polyvis.eval.html import Table, write_html_report

# What a browser drops (NUL), draws as an empty box or obeys unseen (the bidi override).
RAW = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def ctl(ch: str) -> str:
    """How the page shows one such character: its Python escape, marked, its code point as a
    tooltip."""
    code = ord(ch)
    escaped = f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
    return f'<span class="ctl" title="U+{code:04X}">{escaped}</span>'


def test_the_notation():
    assert ctl("\x1b") == r'<span class="ctl" title="U+001B">\x1b</span>'
    assert ctl("\u202e") == r'<span class="ctl" title="U+202E">\u202e</span>'


def report(tmp_path: Path, rows: list[dict], title: str = "T") -> str:
    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    table = Table(["run", "ocr\x07"], [["r\x1b", "1.0000"]])
    path = write_html_report(
        tmp_path / "results.html", title, table, answers={"r": answers}, notes=["a\x00b"]
    )
    return path.read_text(encoding="utf-8")


def row(prediction: str, family: str = "ocr", **more: str) -> dict:
    base = {"id": "1", "family": family, "question": "q", "reference": "a", "score": 0.0}
    return {**base, "prediction": prediction, **more}


NUL, BEL, ESC, DEL, NEL, CR = (ctl(c) for c in "\x00\x07\x1b\x7f\x85\r")


def test_control_characters_in_a_prediction_are_shown_not_raw(tmp_path: Path):
    prediction = "a\x00b\x07c\x1b[31mred\x7f\x85 tab\tand\r\nline <script>"
    page = report(tmp_path, [row(prediction)])
    assert RAW.search(page) is None  # nothing the browser would drop or draw as a box
    cell = re.search(r'<td class="wrong">(.*?)<span class="mark">', page, re.S).group(1)
    assert cell == (
        f"a{NUL}b{BEL}c{ESC}[31mred{DEL}{NEL} tab\tand{CR}\nline &lt;script&gt;"
    )  # tab and newline stay (the cell keeps white space); markup stays text


def test_bidi_controls_and_lone_surrogates_are_shown(tmp_path: Path):
    # U+202E would draw "evil" as "live"; a lone surrogate cannot be written as UTF-8 at all.
    page = report(tmp_path, [row("\u202eevil\u202c \ud800!")])
    rlo, pdf, lone = (ctl(c) for c in "\u202e\u202c\ud800")
    assert f"{rlo}evil{pdf} {lone}!" in page


def test_every_text_of_the_page_is_shown_the_same_way(tmp_path: Path):
    rows = [row("x", family="fam\x01ily", question="q\x0b", reference="r\x1f", id="i\x02")]
    page = report(tmp_path, rows, title="T\x1b<b>")
    assert RAW.search(page) is None
    assert r"<title>T\x1b&lt;b&gt;</title>" in page  # no markup inside <title>
    assert f"<h1>T{ESC}&lt;b&gt;</h1>" in page
    assert f'<p class="note">a{NUL}b</p>' in page
    assert f'<th class="num">ocr{BEL}</th>' in page  # the scores table
    assert f"<td>r{ESC}</td>" in page
    vt, us, stx = (ctl(c) for c in "\x0b\x1f\x02")
    assert f"<td>q{vt}</td><td>r{us}</td>" in page
    assert f"<small>i{stx}</small>" in page
    # The family filter compares the option's value with the row's data-family: both the same.
    assert r'<option value="fam\x01ily">fam\x01ily</option>' in page
    assert r'<tr data-family="fam\x01ily"' in page
