"""Multiple-choice questions: GPQA's four options in one order everywhere (training questions and evaluation tasks)."""

import hashlib
import random

LETTERS = "ABCDEFGHIJ"


def shuffled_options(question: str, correct: str, incorrect: list[str]) -> tuple[list[str], str]:
    """The options in an order fixed by the question text (sha256), and the correct one's letter."""
    # Stock lm-eval gpqa shuffles with the global `random`, and datasets caches that: a new seed does not reshuffle.
    options = [*incorrect, correct]
    seed = int.from_bytes(hashlib.sha256(question.strip().encode()).digest()[:8], "big")
    random.Random(seed).shuffle(options)
    return options, LETTERS[options.index(correct)]
