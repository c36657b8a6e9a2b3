"""Incremental decoding and stop strings, on the byte-level BPE tokenizer the test models use."""

from __future__ import annotations

import pytest

from pibloom.engine.detokenizer import IncrementalDecoder, StopMatcher
from pibloom.engine.loader import LoadedModel

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Überall grüne Bäume. 日本語のテキスト。",
    "emoji 🙂 and ünïcödé mixed with ASCII",
]


@pytest.mark.parametrize("text", TEXTS)
def test_deltas_add_up_to_the_whole_decode_and_never_split_a_character(tiny_loaded: LoadedModel, text: str) -> None:
    tokenizer = tiny_loaded.tokenizer
    prompt = tokenizer("Hello", add_special_tokens=False)["input_ids"]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > len(text.split())  # several tokens per word: the case that needs care
    decoder = IncrementalDecoder(tokenizer, prompt[-4:])
    deltas = [decoder.push(token) for token in ids]
    assert "".join(deltas) == tokenizer.decode(ids)
    assert not any("\ufffd" in delta for delta in deltas)
    # A multi-byte character spread over byte tokens is held until it is complete.
    if any(ord(ch) > 0x7F for ch in text):
        assert "" in deltas


def test_a_stop_string_split_over_deltas_is_found_and_cut() -> None:
    stops = StopMatcher(("\nUser:",))
    assert stops.feed("Hello") == ("Hello", False)
    assert stops.feed(" there\nUs") == (" there", False)  # "\nUs" could begin the stop string
    assert stops.feed("er: next") == ("", True)


def test_held_back_text_is_released_when_it_cannot_be_a_stop_string() -> None:
    stops = StopMatcher(("STOP",))
    assert stops.feed("a ST") == ("a ", False)
    assert stops.feed("AR") == ("STAR", False)
    assert stops.feed("S") == ("", False)
    assert stops.flush() == "S"
    assert stops.flush() == ""


def test_the_earliest_of_several_stop_strings_wins() -> None:
    stops = StopMatcher(("world", "lo w"))
    assert stops.feed("hello world") == ("hel", True)


def test_no_stop_strings_pass_text_through_unheld() -> None:
    stops = StopMatcher(("",))
    assert stops.feed("anything\nUser:") == ("anything\nUser:", False)
