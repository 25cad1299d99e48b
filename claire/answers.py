"""Reading the final answer out of a model's output, and judging a causal-suite answer against its gold;
read_answer / equivalent / has_answer_marker do the same for benchmark answers (lm-eval's `claire` filter).

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
    marked = _marked(output)
    return _clean(marked if marked is not None else _last_line(output))


def _marked(output: str) -> str | None:
    """The text after the first answer marker that is followed by any, or None."""
    for pattern in ANSWER_MARKERS:
        found = pattern.findall(output)
        if found and found[-1].strip():
            return found[-1].strip()
    return None


def _last_line(output: str) -> str:
    """The last non-empty line."""
    lines = [line.strip() for line in output.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _clean(text: str) -> str:
    """The first line of an answer, without markdown bold, a leading 'The answer is' and a trailing full stop."""
    text = text.replace("<|im_end|>", "").strip().splitlines()[0] if text.strip() else ""
    text = text.replace("**", "").replace("__", "").strip("* ")  # markdown bold around the answer or its lead
    return LEAD.sub("", text).strip().rstrip(".").strip()


# A causal answer stated as a sentence about the question's variable: "W is the root cause of C", "A and B are
# the direct causes of C" (subject first), or "The root cause of C is W" (the answer last).
SUBJECT_FIRST = re.compile(r"^(.+?)\s+(?:is|are)\s+(?:the|its|a|an|both)\s+\w[\w -]*?\s+of\s+\w.*$", re.IGNORECASE)
SUBJECT_LAST = re.compile(r"^the\s+\w[\w -]*?\s+of\s+\w[\w ]*?\s+(?:is|are)\s+(.+)$", re.IGNORECASE)


def causal_answer(output: str) -> str:
    """The causal-suite answer of an output: its final answer, reduced to the names when stated as a sentence."""
    answer = final_answer(output)
    stated = SUBJECT_FIRST.match(answer) or SUBJECT_LAST.match(answer)
    return stated[1].strip() if stated else answer


def causal_correct(output: str, gold: str, tolerance: float = 0.0005) -> bool:
    """Whether the output's final answer matches a causal-suite gold answer (word, number, or list of names)."""
    answer = causal_answer(output).lower()
    gold = gold.lower().strip()
    if gold in ("yes", "no", "direct", "indirect"):
        words = re.findall(r"[a-z]+", answer)
        return bool(words) and words[0] == gold
    if NUMBER.fullmatch(gold):
        numbers = NUMBER.findall(answer.replace("≈", ""))
        return bool(numbers) and abs(float(numbers[0]) - float(gold)) <= tolerance + 1e-12  # gold is rounded
    return _names(answer) == _names(gold)


def causal_key(output: str) -> str | None:
    """A causal answer in the normal form causal_correct compares (a leading yes/no/direct/indirect, a number, or
    the sorted names), so that answers it would score alike count as one in a vote; None when there is none."""
    answer = causal_answer(output).lower().replace("≈", "").strip()
    if not answer:
        return None
    if not _names(answer):  # 'none', 'no variables', 'no one': the empty set, before 'no' is read as a verdict
        return "none"
    words = re.findall(r"[a-z]+", answer)
    if words and words[0] in ("yes", "no", "direct", "indirect"):
        return words[0]
    numbers = NUMBER.findall(answer)  # causal_correct reads a numeric gold as the first number anywhere
    if numbers:
        return f"{round(float(numbers[0]), 3):g}"  # within causal_correct's tolerance of a 4-place gold
    return ", ".join(sorted(_names(answer))) or "none"


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


# Reading the answer of a benchmark output (lm-eval's `claire` filter, claire.evaluate): kinds number, choice, math.
KINDS = ("number", "choice", "math")
STATEMENT = re.compile(r"####\s*([^\n]*)|\b(?:answer|option|choice)\s*(?:is|:)\s*([^\n]*)", re.IGNORECASE)
SENTENCE_END = re.compile(r"\.(?=\s|$)")  # a full stop, not a decimal point
EXPLANATION = re.compile(r"\b(?:because|since|as|which)\b|\(", re.IGNORECASE)
CONCLUSION = re.compile(
    r"\b(?:so|thus|therefore|hence|is|are|was|were|equals?|makes?|gives?|gets?|totals?)\b|=|≈|:", re.IGNORECASE
)
NUMERIC = re.compile(rf"-?\d+\s*/\s*\d+|{NUMBER.pattern}")
PAREN_CHOICE = re.compile(r"\(([A-D])\)")
BARE_CHOICE = re.compile(r"(?:option\s+)?\(?[A-D]\)?", re.IGNORECASE)
BARE_LEAD = re.compile(r"^(?:so|thus|therefore|hence)\b,?\s*", re.IGNORECASE)


def has_answer_marker(output: str) -> bool:
    """Whether the output marks its final answer the Claire way (<|im_start|>answer, a bare answer line, </think>)."""
    return any(pattern.search(output) for pattern in ANSWER_MARKERS)


def read_answer(output: str, kind: str) -> str | None:
    """The final answer of a kind ('number', 'choice' letter or 'math') an output states, or None if it states none.

    Where: after a Claire answer marker, else the last '#### ...', \\boxed{...} or 'the answer is / Answer: ...'
    statement, else a last line holding nothing but the answer ('72', 'So (C).'); a trace with numbers but no
    such statement has none. In a statement with several numbers the first sentence counts, an explanation
    ('because ...', '(...)') is dropped, and the number after its last conclusion word ('so', 'is', '=', ...)
    wins, else its first number.
    """
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} is not one of {KINDS}")
    output = output.replace("\u2212", "-")
    stated = _stated(output)
    if stated is not None:
        return _read(stated, kind)
    line = BARE_LEAD.sub("", _clean(_last_line(output)))
    return _read(line, kind) if _bare(line, kind) else None


def equivalent(answer: str, gold: str, kind: str) -> bool:
    """Whether a read answer equals the gold: the same letter for 'choice', else math-verify's verdict."""
    if kind == "choice":
        return _letter(answer) is not None and _letter(answer) == _letter(gold)
    from math_verify import parse, verify  # the eval extra; imported here so training never needs it

    def parsed(text: str) -> list:
        """math-verify's reading of a bare answer; timeouts off, as its signals work only in the main thread."""
        return parse(f"${_plain(unbox(text))}$", parsing_timeout=None)

    return bool(verify(parsed(gold), parsed(answer), timeout_seconds=None))


def _stated(output: str) -> str | None:
    """The text of the output's final answer statement: after a Claire marker, else the last one in plain CoT that
    ends the output (at most one line after it); an empty statement ('Final Answer:') takes the next line."""
    marked = _marked(output)
    if marked is not None:
        return _clean(unbox(marked))
    found = [
        (m.start(), m.end(), m.group(1) if m.group(1) is not None else m.group(2)) for m in STATEMENT.finditer(output)
    ]
    boxes = list(BOXED.finditer(output))
    if boxes and last_boxed(output):
        found.append((boxes[-1].start(), boxes[-1].end(), last_boxed(output)))
    if not found:
        return None
    _, end, text = max(found)
    rest = [line.strip() for line in output[end:].splitlines()[1:] if line.strip()]
    if not _clean(unbox(text)).strip("*_:. ") and rest:
        text, rest = rest[0], rest[1:]
    return _clean(unbox(text)) if len(rest) <= 1 else None


def _bare(line: str, kind: str) -> bool:
    """Whether a line holds nothing but an answer: a number ('$18.00', '3/4') or a letter ('(B)', 'Option B')."""
    if kind == "number":
        return _as_number(line) is not None
    return kind == "choice" and BARE_CHOICE.fullmatch(line) is not None


def _read(text: str, kind: str) -> str | None:
    """The answer of a kind in a statement's text, or None."""
    text = SENTENCE_END.split(text)[0].strip()
    if kind == "choice":
        return _letter(text)
    if kind == "number":
        return _number(text)
    return _plain(text) or None


def _letter(text: str) -> str | None:
    """'B', '(B)', 'b)', 'Option B', 'B) 42 kJ', '42 kJ (B)' -> 'B', else None."""
    plain = _plain(text)
    found = CHOICE.match(plain) or PAREN_CHOICE.search(plain)
    return found.group(1).upper() if found else None


def _number(text: str) -> str | None:
    """The answer number of a statement ('3 apples at $2 each, so 6' -> '6'; '18 because 9 * 2' -> '18')."""
    text = _plain(text)
    head = EXPLANATION.split(text)[0]
    text = head if NUMERIC.search(head) else text
    for segment in reversed(CONCLUSION.split(text)):
        found = NUMERIC.search(segment)
        if found:
            return found.group(0).lstrip("+").rstrip(".").replace(" ", "")
    return None
