"""The Claire answer reader as an lm-eval filter (`filter_list` entry `claire` in Claire's task YAMLs)."""

from collections.abc import Iterable

from lm_eval.api.filter import Filter

from claire import answers

INVALID = "[invalid]"  # lm-eval's own fallback for a response its filters cannot read


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
