"""Every `make bench-*` target, run as users run it, at tiny sizes: seconds, not the measurement (docs/results.md
quotes the real one), so that a benchmark can never silently stop working again. Each asserts the run completed,
printed its headline figures, and left nothing in the working tree."""

import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import GSM8K, ROOT

VENV = Path(sys.executable).parents[1]  # the venv running the tests (on CI, the one `make test` made)

needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="make is not on PATH")


def tiny_model(model_dir: Path) -> list[str]:
    """conf/train.yaml overrides that put the tiny random Llama in place of the embedded model."""
    return [f"model.id={model_dir}", "model.name=tiny", "model.gguf_file=null", "model.gguf_package=null"]


def tree() -> set[str]:
    """The working tree's untracked and ignored entries, per `git status` (bytecode caches aside): what a benchmark
    writing its outputs into the repository (experiments/, sweeps/, outputs/) would add. Edits to tracked files are
    left out, so that someone editing the code while the suite runs does not fail it."""
    if not (ROOT / ".git").exists():
        return set()
    command = ["git", "status", "--porcelain", "--ignored", "--untracked-files=normal"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
    return {line for line in done.stdout.splitlines() if line[:2] in ("??", "!!") and "__pycache__" not in line}


def make_bench(name: str, args: list[str], tmp: Path) -> str:
    """`make -s bench-<name> ARGS=...` with the running venv; its stdout, after checking it ran to completion and
    wrote nothing into the working tree. The install stamp is assumed up to date (-o): a test never reinstalls."""
    before = tree()
    command = [
        "make",
        "-s",
        "-o",
        f"{VENV}/.claire-installed",
        f"VENV={VENV}",
        f"bench-{name}",
        f"ARGS={shlex.join(args)}",
    ]
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "TMPDIR": str(tmp)}  # the benchmarks' temp dirs land in tmp
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    assert tree() - before == set(), "the benchmark wrote into the working tree"  # its files belong under tmp
    return done.stdout


def figures(pattern: str, out: str) -> tuple[float, ...]:
    """The numbers of the one stdout line matching pattern."""
    found = re.search(pattern, out, re.MULTILINE)
    assert found, f"no line matching {pattern!r} in:\n{out}"
    return tuple(float(value) for value in found.groups())


@needs_make
def test_bench_generate(tmp_path):
    args = ["--requests", "20", "--baseline-requests", "5", "--latency", "0.05", "--repeats", "1"]
    out = make_bench("generate", args, tmp_path)
    paced = figures(r"^claire: paced, up to 64 in flight \(20\)\s+(\d+)\s+([\d.]+)%\s+(\d+)$", out)
    alone = figures(r"^one at a time \(5\)\s+(\d+)\s+([\d.]+)%\s+(\d+)$", out)
    share, ratio = figures(r"^claire reaches ([\d.]+)% of the limit \(target >= 90%\), ([\d.]+)x one at a time$", out)
    assert paced[0] > 0 and alone[0] > 0 and share == paced[1] and ratio > 0


@needs_make
def test_bench_train(tiny_model_dir, tmp_path):
    overrides = [*tiny_model(tiny_model_dir), "model.dtype=float32", "data.max_eval_rows=2"]
    overrides += ["trainer.per_device_train_batch_size=1", "trainer.per_device_eval_batch_size=2"]
    overrides += ["trainer.gradient_accumulation_steps=1"]  # one step of one row, two eval rows, for each trainer
    args = ["--steps", "1", "--repeats", "1", "--threads", "1", *(f"--override={o}" for o in overrides)]
    out = make_bench("train", args, tmp_path)
    assert f"overrides {' '.join(overrides)}, 1 steps, 1 threads, medians of 1 alternating runs" in out
    for kind in ("claire", "trl"):
        tokens_per_s, rss_mb, eval_loss = figures(rf"^{kind}\s+([\d.]+)\s+(\d+)\s+([\d.]+)$", out)
        assert tokens_per_s > 0 and rss_mb > 0 and math.isfinite(eval_loss)
    speed, memory, _ = figures(r"^ratio\s+speed ([\d.]+)x\s+memory ([\d.]+)x\s+eval-loss diff ([+-][\d.]+)$", out)
    assert speed > 0 and memory > 0


@needs_make
def test_bench_rl(tiny_model_dir, tmp_path):
    overrides = [*tiny_model(tiny_model_dir), "model.dtype=float32", "trainer.per_device_train_batch_size=2"]
    overrides += ["trainer.gradient_accumulation_steps=1"]  # one step of one prompt x 2 completions, each trainer
    args = ["--steps", "1", "--repeats", "1", "--threads", "1", "--generations", "2", "--max-completion-length", "8"]
    out = make_bench("rl", [*args, *(f"--override={o}" for o in overrides)], tmp_path)
    shape = "2 generations of <= 8 tokens, 1 steps, 1 threads, medians of 1 alternating runs"
    assert f"overrides {' '.join(overrides)}, {shape}" in out
    for kind in ("claire", "trl"):
        tokens_per_s, steps_per_hour, rss_mb, reward = figures(
            rf"^{kind}\s+([\d.]+)\s+([\d.]+)\s+(\d+)\s+(-?[\d.]+)$", out
        )
        assert tokens_per_s > 0 and steps_per_hour > 0 and rss_mb > 0 and -0.5 <= reward <= 1.6  # reward=causal's range
    speed, steps, memory = figures(r"^ratio\s+speed ([\d.]+)x\s+steps/hour ([\d.]+)x\s+memory ([\d.]+)x$", out)
    assert speed > 0 and steps > 0 and memory > 0


@pytest.mark.slow  # ~35 s: lm-eval indexes its task YAMLs in each command (claire.evaluate's included), any size
@needs_make
@pytest.mark.skipif(not GSM8K.exists(), reason=f"{GSM8K} is not here")
def test_bench_eval(tiny_model_dir, tmp_path):
    args = ["--items", "2", "--max-gen-toks", "8", "--threads", "1", "--model", str(tiny_model_dir)]
    out = make_bench("eval", args, tmp_path)
    assert re.search(r"^2 gsm8k items, 0-shot chat, max_gen_toks 8, ", out, re.MULTILINE)
    for name in ("claire", "lm_eval"):
        wall, *scores = figures(rf"^\| {name} \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|$", out)
        assert wall > 0 and all(0 <= score <= 1 for score in scores)
    (same,) = figures(r"^identical outputs: (\d+) of 2 ", out)
    (ratio,) = figures(r"^claire is ([\d.]+)x faster \(target: at least 3x at equal scores\)$", out)
    assert 0 <= same <= 2 and ratio > 0


@needs_make
def test_bench_serve(tiny_model_dir, tmp_path):
    args = ["--levels", "1,2", "--requests", "2", "--max-tokens", "4", "--rounds", "1", "--threads", "1"]
    out = make_bench("serve", [*args, "--model", str(tiny_model_dir)], tmp_path)
    for level in (1, 2):
        for name in ("claire.serve", "transformers serve"):
            rps, p50, p95 = figures(rf"^\| {level} \| {name} \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|$", out)
            assert rps > 0 and 0 < p50 <= p95
        figures(rf"^overhead at concurrency {level}: requests/s ([-+\d.]+)%, p50 latency ([-+\d.]+)%$", out)


@pytest.mark.slow  # ~30 s: two claire.evaluate commands, each indexing lm-eval's tasks
@needs_make
def test_bench_ttc(tiny_model_dir, tmp_path):
    args = ["--model", str(tiny_model_dir), "--items", "2", "--budgets", "", "--votes", "1,2", "--max-new-tokens", "24"]
    out = make_bench("ttc", [*args, "--threads", "1", "--out", str(tmp_path / "ttc")], tmp_path)
    for setting in ("greedy", "vote 1", "vote 2"):
        accuracy, low, high, tokens = figures(
            rf"^\| model \| {setting} \| ([\d.]+) \[([\d.]+), ([\d.]+)\] \| (\d+) \|$", out
        )
        assert 0 <= low <= accuracy <= high <= 1 and tokens > 0
    table = json.loads((tmp_path / "ttc" / "ttc.json").read_text())
    assert table["model"]["vote 2"]["tokens"] > table["model"]["vote 1"]["tokens"]  # both samples of a vote count
    assert not (tmp_path / "ttc" / "vote-1").exists()  # vote 1 is read from the first sample of vote 2's run
    assert (tmp_path / "ttc" / "ttc.png").stat().st_size > 1000


@needs_make
def test_bench_sweep(tiny_model_dir, tmp_path):
    overrides = [*tiny_model(tiny_model_dir), "model.dtype=float32", "trainer.bf16=false", "data.max_train_rows=4"]
    overrides += ["data.max_eval_rows=2", "trainer.max_steps=2", "trainer.eval_steps=1", "trainer.save_steps=2"]
    overrides += ["trainer.gradient_accumulation_steps=1", "trainer.per_device_train_batch_size=2"]
    studies = tmp_path / "studies"
    args = ["--trials", "1", "--threads", "1", "--noise-seeds", "1", "--out", str(studies)]
    out = make_bench("sweep", [*args, *(f"--override={o}" for o in overrides)], tmp_path)
    assert f"quick-cpu, 1 trials, 1 threads, studies in {studies}/sweeps/" in out
    row = r"^\| {} \| (\d+)/1 \| (\d+) \| ([\d.-]+)% \| ([\d.]+) \| ([+-][\d.]+) \| (\d+) s \|$"
    pruned, steps, saved, best, _, _ = figures(row.format("median"), out)
    assert 0 <= pruned <= 1 and 1 <= steps <= 2 and best > 0
    _, steps, saved, best, diff, _ = figures(row.format("none"), out)
    assert steps == 2 and saved == 0 and diff == 0  # one unpruned trial of two steps
    noise = r"^noise: the unpruned best configuration over 2 seeds gives [\d.]+, [\d.]+: standard deviation ([\d.]+)$"
    (sd,) = figures(noise, out)
    assert sd >= 0
    assert re.search(
        r"^median: -?[\d.]+% of steps saved, best [+-][\d.]+ from the unpruned best \((within|outside) 2",
        out,
        re.MULTILINE,
    )
    written = json.loads((studies / "bench_sweep.json").read_text())
    assert [r["pruner"] for r in written["pruned"]] == ["median"] and written["none"]["steps"] == 2
    assert (studies / "sweeps" / "bench-median" / "summary.json").is_file() and (studies / "noise" / "seed-1").is_dir()
