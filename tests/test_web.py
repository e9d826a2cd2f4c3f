"""The chat page in a real headless chromium: upload or paste an image, ask, follow up, watch
the answer stream in, sampling settings and the API key, and the compare view's columns.

One server per module (four tiny models side by side) and one browser; each answer is checked
against the model's own greedy answer computed without the server.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest

from _browser import browser_fixture, needs_browser, page_fixture, screenshot  # noqa: F401
from _serve_helpers import noise
from _web_helpers import (  # noqa: F401 - the *_fixture names register fixtures
    KEY,
    MODELS,
    model_dirs_fixture,
    reference_answer,
    references_fixture,
    web_server_fixture,
)

pytestmark = [needs_browser, pytest.mark.timeout(120)]

Q1, Q2 = "what is in the image", "how many objects are there"
DONE = '.msg.assistant:not([data-state="streaming"])'
# Records every text the answers show, in order: the streamed prefixes, then the whole answer
# (each update replaces the text node, so batched mutation records still hold every step).
WATCH = """() => {
  window.seen = [];
  new MutationObserver((records) => {
    for (const r of records) {
      if (!r.target.matches(".assistant .text")) continue;
      for (const n of r.addedNodes) if (n.nodeType === 3) window.seen.push(n.data);
    }
  }).observe(document.getElementById("panes"), {subtree: true, childList: true});
}"""


@pytest.fixture(name="image_file")
def image_file_fixture(tmp_path: Path) -> Path:
    """A small scene: a triangle, a square and a circle on a light background."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (64, 48), (236, 240, 232))
    draw = ImageDraw.Draw(image)
    draw.polygon([(8, 40), (20, 16), (32, 40)], fill=(40, 160, 60))
    draw.rectangle([40, 8, 54, 22], fill=(140, 60, 180))
    draw.ellipse([40, 28, 54, 42], fill=(230, 120, 20))
    path = tmp_path / "scene.png"
    image.save(path)
    return path


def open_page(page, url: str) -> list[dict]:
    """Load the page, enter the API key, wait for the models; returns the list that collects
    the bodies (and headers, under "_headers") the page posts to /v1/chat/completions."""
    posted: list[dict] = []

    def on_request(request) -> None:
        if request.url.endswith("/v1/chat/completions"):
            posted.append({**request.post_data_json, "_headers": request.headers})

    page.on("request", on_request)
    page.goto(url + "/")
    status_is(page, "this server needs an API key: enter it above")
    page.fill("#api-key", KEY)
    page.dispatch_event("#api-key", "change")
    status_is(page, "4 models: " + ", ".join(MODELS))
    return posted


def status_is(page, text: str) -> None:
    # Waits with playwright's own matchers: the page's policy forbids evaluating strings.
    from playwright.sync_api import expect

    expect(page.locator("#status")).to_have_text(text)


def answers(page) -> list[dict]:
    return page.eval_on_selector_all(
        ".msg.assistant",
        """els => els.map(e => ({text: e.querySelector('.text').textContent,
            model: e.closest('.pane').dataset.model, state: e.dataset.state,
            finish: e.dataset.finishReason, first: parseFloat(e.dataset.tFirst),
            done: parseFloat(e.dataset.tDone), tokens: e.dataset.completionTokens}))""",
    )


def wait_answers(page, n: int) -> list[dict]:
    page.locator(DONE).nth(n - 1).wait_for(timeout=60_000)
    return answers(page)


def file_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def test_upload_ask_follow_up_and_watch_the_answer_stream_in(
    web_server, page, references, image_file
):
    from PIL import Image

    posted = open_page(page, web_server)
    image = Image.open(image_file).convert("RGB")
    page.select_option("#model", "beta")
    page.fill("#max-tokens", "12")
    page.set_input_files("#image-input", str(image_file))
    page.wait_for_selector("#preview:not([hidden])")
    page.evaluate(WATCH)
    page.fill("#question", Q1)
    page.click("#send")
    first = wait_answers(page, 1)[0]

    expected = reference_answer(references["beta"], [(Q1, None)], image, 12)
    assert len(expected) > 4  # a real answer, streamed in several pieces
    assert (first["model"], first["state"], first["text"]) == ("beta", "done", expected)
    seen = page.evaluate("window.seen")
    assert len(seen) > 2 and seen[-1] == expected
    assert all(expected.startswith(s) for s in seen)  # it grew piece by piece
    assert first["done"] - first["first"] < 2000  # the whole answer within 2 s of its first token
    assert page.is_hidden("#preview")  # the image went with the question

    page.fill("#question", Q2)
    page.press("#question", "Enter")  # Enter sends too
    second = wait_answers(page, 2)[1]
    follow = reference_answer(references["beta"], [(Q1, expected), (Q2, None)], image, 12)
    assert (second["state"], second["text"]) == ("done", follow)
    screenshot(page, "web-chat")

    # What the page sent: OpenAI requests, the image inline as the file's own bytes.
    assert [p["model"] for p in posted] == ["beta", "beta"]
    body = posted[0]
    assert body["_headers"]["authorization"] == f"Bearer {KEY}"
    assert body["_headers"]["content-type"] == "application/json"
    assert (body["stream"], body["temperature"], body["top_p"], body["max_tokens"]) == (
        True,
        0,
        1,
        12,
    )
    assert body["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": file_uri(image_file)}},
                {"type": "text", "text": Q1},
            ],
        }
    ]
    assert posted[1]["messages"][1:] == [
        {"role": "assistant", "content": expected},
        {"role": "user", "content": [{"type": "text", "text": Q2}]},
    ]


def test_sampling_settings_reach_the_request_and_the_answer(web_server, page):
    posted = open_page(page, web_server)
    page.fill("#temperature", "0.8")
    page.fill("#top-p", "0.5")
    page.fill("#max-tokens", "3")
    page.fill("#question", Q1)
    page.click("#send")
    answer = wait_answers(page, 1)[0]
    assert (posted[0]["temperature"], posted[0]["top_p"], posted[0]["max_tokens"]) == (0.8, 0.5, 3)
    assert posted[0]["model"] == MODELS[0]  # chat mode starts on the first model
    assert answer["state"] == "done" and int(answer["tokens"]) <= 3


def test_a_refused_question_shows_the_servers_error_and_leaves_the_conversation(web_server, page):
    posted = open_page(page, web_server)
    page.fill("#max-tokens", "100")  # over the server's limit of 32
    page.fill("#question", Q1)
    page.click("#send")
    refused = wait_answers(page, 1)[0]
    assert refused["state"] == "error"
    assert refused["text"] == "400: max_tokens: must be at most 32, got 100"
    page.fill("#max-tokens", "4")
    page.fill("#question", Q2)
    page.click("#send")
    assert wait_answers(page, 2)[1]["state"] == "done"
    assert [m["content"] for m in posted[1]["messages"]] == [[{"type": "text", "text": Q2}]]


def test_the_api_key_is_checked_and_kept_for_the_tab(web_server, page):
    page.goto(web_server + "/")
    status_is(page, "this server needs an API key: enter it above")
    assert page.get_attribute("#status", "class") == "error"
    page.fill("#api-key", "wrong")
    page.dispatch_event("#api-key", "change")
    status_is(page, "wrong API key")
    assert page.locator(".pane").count() == 0
    page.fill("#api-key", KEY)
    page.dispatch_event("#api-key", "change")
    status_is(page, "4 models: " + ", ".join(MODELS))
    page.reload()  # the key stays for this tab (sessionStorage)
    status_is(page, "4 models: " + ", ".join(MODELS))
    assert page.eval_on_selector_all("#model option", "os => os.map(o => o.value)") == list(MODELS)


def test_a_pasted_image_is_attached_and_a_large_one_scaled_down(web_server, page, tmp_path):
    from playwright.sync_api import expect

    open_page(page, web_server)
    paste = """(uri) => {
      const bytes = Uint8Array.from(atob(uri.split(",")[1]), (c) => c.charCodeAt(0));
      const blob = new Blob([bytes], {type: "image/png"});
      const data = new DataTransfer();
      data.items.add(new File([blob], "pasted.png", {type: "image/png"}));
      document.dispatchEvent(new ClipboardEvent("paste", {clipboardData: data}));
    }"""
    small = tmp_path / "small.png"
    noise(5, 30, 20).save(small)
    page.evaluate(paste, file_uri(small))
    page.wait_for_selector("#preview:not([hidden])")
    assert page.get_attribute("#preview", "src") == file_uri(small)
    big = tmp_path / "big.png"
    noise(6, 1600, 800).save(big)
    page.evaluate(paste, file_uri(big))
    expect(page.locator("#preview")).to_have_js_property("naturalWidth", 1024)
    size = page.eval_on_selector("#preview", "p => [p.naturalWidth, p.naturalHeight]")
    assert size == [1024, 512]
    page.click("#remove-image")
    assert page.is_hidden("#preview")


@pytest.mark.parametrize("chosen", [("alpha", "gamma"), MODELS], ids=["two", "four"])
def test_compare_shows_each_models_answer_in_its_own_column(
    web_server, page, references, image_file, chosen
):
    from PIL import Image

    posted = open_page(page, web_server)
    page.click("#mode-compare")
    for name in MODELS:
        if name not in chosen:
            page.uncheck(f"#model-checks input[value='{name}']")
    columns = page.eval_on_selector_all(".pane", "ps => ps.map(p => p.dataset.model)")
    assert columns == list(chosen)
    page.fill("#max-tokens", "10")
    page.set_input_files("#image-input", str(image_file))
    page.wait_for_selector("#preview:not([hidden])")
    page.fill("#question", Q1)
    page.click("#send")
    got = wait_answers(page, len(chosen))

    image = Image.open(image_file).convert("RGB")
    expected = [reference_answer(references[m], [(Q1, None)], image, 10) for m in chosen]
    assert [(a["model"], a["state"], a["text"]) for a in got] == [
        (m, "done", e) for m, e in zip(chosen, expected)
    ]
    assert len(set(expected)) == len(chosen)  # the models really answer differently
    assert sorted(p["model"] for p in posted) == sorted(chosen)
    if len(chosen) == 4:
        screenshot(page, "web-compare")
    stats = page.eval_on_selector_all(".msg.assistant .meta", "ms => ms.map(m => m.textContent)")
    assert all(re.match(r"first token \d+\.\d\d s · \d+ tokens in \d+\.\d\d s", s) for s in stats)
