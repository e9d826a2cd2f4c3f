"""Boxes in answers ("[x1, y1, x2, y2]" in pixels, as the COCO converter writes them): parsed,
drawn on the image (the drawn colour on the box's edges, nothing inside or outside), and used by
`polyvis chat --draw-boxes` and the HTML reports."""

from __future__ import annotations

import base64
import io
import json

import pytest
from PIL import Image

from _box_helpers import chat_page_box_pixels, edges
from _browser import browser_fixture, needs_browser, page_fixture  # noqa: F401
from polyvis.data.boxes import ANSWER_COLOUR, REFERENCE_COLOUR, draw_boxes, fit, parse_boxes
from polyvis.data.converters.coco import box_text

GREY = (120, 120, 120)


def test_parse_boxes_finds_every_box_in_order():
    text = "the cat [3, 5, 20, 22] and the dog [ 30,1 ,40, 9.5 ], not (1, 2, 3, 4) nor [1, 2, 3]"
    assert parse_boxes(text) == [(3.0, 5.0, 20.0, 22.0), (30.0, 1.0, 40.0, 9.5)]
    assert parse_boxes("[-2, 0, 7, 8]") == [(-2.0, 0.0, 7.0, 8.0)]
    assert parse_boxes("no boxes here") == [] and parse_boxes("") == []
    # what the COCO converter writes reads back
    assert parse_boxes(box_text([10.4, 20, 30, 40.6])) == [(10.0, 20.0, 40.0, 61.0)]
    # under a pixel wide or high: still a box of one pixel, which an answer can match
    assert box_text([10.6, 5, 0.3, 3]) == "[11, 5, 12, 8]"
    assert box_text([3, 7.4, 5, 0.2]) == "[3, 7, 8, 8]"


def test_draw_boxes_outlines_each_box_in_its_colour():
    image = Image.new("RGB", (40, 30), GREY)
    out = draw_boxes(image, [(5, 4, 20, 15), (35, 25, 30, 20)], width=1)  # corners in any order
    assert image.getpixel((5, 4)) == GREY  # the input is left as it was
    for box in ((5, 4, 20, 15), (30, 20, 35, 25)):
        assert {out.getpixel(p) for p in edges(*box)} == {ANSWER_COLOUR}
    assert out.getpixel((12, 10)) == GREY  # inside
    assert out.getpixel((4, 4)) == GREY and out.getpixel((21, 16)) == GREY  # just outside
    changed = sum(a != b for a, b in zip(out.getdata(), image.getdata()))
    assert changed == len(set(edges(5, 4, 20, 15))) + len(set(edges(30, 20, 35, 25)))


def test_draw_boxes_on_a_resized_image_scales_the_boxes():
    image = Image.new("L", (16, 8), 0)  # any mode comes back RGB
    shown, scale = fit(image, 64)
    assert shown.size == (64, 32) and scale == 4 and shown.mode == "RGB"
    out = draw_boxes(shown, [(2, 1, 6, 5)], REFERENCE_COLOUR, width=2, scale=scale)
    assert {out.getpixel(p) for p in edges(8, 4, 24, 20) + edges(9, 5, 23, 19)} == {
        REFERENCE_COLOUR
    }
    assert out.getpixel((10, 6)) == (0, 0, 0)


def test_chat_draws_the_answers_boxes(tiny_single_model_dir, tmp_path, monkeypatch, capsys):
    from polyvis.cli import main
    from polyvis.serve.chat import ChatSession

    image = tmp_path / "in.png"
    Image.new("RGB", (40, 30), GREY).save(image)
    monkeypatch.setattr(
        ChatSession, "ask", lambda self, q, streamer=None: "it is at [2, 3, 20, 15]"
    )
    out = tmp_path / "boxes.png"
    rc = main(["chat", str(tiny_single_model_dir), "--image", str(image), "where?",
               "--draw-boxes", str(out)])  # fmt: skip
    captured = capsys.readouterr()
    assert rc == 0 and captured.out == "it is at [2, 3, 20, 15]\n"
    assert f"(1 box(es) drawn on {out})" in captured.err
    with Image.open(out) as drawn:
        assert drawn.size == (40, 30)
        assert {drawn.getpixel(p) for p in edges(2, 3, 20, 15)} == {ANSWER_COLOUR}
        assert drawn.getpixel((10, 9)) == GREY


def test_chat_draw_boxes_needs_an_image(capsys):
    from polyvis.cli import main

    assert main(["chat", "x", "--draw-boxes", "out.png", "hi"]) != 0
    assert "--draw-boxes: needs --image" in capsys.readouterr().err


@pytest.mark.parametrize("prediction, drawn", [("[8, 4, 30, 20]", True), ("a red circle", False)])
def test_report_answers_show_their_boxes(tmp_path, prediction, drawn):
    from polyvis.eval.html import Table, write_html_report
    from polyvis.eval.html_items import report_items

    Image.new("RGB", (48, 48), GREY).save(tmp_path / "a.png")
    rec = {"id": "r1", "image": "a.png", "family": "scene",
           "conversations": [{"from": "human", "value": "<image>\nWhere?"},
                             {"from": "gpt", "value": "[2, 2, 10, 10]"}]}  # fmt: skip
    (tmp_path / "val.jsonl").write_text(json.dumps(rec) + "\n")
    row = {"id": "r1", "family": "scene", "metric": "box_accuracy", "question": "Where?",
           "reference": "[2, 2, 10, 10]", "prediction": prediction, "score": 0.0}  # fmt: skip
    (tmp_path / "answers.jsonl").write_text(json.dumps(row) + "\n")
    (item,) = report_items({"run": tmp_path / "answers.jsonl"}, [tmp_path / "val.jsonl"])
    answer = item.answers["run"]
    if not drawn:
        assert answer.boxes is None
        return
    head, _, data = answer.boxes.partition(",")
    assert head == "data:image/png;base64"
    with Image.open(io.BytesIO(base64.b64decode(data))) as im:
        im = im.convert("RGB")
        scale = 96 / 48  # THUMB_PX over the image's size
        assert im.size == (96, 96)
        # the answer's box in magenta (2 px), the reference's in green (1 px), scaled
        assert {im.getpixel(p) for p in edges(*(round(v * scale) for v in (8, 4, 30, 20)))} == {
            ANSWER_COLOUR
        }
        assert {im.getpixel(p) for p in edges(4, 4, 20, 20)} - {ANSWER_COLOUR} == {REFERENCE_COLOUR}
        assert im.getpixel((40, 20)) == GREY
    page = write_html_report(
        tmp_path / "results.html",
        "boxes",
        Table(["run"], [["run"]]),
        answers={"run": tmp_path / "answers.jsonl"},
        records=[tmp_path / "val.jsonl"],
    ).read_text(encoding="utf-8")
    assert f'<img class="boxes" alt="boxes of the answer" src="{answer.boxes}">' in page


@needs_browser
@pytest.mark.timeout(120)
def test_web_page_draws_the_answers_boxes(tiny_single_model_dir, page, tmp_path):
    """The page's canvas below an answer: the sent image with the answer's box drawn on it (the
    model's reply is stubbed: a random tiny model does not answer with boxes)."""
    image = tmp_path / "grey.png"
    Image.new("RGB", (64, 48), GREY).save(image)
    points = [(40, 8), (54, 22), (47, 8), (40, 15), (47, 15), (39, 8)]
    pixels, count = chat_page_box_pixels(
        page, tiny_single_model_dir, image, "at [40, 8, 54, 22]", points
    )
    magenta, grey = list(ANSWER_COLOUR), list(GREY)
    assert count == "1"
    assert pixels == [magenta, magenta, magenta, magenta, grey, grey]  # edges; inside, outside
