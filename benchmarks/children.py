"""What the side-by-side benchmarks share: each run in a child process of its own, so peak memory is its own."""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def spawn(script: str, kind: str, steps: int, threads: int, extra: list[str]) -> dict:
    """Run `script --one KIND` in a child with deliberate threads; parse the JSON figures of its last line."""
    env = {
        **os.environ,
        "OMP_WAIT_POLICY": "PASSIVE",
        "OMP_NUM_THREADS": str(threads),
        "TOKENIZERS_PARALLELISM": "false",
    }
    cmd = [sys.executable, script, "--one", kind, "--steps", str(steps), "--threads", str(threads)]
    cmd += [f"--override={override}" for override in extra]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if done.returncode:
        sys.exit(f"{kind} run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def alternate(script: str, repeats: int, steps: int, threads: int, extra: list[str], unit: str) -> tuple[dict, float]:
    """claire and trl runs, alternating which goes first; each figure's median per side, and the wall time."""
    results: dict[str, list[dict]] = {"claire": [], "trl": []}
    started = time.time()
    for i in range(repeats):
        for kind in ("claire", "trl") if i % 2 == 0 else ("trl", "claire"):
            results[kind].append(spawn(script, kind, steps, threads, extra))
            print(f"  {kind:6s} run {i + 1}: {results[kind][-1]['tokens_per_s']:.1f} {unit}", flush=True)
    medians = {k: {f: statistics.median(r[f] for r in runs) for f in runs[0]} for k, runs in results.items()}
    return medians, time.time() - started


def parser(description: str, steps_help: str) -> argparse.ArgumentParser:
    """The flags every side-by-side benchmark takes: steps, repeats, threads, overrides, and the child's --one."""
    found = argparse.ArgumentParser(description=description)
    found.add_argument("--steps", type=int, default=4, help=steps_help)
    found.add_argument("--repeats", type=int, default=2, help="runs of each trainer, alternating")
    found.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    found.add_argument(
        "--override",
        action="append",
        default=[],
        help="a conf/train.yaml override for both trainers (model, data, batch)",
    )
    found.add_argument("--one", choices=["claire", "trl"], help=argparse.SUPPRESS)
    return found
