"""How a Claire model decodes (the decode group: greedy, budget, vote), shared by claire.chat, claire.evaluate and
claire.serve so that a setting means the same everywhere.

Budget forcing follows s1 (simplescaling/s1): under a minimum thinking budget, when the model tries to leave the
thinking part, the end-of-thinking marker is suppressed and "Wait" is appended instead (at most `max_waits` times);
at a maximum budget the answer marker is forced so it answers. For Claire the end of thinking is the answer marker
(`<|im_start|>answer`, markers=native) or `</think>` (markers=special). transformers has no thinking budget, and s1
drives it by stopping and restarting generation; here it is one LogitsProcessor inside a single `generate` call.
"""

from typing import Any

import torch
from omegaconf import DictConfig
from transformers import LogitsProcessor

from claire import ClaireError
from claire.traces import NATIVE_MARKERS

DECODES = ("greedy", "budget", "vote")


def end_of_thinking(markers: str) -> str:
    """The text that ends the thinking part (and starts the answer) in a model trained with these markers."""
    return "</think>" if markers == "special" else NATIVE_MARKERS["answer"]


ANSWER_ROOM = 32  # tokens after a thinking cap: the forced marker (4), a Wait being forced, and a short answer


def check(decode: DictConfig) -> None:
    """One line naming a decode setting that cannot work and what would, before any model loads."""
    if decode.name not in DECODES:
        raise ClaireError(f"decode={decode.name} is not a decoding; choose one of {', '.join(DECODES)}")
    for key in ("max_new_tokens", "min_thinking_tokens", "max_thinking_tokens", "max_waits", "samples"):
        value = decode.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise ClaireError(f"decode.{key}={value} must be a whole number >= 0 (or null)")
    if decode.max_new_tokens is not None and decode.max_new_tokens < 1:
        raise ClaireError("decode.max_new_tokens=0 generates nothing; give at least 1")
    if decode.name == "budget":
        check_budget(decode)
    if decode.name == "vote":
        if (decode.get("samples") or 0) < 2:
            raise ClaireError(f"decode=vote needs decode.samples >= 2 (got {decode.get('samples')})")
        if not decode.get("temperature") or decode.temperature <= 0:
            raise ClaireError(f"decode=vote samples: decode.temperature={decode.get('temperature')} must be above 0")


def check_budget(decode: DictConfig) -> None:
    """The budget's knobs: whole numbers, a minimum not above the cap, room to answer after the cap."""
    low, high = decode.get("min_thinking_tokens"), decode.get("max_thinking_tokens")
    if decode.get("max_waits") is None or not isinstance(decode.get("wait"), str) or not decode.wait:
        raise ClaireError("decode=budget needs decode.max_waits (a whole number) and decode.wait (the text, e.g. Wait)")
    if high is not None and high < 1:
        raise ClaireError("decode.max_thinking_tokens=0 would answer at once; give at least 1, or null for no cap")
    if low is not None and high is not None and low > high:
        raise ClaireError(f"decode.min_thinking_tokens={low} is above decode.max_thinking_tokens={high}")
    check_room(high, decode.max_new_tokens, "decode.max_new_tokens")


def check_room(high: int | None, total: int | None, name: str) -> None:
    """A generation length that leaves ANSWER_ROOM tokens to answer after the thinking cap."""
    if high is not None and total is not None and total < high + ANSWER_ROOM:
        raise ClaireError(
            f"decode.max_thinking_tokens={high} leaves no room to answer within {name}={total}; give at least "
            f"{high + ANSWER_ROOM}"
        )


class BudgetForcing(LogitsProcessor):
    """s1's budget forcing as a logits processor: "Wait" instead of an early end of thinking, the answer marker at
    the cap. Each row of the batch keeps its own count of waits and its own queue of tokens being forced."""

    def __init__(
        self,
        tokenizer: Any,
        prompt_length: int | None,
        markers: str = "native",
        min_thinking_tokens: int | None = None,
        max_thinking_tokens: int | None = None,
        max_waits: int = 1,
        wait: str = "\nWait",
        eos_token_id: int | list[int] | None = None,
    ) -> None:
        encode = lambda text: tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
        self.end, self.newline, self.wait = encode(end_of_thinking(markers)), encode("\n"), encode(wait)
        self.causality = encode("<causality>" if markers == "special" else NATIVE_MARKERS["causality"])
        self.close = encode("</causality>") if markers == "special" else []  # a block the cap cuts is closed first
        given = eos_token_id if isinstance(eos_token_id, list) else [eos_token_id]  # the model's generation config
        ends = {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>"), *given}
        self.stops = ends - {None, tokenizer.unk_token_id}  # ending the turn leaves the thinking part too
        self.prompt_length = prompt_length  # None: the input's length at the first call (a server builds this unseen)
        self.low, self.high, self.max_waits = min_thinking_tokens or 0, max_thinking_tokens, max_waits
        self.waits: list[int] = []
        self.queues: list[list[int]] = []
        self.answering: list[bool] = []
        self.opened: list[bool] = []  # whether the row has written its causality block's opening marker

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """Scores with each row's forced token, or its early exits banned, applied."""
        if not self.queues:
            self.prompt_length = input_ids.shape[1] if self.prompt_length is None else self.prompt_length
            rows = len(input_ids)
            self.waits, self.queues, self.answering = [0] * rows, [[] for _ in range(rows)], [False] * rows
            self.opened = [
                len(self.end) == 1 or self._contains(ids) for ids in input_ids[:, self.prompt_length :].tolist()
            ]
        thought = input_ids.shape[1] - self.prompt_length
        recent = input_ids[:, max(self.prompt_length, input_ids.shape[1] - len(self.end) - len(self.causality)) :]
        for row, generated in enumerate(recent.tolist()):  # a row's last tokens: enough to see a marker as written
            self.opened[row] = self.opened[row] or generated[-len(self.causality) :] == self.causality
            written = self._written(generated)  # how much of the end-of-thinking marker the row has written
            if not self.queues[row] and not self.answering[row]:
                if written == len(self.end):
                    self.answering[row] = True
                elif self.high is not None and thought >= self.high:
                    self.queues[row] = self._forced_end(input_ids[row, self.prompt_length :].tolist(), written)
                    self.answering[row] = True
                elif thought < self.low and self.waits[row] < self.max_waits:
                    leaving = self.stops | ({self.end[written]} if written or self.opened[row] else set())
                    if int(scores[row].argmax()) in leaving and not written:
                        self.queues[row] = list(self.wait)
                        self.waits[row] += 1
                    else:
                        scores[row, sorted(leaving)] = -float("inf")  # a sample may not leave early either
            if self.queues[row]:
                forced = torch.full_like(scores[row], -float("inf"))
                forced[self.queues[row].pop(0)] = 0.0
                scores[row] = forced
        return scores

    def _written(self, generated: list[int]) -> int:
        """How many of the end marker's tokens the row ends with (all of them once it has left the thinking)."""
        for done in range(len(self.end), 0, -1):
            if generated[-done:] == self.end[:done]:
                return done
        return 0

    def _contains(self, generated: list[int]) -> bool:
        """Whether the causality block's opening marker is among these tokens."""
        n = len(self.causality)
        return any(generated[i : i + n] == self.causality for i in range(len(generated) - n + 1))

    def _forced_end(self, generated: list[int], written: int) -> list[int]:
        """The tokens that end the thinking at the cap: the rest of a half-written marker, or a new line and the whole
        marker; with special markers, a causality block the cap cut is closed first."""
        if written:
            return self.end[written:] + self.newline
        opened = [i for i in range(len(generated)) if generated[i : i + len(self.causality)] == self.causality]
        closed = [i for i in range(len(generated)) if self.close and generated[i : i + len(self.close)] == self.close]
        unclosed = bool(self.close) and bool(opened) and (not closed or closed[-1] < opened[-1])
        return (self.close if unclosed else []) + self.newline + self.end + self.newline


def generate_kwargs(
    decode: DictConfig, tokenizer: Any, prompt_length: int | None, markers: str = "native", eos_token_id: Any = None
) -> dict:
    """Keyword arguments of `model.generate` for this decoding (a fresh BudgetForcing per call: it holds state)."""
    kwargs: dict[str, Any] = {"max_new_tokens": decode.max_new_tokens}
    sampled = decode.name == "vote" or bool(decode.get("temperature"))
    kwargs |= {"do_sample": sampled}
    if sampled:
        kwargs["temperature"] = decode.temperature
        if decode.get("top_p") is not None:
            kwargs["top_p"] = decode.top_p
    if decode.name == "vote":
        kwargs["num_return_sequences"] = decode.samples
    if decode.name == "budget":
        forcing = BudgetForcing(
            tokenizer,
            prompt_length,
            markers,
            decode.min_thinking_tokens,
            decode.max_thinking_tokens,
            decode.max_waits,
            decode.wait,
            eos_token_id,
        )
        kwargs["logits_processor"] = [forcing]
    return kwargs
