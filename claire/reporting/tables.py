"""The report's tables: means over seeds with their CIs, the paired test, the published numbers, markdown and CSV."""

import csv
import statistics
from pathlib import Path
from typing import Any

from claire import stats
from claire.reporting.experiments import COMPARED, Group, both, item_scores, scores


def mean_ci(values: list[float]) -> tuple[float, float | None]:
    """Mean and the half-width of its 95% t-interval (None for a single value)."""
    from scipy.stats import t

    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, None
    return mean, float(t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / len(values) ** 0.5)


def paired_test(group: Group, key: tuple[str, str, str], alpha: float) -> dict | None:
    """Base vs fine-tuned on the same items. One seed: the evaluation's own test (bootstrap CI, McNemar). Several:
    each item's mean over the seeds compared with stats.compare, which holds the seeds fixed, so the per-seed
    differences' t-interval is given too; significant only when p < alpha and neither interval holds 0."""
    per_run = [s for s in (scores(r).get(key) for r in group.runs) if s and both(s)]
    if not per_run:
        return None
    if len(per_run) == 1:
        found = per_run[0].get("comparison")
        if not found:
            return None
        result = {k: found[k] for k in ("diff", "ci_low", "ci_high", "p_mcnemar", "test", "n")}
        return result | {"seed_ci": None, "significant": stats.significant(result, alpha)}
    items = {label: [item_scores(s["eval"], label, s["task"], key[1], key[2]) for s in per_run] for label in COMPARED}
    common = set.intersection(*(set(i) for lists in items.values() for i in lists))
    if not common:
        return None
    means = {label: [statistics.fmean(i[d] for i in lists) for d in sorted(common)] for label, lists in items.items()}
    result = {k: v for k, v in stats.compare(means["base"], means["tuned"]).items() if k not in COMPARED}
    _, seed_ci = mean_ci([s["tuned"] - s["base"] for s in per_run])
    result |= {"test": f"sign test on item means over {len(per_run)} seeds", "seed_ci": seed_ci}
    return result | {"significant": stats.significant(result, alpha, seed_ci)}


def mixed_decoding(entries: list[dict]) -> str | None:
    """Why these numbers cannot be compared: different backends decoded them (lm-eval's vLLM path keeps special
    tokens in the text, its HF path drops them), naming one model folder per backend; None when they can."""
    seen: dict[str, Path] = {}
    for entry in entries:
        for label, backend in entry.get("decoded", {}).items():
            if backend:
                seen.setdefault(backend, entry["eval"] / label)
    if len(seen) < 2:
        return None
    sides = [f"{backend} decoding ({folder})" for backend, folder in sorted(seen.items())]
    return "not comparable: " + " vs ".join(sides)


def published(group: Group) -> dict[tuple[str, str, str], dict]:
    """The reference's evaluation rows by (benchmark, metric, filter), values as the report printed them."""
    rows = (group.reference or {}).get("evaluation", [])
    return {
        (r["benchmark"], r["metric"], r["filter"]): {c: as_printed(r.get(c)) for c in ("base", "tuned")} for r in rows
    }


def as_printed(value: Any) -> str | None:
    """A published number as text (reference.json keeps them as the report printed them: "0.31")."""
    return None if value is None else str(value)


def table_rows(group: Group, wanted: list[dict], every: bool, alpha: float) -> list[dict]:
    """One row per benchmark metric: reproduced means (± CI over seeds), the paired test, the published numbers;
    a row whose numbers different backends decoded shows none of them, and says why (not_comparable)."""
    measured: dict[tuple[str, str, str], list[dict]] = {}
    for run in group.runs:
        for key, value in scores(run).items():
            measured.setdefault(key, []).append(value)
    printed = published(group)
    keys = [(w["benchmark"], w["metric"], w["filter"]) for w in wanted]
    keys = [k for k in keys if k in measured or k in printed]
    if every:
        keys += sorted(k for k in measured if k not in keys)
    rows = []
    for key in keys:
        row = {"group": group.label, "model": group.model, "seeds": len(group.runs), "benchmark": key[0]}
        row |= {"metric": key[1], "filter": key[2], "not_comparable": mixed_decoding(measured.get(key, []))}
        for column in ("base", "tuned"):
            values = [v[column] for v in measured.get(key, []) if column in v]
            mean, half = mean_ci(values) if values and not row["not_comparable"] else (None, None)
            row |= {column: mean, f"{column}_ci": half, f"{column}_n": len(values)}
            text = printed.get(key, {}).get(column)
            row[f"published_{column}"] = text
            row[f"{column}_minus_published"] = mean - float(text) if mean is not None and text is not None else None
        row["test"] = paired_test(group, key, alpha) if key in measured and not row["not_comparable"] else None
        rows.append(row)
    return rows


def metric_label(row: dict) -> str:
    """'exact_match (strict-match)', or the metric alone when it has no filter."""
    return row["metric"] if row["filter"] == "none" else f"{row['metric']} ({row['filter']})"


def number(value: float | None, half: float | None = None, sign: bool = False) -> str:
    """0.310, 0.310 ± 0.012, +0.090; — when missing."""
    if value is None:
        return "—"
    text = f"{value:+.3f}" if sign else f"{value:.3f}"
    return f"{text} ± {half:.3f}" if half is not None else text


def test_cells(test: dict | None, alpha: float) -> list[str]:
    """The difference with its CI, and p (saying when not significant)."""
    if not test:
        return ["—", "—"]
    diff = f"{test['diff']:+.3f} [{test['ci_low']:+.3f}, {test['ci_high']:+.3f}]"
    if test.get("seed_ci") is not None:
        diff += f"; over seeds ± {test['seed_ci']:.3f}"
    verdict = "" if test["significant"] else f", not significant at {alpha}"
    return [diff, f"{test['p_mcnemar']:.3g} ({test['test']}, n={test['n']}){verdict}"]


def markdown_table(group: Group, rows: list[dict], alpha: float) -> str:
    """The report's table for one experiment: published alone, reproduced alone, or both with the differences."""
    reproduced, reference = bool(group.runs), group.reference is not None
    head = ["Benchmark", "Metric"]
    if reproduced:
        head += ["Base", "Claire", "Claire − Base (95% CI)", "p"]
    if reference:
        head += ["Published Base", "Published Claire"] if reproduced else ["Base", "Claire"]
    if reproduced and reference:
        head += ["Base − published", "Claire − published"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] if rows else ["No benchmark numbers."]
    for row in rows:
        cells = [row["benchmark"], metric_label(row)]
        if reproduced:
            cells += [number(row["base"], row["base_ci"]), number(row["tuned"], row["tuned_ci"])]
            cells += [row["not_comparable"], "—"] if row["not_comparable"] else test_cells(row["test"], alpha)
        if reference:
            cells += [row["published_base"] or "—", row["published_tuned"] or "—"]  # "" never: as_printed
        if reproduced and reference:
            cells += [number(row["base_minus_published"], sign=True), number(row["tuned_minus_published"], sign=True)]
        lines.append("| " + " | ".join(cells) + " |")
    if reference and group.reference.get("source"):
        lines.append(f"\n*Published: {group.reference['source']}*")
    return "\n".join(lines)


def group_title(group: Group) -> str:
    """'claire-0.5b-v2 (qwen2.5-0.5b): 3 seeds (1, 2, 3)', or that it is the published run only."""
    if not group.runs:
        return f"{group.label} ({group.model}): published by the report, not reproduced here"
    seeds = ", ".join(str(s) for s in group.seeds)
    count = f"{len(group.runs)} seed{'s' if len(group.runs) > 1 else ''}"
    beside = ", beside the published run" if group.reference else ""
    shown = ", ".join(group.differs[:6]) + (f" and {len(group.differs) - 6} more" if len(group.differs) > 6 else "")
    differs = f" (its config differs at {shown})" if group.differs else ""
    return f"{group.label} ({group.model}): {count} ({seeds}){beside}{differs}"


CSV_FIELDS = [
    "group", "model", "seeds", "benchmark", "metric", "filter", "base", "base_ci", "base_n", "tuned", "tuned_ci",
    "tuned_n", "diff", "ci_low", "ci_high", "p", "test", "significant", "published_base", "published_tuned",
    "base_minus_published", "tuned_minus_published", "not_comparable",
]  # fmt: skip


def write_csv(rows: list[dict], path: Path) -> None:
    """tables.csv: every table row, the paired test flattened into columns."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            test = row["test"] or {}
            flat = {"diff": test.get("diff"), "ci_low": test.get("ci_low"), "ci_high": test.get("ci_high")}
            flat |= {"p": test.get("p_mcnemar"), "test": test.get("test"), "significant": test.get("significant")}
            writer.writerow(row | flat)


def parameter_table(groups: list[Group]) -> str:
    """Trainable parameters per experiment: published (table 4.1) beside what the runs and the dry run counted."""
    head = (
        "| Experiment | Model | Published | Counted by the runs | Their total parameters | Counted by `dry_run=true` |"
    )
    lines = [head, "|---|---|---|---|---|---|"]
    for group in groups:
        printed = (group.reference or {}).get("trainable_params", {}).get("printed") or "—"
        counted = sorted({r.metrics.get("trainable_params") for r in group.runs if r.metrics} - {None})
        totals = sorted({r.metrics.get("total_params") for r in group.runs if r.metrics} - {None})
        planned = f"{group.planned:,}" if isinstance(group.planned, int) else group.planned or "—"
        cells = [group.label, group.model, printed, ", ".join(f"{c:,}" for c in counted) or "—"]
        lines.append("| " + " | ".join([*cells, ", ".join(f"{t:,}" for t in totals) or "—", planned]) + " |")
    return "\n".join(lines)
