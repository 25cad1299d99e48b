"""The teacher's on-disk state: the append-only ledger of responses and the record of submitted batches.

Each line is appended, flushed and fsynced as soon as a response arrives, so a run killed at any moment loses at most
the requests still in flight; a torn last line is cut off when the file is read back.
"""

import fcntl
import json
import os
from pathlib import Path
from typing import Any

from claire import ClaireError


def request_key(source: str, question_id: str, prompt_version: str, model: str, sample: int) -> str:
    """The ledger key (and Batch API custom_id) of one request."""
    return json.dumps([source, question_id, prompt_version, model, sample])


def read_jsonl(path: Path) -> list[dict]:
    """The complete lines of an append-only JSONL file; a torn last line (killed mid-write) is cut off."""
    data = path.read_bytes() if path.exists() else b""
    complete = data.rfind(b"\n") + 1
    if complete < len(data):
        with path.open("r+b") as torn:
            torn.truncate(complete)
    return [json.loads(line) for line in data[:complete].splitlines() if line.strip()]


def append_jsonl(file: Any, record: dict) -> None:
    """Append one line and make it durable before returning."""
    file.write(json.dumps(record, ensure_ascii=False) + "\n")
    file.flush()
    os.fsync(file.fileno())


class Ledger:
    """Append-only JSONL of responses, fsynced per line, read back on open."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file = path.open("a", encoding="utf-8")
        try:  # one writer per ledger: a second run on the same folder would ask everything twice
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.close()
            raise ClaireError(f"another claire.generate is writing {path}; wait for it or choose another out") from None
        self.entries = {entry["key"]: entry for entry in read_jsonl(path)}

    def append(self, entry: dict) -> bool:
        """Record one response durably; False when its key is already recorded (nothing is written twice)."""
        if entry["key"] in self.entries:
            return False
        append_jsonl(self.file, entry)
        self.entries[entry["key"]] = entry
        return True

    def cost(self) -> float:
        """Dollars spent on everything recorded."""
        return sum(entry.get("cost_usd", 0.0) for entry in self.entries.values())

    def close(self) -> None:
        """Close the file."""
        self.file.close()


class BatchState:
    """batches.jsonl: every batch this run submitted and whether its results are in the ledger (fsynced)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.batches: dict[str, bool] = {}
        for record in read_jsonl(path):
            self.batches[record["batch"]] = self.batches.get(record["batch"], False) or record["collected"]

    def _write(self, record: dict) -> None:
        with self.path.open("a") as file:
            append_jsonl(file, record)

    def add(self, batch_id: str, requests: int | None) -> None:
        """Record a submitted batch (requests: None when it was found through the API's list)."""
        self._write({"batch": batch_id, "collected": False, "requests": requests})
        self.batches[batch_id] = False

    def close_batch(self, batch_id: str) -> None:
        """Record that a batch's results are in the ledger."""
        self._write({"batch": batch_id, "collected": True})
        self.batches[batch_id] = True

    def open_batches(self) -> list[str]:
        """Batches submitted and not yet collected."""
        return [batch for batch, collected in self.batches.items() if not collected]
