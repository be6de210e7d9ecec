"""Stop strings over streamed text, in time linear in the text generated.

Each stop string gets a Knuth-Morris-Pratt automaton whose state is the length of the longest
suffix of the text so far that is a prefix of that stop string. Feeding a character costs
amortised O(1) per stop string, whatever the stop's length, and the states answer both
questions the engine asks after every token: did a stop string just complete, and how much
of the tail must be held back because it could still become one. Only that tail (shorter
than the longest stop string) is kept; nothing is searched or copied twice.

Generation stops at the first character that completes any stop string; the output ends
just before that stop string (the longest one when several complete at the same character).
So the result does not depend on how the text was split into tokens.
"""

from __future__ import annotations


def _failure_table(pattern: str) -> list[int]:
    """``table[i]``: length of the longest proper border of ``pattern[: i + 1]``."""
    table = [0] * len(pattern)
    k = 0
    for i in range(1, len(pattern)):
        while k and pattern[i] != pattern[k]:
            k = table[k - 1]
        if pattern[i] == pattern[k]:
            k += 1
        table[i] = k
    return table


class StopMatcher:
    """Feed generated text piece by piece; get back what is safe to emit."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        if not stops or any(not s for s in stops):
            raise ValueError("stop strings must be non-empty")
        self._stops = stops
        self._tables = [_failure_table(s) for s in stops]
        self._states = [0] * len(stops)
        self._held = ""  # generated, not yet emitted: could still be the start of a stop
        self.stopped = False

    def feed(self, piece: str) -> str:
        """Add ``piece``; return the text that can be emitted now. After a stop string
        completes, :attr:`stopped` is set and the return value is the text before it."""
        if self.stopped:
            return ""
        text = self._held + piece
        base = len(self._held)
        states = self._states
        for offset, char in enumerate(piece):
            end = 0  # longest stop string completing at this character
            for j, stop in enumerate(self._stops):
                k = states[j]  # < len(stop): a full match stops the matcher
                table = self._tables[j]
                while k and stop[k] != char:
                    k = table[k - 1]
                if stop[k] == char:
                    k += 1
                states[j] = k
                if k == len(stop):
                    end = max(end, k)
            if end:
                self.stopped = True
                self._held = ""
                return text[: base + offset + 1 - end]
        hold = max(states)
        cut = len(text) - hold
        self._held = text[cut:]
        return text[:cut]

    def flush(self) -> str:
        """The held-back tail, for when generation ends for another reason."""
        held, self._held = self._held, ""
        return held
