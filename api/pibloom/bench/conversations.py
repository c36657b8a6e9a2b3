"""The chat-shaped cases' conversations: long, deterministic, and different from each other from the
first message on (so one cannot reuse the other's cached prefix).

Lengths are in words; on the embedded model's tokenizer these texts run at about 1.5 tokens a word (numbers split),
so `LONG_HISTORY_WORDS` makes a ~2,300-token conversation and `LONGEST_WORDS` a ~3,000-token one.
"""

from __future__ import annotations

LONG_HISTORY_WORDS = 1400
LONGEST_WORDS = 1900
FOLLOW_UP = "Thanks. Now sum that up in one short sentence."

_TOPICS = (
    ("the harbour", "boats", "tides", "fishermen", "nets", "gulls"),
    ("the orchard", "apples", "ladders", "bees", "blossom", "frost"),
    ("the railway", "signals", "timetables", "engines", "platforms", "tunnels"),
    ("the library", "shelves", "readers", "maps", "lamps", "ledgers"),
    ("the mountain village", "goats", "paths", "snow", "bells", "bridges"),
)


def _sentence(index: int, topic: tuple[str, ...]) -> str:
    place, *things = topic
    a, b = things[index % len(things)], things[(index * 3 + 1) % len(things)]
    number = index * 7 % 101
    return f"On day {index + 1} at {place}, the {a} and the {b} changed in a way worth writing down, number {number}."


def _words(text: str) -> int:
    return len(text.split())


def conversation(words: int, seed: int) -> list[dict[str, str]]:
    """Alternating user/assistant turns of about `words` words in all, ending with a user question."""
    topic = _TOPICS[seed % len(_TOPICS)]
    messages: list[dict[str, str]] = []
    total, index = 0, seed * 1000
    while total < words:
        role = "user" if len(messages) % 2 == 0 else "assistant"
        sentences = [_sentence(index + k, topic) for k in range(8)]
        index += 8
        content = " ".join(sentences)
        if role == "user":
            content = f"Here are my notes about {topic[0]}: {content} What do you make of them?"
        messages.append({"role": role, "content": content})
        total += _words(content)
    if messages[-1]["role"] != "user":
        messages.append(
            {"role": "user", "content": f"Tell me, in detail, what happened at {topic[0]} over those days."}
        )
    return messages


def next_turn(history: list[dict[str, str]], reply: str, question: str = FOLLOW_UP) -> list[dict[str, str]]:
    """The conversation's next request: the history, the model's reply, one short question."""
    return [*history, {"role": "assistant", "content": reply}, {"role": "user", "content": question}]
