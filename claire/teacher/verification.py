"""Checking a teacher's trace: tags well formed and nested, a final answer, a sane length, and the right answer."""

from typing import Any

from claire.answers import answer_matches
from claire.traces import MalformedTrace, split_trace


def check_trace(row: dict, entry: dict, rules: Any) -> str:
    """'ok', or why the trace is rejected (refused, truncated, a MalformedTrace reason, too_short, too_long...)."""
    content, finish = entry.get("content") or "", str(entry.get("finish_reason"))
    if finish.startswith("refused"):
        return "refused"
    if finish == "length":
        return "truncated"
    if len(content) > rules.max_chars:
        return "too_long"
    try:
        parts = split_trace(content)
    except MalformedTrace as reason:
        return str(reason)
    if len(parts["think"]) + len(parts["causality"]) + len(parts["after"]) < rules.min_trace_chars:
        return "too_short"
    if len(parts["answer"]) > rules.max_answer_chars:
        return "long_answer"
    if rules.require_correct and row.get("gold") and not is_correct(row, parts["answer"]):
        return "wrong_answer"
    return "ok"


def is_correct(row: dict, answer: str) -> bool | None:
    """Whether a final answer matches the row's gold answer (None when the row has none)."""
    return answer_matches(answer, row["gold"], row["kind"]) if row.get("gold") else None
