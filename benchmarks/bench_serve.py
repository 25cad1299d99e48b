"""Serving overhead: claire.serve vs the plain `transformers serve` it wraps, started by hand on the same folder.

Both serve the same model folder (the one claire.serve builds: the embedded model, or --model) on this CPU with the
same threads; each level of concurrency sends the same chat requests (greedy, max_tokens fixed) to one server, then
the other, alternating over --rounds, and records requests per second and p50/p95 latency. The overhead printed at
each level is claire.serve's p50 latency and its requests per second against the plain server's (medians over the
rounds); the target is <= 5% at every level.
    python benchmarks/bench_serve.py [--levels 1,4,16] [--requests 32] [--max-tokens 32] [--rounds 2] [--threads 2]
"""

import argparse
import concurrent.futures
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = [
    "Let A cause C, B cause C, and W cause both A and B. What is the root cause of C?",
    "Rain makes the grass wet and the sprinkler makes the grass wet. The grass is wet. Did it rain?",
    "Smoking causes tar in the lungs, and tar causes cancer. Does smoking cause cancer?",
    "X causes Y, Y causes Z. If we set Y by hand, does X still change Z?",
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start(command: list[str], port: int, threads: int) -> subprocess.Popen:
    """A server process, once /health answers."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1"}
    log = tempfile.TemporaryFile("w+")  # noqa: SIM115 (lives as long as the server; a pipe nobody reads would fill)
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT)
    deadline = time.monotonic() + 300
    while True:
        if server.poll() is not None:
            log.seek(0)
            raise SystemExit(f"bench-serve: {command[2]} stopped: {log.read()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                return server
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"bench-serve: {' '.join(command[:3])} did not start in 300 s") from None
            time.sleep(0.3)


def stop(server: subprocess.Popen) -> None:
    os.killpg(server.pid, signal.SIGTERM)
    server.wait(timeout=60)


def load(port: int, model: str, level: int, requests: int, max_tokens: int) -> dict:
    """`requests` chat requests, `level` at a time: requests per second and latency percentiles (seconds)."""

    def one(index: int) -> float:
        body = {"model": model, "messages": [{"role": "user", "content": QUESTIONS[index % len(QUESTIONS)]}],
                "max_tokens": max_tokens, "temperature": 0}  # fmt: skip
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", json.dumps(body).encode(),
                                         {"content-type": "application/json"})  # fmt: skip
        began = time.perf_counter()
        with urllib.request.urlopen(request, timeout=600) as reply:
            json.load(reply)
        return time.perf_counter() - began

    one(0)  # warm-up: the first request pays for lazy initialisation
    began = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(level) as pool:
        latencies = sorted(pool.map(one, range(requests)))
    wall = time.perf_counter() - began
    return {"rps": requests / wall, "p50": statistics.median(latencies),
            "p95": latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))]}  # fmt: skip


def folder_of(overrides: list[str], cache: Path) -> Path:
    """The folder claire.serve serves (built now, once), which the plain server is then pointed at."""
    from hydra import compose, initialize_config_dir

    from claire import resolvers
    from claire.serving.folder import served_folder

    resolvers.register()
    os.environ["CLAIRE_CACHE"] = str(cache)
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return served_folder(compose("serve", overrides=overrides).model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default="1,4,16")
    parser.add_argument("--requests", type=int, default=32, help="requests per level (at least the level)")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", type=Path, default=None, help="a local model folder instead of the embedded model")
    opts = parser.parse_args()
    levels = [int(level) for level in opts.levels.split(",")]
    default_cache = Path(os.environ.get("CLAIRE_CACHE", Path.home() / ".cache" / "claire"))
    cache = Path(tempfile.mkdtemp(prefix="bench-serve-")) if opts.model else default_cache  # a folder of links to it
    overrides = [] if not opts.model else [f"model.id={opts.model}", f"model.name={opts.model.name}",
                                           "model.gguf_file=null", "model.gguf_package=null"]  # fmt: skip
    folder = folder_of(overrides, cache)
    servers = {
        "claire.serve": ([sys.executable, "-m", "claire.serve", f"threads={opts.threads}", *overrides], "claire"),
        "transformers serve": (
            [sys.executable, "-m", "transformers.cli.transformers", "serve", str(folder), "--device", "cpu"],
            str(folder),
        ),  # fmt: skip
    }
    results: dict = {name: {level: [] for level in levels} for name in servers}
    for round_ in range(opts.rounds):
        for name, (command, model) in list(servers.items())[:: 1 if round_ % 2 == 0 else -1]:  # alternating
            port = free_port()
            flags = [f"port={port}"] if name == "claire.serve" else ["--port", str(port)]
            server = start([*command, *flags], port, opts.threads)
            try:
                for level in levels:
                    results[name][level].append(load(port, model, level, max(opts.requests, level), opts.max_tokens))
            finally:
                stop(server)
    print(f"bench-serve: {opts.requests} requests of <= {opts.max_tokens} tokens per level, {opts.rounds} rounds, "
          f"{opts.threads} threads, model {folder.name}")  # fmt: skip
    print("| concurrency | server | requests/s | p50 s | p95 s |")
    print("|---|---|---|---|---|")
    summary = {}
    for level in levels:
        medians = {name: {key: statistics.median(r[key] for r in results[name][level]) for key in ("rps", "p50", "p95")}
                   for name in servers}  # fmt: skip
        for name, m in medians.items():
            print(f"| {level} | {name} | {m['rps']:.2f} | {m['p50']:.2f} | {m['p95']:.2f} |")
        claire, plain = medians["claire.serve"], medians["transformers serve"]
        summary[level] = {"rps_overhead_pct": 100 * (plain["rps"] / claire["rps"] - 1),
                          "p50_overhead_pct": 100 * (claire["p50"] / plain["p50"] - 1)}  # fmt: skip
    for level, s in summary.items():
        print(f"overhead at concurrency {level}: requests/s {s['rps_overhead_pct']:+.1f}%, "
              f"p50 latency {s['p50_overhead_pct']:+.1f}%")  # fmt: skip
    print(json.dumps({"overhead_pct": {level: {k: round(v, 1) for k, v in s.items()}
                                        for level, s in summary.items()}}))  # fmt: skip


if __name__ == "__main__":
    main()
