"""claire.sweep: a sweep's summary and plots, from its study: `python -m claire.sweep sweeps/<study>`.

The sweeper writes the same when a sweep ends (hydra.sweeper.report=true); this reruns it on demand, e.g. while
another sweeper is still adding trials to the study.
"""

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

import optuna

from claire import ClaireError
from claire.sweep import optuna_study

PLOTS = {  # file -> (optuna.visualization.matplotlib function, what it shows)
    "optimization_history.png": ("plot_optimization_history", "objective of each trial and the best so far"),
    "param_importances.png": ("plot_param_importances", "how much each parameter explains the objective (fANOVA)"),
    "parallel_coordinate.png": ("plot_parallel_coordinate", "each finished trial's parameters and objective"),
    "intermediate_values.png": ("plot_intermediate_values", "learning curves reported to the pruner"),
}
COMPLETE = optuna.trial.TrialState.COMPLETE


def load(folder: Path) -> optuna.Study:
    """The study in study.db, else $CLAIRE_SWEEP_DATABASE; named in summary.json, else by the folder."""
    folder = Path(folder)
    summary = folder / "summary.json"
    name = json.loads(summary.read_text())["study"] if summary.exists() else folder.resolve().name
    if (folder / "study.db").exists():
        url = f"sqlite:///{(folder / 'study.db').resolve()}"
    elif os.environ.get("CLAIRE_SWEEP_DATABASE"):
        url = os.environ["CLAIRE_SWEEP_DATABASE"]
    else:
        raise ClaireError(
            f"{folder} has no study.db and $CLAIRE_SWEEP_DATABASE is not set; pass a sweep folder written by "
            "`python -m claire.train -m hparams_search=...`"
        )
    names = optuna.get_all_study_names(url)
    if name not in names:  # the part after '@': a PostgreSQL URL's password stays out of the message
        raise ClaireError(f"study {name!r} is not in {url.split('@')[-1]}; it has {sorted(names)}")
    return optuna.load_study(study_name=name, storage=url)


def why_not(study: optuna.Study, plot: str) -> str | None:
    """Why a plot cannot be drawn for this study (None when it can)."""
    trials = study.get_trials(deepcopy=False)
    finished = [t for t in trials if t.state == COMPLETE]
    if plot == "intermediate_values.png":  # optuna draws the curves of pruned, complete and running trials
        curves = any(t.intermediate_values for t in trials if t.state != optuna.trial.TrialState.FAIL)
        return None if curves else "no trial reported intermediate values"
    if not finished:
        return "no trial has finished"
    varied = {k for t in finished for k in t.params if len({repr(f.params.get(k)) for f in finished}) > 1}
    if plot == "param_importances.png" and (len(finished) < 2 or not varied):
        return "importances need at least 2 finished trials whose parameters differ"
    return None


def draw(study: optuna.Study, plot: str, path: Path) -> None:
    """One optuna matplotlib plot, saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as plots

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            warnings.filterwarnings("ignore", message="Attempting to set identical low and high")  # one trial's axis
            axes = getattr(plots, PLOTS[plot][0])(study)
        first = axes.flat[0] if hasattr(axes, "flat") else axes
        if plot == "intermediate_values.png":
            first.set_xlabel("Training rows seen")  # what trials report at (optuna_study.rows_seen)
        figure = first.get_figure()
        figure.set_size_inches(10, 6)
        figure.savefig(path, dpi=100, bbox_inches="tight")
    finally:
        plt.close("all")


def write_report(study: optuna.Study, folder: Path) -> list[Path]:
    """trials.csv, summary.json, best.yaml, the PNG plots and report.md linking them; the paths written."""
    folder, written, lines = Path(folder), [], header(study)
    folder.mkdir(parents=True, exist_ok=True)
    optuna_study.write_summary(study, folder)
    written += [folder / "trials.csv", folder / "summary.json"] + [folder / "best.yaml"] * bool(study_best(study))
    for plot, (_, what) in PLOTS.items():
        if (reason := plotted(study, plot, folder / plot)) is None:
            written.append(folder / plot)
            lines += [f"### {what}", "", f"![{what}]({plot})", ""]
        else:
            lines += [f"*{plot} not drawn: {reason}.*", ""]
    (folder / "report.md").write_text("\n".join(lines + trial_table(study)) + "\n")
    return [*written, folder / "report.md"]


def plotted(study: optuna.Study, plot: str, path: Path) -> str | None:
    """Draw one plot; why it was not drawn (None when it was)."""
    if (reason := why_not(study, plot)) is not None:
        return reason
    try:
        draw(study, plot, path)
    except Exception as error:  # a plot is an extra: a sweep's report goes on without it
        return f"optuna could not draw it: {(str(error).strip() or repr(error)).splitlines()[0]}"
    return None


def study_best(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The best trial, None before any trial has finished."""
    return study.best_trial if any(t.state == COMPLETE for t in study.get_trials(deepcopy=False)) else None


def header(study: optuna.Study) -> list[str]:
    """The report's opening: study, direction, trials by state, the best trial and how to rerun it."""
    trials = study.get_trials(deepcopy=False)
    states = {s.name: sum(t.state == s for t in trials) for s in optuna.trial.TrialState}
    lines = [f"# Sweep {study.study_name}", "", f"Direction: {study.direction.name.lower()}; trials: "]
    lines[-1] += ", ".join(f"{n} {s.lower()}" for s, n in states.items() if n) or "none yet"
    if best := study_best(study):
        lines += ["", f"Best: trial {best.number}, value {best.value:.6g}, parameters `{best.params}`."]
        rerun = "copy best.yaml to conf/experiment/<name>.yaml, then `python -m claire.train experiment=<name>`"
        lines += ["", f"Rerun it: {rerun}."]
    return [*lines, ""]


def trial_table(study: optuna.Study) -> list[str]:
    """Every trial: number, state, value, parameters, the last step it reported at (training rows seen)."""
    rows = ["## Trials", "", "| trial | state | value | parameters | last step |", "|---|---|---|---|---|"]
    for t in study.get_trials(deepcopy=False):
        value = "" if t.value is None else f"{t.value:.6g}"
        params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in t.params.items())
        rows.append(f"| {t.number} | {t.state.name} | {value} | {params} | {max(t.intermediate_values, default='')} |")
    return rows


def main(argv: list[str] | None = None) -> int:
    """`python -m claire.sweep FOLDER...`: rewrite each sweep folder's summary, plots and report.md."""
    parser = argparse.ArgumentParser(prog="python -m claire.sweep", description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="sweep folders, e.g. sweeps/quick-cpu")
    opts = parser.parse_args(argv)
    for folder in opts.folders:
        try:
            write_report(load(folder), folder)
        except ClaireError as error:
            print(f"claire.sweep: error: {error}", file=sys.stderr)
            return 2
        print(f"claire.sweep: {folder / 'report.md'}")
    return 0
