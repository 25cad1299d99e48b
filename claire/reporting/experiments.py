"""Which runs, which evaluations, which scores: run folders found, grouped by experiment, their evaluations read."""

import functools
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from claire import ClaireError, configs, datafiles

COMPARED = ("base", "tuned")  # the two models of a run's evaluation, as results.json names them
DECODERS = {"claire-hf": "hf", "hf": "hf", "vllm": "vllm", "local-chat-completions": "api"}  # lm-eval model types


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
    text = json.dumps(configs.experiment(run.config), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def differences(a: dict, b: dict) -> list[str]:
    """Dotted config keys where two experiments differ (on the keys both configs have)."""
    return configs.differences(a, b, ignored=configs.NOT_THE_EXPERIMENT, shared_only=True)


def group_runs(found: list[Run]) -> list[Group]:
    """Reproduced runs grouped by experiment; each reference joins the groups of its run_name, or stands alone."""
    groups: list[Group] = []
    for run in (r for r in found if r.reference is None):
        group = next((g for g in groups if configs.same_experiment(g.runs[0].config, run.config)), None)
        if group is None:
            group = Group(experiment_key(run), run.name, run.config["model"]["name"], [])
            groups.append(group)
        group.runs.append(run)
    result = [drop_repeats(g) for g in groups]
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
    """{(benchmark, metric, filter): {"base", "tuned", "comparison", "eval", "task", "decoded"}}: per metric, the
    newest evaluation that measured both models (else the newest at all); the benchmark is the task without
    `claire_`; "decoded" names the backend that decoded each model (decoded_by)."""
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
        decoded = {label: decoded_by(folder, label) for label in COMPARED}
        for key, entry in here.items():
            entry["decoded"] = {label: decoded[label] for label in COMPARED if label in entry}
            if both(entry) or not both(found.get(key, {})):
                found[key] = entry
    return found


def decoded_by(folder: Path, label: str) -> str | None:
    """The backend that decoded one model of an evaluation (hf, vllm, api): its results.json's `decoding`, else,
    in an older folder, its lm-eval model type; None when neither says."""
    path = folder / label / "results.json"
    if not path.is_file():
        return None
    results = json.loads(path.read_text())
    recorded = (results.get("decoding") or {}).get("backend")
    return recorded or DECODERS.get(str((results.get("config") or {}).get("model")))


def both(entry: dict) -> bool:
    """Whether an entry holds base and fine-tuned values."""
    return "base" in entry and "tuned" in entry


def item_scores(folder: Path, label: str, task: str, metric: str, filter_name: str) -> dict[int, float]:
    """Per-item values of one metric from an evaluation's samples log."""
    rows = samples_log(folder / label / f"samples_{task}.jsonl")
    return {r["doc_id"]: float(r[metric]) for r in rows if r.get("filter") == filter_name and metric in r}


@functools.cache
def samples_log(path: Path) -> list[dict]:
    """The rows of an lm-eval samples log (read once per report: every metric and filter of a task is in it)."""
    return datafiles.read_samples(path) if path.is_file() else []


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
