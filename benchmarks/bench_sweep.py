"""What pruning saves: the quick CPU sweep (`hparams_search=quick-cpu`, embedded model) with and without a pruner.

Both sweeps use the same search space, sampler and seed, each in its own study under a fresh folder; they run one
after the other in separate processes. Printed: optimizer steps trained in all (read from each trial's
metrics.json), the share of steps pruning saved, the best objective of each sweep, and their wall times.
The target is at least 40% of steps saved with a best objective within the noise of the unpruned sweep.
    python benchmarks/bench_sweep.py [--trials 16] [--pruners median,percentile] [--threads 2] [--out DIR]
                                     [--override KEY=VALUE ...]
Each pruner in --pruners is one sweep, all compared with the one unpruned sweep of the same run; pruner keys can
be set as --set hydra.sweeper.pruner.min_resource=24 (passed to every pruned sweep). --override is passed to every
sweep, pruned or not (and so to the seed reruns): e.g. a tiny model on a few rows for a smoke run.
"Within noise" is measured, not assumed: the unpruned sweep's best configuration is trained again with
--noise-seeds (default 1,2), and the spread of its objective over those seeds and the sweep's own is the noise.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def sweep_command(opts: argparse.Namespace, pruner: str) -> list[str]:
    """The quick CPU sweep as a user types it, with its own study name and the pruner under test."""
    extra = [*opts.override, *(opts.set if pruner != "none" else [])]
    return [
        sys.executable, "-m", "claire.train", "-m", "hparams_search=quick-cpu", f"hydra/sweeper/pruner={pruner}",
        f"hydra.sweeper.study_name=bench-{pruner}", f"hydra.sweeper.n_trials={opts.trials}", f"threads={opts.threads}",
        "hydra.sweeper.report=false", "trainer.disable_tqdm=true", *extra,
    ]  # fmt: skip


def run_sweep(opts: argparse.Namespace, pruner: str, cwd: Path) -> dict:
    """Run one sweep to its end; its trials' steps, states and objectives, and its wall time."""
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": str(opts.threads)}
    started = time.perf_counter()
    done = subprocess.run(sweep_command(opts, pruner), cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode:
        sys.exit(f"bench_sweep: the {pruner} sweep failed:\n{done.stderr[-3000:]}")
    folder = cwd / "sweeps" / f"bench-{pruner}"
    summary = json.loads((folder / "summary.json").read_text())
    trials = [json.loads(p.read_text()) for p in sorted(folder.glob("trial-*/metrics.json"))]
    finished = [t["eval_loss"] for t in trials if not t.get("pruned")]
    return {
        "pruner": pruner,
        "steps": sum(t["steps"] for t in trials),
        "trials": len(trials),
        "pruned": sum(bool(t.get("pruned")) for t in trials),
        "best": summary.get("best_value"),
        "spread": statistics.pstdev(finished) if len(finished) > 1 else 0.0,
        "wall_s": wall,
    }


def seed_noise(opts: argparse.Namespace, full: dict, cwd: Path) -> float | None:
    """Standard deviation of the objective of the unpruned best configuration over seeds (its sweep run included)."""
    folder = cwd / "sweeps" / "bench-none"
    best = json.loads((folder / "summary.json").read_text())["best_trial"]
    overrides = [line.removeprefix("- ").strip() for line in (folder / f"trial-{best}" / ".hydra" / "overrides.yaml")
                 .read_text().splitlines() if line.startswith("- ")]  # fmt: skip
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": str(opts.threads)}
    values = [full["best"]]
    for seed in [s for s in opts.noise_seeds.split(",") if s]:
        out = cwd / "noise" / f"seed-{seed}"
        command = [sys.executable, "-m", "claire.train", *overrides, f"seed={seed}", f"output_dir={out}"]
        done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"bench_sweep: the seed {seed} rerun of trial {best} failed:\n{done.stderr[-3000:]}")
        values.append(json.loads((out / "metrics.json").read_text())["eval_loss"])
    full["best_over_seeds"] = values
    return statistics.stdev(values) if len(values) > 1 else None


def main() -> None:
    """Run both sweeps and print the comparison table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=16, help="trials per sweep (quick-cpu has 16)")
    parser.add_argument("--pruners", default="median", help="conf/hydra/sweeper/pruner/ options, comma-separated")
    parser.add_argument("--set", action="append", default=[], help="an override for the pruned sweeps")
    parser.add_argument("--override", action="append", default=[], help="an override for every sweep")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="where the studies are written (default: a temp dir)")
    parser.add_argument("--noise-seeds", default="1,2", help="seeds to retrain the unpruned best with ('' to skip)")
    opts = parser.parse_args()
    out = opts.out or Path(tempfile.mkdtemp(prefix="claire-bench-sweep-"))
    out.mkdir(parents=True, exist_ok=True)
    rows = [run_sweep(opts, pruner, out) for pruner in opts.pruners.split(",")]
    full = run_sweep(opts, "none", out)
    noise = seed_noise(opts, full, out)
    print(f"bench_sweep: quick-cpu, {opts.trials} trials, {opts.threads} threads, studies in {out}/sweeps/")
    print("| sweep | trials pruned | steps trained | steps saved | best eval_loss | best - unpruned best | wall |")
    print("|---|---|---|---|---|---|---|")
    for row in [*rows, full]:
        row["steps_saved"] = 1 - row["steps"] / full["steps"]
        print(f"| {row['pruner']} | {row['pruned']}/{row['trials']} | {row['steps']} | {row['steps_saved']:.1%} | "
              f"{row['best']:.4f} | {row['best'] - full['best']:+.4f} | {row['wall_s']:.0f} s |")  # fmt: skip
    if noise is not None:
        seeds = ", ".join(f"{v:.4f}" for v in full["best_over_seeds"])
        print(f"noise: the unpruned best configuration over {len(full['best_over_seeds'])} seeds gives {seeds}: "
              f"standard deviation {noise:.4f}")  # fmt: skip
        for row in rows:
            row["within_noise"] = abs(row["best"] - full["best"]) <= 2 * noise
            print(
                f"{row['pruner']}: {row['steps_saved']:.1%} of steps saved, best {row['best'] - full['best']:+.4f} "
                f"from the unpruned best ({'within' if row['within_noise'] else 'outside'} 2 standard deviations)"
            )
    print("target: >= 40% of steps saved with a best objective within noise of the unpruned sweep")
    (out / "bench_sweep.json").write_text(json.dumps({"pruned": rows, "none": full, "noise_sd": noise}, indent=2))


if __name__ == "__main__":
    main()
