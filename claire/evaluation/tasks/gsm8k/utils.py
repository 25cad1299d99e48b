"""Hooks of the claire_gsm8k tasks: gsm8k from the hub, or from local files named in lm-eval's metadata."""

from typing import Any

from claire import ClaireError
from claire.datafiles import load_any

HOW = "give JSONL or parquet files with gsm8k's fields (question, answer) as gsm8k_test_file / gsm8k_train_file"


def load(
    hub_path: str, hub_name: str, gsm8k_test_file: str | None = None, gsm8k_train_file: str | None = None, **_: Any
) -> dict:
    """gsm8k's splits: the test (and train) files given in metadata, else the hub dataset."""
    if not gsm8k_test_file and not gsm8k_train_file:
        return load_any(hub_path, hub_name, "hub dataset", HOW)
    if not gsm8k_test_file:
        raise ClaireError(f"gsm8k_train_file={gsm8k_train_file} is given without gsm8k_test_file; {HOW}")
    splits = {"test": one_split(gsm8k_test_file, "gsm8k_test_file")}
    if gsm8k_train_file:
        splits["train"] = one_split(gsm8k_train_file, "gsm8k_train_file")
    return splits


def load_few_shot(**kwargs: Any) -> dict:
    """load(), refusing a test file without a train file: few-shot examples never come from the test questions."""
    if kwargs.get("gsm8k_test_file") and not kwargs.get("gsm8k_train_file"):
        raise ClaireError(
            "gsm8k_train_file is required with gsm8k_test_file: claire_gsm8k draws its few-shot examples from it"
        )
    return load(**kwargs)


def one_split(path: str, key: str) -> Any:
    """The one split of a local data file (datasets calls it 'train')."""
    found = load_any(path, None, key, HOW)
    if len(found) != 1:
        raise ClaireError(f"{key}={path} holds the splits {sorted(found)}; give a file with one split")
    split = next(iter(found.values()))
    if missing := {"question", "answer"} - set(split.column_names):
        raise ClaireError(f"{key}={path} has no column {sorted(missing)}; {HOW}")
    return split
