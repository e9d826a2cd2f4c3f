"""Tokenizers: the image special tokens, a plain chat template, and byte-level BPE trained here."""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

IMAGE_TOKEN = "<image>"
IMAGE_START_TOKEN = "<img_start>"
IMAGE_END_TOKEN = "<img_end>"
IMAGE_TOKENS = (IMAGE_START_TOKEN, IMAGE_TOKEN, IMAGE_END_TOKEN)

# Used when a tokenizer has no chat template of its own. Answers end with the EOS token, which
# the model learns to emit, so generation stops by itself.
PLAIN_CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ m['content'] }}\n"
    "{% elif m['role'] == 'user' %}USER: {{ m['content'] }}\n"
    "{% else %}ASSISTANT: {% generation %}{{ m['content'] }}{{ eos_token }}{% endgeneration %}\n"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT: {% endif %}"
)

# Enough text for a byte-level BPE to learn common merges when no corpus is given.
_BUILTIN_TEXT = (
    "what is in the image? describe the picture. how many objects are there? the answer is "
    "a red circle at the top left and a blue square at the bottom right. which label has the "
    "largest value? what does the text say? transcribe the table. the formula is x^2 + y_1 = "
    "\\frac{a}{b}. yes no left right above below green yellow purple orange black white "
    "0 1 2 3 4 5 6 7 8 9 10 100 chart bar line pie table row column cell value "
)


def train_bpe_tokenizer(
    texts: Iterable[str] | None = None, vocab_size: int = 512
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained with `tokenizers` (no download), plus a chat template."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = ["<pad>", "<s>", "</s>"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = list(texts) if texts is not None else []
    if not corpus:
        corpus = [_BUILTIN_TEXT] * 4
    tok.train_from_iterator(corpus, trainer=trainer)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token=None
    )
    fast.chat_template = PLAIN_CHAT_TEMPLATE
    return fast


def add_image_tokens(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    """Add `<img_start>`, `<image>`, `<img_end>` as special tokens; returns their ids."""
    tokenizer.add_special_tokens({"additional_special_tokens": list(IMAGE_TOKENS)})
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in IMAGE_TOKENS}
    if tokenizer.pad_token is None:
        # Causal LMs often ship without one; batching needs it (masked out by attention_mask).
        tokenizer.pad_token = tokenizer.eos_token
    if not getattr(tokenizer, "chat_template", None):
        # polyvis tokenises templated text without special tokens, so a tokenizer that adds a
        # BOS (Llama, Mistral, OPT) gets it from the template: its LM was trained with one
        bos = "{{ bos_token }}" if adds_bos(tokenizer) else ""
        tokenizer.chat_template = bos + PLAIN_CHAT_TEMPLATE
    return ids


def adds_bos(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the tokenizer puts its BOS token before the text it encodes."""
    if tokenizer.bos_token_id is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == tokenizer.bos_token_id
