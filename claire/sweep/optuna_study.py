"""Sweeps: the Optuna study a trial belongs to, its sampler and pruner, pruning from inside training, the summary.

The sweeper (hydra_plugins/claire_sweeper) and each trial's job build the same pruner from config: optuna does not
store pruners in the study's database.
"""

import json
import os
import time
from pathlib import Path
from typing import Any

import optuna

from claire import ClaireError, configs


def storage_url(storage: str | None, folder: Path) -> str:
    """The study's database: as configured, else $CLAIRE_SWEEP_DATABASE (PostgreSQL for many machines: its password
    stays in the environment), else sqlite in the sweep's folder, <folder>/study.db (one machine only)."""
    url = storage or os.environ.get("CLAIRE_SWEEP_DATABASE")
    if url:
        return url
    path = Path(folder) / "study.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path.resolve()}"  # absolute: a job that changes directory reaches the same file


def storage(url: str, **settings: Any) -> optuna.storages.RDBStorage:
    """optuna's database storage; sweepers that start together race to create its tables (one wins, the others
    fail on the duplicate and see the tables when they try again, which optuna does not do itself)."""
    import sqlalchemy

    for attempt in range(4):
        try:
            return optuna.storages.RDBStorage(url, **settings)
        except sqlalchemy.exc.SQLAlchemyError:
            time.sleep(0.5 * (attempt + 1))
    return optuna.storages.RDBStorage(url, **settings)


def sampler(settings: Any, space: dict, offset: int = 0) -> optuna.samplers.BaseSampler:
    """The sampler of a hydra/sweeper/sampler config (its `_target_` and keys); a seed moves on by `offset`, the
    trials already in the study, so a resumed sweep does not replay its first configurations."""
    settings = dict(settings)
    if settings.get("seed") is not None:
        settings["seed"] += offset
    if settings.get("_target_", "").rsplit(".", 1)[-1] == "GridSampler":
        settings["search_space"] = grid(space)
    return built("hydra/sweeper/sampler", settings)


def grid(space: dict) -> dict[str, list]:
    """The grid of a search space: each choice() and integer range(); intervals of floats cannot be gridded."""
    found = {}
    for key, dist in space.items():
        if isinstance(dist, optuna.distributions.CategoricalDistribution):
            found[key] = list(dist.choices)
        elif isinstance(dist, optuna.distributions.IntDistribution) and not dist.log:
            found[key] = list(range(dist.low, dist.high + 1, dist.step))
        else:
            reason = f"cannot grid {key} ({dist}): sweep it with choice() or range()"
            raise ClaireError(f"hydra/sweeper/sampler=grid {reason}")
    return found


def pruner(settings: Any) -> optuna.pruners.BasePruner:
    """The pruner of a hydra/sweeper/pruner config (median, hyperband, threshold, none, or any optuna pruner)."""
    return built("hydra/sweeper/pruner", dict(settings))


def built(group: str, settings: dict) -> Any:
    """Instantiate an optuna sampler or pruner from its config; a bad key is a one-line error naming the group."""
    from hydra.utils import instantiate

    try:
        return instantiate(settings, _convert_="all")
    except Exception as error:  # hydra wraps the constructor's TypeError in its own InstantiationException
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        raise ClaireError(f"{group}: {settings.get('_target_')} cannot be built from {settings}: {reason}") from None


def current_trial() -> optuna.trial.Trial | None:
    """The trial this process trains for, when a Claire sweeper launched it (None otherwise, and on ranks but 0)."""
    number = os.environ.get("CLAIRE_SWEEP_TRIAL")
    if number is None or int(os.environ.get("RANK", "0")) != 0:
        return None
    study = optuna.load_study(
        study_name=os.environ["CLAIRE_SWEEP_STUDY"],
        storage=os.environ.get("CLAIRE_SWEEP_STORAGE") or os.environ["CLAIRE_SWEEP_DATABASE"],
        pruner=pruner(json.loads(os.environ["CLAIRE_SWEEP_PRUNER"])),
    )
    trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, int(number))
    return optuna.trial.Trial(study, trial_id)  # optuna's own class, pinned by version (tested)


def everyone_agrees(decision: bool) -> bool:
    """Rank 0's decision, broadcast to every rank of a multi-process run (the decision itself when alone)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return decision
    shared = [decision]
    dist.broadcast_object_list(shared, src=0)
    return bool(shared[0])


def pruning_callback(objective: str) -> Any:
    """A transformers callback reporting `objective` at each evaluation and stopping training when pruned; in a
    multi-GPU trial only rank 0 talks to the study, and every rank follows its decision. The step it reports at
    is the number of training rows seen, so trials of different global batch sizes are compared at equal data."""
    from transformers import TrainerCallback

    class Pruning(TrainerCallback):
        def __init__(self) -> None:
            self.trial, self.pruned = current_trial(), False

        def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict | None = None, **_: Any) -> None:
            decision, final = False, bool(state.max_steps) and state.global_step >= state.max_steps
            if self.trial is not None and metrics and objective in metrics:
                self.trial.report(float(metrics[objective]), rows_seen(args, state.global_step))
                decision = not final and self.trial.should_prune()  # pruning a finished trial saves nothing
            if everyone_agrees(decision):
                self.pruned, control.should_training_stop = True, True

    return Pruning()


def rows_seen(args: Any, step: int) -> int:
    """Training rows seen after `step` optimizer steps, on every device together."""
    return step * args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size


def write_summary(study: optuna.Study, folder: Path) -> None:
    """trials.csv (every trial), summary.json and best.yaml (the best trial's overrides, as an experiment)."""
    folder.mkdir(parents=True, exist_ok=True)
    frame = study.trials_dataframe(attrs=("number", "state", "value", "params", "user_attrs", "duration"))
    frame.to_csv(folder / "trials.csv", index=False)
    finished = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    summary: dict[str, Any] = {"study": study.study_name, "direction": study.direction.name.lower()}
    states = [t.state.name for t in study.get_trials(deepcopy=False)]  # (an empty study's frame has no columns)
    summary["states"] = {s.name: states.count(s.name) for s in optuna.trial.TrialState}
    if finished:
        best = study.best_trial
        summary |= {"best_trial": best.number, "best_value": best.value, "best_params": best.params}
        (folder / "best.yaml").write_text(experiment_file(study.study_name, best))
    (folder / "summary.json").write_text(json.dumps(summary, indent=2, default=str))


def experiment_file(study_name: str, trial: optuna.trial.FrozenTrial) -> str:
    """A trial's parameters as a ready-to-run experiment config (conf/experiment/), group choices as overrides."""
    from omegaconf import OmegaConf

    groups = {p.name for p in Path(configs.CONFIG_DIR).iterdir() if p.is_dir()}
    chosen = OmegaConf.create({})
    defaults = [{f"override /{key}": value} for key, value in trial.params.items() if key in groups]
    for key, value in trial.params.items():
        if key not in groups:
            OmegaConf.update(chosen, key, value, force_add=True)
    body = OmegaConf.to_yaml(OmegaConf.create({"defaults": defaults, **OmegaConf.to_container(chosen)}))
    header = f"# @package _global_\n# Best trial {trial.number} of sweep {study_name} (objective {trial.value}).\n"
    return header + body
