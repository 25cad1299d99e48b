"""Optuna sweeps under Hydra multirun: pruning, grid, a study-wide budget topped up on rerun, failed trials."""

import json
import os
import subprocess
import sys

import optuna
import pytest

from claire import sweep

FAST = [  # tiny trials: 4 steps of 4 rows, an evaluation after each step on 4 rows
    "data.max_train_rows=16", "data.max_eval_rows=4", "trainer.max_steps=4", "trainer.eval_steps=1",
    "trainer.save_steps=4", "trainer.gradient_accumulation_steps=1", "trainer.per_device_train_batch_size=4",
    "trainer.disable_tqdm=true", "threads=1",
]  # fmt: skip


def space(cwd, params: dict[str, str]) -> None:
    """A search space of the test's own, `hparams_search=test` (found through --config-dir cwd/conf)."""
    folder = cwd / "conf" / "hparams_search"
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["# @package _global_", "defaults:", "  - override /hydra/sweeper: claire", "hydra:"]
    lines += ["  sweep: {dir: 'sweeps/${hydra.sweeper.study_name}', subdir: 'trial-${hydra.job.num}'}", "  sweeper:"]
    lines += ["    study_name: quick-cpu", "    sampler: {name: tpe, seed: 0}", "    params:"]
    lines += [f"      {key}: {value!r}" for key, value in params.items()]
    (folder / "test.yaml").write_text("\n".join(lines) + "\n")


def swept_command(tiny_model_dir, cwd, *overrides: str) -> list[str]:
    """`python -m claire.train -m hparams_search=test` on the tiny model (the test's search space in cwd/conf)."""
    model = [f"model.id={tiny_model_dir}", "model.name=tiny", "model.gguf_file=null", "model.gguf_package=null"]
    model += ["model.dtype=float32", "trainer.bf16=false"]
    search = ["--config-dir", str(cwd / "conf"), "-m", "hparams_search=test"]
    return [sys.executable, "-m", "claire.train", *search, *model, *FAST, *overrides]


def swept(tiny_model_dir, cwd, *overrides: str) -> subprocess.CompletedProcess:
    """Run a sweep in cwd to its end."""
    command = swept_command(tiny_model_dir, cwd, *overrides)
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}  # the sweeper is found as an installed Hydra plugin
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def trials(cwd, study="quick-cpu") -> list[optuna.trial.FrozenTrial]:
    """The study's trials, read from its database."""
    url = f"sqlite:///{cwd / 'sweeps' / study / 'study.db'}"
    return optuna.load_study(study_name=study, storage=url).get_trials()


def test_grid_sweep_prunes_and_writes_its_summary(tiny_model_dir, tmp_path):
    space(tmp_path, {"schedule.learning_rate": "choice(0.001, 0.01, 0.02, 0.03)"})
    pruner = ["hydra.sweeper.pruner.n_startup_trials=1", "hydra.sweeper.pruner.n_warmup_steps=0"]
    swept(tiny_model_dir, tmp_path, "hydra.sweeper.sampler.name=grid", "hydra.sweeper.n_trials=4", *pruner)
    found = trials(tmp_path)
    assert sorted(t.params["schedule.learning_rate"] for t in found) == [0.001, 0.01, 0.02, 0.03]  # the grid, once each
    states = [t.state for t in found]
    assert states.count(optuna.trial.TrialState.PRUNED) >= 1 and optuna.trial.TrialState.FAIL not in states
    pruned = next(t for t in found if t.state == optuna.trial.TrialState.PRUNED)
    metrics = json.loads((tmp_path / "sweeps" / "quick-cpu" / f"trial-{pruned.number}" / "metrics.json").read_text())
    assert metrics["pruned"] is True and metrics["steps"] < 4 and pruned.intermediate_values
    folder = tmp_path / "sweeps" / "quick-cpu"
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["states"]["COMPLETE"] + summary["states"]["PRUNED"] == 4
    assert summary["best_value"] == min(t.value for t in found if t.state == optuna.trial.TrialState.COMPLETE)
    assert "schedule:\n  learning_rate:" in (folder / "best.yaml").read_text()
    assert len((folder / "trials.csv").read_text().splitlines()) == 5


def test_rerun_tops_the_study_up_and_never_replays(tiny_model_dir, tmp_path):
    space(tmp_path, {"schedule.learning_rate": "tag(log, interval(1e-4, 1e-2))"})
    common = ["hydra.sweeper.sampler.name=random", "hydra.sweeper.pruner.name=none"]
    swept(tiny_model_dir, tmp_path, *common, "hydra.sweeper.n_trials=2")
    first = trials(tmp_path)
    swept(tiny_model_dir, tmp_path, *common, "hydra.sweeper.n_trials=2")  # the budget is the study's: nothing to do
    assert [t.number for t in trials(tmp_path)] == [0, 1]
    swept(tiny_model_dir, tmp_path, *common, "hydra.sweeper.n_trials=3")
    after = trials(tmp_path)
    assert [t.state for t in after] == [optuna.trial.TrialState.COMPLETE] * 3
    assert after[2].params not in [t.params for t in first]  # the seeded sampler moved on
    assert sorted(p.name for p in (tmp_path / "sweeps" / "quick-cpu").glob("trial-*")) == [
        "trial-0", "trial-1", "trial-2"
    ]  # fmt: skip


def test_failed_trials_are_recorded_and_do_not_stop_the_sweep(tiny_model_dir, tmp_path):
    space(tmp_path, {"schedule.learning_rate": "choice(0.001, 0.002)"})
    swept(tiny_model_dir, tmp_path, "hydra.sweeper.n_trials=2", "trainer.max_length=8")
    found = trials(tmp_path)
    assert [t.state for t in found] == [optuna.trial.TrialState.FAIL] * 2
    assert found[0].user_attrs["error"].startswith("ClaireError: trainer.max_length=8 is too short")


def test_search_space_follows_hydras_grammar():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from hydra_plugins.claire_sweeper.claire_sweeper import distribution

    parsed = OverridesParser.create().parse_overrides(
        ["a=range(1,4)", "b=choice(r8,r16)", "c=tag(log, interval(1e-4, 1e-2))", "d=tag(int, interval(1, 3))", "e=5"]
    )
    found = {o.get_key_element(): distribution(o) for o in parsed}
    assert found["a"] == optuna.distributions.IntDistribution(1, 3)  # range's end is exclusive, as in Python
    assert found["b"] == optuna.distributions.CategoricalDistribution(["r8", "r16"])
    assert found["c"] == optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)
    assert found["d"] == optuna.distributions.IntDistribution(1, 3) and found["e"] is None
    assert sweep.grid({"a": found["a"], "b": found["b"]}) == {"a": [1, 2, 3], "b": ["r8", "r16"]}
    with pytest.raises(Exception, match="cannot grid c"):
        sweep.grid({"c": found["c"]})


def test_a_trial_whose_process_died_is_failed_and_retried_with_its_parameters(tiny_model_dir, tmp_path):
    import time

    space(tmp_path, {"schedule.learning_rate": "tag(log, interval(1e-4, 1e-2))"})
    folder = tmp_path / "sweeps" / "quick-cpu"
    folder.mkdir(parents=True)
    storage = optuna.storages.RDBStorage(f"sqlite:///{folder / 'study.db'}", heartbeat_interval=1, grace_period=1)
    study = optuna.create_study(study_name="quick-cpu", storage=storage)
    dead = study.ask({"schedule.learning_rate": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)})
    storage.record_heartbeat(dead._trial_id)  # a sweeper that was killed after this beat
    time.sleep(2.5)
    beats = ["hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=1", "hydra.sweeper.n_trials=1"]
    swept(tiny_model_dir, tmp_path, "hydra.sweeper.pruner.name=none", *beats)
    found = trials(tmp_path)
    assert [t.state for t in found] == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE]
    assert found[1].params == found[0].params and found[1].system_attrs["failed_trial"] == 0
    assert (folder / "trial-1" / "metrics.json").exists()


@pytest.mark.slow
def test_kill_9_of_the_sweeper_mid_trial_then_a_rerun_ends_with_exactly_n_trials(tiny_model_dir, tmp_path):
    import signal
    import time

    space(tmp_path, {"schedule.learning_rate": "tag(log, interval(1e-4, 1e-2))"})
    beats = ["hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=2", "hydra.sweeper.pruner.name=none"]
    overrides = [*beats, "hydra.sweeper.n_trials=3", "trainer.max_steps=8"]  # long enough to be caught mid-trial
    command = swept_command(tiny_model_dir, tmp_path, *overrides)
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    sweeper = subprocess.Popen(command, cwd=tmp_path, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # fmt: skip
    second = tmp_path / "sweeps" / "quick-cpu" / "trial-1"
    deadline = time.monotonic() + 300
    while not (second / "config.yaml").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(sweeper.pid, signal.SIGKILL)
    sweeper.wait()
    assert [t.state for t in trials(tmp_path)][-1] == optuna.trial.TrialState.RUNNING  # killed in the middle
    time.sleep(3)  # past the grace period: the killed trial's heartbeat is stale
    swept(tiny_model_dir, tmp_path, *overrides)
    states = [t.state for t in trials(tmp_path)]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 3 and optuna.trial.TrialState.RUNNING not in states
    assert states.count(optuna.trial.TrialState.FAIL) == 1  # the killed one, retried under a new number
