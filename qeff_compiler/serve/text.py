"""Generated tokens to text, increment by increment, with OpenAI's stop strings.

Each increment is final: text that could still turn out to be the start of a stop string, or half of a UTF-8
character, is held back until the next token decides. A stop string ends the text just before it (OpenAI does not
return the stop sequence).
"""

from __future__ import annotations

from typing import Any


class TextStream:
    """The text of one completion as its tokens arrive."""

    def __init__(self, tokenizer: Any, stops: tuple[str, ...] = ()) -> None:
        self.tokenizer = tokenizer
        self.stops = stops
        self.tokens: list[int] = []
        self.emitted = 0
        #: set once a stop string appeared: the caller ends the request
        self.stopped = False

    def push(self, token: int) -> str:
        """Add one token; returns the text that became final (may be empty)."""
        self.tokens.append(token)
        text = self._decoded()
        found = [i for i in (text.find(stop, max(0, self.emitted - len(stop))) for stop in self.stops) if i >= 0]
        if found:
            self.stopped = True
            return self._take(text[: min(found)])
        return self._take(text[: len(text) - self._held_back(text)])

    def finish(self) -> str:
        """The rest of the text once generation has ended (nothing after a stop string)."""
        return "" if self.stopped else self._take(self._decoded())

    def _decoded(self) -> str:
        return str(self.tokenizer.decode(self.tokens, skip_special_tokens=True))

    def _take(self, final: str) -> str:
        piece = final[self.emitted :]
        self.emitted = max(self.emitted, len(final))
        return piece

    def _held_back(self, text: str) -> int:
        """Characters at the end of `text` that may still change: an incomplete character, or a stop's prefix."""
        if text.endswith("\ufffd"):
            return 1
        held = 0
        for stop in self.stops:
            for length in range(min(len(stop) - 1, len(text)), held, -1):
                if text.endswith(stop[:length]):
                    held = length
                    break
        return held
