"""Paired comparison of two models on the same items: accuracy difference with a bootstrap CI, and McNemar.

    python -m claire.stats BASE_SAMPLES.jsonl TUNED_SAMPLES.jsonl [--metric acc] [--by rung]
reads lm-eval's per-item logs (`--log_samples`) and prints the comparison, overall and per group.
"""

import argparse
import math
import random
import sys
from pathlib import Path

from claire import ClaireError
from claire.datafiles import read_samples as read_log

LABELS = {"base": "Base", "tuned": "Claire", "model": "Model"}  # the models compared, as tables name them


def mcnemar_p(base: list[float], tuned: list[float]) -> float:
    """Exact two-sided McNemar p-value: a binomial test on the items only one of the two got right."""
    only_tuned = sum(b < t for b, t in zip(base, tuned, strict=True))
    only_base = sum(b > t for b, t in zip(base, tuned, strict=True))
    n = only_tuned + only_base
    if n == 0:
        return 1.0
    k = min(only_tuned, only_base)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def bootstrap_ci(base: list[float], tuned: list[float], rounds: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of mean(tuned - base), resampling items (paired)."""
    diffs = [t - b for b, t in zip(base, tuned, strict=True)]
    rng = random.Random(seed)
    means = sorted(sum(rng.choices(diffs, k=len(diffs))) / len(diffs) for _ in range(rounds))
    return means[int(0.025 * rounds)], means[int(0.975 * rounds) - 1]


def compare(base: list[float], tuned: list[float]) -> dict[str, float]:
    """Both means, their difference, its 95% CI and McNemar's p-value."""
    if len(base) != len(tuned) or not base:
        raise ValueError(f"need the same non-empty items in both runs; got {len(base)} and {len(tuned)}")
    low, high = bootstrap_ci(base, tuned)
    mean_base, mean_tuned = sum(base) / len(base), sum(tuned) / len(tuned)
    return {
        "n": len(base),
        "base": mean_base,
        "tuned": mean_tuned,
        "diff": mean_tuned - mean_base,
        "ci_low": low,
        "ci_high": high,
        "p_mcnemar": mcnemar_p(base, tuned),
    }


def significant(result: dict, alpha: float, seed_ci: float | None = None) -> bool:
    """p below alpha, the items' CI without 0 and, across seeds, the per-seed differences' t-interval without 0."""
    across_seeds = seed_ci is None or abs(result["diff"]) > seed_ci
    return result["p_mcnemar"] < alpha and not result["ci_low"] <= 0 <= result["ci_high"] and across_seeds


def read_samples(path: Path) -> dict[int, dict]:
    """lm-eval's per-item log, by doc_id."""
    return {row["doc_id"]: row for row in read_log(path)}


def paired(base: dict[int, dict], tuned: dict[int, dict], metric: str, by: str | None) -> dict[str, dict]:
    """compare() overall and per value of doc[by], on the items both runs scored."""
    ids = sorted(set(base) & set(tuned))
    groups: dict[str, list[int]] = {"all": ids}
    if by:
        for i in ids:
            groups.setdefault(f"{by}={base[i]['doc'][by]}", []).append(i)
    return {
        name: compare([float(base[i][metric]) for i in items], [float(tuned[i][metric]) for i in items])
        for name, items in groups.items()
    }


def main(argv: list[str] | None = None) -> int:
    """Print the paired comparison of two lm-eval sample logs."""
    parser = argparse.ArgumentParser(prog="python -m claire.stats", description=__doc__.splitlines()[0])
    parser.add_argument("base", type=Path)
    parser.add_argument("tuned", type=Path)
    parser.add_argument("--metric", default="acc")
    parser.add_argument("--by", default=None, help="a doc field to break the comparison down by, e.g. rung")
    opts = parser.parse_args(argv)
    try:
        base = read_samples(opts.base)
        table = paired(base, read_samples(opts.tuned), opts.metric, opts.by)
    except (ClaireError, OSError, KeyError, ValueError) as error:
        print(f"claire.stats: error: {error}", file=sys.stderr)
        return 2
    values = {float(row[opts.metric]) for row in base.values()}
    # exact McNemar is the sign test on the items that differ; on a graded metric (graph_f1) call it that
    test = "McNemar p" if values <= {0.0, 1.0} else "sign test p"
    print(f"| group | n | base {opts.metric} | tuned | diff [95% CI] | {test} |")
    print("|---|---|---|---|---|---|")
    for name, r in table.items():
        print(
            f"| {name} | {r['n']} | {r['base']:.3f} | {r['tuned']:.3f} | "
            f"{r['diff']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}] | {r['p_mcnemar']:.3g} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
