"""The fixed prompt set: every peer gets the same prompts in the same order.

The OpenAI API has no `ignore_eos`, so the prompts ask for long answers; the bench counts the tokens
each server actually sent (its `usage`) rather than assuming `max_tokens` of them.
"""

from __future__ import annotations

PROMPTS: tuple[str, ...] = (
    "Write a long, detailed story about a lighthouse keeper who finds a message in a bottle.",
    "Explain in detail how a steam engine works, step by step, for a curious teenager.",
    "Describe a busy day at a medieval market town, with as many details as you can.",
    "Write a long essay about why people enjoy gardening and what it teaches them.",
    "Give a detailed, step by step guide to baking bread at home, with tips for beginners.",
    "Tell a long adventure story about two friends crossing a desert on camels.",
    "Explain in detail how the water cycle works and why it matters for life on Earth.",
    "Write a detailed travel diary of a week-long journey by train across Europe.",
    "Describe, in a long and detailed answer, how a city could reduce its traffic jams.",
    "Write a long letter from a grandmother to her grandson about her childhood on a farm.",
    "Explain in detail how computers store numbers and text, for someone new to programming.",
    "Write a long story about a robot who learns to paint, told from the robot's point of view.",
    "Describe in detail the life cycle of a butterfly, from egg to adult.",
    "Write a detailed plan for a school science fair project about plants and light.",
    "Tell a long, detailed fairy tale about a king who lost his voice.",
    "Explain in detail the history of the bicycle and how it changed everyday life.",
)


# Warm-up prompts, unlike the measured ones, so a server's prompt cache gains nothing from the warm-up.
WARM_PROMPTS: tuple[str, ...] = ("Say hello.", "Name a colour.", "Count to three.", "Name a fruit.")


def prompt_for(index: int, prompts: tuple[str, ...] = PROMPTS) -> str:
    """The prompt of request number `index` (the set repeats)."""
    return prompts[index % len(prompts)]
