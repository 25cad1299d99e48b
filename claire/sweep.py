"""Sweeps: the Optuna study a trial belongs to, its sampler and pruner, pruning from inside training, the summary.

The sweeper (hydra_plugins/claire_sweeper) and each trial's job build the same pruner from config: optuna does not
store pruners in the study's database.
"""

import json
import os
from pathlib import Path
from typing import Any

import optuna

from claire import ClaireError

SAMPLERS = {
    "tpe": lambda seed, space: optuna.samplers.TPESampler(seed=seed),
    "random": lambda seed, space: optuna.samplers.RandomSampler(seed=seed),
    "grid": lambda seed, space: optuna.samplers.GridSampler(grid(space), seed=seed),
    "cmaes": lambda seed, space: optuna.samplers.CmaEsSampler(seed=seed),
}
PRUNERS = {
    "none": lambda p: optuna.pruners.NopPruner(),
    "median": lambda p: optuna.pruners.MedianPruner(p.get("n_startup_trials", 2), p.get("n_warmup_steps", 0)),
    "hyperband": lambda p: optuna.pruners.HyperbandPruner(p.get("min_resource", 1), p.get("max_resource", "auto")),
    "threshold": lambda p: optuna.pruners.ThresholdPruner(lower=p.get("lower"), upper=p.get("upper")),
}


def storage_url(storage: str | None, study: str) -> str:
    """The study's database: as configured, else $CLAIRE_SWEEP_DATABASE (PostgreSQL for many machines: its password
    stays in the environment), else sqlite at sweeps/<study>/study.db (one machine only)."""
    url = storage or os.environ.get("CLAIRE_SWEEP_DATABASE")
    if url:
        return url
    path = Path("sweeps") / study / "study.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path.resolve()}"  # absolute: a job that changes directory reaches the same file


def sampler(settings: Any, space: dict, offset: int = 0) -> optuna.samplers.BaseSampler:
    """The configured sampler (tpe, random, grid, cmaes); a seed moves on by `offset`, the trials already in the
    study, so a resumed sweep does not replay its first configurations."""
    if settings["name"] not in SAMPLERS:
        raise ClaireError(f"hydra.sweeper.sampler.name={settings['name']} is not one of {sorted(SAMPLERS)}")
    seed = settings.get("seed")
    return SAMPLERS[settings["name"]](None if seed is None else seed + offset, space)


def grid(space: dict) -> dict[str, list]:
    """The grid of a search space: each choice() and integer range(); intervals of floats cannot be gridded."""
    found = {}
    for key, dist in space.items():
        if isinstance(dist, optuna.distributions.CategoricalDistribution):
            found[key] = list(dist.choices)
        elif isinstance(dist, optuna.distributions.IntDistribution) and not dist.log:
            found[key] = list(range(dist.low, dist.high + 1, dist.step))
        else:
            raise ClaireError(f"sampler=grid cannot grid {key} ({dist}); sweep it with choice() or range()")
    return found


def pruner(settings: Any) -> optuna.pruners.BasePruner:
    """The configured pruner (none, median, hyperband, threshold)."""
    if settings["name"] not in PRUNERS:
        raise ClaireError(f"hydra.sweeper.pruner.name={settings['name']} is not one of {sorted(PRUNERS)}")
    return PRUNERS[settings["name"]](settings)


def current_trial() -> optuna.trial.Trial | None:
    """The trial this process trains for, when a Claire sweeper launched it (None otherwise)."""
    number = os.environ.get("CLAIRE_SWEEP_TRIAL")
    if number is None:
        return None
    study = optuna.load_study(
        study_name=os.environ["CLAIRE_SWEEP_STUDY"],
        storage=os.environ["CLAIRE_SWEEP_STORAGE"],
        pruner=pruner(json.loads(os.environ["CLAIRE_SWEEP_PRUNER"])),
    )
    trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, int(number))
    return optuna.trial.Trial(study, trial_id)  # optuna's own class, pinned by version (tested)


def pruning_callback(objective: str) -> Any:
    """A transformers callback reporting `objective` at each evaluation and stopping training when pruned."""
    from transformers import TrainerCallback

    trial = current_trial()
    if trial is None:
        return None

    class Pruning(TrainerCallback):
        pruned = False

        def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict | None = None, **_: Any) -> None:
            if metrics and objective in metrics:
                trial.report(float(metrics[objective]), state.global_step)
                if trial.should_prune():
                    Pruning.pruned, control.should_training_stop = True, True

    Pruning.trial = trial
    return Pruning()


def write_summary(study: optuna.Study, folder: Path) -> None:
    """trials.csv (every trial), summary.json and best.yaml (the best trial's overrides, as an experiment)."""
    folder.mkdir(parents=True, exist_ok=True)
    frame = study.trials_dataframe(attrs=("number", "state", "value", "params", "user_attrs", "duration"))
    frame.to_csv(folder / "trials.csv", index=False)
    finished = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    summary: dict[str, Any] = {"study": study.study_name, "direction": study.direction.name.lower()}
    summary["states"] = {s.name: int((frame["state"] == s.name).sum()) for s in optuna.trial.TrialState}
    if finished:
        best = study.best_trial
        summary |= {"best_trial": best.number, "best_value": best.value, "best_params": best.params}
        (folder / "best.yaml").write_text(experiment_file(study.study_name, best))
    (folder / "summary.json").write_text(json.dumps(summary, indent=2, default=str))


def experiment_file(study_name: str, trial: optuna.trial.FrozenTrial) -> str:
    """A trial's parameters as a ready-to-run experiment config (conf/experiment/), group choices as overrides."""
    from omegaconf import OmegaConf

    groups = {p.name for p in (Path(__file__).parents[1] / "conf").iterdir() if p.is_dir()}
    chosen = OmegaConf.create({})
    defaults = [{f"override /{key}": value} for key, value in trial.params.items() if key in groups]
    for key, value in trial.params.items():
        if key not in groups:
            OmegaConf.update(chosen, key, value, force_add=True)
    body = OmegaConf.to_yaml(OmegaConf.create({"defaults": defaults, **OmegaConf.to_container(chosen)}))
    header = f"# @package _global_\n# Best trial {trial.number} of sweep {study_name} (objective {trial.value}).\n"
    return header + body
