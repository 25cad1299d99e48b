"""Raw causality traces in, conversational prompt/completion rows out (the report's preprocessing, section 3.3)."""

import hashlib
import json
import logging
from collections import Counter
from typing import Any

import datasets
from omegaconf import DictConfig

from claire import ClaireError
from claire.traces import MalformedTrace, convert_trace

log = logging.getLogger(__name__)


def to_conversation(question: str, completion: str, system_prompt: str | None = None) -> dict[str, list]:
    """A conversational prompt/completion row, so trl puts the loss on the completion only."""
    prompt = [{"role": "system", "content": system_prompt}] if system_prompt else []
    prompt.append({"role": "user", "content": question})
    return {"prompt": prompt, "completion": [{"role": "assistant", "content": completion}]}


def prepare_split(rows: datasets.Dataset, data: DictConfig, markers: str) -> tuple[datasets.Dataset, Counter]:
    """Convert raw rows to prompt/completion; drop malformed ones and count them per reason."""
    kept, dropped = [], Counter()
    for row in rows:
        odd = [f for f in (data.response_field, data.question_field) if not isinstance(row[f], str | None)]
        if odd:  # a number or a list where text should be
            dropped[f"{odd[0]}_not_text"] += 1
            continue
        try:
            completion = convert_trace(row[data.response_field], markers)
        except MalformedTrace as reason:
            dropped[str(reason)] += 1
            continue
        question = row[data.question_field]
        if not question or not str(question).strip():
            dropped["empty"] += 1
            continue
        kept.append(to_conversation(str(question).strip(), completion, data.system_prompt))
    return datasets.Dataset.from_list(kept), dropped


GOLD = ("edges",)  # gold fields a reward reads besides the answer (the causal suite's graph), kept when present


def prepare_prompts(rows: datasets.Dataset, data: DictConfig) -> tuple[datasets.Dataset, Counter]:
    """Rows for reinforcement learning: the prompt as SFT builds it, the gold answer, and the gold graph if any."""
    kept, dropped = [], Counter()
    for row in rows:
        question, gold = row[data.question_field], row[data.answer_field]
        if not isinstance(question, str) or not question.strip():
            dropped["empty" if not question else f"{data.question_field}_not_text"] += 1
            continue
        if gold is None or not str(gold).strip():
            dropped["no_answer"] += 1
            continue
        prompt = to_conversation(question.strip(), "", data.system_prompt)["prompt"]
        # GSM8K's gold solutions end with "#### <answer>": the answer is what follows
        answer = str(gold).rsplit("####", 1)[-1].strip()
        kept.append({"prompt": prompt, "answer": answer, **{k: row[k] for k in GOLD if k in row}})
    return datasets.Dataset.from_list(kept), dropped


def drop_long_prompts(split: datasets.Dataset, tokenizer: Any, max_prompt: int, dropped: Counter) -> datasets.Dataset:
    """Drop rows whose prompt (with the generation prompt) exceeds max_prompt tokens."""
    lengths = [len(_chat_ids(tokenizer, row["prompt"], generation_prompt=True)) for row in split]
    keep = [i for i, n in enumerate(lengths) if n <= max_prompt]
    dropped["too_long"] += len(split) - len(keep)
    return split.select(keep)


def drop_too_long(
    split: datasets.Dataset, tokenizer: Any, max_length: int, dropped: Counter
) -> tuple[datasets.Dataset, int]:
    """Drop rows whose whole conversation exceeds max_length tokens; return them and the longest prompt."""
    prompt_lengths = [len(_chat_ids(tokenizer, row["prompt"], generation_prompt=True)) for row in split]
    full_lengths = [len(_chat_ids(tokenizer, row["prompt"] + row["completion"])) for row in split]
    keep = [i for i, n in enumerate(full_lengths) if n <= max_length]
    dropped["too_long"] += len(split) - len(keep)
    return split.select(keep), max(prompt_lengths, default=0)


def _chat_ids(tokenizer: Any, messages: list[dict], generation_prompt: bool = False) -> list[int]:
    """Token ids of messages under the tokenizer's own chat template."""
    out = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=generation_prompt)
    return out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out


def check_drops(name: str, total: int, dropped: Counter, max_fraction: float) -> None:
    """Stop with one line when a split lost more than max_fraction of its rows."""
    lost = sum(dropped.values())
    if total and lost / total > max_fraction:
        reasons = ", ".join(f"{k}={v}" for k, v in dropped.most_common())
        raise ClaireError(
            f"{lost} of {total} {name} rows were dropped ({reasons}), more than "
            f"data.max_drop_fraction={max_fraction}; fix the data or raise data.max_drop_fraction"
        )


def fingerprint(*splits: datasets.Dataset) -> str:
    """A content hash of the prepared rows, recorded in the run manifest."""
    digest = hashlib.sha256()
    for split in splits:
        for row in split:
            digest.update(json.dumps(row, sort_keys=True).encode())
    return digest.hexdigest()
