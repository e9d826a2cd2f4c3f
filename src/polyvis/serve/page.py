"""The chat page: GET / and its script and style, from the package's `serve/web/` folder.

The page is one more client of /v1/chat/completions (the browser sends the API key as a Bearer
token, as any client would); the server gives it no other access. Everything it needs comes
from this server, and its Content-Security-Policy lets it load nothing from anywhere else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import Response

WEB_DIR = Path(__file__).with_name("web")
FILES = {
    "index.html": "text/html",
    "app.js": "text/javascript",
    "boxes.js": "text/javascript",
    "style.css": "text/css",
}
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def add_web_routes(app: FastAPI) -> None:
    """GET / (the page) and GET /web/NAME for each other file of FILES; read once, when the app
    is made. No other path under /web answers."""
    files = {name: (WEB_DIR / name).read_bytes() for name in FILES}

    def route(name: str) -> Any:
        async def send() -> Response:
            kind = FILES[name] + "; charset=utf-8"
            return Response(files[name], media_type=kind, headers=HEADERS)

        return send

    app.add_api_route("/", route("index.html"), methods=["GET"], include_in_schema=False)
    for name in FILES:
        if name != "index.html":
            app.add_api_route(f"/web/{name}", route(name), methods=["GET"], include_in_schema=False)
