"""Generated token ids to text, in whole characters only.

A byte-level tokenizer splits a rare character (many Chinese ones) into several tokens, and decoding only some of
them gives U+FFFD. The decoder holds those bytes back until the character is complete, and drops them when the
answer ends first (cut by max_tokens), as llama.cpp does. It also holds back what may still become a stop string,
and trailing whitespace until more text follows; a chat answer (`strip`) loses its leading and trailing whitespace.
So the pieces it gives out never end inside a character and join to exactly the final answer.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

INCOMPLETE = "\ufffd"  # what decoding gives for the bytes of a character not yet complete


class TextDecoder:
    """Feed it token ids one by one (`push`), then `close`; each call returns the text that is now safe to show."""

    def __init__(self, tokenizer, strip: bool = False, stop: Sequence[str] = ()):
        self.tokenizer = tokenizer
        self.strip = strip
        self.stop = tuple(s for s in stop if s)
        self.ids: list[int] = []
        self.text = ""  # given out so far: the answer, once closed
        self.stopped = False  # a stop string was found; the answer ends before it
        self.closed = False

    def push(self, token_id: int) -> str:
        """Add a generated token; returns the new text that can be shown (often "")."""
        if self.stopped or self.closed:
            return ""
        self.ids.append(token_id)
        return self._advance(final=False)

    def close(self) -> str:
        """The answer is over: the rest of the text, without an incomplete last character."""
        if self.stopped or self.closed:
            return ""
        return self._advance(final=True)

    def _advance(self, final: bool) -> str:
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True).rstrip(INCOMPLETE)
        if self.strip:
            text = text.lstrip()
        cut = self._stop_at(text)
        if cut is not None:
            text, final, self.stopped = text[:cut], True, True
        elif not final:
            text = text[: len(text) - self._stop_prefix(text)]
        if not final or self.strip:
            text = text.rstrip()  # whitespace at the end: held back until text follows it (or dropped, with strip)
        self.closed = final
        new = text[len(self.text) :] if len(text) > len(self.text) else ""
        self.text += new
        return new

    def _stop_at(self, text: str) -> int | None:
        found = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        return min(found) if found else None

    def _stop_prefix(self, text: str) -> int:
        """The length of the longest end of `text` that begins a stop string."""
        longest = 0
        for stop in self.stop:
            for length in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:length]):
                    longest = length
                    break
        return longest


def decode_answer(tokenizer, ids: Iterable[int], stop_ids: Iterable[int]) -> str:
    """A whole generated answer: up to its first stop token, stripped, without an incomplete last character."""
    stop_ids = set(stop_ids)
    decoder = TextDecoder(tokenizer, strip=True)
    for token_id in ids:
        if token_id in stop_ids:
            break
        decoder.ids.append(token_id)
    return decoder.close()
