"""A run killed (SIGKILL) while it writes a checkpoint resumes from the newest complete one (issue 16, item 1)."""

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, compose_train, tiny_overrides

from claire import run_folders
from claire.train import run

# Kill this very process once checkpoint-2's weights are on disk, before its optimizer, RNG and trainer_state.json.
KILLED_WHILE_SAVING = """
import os, signal
from transformers import Trainer

save = Trainer._save_optimizer_and_scheduler

def killed(self, output_dir):
    if self.state.global_step == int(os.environ["CLAIRE_TEST_KILL_AT"]):
        os.kill(os.getpid(), signal.SIGKILL)
    save(self, output_dir)

Trainer._save_optimizer_and_scheduler = killed
import runpy

runpy.run_module("claire.train", run_name="__main__", alter_sys=True)  # as `python -m claire.train ARGS`
"""


def digests(folder: Path) -> dict[str, str]:
    """File name -> sha256 of every file in folder."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.is_file()}


def test_killed_while_saving_a_checkpoint_resumes_from_the_last_complete_one(tiny_model_dir, tmp_path, caplog):
    out = tmp_path / "run"
    overrides = tiny_overrides(tiny_model_dir, out, "trainer.save_steps=1")  # save_total_limit=2: rotation runs
    env = {**os.environ, "CLAIRE_TEST_KILL_AT": "2"}
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_WHILE_SAVING, *overrides], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    checkpoints = out / "checkpoints"
    torn = checkpoints / "checkpoint-2"
    assert (torn / "adapter_model.safetensors").exists() and not (torn / "trainer_state.json").exists()
    torn_files = digests(torn)
    first = json.loads((checkpoints / "checkpoint-1" / "trainer_state.json").read_text())["log_history"]

    with caplog.at_level(logging.WARNING, logger="claire.run_folders"):
        run(compose_train(*overrides, "resume=true"))
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skipped) == 1 and "checkpoint-2 (no trainer_state.json" in skipped[0], skipped
    assert "resuming from checkpoint-1" in skipped[0]

    history = json.loads((out / "metrics.json").read_text())["history"]
    assert [h["step"] for h in history if "loss" in h] == [1, 2, 3, 4]  # each step once
    assert [h for h in history if h["step"] == 1] == first  # checkpoint-1's record: continued from it, not redone
    kept = list(checkpoints.glob("torn-checkpoint-2-*"))
    assert len(kept) == 1 and digests(kept[0]) == torn_files  # the torn folder, untouched, under its new name
    assert sorted(p.name for p in checkpoints.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-4"]


def write_checkpoint(folder: Path, state: str | None, weights: bool = True) -> None:
    """A checkpoint folder holding the given trainer_state.json text (None: no file) and adapter weights."""
    folder.mkdir(parents=True)
    if state is not None:
        (folder / "trainer_state.json").write_text(state)
    if weights:
        (folder / "adapter_model.safetensors").write_bytes(b"weights")


def test_newest_complete_checkpoint_skips_each_kind_of_torn_one(tmp_path):
    write_checkpoint(tmp_path / "checkpoint-2", '{"global_step": 2}')
    write_checkpoint(tmp_path / "checkpoint-3", None)
    write_checkpoint(tmp_path / "checkpoint-4", '{"global_step": 4, "log_hist')  # killed while writing it
    write_checkpoint(tmp_path / "checkpoint-5", '{"global_step": 5}', weights=False)
    write_checkpoint(tmp_path / "checkpoint-6", '{"global_step": 2}')  # another step's state
    write_checkpoint(tmp_path / "checkpoint-7.old", '{"global_step": 7}')  # not a name the Trainer writes
    newest, torn = run_folders.newest_complete_checkpoint(tmp_path)
    assert newest == tmp_path / "checkpoint-2"
    assert [p.name for p in torn] == ["checkpoint-6", "checkpoint-5", "checkpoint-4", "checkpoint-3"]
    assert "cut short" in torn[tmp_path / "checkpoint-4"] and "weights" in torn[tmp_path / "checkpoint-5"]
    assert run_folders.newest_complete_checkpoint(tmp_path / "missing") == (None, {})


def test_torn_checkpoints_are_renamed_not_deleted(tmp_path, caplog):
    write_checkpoint(tmp_path / "checkpoint-1", None)  # killed while saving the first checkpoint
    with caplog.at_level(logging.WARNING, logger="claire.run_folders"):
        run_folders.set_aside_torn(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [f"torn-checkpoint-1-{run_folders.STARTED}"]
    assert (tmp_path / f"torn-checkpoint-1-{run_folders.STARTED}" / "adapter_model.safetensors").exists()
    assert "no complete checkpoint: starting again from step 0" in caplog.text
    assert run_folders.newest_complete_checkpoint(tmp_path) == (None, {})
