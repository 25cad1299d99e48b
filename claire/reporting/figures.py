"""The report's figures as PNG: base vs fine-tuned bars per experiment and per benchmark, loss (and, for RL runs,
reward) curves per run."""

import re
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from claire.reporting.experiments import Group  # noqa: E402
from claire.reporting.tables import metric_label  # noqa: E402

TITLE = "Accuracy Comparison of Base vs SFT Model"  # the report's figure title
COLOURS = {"base": "#8c8c8c", "tuned": "#1f77b4"}


def slug(text: str) -> str:
    """A file-name-safe form of a label."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")


def bar_values(row: dict, column: str) -> tuple[float | None, float | None]:
    """The reproduced mean and CI half-width of a table row, else the published number."""
    if row[f"{column}_n"]:
        return row[column], row[f"{column}_ci"]
    text = row.get(f"published_{column}")
    return (float(text), None) if text else (None, None)


def save(fig: Any, ax: Any, title: str, path: Path) -> None:
    """Title, legend and layout, then the PNG; the figure is closed."""
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def accuracy_like(row: dict) -> bool:
    """Rows a 0-1 bar chart can show: some value present and none outside [0, 1] (not e.g. graph_shd)."""
    values = [bar_values(row, c)[0] for c in COLOURS]
    present = [v for v in values if v is not None]
    return bool(present) and all(0.0 <= v <= 1.0 for v in present)


def bars(labels: list[str], rows: list[dict], title: str, path: Path) -> None:
    """Grouped bars, Base beside Claire, with 95% CIs over seeds and the published numbers as markers."""
    fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * len(rows) + 1.5), 4.0))
    for offset, column, name in ((-0.2, "base", "Base"), (0.2, "tuned", "Claire (SFT)")):
        values = [bar_values(r, column) for r in rows]
        heights = [v if v is not None else 0.0 for v, _ in values]
        errors = [e or 0.0 for _, e in values] if any(e for _, e in values) else None
        xs = [i + offset for i in range(len(rows))]
        if not any(r[f"{column}_n"] for r in rows):
            name += " (published)"
        ax.bar(xs, heights, width=0.4, yerr=errors, capsize=3, color=COLOURS[column], label=name)
        for x, (value, _) in zip(xs, values, strict=True):
            if value is not None:
                ax.annotate(f"{value:.2f}", (x, value), ha="center", va="bottom", fontsize=8, xytext=(0, 2),
                            textcoords="offset points")  # fmt: skip
        shown = [(x, float(r[f"published_{column}"])) for x, r in zip(xs, rows, strict=True)
                 if r[f"{column}_n"] and r.get(f"published_{column}")]  # fmt: skip
        if shown:
            ax.scatter(*zip(*shown, strict=True), marker="_", s=400, color="black", zorder=3,
                       label="published" if column == "base" else None)  # fmt: skip
    ax.set_xticks(range(len(rows)), labels)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy")
    save(fig, ax, title, path)


def loss_curves(history: list[dict], title: str, path: Path) -> bool:
    """Training and evaluation loss against optimizer steps; False when the history has neither."""
    train = [(h["step"], h["loss"]) for h in history if "loss" in h and "step" in h]
    evals = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h and "step" in h]
    if not train and not evals:
        return False
    fig, ax = plt.subplots(figsize=(6.0, 3.6))
    for points, name in ((train, "training loss"), (evals, "evaluation loss")):
        if points:
            ax.plot(*zip(*points, strict=True), marker="o" if len(points) < 30 else None, label=name)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    save(fig, ax, title, path)
    return True


def reward_curves(history: list[dict], title: str, path: Path) -> bool:
    """An RL run's mean reward and each reward function's mean against optimizer steps; False when it has none."""
    keys = ["reward", *sorted({k for h in history for k in h if k.startswith("rewards/") and k.endswith("/mean")})]
    curves = {key: [(h["step"], h[key]) for h in history if key in h and "step" in h] for key in keys}
    if not curves["reward"]:
        return False
    fig, ax = plt.subplots(figsize=(6.0, 3.6))
    for key, points in curves.items():
        name = "reward (weighted sum)" if key == "reward" else key.split("/")[1]
        ax.plot(*zip(*points, strict=True), marker="o" if len(points) < 30 else None, label=name)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("mean reward of the step's completions")
    save(fig, ax, title, path)
    return True


def draw(groups: list[Group], tables: dict[str, list[dict]], out: Path) -> dict[str, dict[str, str]]:
    """Every figure of the report; {"bars": {file: title}, "loss": {file: title}}."""
    drawn: dict[str, dict[str, str]] = {"bars": {}, "loss": {}}
    tables = {key: [r for r in rows if accuracy_like(r)] for key, rows in tables.items()}
    for group in groups:
        rows = tables[group.key]
        if rows:
            name, title = f"bars-{slug(group.label)}.png", f"{TITLE}: {group.label} ({group.model})"
            bars([f"{r['benchmark']}\n{metric_label(r)}" for r in rows], rows, title, out / name)
            drawn["bars"][name] = title
    benchmarks = sorted({(r["benchmark"], r["metric"], r["filter"]) for rows in tables.values() for r in rows})
    for key in benchmarks:
        rows = [r for rows in tables.values() for r in rows if (r["benchmark"], r["metric"], r["filter"]) == key]
        label = metric_label(rows[0])
        name, title = f"bars-{slug(key[0])}-{slug(label)}.png", f"{TITLE}: {key[0]}, {label}"
        bars([r["group"] for r in rows], rows, title, out / name)
        drawn["bars"][name] = title
    for group in groups:
        for run in group.runs:
            label = f"{group.label}, seed {run.config.get('seed')} ({run.folder.name})"
            name = f"loss-{slug(group.label)}-seed{run.config.get('seed')}-{slug(run.folder.name)}.png"
            if loss_curves((run.metrics or {}).get("history", []), label, out / name):
                drawn["loss"][name] = label
            name = name.replace("loss-", "reward-", 1)
            if reward_curves((run.metrics or {}).get("history", []), f"{label}: reward", out / name):
                drawn["loss"][name] = f"{label}: reward"
    return drawn
