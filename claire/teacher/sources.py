"""Training questions from benchmark sources: uniform question rows, decontaminated, in a seeded order.

A question row: {"id", "source", "question", "gold", "kind", "choices"}. kind is "number" (gsm8k, aime),
"choice" (gpqa: gold is the letter), "math" (numina-math, olympic-arena) or "causal" (the causal suite).
Each source's spec: path (hub id, local .jsonl/.parquet file or saved dataset folder), config_name (one, a list
to concatenate, or null), split (a training split; a single-split dataset, e.g. a local file, uses its one split)
and the adapter's own keys (aime: years).
"""

import hashlib
import inspect
import logging
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from claire import ClaireError
from claire.answers import last_boxed
from claire.choices import LETTERS, shuffled_options
from claire.datafiles import load_any
from claire.decontamination import ngrams

log = logging.getLogger("claire.generate")
CHOICE_LINE = "Answer with the letter of the correct option."
GATED = ("Idavidrein/gpqa",)  # hub datasets behind a terms-of-use click
EVALUATION_SPLITS = ("test",)
SKIPPED_ANSWER_TYPES = {"CODE", "OT"}  # OlympicArena: code (judged by test cases), other (needs a human judge)


def digest(text: str) -> str:
    """The sha256 hex digest of a text."""
    return hashlib.sha256(text.encode()).hexdigest()


def question_row(
    source: str, question: str, gold: str, kind: str, choices: list[str] | None = None, own_id: Any = None
) -> dict:
    """A question row; its id is the row's own id when it has one, else a hash of the question text."""
    if own_id is None or not str(own_id).strip():
        ident = f"{source}-{digest(question.strip())[:12]}"
    else:
        own = str(own_id).strip()
        ident = own if own.startswith(f"{source}-") else f"{source}-{own}"
    return {"id": ident, "source": source, "question": question, "gold": gold, "kind": kind, "choices": choices}


def multiple_choice(question: str, options: list[str]) -> str:
    """The question, its options as '(A) ...' lines, and the instruction to answer with a letter."""
    lines = "\n".join(f"({letter}) {option}" for letter, option in zip(LETTERS, options, strict=False))
    return f"{question}\n\n{lines}\n\n{CHOICE_LINE}"


def gsm8k(row: dict, seed: int = 0) -> dict | None:
    """openai/gsm8k: question; answer ends with '#### N'."""
    question, found = row["question"].strip(), re.search(r"####\s*(.+?)\s*$", row["answer"])
    return question_row("gsm8k", question, found[1].replace(",", "").strip(), "number") if found else None


def gpqa(row: dict, seed: int = 0) -> dict | None:
    """Idavidrein/gpqa: the correct and three incorrect answers, in the order the evaluation tasks show them."""
    question = row["Question"].strip()
    incorrect = [row[f"Incorrect Answer {i}"].strip() for i in (1, 2, 3)]
    shown, gold = shuffled_options(question, row["Correct Answer"].strip(), incorrect)
    return question_row("gpqa", multiple_choice(question, shown), gold, "choice", shown, row.get("Record ID"))


def numina_math(row: dict, seed: int = 0) -> dict | None:
    """AI-MO/NuminaMath-CoT: problem; the gold is the solution's last \\boxed{...}, rows without one skipped."""
    gold = last_boxed(row["solution"] or "")
    return question_row("numina-math", row["problem"].strip(), gold, "math") if gold else None


def olympic_arena(row: dict, seed: int = 0) -> dict | None:
    """GAIR/OlympicArena (val split): English, figure-free problems with a checkable answer list."""
    if row.get("language") != "EN" or row.get("figure_urls"):
        return None
    if set(re.split(r"[\s,;]+", str(row.get("answer_type") or "").upper())) & SKIPPED_ANSWER_TYPES:
        return None
    answer = row.get("answer")
    answers = [answer] if isinstance(answer, str) else list(answer or [])
    gold = ", ".join(str(a).strip() for a in answers if a is not None and str(a).strip())
    if not gold or not (row.get("problem") or "").strip():
        return None
    return question_row("olympic-arena", row["problem"].strip(), gold, "math", own_id=row.get("id"))


def aime(row: dict, seed: int = 0, years: Iterable[int] | None = None) -> dict | None:
    """di-zhang-fdu/AIME_1983_2024: Question, integer Answer; only Years in [first, last] when years is given."""
    if years is not None:
        if len(years := list(years)) != 2:
            raise ClaireError(f"source aime: years={years} must be [first, last], e.g. [1983, 2021]")
        first, last = (int(y) for y in years)
        if not first <= int(row["Year"]) <= last:
            return None
    answer = str(row["Answer"]).strip()
    if not re.fullmatch(r"-?\d+", answer):
        return None
    return question_row("aime", row["Question"].strip(), str(int(answer)), "number", own_id=row.get("ID"))


def causal_suite(row: dict, seed: int = 0) -> dict | None:
    """A saved causal-suite dataset (claire.generate): id, question, answer."""
    return question_row("causal", row["question"].strip(), str(row["answer"]).strip(), "causal", own_id=row["id"])


SOURCES: dict[str, Callable[..., dict | None]] = {
    "gsm8k": gsm8k,
    "gpqa": gpqa,
    "numina-math": numina_math,
    "olympic-arena": olympic_arena,
    "aime": aime,
    "causal": causal_suite,
}


def _load(setting: str, path: str, config_name: str | None) -> dict:
    """load_any naming the setting to change, with the terms-and-token hint for gated hub datasets."""
    how = "point it at a hub dataset id, a local .jsonl/.parquet file or a saved dataset folder"
    if setting.startswith("decontaminate."):
        how += f", or set {setting.removesuffix('.path')}=null to skip that evaluation set"
    if path.startswith(GATED) and not Path(path).exists():
        how += f"; {path} is gated: accept its terms on https://huggingface.co/datasets/{path} and set HF_TOKEN"
    return load_any(path, config_name, setting, how)


def _pick_split(label: str, path: str, loaded: dict, split: str | None) -> Any:
    """The requested split, or the only one a single-split dataset (e.g. a local file) has."""
    if split in loaded:
        return loaded[split]
    if len(loaded) == 1:
        return next(iter(loaded.values()))
    raise ClaireError(f"{label}: {path} has no split {split!r}; it has {sorted(loaded)}: set split to one of them")


def _read(label: str, setting: str, spec: DictConfig) -> list[Any]:
    """The chosen split of every configured config of spec.path (datasets.Dataset objects)."""
    if not spec.get("path"):
        raise ClaireError(f"{label} has no path; set it to a hub dataset id, a local .jsonl/.parquet file or a folder")
    path, names = str(spec.path), spec.get("config_name")
    names = [None] if names is None or Path(path).is_file() else [names] if isinstance(names, str) else list(names)
    return [_pick_split(label, path, _load(setting, path, name), spec.get("split")) for name in names]


def load_source(name: str, spec: DictConfig, seed: int) -> list[dict]:
    """The source's question rows, in a seeded order (by sha256 of seed and id) that is the same on every machine."""
    if name not in SOURCES:
        raise ClaireError(f"source {name!r} is not known; choose one of {sorted(SOURCES)}")
    if spec.get("split") in EVALUATION_SPLITS:
        raise ClaireError(f"source {name}: split={spec.split} is an evaluation split; draw from a training split")
    adapter = SOURCES[name]
    options = {k: spec[k] for k in inspect.signature(adapter).parameters if k not in ("row", "seed") and k in spec}
    rows, malformed = [], []
    for part in _read(f"source {name}", f"sources.{name}.path", spec):
        for number, raw in enumerate(part, 1):
            try:
                found = adapter(raw, seed=seed, **options)
            except KeyError as missing:
                raise ClaireError(
                    f"source {name}: {spec.path} has no field {missing}; its columns are {part.column_names}: "
                    f"point path at a {name} dataset with the hub's field names"
                ) from None
            except (AttributeError, TypeError, ValueError) as error:  # a number or a list where text should be
                malformed.append(f"row {number}: {type(error).__name__}: {error}")
                continue
            if found is not None:
                rows.append(found)
    if malformed:
        log.warning("source %s: %d malformed rows dropped (%s)", name, len(malformed), malformed[0])
    if malformed and not rows:
        raise ClaireError(f"source {name}: no row of {spec.path} could be read ({malformed[0]}); check the file")
    return sorted(rows, key=lambda row: (digest(f"{seed}:{row['id']}"), row["question"], row["gold"]))


def load_references(specs: DictConfig) -> dict[str, list[str]]:
    """Evaluation texts to decontaminate against: name -> the `field` column of each spec (null specs skipped)."""
    references = {}
    for name, spec in specs.items():
        if spec is None:
            continue
        texts = []
        for part in _read(f"reference {name}", f"decontaminate.{name}.path", spec):
            if spec.field not in part.column_names:
                raise ClaireError(
                    f"reference {name}: {spec.path} has no column {spec.field!r}; columns are {part.column_names}: "
                    "set its field"
                )
            texts += [str(text) for text in part[spec.field] if text]
        references[str(name)] = texts
    return references


def normalise(text: str) -> str:
    """Lowercase with whitespace collapsed: the key for exact duplicates."""
    return " ".join(text.lower().split())


class Overlap:
    """Which reference sets a text shares a word n-gram with."""

    def __init__(
        self, references: dict[str, list[str]], n: int = 13, max_docs: int = 10, exact: Iterable[str] = ()
    ) -> None:
        # GPT-3 style 13-gram decontamination, with n-grams frequent in a reference set (in more than max_docs of its
        # distinct documents: template phrases, shared instructions) dropped as boilerplate rather than matched.
        # Sets named in `exact` match whole questions only (normalised): template-generated suites such as the causal
        # one share 13-grams between different questions by construction (variable lists, edge lists, story graphs).
        self.n = n
        self.index: dict[int, set[str]] = defaultdict(set)
        self.whole: dict[str, set[str]] = defaultdict(set)
        self.boilerplate: dict[str, int] = {}
        for name, texts in references.items():
            documents = {normalise(text) for text in texts}
            if name in set(exact):
                for text in documents:
                    self.whole[text].add(name)
                continue
            counts = Counter(gram for text in documents for gram in ngrams(text, n))
            for gram, count in counts.items():
                if count <= max_docs:
                    self.index[gram].add(name)
            self.boilerplate[name] = sum(count > max_docs for count in counts.values())

    def hits(self, text: str) -> list[str]:
        """The sorted names of the reference sets this text shares a (non-boilerplate) n-gram with."""
        found = set(self.whole.get(normalise(text), set()))
        for gram in ngrams(text, self.n):
            found |= self.index.get(gram, set())
        return sorted(found)


def decontaminate(rows: list[dict], overlap: Overlap) -> tuple[list[dict], Counter]:
    """Rows whose question overlaps no reference set, and the removals counted per 'source:reference'."""
    kept, removed = [], Counter()
    for row in rows:
        hits = overlap.hits(row["question"])
        removed.update(f"{row['source']}:{name}" for name in hits)
        if not hits:
            kept.append(row)
    return kept, removed


def dedupe(rows: list[dict]) -> tuple[list[dict], int]:
    """Rows whose normalised question and (source, id) were not seen before (the first kept), and the count dropped."""
    seen, kept = set(), []
    for row in rows:
        keys = {normalise(row["question"]), (row["source"], row["id"])}  # the same text, or the same id
        if not keys & seen:
            seen |= keys
            kept.append(row)
    return kept, len(rows) - len(kept)
