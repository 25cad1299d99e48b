"""The Claire answer reader as an lm-eval filter, registered by name: `function: claire` in any task YAML.

Claire's own task YAMLs name the class (`!function claire.evaluation.tasks.filters.ClaireAnswer`) so that they also
work from lm-eval's own CLI, where nothing has imported this module. claire.evaluate adds the filter, as the
`claire` row, to the stock lm-eval tasks whose answers it knows how to read (STOCK_READERS).
"""

from collections.abc import Iterable
from typing import Any

from lm_eval.api.filter import Filter
from lm_eval.api.registry import register_filter

from claire import answers

INVALID = "[invalid]"  # lm-eval's own fallback for a response its filters cannot read
NAME = "claire"
# Stock lm-eval task families (by name prefix): the answer kind and the document field holding the gold answer.
STOCK_READERS = {"gsm8k": ("number", "answer"), "gpqa": ("choice", "answer"), "minerva_math": ("math", "answer")}


@register_filter(NAME)
class ClaireAnswer(Filter):
    """Each response's final answer read by claire.answers, in the task's target form."""

    def __init__(self, kind: str, gold_field: str = "answer") -> None:
        if kind not in answers.KINDS:
            raise ValueError(f"ClaireAnswer kind={kind!r} is not one of {answers.KINDS}")
        super().__init__()
        self.kind, self.gold_field = kind, gold_field

    def apply(self, resps: Iterable[list[str]], docs: list[dict]) -> list[list[str]]:
        """Each response's answer: the gold itself when math-verify says equal, else the read answer or [invalid]."""
        return [
            [self.read(response, doc) for response in responses] for responses, doc in zip(resps, docs, strict=True)
        ]

    def read(self, response: str, doc: dict) -> str:
        """One response's filtered answer."""
        # lm-eval's exact_match compares this string with the target string, so an answer equal to the gold in
        # value ('$1,080.00' for 1080, '0.5' for 1/2) is emitted as the gold itself, and any other read answer
        # as read (it differs from the gold, so it scores 0); gsm8k's gold is what follows its '#### '.
        gold = str(doc[self.gold_field]).split("####")[-1].strip()
        answer = answers.read_answer(response if isinstance(response, str) else "", self.kind)
        if answer is None:
            return INVALID
        if answers.equivalent(answer, gold, self.kind):
            return gold
        return f"({answer})" if self.kind == "choice" else answer


def stock_reader(task_name: str) -> tuple[str, str] | None:
    """The (kind, gold field) of a stock task family Claire's reader knows, else None."""
    return next((reader for prefix, reader in STOCK_READERS.items() if task_name.startswith(prefix)), None)


def add_reader(task: Any) -> bool:
    """Give a generative lm-eval task a `claire` filter (the reader for its family) unless it has one; True if added."""
    from lm_eval.filters import build_filter_ensemble

    filter_list = task.config.filter_list or [{"name": "none", "filter": [{"function": "take_first"}]}]
    reader = stock_reader(task.config.task)
    if reader is None or any(entry.get("name") == NAME for entry in filter_list):
        return False
    kwargs = {"kind": reader[0], "gold_field": reader[1]}
    steps = [{"function": NAME, **kwargs}, {"function": "take_first"}]
    task.set_config("filter_list", [*filter_list, {"name": NAME, "filter": steps}])
    # a built task reads filter_list only in its constructor, and lm-eval has no call to add one afterwards
    task._filters.append(build_filter_ensemble(NAME, [[NAME, kwargs], ["take_first", None]]))
    return True


@register_filter("claire_causal_vote")
class CausalVote(Filter):
    """Self-consistency for the causal suite, whose scoring reads whole completions (graph and answer): the first
    completion whose answer (read as claire.answers reads causal answers) the most completions give."""

    def apply(self, resps: Iterable[list[str]], docs: list[dict]) -> list[str]:
        """One completion per document (as take_first leaves it): a majority answer's first."""
        from lm_eval.filters.selection import MajorityVoteFilter

        chosen = []
        for responses in resps:
            read = [answers.causal_key(response) for response in responses]
            voted = [key for key in read if key]
            if not voted:
                chosen.append(responses[0])
                continue
            (winner,) = next(iter(MajorityVoteFilter().apply([voted], None)))
            chosen.append(responses[read.index(winner)])
        return chosen


def vote(task: Any, samples: int, temperature: float, top_p: float | None = None) -> None:
    """Turn a generative task into self-consistency over `samples` samples: lm-eval's repeats, sampling, and each
    filter pipeline voting before it takes one response (`majority_vote`); a pipeline that keeps whole completions
    (the causal suite's) votes on the answers Claire reads in them instead."""
    from lm_eval.filters import build_filter_ensemble

    from claire import ClaireError

    if (task.get_config("repeats") or 1) > 1:
        name = task.get_config("task")
        raise ClaireError(f"decode=vote: task {name} samples already (repeats={task.get_config('repeats')}); vote on "
                          "a task that generates once per item, or drop decode=vote")  # fmt: skip
    kwargs = dict(task.get_config("generation_kwargs") or {})
    sampling = {"do_sample": True, "temperature": temperature} | ({"top_p": top_p} if top_p is not None else {})
    task.set_config("generation_kwargs", kwargs | sampling)
    task.set_config("repeats", samples)
    pipelines = task.config.filter_list or [{"name": "none", "filter": [{"function": "take_first"}]}]
    task._filters = []  # a built task reads filter_list only in its constructor (as add_reader says)
    for pipeline in pipelines:
        steps = [
            [step["function"], {k: v for k, v in step.items() if k != "function"} or None]
            for step in pipeline["filter"]
        ]
        if len(steps) == 1 and steps[0][0] == "take_first":
            steps = [["claire_causal_vote", None]]
        else:
            last = len(steps) - 1 if steps[-1][0] == "take_first" else len(steps)
            steps = [*steps[:last], ["majority_vote", None], ["take_first", None]]
        task._filters.append(build_filter_ensemble(pipeline["name"], steps))
