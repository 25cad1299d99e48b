"""What a model wrote: its generated ids as text (Claire's trace markers kept), and whether that text is a
well-formed trace or a loop.

Three forms of a trace are read, as claire.answers and claire.graphs read them: the raw tags (`<think>`,
`<causality>`, `</causality>`, `</think>`: markers=special decoded with its tags kept), the native ChatML markers
(`<|im_start|>think`, `<|im_start|>causality`, `<|im_start|>answer`), and those markers as they decode when special
tokens are skipped (lm-eval's and trl's decoding): bare `think`, `causality` and `answer` lines.
"""

import re
from typing import Any

from claire import answers
from claire.graphs import BLOCK_PATTERNS
from claire.traces import TRACE_TAGS, MalformedTrace, split_trace

# The start of each section in the native form, with its markers kept or decoded as bare lines.
SECTION_MARKERS = {
    name: re.compile(rf"<\|im_start\|>{name}\b|^{name}[ \t]*$", re.MULTILINE)
    for name in ("think", "causality", "answer")
}
LOOP_MAX_PERIOD = 300  # characters: a looping line or n-gram is at most this long
LOOP_MIN_CHARS = 64  # a repeated tail shorter than this ('10000', '...') is not a loop
LOOP_MIN_REPEATS = 4  # a unit repeated fewer times is a list or an emphasis, not a loop


def marker_ids(tokenizer: Any) -> set[int]:
    """The ids of Claire's trace tags that are tokens of this tokenizer (markers=special), else none."""
    vocab = tokenizer.get_vocab()
    return {vocab[tag] for tag in TRACE_TAGS if tag in vocab}


def decode(tokenizer: Any, ids: Any) -> str:
    """The text of generated ids with every special token dropped but Claire's trace tags."""
    ids = ids.tolist() if hasattr(ids, "tolist") else ids  # a tensor's elements would never match an id
    ids = [ids] if isinstance(ids, int) else list(ids)
    kept = marker_ids(tokenizer)
    if not kept:
        return tokenizer.decode(ids, skip_special_tokens=True)
    dropped = set(tokenizer.all_special_ids) - kept
    return tokenizer.decode([t for t in ids if t not in dropped], skip_special_tokens=False)


def looping(text: str, min_repeats: int = LOOP_MIN_REPEATS, min_chars: int = LOOP_MIN_CHARS) -> bool:
    """Whether the text ends repeating one line or n-gram, at least min_repeats times and min_chars in all.

    Whitespace is normalised first, and the last repeat may be cut short (the token limit cuts mid-line).
    """
    flat = " " + " ".join(text.split())  # each word after one space: a repeat at the very start is whole too
    for period in range(1, min(LOOP_MAX_PERIOD, len(flat) // min_repeats) + 1):
        span = max(period * min_repeats, min_chars)
        if span <= len(flat) and flat[-span + period :] == flat[-span:-period]:
            return True
    return False


def answer_section(text: str) -> str | None:
    """The answer section's text where the answer reader finds it (after an answer marker), or None if it has none."""
    for pattern in answers.ANSWER_MARKERS:  # the reader's own search (answers.final_answer), marker by marker
        found = pattern.findall(text)
        if found and found[-1].strip():
            return found[-1].strip()
    return None


def causality_section(text: str) -> str | None:
    """The text of the <causality> block(s) as claire.graphs finds it, or None if the output has none."""
    for pattern in BLOCK_PATTERNS:
        blocks = pattern.findall(text)
        if blocks:
            return "\n".join(blocks)
    return None


def well_formed(text: str) -> bool:
    """Whether the text is one trace: a think section, a non-empty causality block, then a non-empty answer."""
    if "<think>" in text:  # the raw form: exactly what training converts (claire.traces)
        try:
            split_trace(text)
        except MalformedTrace:
            return False
        return True
    found = [list(pattern.finditer(text)) for pattern in SECTION_MARKERS.values()]
    if any(len(matches) != 1 for matches in found):
        return False
    think, causality, answer = (matches[0] for matches in found)
    if text[: think.start()].strip() or not think.end() <= causality.start() < answer.start():
        return False
    return bool(text[causality.end() : answer.start()].strip() and answer_section(text))


def parts(text: str) -> dict[str, str | None]:
    """A completion as a person reads it: its thinking, its causality block and its answer (None where missing)."""
    block = causality_section(text)
    causality = block.strip() if block else None
    answer = answer_section(text)
    thinking = text
    for cut in (SECTION_MARKERS["answer"], re.compile(r"</think>")):
        found = cut.search(thinking)
        thinking = thinking[: found.start()] if found else thinking
    for marker in (*SECTION_MARKERS.values(), re.compile(r"</?think>|</?causality>")):
        thinking = marker.sub("", thinking)
    if causality:
        thinking = thinking.replace(causality, "")
    thinking = "\n".join(line for line in thinking.splitlines() if line.strip())
    return {"thinking": thinking or None, "causality": causality or None, "answer": answer}
