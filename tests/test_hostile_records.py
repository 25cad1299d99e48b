"""A refused command writes and changes nothing (issue 16 item 2): Hydra writes nothing itself, each command checks
its folder (new or empty, or the run it resumes) before it writes its record there."""

import os
import subprocess
import sys

import pytest
from conftest import ROOT, tiny_overrides

ENV = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1"}


def claire(command: str, *args: str, cwd) -> subprocess.CompletedProcess:
    """`python -m claire.<command> ARGS` in a fresh process, as a user types it."""
    run = [sys.executable, "-m", f"claire.{command}", *args]
    return subprocess.run(run, capture_output=True, text=True, cwd=cwd, env=ENV, timeout=600)


def snapshot(folder) -> dict:
    """Every file under folder with its bytes."""
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tiny_model_dir, tmp_path_factory):
    """A tiny run made by `python -m claire.train`, so it has the record a user's run has."""
    out = tmp_path_factory.mktemp("finished") / "run"
    done = claire("train", *tiny_overrides(tiny_model_dir, out), cwd=out.parent)
    assert done.returncode == 0, done.stderr[-2000:]
    return out


def test_a_finished_run_keeps_its_record_when_a_command_is_refused(finished, tiny_model_dir, tmp_path):
    before = snapshot(finished)
    assert {".hydra/config.yaml", ".hydra/overrides.yaml", ".hydra/hydra.yaml", "train.log"} <= {str(p) for p in before}
    done = claire("train", *tiny_overrides(tiny_model_dir, finished), "seed=7", cwd=tmp_path)
    assert done.returncode == 1 and done.stderr.strip() == (
        f"claire.train: error: output_dir={finished} already holds a finished run; choose another output_dir"
    )
    assert snapshot(finished) == before and list(tmp_path.iterdir()) == []


def test_a_resumed_run_keeps_its_first_record(finished, tiny_model_dir, tmp_path):
    import shutil

    interrupted = tmp_path / "interrupted"
    shutil.copytree(finished, interrupted)
    (interrupted / "metrics.json").unlink()  # as a run killed after its last checkpoint leaves it
    first = snapshot(interrupted / ".hydra")
    done = claire("train", *tiny_overrides(tiny_model_dir, interrupted), f"resume={interrupted}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert {p: b for p, b in snapshot(interrupted / ".hydra").items() if len(p.parts) == 1} == first
    (again,) = [p for p in (interrupted / ".hydra").iterdir() if p.is_dir()]  # .hydra/<time>/: the resume's own
    assert f"resume={interrupted}" in (again / "overrides.yaml").read_text()


@pytest.mark.parametrize(
    ("command", "setting"),
    [("train", "output_dir"), ("evaluate", "output_dir"), ("report", "output_dir"), ("generate", "out")],
)
def test_a_folder_holding_something_else_is_refused_untouched(command, setting, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("my own notes")
    extra = ["source=causal", "n=50"] if command == "generate" else ["tasks=[claire_causal]"] * (command == "evaluate")
    done = claire(command, f"{setting}={folder}", *extra, cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip() == (
        f"claire.{command}: error: {setting}={folder} already holds notes.txt; "
        f"Claire writes only into a new or empty folder: choose another {setting}"
    )
    assert [p.name for p in tmp_path.iterdir()] == ["mine"] and [p.name for p in folder.iterdir()] == ["notes.txt"]


def test_a_rejected_config_leaves_nothing(tmp_path):
    done = claire("train", "trainer.max_length=10", cwd=tmp_path)
    assert done.returncode == 1 and "trainer.max_length=10 is too short" in done.stderr
    assert list(tmp_path.iterdir()) == []  # no experiments/<run>/ with .hydra/ and an empty log


def test_an_evaluation_never_writes_over_results(tmp_path):
    results = tmp_path / "eval"
    results.mkdir()
    (results / "results.json").write_text("{}")
    done = claire("evaluate", "tasks=[claire_causal]", f"output_dir={results}", cwd=ROOT)
    assert done.returncode == 1 and "already holds results.json" in done.stderr
    assert snapshot(results) == {results.relative_to(results) / "results.json": b"{}"}
