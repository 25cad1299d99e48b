"""An Optuna sweeper for Hydra multirun: persistent study, study-wide trial budget, retries of dead trials, pruning.

Why not hydra-optuna-sweeper: it pins optuna<3, whose database storage fails on SQLAlchemy 2; it counts n_trials per
run, leaves killed trials RUNNING and cannot prune (see README, "Sweeps"). This one asks and tells trials itself:
each trial is one Hydra job that learns its trial from the environment (claire.sweep), reports its objective during
training to the shared study and stops when the pruner says so.
"""

import json
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from claire import sweep

log = logging.getLogger(__name__)
COUNTED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.RUNNING)


@dataclass
class ClaireSweeperConf:
    _target_: str = "hydra_plugins.claire_sweeper.claire_sweeper.ClaireSweeper"
    study_name: str = "claire"
    storage: str | None = None  # null: $CLAIRE_SWEEP_DATABASE (e.g. PostgreSQL), else sqlite in sweeps/<study>/
    direction: str = "minimize"
    n_trials: int = 10  # the study's budget, over every run and every sweeper process sharing it
    n_jobs: int = 1  # trials launched together (the launcher runs them)
    sampler: dict[str, Any] = field(default_factory=lambda: {"name": "tpe", "seed": None})
    pruner: dict[str, Any] = field(  # name: none | median | hyperband | threshold; the keys each of them reads
        default_factory=lambda: (
            {"name": "median", "n_startup_trials": 2, "n_warmup_steps": 0, "min_resource": 1}
            | {"max_resource": "auto", "lower": None, "upper": None}
        )
    )
    heartbeat_interval: int = 60  # seconds; a trial silent for grace_period is taken for dead and retried
    grace_period: int = 180
    max_retry: int = 2
    params: dict[str, str] = field(default_factory=dict)


ConfigStore.instance().store(group="hydra/sweeper", name="claire", node=ClaireSweeperConf, provider="claire")


def distribution(override: Override) -> optuna.distributions.BaseDistribution | None:
    """The Optuna distribution of a sweep override (None for a fixed value), Hydra's grammar kept."""
    if not override.is_sweep_override():
        return None
    value = override.value()
    tags = set(getattr(value, "tags", None) or ())
    if isinstance(value, ChoiceSweep):
        return optuna.distributions.CategoricalDistribution([c for c in override.sweep_iterator()])
    if isinstance(value, RangeSweep):  # Hydra's range has an exclusive end, as Python's
        start, stop, step = value.start, value.stop, value.step
        if all(isinstance(x, int) for x in (start, stop, step)):
            return optuna.distributions.IntDistribution(int(start), int(stop) - int(step), step=int(step))
        return optuna.distributions.FloatDistribution(start, stop - step, step=step)
    if isinstance(value, IntervalSweep):
        if "int" in tags:
            return optuna.distributions.IntDistribution(int(value.start), int(value.end), log="log" in tags)
        return optuna.distributions.FloatDistribution(value.start, value.end, log="log" in tags)
    raise ValueError(f"{override.input_line}: the claire sweeper takes choice(), range() and interval() sweeps")


class ClaireSweeper(Sweeper):
    """Hydra sweeper asking and telling trials of one persistent Optuna study."""

    def __init__(self, **settings: Any) -> None:
        self.settings = OmegaConf.create(settings)
        self.config: DictConfig | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        """Keep the context and build the launcher Hydra is configured with."""
        from hydra.core.plugins import Plugins

        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> list[Sequence]:
        """Top the study up to n_trials, n_jobs trials at a time; return the launched jobs' results."""
        params = [f"{k}={v}" for k, v in self.settings.params.items()] + list(arguments)
        overrides = OverridesParser.create(config_loader=self.hydra_context.config_loader).parse_overrides(params)
        space = {o.get_key_element(): d for o in overrides if (d := distribution(o)) is not None}
        fixed = [f"{o.get_key_element()}={o.get_value_element_as_str()}" for o in overrides if distribution(o) is None]
        url = sweep.storage_url(self.settings.storage, self.settings.study_name)
        study = self.study(url, space)
        Path(self.config.hydra.sweep.dir).mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, Path(self.config.hydra.sweep.dir) / "multirun.yaml")
        returns = []
        while (room := self.room(study)) > 0:
            trials = [study.ask(fixed_distributions=space) for _ in range(min(self.settings.n_jobs, room))]
            returns.append(self.launch(study, url, trials, fixed))
        log.info(
            "Study %s: %d trials counted of n_trials=%d", study.study_name, self.counted(study), self.settings.n_trials
        )
        sweep.write_summary(study, Path(self.config.hydra.sweep.dir))
        return returns

    def study(self, url: str, space: dict) -> optuna.Study:
        """The persistent study (created on first use), with heartbeats so dead trials are found and retried."""
        storage = optuna.storages.RDBStorage(
            url,
            heartbeat_interval=self.settings.heartbeat_interval,
            grace_period=self.settings.grace_period,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(self.settings.max_retry),
        )
        study = optuna.create_study(
            study_name=self.settings.study_name,
            storage=storage,
            pruner=sweep.pruner(self.settings.pruner),
            direction=self.settings.direction,
            load_if_exists=True,
        )
        study.sampler = sweep.sampler(self.settings.sampler, space, offset=len(study.get_trials(deepcopy=False)))
        return study

    def counted(self, study: optuna.Study) -> int:
        """Trials that use up the budget: finished, pruned, running, waiting, and failed ones not being retried."""
        trials = study.get_trials(deepcopy=False)
        retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
        waiting = optuna.trial.TrialState.WAITING
        return sum(
            t.state in (*COUNTED, waiting) or (t.state == optuna.trial.TrialState.FAIL and t.number not in retried)
            for t in trials
        )

    def room(self, study: optuna.Study) -> int:
        """How many more trials the budget allows, after failing trials whose heartbeat stopped (they are retried)."""
        optuna.storages.fail_stale_trials(study)
        waiting = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)))
        return self.settings.n_trials - self.counted(study) + waiting  # a waiting retry is asked, not added

    def launch(self, study: optuna.Study, url: str, trials: list, fixed: list[str]) -> Sequence:
        """Run trials as Hydra jobs (heartbeats kept while they run) and tell the study how each ended."""
        batch = [fixed + [f"{k}={v}" for k, v in t.params.items()] + self.environment(url, t) for t in trials]
        alive = threading.Event()
        beating = threading.Thread(target=self.beat, args=(study, trials, alive), daemon=True)
        beating.start()
        try:
            results = []
            for trial, overrides in zip(trials, batch, strict=True):  # one job a call: its number names its folder
                results += self.launcher.launch([overrides], initial_job_idx=trial.number)
        finally:
            alive.set()
            beating.join()
        for trial, result in zip(trials, results, strict=True):
            self.tell(study, trial, result)
        return results

    def environment(self, url: str, trial: optuna.trial.Trial) -> list[str]:
        """How a job finds its trial (environment variables, so no job ever overrides the sweeper's config)."""
        found = {"CLAIRE_SWEEP_STORAGE": url, "CLAIRE_SWEEP_STUDY": self.settings.study_name}
        found |= {
            "CLAIRE_SWEEP_TRIAL": str(trial.number),
            "CLAIRE_SWEEP_PRUNER": json.dumps(dict(self.settings.pruner)),
        }
        return [f"+hydra.job.env_set.{k}='{v}'" for k, v in found.items()]

    def beat(self, study: optuna.Study, trials: list, stop: threading.Event) -> None:
        """Record the trials' heartbeats until stop is set (ask-and-tell gets none from optuna)."""
        while True:
            for trial in trials:
                study._storage.record_heartbeat(trial._trial_id)
            if stop.wait(self.settings.heartbeat_interval):
                return

    def tell(self, study: optuna.Study, trial: optuna.trial.Trial, result: Any) -> None:
        """Complete, prune or fail the trial from its job's result; a failed job never stops the sweep."""
        from hydra.core.utils import JobStatus

        if result.status == JobStatus.COMPLETED:
            told(study, trial, values=float(result.return_value))
            return
        error = result._return_value
        if isinstance(error, optuna.TrialPruned):
            told(study, trial, state=optuna.trial.TrialState.PRUNED)
            log.info("Trial %d pruned", trial.number)
            return
        study._storage.set_trial_user_attr(trial._trial_id, "error", f"{type(error).__name__}: {error}"[:2000])
        told(study, trial, state=optuna.trial.TrialState.FAIL)
        log.error("Trial %d failed: %s: %s", trial.number, type(error).__name__, error)


def told(study: optuna.Study, trial: optuna.trial.Trial, **outcome: Any) -> None:
    """study.tell, where the grid sampler's stop() on a finished grid (allowed only inside optimize) is no error."""
    try:
        study.tell(trial, **outcome)
    except RuntimeError as error:  # the trial is stored before after_trial raises; the budget ends the sweep anyway
        if "Study.stop" not in str(error):
            raise
