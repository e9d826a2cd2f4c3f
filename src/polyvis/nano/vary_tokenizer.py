"""The vary-nano decoder's vocabularies: characters, or a byte-level BPE trained on transcripts."""

from __future__ import annotations


class CharVocab:
    """Characters as tokens (ids 0-3: pad, bos, eos, unk)."""

    SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")
    pad_id, bos_id, eos_id, unk_id = 0, 1, 2, 3

    def __init__(self, texts: list[str]):
        self.itos = list(self.SPECIALS) + sorted({c for t in texts for c in t})
        self.stoi = {c: i for i, c in enumerate(self.itos)}

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, text: str) -> list[int]:
        return [self.stoi.get(c, self.unk_id) for c in text]

    def decode(self, ids: list[int]) -> str:
        out = []
        for i in ids:
            if i == self.eos_id:
                break
            if i >= len(self.SPECIALS):
                out.append(self.itos[i])
        return "".join(out)


class BpeVocab:
    """A byte-level BPE trained on the transcripts (polyvis.models.tokenizer)."""

    def __init__(self, texts: list[str], vocab_size: int):
        from polyvis.models.tokenizer import train_bpe_tokenizer

        self.tok = train_bpe_tokenizer(texts, vocab_size)
        self.pad_id, self.bos_id, self.eos_id = (
            self.tok.pad_token_id,
            self.tok.bos_token_id,
            self.tok.eos_token_id,
        )

    def __len__(self) -> int:
        return len(self.tok)

    def encode(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def decode(self, ids: list[int]) -> str:
        ids = ids[: ids.index(self.eos_id)] if self.eos_id in ids else ids
        return self.tok.decode(ids, skip_special_tokens=True)
