"""TextStream: token ids in, text deltas out, cut at stop strings.

Decoding each new token alone breaks multi-byte characters and word-initial spaces, so the text of
a token is read as decode(ids[prefix:]) minus decode(ids[prefix:read]) (the method of TGI / vLLM),
and emitted only once it no longer ends in an incomplete character. Text that could be the start
of a stop string is held back until it is clearly not one. The answer of a request is the
concatenation of its deltas, so streamed and non-streamed answers are the same text.
"""

from __future__ import annotations

from typing import Any


class TextStream:
    def __init__(self, tokenizer: Any, stop: list[str] | tuple[str, ...] = ()):
        self.tokenizer = tokenizer
        self.stop = tuple(stop)
        self.ids: list[int] = []
        self.text = ""  # everything decoded so far (before any stop cut)
        self.sent = 0  # characters of self.text already emitted
        self.stopped = False
        self._prefix = 0
        self._read = 0

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _advance(self, final: bool) -> None:
        prefix_text = self._decode(self.ids[self._prefix : self._read])
        new_text = self._decode(self.ids[self._prefix :])
        if len(new_text) > len(prefix_text) and (final or not new_text.endswith("\ufffd")):
            self.text += new_text[len(prefix_text) :]
            self._prefix, self._read = self._read, len(self.ids)

    def push(self, token_id: int) -> str:
        """Add one generated token; returns the text that is now safe to emit (maybe '')."""
        if self.stopped:
            return ""
        self.ids.append(int(token_id))
        self._advance(final=False)
        return self._emit(final=False)

    def finish(self) -> str:
        """No more tokens: returns what was held back (incomplete characters included)."""
        if not self.stopped and self._read < len(self.ids):
            self._advance(final=True)
        return self._emit(final=True)

    def _emit(self, final: bool) -> str:
        if self.stopped:
            return ""
        if self.stop:
            longest = max(len(s) for s in self.stop)
            start = max(0, self.sent - longest + 1)
            hits = [i for i in (self.text.find(s, start) for s in self.stop) if i >= 0]
            if hits:
                cut = min(hits)
                self.stopped = True
                out, self.sent = self.text[self.sent : cut], cut
                return out
        end = len(self.text) if final else len(self.text) - self._held_back()
        end = max(end, self.sent)
        out, self.sent = self.text[self.sent : end], end
        return out

    def _held_back(self) -> int:
        """Length of the longest tail of the text that could still grow into a stop string."""
        best = 0
        for s in self.stop:
            for k in range(min(len(s) - 1, len(self.text)), best, -1):
                if self.text.endswith(s[:k]):
                    best = k
                    break
        return best
