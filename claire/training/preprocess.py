"""Raw causality traces in, conversational prompt/completion rows out (the report's preprocessing)."""

import hashlib
import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import datasets
from omegaconf import DictConfig

from claire import ClaireError

log = logging.getLogger(__name__)

PACKAGE_DATA = Path(__file__).parents[1] / "data"
TRACE_TAGS = ("<think>", "</think>", "<causality>", "</causality>")
NATIVE_MARKERS = {"think": "<|im_start|>think", "causality": "<|im_start|>causality", "answer": "<|im_start|>answer"}


HOW_TO_POINT = (
    "make it with `python -m claire.generate`, or point data.path at a hub dataset id, "
    "a local .jsonl/.parquet file or a saved dataset folder"
)


class MalformedTrace(ValueError):
    """A raw trace that cannot be converted; its message is the drop reason."""


def split_trace(response: str) -> dict[str, str]:
    """Cut '<think>A<causality>B</causality>C</think>D' into its parts; raise MalformedTrace(reason)."""
    if not response or not response.strip():
        raise MalformedTrace("empty")
    counts = {tag: response.count(tag) for tag in TRACE_TAGS}
    if any(n > 1 for n in counts.values()) or len(set(counts.values())) > 1:
        raise MalformedTrace("unbalanced_tags")
    if counts["<think>"] == 0:
        raise MalformedTrace("missing_tags")
    positions = [response.index(tag) for tag in ("<think>", "<causality>", "</causality>", "</think>")]
    if positions != sorted(positions) or response[: positions[0]].strip():
        raise MalformedTrace("misnested_tags")
    before, rest = response.split("<think>", 1)[1].split("<causality>", 1)
    causality, rest = rest.split("</causality>", 1)
    after, answer = rest.split("</think>", 1)
    if not answer.strip():
        raise MalformedTrace("no_answer")
    if not causality.strip():
        raise MalformedTrace("empty_causality")
    return {
        k: v.strip()
        for k, v in zip(("think", "causality", "after", "answer"), (before, causality, after, answer), strict=True)
    }


def convert_trace(response: str, markers: str = "native") -> str:
    """The report's conversion: tags become ChatML markers (native) or stay as new special tokens (special)."""
    parts = split_trace(response)
    if markers == "special":
        lines = ["<think>", parts["think"], "<causality>", parts["causality"], "</causality>", parts["after"]]
        lines += ["</think>", parts["answer"]]
    else:
        lines = [NATIVE_MARKERS["think"], parts["think"], NATIVE_MARKERS["causality"], parts["causality"]]
        lines += [parts["after"], NATIVE_MARKERS["answer"], parts["answer"]]
    return "\n".join(line for line in lines if line)


def to_conversation(question: str, completion: str, system_prompt: str | None = None) -> dict[str, list]:
    """A conversational prompt/completion row, so trl puts the loss on the completion only."""
    prompt = [{"role": "system", "content": system_prompt}] if system_prompt else []
    prompt.append({"role": "user", "content": question})
    return {"prompt": prompt, "completion": [{"role": "assistant", "content": completion}]}


def load_raw(data: DictConfig) -> dict[str, datasets.Dataset]:
    """The train and eval splits of data.path: hub id, local file or folder, or claire:<packaged file>."""
    splits = {"train": data.train_split, "eval": data.eval_split}
    loaded = _load_any(str(data.path), data.config_name)
    if data.split_column and set(loaded) == {"train"} and data.split_column in loaded["train"].column_names:
        rows = loaded["train"]
        loaded = {s: rows.filter(lambda r, s=s: r[data.split_column] == s) for s in set(splits.values())}
    missing = [name for name in splits.values() if name not in loaded or len(loaded[name]) == 0]
    if missing:
        raise ClaireError(
            f"data.path={data.path} has no rows for split(s) {missing}; it has {sorted(loaded)}: "
            "set data.train_split / data.eval_split (or data.split_column) to match"
        )
    for field in (data.question_field, data.response_field):
        if field not in loaded[data.train_split].column_names:
            raise ClaireError(
                f"data.path={data.path} has no column {field!r}; columns are "
                f"{loaded[data.train_split].column_names}: set data.question_field / data.response_field"
            )
    limits = {"train": data.max_train_rows, "eval": data.max_eval_rows}
    return {role: _first(loaded[name], limits[role]) for role, name in splits.items()}


def _first(rows: datasets.Dataset, limit: int | None) -> datasets.Dataset:
    return rows if limit is None or limit >= len(rows) else rows.select(range(limit))


def _load_any(
    path: str, config_name: str | None, setting: str = "data.path", how: str = HOW_TO_POINT
) -> dict[str, datasets.Dataset]:
    """Load a dataset from wherever `path` points; one-line error naming `setting` if nothing is there."""
    if path.startswith("claire:"):
        path = str(PACKAGE_DATA / f"{path.removeprefix('claire:')}.jsonl")
    local = Path(path)
    try:
        if local.is_file():
            kind = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}[local.suffix]
            return dict(datasets.load_dataset(kind, data_files=str(local)))
        if (local / "dataset_dict.json").exists() or (local / "dataset_info.json").exists():
            found = datasets.load_from_disk(str(local))
            return dict(found) if isinstance(found, datasets.DatasetDict) else {"train": found}
        if local.exists() or "/" in path:  # a folder of data files, or a hub id: the hub loading path
            return dict(datasets.load_dataset(path, config_name))
    except (FileNotFoundError, ValueError, KeyError, ConnectionError, OSError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        where = "" if local.exists() else "is no local file or folder, and "
        raise ClaireError(f"{setting}={path} {where}could not be loaded ({reason}); {how}") from error
    raise ClaireError(f"{setting}={path} does not exist; {how}")


def prepare_split(rows: datasets.Dataset, data: DictConfig, markers: str) -> tuple[datasets.Dataset, Counter]:
    """Convert raw rows to prompt/completion; drop malformed ones and count them per reason."""
    kept, dropped = [], Counter()
    for row in rows:
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
