"""QA of boxes and detectors where tests/test_boxes.py and tests/test_detector_encoder.py do not
look: the box a grounding answer is scored on is the one the reports draw, IoU against hand-
computed values, the threshold's range, answers with absurd numbers drawn without a crash, and a
detector that needs more than pixels refused in one line."""

from __future__ import annotations

import math

import pytest
from PIL import Image

from polyvis.data.boxes import ANSWER_COLOUR, draw_boxes, parse_boxes
from polyvis.errors import ConfigError
from polyvis.eval.boxes import box_accuracy, box_accuracy_item, box_iou, parse_box

GREY = (120, 120, 120)


# -- parsing -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, box",
    [
        ("[10, 20, 30, 40]", (10, 20, 30, 40)),
        ("1. [10, 20, 30, 40]", (10, 20, 30, 40)),  # was (1, 10, 20, 30)
        ("The 2 cats are at [10, 20, 30, 40].", (10, 20, 30, 40)),  # was (2, 10, 20, 30)
        ("object 3: [ 1.5 , 2, 3., .5 ] and [5, 6, 7, 8]", (1.5, 2, 3, 0.5)),
        ("(10,20),(30,40)", (10, 20, 30, 40)),  # no bracketed box: the first four numbers
        ("box: 10 20 30 40 50", (10, 20, 30, 40)),
        ("[10, 20, 30, 40, 50]", (10, 20, 30, 40)),
        ("[-5, -5, 10, 10]", (-5, -5, 10, 10)),
        ("[10, 20, 30]", None),
        ("", None),
        ("no box", None),
    ],
)
def test_parse_box_reads_the_box_the_reports_draw(text, box):
    assert parse_box(text) == box
    drawn = parse_boxes(text)
    if drawn:  # the report's magenta box is the one that was scored
        assert parse_box(text) == drawn[0]


def test_a_numbered_answer_is_scored_on_its_box():
    # "1." before the box made the old parser score (1, 10, 10, 50), which misses the reference
    assert box_accuracy(["1. [10, 10, 50, 50]"], [["[12, 8, 50, 52]"]]) == 1.0
    assert box_accuracy_item("2 of them: [10, 10, 50, 50]", ["[12, 8, 50, 52]"]) == 1.0


# -- IoU -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "a, b, iou",
    [
        ((10, 10, 50, 50), (12, 8, 50, 52), 1520 / 1752),  # docs/evaluation.md's example
        ((0, 0, 10, 10), (5, 5, 15, 15), 25 / 175),
        ((0, 0, 10, 10), (2, 2, 4, 4), 4 / 100),  # inside
        ((0, 0, 10, 10), (10, 0, 20, 10), 0.0),  # edges touch: no area in common
        ((-10, -10, 10, 10), (0, 0, 20, 20), 100 / 700),  # off the image: plain geometry
        ((0, 0, 2, 1), (0, 0, 1, 1), 0.5),
        ((5, 5, 5, 9), (5, 5, 5, 9), 0.0),  # no area
        ((50, 50, 10, 10), (10, 10, 50, 50), 0.0),  # corners swapped: no area
    ],
)
def test_box_iou_against_hand_computed_values(a, b, iou):
    assert math.isclose(box_iou(a, b), iou, rel_tol=1e-12, abs_tol=1e-15)
    assert math.isclose(box_iou(b, a), iou, rel_tol=1e-12, abs_tol=1e-15)


def test_box_accuracy_counts_the_threshold_itself_and_scores_each_item():
    preds = ["[0, 0, 2, 1]", "[0, 0, 10, 10]", "nothing", "[100, 100, 110, 110]"]
    refs = [
        ["[0, 0, 1, 1]"],
        ["[50, 50, 60, 60]", "[0, 0, 10, 11]"],
        ["[0, 0, 1, 1]"],
        ["[0, 0, 1, 1]"],
    ]
    assert box_accuracy(preds, refs) == 0.5  # IoU 0.5 exactly counts; the best reference counts
    assert box_accuracy(preds, refs, iou_threshold=1.0) == 0.0
    assert box_accuracy(["[0, 0, 10, 10]"], [["[0, 0, 10, 10]"]], iou_threshold=1) == 1.0


@pytest.mark.parametrize("threshold", [0, 0.0, -0.5, 1.5, float("nan"), "0.5", True])
def test_a_threshold_outside_0_1_is_refused_naming_it(threshold):
    # at 0 a box that misses the reference entirely counted as found (IoU 0 >= 0)
    for score in (
        lambda: box_accuracy(["[0, 0, 1, 1]"], [["[5, 5, 6, 6]"]], iou_threshold=threshold),
        lambda: box_accuracy_item("[0, 0, 1, 1]", ["[5, 5, 6, 6]"], iou_threshold=threshold),
    ):
        with pytest.raises(ConfigError, match=r"^iou_threshold: must be a number in \(0, 1\]"):
            score()


# -- drawing -------------------------------------------------------------------------------------
def test_answers_with_absurd_numbers_are_drawn_without_a_crash():
    image = Image.new("RGB", (40, 30), GREY)
    answer = "[0, 0, 99999999999999999999, 99999999999999999999] [5, 5, " + "9" * 400 + ", 9]"
    boxes = parse_boxes(answer)
    assert boxes[1][2] == math.inf
    out = draw_boxes(image, boxes, width=1)  # was: ValueError / OverflowError from PIL
    # the first box is the image's border (clipped as any box off the image); the second is skipped
    assert out.tobytes() == draw_boxes(image, [(0, 0, 45, 35)], width=1).tobytes()
    assert out.getpixel((0, 0)) == ANSWER_COLOUR and out.getpixel((39, 29)) == GREY
    out = draw_boxes(image, [(-1e40, 10, 1e40, 12), (float("nan"), 0, 1, 1)], width=2)
    assert {out.getpixel((x, 10)) for x in range(40)} == {ANSWER_COLOUR}


def test_report_thumbnail_of_an_absurd_answer(tmp_path):
    from polyvis.eval.html_items import box_thumbnail

    Image.new("RGB", (40, 30), GREY).save(tmp_path / "a.png")
    answer = "[0, 0, 4000000000, 4000000000] [1, 1, " + "9" * 400 + ", 5]"  # was: ValueError
    uri = box_thumbnail(tmp_path / "a.png", answer, "[1, 2, 10, 12]")
    assert uri.startswith("data:image/png;base64,")


# -- detectors -----------------------------------------------------------------------------------
def test_a_detector_that_needs_text_is_refused_in_one_line(tmp_path):
    """Grounding DINO has num_queries, so it passed the DETR check, then its forward on pixels
    alone raised a TypeError traceback while the model was built."""
    from transformers import (
        AutoModel,
        BertConfig,
        GroundingDinoConfig,
        GroundingDinoImageProcessorPil,
        ResNetConfig,
    )

    from _tiling_helpers import CLIP, NANO_TINY
    from polyvis.config import load_config
    from polyvis.models.build import build_model

    config = GroundingDinoConfig(
        backbone_config=ResNetConfig(
            embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], out_features=["stage1", "stage2"]
        ),
        text_config=BertConfig(
            hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
            vocab_size=100,
        ),  # fmt: skip
        d_model=32, encoder_layers=1, decoder_layers=1, encoder_ffn_dim=64, decoder_ffn_dim=64,
        encoder_attention_heads=2, decoder_attention_heads=2, num_queries=8,
        num_feature_levels=2, encoder_n_points=1, decoder_n_points=1, use_timm_backbone=False,
        use_pretrained_backbone=False,
    )  # fmt: skip
    AutoModel.from_config(config).save_pretrained(tmp_path)
    GroundingDinoImageProcessorPil(size={"height": 64, "width": 64}, do_pad=False).save_pretrained(
        tmp_path
    )
    det = f"{{name: det, path: {tmp_path}, kind: detector}}"
    cfg = load_config(
        NANO_TINY, [f"model.encoders=[{CLIP}}}, {det}]", "model.fusion={type: concat-sequence}"]
    )
    with pytest.raises(ConfigError) as err:
        build_model(cfg)
    msg = str(err.value)
    assert msg.startswith("model.encoders[1]: detector forward on pixel_values alone failed")
    assert "input_ids" in msg and "\n" not in msg
