"""GRPO's rewards, the `reward` config group: plain functions of a completion and its row's gold fields, each with
a weight (reward.weights), called the way trl calls reward functions.

- answer: 1.0 when the answer section states the gold answer (the row's `answer`), read and judged as
  claire.evaluate does (reward.answer_kind: `causal` as claire_causal scores it, `number` / `choice` as the claire
  filter reads gsm8k / gpqa), else 0.0. Only the answer section counts: where evaluation falls back on an output's
  last line or a statement in its trace, this scores 0.
- graph_f1: F1 of the <causality> block's edges against the row's gold `edges`, as claire_causal scores it; 0.0
  without a block, None (no reward) for a row without gold edges (gsm8k).
- format: 1.0 for one well-formed trace that does not loop (claire.completions), else 0.0.
- loop: -1.0 for a completion that ends repeating one line or n-gram (claire.completions.looping), else 0.0.

trl decodes completions skipping special tokens, which drops the trace tags of markers=special; given a tokenizer
that has them as tokens, these functions re-decode `completion_ids` keeping them (claire.completions.decode).
"""

import math
from collections.abc import Callable, Mapping
from typing import Any

from claire import ClaireError, answers
from claire.completions import answer_section, causality_section, decode, looping, marker_ids, well_formed
from claire.graphs import graph_metrics

ANSWER_KINDS = ("causal", "number", "choice")
Reward = Callable[..., list[float | None]]


def answer_score(text: str, gold: str, kind: str) -> float:
    """1.0 if the answer section states the gold answer, as evaluation reads and judges it, else 0.0."""
    if answer_section(text) is None:
        return 0.0
    if kind == "causal":
        return float(answers.causal_correct(text, gold))
    read, truth = answers.read_answer(text, kind), answers.read_answer(str(gold), kind)  # '#### 72', '1,080' too
    return float(read is not None and truth is not None and _same(read, truth, kind))


def _same(read: str, gold: str, kind: str) -> bool:
    """Evaluation's verdict without math-verify (an eval extra): the same letter, or the same number."""
    if kind == "choice":
        return answers.equivalent(read, gold, kind)
    mine, theirs = _value(read), _value(gold)
    return abs(mine - theirs) <= 1e-6 * max(1.0, abs(theirs))


def _value(number: str) -> float:
    """A number as the reader reads it ('72', '-0.5', '3/4') as a float; NaN for a zero denominator."""
    numerator, _, denominator = number.partition("/")
    if not denominator:
        return float(numerator)
    return float(numerator) / float(denominator) if float(denominator) else math.nan


def graph_score(text: str, edges: list | None) -> float | None:
    """F1 of the <causality> block's edges against the gold edges; 0.0 without a block, None without gold edges."""
    if not edges:
        return None
    if causality_section(text) is None:
        return 0.0
    names = sorted({str(v) for edge in edges for v in edge})  # as claire_causal's process_results names them
    return graph_metrics(text, edges, names)["f1"]


def format_score(text: str) -> float:
    """1.0 for one well-formed trace that does not loop, else 0.0."""
    return float(well_formed(text) and not looping(text))


def loop_score(text: str) -> float:
    """-1.0 for a completion that ends in a loop, else 0.0."""
    return -1.0 if looping(text) else 0.0


def _answer(text: str, row: dict, kind: str) -> float | None:
    if "answer" not in row:
        raise ClaireError("the reward answer needs the dataset column 'answer' (the gold answer); give it or drop it")
    return None if row["answer"] is None else answer_score(text, row["answer"], kind)


SCORERS: dict[str, Callable[[str, dict, str], float | None]] = {
    "answer": _answer,
    "graph_f1": lambda text, row, kind: graph_score(text, row.get("edges")),
    "format": lambda text, row, kind: format_score(text),
    "loop": lambda text, row, kind: loop_score(text),
}


def completion_texts(completions: list, completion_ids: list | None = None, tokenizer: Any = None) -> list[str]:
    """The completions as text: re-decoded from their ids where the tokenizer has trace tags as tokens, else trl's."""
    if tokenizer is not None and completion_ids is not None and marker_ids(tokenizer):
        return [decode(tokenizer, ids) for ids in completion_ids]
    return [c if isinstance(c, str) else c[-1]["content"] for c in completions]  # plain, or conversational


def reward_function(name: str, kind: str, tokenizer: Any = None) -> Reward:
    """The reward `name` in trl's calling convention, named so that trl logs rewards/<name>/mean."""
    score = SCORERS[name]

    def reward(prompts: list, completions: list, completion_ids: list | None = None, **columns: Any) -> list:
        texts = completion_texts(completions, completion_ids, tokenizer)
        rows = [{key: columns[key][i] for key in ("answer", "edges") if key in columns} for i in range(len(texts))]
        return [score(text, row, kind) for text, row in zip(texts, rows, strict=True)]

    reward.__name__ = reward.__qualname__ = name
    return reward


def build(reward_cfg: Mapping, tokenizer: Any = None) -> tuple[list[Reward], list[float]]:
    """The reward functions reward.weights names, and their weights, in one order."""
    check(reward_cfg)
    weights = reward_cfg["weights"]
    functions = [reward_function(name, reward_cfg["answer_kind"], tokenizer) for name in weights]
    return functions, [float(weights[name]) for name in weights]


def check(reward_cfg: Mapping) -> None:
    """Refuse a reward group with an unknown answer kind, or weights that are not known names with numbers."""
    known = ", ".join(SCORERS)
    kind, weights = reward_cfg.get("answer_kind"), reward_cfg.get("weights")
    if kind not in ANSWER_KINDS:
        raise ClaireError(f"reward.answer_kind={kind} is not one of {', '.join(ANSWER_KINDS)}")
    if not isinstance(weights, Mapping) or not weights:
        raise ClaireError(f"reward.weights={weights} must map reward names to numbers; known rewards: {known}")
    for name, weight in weights.items():
        if name not in SCORERS:
            raise ClaireError(f"reward.weights.{name} is not a known reward; known rewards: {known}")
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight):
            raise ClaireError(f"reward.weights.{name}={weight} is not a number")
