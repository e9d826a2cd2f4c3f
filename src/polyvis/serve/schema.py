"""Pydantic models of the OpenAI chat-completions request, strict about types.

Fields the server does not know are refused (400) rather than silently ignored, as OpenAI does;
known-but-unsupported options (n > 1, penalties, logprobs) are refused with a message saying so.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from polyvis.serve.errors import APIError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class ImageURL(_Strict):
    url: str = Field(min_length=1)
    detail: Literal["auto", "low", "high"] | None = None


class ContentPart(_Strict):
    """One part of a message: {"type": "text", "text": ...} or {"type": "image_url", ...}."""

    type: Literal["text", "image_url"]
    text: str | None = None
    image_url: ImageURL | None = None

    @field_validator("image_url", mode="before")
    @classmethod
    def _url_as_string(cls, value: Any) -> Any:
        # Some clients send "image_url": "data:..." instead of {"url": ...}.
        return {"url": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _matches_type(self) -> ContentPart:
        if self.type == "text" and (self.text is None or self.image_url is not None):
            raise ValueError("a text part needs 'text' (and no 'image_url')")
        if self.type == "image_url" and (self.image_url is None or self.text is not None):
            raise ValueError("an image_url part needs 'image_url' (and no 'text')")
        return self


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: list[ContentPart]
    name: str | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _string_content(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [{"type": "text", "text": value}]
        if not isinstance(value, list) or not value:  # an empty array says nothing, as in OpenAI's
            raise PydanticCustomError(
                "content_type", "must be a string or a non-empty array of content parts"
            )
        return value


class StreamOptions(_Strict):
    include_usage: bool | None = None


class ChatCompletionRequest(_Strict):
    """The accepted body of POST /v1/chat/completions (None means 'the default')."""

    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    n: int | None = Field(None, ge=1)
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    stop: list[str] | None = None
    # torch.Generator.manual_seed takes any 64-bit integer, signed or not
    seed: int | None = Field(None, ge=-(2**63), le=2**64 - 1)
    user: str | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logprobs: bool | None = None

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_as_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [value]
        if value is not None and not isinstance(value, list):
            raise PydanticCustomError("stop_type", "must be a string or an array of strings")
        return value

    @field_validator("stop")
    @classmethod
    def _stop_not_empty(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and any(s == "" for s in value):
            raise PydanticCustomError("stop_empty", "stop strings must not be empty")
        return value

    @model_validator(mode="after")
    def _supported(self) -> ChatCompletionRequest:
        if self.n not in (None, 1):
            raise _unsupported("n", "only n=1 is supported")
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name) not in (None, 0.0):
                raise _unsupported(name, "is not supported (only 0)")
        if self.logprobs:
            raise _unsupported("logprobs", "is not supported")
        if self.stream_options is not None and not self.stream:  # as OpenAI's API refuses it
            raise _unsupported("stream_options", "only allowed when stream is true")
        if self.max_tokens is not None and self.max_completion_tokens is not None:
            raise _unsupported("max_tokens", "give max_tokens or max_completion_tokens, not both")
        return self

    @property
    def token_limit(self) -> int | None:
        return (
            self.max_completion_tokens
            if self.max_completion_tokens is not None
            else self.max_tokens
        )


def _unsupported(field: str, message: str) -> PydanticCustomError:
    return PydanticCustomError(
        "unsupported", "{field}: {message}", {"field": field, "message": message}
    )


def format_loc(loc: tuple) -> str:
    """('messages', 0, 'content') -> 'messages[0].content'."""
    out = ""
    for item in loc:
        out += f"[{item}]" if isinstance(item, int) else (f".{item}" if out else str(item))
    return out


def parse_request(body: bytes) -> ChatCompletionRequest:
    """Validate a raw JSON body; every problem becomes a 400 naming the field."""
    if body[:2] in (b"\xff\xfe", b"\xfe\xff"):  # else "expected value at line 1 column 1"
        raise APIError(
            400,
            "the body is UTF-16 (it starts with a UTF-16 byte order mark); send UTF-8 JSON",
            None,
            "invalid_json",
        )
    # JSON parsers may ignore a UTF-8 byte order mark (RFC 8259, 8.1); records files may have one
    body = body.removeprefix(b"\xef\xbb\xbf")
    try:
        return ChatCompletionRequest.model_validate_json(body)
    except ValidationError as err:
        first = err.errors(include_url=False)[0]
        kind, loc, msg = first["type"], tuple(first["loc"]), first["msg"]
        if kind == "json_invalid":
            raise APIError(
                400,
                f"malformed JSON body: {msg.removeprefix('Invalid JSON: ')}",
                None,
                "invalid_json",
            ) from None
        if kind == "model_type" and not loc:
            raise APIError(400, "the body must be a JSON object", None, "invalid_json") from None
        if kind == "unsupported":
            ctx = first.get("ctx", {})
            raise APIError(400, ctx.get("message", msg), ctx.get("field"), "unsupported") from None
        if kind == "extra_forbidden":
            msg = "unknown field"
        msg = msg.removeprefix("Value error, ")
        param = format_loc(loc) or None
        raise APIError(400, msg, param, kind) from None
