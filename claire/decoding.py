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
    low, high = decode.get("min_thinking_tokens"), decode.get("max_thinking_tokens")
    if low and high and low > high:
        raise ClaireError(f"decode.min_thinking_tokens={low} is above decode.max_thinking_tokens={high}")
    if high and decode.max_new_tokens and high >= decode.max_new_tokens:
        raise ClaireError(
            f"decode.max_thinking_tokens={high} leaves no room to answer within decode.max_new_tokens="
            f"{decode.max_new_tokens}; raise max_new_tokens above it"
        )
    if decode.name == "vote" and (decode.get("samples") or 0) < 2:
        raise ClaireError(f"decode=vote needs decode.samples >= 2 (got {decode.get('samples')})")


class BudgetForcing(LogitsProcessor):
    """s1's budget forcing as a logits processor: "Wait" instead of an early end of thinking, the answer marker at
    the cap. Each row of the batch keeps its own count of waits and its own queue of tokens being forced."""

    def __init__(
        self,
        tokenizer: Any,
        prompt_length: int,
        markers: str = "native",
        min_thinking_tokens: int | None = None,
        max_thinking_tokens: int | None = None,
        max_waits: int = 1,
        wait: str = "\nWait",
    ) -> None:
        encode = lambda text: tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
        self.end, self.newline, self.wait = encode(end_of_thinking(markers)), encode("\n"), encode(wait)
        self.causality = encode("<causality>" if markers == "special" else NATIVE_MARKERS["causality"])
        ends = {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")}
        self.stops = ends - {None, tokenizer.unk_token_id}  # ending the turn leaves the thinking part too
        self.prompt_length = prompt_length
        self.low, self.high, self.max_waits = min_thinking_tokens or 0, max_thinking_tokens, max_waits
        self.waits: list[int] = []
        self.queues: list[list[int]] = []
        self.answering: list[bool] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """Scores with each row's forced token, or its early exits banned, applied."""
        if not self.queues:
            rows = len(input_ids)
            self.waits, self.queues, self.answering = [0] * rows, [[] for _ in range(rows)], [False] * rows
        thought = input_ids.shape[1] - self.prompt_length
        for row, ids in enumerate(input_ids.tolist()):
            generated = ids[self.prompt_length :]
            written = self._written(generated)  # how much of the end-of-thinking marker the row has written
            if not self.queues[row] and not self.answering[row]:
                if written == len(self.end):
                    self.answering[row] = True
                elif self.high is not None and thought >= self.high:
                    self.queues[row] = self.end[written:] + self.newline if written else self.newline + self.end
                    self.queues[row] += [] if written else self.newline
                    self.answering[row] = True
                elif thought < self.low and self.waits[row] < self.max_waits:
                    leaving = self._leaving(generated, written)
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

    def _leaving(self, generated: list[int], written: int) -> set[int]:
        """The tokens that would end the thinking part now: the end marker's next token, or ending the turn.

        With native markers the first token of `<|im_start|>answer` also opens the causality block, so before that
        block is written it is not an exit."""
        opened = len(self.end) == 1 or any(
            generated[i : i + len(self.causality)] == self.causality for i in range(len(generated))
        )
        return self.stops | ({self.end[written]} if written or opened else set())


def generate_kwargs(decode: DictConfig, tokenizer: Any, prompt_length: int, markers: str = "native") -> dict:
    """Keyword arguments of `model.generate` for this decoding (a fresh BudgetForcing per call: it holds state)."""
    kwargs: dict[str, Any] = {"max_new_tokens": decode.max_new_tokens}
    sampled = decode.name == "vote" or bool(decode.get("temperature"))
    kwargs |= {"do_sample": sampled}
    if sampled:
        kwargs |= {"temperature": decode.get("temperature") or 1.0, "top_p": decode.get("top_p") or 1.0}
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
        )
        kwargs["logits_processor"] = [forcing]
    return kwargs
