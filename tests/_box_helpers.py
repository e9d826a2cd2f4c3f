"""Where a drawn box's outline lies, for the tests that check boxes by pixel colour."""

from __future__ import annotations


def edges(x1: int, y1: int, x2: int, y2: int) -> list[tuple[int, int]]:
    """The outline's outer ring of pixels (PIL draws a box from (x1, y1) to (x2, y2) inclusive)."""
    return (
        [(x, y1) for x in range(x1, x2 + 1)]
        + [(x, y2) for x in range(x1, x2 + 1)]
        + [(x1, y) for y in range(y1, y2 + 1)]
        + [(x2, y) for y in range(y1, y2 + 1)]
    )


def chat_page_box_pixels(
    page, model_dir, image, answer: str, points: list[tuple[int, int]], box_format: str = "pixels"
) -> tuple[list[list[int]], str | None]:
    """Send `image` on the chat page of `polyvis serve` with the model's reply stubbed as `answer`
    (a random tiny model does not answer with boxes); the RGB of each of `points` on the canvas
    drawn below the answer, and the canvas's data-boxes count."""
    import json

    from polyvis.serve.app import create_app
    from polyvis.serve.background import BackgroundServer
    from polyvis.serve.settings import ServeSettings

    chunks = [{"choices": [{"delta": {"content": answer}}]},
              {"choices": [{"delta": {}, "finish_reason": "stop"}]}]  # fmt: skip
    sse = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
    page.route(
        "**/v1/chat/completions",
        lambda route: route.fulfill(status=200, content_type="text/event-stream", body=sse),
    )
    app = create_app({"m": model_dir}, ServeSettings(box_format=box_format))
    with BackgroundServer(app) as url:
        page.goto(url + "/")
        page.wait_for_selector("#model option", state="attached")
        page.set_input_files("#image-input", str(image))
        page.wait_for_selector("#preview:not([hidden])")
        page.fill("#question", "where is it?")
        page.click("#send")
        canvas = page.wait_for_selector(".msg.assistant canvas.boxes", timeout=30_000)
        pixels = canvas.evaluate(
            """(c, points) => points.map(([x, y]) =>
                Array.from(c.getContext("2d").getImageData(x, y, 1, 1).data.slice(0, 3)))""",
            [list(p) for p in points],
        )
        return pixels, canvas.get_attribute("data-boxes")
