"""Stop strings over streamed text: the matcher against a whole-text reference."""

from __future__ import annotations

import itertools
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmfleet_worker.engine.stops import StopMatcher


def reference(text: str, stops: tuple[str, ...]) -> tuple[str, bool]:
    """Output for the whole text at once: cut before the stop string that completes first
    (the longest of those completing at the same character)."""
    best: tuple[int, int] | None = None  # (end, -length)
    for stop in stops:
        i = text.find(stop)
        if i != -1:
            key = (i + len(stop), -len(stop))
            best = key if best is None else min(best, key)
    if best is None:
        return text, False
    end, neg_len = best
    return text[: end + neg_len], True


def stream(pieces: list[str], stops: tuple[str, ...]) -> tuple[list[str], bool]:
    matcher = StopMatcher(stops)
    emitted = []
    for piece in pieces:
        emitted.append(matcher.feed(piece))
        if matcher.stopped:
            return emitted, True
    emitted.append(matcher.flush())
    return emitted, False


def test_a_stop_split_across_pieces_is_never_emitted() -> None:
    emitted, stopped = stream(["hello wo", "r", "ld and more"], ("world",))
    assert stopped
    assert emitted == ["hello ", "", ""]  # "wo", "wor" held back, then dropped


def test_held_back_text_is_released_once_it_cannot_be_a_stop() -> None:
    matcher = StopMatcher(("abc", "xyz"))
    assert matcher.feed("12ab") == "12"
    assert matcher.feed("d") == "abd"
    assert matcher.feed("x") == ""
    assert matcher.flush() == "x"


def test_overlapping_prefixes_follow_the_automaton() -> None:
    # "aab" inside "aaab": a naive restart after the mismatch would miss it.
    assert stream(["a", "a", "a", "b"], ("aab",)) == (["", "", "a", ""], True)


def test_the_longest_stop_completing_first_wins() -> None:
    assert stream(["xab"], ("b", "ab")) == (["x"], True)
    assert stream(["xabc"], ("abc", "b")) == (["xa"], True)  # "b" completes first


def test_empty_stop_strings_are_refused() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        StopMatcher(("a", ""))


@given(
    text=st.text(alphabet="abc", max_size=60),
    stops=st.lists(st.text(alphabet="abc", min_size=1, max_size=6), min_size=1, max_size=4),
    cuts=st.lists(st.integers(min_value=0, max_value=60), max_size=20),
)
def test_streaming_matches_the_whole_text_however_it_is_split(
    text: str, stops: list[str], cuts: list[int]
) -> None:
    bounds = sorted({0, len(text), *(c for c in cuts if c <= len(text))})
    pieces = [text[a:b] for a, b in itertools.pairwise(bounds)]
    emitted, stopped = stream(pieces, tuple(stops))
    assert ("".join(emitted), stopped) == reference(text, tuple(stops))


def test_work_per_piece_does_not_grow_with_the_stop_length() -> None:
    # Text that keeps almost matching, and a character that breaks every partial match:
    # checking suffix by suffix costs O(len(stop) ** 2) per piece there (about 35x slower
    # from 16 to 256 characters, measured); the automaton's cost per character does not
    # depend on the stop's length.
    pieces = ["c" if i % 50 == 49 else "a" for i in range(3000)]

    def seconds(stop_len: int) -> float:
        matcher = StopMatcher(("a" * (stop_len - 1) + "b",))
        started = time.perf_counter()
        for piece in pieces:
            matcher.feed(piece)
        assert not matcher.stopped
        return time.perf_counter() - started

    seconds(256)  # warm up
    short = min(seconds(16) for _ in range(3))
    long = min(seconds(256) for _ in range(3))
    assert long < 4 * short, (short, long)
