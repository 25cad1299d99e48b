"""Teacher throughput under a rate limit: Claire's paced concurrent engine vs asking one request at a time.

A scripted OpenAI-compatible server on 127.0.0.1 answers every chat completion after a fixed latency and refuses
(429) anything over its requests-per-minute window. The engine runs with the same limit as `api.rpm`; the share of
the limit it achieves is printed next to a one-at-a-time baseline (what a plain loop over `client.create` gets).
Every response still goes through the fsynced ledger, as in a real run. Medians over repeats.
    python benchmarks/bench_generate.py [--rpm 1200] [--latency 0.25] [--requests 300] [--repeats 3]
                                        [--baseline-requests N]
"""

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import openai
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from scripted_server import ScriptedServer  # noqa: E402

from claire.teacher import engine  # noqa: E402
from claire.teacher.ledger import Ledger  # noqa: E402


def job(n: int, rpm: int | None, concurrency: int) -> engine.Job:
    """n distinct questions of one source; every answer is accepted (the judge is not what is measured)."""
    rows = [{"id": f"q{i}", "source": "gsm8k", "question": f"What is {i} + {i}?", "gold": str(2 * i)} for i in range(n)]
    api = OmegaConf.create(
        {"model": "local", "temperature": 0.0, "max_tokens": 256, "seed": 0, "extra_body": {}, "rpm": rpm,
         "tpm": None, "max_concurrency": concurrency, "max_consecutive_failures": 20, "batch_discount": 0.5}
    )  # fmt: skip
    prompt = {"version": "bench", "hash": "0", "system": "", "user": "{question}"}
    return engine.Job({"gsm8k": rows}, {"gsm8k": n}, prompt, api, None, None, 1, lambda row, entry: "ok")


async def measure(server: ScriptedServer, n: int, rpm: int | None, concurrency: int) -> tuple[float, int]:
    """Requests per minute achieved from the first request to the last answer, and the 429s the server sent."""
    refused = server.counts["429"]
    with tempfile.TemporaryDirectory() as folder:
        ledger = Ledger(Path(folder) / "ledger.jsonl")
        client = openai.AsyncOpenAI(base_url=server.url, api_key="bench", max_retries=6)
        teacher = engine.Teacher(job(n, rpm, concurrency), ledger, client, progress=False)
        start = time.monotonic()
        outcome = await teacher.run_online()
        elapsed = time.monotonic() - start
        await client.close()
        pairs, _ = teacher.accepted()
        ledger.close()
    assert len(pairs) == n, outcome
    return n / elapsed * 60, server.counts["429"] - refused


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rpm", type=int, default=1200, help="the rate limit, server and client alike")
    parser.add_argument("--latency", type=float, default=0.25, help="seconds the server takes per request")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--baseline-requests", type=int, default=None, help="one-at-a-time requests (default: about 10 s of them)"
    )
    args = parser.parse_args()
    baseline_n = args.baseline_requests or max(10, int(10 / args.latency))  # about 10 s of one-at-a-time requests
    paced, baseline = [], []
    for _ in range(args.repeats):  # a fresh server each time: an empty one-minute window
        with ScriptedServer(latency=args.latency, rpm=args.rpm) as server:
            paced.append(asyncio.run(measure(server, args.requests, args.rpm, 64)))
        with ScriptedServer(latency=args.latency, rpm=args.rpm) as server:
            baseline.append(asyncio.run(measure(server, baseline_n, args.rpm, 1)))
    print(f"rate limit {args.rpm} requests/min, server latency {args.latency} s, medians of {args.repeats} runs")
    print(f"{'engine':<40}{'requests/min':>14}{'share of limit':>16}{'429s':>7}")
    rows = [
        (f"claire: paced, up to 64 in flight ({args.requests})", paced),
        (f"one at a time ({baseline_n})", baseline),
    ]
    for name, results in rows:
        rate = statistics.median(r for r, _ in results)
        refusals = statistics.median(c for _, c in results)
        print(f"{name:<40}{rate:>14.0f}{rate / args.rpm:>16.1%}{refusals:>7.0f}")
    rate, one = statistics.median(r for r, _ in paced), statistics.median(r for r, _ in baseline)
    print(f"claire reaches {rate / args.rpm:.1%} of the limit (target >= 90%), {rate / one:.1f}x one at a time")


if __name__ == "__main__":
    main()
