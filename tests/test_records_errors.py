"""Records and image errors name the file, the real line and the record: malformed JSON/JSONL,
a byte order mark, an empty records file, a corrupt image."""

from __future__ import annotations

import json
import logging
import re

import pytest

from polyvis.cli import main
from polyvis.data.dataset import ConversationDataset
from polyvis.data.images import ImageError, load_image
from polyvis.data.records import make_record, read_records, write_records
from polyvis.errors import DataError


def _records(n: int) -> list[dict]:
    return [make_record(f"rec-{i}", None, [("word " * 40, str(i))]) for i in range(n)]


def test_malformed_jsonl_names_the_real_line_and_the_record(tmp_path) -> None:
    lines = [json.dumps(r) for r in _records(7)]
    lines[4] = lines[4][:120]  # line 5 cut off inside a string
    path = tmp_path / "malformed.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as err:
        read_records(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}:5 (rec-4): not valid JSON (column ")
    assert "line 1" not in msg and "\n" not in msg

    lines[4] = '{"conversations": []'  # no id to show: the line alone
    path.write_text("\n\n".join(lines))  # blank lines still count
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}:9: not valid JSON"):
        read_records(path)


def test_malformed_json_list_names_its_line(tmp_path) -> None:
    path = tmp_path / "broken.json"
    text = json.dumps(_records(3), indent=1)
    path.write_text(text[: text.index('"rec-2"')] + '"rec-2, }]')
    line = text[: text.index('"rec-2"')].count("\n") + 1
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}:{line}: not valid JSON"):
        read_records(path)


@pytest.mark.parametrize("name", ["bom.jsonl", "bom.json"])
def test_a_utf8_byte_order_mark_is_read(tmp_path, name) -> None:
    records = _records(3)
    path = write_records(tmp_path / name, records)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert read_records(path) == records


def test_an_empty_records_file_is_named(tmp_path, capsys) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n  \n")
    no_records = rf"^{re.escape(str(empty))}: no records$"
    with pytest.raises(DataError, match=no_records):
        read_records(empty, allow_empty=False)
    blank_json = tmp_path / "blank.json"
    blank_json.write_text("")
    for path in (blank_json, write_records(tmp_path / "empty.json", [])):
        with pytest.raises(DataError, match=rf"^{re.escape(str(path))}: no records$"):
            read_records(path, allow_empty=False)
    assert read_records(empty) == []  # by default: an empty split of generated data is fine

    good = write_records(tmp_path / "good.jsonl", _records(2))
    argv = ["eval", str(tmp_path / "no-model"), "--data", str(good), str(empty)]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 2  # fails before loading a model
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"{empty}: no records") and len(err.splitlines()) == 1


def test_a_corrupt_image_names_its_file_not_a_buffer(tiny_single_model_dir, tmp_path, caplog):
    from polyvis.models.processing import PolyVisProcessor

    bad = tmp_path / "img" / "bad.png"
    bad.parent.mkdir()
    bad.write_bytes(b"this is no image")
    with pytest.raises(ImageError) as err:
        load_image(bad)
    assert err.value.reason == "corrupt"
    assert str(err.value).startswith(f"{bad}: cannot decode image")
    assert "BytesIO" not in str(err.value) and "0x" not in str(err.value)

    records = write_records(
        tmp_path / "train.jsonl", [make_record("cat-1", "img/bad.png", [("?", "a")])]
    )
    ds = ConversationDataset([records], PolyVisProcessor.from_pretrained(tiny_single_model_dir))
    with caplog.at_level(logging.WARNING):
        assert ds[0] is None  # skipped, and logged once
    logged = caplog.text
    assert "cat-1" in logged and str(bad) in logged and "0x" not in logged


def test_eval_refuses_a_record_id_that_two_files_share(tmp_path) -> None:
    from polyvis.eval.runner import load_items

    a = write_records(tmp_path / "a.jsonl", _records(2))
    b = write_records(tmp_path / "b.jsonl", _records(2))
    with pytest.raises(DataError, match=rf"^{re.escape(str(b))}: record id .* is also in {a}$"):
        load_items([a, b])
