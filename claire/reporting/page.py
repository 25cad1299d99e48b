"""report.md: the tables, parameter counts, figures, decontamination rows and the list of runs read, as one page."""

import json

from omegaconf import DictConfig

from claire import ClaireError
from claire.decontamination import for_run
from claire.reporting.experiments import Group, Run, data_samples
from claire.reporting.tables import parameter_table


def decontamination(groups: list[Group], cfg: DictConfig) -> list[str]:
    """Markdown rows: per training data set and evaluation task, the share of eval items with an n-gram overlap."""
    lines = []
    for run, samples in data_samples(groups).values():
        name = run.config.get("data", {}).get("name")
        try:
            found = for_run(run.folder, n=cfg.decontamination.n, samples=samples)
        except ClaireError as error:
            lines.append(f"| {name} | — | — | — | not computed: {error} |")
            continue
        for task, result in sorted(found.items()):
            lines.append(
                f"| {name} ({result['train_rows']:,} rows) | {task} | {result['items']} | "
                f"{result['contaminated']} | {result['share']:.1%} |"
            )
    return lines


def page(
    cfg: DictConfig, found: list[Run], groups: list[Group], sections: list[str], drawn: dict, contamination: list | None
) -> str:
    """report.md: the tables, the parameter counts, the figures, decontamination and the runs read."""
    parts = [
        "# Claire report",
        f"Rebuilt by `python -m claire.report` from {len(found)} run folders under {', '.join(cfg.runs)}. Cells are "
        f"means over seeds ± the 95% t-interval; `Claire − Base` is the paired difference on the same items with "
        f"its 95% bootstrap CI and p-value (alpha {cfg.alpha}). Published numbers are shown as the report printed "
        "them. A row whose numbers were decoded by different backends (lm-eval's hf path drops special tokens from "
        "the text, its vllm path keeps them) shows none and says so. Every table is also in tables.csv.",
        "## Evaluation",
        *sections,
        "## Trainable parameters",
        parameter_table(groups),
        "## Figures",
        *(f"![{title}]({name})" for name, title in drawn["bars"].items()),
        "## Training curves",
        *(f"![{title}]({name})" for name, title in drawn["loss"].items()),
    ]
    if not drawn["loss"]:
        parts.append("No training run with a loss history was read (reference runs have none).")
    if contamination is not None:
        head = f"| Training data | Task | Items | With a {cfg.decontamination.n}-gram overlap | Share |"
        table = "\n".join([head, "|---|---|---|---|---|", *contamination])
        parts += ["## Decontamination", table if contamination else "No evaluated run has per-item samples to check."]
    parts += ["## Runs read", run_list(found, groups)]
    return "\n\n".join(parts) + "\n"


def run_list(found: list[Run], groups: list[Group]) -> str:
    """Each folder read: its experiment, seed, commit and evaluations; repeats of a seed say they did not count."""
    repeats = {id(r) for g in groups for r in g.repeats}
    lines = ["| Folder | Experiment | Seed | Git commit | Evaluations |", "|---|---|---|---|---|"]
    for run in sorted(found, key=lambda r: str(r.folder)):
        manifest = run.folder / "manifest.json"
        commit = json.loads(manifest.read_text()).get("git", {}).get("commit") if manifest.is_file() else None
        kind = "reference (published numbers)" if run.reference is not None else str(len(run.evals))
        if id(run) in repeats:
            kind += "; a repeat of this seed, not counted (a newer or evaluated run is)"
        lines.append(f"| {run.folder} | {run.name} | {run.config.get('seed')} | {(commit or '—')[:10]} | {kind} |")
    return "\n".join(lines)
