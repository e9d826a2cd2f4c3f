"""From an OpenAI chat request to (prompt, images, params), and from events to OpenAI responses."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from PIL import Image

from polyvis.models.tokenizer import IMAGE_TOKENS
from polyvis.serve.errors import APIError
from polyvis.serve.images import load_image
from polyvis.serve.jobs import GenerationParams
from polyvis.serve.schema import ChatCompletionRequest
from polyvis.serve.settings import ServeSettings

MAX_STOP_CHARS = 256


def check_limits(req: ChatCompletionRequest, settings: ServeSettings) -> GenerationParams:
    """The request's generation parameters, after the server's limits (400 when over one)."""
    limit = req.token_limit
    if limit is not None and limit > settings.max_tokens_limit:
        field = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
        raise APIError(
            400,
            f"must be at most {settings.max_tokens_limit}, got {limit}",
            field,
            "max_tokens_too_large",
        )
    stop = tuple(req.stop or ())
    if len(stop) > settings.max_stop:
        raise APIError(
            400,
            f"at most {settings.max_stop} stop strings, got {len(stop)}",
            "stop",
            "too_many_stop",
        )
    if any(len(s) > MAX_STOP_CHARS for s in stop):
        raise APIError(
            400,
            f"stop strings must be at most {MAX_STOP_CHARS} characters",
            "stop",
            "stop_too_long",
        )
    n_images = sum(p.type == "image_url" for m in req.messages for p in m.content)
    if n_images > settings.max_images:
        raise APIError(
            400,
            f"{n_images} images, more than the limit of {settings.max_images}",
            "messages",
            "too_many_images",
        )
    return GenerationParams(
        max_tokens=limit,
        temperature=0.0 if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p,
        stop=stop,
        seed=req.seed,
    )


def render_messages(
    req: ChatCompletionRequest, processor: Any, settings: ServeSettings
) -> tuple[str, list[Image.Image]]:
    """Messages -> the chat-template prompt (one `<image>` per image part) and the decoded images.

    Parts of a message are joined with a newline; `developer` messages count as `system`. Blocking
    (decodes images): call it from a worker thread.
    """
    messages, images = [], []
    for i, msg in enumerate(req.messages):
        pieces = []
        for j, part in enumerate(msg.content):
            field = f"messages[{i}].content[{j}]"
            if part.type == "text":
                for marker in IMAGE_TOKENS:
                    if marker in part.text:
                        raise APIError(
                            400,
                            f"text must not contain {marker!r}; send images as image_url parts",
                            f"{field}.text",
                            "invalid_text",
                        )
                pieces.append(part.text)
            else:
                if msg.role != "user":
                    raise APIError(
                        400, "images are only accepted in user messages", field, "invalid_image"
                    )
                images.append(
                    load_image(
                        part.image_url.url,
                        f"{field}.image_url.url",
                        settings.max_image_bytes,
                        settings.max_image_pixels,
                        settings.allow_local_files,
                    )
                )
                pieces.append("<image>")
        role = "system" if msg.role == "developer" else msg.role
        messages.append({"role": role, "content": "\n".join(pieces)})
    try:
        prompt = processor.apply_chat_template(messages)
    except Exception as err:  # jinja templates raise on role orders they do not support
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise APIError(
            400, f"the model's chat template refused these messages: {first}", "messages"
        ) from None
    return prompt, images


def check_prompt_length(prompt: str, tokenizer: Any, context: int | None, longest: int) -> None:
    """A 400 for a prompt that cannot fit the LM's context, found here, in the request's own
    thread, so that the model's worker never tokenizes it: no token holds more than `longest`
    characters, so a prompt over `context * longest * 4` (the 4 a margin for normalisers) is
    refused uncounted, and one over `context` characters is counted. Images only add tokens;
    the worker's exact count, images included, still applies to every prompt."""
    if not context or len(prompt) <= context:
        return
    if len(prompt) > 4 * context * longest:
        raise APIError(
            400,
            f"the prompt is {len(prompt)} characters, more than the model's context of "
            f"{context} tokens can hold",
            "messages",
            "context_length_exceeded",
        )
    n = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    if n > context:
        raise APIError(
            400,
            f"the prompt is {n} tokens before its images, over the model's context of "
            f"{context} tokens",
            "messages",
            "context_length_exceeded",
        )


class ResponseBuilder:
    """OpenAI response bodies for one request (one id and timestamp across its chunks)."""

    def __init__(self, model_name: str):
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model_name

    @staticmethod
    def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }

    def completion(
        self, text: str, finish_reason: str, prompt_tokens: int, completion_tokens: int
    ) -> dict:
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": None,
                    "finish_reason": finish_reason,
                }
            ],
            "usage": self.usage(prompt_tokens, completion_tokens),
        }

    def chunk(
        self, delta: dict, finish_reason: str | None = None, usage: dict | None = None
    ) -> str:
        """One server-sent event: `data: {...}` and a blank line."""
        body: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": []
            if usage is not None
            else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }
        if usage is not None:
            body["usage"] = usage
        return sse(body)


def sse(body: dict | str) -> str:
    data = body if isinstance(body, str) else json.dumps(body, ensure_ascii=False)
    return f"data: {data}\n\n"
