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
LEAD = re.compile(
    r"^(?:(?:so|thus|therefore|hence),?\s*)?(?:the\s+)?(?:final\s+|correct\s+)?(?:answer|option|choice)\s*(?:is|:)\s*",
    re.IGNORECASE,
)
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
    text = text.replace("**", "").replace("__", "").strip("* ")  # markdown bold around the answer or its lead
    return LEAD.sub("", text).strip().rstrip(".").strip()


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


BOXED = re.compile(r"\\boxed\s*\{")
LATEX_NOISE = re.compile(r"\\left|\\right|\\[!,;: ]|\\[()\[\]]|\$|\^\{?\\circ\}?|\\?%")
WRAPPER = re.compile(r"\\(?:text|textbf|mathrm|mathbf|operatorname)\{([^{}]*)\}")
THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
FRACTION = re.compile(r"(-?)\\[dt]?frac\{?(-?\d+)\}?\{?(\d+)\}?|(-?)(\d+)\s*/\s*(\d+)")
CHOICE = re.compile(r"^(?:[Oo]ption\s+)?\(?([A-Da-d])\)?(?=$|[\s.:),])")


def last_boxed(text: str) -> str | None:
    """The content of the last \\boxed{...} in text (nested braces kept), or None."""
    starts = [m.end() for m in BOXED.finditer(text)]
    if not starts:
        return None
    depth, start = 1, starts[-1]
    for i in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[start:i].strip() or None
    return None


def unbox(text: str) -> str:
    """The content of the last \\boxed{...}, else the text itself."""
    return last_boxed(text) or text


def _plain(text: str) -> str:
    """A final answer with LaTeX delimiters, sizing, text wrappers, units of degree and percent, thousands
    separators, a unicode minus and a leading 'x =' removed."""
    text = WRAPPER.sub(r"\1", LATEX_NOISE.sub("", text.replace("\u2212", "-")))
    return re.sub(r"^[A-Za-z]\w*\s*=\s*", "", THOUSANDS.sub("", text)).strip().rstrip(".").strip()


def _as_number(text: str) -> float | None:
    """'1,234', '$18.00', '\\frac{3}{4}', '-3/4', '50%' as a number, else None ('1, 2' is not 12)."""
    text = _plain(text)
    fraction = FRACTION.fullmatch(text)
    if fraction:
        groups = fraction.groups()
        sign, num, den = groups[:3] if groups[1] is not None else groups[3:]
        return (-1 if sign else 1) * int(num) / int(den) if int(den) else None
    return float(text) if NUMBER.fullmatch(text) else None


def answer_matches(answer: str, gold: str, kind: str) -> bool:
    """Whether a final answer equals the gold: kind 'number', 'choice' (a letter), 'math' or 'causal'."""
    if kind == "causal":
        return causal_correct(answer, gold)
    text = unbox(final_answer(answer)).strip()
    if kind == "choice":
        found = CHOICE.match(_plain(text))
        return bool(found) and found.group(1).upper() == gold.strip().upper()
    if kind == "number":
        numbers = NUMBER.findall(_plain(text))
        value = _as_number(gold)
        return bool(numbers) and value is not None and abs(float(numbers[0]) - value) <= 1e-6 * max(1.0, abs(value))
    mine, theirs = _as_number(text), _as_number(unbox(gold))
    if mine is not None and theirs is not None:
        return abs(mine - theirs) <= 1e-6 * max(1.0, abs(theirs))
    return _normal(text) == _normal(unbox(gold))


def _normal(expression: str) -> str:
    """A LaTeX expression with spacing, sizing and fraction-style noise removed, for string comparison."""
    return re.sub(r"\s+", "", _plain(re.sub(r"\\[dt]frac", r"\\frac", expression))).lower()
