"""Hooks of the claire_gpqa tasks: GPQA from the hub or a local file, options in claire.choices' one order."""

from typing import Any

from lm_eval.tasks.gpqa.zeroshot.utils import preprocess  # stock's text clean-up, so options read as in stock

from claire import ClaireError
from claire.choices import shuffled_options
from claire.datafiles import load_any

COLUMNS = ("Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3")
HOW = "a CSV, JSONL or parquet file with GPQA's columns (Question, Correct Answer, Incorrect Answer 1-3)"


def load(hub_path: str, hub_name: str, file_key: str, **metadata: Any) -> dict:
    """The task's GPQA set as its one split 'train': the file metadata[file_key] names, else the (gated) hub."""
    path = metadata.get(file_key)
    if path:
        found = load_any(path, None, file_key, f"give {HOW}")  # a data file's one split is 'train', as on the hub
        if list(found) != ["train"]:
            raise ClaireError(f"{file_key}={path} holds the splits {sorted(found)}; give {HOW}")
        if missing := set(COLUMNS) - set(found["train"].column_names):
            raise ClaireError(f"{file_key}={path} has no column {sorted(missing)}; give {HOW}")
        return found
    return load_any(hub_path, hub_name, "hub dataset", f"accept its terms and set HF_TOKEN, or give {file_key}: {HOW}")


def shuffled(doc: dict) -> dict:
    """The four options in an order fixed by the question text, as Claire's training questions show them."""
    incorrect = [preprocess(doc[f"Incorrect Answer {i}"]) for i in (1, 2, 3)]
    choices, letter = shuffled_options(doc["Question"], preprocess(doc["Correct Answer"]), incorrect)
    numbered = {f"choice{i + 1}": choice for i, choice in enumerate(choices)}
    return numbered | {"choices": choices, "answer": f"({letter})"}


def process_docs(dataset: Any) -> Any:
    """Every question with its options shuffled."""
    return dataset.map(shuffled)
