"""claire.reproduce: a tiny run rerun from its frozen config matches its saved metrics exactly (CPU, same seed),
by claire.reproduce and by Hydra's own --config-path; differences and bad input are reported."""

import json
import os
import subprocess
import sys

import pytest
from conftest import tiny_overrides

from claire import reproduce

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def python(*args: str, cwd) -> subprocess.CompletedProcess:
    """`python ARGS` in a fresh process."""
    return subprocess.run([sys.executable, *args], cwd=cwd, env=ENV, capture_output=True, text=True)


@pytest.fixture(scope="module")
def original(tiny_model_dir, tmp_path_factory):
    """A tiny run made by `python -m claire.train`, so it has Hydra's .hydra/ folder as a user's run does."""
    root = tmp_path_factory.mktemp("reproduce")
    folder = root / "experiments" / "tiny" / "original"
    done = python("-m", "claire.train", *tiny_overrides(tiny_model_dir, folder), cwd=root)
    assert done.returncode == 0, done.stderr[-2000:]
    return folder


def snapshot(folder) -> dict:
    """Every file of a folder with its bytes (to show nothing changed)."""
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_rerun_from_the_frozen_config_matches_the_saved_metrics_exactly(original, tmp_path):
    before = snapshot(original)
    target = tmp_path / "again"
    done = python("-m", "claire.reproduce", str(original), "--output-dir", str(target), cwd=original.parents[2])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"claire.reproduce: identical; the rerun is {target} (reproduction.json)" in done.stdout
    result = json.loads((target / "reproduction.json").read_text())
    compared = {r["key"] for r in result["compared"]}
    assert result["identical"] and {"eval_loss", "train_loss", "trainable_params", "history.loss@4"} <= compared
    assert not any("runtime" in key for key in compared)
    assert (target / ".hydra" / "config.yaml").is_file() and (target / "adapter").is_dir()
    assert snapshot(original) == before  # the original run is never touched


def test_hydras_own_config_path_reruns_it_identically(original, tmp_path):
    target = tmp_path / "hydra-route"
    done = python("-m", "claire.train", "--config-path", str(original / ".hydra"), "--config-name", "config",
                  f"output_dir={target}", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hydra-route"]  # Hydra wrote nothing of its own
    saved, new = (json.loads((f / "metrics.json").read_text()) for f in (original, target))
    assert all(row["same"] for row in reproduce.compare(saved, new, rtol=0.0))


def test_a_number_that_differs_is_reported():
    saved = {"eval_loss": 1.5, "steps": 4, "train_runtime_s": 3.0, "history": [{"loss": 2.0, "step": 1}]}
    new = {"eval_loss": 1.5000001, "steps": 4, "train_runtime_s": 9.0, "history": [{"loss": 2.0, "step": 1}]}
    rows = {r["key"]: r["same"] for r in reproduce.compare(saved, new, rtol=0.0)}
    assert rows == {"eval_loss": False, "steps": True, "history.loss@1": True}
    assert all(r["same"] for r in reproduce.compare(saved, new, rtol=1e-6))
    assert "| eval_loss | 1.5 | 1.5000001 | NO |" in reproduce.table(reproduce.compare(saved, new, 0.0))
    diverged = {"eval_loss": float("nan")}
    assert reproduce.compare(diverged, diverged, 0.0)[0]["same"]  # a diverged run reproduced is the same run


def test_bad_input_exits_2_in_one_line_before_anything_runs(original, tmp_path, capsys):
    assert reproduce.main([str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"claire.reproduce: error: {tmp_path} has no config.yaml; pass a run " \
        "folder written by claire.train"  # fmt: skip
    assert reproduce.main([str(original), "--output-dir", str(original)]) == 2
    assert "exists; reproduce into a new folder" in capsys.readouterr().err
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "config.yaml").write_text("run_name: s\ntracking:\n  api_key: '***'\n")
    (secret / "metrics.json").write_text("{}")
    assert reproduce.main([str(secret)]) == 2
    assert "hides ['tracking.api_key'] as ***; pass them as key=value" in capsys.readouterr().err
    assert not (tmp_path / "experiments").exists()


def test_a_reference_run_is_compared_on_its_published_counts(tmp_path):
    from conftest import ROOT

    saved = reproduce.check_folder(ROOT / "experiments" / "report" / "claire-7b-v2")
    assert saved == {"trainable_params": 80_740_352}
