"""What the side-by-side benchmarks share: each run in a child process of its own, so peak memory is its own."""

import json
import os
import subprocess
import sys
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
