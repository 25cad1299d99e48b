"""Decontamination check: the share of eval items sharing a 13-gram with the training data (GPT-3 / lm-eval style).

Usage: python -m claire.decontamination RUN_FOLDER [--n 13]

Normalisation: text is lowercased and cut into words with re.findall(r"\\w+", ...) (letters, digits, underscore;
punctuation and whitespace only separate words). An n-gram is n consecutive words joined by one space, hashed with
blake2b (8 bytes, top 60 bits kept: stable across processes and machines, and small Python ints).
A text with fewer than n words is one n-gram of all its words, so an exact copy of a short text still matches;
such eval items are also counted under "short" (they can only match a short training text word for word).
The teacher's decontamination of training questions (claire.teacher.sources) uses the same n-grams.
Training text is the raw training split's question + response, as claire.datafiles.load_raw reads it (limits included).
"""

import argparse
import hashlib
import re
import sys
from collections.abc import Iterable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from claire import ClaireError, datafiles

WORD = re.compile(r"\w+")
QUESTION_FIELDS = ("question", "Question", "problem", "query", "input")


def tokens(text: str) -> list[str]:
    """The lowercased words of a text."""
    return WORD.findall(text.lower())


def _grams(words: list[str], n: int) -> set[int]:
    """Hashed n-grams of a word list: blake2b of the space-joined words, top 60 bits; fewer words: one of them all."""
    blake, join, as_int = hashlib.blake2b, " ".join, int.from_bytes
    spans = [words] if 0 < len(words) < n else [words[i : i + n] for i in range(len(words) - n + 1)]
    return {as_int(blake(join(span).encode(), digest_size=8).digest(), "big") >> 4 for span in spans}


def ngrams(text: str, n: int = 13) -> set[int]:
    """Hashed word n-grams of a text (stable across processes); a text shorter than n words is one n-gram."""
    return _grams(tokens(text), n)


def training_ngrams(texts: Iterable[str], n: int = 13) -> set[int]:
    """The union of the hashed n-grams of the training texts."""
    found: set[int] = set()
    for text in texts:
        found.update(ngrams(text, n))
    return found


def _id_order(item_id: str) -> tuple:
    """Numeric ids in numeric order, then the others alphabetically."""
    return (0, int(item_id), "") if item_id.isdigit() else (1, 0, item_id)


def overlap(train: set[int], items: dict[str, str], n: int = 13, examples: int = 5) -> dict:
    """How many items share at least one n-gram with train; items shorter than n words are also counted."""
    contaminated, short = [], 0
    for item_id, text in items.items():
        words = tokens(text)
        short += len(words) < n
        if not train.isdisjoint(_grams(words, n)):
            contaminated.append(item_id)
    k = len(contaminated)
    return {
        "n": n,
        "items": len(items),
        "contaminated": k,
        "share": k / len(items) if items else 0.0,
        "short": short,
        "examples": sorted(contaminated, key=_id_order)[:examples],
    }


def training_texts(data_cfg: DictConfig) -> list[str]:
    """The training rows' question + response, loaded by claire.datafiles.load_raw as training does."""

    try:
        rows = datafiles.load_raw(data_cfg)["train"]
        question, response = data_cfg.question_field, data_cfg.response_field
    except OmegaConfBaseException as error:
        raise ClaireError(f"the data config of data.path={data_cfg.get('path')} is incomplete ({error})") from None
    return [f"{row[question] or ''}\n{row[response] or ''}" for row in rows]


def _question(doc: object) -> str:
    """An eval doc's question: the first string field of QUESTION_FIELDS, else all its string fields joined."""
    if isinstance(doc, str):
        return doc
    if not isinstance(doc, dict):
        return ""
    for field in QUESTION_FIELDS:
        if isinstance(doc.get(field), str) and doc[field].strip():
            return doc[field]
    return "\n".join(value for value in doc.values() if isinstance(value, str))


def eval_items(samples_file: Path) -> dict[str, str]:
    """{str(doc_id): question} of an lm-eval per-sample log, each doc once (it appears once per filter)."""
    items: dict[str, str] = {}
    for row in datafiles.read_samples(samples_file):
        items.setdefault(str(row["doc_id"]), _question(row.get("doc")))
    return items


def task_samples(run: Path) -> dict[str, Path]:
    """{task: samples file} under run/eval/<suite>-<timestamp>/<label>/, the first found per task."""
    found: dict[str, Path] = {}
    for path in sorted(run.glob("eval/*/*/samples_*.jsonl")):
        found.setdefault(path.name.removeprefix("samples_").removesuffix(".jsonl"), path)
    return found


def run_data(run: Path) -> DictConfig:
    """The data section of a training run folder's config.yaml."""
    saved = run / "config.yaml"
    if not saved.is_file():
        raise ClaireError(f"{run} is not a claire.train run folder (no config.yaml)")
    try:
        cfg = OmegaConf.load(saved)
    except (OmegaConfBaseException, ValueError) as error:
        raise ClaireError(f"{saved} could not be read ({str(error).splitlines()[0]})") from None
    if not isinstance(cfg, DictConfig) or not isinstance(cfg.get("data"), DictConfig):
        raise ClaireError(f"{saved} has no data section; is {run} a claire.train run folder?")
    return cfg.data


def for_run(run: Path, n: int = 13, samples: dict[str, Path] | None = None) -> dict[str, dict]:
    """{task: overlap | train name and rows} for each evaluated task of a run folder ({} without samples); samples
    default to the run's own eval/ folder (claire.report passes the evaluations it found elsewhere too)."""
    run = Path(run)
    data_cfg = run_data(run)
    samples = task_samples(run) if samples is None else samples
    if not samples:
        return {}
    texts = training_texts(data_cfg)
    train = training_ngrams(texts, n)
    about = {"train": data_cfg.get("name"), "train_rows": len(texts)}
    return {task: overlap(train, eval_items(path), n) | about for task, path in sorted(samples.items())}


def table(results: dict[str, dict], n: int = 13) -> str:
    """The overlap per task as a Markdown table."""
    lines = [f"| Task | Items | With {n}-gram overlap | Share |", "|---|---:|---:|---:|"]
    for task, result in results.items():
        lines.append(f"| {task} | {result['items']} | {result['contaminated']} | {result['share']:.1%} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """CLI: print the overlap table of a run folder; exit 2 with one line on a bad folder."""
    parser = argparse.ArgumentParser(prog="claire.decontamination", description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a claire.train run folder (config.yaml, eval/...)")
    parser.add_argument("--n", type=int, default=13, help="n-gram length in words (default 13)")
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error("--n must be at least 1")
    try:
        results = for_run(args.run, args.n)
    except ClaireError as error:
        print(f"claire.decontamination: error: {error}", file=sys.stderr)
        return 2
    if not results:
        print(f"claire.decontamination: no samples_*.jsonl under {args.run}/eval/*/*/; evaluate the run first")
        return 0
    train = next(iter(results.values()))
    print(f"Training data: {train['train']} ({train['train_rows']} rows)\n")
    print(table(results, args.n))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
