"""claire.report: the report's tables and figures, rebuilt from run folders alone.

    python -m claire.report                                        # all of experiments/ -> reports/<time>/
    python -m claire.report 'runs=[experiments/multirun/2026-12-02_10-00-00]' output_dir=reports/seeds

Reads each training run's config.yaml and metrics.json, the evaluations made of it (results.json and per-item
samples of `claire.evaluate`) and the published numbers of a reference run (reference.json); writes report.md,
tables.md, tables.csv, bar charts and loss curves. Runs that differ only in their seed are one row of the tables:
mean ± 95% CI across seeds, and a paired test of base vs fine-tuned on the same items.
"""

import csv
import functools
import hashlib
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from claire import ClaireError, datafiles, resolvers, run_folders, stats

resolvers.register()
# keys that do not change what a run measures: runs differing only in these are seeds of one experiment
NOT_THE_EXPERIMENT = {
    "seed",
    "output_dir",
    "resume",
    "threads",
    "tracking",
    "preview_examples",
    "push_to_hub",
    "dry_run",
}
COMPARED = ("base", "tuned")  # the two models of a run's evaluation, as results.json names them
RUN_FILES = ("report.md", "config.yaml", "metrics.json", "reference.json", "results.json")  # never written over


@dataclass
class Run:
    """A training run folder (or a published reference), with the evaluations made of it."""

    folder: Path
    config: dict
    metrics: dict | None = None
    reference: dict | None = None
    evals: list[Path] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.config.get("run_name") or self.folder.name)


@dataclass
class Group:
    """Runs of one experiment (same config but the seed), and the numbers a report published for it."""

    key: str
    name: str
    model: str
    runs: list[Run]
    reference: dict | None = None
    repeats: list[Run] = field(default_factory=list)
    reference_config: dict | None = None  # the reference run's frozen config
    differs: list[str] = field(default_factory=list)  # config keys that tell it apart (from its reference or twins)
    tag: str = ""  # set when several experiments share a run_name and model
    planned: int | str | None = None  # trainable parameters by the dry run of the reference config, or why not

    @property
    def seeds(self) -> list[Any]:
        return [r.config.get("seed") for r in self.runs]

    @property
    def label(self) -> str:
        return f"{self.name} [{self.tag}]" if self.tag else self.name


def find_runs(paths: list[str]) -> list[Run]:
    """Finished training runs and references under the paths (pruned sweep trials left out), evaluations attached."""
    found, evals = {}, set()
    for root in map(Path, paths):
        if not root.exists():
            raise ClaireError(f"runs: {root} does not exist; pass run folders, sweep folders or experiments/")
        for folder in [root, *(p.parent for p in sorted(root.rglob("config.yaml")))]:
            if not (folder / "config.yaml").is_file():
                continue
            if (folder / "results.json").is_file():
                evals.add(folder.resolve())
            elif (folder / "reference.json").is_file() or (folder / "metrics.json").is_file():
                found.setdefault(folder.resolve(), folder)
    runs_found = [load_run(folder) for folder in found.values()]
    runs_found = [r for r in runs_found if not (r.metrics or {}).get("pruned")]
    for folder in sorted(evals, key=lambda p: ((p / "results.json").stat().st_mtime, str(p))):
        target = OmegaConf.load(folder / "config.yaml").get("run")
        for run in (r for r in runs_found if evaluated(folder, target, r.folder)):
            run.evals.append(folder)
    return runs_found


def load_run(folder: Path) -> Run:
    """One run folder: its resolved config, metrics and reference numbers, whichever it has."""
    config = OmegaConf.to_container(OmegaConf.load(folder / "config.yaml"))
    files = {name: folder / f"{name}.json" for name in ("metrics", "reference")}
    return Run(folder, config, **{name: json.loads(path.read_text()) for name, path in files.items() if path.is_file()})


def evaluated(evaluation: Path, target: str | None, run: Path) -> bool:
    """Whether an evaluation folder evaluated this run: it lies in the run's eval/, or its config's `run` (target)
    names it (a relative `run` as typed where claire.evaluate ran: from here, else as the run path's trailing part)."""
    run = run.resolve()
    if evaluation.parent.name == "eval" and evaluation.parent.parent == run:
        return True
    if not target:
        return False
    path = Path(str(target))
    if path.is_absolute() or path.resolve() == run:
        return path.resolve() == run
    return ".." not in path.parts and run.parts[-len(path.parts) :] == path.parts


def experiment_key(run: Run) -> str:
    """A hash of everything in the config that defines the experiment (not its seed or where it ran)."""
    return hashlib.sha256(json.dumps(experiment(run.config), sort_keys=True, default=str).encode()).hexdigest()[:12]


def experiment(config: dict) -> dict:
    """The config without what does not change what a run measures."""
    return {k: v for k, v in config.items() if k not in NOT_THE_EXPERIMENT}


def differences(a: dict, b: dict) -> list[str]:
    """Dotted config keys where two experiments differ."""
    return run_folders.config_differences(OmegaConf.create(experiment(a)), OmegaConf.create(experiment(b)))


def group_runs(found: list[Run]) -> list[Group]:
    """Reproduced runs grouped by experiment; each reference joins the groups of its run_name, or stands alone."""
    groups: dict[str, Group] = {}
    for run in (r for r in found if r.reference is None):
        key = experiment_key(run)
        groups.setdefault(key, Group(key, run.name, run.config["model"]["name"], [])).runs.append(run)
    result = [drop_repeats(g) for g in groups.values()]
    by_name: dict[tuple[str, str], list[Group]] = {}
    for group in result:
        by_name.setdefault((group.name, group.model), []).append(group)
    for twins in (t for t in by_name.values() if len(t) > 1):  # experiments sharing a run_name: tag them
        for twin in twins:
            twin.tag = twin.key[:6]
            if twin is not twins[0]:
                twin.differs = differences(twins[0].runs[0].config, twin.runs[0].config)
    for ref in (r for r in found if r.reference is not None):
        matching = [g for g in result if g.name == ref.name and g.reference is None and g.runs]
        for group in matching:
            group.reference, group.reference_config = ref.reference, ref.config
            group.differs = differences(ref.config, group.runs[0].config)
        if not matching:
            key = f"reference:{ref.folder.resolve()}"
            result.append(
                Group(key, ref.name, ref.config["model"]["name"], [], ref.reference, reference_config=ref.config)
            )
    return sorted(result, key=lambda g: (g.name, g.model, g.tag))


def drop_repeats(group: Group) -> Group:
    """Runs of one seed repeat one another (a reproduction): one counts (the newest evaluated one, else the newest),
    the others are listed as repeats."""
    by_seed: dict[str, list[Run]] = {}
    for run in sorted(group.runs, key=lambda r: ((r.folder / "metrics.json").stat().st_mtime, str(r.folder))):
        by_seed.setdefault(str(run.config.get("seed")), []).append(run)
    group.runs = []
    for seed in sorted(by_seed):
        same = by_seed[seed]
        chosen = next((r for r in reversed(same) if r.evals), same[-1])
        group.runs.append(chosen)
        group.repeats += [r for r in same if r is not chosen]
    return group


def scores(run: Run) -> dict[tuple[str, str, str], dict]:
    """{(benchmark, metric, filter): {"base", "tuned", "comparison", "eval", "task"}}: per metric, the newest
    evaluation that measured both models (else the newest at all); the benchmark is the task without `claire_`."""
    return evaluation_scores(tuple(run.evals))


@functools.cache
def evaluation_scores(evals: tuple[Path, ...]) -> dict[tuple[str, str, str], dict]:
    """scores() of a run's evaluation folders, read once per report."""
    found: dict[tuple[str, str, str], dict] = {}
    for folder in evals:  # oldest first
        results = json.loads((folder / "results.json").read_text())
        here: dict[tuple[str, str, str], dict] = {}
        for row in results.get("rows", []):
            if row.get("model") in COMPARED:
                key = (row["task"].removeprefix("claire_"), row["metric"], row["filter"])
                here.setdefault(key, {"eval": folder, "task": row["task"]})[row["model"]] = row["value"]
        for comparison in results.get("comparisons", []):
            key = (comparison["task"].removeprefix("claire_"), comparison["metric"], comparison["filter"])
            if key in here:
                here[key]["comparison"] = comparison
        for key, entry in here.items():
            if both(entry) or not both(found.get(key, {})):
                found[key] = entry
    return found


def both(entry: dict) -> bool:
    """Whether an entry holds base and fine-tuned values."""
    return "base" in entry and "tuned" in entry


def mean_ci(values: list[float]) -> tuple[float, float | None]:
    """Mean and the half-width of its 95% t-interval (None for a single value)."""
    from scipy.stats import t

    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, None
    return mean, float(t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / len(values) ** 0.5)


def item_scores(folder: Path, label: str, task: str, metric: str, filter_name: str) -> dict[int, float]:
    """Per-item values of one metric from an evaluation's samples log."""
    rows = samples_log(folder / label / f"samples_{task}.jsonl")
    return {r["doc_id"]: float(r[metric]) for r in rows if r.get("filter") == filter_name and metric in r}


@functools.cache
def samples_log(path: Path) -> list[dict]:
    """The rows of an lm-eval samples log (read once per report: every metric and filter of a task is in it)."""
    return datafiles.read_samples(path) if path.is_file() else []


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


def published(group: Group) -> dict[tuple[str, str, str], dict]:
    """The reference's evaluation rows by (benchmark, metric, filter), values as the report printed them."""
    rows = (group.reference or {}).get("evaluation", [])
    return {
        (r["benchmark"], r["metric"], r["filter"]): {c: as_printed(r.get(c)) for c in ("base", "claire")} for r in rows
    }


def as_printed(value: Any) -> str | None:
    """A published number as text (reference.json keeps them as the report printed them: "0.31")."""
    return None if value is None else str(value)


def table_rows(group: Group, wanted: list[dict], every: bool, alpha: float) -> list[dict]:
    """One row per benchmark metric: reproduced means (± CI over seeds), the paired test, the published numbers."""
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
        row |= {"metric": key[1], "filter": key[2]}
        for label, column in (("base", "base"), ("tuned", "claire")):
            values = [v[label] for v in measured.get(key, []) if label in v]
            mean, half = mean_ci(values) if values else (None, None)
            row |= {column: mean, f"{column}_ci": half, f"{column}_n": len(values)}
            text = printed.get(key, {}).get(column)
            row[f"published_{column}"] = text
            row[f"{column}_minus_published"] = mean - float(text) if mean is not None and text is not None else None
        row["test"] = paired_test(group, key, alpha) if key in measured else None
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
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["benchmark"], metric_label(row)]
        if reproduced:
            cells += [number(row["base"], row["base_ci"]), number(row["claire"], row["claire_ci"])]
            cells += test_cells(row["test"], alpha)
        if reference:
            cells += [row["published_base"] or "—", row["published_claire"] or "—"]  # "" never: as_printed
        if reproduced and reference:
            cells += [number(row["base_minus_published"], sign=True), number(row["claire_minus_published"], sign=True)]
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
    "group", "model", "seeds", "benchmark", "metric", "filter", "base", "base_ci", "base_n", "claire", "claire_ci",
    "claire_n", "diff", "ci_low", "ci_high", "p", "test", "significant", "published_base", "published_claire",
    "base_minus_published", "claire_minus_published",
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


def count_planned(groups: list[Group]) -> None:
    """Trainable parameters of each reference config from the dry run (meta device: no weights, seconds)."""
    import contextlib
    import io

    from claire.training import dry_run

    for group in (g for g in groups if g.reference_config):
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                group.planned = dry_run.run(OmegaConf.create(group.reference_config))["trainable_params"]
        except ClaireError as error:
            group.planned = f"not counted: {error}"


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


def run(cfg: DictConfig) -> Path:
    """Find the runs, build every table and figure, write the page; return the output folder."""
    out = Path(cfg.output_dir)
    held = [name for name in RUN_FILES if (out / name).exists()]
    if held:
        raise ClaireError(f"output_dir={out} already holds {held[0]} (a report or a run); choose another output_dir")
    found = find_runs(list(cfg.runs))
    if not found:
        raise ClaireError(f"no run folders under {list(cfg.runs)}; a run folder has config.yaml and metrics.json")
    groups = group_runs(found)
    if cfg.count_parameters:
        count_planned(groups)
    wanted = OmegaConf.to_container(cfg.rows)
    tables = {g.key: table_rows(g, wanted, cfg.all_metrics, cfg.alpha) for g in groups}
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    write_csv([row for rows in tables.values() for row in rows], out / "tables.csv")
    sections = [f"### {group_title(g)}\n\n{markdown_table(g, tables[g.key], cfg.alpha)}" for g in groups]
    (out / "tables.md").write_text("\n\n".join(sections) + "\n")
    from claire.reporting import figures

    drawn = figures.draw(groups, tables, out)
    contamination = decontamination(groups, cfg) if cfg.decontamination.enabled else None
    (out / "report.md").write_text(page(cfg, found, groups, sections, drawn, contamination))
    print(f"claire.report: {len(found)} runs in {len(groups)} experiments; report in {out / 'report.md'}")
    return out


def data_samples(groups: list[Group]) -> dict[str, tuple[Run, dict[str, Path]]]:
    """Per training data config: one run trained on it and {task: samples log} over every evaluation of the runs
    trained on it (the newest per task; base and fine-tuned saw the same items)."""
    found: dict[str, tuple[Run, dict[str, Path]]] = {}
    for run in (r for g in groups for r in [*g.runs, *g.repeats] if r.evals):
        key = json.dumps(run.config.get("data", {}), sort_keys=True, default=str)
        _, samples = found.setdefault(key, (run, {}))
        for folder in run.evals:  # oldest first: the newest wins
            for path in sorted(folder.glob("*/samples_*.jsonl")):
                samples[path.stem.removeprefix("samples_")] = path
    return found


def decontamination(groups: list[Group], cfg: DictConfig) -> list[str]:
    """Markdown rows: per training data set and evaluation task, the share of eval items with an n-gram overlap."""
    from claire import decontamination

    lines = []
    for run, samples in data_samples(groups).values():
        name = run.config.get("data", {}).get("name")
        try:
            found = decontamination.for_run(run.folder, n=cfg.decontamination.n, samples=samples)
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
        "them. Every table is also in tables.csv.",
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


@hydra.main(version_base="1.3", config_path="../conf", config_name="report")
def main(cfg: DictConfig) -> None:
    """Hydra entrypoint: `python -m claire.report [runs=[...]] [output_dir=...]`."""
    try:
        run(cfg)
    except ClaireError as error:
        raise SystemExit(f"claire.report: error: {error}") from None


if __name__ == "__main__":
    main()
