"""Data files: datasets from wherever a path points, lm-eval sample logs, and JSON written atomically."""

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from claire import ClaireError

if TYPE_CHECKING:
    import datasets

PACKAGE_DATA = Path(__file__).parent / "data"  # `claire:<name>` paths: the data files shipped in the package
HOW_TO_POINT = (
    "make it with `python -m claire.generate`, or point data.path at a hub dataset id, "
    "a local .jsonl/.parquet file or a saved dataset folder"
)


def load_any(
    path: str, config_name: str | None, setting: str = "data.path", how: str = HOW_TO_POINT
) -> dict[str, "datasets.Dataset"]:
    """Load a dataset from wherever `path` points; one-line error naming `setting` if nothing is there."""
    import datasets  # late: importing it takes seconds, and config checks must not wait for it

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


def load_raw(data: DictConfig) -> dict[str, "datasets.Dataset"]:
    """The train and eval splits of a data config's path: hub id, local file or folder, or claire:<packaged file>."""
    splits = {"train": data.train_split, "eval": data.eval_split}
    loaded = load_any(str(data.path), data.config_name)
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
    return {role: first_rows(loaded[name], limits[role]) for role, name in splits.items()}


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
