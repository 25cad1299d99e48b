"""Data files: datasets from wherever a path points, lm-eval sample logs, and JSON written atomically."""

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from claire import ClaireError

if TYPE_CHECKING:
    import datasets

log = logging.getLogger("claire.data")
PACKAGE_DATA = Path(__file__).parent / "data"  # `claire:<name>` paths: the data files shipped in the package
HOW_TO_POINT = (
    "make it with `python -m claire.generate`, or point data.path at a hub dataset id, "
    "a local .jsonl/.parquet file or a saved dataset folder"
)


class Loaded(dict):
    """A dataset's splits, and 'line N: why' for each line of its file that could not be read (dropped)."""

    def __init__(self, splits: dict, unreadable: list[str] | None = None) -> None:
        super().__init__(splits)
        self.unreadable = unreadable or []


def local_path(path: str) -> Path:
    """The file a data path names (`claire:<name>` is a data file shipped in the package)."""
    return PACKAGE_DATA / f"{path.removeprefix('claire:')}.jsonl" if path.startswith("claire:") else Path(path)


def load_any(path: str, config_name: str | None, setting: str = "data.path", how: str = HOW_TO_POINT) -> Loaded:
    """Load a dataset from wherever `path` points; one-line error naming `setting` if nothing is there."""
    import datasets  # late: importing it takes seconds, and config checks must not wait for it

    local = local_path(path)
    try:
        if local.is_file() and local.suffix == ".jsonl":
            rows, unreadable = read_jsonl(local, setting)
            return Loaded({"train": datasets.Dataset.from_list(rows)}, unreadable)
        if local.is_file():
            if not local.read_bytes().strip():
                raise ClaireError(f"{setting}={path} is empty; {how}")
            kind = {".json": "json", ".parquet": "parquet", ".csv": "csv"}[local.suffix]
            return Loaded(datasets.load_dataset(kind, data_files=str(local)))
        if (local / "dataset_dict.json").exists() or (local / "dataset_info.json").exists():
            found = datasets.load_from_disk(str(local))
            return Loaded(found if isinstance(found, datasets.DatasetDict) else {"train": found})
        if local.exists() or "/" in path:  # a folder of data files, or a hub id: the hub loading path
            return Loaded(datasets.load_dataset(path, config_name))
    except (*LOAD_ERRORS, datasets.exceptions.DatasetGenerationError) as error:
        cause = error.__cause__ or error  # datasets wraps the reader's own error
        reason = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        where = "" if local.exists() else "is no local file or folder, and "
        raise ClaireError(f"{setting}={path} {where}could not be loaded ({reason}); {how}") from error
    raise ClaireError(f"{setting}={path} does not exist; {how}")


LOAD_ERRORS = (FileNotFoundError, ValueError, KeyError, ConnectionError, OSError, StopIteration, UnicodeDecodeError)


def read_jsonl(path: Path, setting: str) -> tuple[list[dict], list[str]]:
    """A JSONL file's rows, and 'line N: why' for each line that is no JSON object or breaks its fields' types.

    Written here rather than read by `datasets`, which fails the whole file on one torn line (a file cut short by a
    crash, say); a few such lines are dropped and counted instead, like other malformed rows."""
    rows, unreadable = [], []
    with open(path, "rb") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line.decode("utf-8").strip())
            except UnicodeDecodeError:
                unreadable.append(f"line {number}: not UTF-8 text")
                continue
            except json.JSONDecodeError as error:
                unreadable.append(f"line {number}: not JSON ({error.msg}, column {error.colno})")
                continue
            if isinstance(row, dict):
                rows.append((number, row))
            else:
                unreadable.append(f"line {number}: a JSON {type(row).__name__}, not an object")
    if not rows and not unreadable:
        raise ClaireError(f"{setting}={path} is empty; give a JSONL file, one JSON object a line")
    if not rows:
        raise ClaireError(
            f"{setting}={path} has no readable row ({unreadable[0]}); give a JSONL file, one JSON object a line"
        )
    kept, mistyped = _one_type_per_field(rows)
    if unreadable or mistyped:
        log.warning(
            "%s=%s: %d lines dropped (%s)", setting, path, len(unreadable + mistyped), (unreadable + mistyped)[0]
        )
    return kept, sorted(unreadable + mistyped, key=lambda reason: int(reason.split()[1].rstrip(":")))


JSON_TYPES = {str: "text", int: "a number", float: "a number", bool: "true/false", list: "a list", dict: "an object"}


def _one_type_per_field(rows: list[tuple[int, dict]]) -> tuple[list[dict], list[str]]:
    """Rows whose every field has the type most rows give it (a table column has one type), and the others."""
    from collections import Counter

    types: dict[str, Counter] = {}
    for _, row in rows:
        for key, value in row.items():
            if value is not None:
                types.setdefault(key, Counter())[JSON_TYPES.get(type(value), "other")] += 1
    usual = {key: counts.most_common(1)[0][0] for key, counts in types.items()}
    kept, mistyped = [], []
    for number, row in rows:
        odd = [k for k, v in row.items() if v is not None and JSON_TYPES.get(type(v), "other") != usual[k]]
        if odd:
            mistyped.append(
                f"line {number}: {odd[0]!r} is {JSON_TYPES.get(type(row[odd[0]]))}, elsewhere {usual[odd[0]]}"
            )
        else:
            kept.append(row)
    return kept, mistyped


def load_raw(data: DictConfig, needed: tuple[str, ...] | None = None) -> Loaded:
    """The train and eval splits of a data config's path: hub id, local file or folder, or claire:<packaged file>."""
    splits = {"train": data.train_split, "eval": data.eval_split}
    loaded = load_any(str(data.path), data.config_name)
    if data.eval_split is None and data.train_split in loaded:  # no eval split of its own (GSM8K): carve one
        loaded, splits["eval"] = Loaded(carve_eval(loaded[data.train_split], data), loaded.unreadable), "eval"
    if data.split_column and set(loaded) == {"train"} and data.split_column in loaded["train"].column_names:
        rows = loaded["train"]
        loaded = Loaded(
            {s: rows.filter(lambda r, s=s: r[data.split_column] == s) for s in set(splits.values())},
            loaded.unreadable,
        )
    missing = [name for name in splits.values() if name not in loaded or len(loaded[name]) == 0]
    if missing:
        raise ClaireError(
            f"data.path={data.path} has no rows for split(s) {missing}; it has {sorted(loaded)}: "
            "set data.train_split / data.eval_split (or data.split_column) to match"
        )
    for field in needed or fields(data):
        if field not in loaded[data.train_split].column_names:
            raise ClaireError(
                f"data.path={data.path} has no column {field!r}; columns are "
                f"{loaded[data.train_split].column_names}: set data.question_field / data.response_field / "
                "data.answer_field"
            )
    limits = {"train": data.max_train_rows, "eval": data.max_eval_rows}
    return Loaded({role: first_rows(loaded[name], limits[role]) for role, name in splits.items()}, loaded.unreadable)


def fields(data: DictConfig, method: str = "sft") -> tuple[str, str]:
    """The fields a training method reads: question and trace for SFT, question and gold answer for RL."""
    return (data.question_field, data.response_field if method == "sft" else data.answer_field)


def carve_eval(rows: "datasets.Dataset", data: DictConfig) -> dict[str, "datasets.Dataset"]:
    """A stable share (data.eval_share) of the train rows as the eval split, chosen by a hash of the question."""
    from claire.splits import bucket

    share = data.get("eval_share")
    if not isinstance(share, float) or not 0 < share < 1:
        raise ClaireError(f"data.eval_split is null, so data.eval_share must be a share in (0, 1), not {share}")
    held = [bucket(str(question), 0) < share for question in rows[data.question_field]]
    return {
        data.train_split: rows.select([i for i, h in enumerate(held) if not h]),
        "eval": rows.select([i for i, h in enumerate(held) if h]),
    }


def check_local(data: DictConfig, needed: tuple[str, ...] | None = None) -> None:
    """Before anything heavy loads: a local JSONL data file is readable, has the fields, and few unreadable lines."""
    path = local_path(str(data.path))
    if not (path.is_file() and path.suffix == ".jsonl"):
        return  # other formats and hub datasets are checked when loaded, still before the model
    rows, unreadable = read_jsonl(path, "data.path")
    present = sorted({key for row in rows for key in row})
    for field in needed or fields(data):
        if field not in present:
            raise ClaireError(
                f"data.path={data.path} has no field {field!r}; its fields are {present}: "
                "set data.question_field / data.response_field / data.answer_field"
            )
    share = len(unreadable) / (len(rows) + len(unreadable))
    if share > data.max_drop_fraction:
        raise ClaireError(
            f"data.path={data.path}: {len(unreadable)} of {len(rows) + len(unreadable)} lines cannot be read "
            f"({unreadable[0]}), more than data.max_drop_fraction={data.max_drop_fraction}; fix the file"
        )


def first_rows(rows: "datasets.Dataset", limit: int | None) -> "datasets.Dataset":
    """The first `limit` rows (all of them for None)."""
    return rows if limit is None or limit >= len(rows) else rows.select(range(limit))


def read_samples(path: Path) -> list[dict]:
    """The rows of an lm-eval per-sample log (`--log_samples`); one line naming the file and line if one is bad."""
    rows = []
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if "doc_id" not in row:
                    raise KeyError("doc_id")
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                raise ClaireError(f"{path} line {number} is not an lm-eval sample ({error})") from None
            rows.append(row)
    return rows


def write_json(path: Path, payload: Any) -> None:
    """Write JSON atomically: a temporary file in the same folder, fsynced, renamed over the target."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False) as f:
        json.dump(payload, f, indent=2, ensure_ascii=False, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(f.name, path)
