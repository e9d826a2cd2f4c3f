"""Records -> token ids and labels through the tokenizer's chat template.

Labels are -100 everywhere except the assistant answers (with whatever the template closes an
answer with, e.g. the EOS), so the loss trains answers only. Where the answers lie is found in
characters of the rendered text, in one of two ways:

- the template marks them with `{% generation %}` (polyvis's plain template does): the spans
  transformers reports for those markers;
- otherwise, incrementally: the text rendered up to a turn's generation prompt and the text
  rendered including the answer bracket it (trailing whitespace dropped). Templates that rewrite
  earlier turns (not prefix-stable) fall back to locating the answer text, plus a following EOS.

The rendered text is then tokenised piece by piece (prompt, answer, prompt, ...). So the prompt
before each answer is tokenised exactly as it is at inference, where the prompt ends with the
generation header and the model produces the answer's first token: a BPE merge across the
boundary (e.g. " 3" swallowing the space after "ASSISTANT:") cannot make training and inference
disagree.

Truncation (max_length) never cuts an image block: a longer record is cut in the text after its
last image block when at least one answer token survives; otherwise it is dropped (None).

`prompt_ids` builds an inference prompt the same way (chat, evaluation and the lmms-eval plugin
all use it), so a prompt has the ids the model saw before that answer in training.

Where each image has its own token count (a tiled encoder, docs/tiling.md), pass
`for_images(processor, images)` instead of the processor: it expands each marker with its own
image's count, and the count check adds those counts up.
"""

from __future__ import annotations

import re
from typing import Any

from polyvis.errors import DataError
from polyvis.models.tokenizer import IMAGE_END_TOKEN, IMAGE_START_TOKEN, PLAIN_CHAT_TEMPLATE

IGNORE_INDEX = -100
ROLE_MAP = {"human": "user", "gpt": "assistant"}
_GENERATION_RE = re.compile(r"\{%-?\s*generation\s*-?%\}")

try:  # the renderer that reports `{% generation %}` spans in characters
    from transformers.utils.chat_template_utils import render_jinja_template
except ImportError:  # pragma: no cover - then every template takes the incremental path
    render_jinja_template = None

Span = tuple[int, int]


def chat_template_of(tokenizer: Any) -> str:
    """The tokenizer's own chat template, else polyvis's plain one."""
    try:
        template = tokenizer.get_chat_template()
    except (ValueError, AttributeError):
        template = None
    return template or PLAIN_CHAT_TEMPLATE


def record_messages(record: dict[str, Any], processor: Any) -> list[dict[str, str]]:
    """The record's turns as chat messages (user / assistant), `<image>` markers expanded."""
    return [
        {"role": ROLE_MAP[t["from"]], "content": processor.expand_image_tokens(t["value"])}
        for t in record["conversations"]
    ]


def answer_spans(
    messages: list[dict[str, str]], tokenizer: Any, template: str | None = None
) -> tuple[str, list[Span]]:
    """The rendered conversation and the character spans of its answers."""
    template = template or chat_template_of(tokenizer)
    if render_jinja_template is not None and _GENERATION_RE.search(template):
        rendered, indices = render_jinja_template(
            conversations=[messages],
            chat_template=template,
            return_assistant_tokens_mask=True,
            add_generation_prompt=False,
            **tokenizer.special_tokens_map,
        )
        spans = [tuple(s) for s in indices[0] if s[1] > s[0]]
        if spans:
            return rendered[0], spans
    return _incremental_spans(messages, tokenizer, template)


def _incremental_spans(
    messages: list[dict[str, str]], tokenizer: Any, template: str
) -> tuple[str, list[Span]]:
    def render(msgs: list[dict[str, str]], prompt: bool) -> str:
        return tokenizer.apply_chat_template(
            msgs, chat_template=template, tokenize=False, add_generation_prompt=prompt
        )

    full = render(messages, False)
    eos = tokenizer.eos_token or ""
    spans: list[Span] = []
    cursor = 0
    for j, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        before = render(messages[:j], True)
        upto = render(messages[: j + 1], False).rstrip()
        if full.startswith(upto) and upto.startswith(before) and cursor <= len(before) < len(upto):
            span = (len(before), len(upto))
        else:
            span = _locate_answer(full, messages[j - 1]["content"], msg["content"], eos, cursor)
        spans.append(span)
        cursor = span[1]
    return full, spans


def _locate_answer(full: str, question: str, answer: str, eos: str, cursor: int) -> Span:
    """The answer's characters (and an EOS right after it) in text that is not prefix-stable."""
    q = full.find(question, cursor)
    start = full.find(answer, q + len(question) if q >= 0 else cursor)
    if start < 0 or not answer:
        raise DataError("the chat template's output does not contain the answer verbatim")
    end = start + len(answer)
    if eos and full.startswith(eos, end):
        end += len(eos)
    return start, end


def tokenize_spans(text: str, spans: list[Span], tokenizer: Any) -> tuple[list[int], list[int]]:
    """Token ids of `text` (piece by piece at span borders) and labels (ids inside spans)."""
    pieces: list[tuple[str, bool]] = []
    pos = 0
    for start, end in sorted(spans):
        if start < pos:
            raise DataError(f"overlapping answer spans at character {start}")
        pieces += [(text[pos:start], False), (text[start:end], True)]
        pos = end
    pieces.append((text[pos:], False))
    pieces = [(p, is_answer) for p, is_answer in pieces if p]
    encoded = tokenizer([p for p, _ in pieces], add_special_tokens=False)["input_ids"]
    ids: list[int] = []
    labels: list[int] = []
    for (_, is_answer), piece_ids in zip(pieces, encoded):
        ids += piece_ids
        labels += piece_ids if is_answer else [IGNORE_INDEX] * len(piece_ids)
    return ids, labels


def for_images(processor: Any, images: list[Any]) -> Any:
    """The processor that expands the `<image>` markers of a conversation about `images` (PIL
    images or (height, width) sizes, in marker order): where each image has its own token count
    (a tiled encoder), `processor.for_images(images)`, which expands marker by marker; else the
    processor itself. Use a fresh one per conversation: the view walks through the images."""
    if getattr(processor, "tokens_vary", False):
        return processor.for_images(images)
    return processor


def image_counts(processor: Any) -> list[int] | None:
    """The per-image token counts a `for_images` view carries; None for a plain processor (every
    image then has processor.image_seq_length tokens)."""
    counts = getattr(processor, "counts", None)
    return list(counts) if isinstance(counts, list) else None


def prompt_ids(processor: Any, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of the conversation (`{role, content}` messages, `<image>` markers unexpanded)
    plus the generation prompt, tokenised piece by piece at earlier answers as in training."""
    tok = processor.tokenizer
    expanded = [{**m, "content": processor.expand_image_tokens(m["content"])} for m in messages]
    template = chat_template_of(tok)
    text = tok.apply_chat_template(
        expanded, chat_template=template, tokenize=False, add_generation_prompt=True
    )
    spans: list[Span] = []
    if any(m["role"] == "assistant" for m in expanded):
        try:
            before, spans = answer_spans(expanded, tok, template)
        except DataError:
            before, spans = "", []
        if not text.startswith(before):  # template not prefix-stable: plain tokenisation
            spans = []
    ids, _ = tokenize_spans(text, spans, tok)
    return ids


def encode_conversation(
    record: dict[str, Any],
    processor: Any,
    max_length: int | None = None,
    template: str | None = None,
) -> dict[str, Any] | None:
    """A record -> {input_ids, labels, truncated}; None when it is too long to keep (see module doc).

    template: a chat template to use instead of the tokenizer's (jinja text).
    """
    tokenizer = processor.tokenizer
    messages = record_messages(record, processor)
    try:
        text, spans = answer_spans(messages, tokenizer, template)
    except DataError as err:
        raise DataError(f"record {record.get('id')}: {err}") from None
    ids, labels = tokenize_spans(text, spans, tokenizer)
    n_images = sum(t["value"].count("<image>") for t in record["conversations"])
    n_placeholders = ids.count(processor.image_token_id)
    counts = image_counts(processor)
    if counts is None and n_placeholders != n_images * processor.image_seq_length:
        raise DataError(
            f"record {record.get('id')}: {n_placeholders} <image> placeholders after templating, expected "
            f"{n_images} image(s) x {processor.image_seq_length}"
        )
    if counts is not None and (n_images != len(counts) or n_placeholders != sum(counts)):
        raise DataError(
            f"record {record.get('id')}: {n_placeholders} <image> placeholders after templating, "
            f"expected {sum(counts)} ({n_images} marker(s), images of {counts} tokens)"
        )
    truncated = False
    if max_length is not None and len(ids) > max_length:
        if not _can_truncate(ids, labels, max_length, _image_ids(processor)):
            return None
        ids, labels, truncated = ids[:max_length], labels[:max_length], True
    return {"input_ids": ids, "labels": labels, "truncated": truncated}


def _image_ids(processor: Any) -> set[int]:
    tok = processor.tokenizer
    ids = {processor.image_token_id}
    for t in (IMAGE_START_TOKEN, IMAGE_END_TOKEN):
        tid = tok.convert_tokens_to_ids(t)
        if tid is not None and tid != tok.unk_token_id:
            ids.add(tid)
    return ids


def _can_truncate(ids: list[int], labels: list[int], max_length: int, image_ids: set[int]) -> bool:
    """Cutting at max_length keeps every image block whole and at least one answer token."""
    last_image = max((i for i, t in enumerate(ids) if t in image_ids), default=-1)
    return last_image < max_length and any(x != IGNORE_INDEX for x in labels[:max_length])
