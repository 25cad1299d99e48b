"""What pruning saves: the quick CPU sweep (`hparams_search=quick-cpu`, embedded model) with and without a pruner.

Both sweeps use the same search space, sampler and seed, each in its own study under a fresh folder; they run one
after the other in separate processes. Printed: optimizer steps trained in all (read from each trial's
metrics.json), the share of steps pruning saved, the best objective of each sweep, and their wall times.
The target is at least 40% of steps saved with a best objective within the noise of the unpruned sweep.
    python benchmarks/bench_sweep.py [--trials 8] [--pruners median,percentile] [--threads 2] [--out DIR]
Each pruner in --pruners is one sweep, all compared with the one unpruned sweep of the same run; pruner keys can
be set as --set hydra.sweeper.pruner.min_resource=24 (passed to every pruned sweep).
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
    extra = list(opts.set) if pruner != "none" else []
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


def main() -> None:
    """Run both sweeps and print the comparison table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--pruners", default="median", help="conf/hydra/sweeper/pruner/ options, comma-separated")
    parser.add_argument("--set", action="append", default=[], help="an override for the pruned sweeps")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="where the studies are written (default: a temp dir)")
    opts = parser.parse_args()
    out = opts.out or Path(tempfile.mkdtemp(prefix="claire-bench-sweep-"))
    out.mkdir(parents=True, exist_ok=True)
    rows = [run_sweep(opts, pruner, out) for pruner in opts.pruners.split(",")]
    full = run_sweep(opts, "none", out)
    print(f"bench_sweep: quick-cpu, {opts.trials} trials, {opts.threads} threads, studies in {out}/sweeps/")
    print("| sweep | trials pruned | steps trained | steps saved | best eval_loss | best - unpruned best | wall |")
    print("|---|---|---|---|---|---|---|")
    for row in [*rows, full]:
        row["steps_saved"] = 1 - row["steps"] / full["steps"]
        print(f"| {row['pruner']} | {row['pruned']}/{row['trials']} | {row['steps']} | {row['steps_saved']:.1%} | "
              f"{row['best']:.4f} | {row['best'] - full['best']:+.4f} | {row['wall_s']:.0f} s |")  # fmt: skip
    print(f"target: >= 40% of steps saved, best within noise of the unpruned sweep (its trials' final losses have a "
          f"standard deviation of {full['spread']:.4f})")  # fmt: skip
    (out / "bench_sweep.json").write_text(json.dumps({"pruned": rows, "none": full}, indent=2))


if __name__ == "__main__":
    main()
