"""`make gpu-check`: Claire's GPU paths on one CUDA card, in minutes, with what they measured.

Runs `python -m claire.train` on the card as a user would: the default trainer (which must follow the card),
trainer=l4 (activation checkpointing), QLoRA with merge=true (merged from a bf16 reload, logits checked), and, with
--big, the report's 7B setting; each run's peak GPU memory is put beside the dry run's estimate for it. Then
`claire.evaluate backend=vllm` on a few items where vLLM is installed. Weights come from --model-dir (a local copy of
Qwen2.5-0.5B-Instruct); without one, the model's architecture is built with random weights, which trains and takes
memory exactly as the real one does (the loss means nothing). Results: <out>/gpu_check.json and a table on stdout.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
GB = 1e9
TRACE = "I follow the arrows of the graph from cause to effect and check each link once more. "


def random_model(architecture: str, tokenizer_dir: Path, folder: Path) -> Path:
    """A model folder with the shipped architecture, random bf16 weights and the given tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if (folder / "config.json").exists():
        return folder
    spec = json.loads((ROOT / "claire/training/architectures" / f"{architecture}.json").read_text())
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**spec), dtype=torch.bfloat16)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(folder)
    del model
    torch.cuda.empty_cache()
    return folder


def long_rows(model_dir: Path, path: Path, length: int, train: int = 48, evaluate: int = 8) -> int:
    """Rows whose chat-formatted text is just under `length` tokens (the dry run's worst case); returns their length."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    question = "A causes B; B causes C. Which variables directly cause C?"

    def response(repeats: int) -> str:
        return f"<think>\n{TRACE * repeats}\n<causality>\nA -> B\nB -> C\n</causality>\n</think>\nThe answer is B."

    def tokens(repeats: int) -> int:
        chat = [{"role": "user", "content": question}, {"role": "assistant", "content": response(repeats)}]
        return len(tokenizer.apply_chat_template(chat, tokenize=True, return_dict=True)["input_ids"])

    repeats = max(1, (length - 64) // max(1, tokens(1) - tokens(0)))
    while tokens(repeats) > length - 16:
        repeats -= 1
    rows = [
        {"question": question, "response": response(repeats), "split": "train" if i < train else "eval"}
        for i in range(train + evaluate)
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return tokens(repeats)


def train(name: str, overrides: list[str], out: Path) -> dict[str, Any]:
    """One `python -m claire.train` run; its metrics, chosen trainer settings, wall time and exit code."""
    folder = out / name
    started = time.time()
    done = subprocess.run(
        [sys.executable, "-m", "claire.train", *overrides, f"output_dir={folder}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    result: dict[str, Any] = {"name": name, "folder": str(folder), "overrides": overrides, "rc": done.returncode}
    result["wall_s"] = round(time.time() - started, 1)
    if done.returncode:
        result["error"] = (done.stderr or done.stdout).strip().splitlines()[-12:]
        return result
    import yaml

    config = yaml.safe_load((folder / "config.yaml").read_text())
    metrics = json.loads((folder / "metrics.json").read_text())
    metrics.pop("history", None)
    result["trainer"] = {k: config["trainer"].get(k) for k in ("max_length", "use_cpu", "activation_checkpointing")}
    result["metrics"] = metrics
    return result


def estimate(folder: Path, checkpointing: bool, precision: str) -> float:
    """The dry run's total (GB) for the config a run saved, with the activation checkpointing it used."""
    from omegaconf import OmegaConf

    import claire.train  # noqa: F401  (registers the config resolvers)
    from claire.training import dry_run

    cfg = OmegaConf.load(folder / "config.yaml")
    return dry_run.plan(cfg, checkpointing=checkpointing)["memory"][precision]["total"] / GB


def vllm_check(model_dir: Path, out: Path) -> dict[str, Any]:
    """claire.evaluate backend=vllm on a few gsm8k items, or why it was skipped."""
    try:
        import vllm  # noqa: F401
    except ImportError:
        return {"skipped": "vLLM is not installed here (it needs its own environment: docs/evaluate.md)"}
    command = [sys.executable, "-m", "claire.evaluate", f"model.id={model_dir}", "model.name=check", "suite=generative"]
    command += ["backend=vllm", "limit=4", f"output_dir={out / 'vllm'}"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    return {"rc": done.returncode, "tail": (done.stderr or done.stdout).strip().splitlines()[-8:]}


def compared(result: dict[str, Any], precision: str) -> dict[str, Any]:
    """A run's peak GPU memory beside the dry run's estimate for it."""
    metrics = result.get("metrics") or {}
    peak = metrics.get("gpu_peak_allocated_bytes")
    if peak is None:
        return result
    checkpointing = bool(result["trainer"]["activation_checkpointing"])
    guess = estimate(Path(result["folder"]), checkpointing, precision)
    result["memory_gb"] = {
        "peak_allocated": round(peak / GB, 2),
        "peak_reserved": round(metrics["gpu_peak_reserved_bytes"] / GB, 2),
        "dry_run_estimate": round(guess, 2),
        "estimate_over_reserved": round(guess / (metrics["gpu_peak_reserved_bytes"] / GB), 2),
    }
    return result


def saved(report: dict[str, Any], result: dict[str, Any] | None, out: Path) -> None:
    """Add a run's result and rewrite gpu_check.json, so a check cut short keeps what it measured."""
    if result is not None:
        report["runs"].append(result)
        print(json.dumps(result, default=str), flush=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))


def table(results: list[dict[str, Any]]) -> str:
    """One line per run: settings, speed, memory measured and estimated."""
    lines = [f"{'run':10}{'rc':>4}{'max_len':>8}{'ckpt':>6}{'tok/s':>9}{'alloc GB':>10}{'resv GB':>9}{'est GB':>8}"]
    for r in results:
        trainer, metrics, memory = r.get("trainer", {}), r.get("metrics", {}), r.get("memory_gb", {})
        lines.append(
            f"{r['name']:10}{r['rc']:>4}{trainer.get('max_length', '-')!s:>8}"
            f"{trainer.get('activation_checkpointing', '-')!s:>6}{metrics.get('tokens_per_second', 0):>9.0f}"
            f"{memory.get('peak_allocated', '-')!s:>10}{memory.get('peak_reserved', '-')!s:>9}"
            f"{memory.get('dry_run_estimate', '-')!s:>8}"
        )
    return "\n".join(lines)


def main() -> None:
    """Parse flags, check the card, run each path, print and save what was measured."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, help="a local copy of Qwen2.5-0.5B-Instruct (else random weights)")
    parser.add_argument("--tokenizer", type=Path, help="tokenizer folder for random weights (default: embedded)")
    parser.add_argument("--out", type=Path, default=ROOT / "experiments" / "gpu-check")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--big", action="store_true", help="also the 7B architecture at the report's settings")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device; run it on a GPU machine")
    args.out.mkdir(parents=True, exist_ok=True)
    card = torch.cuda.get_device_properties(0)
    print(f"gpu_check: {card.name}, {card.total_memory / GB:.1f} GB; torch {torch.__version__}", flush=True)
    tokenizer = args.tokenizer or embedded_tokenizer()
    model = args.model_dir or random_model("qwen2.5-0.5b", tokenizer, args.out / "model-0.5b")
    rows = args.out / "rows-2048.jsonl"
    length = long_rows(model, rows, 2048)
    common = [f"model.id={model}", "model.name=qwen2.5-0.5b", "model.gguf_file=null", "model.gguf_package=null"]
    common += [f"data.path={rows}", f"trainer.max_steps={args.steps}", "trainer.logging_steps=1"]
    common += ["trainer.eval_strategy=no", "trainer.save_strategy=no", "data.max_eval_rows=8"]
    runs = {
        "auto": (common, "bf16"),
        "l4": ([*common, "trainer=l4"], "bf16"),
        "qlora": ([*common, "trainer=l4", "quant=4bit", "merge=true"], "4bit"),
    }
    report: dict[str, Any] = {"card": card.name, "card_bytes": card.total_memory, "row_tokens": length, "runs": []}
    for name, (overrides, precision) in runs.items():
        saved(report, compared(train(name, overrides, args.out), precision), args.out)
    if args.big:
        big = random_model("qwen2.5-7b", tokenizer, args.out / "model-7b")
        seven = [*common[4:], f"model.id={big}", "model.name=qwen2.5-7b", "lora=r32"]
        seven += ["model.gguf_file=null", "model.gguf_package=null"]
        saved(report, compared(train("7b", seven, args.out), "bf16"), args.out)
    report["vllm"] = vllm_check(model, args.out)
    saved(report, None, args.out)
    results = report["runs"]
    print(table(results))
    print(json.dumps({r["name"]: r.get("error") or r.get("metrics", {}).get("merged_from") for r in results}))
    print(json.dumps(report["vllm"]))


def embedded_tokenizer() -> Path:
    """The embedded SmolLM2's tokenizer folder (converted once from its GGUF file)."""
    from hydra import compose, initialize_config_dir

    import claire.train  # noqa: F401
    from claire import models

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return Path(models.model_path(compose("train").model))


if __name__ == "__main__":
    main()
