"""Test-time scaling: causal-suite accuracy against tokens generated, for thinking budgets and vote counts, base and
fine-tuned.

Each setting is one `claire.evaluate` of the `claire_causal` task on the same first --items test items, all with at
most --max-new-tokens new tokens: greedy (the natural length), s1 budget forcing at each cap in --budgets (the
minimum half the cap, one "Wait"), and self-consistency (temperature 0.7) sampled once at the largest count in
--votes; each smaller count is read from the first k of those samples (lm-eval's take_first_k idea), voted by the
same filter and scored by the task's own scorer, and the largest count so read must reproduce lm-eval's score. With
--run both the run and its base model are scored with identical settings; without it, the model alone. It writes
accuracy with a 95% interval (Wilson) and the mean tokens generated per item (every sample of a vote counted) as a
table, JSON and a PNG of accuracy against tokens into --out.
    python benchmarks/bench_ttc.py --run experiments/<run> --data data/causal-n5000-s0 [--items 200]
        [--budgets 64,128,256] [--votes 1,2,4,8] [--max-new-tokens 512] [--threads 2] [--out DIR]
"""

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def settings(opts: argparse.Namespace) -> dict[str, list[str]]:
    """Each setting's name and its claire.evaluate overrides."""
    length = [f"gen_kwargs.max_gen_toks={opts.max_new_tokens}"]  # the same generation length for every setting
    found = {"greedy": ["decode=greedy", *length]}
    for cap in opts.budgets:
        found[f"budget {cap}"] = ["decode=budget", f"decode.max_thinking_tokens={cap}", "decode.max_waits=1",
                                  f"decode.min_thinking_tokens={cap // 2}", *length]  # fmt: skip
    if opts.votes:  # one sampled run; the smaller counts are read from its first samples (votes())
        most = max(opts.votes)
        found[f"vote {most}"] = ["decode=vote", f"decode.samples={most}", "decode.temperature=0.7", *length]
    return found


def evaluate(opts: argparse.Namespace, overrides: list[str], out: Path) -> None:
    """One claire.evaluate in a fresh process."""
    target = [f"run={opts.run}"] if opts.run else [f"model.id={opts.model}", f"model.name={Path(opts.model).name}",
                                                   "model.gguf_file=null", "model.gguf_package=null"]  # fmt: skip
    command = [sys.executable, "-m", "claire.evaluate", *target, "tasks=[claire_causal]", f"limit={opts.items}",
               f"threads={opts.threads}", f"output_dir={out}", *overrides]  # fmt: skip
    if opts.data:
        command.append(f"data.data_dir={opts.data}")
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"bench-ttc: claire.evaluate {' '.join(overrides)} failed:\n{done.stderr[-3000:]}")


def wilson(correct: int, n: int) -> tuple[float, float]:
    """The Wilson 95% interval of a proportion (closed form; nothing to resample)."""
    z, p = 1.96, correct / n
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n)


def point(right: list[float], outputs: list[str], tokenizer: Any) -> dict:
    """Accuracy, its Wilson interval and mean generated tokens per item of one setting."""
    tokens = sum(len(tokenizer(text or "", add_special_tokens=False)["input_ids"]) for text in outputs)
    n, correct = len(right), sum(right)
    return {"n": n, "accuracy": correct / n, "ci": wilson(round(correct), n), "tokens": tokens / n}


def rows_of(folder: Path) -> list[dict]:
    """One model's lm-eval sample log, one row per item."""
    from claire import stats

    return list(stats.read_samples(folder / "samples_claire_causal.jsonl").values())


def scored(folder: Path, tokenizer: Any) -> dict:
    """A one-completion setting (greedy, a budget) as lm-eval scored it."""
    rows = rows_of(folder)
    return point([float(row["acc"]) for row in rows], [text for row in rows for text in row["resps"][0]], tokenizer)


def votes(folder: Path, counts: list[int], tokenizer: Any) -> dict[str, dict]:
    """Each vote count read from the first k samples of one sampled run: voted by the task's filter, scored by its
    scorer; the run's own count must give lm-eval's recorded score."""
    from claire.evaluation.tasks.causal.utils import process_results
    from claire.evaluation.tasks.filters import CausalVote

    rows, found = rows_of(folder), {}
    for k in sorted(counts):
        firsts = [row["resps"][0][:k] for row in rows]
        chosen = CausalVote().apply(firsts, [row["doc"] for row in rows])
        right = [process_results(row["doc"], [text])["acc"] for row, text in zip(rows, chosen, strict=True)]
        found[f"vote {k}"] = point(right, [text for first in firsts for text in first], tokenizer)
        if k == max(counts) and right != [float(row["acc"]) for row in rows]:
            raise SystemExit(f"bench-ttc: vote {k} read from {folder}'s samples differs from lm-eval's own scores")
    return found


def count(setting: str) -> int:
    """A setting's number (its cap or vote count; greedy 0), to order a line's points."""
    return int(setting.split()[-1]) if " " in setting else 0


def plot(table: dict, path: Path) -> None:
    """Accuracy against mean tokens generated: one line per model and kind (budgets, votes), 95% bars."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for (model, points), colour in zip(table.items(), ("tab:blue", "tab:red", "tab:green"), strict=False):
        for kind, style in (("greedy", "*"), ("budget", "o-"), ("vote", "s--")):
            names = sorted((s for s in points if s.startswith(kind)), key=count)
            xs = [points[s]["tokens"] for s in names]
            ys = [points[s]["accuracy"] for s in names]
            errors = [[y - points[s]["ci"][0] for s, y in zip(names, ys, strict=True)],
                      [points[s]["ci"][1] - y for s, y in zip(names, ys, strict=True)]]  # fmt: skip
            size = 10 if kind == "greedy" else 5
            label = f"{model}: {kind}"
            ax.errorbar(xs, ys, yerr=errors, fmt=style, color=colour, capsize=3, markersize=size, label=label)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("mean tokens generated per item (log)")
    ax.set_ylabel("accuracy (95% Wilson interval)")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default=None, help="a claire.train run folder: it and its base model")
    parser.add_argument("--model", default=None, help="without --run: a local model folder alone")
    parser.add_argument("--data", default=None, help="the causal suite's dataset folder (default: the packaged sample)")
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--budgets", default="64,128,256")
    parser.add_argument("--votes", default="1,2,4,8")
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="where the table, JSON and PNG go (default: a temp dir)")
    opts = parser.parse_args()
    if not (opts.run or opts.model):
        raise SystemExit("bench-ttc: give --run <a claire.train run folder> or --model <a model folder>")
    opts.budgets = [int(b) for b in opts.budgets.split(",") if b]
    opts.votes = [int(v) for v in opts.votes.split(",") if v]
    if any(count < 1 for count in opts.votes):
        raise SystemExit("bench-ttc: --votes must be counts of 1 or more, e.g. 1,2,4,8")
    out = opts.out or Path(tempfile.mkdtemp(prefix="bench-ttc-"))
    out.mkdir(parents=True, exist_ok=True)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(Path(opts.run) / "adapter") if opts.run else opts.model)
    table: dict[str, dict] = {}
    for name, overrides in settings(opts).items():
        folder = out / name.replace(" ", "-")
        if not (folder / "results.json").is_file():  # a rerun goes on where it stopped
            shutil.rmtree(folder, ignore_errors=True)  # this benchmark's own unfinished setting
            evaluate(opts, overrides, folder)
        for model in ("base", "tuned") if opts.run else ("model",):
            points = table.setdefault(model, {})
            if name.startswith("vote"):
                points.update(votes(folder / model, opts.votes, tokenizer))
            else:
                points[name] = scored(folder / model, tokenizer)
    print(f"bench-ttc: claire_causal, {opts.items} items, max {opts.max_new_tokens} new tokens; results in {out}")
    print("| model | setting | accuracy [95% CI] | tokens/item |")
    print("|---|---|---|---|")
    for model, points in table.items():
        for name, p in points.items():
            print(
                f"| {model} | {name} | {p['accuracy']:.3f} [{p['ci'][0]:.3f}, {p['ci'][1]:.3f}] | {p['tokens']:.0f} |"
            )
    (out / "ttc.json").write_text(json.dumps(table, indent=1))
    plot(table, out / "ttc.png")
    print(f"plot: {out / 'ttc.png'}")


if __name__ == "__main__":
    main()
