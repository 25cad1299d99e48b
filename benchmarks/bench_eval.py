"""Evaluation wall time: `claire.evaluate` vs lm-eval's command line at its default batch size, same items.

Both evaluate the embedded model on the same gsm8k items (0-shot, chat template, `claire_gsm8k_chat`, identical
generation settings and dtype) in separate processes, alternating; the wall time of each whole command (model
load included) is printed with the scores of both, so "faster at equal scores" can be read off one table.
The items are the first N rows of ../shared/data/gsm8k/train.jsonl (the test split is not on this machine).
    python benchmarks/bench_eval.py [--items 40] [--max-gen-toks 512] [--repeats 1] [--threads 2] [--model DIR]
--model evaluates a local Hugging Face model folder instead of the embedded model (e.g. a tiny one for a smoke run).
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

from claire import machine

ROOT = Path(__file__).resolve().parents[1]
GSM8K = ROOT.parent / "shared" / "data" / "gsm8k" / "train.jsonl"
FILTERS = ("strict-match", "flexible-extract", "claire")


def claire_command(opts: argparse.Namespace, out: Path, dtype: str) -> list[str]:
    """claire.evaluate with its defaults (batched generation), on the embedded model (or --model)."""
    model = []
    if opts.model:
        model = [
            f"model.id={opts.model}",
            f"model.name={opts.model.name}",
            "model.gguf_file=null",
            "model.gguf_package=null",
        ]
    return [
        sys.executable, "-m", "claire.evaluate", "tasks=[claire_gsm8k_chat]", f"limit={opts.items}",
        f"data.gsm8k_test_file={GSM8K}", f"gen_kwargs.max_gen_toks={opts.max_gen_toks}", f"backend.dtype={dtype}",
        f"threads={opts.threads}", f"output_dir={out}", *model,
    ]  # fmt: skip


def lm_eval_command(opts: argparse.Namespace, out: Path, model_dir: str, dtype: str) -> list[str]:
    """lm-eval's CLI on the same task, items and settings, at its default batch size (1)."""
    return [
        str(Path(sys.executable).parent / "lm_eval"), "--model", "hf",
        "--model_args", f"pretrained={model_dir},dtype={dtype}", "--device", "cpu", "--tasks", "claire_gsm8k_chat",
        "--include_path", str(ROOT / "claire" / "evaluation" / "tasks"),
        "--metadata", json.dumps({"gsm8k_test_file": str(GSM8K)}),
        "--apply_chat_template", "--limit", str(opts.items), "--gen_kwargs", f"max_gen_toks={opts.max_gen_toks}",
        "--output_path", str(out), "--seed", "0", "--log_samples",
    ]  # fmt: skip


def timed(command: list[str], threads: int) -> float:
    """Wall seconds of one command in a fresh process (threads pinned, OpenMP threads passive)."""
    env = {
        **os.environ,
        "OMP_WAIT_POLICY": "PASSIVE",
        "OMP_NUM_THREADS": str(threads),
        "TOKENIZERS_PARALLELISM": "false",
    }
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"bench_eval: {command[2] if 'claire' in command[2] else 'lm_eval'} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - started


def scores(results: Path) -> dict[str, float]:
    """exact_match per filter from an lm-eval results file."""
    values = json.loads(results.read_text())["results"]["claire_gsm8k_chat"]
    return {f: values[f"exact_match,{f}"] for f in FILTERS}


def outputs(samples: Path) -> dict[int, str]:
    """Each item's raw output from an lm-eval samples file."""
    rows = [json.loads(line) for line in samples.read_text().splitlines() if line.strip()]
    return {row["doc_id"]: row["resps"][0][0] for row in rows}


def main() -> None:
    """Alternate the two commands, print medians, scores and the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=40)
    parser.add_argument("--max-gen-toks", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", type=Path, default=None, help="a local model folder (default: the embedded model)")
    opts = parser.parse_args()
    if not GSM8K.exists():
        sys.exit(f"bench_eval: needs {GSM8K} (GSM8K in the gsm8k format)")
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import compose_evaluate, compose_train

    from claire import models

    model_dir = str(opts.model) if opts.model else models.model_path(compose_train().model)
    dtype = "bfloat16" if machine.cpu_has_bf16() else "float32"
    times: dict[str, list[float]] = {"claire": [], "lm_eval": []}
    found: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(opts.repeats):
            out = Path(tmp) / f"claire-{i}"
            times["claire"].append(timed(claire_command(opts, out, dtype), opts.threads))
            found["claire"] = scores(out / "model" / "results.json")
            texts = {"claire": outputs(out / "model" / "samples_claire_gsm8k_chat.jsonl")}
            out = Path(tmp) / f"lm-eval-{i}"
            times["lm_eval"].append(timed(lm_eval_command(opts, out, model_dir, dtype), opts.threads))
            found["lm_eval"] = scores(next(out.rglob("results_*.json")))
            texts["lm_eval"] = outputs(next(out.rglob("samples_claire_gsm8k_chat_*.jsonl")))
    same = sum(texts["claire"][d] == texts["lm_eval"].get(d) for d in texts["claire"])
    median = {k: statistics.median(v) for k, v in times.items()}
    print(f"{opts.items} gsm8k items, 0-shot chat, max_gen_toks {opts.max_gen_toks}, {dtype}, {opts.threads} threads, ")
    batch = compose_evaluate().backend.batch_size or "32 (null on a CPU)"
    print(f"median of {opts.repeats}; claire batch {batch} vs lm_eval's CLI at its default batch 1\n")
    print("| | wall s | " + " | ".join(f"exact_match ({f})" for f in FILTERS) + " |")
    print("|---|---|" + "---|" * len(FILTERS))
    for name in ("claire", "lm_eval"):
        print(f"| {name} | {median[name]:.1f} | " + " | ".join(f"{found[name][f]:.3f}" for f in FILTERS) + " |")
    print(f"\nidentical outputs: {same} of {len(texts['claire'])} (batched {dtype} rounds differently from batch 1)")
    print(f"claire is {median['lm_eval'] / median['claire']:.2f}x faster (target: at least 3x at equal scores)")


if __name__ == "__main__":
    main()
