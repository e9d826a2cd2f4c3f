"""`polyvis chat`: one-shot answers, an interactive session fed through stdin, bad image files."""

from __future__ import annotations

import io
import sys

import pytest
import torch
from PIL import Image

from polyvis.cli import main
from polyvis.data.template import prompt_ids
from polyvis.models.build import load_model
from polyvis.serve.chat import ChatSession, answer, chat_messages


def _image(path, color) -> str:
    Image.new("RGB", (40, 30), color).save(path)
    return str(path)


@pytest.fixture(scope="module")
def single(tiny_single_model_dir):
    return load_model(tiny_single_model_dir)


def test_one_shot_prints_the_library_answer(tiny_model_dir, tmp_path, capsys) -> None:
    img = _image(tmp_path / "red.png", (200, 30, 30))
    rc = main(
        ["chat", str(tiny_model_dir), "--image", img, "what is this?", "--max-new-tokens", "6"]
    )
    out = capsys.readouterr().out
    assert rc == 0
    model, processor = load_model(tiny_model_dir)
    expected = answer(model, processor, img, "what is this?", max_new_tokens=6)
    assert out == expected + "\n"


def test_answer_is_greedy_generation_of_the_templated_prompt(single, tmp_path) -> None:
    model, processor = single
    img = Image.open(_image(tmp_path / "a.png", (10, 200, 10)))
    got = answer(model, processor, img, "how many?", max_new_tokens=5)
    # the same prompt built by hand through the processor, generated greedily
    text = processor.apply_chat_template([{"role": "user", "content": "<image>\nhow many?"}])
    enc = processor(text, images=img, add_special_tokens=False)
    assert enc["input_ids"][0].tolist() == prompt_ids(processor, chat_messages("how many?"))
    out = model.generate(**enc, max_new_tokens=5, do_sample=False, num_beams=1)
    assert got == processor.decode(out[0, enc["input_ids"].shape[1] :]).strip()


def test_history_puts_the_image_in_the_first_turn(single) -> None:
    _, processor = single
    msgs = chat_messages("and now?", [("what is it?", "a dog")], system="be brief")
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user"]
    assert msgs[1]["content"] == "<image>\nwhat is it?" and msgs[3]["content"] == "and now?"
    ids = prompt_ids(processor, msgs)
    assert ids.count(processor.image_token_id) == processor.image_seq_length


def test_interactive_session_keeps_history_and_switches_images(
    tiny_single_model_dir, single, tmp_path, monkeypatch, capsys
) -> None:
    red = _image(tmp_path / "red.png", (220, 20, 20))
    blue = _image(tmp_path / "blue.png", (20, 20, 220))
    lines = ["what color?", "are you sure?", f"/image {blue}", "what color?", "/quit", "never read"]
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(lines) + "\n"))
    rc = main(["chat", str(tiny_single_model_dir), "--image", red, "--max-new-tokens", "5"])
    out = capsys.readouterr().out
    assert rc == 0

    model, processor = single
    a1 = answer(model, processor, red, "what color?", max_new_tokens=5)
    a2 = answer(
        model, processor, red, "are you sure?", history=[("what color?", a1)], max_new_tokens=5
    )
    a3 = answer(model, processor, blue, "what color?", max_new_tokens=5)  # new image, no history
    printed = [line.removeprefix("> ").strip() for line in out.splitlines()]
    assert printed[:4] == [a1, a2, f"(image {blue}; new conversation)", a3]

    session = ChatSession(model, processor, image=Image.open(red), gen={"max_new_tokens": 5})
    assert [session.ask("what color?"), session.ask("are you sure?")] == [a1, a2]
    assert len(session.history) == 2
    session.set_image(blue)
    assert session.history == [] and session.ask("what color?") == a3


def test_interactive_bad_image_keeps_session(
    tiny_single_model_dir, tmp_path, monkeypatch, capsys
) -> None:
    red = _image(tmp_path / "red.png", (220, 20, 20))
    missing = tmp_path / "nope.png"
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"/image {missing}\n/reset\n"))  # EOF ends it
    rc = main(["chat", str(tiny_single_model_dir), "--image", red, "--max-new-tokens", "2"])
    captured = capsys.readouterr()
    assert rc == 0
    assert str(missing) in captured.err and "(conversation reset)" in captured.out


def test_missing_image_is_a_one_line_error(tiny_single_model_dir, tmp_path, capsys) -> None:
    missing = tmp_path / "no_such_image.png"
    rc = main(["chat", str(tiny_single_model_dir), "--image", str(missing), "hi"])
    err = capsys.readouterr().err
    assert rc == 2
    assert str(missing) in err and len(err.strip().splitlines()) == 1


def test_sampling_and_beam_options(single, tmp_path) -> None:
    model, processor = single
    img = _image(tmp_path / "g.png", (0, 128, 0))
    torch.manual_seed(0)
    s1 = answer(
        model, processor, img, "hi", do_sample=True, temperature=0.7, top_p=0.9, max_new_tokens=4
    )
    torch.manual_seed(0)
    s2 = answer(
        model, processor, img, "hi", do_sample=True, temperature=0.7, top_p=0.9, max_new_tokens=4
    )
    assert s1 == s2  # seeded sampling is reproducible
    beams = answer(model, processor, img, "hi", num_beams=2, max_new_tokens=4)
    assert isinstance(beams, str)
    rc = main(["chat", "x", "--temperature", "0.5", "hi"])
    assert rc == 2  # --temperature without --sample


def test_a_prompt_past_the_lms_context_is_refused_and_answers_stop_at_its_end(
    single, tmp_path, monkeypatch
) -> None:
    from polyvis.errors import DataError

    model, processor = single
    red = _image(tmp_path / "red.png", (220, 20, 20))
    n = len(prompt_ids(processor, chat_messages("what color?")))
    text = model.config.text_config
    monkeypatch.setattr(text, "max_position_embeddings", n + 2)
    # the answer ends where the context does, as if max_new_tokens were 2 (it used to run on)
    capped = answer(model, processor, red, "what color?", max_new_tokens=50)
    monkeypatch.setattr(text, "max_position_embeddings", 10_000)
    assert capped == answer(model, processor, red, "what color?", max_new_tokens=2)
    monkeypatch.setattr(text, "max_position_embeddings", n)
    with pytest.raises(DataError, match=rf"^the prompt is {n} tokens, and the LM's context is {n}"):
        answer(model, processor, red, "what color?")
    session = ChatSession(model, processor, image=Image.open(red))
    with pytest.raises(DataError):
        session.ask("what color?")
    assert session.history == []  # a refused question leaves no turn behind


def test_interactive_keeps_going_past_a_refused_question(
    tiny_single_model_dir, tmp_path, monkeypatch, capsys
) -> None:
    red = _image(tmp_path / "red.png", (220, 20, 20))
    long = "why " * 400  # past nano-tiny's context
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{long}\n/reset\n"))
    rc = main(["chat", str(tiny_single_model_dir), "--image", red, "--max-new-tokens", "2"])
    captured = capsys.readouterr()
    assert rc == 0 and "error: the prompt is" in captured.err
    assert "(conversation reset)" in captured.out
