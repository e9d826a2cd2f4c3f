"""Box formats: pixels and norm1000 (integers 0..1000 of the image's width and height).

The conversion round trip, the real-data converters writing norm1000 by default (with the
record's `box_format` field), the records checker rejecting an unknown format, scoring unchanged
by the format, and the drawings (preview tile, HTML report, chat) placing norm1000 boxes where
their pixel versions go on non-square images."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pytest
from PIL import Image

from _box_helpers import edges
from _converter_cli import convert, convert_error, qa, write_json
from polyvis.cli import build_parser, main
from polyvis.data.boxes import (
    ANSWER_COLOUR,
    BOX_FORMATS,
    box_prompt,
    check_box_format,
    record_box_format,
    to_norm1000,
    to_pixels,
)
from polyvis.data.converters.coco import box_text
from polyvis.data.records import check_records, make_record, read_records
from polyvis.errors import ConfigError, DataError
from polyvis.eval.boxes import box_accuracy, box_accuracy_item, box_iou

GREY = (120, 120, 120)
SIZES = [(640, 480), (37, 100), (1000, 333), (1999, 17)]  # non-square, up to ~2000 px wide


# ---------------------------------------------------------------- conversion


@pytest.mark.parametrize(("width", "height"), SIZES)
def test_pixels_to_norm1000_and_back_is_within_a_pixel(width, height):
    boxes = [
        (0, 0, width, height),
        (1, 2, width // 2, height // 3 + 1),
        (width // 3, height // 4, width - 1, height - 1),
    ]
    for box in boxes:
        norm = to_norm1000(box, width, height)
        assert all(isinstance(v, int) and 0 <= v <= 1000 for v in norm)
        back = to_pixels(norm, "norm1000", width, height)
        assert max(abs(a - b) for a, b in zip(back, box)) <= 1.0, (box, norm, back)


def test_norm1000_keeps_boxes_of_no_area_one_unit_wide_and_high():
    assert to_norm1000((10, 10, 10, 10), 640, 480) == (16, 21, 17, 22)
    assert to_norm1000((640, 480, 640, 480), 640, 480) == (999, 999, 1000, 1000)  # far edge
    assert to_norm1000((-5, -5, 700, 500), 640, 480) == (0, 0, 1000, 1000)  # clipped
    # the COCO answer text: [x, y, w, h] of a non-square image, each axis by its own side
    assert box_text([64, 48, 64, 48], "norm1000", (640, 480)) == "[100, 100, 200, 200]"
    assert box_text([64, 48, 64, 48]) == "[64, 48, 128, 96]"  # pixels, as before
    assert box_text([3, 3, 0.2, 0.2], "norm1000", (640, 480)) == "[5, 6, 6, 7]"


def test_unknown_box_format_is_one_line_listing_the_valid_ones():
    assert BOX_FORMATS == ("pixels", "norm1000")
    with pytest.raises(ConfigError) as err:
        check_box_format("norm")
    assert str(err.value) == "box_format: unknown box format 'norm'; valid: pixels, norm1000"
    with pytest.raises(ConfigError, match="unknown box format"):
        to_pixels((0, 0, 1, 1), "percent", 10, 10)
    assert box_prompt("pixels") == "Answer with a box [x1, y1, x2, y2]."
    assert box_prompt("norm1000") == "Answer with a box [x1, y1, x2, y2] in 0-1000 coordinates."
    assert record_box_format({"id": "a"}) == "pixels"
    assert record_box_format({"id": "a", "box_format": "norm1000"}) == "norm1000"


# ---------------------------------------------------------------- records


def _grounding(rid: str, **extra) -> dict:
    return make_record(rid, "a.png", [("Where?", "[1, 2, 3, 4]")], "scene", **extra)


def test_records_checker_rejects_an_unknown_box_format_naming_the_id(tmp_path):
    good = [_grounding("g1", box_format="norm1000"), _grounding("g2", box_format="pixels")]
    assert check_records([*good, _grounding("g3")]) == [*good, _grounding("g3")]
    with pytest.raises(DataError) as err:
        check_records([*good, _grounding("g4", box_format="norm100")])
    message = str(err.value)
    assert "\n" not in message and "g4: 'box_format' must be one of pixels, norm1000" in message
    path = tmp_path / "val.jsonl"
    path.write_text(json.dumps(_grounding("g5", box_format=1000)) + "\n")
    with pytest.raises(DataError, match=r"val\.jsonl: 1 bad record\(s\): g5: 'box_format'"):
        read_records(path)


# ---------------------------------------------------------------- scoring


def test_norm1000_scores_as_its_pixel_version_on_a_non_square_image():
    width, height = 500, 200  # x * 2 and y * 5 are exact in norm1000: the same boxes, rescaled
    refs = [[(50, 20, 250, 120)], [(0, 0, 100, 50)], [(400, 100, 500, 200)]]
    preds = [(60, 30, 250, 120), (50, 25, 150, 75), (300, 0, 400, 100)]  # hit, miss, miss
    text = "[{}, {}, {}, {}]".format

    def norm(box):
        return to_norm1000(box, width, height)

    pixel_score = box_accuracy([text(*p) for p in preds], [[text(*r) for r in rs] for rs in refs])
    norm_score = box_accuracy(
        [text(*norm(p)) for p in preds], [[text(*norm(r)) for r in rs] for rs in refs]
    )
    assert pixel_score == norm_score == pytest.approx(1 / 3)
    for p, rs in zip(preds, refs):
        assert box_iou(p, rs[0]) == pytest.approx(box_iou(norm(p), norm(rs[0])))
        assert box_accuracy_item(text(*p), [text(*rs[0])]) == box_accuracy_item(
            text(*norm(p)), [text(*norm(rs[0]))]
        )


# ---------------------------------------------------------------- converters


def _coco_fixture(tmp_path: Path) -> tuple[Path, Path]:
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (200, 100), "white").save(images / "wide.png")
    Image.new("RGB", (50, 100), "white").save(images / "tall.png")
    (images / "broken.png").write_bytes(b"not an image")
    coco = {
        "images": [
            {"id": 1, "file_name": "wide.png", "width": 200, "height": 100},
            {"id": 2, "file_name": "tall.png"},  # no size: read from the file
            {"id": 3, "file_name": "broken.png"},  # no size and unreadable: skipped
        ],
        "categories": [{"id": 1, "name": "bus"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [20, 10, 80, 40]},
            {"id": 2, "image_id": 2, "category_id": 1, "bbox": [5, 10, 20, 50]},
            {"id": 3, "image_id": 3, "category_id": 1, "bbox": [1, 1, 2, 2]},
        ],
    }
    return write_json(tmp_path / "instances.json", coco), images


def _coco(ann: Path, images: Path, out: Path, *extra: str) -> int:
    argv = ["data", "convert", "coco", "--annotations", str(ann), "--images", str(images)]
    return main([*argv, "--out", str(out), "--split", "val", "--tasks", "grounding", *extra])


def test_coco_writes_norm1000_boxes_by_default(tmp_path, capsys):
    ann, images = _coco_fixture(tmp_path)
    assert _coco(ann, images, tmp_path / "out") == 0
    assert "skipped 1 image(s) with no width/height" in capsys.readouterr().err
    records = {r["id"]: r for r in read_records(tmp_path / "out" / "val.jsonl")}
    assert sorted(records) == ["coco-val-000001-grounding", "coco-val-000002-grounding"]
    wide, tall = records.values()
    assert qa(wide) == (
        "<image>\nWhere is the bus? Answer with a box [x1, y1, x2, y2] in 0-1000 coordinates.",
        "[100, 100, 500, 500]",  # x / 200 and y / 100 of the wide image
    )
    assert qa(tall)[1] == "[100, 100, 500, 600]"  # 50 x 100, the size read from the file
    assert wide["box_format"] == tall["box_format"] == "norm1000"
    assert _coco(ann, images, tmp_path / "px", "--box-format", "pixels") == 0
    px = read_records(tmp_path / "px" / "val.jsonl")
    assert [qa(r) for r in px] == [
        ("<image>\nWhere is the bus? Answer with a box [x1, y1, x2, y2].", "[20, 10, 100, 50]"),
        ("<image>\nWhere is the bus? Answer with a box [x1, y1, x2, y2].", "[5, 10, 25, 60]"),
    ]
    assert not any("box_format" in r for r in px)  # absent means pixels
    with pytest.raises(SystemExit):  # argparse lists the choices
        _coco(ann, images, tmp_path / "bad", "--box-format", "percent")
    err = capsys.readouterr().err
    assert "invalid choice: 'percent'" in err and "norm1000" in err


def _refcoco_fixture(tmp_path: Path) -> list:
    images = tmp_path / "train2014"
    images.mkdir()
    Image.new("RGB", (400, 100), "white").save(images / "a.jpg")
    Image.new("RGB", (100, 300), "white").save(images / "b.jpg")
    (images / "c.jpg").write_bytes(b"broken")
    instances = {
        "images": [
            {"id": 1, "file_name": "a.jpg", "width": 400, "height": 100},
            {"id": 2, "file_name": "b.jpg"},
            {"id": 3, "file_name": "c.jpg"},
        ],
        "annotations": [
            {"id": 11, "image_id": 1, "category_id": 1, "bbox": [40, 10, 160, 40]},
            {"id": 21, "image_id": 2, "category_id": 1, "bbox": [10, 30, 40, 120]},
            {"id": 31, "image_id": 3, "category_id": 1, "bbox": [1, 1, 2, 2]},
        ],
        "categories": [{"id": 1, "name": "person"}],
    }
    refs = [
        {"ref_id": r, "image_id": i, "ann_id": a, "split": "train", "sentences": [{"sent": s}]}
        for r, i, a, s in [(0, 1, 11, "left man"), (1, 2, 21, "tall one"), (2, 3, 31, "gone")]
    ]
    inst = write_json(tmp_path / "instances.json", instances)
    refs_path = write_json(tmp_path / "refs.json", refs)
    return ["--refs", refs_path, "--instances", inst, "--images", images]


def test_refcoco_writes_norm1000_boxes_by_default(tmp_path, capsys):
    args = _refcoco_fixture(tmp_path)
    recs = convert("refcoco", args, tmp_path / "out")
    assert "skipped 1 ref(s) whose image has no width/height" in capsys.readouterr().err
    assert [r["id"] for r in recs] == ["refcoco-train-0-0", "refcoco-train-1-0"]
    assert qa(recs[0]) == (
        '<image>\nWhere is "left man"? Answer with a box [x1, y1, x2, y2] in 0-1000 coordinates.',
        "[100, 100, 500, 500]",
    )
    assert qa(recs[1])[1] == "[100, 100, 500, 500]"  # 100 x 300, the size read from the file
    assert {r["box_format"] for r in recs} == {"norm1000"}
    px = convert("refcoco", [*args, "--box-format", "pixels"], tmp_path / "px")
    assert [qa(r)[1] for r in px] == ["[40, 10, 200, 50]", "[10, 30, 50, 150]", "[1, 1, 3, 3]"]
    assert not any("box_format" in r for r in px)


def test_refcoco_with_no_image_size_at_all_is_one_line(tmp_path, capsys):
    args = _refcoco_fixture(tmp_path)
    refs = json.loads(Path(args[1]).read_text())
    write_json(Path(args[1]), refs[2:])  # only the ref whose image is unreadable
    err = convert_error("refcoco", args, tmp_path / "out", capsys)
    assert err.endswith("refs.json: no records (1 image(s) without a size)")


# ---------------------------------------------------------------- drawing


def test_preview_tile_draws_norm1000_where_its_pixel_box_goes(tmp_path):
    from polyvis.data.tiles import record_tile

    Image.new("RGB", (80, 40), GREY).save(tmp_path / "a.png")
    pixel = make_record("p", "a.png", [("Where?", "[20, 10, 60, 30]")], "scene")
    norm = make_record(
        "p", "a.png", [("Where?", "[250, 250, 750, 750]")], "scene", box_format="norm1000"
    )
    tile = record_tile(norm, tmp_path / "a.png", 80)  # scale 1: the image's own pixels
    assert {tile.getpixel(p) for p in edges(20, 10, 60, 30)} == {ANSWER_COLOUR}
    assert tile.getpixel((40, 20)) == GREY and tile.getpixel((70, 5)) == GREY
    # the same picture as the pixel answer, once the differing answer text is cut off
    assert tile.crop((0, 0, 80, 40)).tobytes() == (
        record_tile(pixel, tmp_path / "a.png", 80).crop((0, 0, 80, 40)).tobytes()
    )


def _decode(uri: str) -> Image.Image:
    with Image.open(io.BytesIO(base64.b64decode(uri.partition(",")[2]))) as im:
        return im.convert("RGB")


@pytest.mark.parametrize(
    ("box_format", "boxes"), [("norm1000", True), (None, True), ("norm", False)]
)
def test_report_draws_boxes_by_the_records_format(tmp_path, box_format, boxes):
    from polyvis.eval.html_items import report_items

    Image.new("RGB", (48, 24), GREY).save(tmp_path / "a.png")  # thumbnails: 96 x 48, scale 2
    extra = {"box_format": box_format} if box_format else {}
    answer = "[250, 250, 750, 750]" if box_format else "[12, 6, 36, 18]"
    rec = make_record("r1", "a.png", [("Where?", answer)], "scene", **extra)
    (tmp_path / "val.jsonl").write_text(json.dumps(rec) + "\n")
    row = {"id": "r1", "family": "scene", "metric": "box_accuracy", "question": "Where?",
           "reference": answer, "prediction": answer, "score": 1.0}  # fmt: skip
    (tmp_path / "answers.jsonl").write_text(json.dumps(row) + "\n")
    (item,) = report_items({"run": tmp_path / "answers.jsonl"}, [tmp_path / "val.jsonl"])
    drawn = item.answers["run"].boxes
    if not boxes:  # an unknown format: its boxes cannot be placed, so none are drawn
        assert drawn is None and item.thumbnail is not None
        return
    im = _decode(drawn)
    assert im.size == (96, 48)
    assert {im.getpixel(p) for p in edges(24, 12, 72, 36)} == {ANSWER_COLOUR}
    assert im.getpixel((48, 24)) == GREY and im.getpixel((90, 5)) == GREY


def test_box_thumbnail_places_norm1000_as_pixels(tmp_path):
    from polyvis.eval.html_items import box_thumbnail

    Image.new("RGB", (60, 20), GREY).save(tmp_path / "a.png")
    norm = box_thumbnail(tmp_path / "a.png", "[100, 100, 500, 900]", "[0, 0, 1000, 500]",
                         box_format="norm1000")  # fmt: skip
    pixel = box_thumbnail(tmp_path / "a.png", "[6, 2, 30, 18]", "[0, 0, 60, 10]")
    assert norm is not None and _decode(norm).tobytes() == _decode(pixel).tobytes()


# ---------------------------------------------------------------- chat


def test_chat_box_format_flag_parses():
    parser = build_parser()
    base = ["chat", "m", "--image", "i.png", "--draw-boxes", "o.png", "where?"]
    assert parser.parse_args(base).box_format == "pixels"
    assert parser.parse_args([*base, "--box-format", "norm1000"]).box_format == "norm1000"
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args([*base, "--box-format", "norm"])
    assert exit_.value.code == 2


def test_chat_draws_norm1000_boxes_at_their_pixels(tmp_path, monkeypatch, capsys):
    import polyvis.cli.chat as chat
    from polyvis.serve.chat import ChatSession

    image = tmp_path / "in.png"
    Image.new("RGB", (80, 20), GREY).save(image)
    monkeypatch.setattr(chat, "load_cli_model", lambda args: (None, None))  # no model needed
    monkeypatch.setattr(ChatSession, "ask", lambda self, q, streamer=None: "[250, 250, 750, 750]")
    out = tmp_path / "boxes.png"
    argv = ["chat", "m", "--image", str(image), "where?", "--draw-boxes", str(out)]
    assert main([*argv, "--box-format", "norm1000"]) == 0
    assert f"(1 box(es) drawn on {out})" in capsys.readouterr().err
    with Image.open(out) as drawn:
        assert {drawn.getpixel(p) for p in edges(20, 5, 60, 15)} == {ANSWER_COLOUR}
        assert drawn.getpixel((40, 10)) == GREY
    assert main(argv) == 0  # pixels: the same numbers are pixels, off the image but for a corner
    with Image.open(out) as drawn:
        assert drawn.getpixel((20, 5)) == GREY
