"""The chat page and results.html as a user sees them, in headless chromium: at a phone's width,
by keyboard, and when an answer is stopped, refused or cannot be had. The page talks to a
stand-in for the API (no model behind it), so the module runs in seconds."""

# No `from __future__ import annotations`: FastAPI must see the stand-in route's `Request`
# annotation as the class, and it is imported inside the function, not at module level.
import asyncio
import json
import re
from pathlib import Path

import pytest

from _browser import browser_fixture, needs_browser, page_fixture  # noqa: F401

pytestmark = [needs_browser, pytest.mark.timeout(120)]

MODELS = ("m-one", "a-model-with-a-long-name/lr-0.001/seed-0/final")
READY = "2 models: " + ", ".join(MODELS)
PHONE = {"width": 390, "height": 844}
DONE = '.msg.assistant:not([data-state="streaming"])'


def stand_in_app():
    """The page's routes and an API that answers by the question: "refuse" gets a 400, "slow"
    streams for 10 s (time to press Stop), anything else a long answer at once."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, StreamingResponse

    from polyvis.serve.page import add_web_routes

    app = FastAPI()
    add_web_routes(app)

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": m, "object": "model"} for m in MODELS]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        question = body["messages"][-1]["content"][-1]["text"]
        if question == "refuse":
            error = {"message": "max_tokens: must be at most 32, got 100", "type": "x"}
            return JSONResponse({"error": error}, status_code=400)

        async def events():
            for i in range(200 if question == "slow" else 1200):
                delta = {"content": f"word{i} "}
                yield f"data: {json.dumps({'choices': [{'index': 0, 'delta': delta}]})}\n\n"
                if question == "slow":
                    await asyncio.sleep(0.05)
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


@pytest.fixture(scope="module", name="stand_in")
def stand_in_fixture():
    from polyvis.serve.background import BackgroundServer

    with BackgroundServer(stand_in_app()) as url:
        yield url


def open_page(page, url: str) -> None:
    from playwright.sync_api import expect

    page.goto(url + "/")
    expect(page.locator("#status")).to_have_text(READY)


def ask(page, question: str, n: int) -> None:
    """Type the question, press Enter, wait for the n-th answer to end."""
    page.fill("#question", question)
    page.press("#question", "Enter")
    page.locator(DONE).nth(n - 1).wait_for(timeout=20_000)


def overflow(page) -> int:
    """How many pixels the page is wider than the window (0: no sideways scrolling)."""
    return page.evaluate("() => document.documentElement.scrollWidth - innerWidth")


def test_the_chat_page_fits_a_phone(stand_in, page):
    page.set_viewport_size(PHONE)
    open_page(page, stand_in)
    ask(page, "a long answer", 1)
    assert overflow(page) == 0
    for control in ("#send", "#stop", "#question", "#pick", "#status"):
        box = page.locator(control).bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], control
    page.click("#mode-compare")
    ask(page, "a long answer", 2)
    assert overflow(page) == 0
    first = page.locator(".pane").first.bounding_box()
    assert first["x"] >= 0 and first["x"] + first["width"] <= PHONE["width"]


def test_tab_reaches_the_image_picker(stand_in, page):
    open_page(page, stand_in)
    reached = []
    for _ in range(15):
        page.keyboard.press("Tab")
        reached.append(page.evaluate("() => document.activeElement.id"))
    assert "image-input" in reached
    assert reached.index("image-input") < reached.index("question")


def test_a_complaint_is_cleared_by_the_next_question(stand_in, page):
    from playwright.sync_api import expect

    open_page(page, stand_in)
    page.click("#send")  # nothing typed
    expect(page.locator("#status")).to_have_text("type a question first")
    expect(page.locator("#status")).to_have_class("error")
    ask(page, "a long answer", 1)
    expect(page.locator("#status")).to_have_text(READY)
    expect(page.locator("#status")).not_to_have_class("error")


def test_a_stopped_answer_says_so(stand_in, page):
    from playwright.sync_api import expect

    open_page(page, stand_in)
    page.fill("#question", "slow")
    page.press("#question", "Enter")
    expect(page.locator(".msg.assistant .text")).to_contain_text("word3 ")
    page.click("#stop")
    page.locator(DONE).first.wait_for(timeout=20_000)
    answer = page.locator(".msg.assistant").first
    assert answer.get_attribute("data-state") == "stopped"
    expect(answer.locator(".meta")).to_have_text(re.compile(r" · stopped$"))


def test_the_end_of_a_refusal_is_in_view(stand_in, page):
    open_page(page, stand_in)
    ask(page, "a long answer", 1)
    assert page.eval_on_selector(".log", "l => l.scrollHeight > 2 * l.clientHeight")  # it scrolls
    ask(page, "refuse", 2)
    refused = page.locator(".msg.assistant").nth(1)
    assert refused.get_attribute("data-state") == "error"
    assert refused.locator(".text").text_content() == "400: max_tokens: must be at most 32, got 100"
    gap = page.eval_on_selector(".log", "l => l.scrollHeight - l.clientHeight - l.scrollTop")
    assert gap <= 1  # the error and its timing line are shown, not cut off below


def test_an_unreachable_server_is_named(stand_in, page):
    open_page(page, stand_in)
    page.route("**/v1/chat/completions", lambda route: route.abort())
    ask(page, "anything", 1)
    text = page.locator(".msg.assistant .text").first.text_content()
    assert text.startswith("cannot reach the server: ")


def test_a_wide_report_fits_a_phone(page, tmp_path: Path):
    from playwright.sync_api import expect

    from polyvis.eval.html import Table, write_html_report

    runs = {}
    for r in range(6):
        rows = [
            {"id": str(i), "family": ("ocr", "od\x01d")[i % 2], "question": "What does it say?",
             "reference": "rail", "prediction": f"run {r} says {'x' * 40 * i}", "score": r % 2}
            for i in range(6)
        ]  # fmt: skip
        runs[f"run-{r}-with-a-long-name"] = tmp_path / f"{r}.jsonl"
        runs[f"run-{r}-with-a-long-name"].write_text("".join(json.dumps(x) + "\n" for x in rows))
    table = Table(["run", "ocr", "od"], [[n, "0.5000", "0.2500"] for n in runs])
    path = write_html_report(tmp_path / "results.html", "Wide", table, answers=runs)
    page.set_viewport_size(PHONE)
    page.goto(path.as_uri())
    assert overflow(page) == 0
    page.select_option("#family", "od\\x01d")  # a family with a control character still filters
    expect(page.locator("#shown")).to_have_text("3 of 6 items shown")
