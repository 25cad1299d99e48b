"""Reading the final answer out of a model's output, and judging a causal-suite answer against its gold.

The final answer is the text after `<|im_start|>answer` (or a bare `answer` line, which is how it decodes when
special tokens are skipped), else after the last `</think>`, else the last non-empty line; a leading
"The answer is" and a trailing full stop are dropped.
"""

import re

ANSWER_MARKERS = (
    re.compile(r"<\|im_start\|>answer\s*(.*?)(?:<\|im_end\|>|$)", re.DOTALL),
    re.compile(r"^answer\s*$(.*)", re.DOTALL | re.MULTILINE),
    re.compile(r"</think>(?!.*</think>)(.*)", re.DOTALL),
)
LEAD = re.compile(r"^(?:so,?\s*)?(?:the\s+)?(?:final\s+)?answer\s*(?:is|:)\s*", re.IGNORECASE)
NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)")


def final_answer(output: str) -> str:
    """The model's final answer as plain text."""
    for pattern in ANSWER_MARKERS:
        found = pattern.findall(output)
        if found and found[-1].strip():
            text = found[-1].strip()
            break
    else:
        lines = [line.strip() for line in output.strip().splitlines() if line.strip()]
        text = lines[-1] if lines else ""
    text = text.replace("<|im_end|>", "").strip().splitlines()[0] if text.strip() else ""
    return LEAD.sub("", text.strip("* ")).strip().rstrip(".").strip()


def causal_correct(output: str, gold: str, tolerance: float = 0.0005) -> bool:
    """Whether the output's final answer matches a causal-suite gold answer (word, number, or list of names)."""
    answer = final_answer(output).lower()
    gold = gold.lower().strip()
    if gold in ("yes", "no", "direct", "indirect"):
        words = re.findall(r"[a-z]+", answer)
        return bool(words) and words[0] == gold
    if NUMBER.fullmatch(gold):
        numbers = NUMBER.findall(answer.replace("≈", ""))
        return bool(numbers) and abs(float(numbers[0]) - float(gold)) <= tolerance + 1e-12  # gold is rounded
    return _names(answer) == _names(gold)


def _names(text: str) -> set[str]:
    """'A, C and D' -> {'a', 'c', 'd'}; 'none' / 'no variables' -> set()."""
    if re.fullmatch(r"(?:none|no variables?|nothing|no one|neither)", text.strip()):
        return set()
    parts = re.split(r"\s*(?:,|\band\b|;)\s*", text)
    return {p.strip() for p in parts if p.strip()}
