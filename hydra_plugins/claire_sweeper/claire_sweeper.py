"""An Optuna sweeper for Hydra multirun: persistent study, study-wide trial budget, retries of dead trials, pruning.

Why not hydra-optuna-sweeper: it pins optuna<3, whose database storage fails on SQLAlchemy 2; it counts n_trials per
run, leaves killed trials RUNNING and cannot prune (see docs/sweeps.md). This one asks and tells trials itself:
each trial is one Hydra job that learns its trial from the environment (claire.sweep), reports its objective during
training to the shared study and stops when the pruner says so.
"""

import copy
import json
import logging
import os
import threading
import time
import warnings
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
from omegaconf import MISSING, DictConfig, OmegaConf

from claire import ClaireError
from claire.sweep import liveness, optuna_study

log = logging.getLogger(__name__)
# Heartbeats and ask-and-tell outside optimize() are what this sweeper is built on (optuna pinned exactly, tested).
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
RUNNING, FAIL = optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.FAIL
COUNTED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, RUNNING)


@dataclass
class ClaireSweeperConf:
    # sampler and pruner are config groups (conf/hydra/sweeper/{sampler,pruner}/): hydra/sweeper/sampler=grid
    defaults: list[Any] = field(default_factory=lambda: [{"sampler": "tpe"}, {"pruner": "median"}])
    _target_: str = "hydra_plugins.claire_sweeper.claire_sweeper.ClaireSweeper"
    _recursive_: bool = False  # sampler and pruner stay configs: built per study (seed, grid) and again in each job
    study_name: str = "claire"
    storage: str | None = None  # null: $CLAIRE_SWEEP_DATABASE (e.g. PostgreSQL), else sqlite in hydra.sweep.dir
    direction: str = "minimize"
    n_trials: int = 10  # the study's budget, over every run and every sweeper process sharing it
    n_jobs: int = 1  # trials launched together, in one call of the launcher (joblib, submitit)
    sampler: Any = MISSING
    pruner: Any = MISSING
    report: bool = True  # write the summary's plots (claire.sweep) when the sweep ends
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
        self.awaited: set[int] = set()  # other processes' running trials this sweeper has said it waits for

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        """Keep the context and build the launcher Hydra is configured with."""
        from hydra.core.plugins import Plugins

        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> list[Sequence]:
        """Top the study up to n_trials, n_jobs trials at a time, then wait for other processes' running trials;
        return the launched jobs' results. Ends in an error (exit 1) if the budget is still unmet."""
        params = [f"{k}={v}" for k, v in self.settings.params.items()] + list(arguments)
        overrides = OverridesParser.create(config_loader=self.hydra_context.config_loader).parse_overrides(params)
        space = {o.get_key_element(): d for o in overrides if (d := distribution(o)) is not None}
        fixed = [f"{o.get_key_element()}={o.get_value_element_as_str()}" for o in overrides if distribution(o) is None]
        url = optuna_study.storage_url(self.settings.storage, Path(self.config.hydra.sweep.dir))
        try:
            study = self.study(url, space)
        except ClaireError as error:  # before any trial runs: one line, as claire.train's own checks
            raise SystemExit(f"claire sweeper: error: {error}") from None
        Path(self.config.hydra.sweep.dir).mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, Path(self.config.hydra.sweep.dir) / "multirun.yaml")
        returns = []
        while (room := self.room(study)) > 0 or self.wait(study):
            if room > 0:
                asked = [self.claimed(study, space) for _ in range(min(self.settings.n_jobs, room))]
                if trials := [t for t in asked if self.within_budget(study, t)]:
                    returns.append(self.launch(study, url, trials, fixed))
        log.info(
            "Study %s: %d trials counted of n_trials=%d",
            study.study_name,
            counted(study.get_trials(deepcopy=False)),
            self.settings.n_trials,
        )
        self.summarise(study, Path(self.config.hydra.sweep.dir))
        self.check_budget(study)
        return returns

    def check_budget(self, study: optuna.Study) -> None:
        """Exit with an error, never 0, when fewer trials than n_trials ended (a safeguard: the loop waits)."""
        trials = study.get_trials(deepcopy=False)
        ended = counted(trials) - sum(t.state in (RUNNING, optuna.trial.TrialState.WAITING) for t in trials)
        if ended < self.settings.n_trials:
            states = {s.name: sum(t.state == s for t in trials) for s in optuna.trial.TrialState}
            reason = f"study {study.study_name} ended {ended} trials of n_trials={self.settings.n_trials} ({states})"
            raise SystemExit(f"claire sweeper: error: {reason}; rerun the same command to finish it")

    def summarise(self, study: optuna.Study, folder: Path) -> None:
        """trials.csv, summary.json, best.yaml and, with report=true, the plots and report.md."""
        if self.settings.report:
            from claire.sweep import summary

            summary.write_report(study, folder)
        else:
            optuna_study.write_summary(study, folder)

    def study(self, url: str, space: dict) -> optuna.Study:
        """The persistent study (created on first use), with heartbeats so dead trials are found and retried."""
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(self.settings.max_retry)
        beats = {"heartbeat_interval": self.settings.heartbeat_interval, "grace_period": self.settings.grace_period}
        storage = optuna_study.storage(url, heartbeat_stale_trial_callback=retry, **beats)
        study = optuna.create_study(
            study_name=self.settings.study_name,
            storage=storage,
            pruner=optuna_study.pruner(OmegaConf.to_container(self.settings.pruner, resolve=True)),
            direction=self.settings.direction,
            load_if_exists=True,
        )
        sampler = OmegaConf.to_container(self.settings.sampler, resolve=True)
        study.sampler = optuna_study.sampler(sampler, space, offset=len(study.get_trials(deepcopy=False)))
        return study

    def room(self, study: optuna.Study) -> int:
        """How many more trials the budget allows, after failing dead trials (they are retried)."""
        self.fail_dead(study)
        trials = study.get_trials(deepcopy=False)
        waiting = sum(t.state == optuna.trial.TrialState.WAITING for t in trials)
        return self.settings.n_trials - counted(trials) + waiting  # a waiting retry is asked, not added

    def fail_dead(self, study: optuna.Study) -> None:
        """Fail running trials whose heartbeat stopped, or whose process on this machine is gone; log each."""
        running = study.get_trials(deepcopy=False, states=(RUNNING,))
        optuna.storages.fail_stale_trials(study)
        now = {t.number: t.state for t in study.get_trials(deepcopy=False)}
        retry = f"retried with its parameters (up to max_retry={self.settings.max_retry} times)"
        for trial in running:
            owner = liveness.recorded(trial)
            if now[trial.number] == FAIL:
                why = f"no heartbeat for grace_period={self.settings.grace_period} s"
                log.warning("Trial %d failed: %s (%s); %s", trial.number, why, liveness.describe(owner), retry)
            elif now[trial.number] == RUNNING and liveness.gone(owner) and self.failed(study, trial):
                why = f"its {liveness.describe(owner)} is gone (killed?)"
                log.warning("Trial %d failed at once: %s; %s", trial.number, why, retry)

    def failed(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        """Fail a running trial and retry it, as optuna does a stale one; False if it had ended meanwhile."""
        storage = study._storage
        try:
            if not storage.set_trial_state_values(trial._trial_id, state=FAIL):
                return False
        except optuna.exceptions.UpdateFinishedTrialError:  # its sweeper told it, or another sweeper failed it
            return False
        if retry := storage.get_heartbeat_stale_trial_callback():
            retry(study, copy.deepcopy(storage.get_trial(trial._trial_id)))
        return True

    def wait(self, study: optuna.Study) -> bool:
        """Wait a moment for the running trials of other live processes, saying so once each; False if none."""
        running = study.get_trials(deepcopy=False, states=(RUNNING,))
        for trial in (t for t in running if t.number not in self.awaited):
            owner = liveness.recorded(trial)
            log.info(
                "Waiting for trial %d, running in %s: the budget n_trials=%d counts it; it is failed and retried if "
                "its heartbeat stops for grace_period=%d s",
                trial.number,
                liveness.describe(owner),
                self.settings.n_trials,
                self.settings.grace_period,
            )
            self.awaited.add(trial.number)
        if running:
            time.sleep(max(1, min(self.settings.heartbeat_interval, 10)))
        return bool(running)

    def claimed(self, study: optuna.Study, space: dict) -> optuna.trial.Trial:
        """A trial asked of the study, recorded as this process's (host, pid) and given its first heartbeat."""
        trial = study.ask(fixed_distributions=space)
        study._storage.set_trial_system_attr(trial._trial_id, liveness.KEY, liveness.owner(trial.number))
        study._storage.record_heartbeat(trial._trial_id)
        return trial

    def within_budget(self, study: optuna.Study, trial: optuna.trial.Trial) -> bool:
        """Whether the trials numbered before this one leave it room; sweepers sharing a study can ask at once, and
        the lower numbers win. One without room is failed as skipped (never run, never counted)."""
        if counted(study.get_trials(deepcopy=False), before=trial.number) < self.settings.n_trials:
            return True
        reason = f"not run: another sweeper reached the study's budget n_trials={self.settings.n_trials} first"
        study._storage.set_trial_user_attr(trial._trial_id, "skipped", reason)
        told(study, trial, state=optuna.trial.TrialState.FAIL)
        log.info("Trial %d %s", trial.number, reason)
        return False

    def launch(self, study: optuna.Study, url: str, trials: list, fixed: list[str]) -> Sequence:
        """Run trials as Hydra jobs (heartbeats kept while they run) and tell the study how each ended."""
        batch = [fixed + [f"{k}={v}" for k, v in t.params.items()] + self.environment(url, t) for t in trials]
        alive = threading.Event()
        beating = threading.Thread(target=self.beat, args=(study, trials, alive), daemon=True)
        beating.start()
        try:  # one call, so a parallel launcher runs the batch together; each folder is named by its trial number
            results = self.launcher.launch(batch, initial_job_idx=trials[0].number)
        finally:
            alive.set()
            beating.join()
        for trial, result in zip(trials, results, strict=True):
            self.tell(study, trial, result)
            forget_traceback(result)
        return results

    def environment(self, url: str, trial: optuna.trial.Trial) -> list[str]:
        """How a job finds its trial (environment variables, so no job ever overrides the sweeper's config)."""
        found = {"CLAIRE_SWEEP_STUDY": self.settings.study_name}
        if url != os.environ.get("CLAIRE_SWEEP_DATABASE"):  # that one the job inherits: its password stays out of
            found["CLAIRE_SWEEP_STORAGE"] = url  # the overrides every trial folder records
        found |= {
            "CLAIRE_SWEEP_TRIAL": str(trial.number),
            "CLAIRE_SWEEP_PRUNER": json.dumps(OmegaConf.to_container(self.settings.pruner, resolve=True)),
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
        text = f"{type(error).__name__}: {error}"  # logged as text: a handler keeping records keeps no error
        study._storage.set_trial_user_attr(trial._trial_id, "error", text[:2000])
        told(study, trial, state=optuna.trial.TrialState.FAIL)
        log.error("Trial %d failed: %s", trial.number, text)


class TrialFailed(Exception):
    """A failed trial's error, kept as its text alone."""


def forget_traceback(result: Any) -> None:
    """Keep only the text of a failed job's error: its traceback's frames hold the trial's model (on the GPU)."""
    from hydra.core.utils import JobStatus

    error = result._return_value
    if result.status == JobStatus.COMPLETED or not isinstance(error, BaseException):
        return
    if isinstance(error, optuna.TrialPruned):
        result.return_value = optuna.TrialPruned(str(error))
    else:
        result.return_value = TrialFailed(f"{type(error).__name__}: {error}")


def told(study: optuna.Study, trial: optuna.trial.Trial, **outcome: Any) -> None:
    """study.tell, where the grid sampler's stop() on a finished grid (allowed only inside optimize) is no error."""
    try:
        study.tell(trial, **outcome)
    except RuntimeError as error:  # the trial is stored before after_trial raises; the budget ends the sweep anyway
        if "Study.stop" not in str(error):
            raise


def counted(trials: list[optuna.trial.FrozenTrial], before: int | None = None) -> int:
    """Trials (numbered below `before`) that use up the budget: finished, pruned, running, waiting, and failed ones
    neither retried nor skipped."""
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    return sum(
        t.state in (*COUNTED, optuna.trial.TrialState.WAITING)
        or (t.state == optuna.trial.TrialState.FAIL and t.number not in retried and "skipped" not in t.user_attrs)
        for t in trials
        if before is None or t.number < before
    )
