"""A sweep rerun right after a `kill -9` finishes its budget at once; a trial alive elsewhere is waited for."""

import os
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import optuna
import pytest
from test_sweep import space, swept_command, trials

from claire.sweep import liveness

pytestmark = [  # the tests' own heartbeat storage and ask-and-tell, as the sweeper's
    pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning"),
    pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize"),
]
ENV = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
LR = {"schedule.learning_rate": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)}


def running_with_a_heartbeat(database: Path) -> list[int]:
    """Numbers of the RUNNING trials that have a heartbeat, read without creating the database or its tables."""
    if not database.exists():
        return []
    query = "SELECT t.number FROM trials t JOIN trial_heartbeats h ON h.trial_id = t.trial_id WHERE t.state = 'RUNNING'"
    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=1) as connection:
            return [row[0] for row in connection.execute(query)]
    except sqlite3.OperationalError:  # tables not created yet, or locked for a moment
        return []


def wait_for(condition, what: str, seconds: float = 60) -> None:
    """Poll condition() every 0.1 s until it is true; fail naming `what` after `seconds`."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"waited {seconds} s for {what}"
        time.sleep(0.1)


def test_a_rerun_right_after_kill_9_fails_the_dead_trial_at_once_and_finishes_the_budget(tiny_model_dir, tmp_path):
    space(tmp_path, {"schedule.learning_rate": "tag(log, interval(1e-4, 1e-2))"})
    command = swept_command(tiny_model_dir, tmp_path, "hydra/sweeper/pruner=none", "hydra.sweeper.n_trials=1")
    database = tmp_path / "sweeps" / "quick-cpu" / "study.db"  # default heartbeats: a stale one takes 180 s
    first = subprocess.Popen(command, cwd=tmp_path, env=ENV, start_new_session=True, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_for(lambda: running_with_a_heartbeat(database) or first.poll() is not None, "a running trial")
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    assert running_with_a_heartbeat(database) == [0], "the sweep ended before it could be killed mid-trial"
    started = time.monotonic()
    rerun = subprocess.run(command, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=120)
    output = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0, output[-3000:]
    assert time.monotonic() - started < 90  # not held up by the 180-second grace period
    found = trials(tmp_path)
    assert [t.state for t in found] == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE], output[-3000:]
    assert found[1].system_attrs["failed_trial"] == 0 and found[1].params == found[0].params  # retried
    assert f"Trial 0 failed at once: its process {first.pid} on " in output and "is gone" in output


def test_a_running_trial_alive_on_another_machine_is_waited_for_not_counted_as_done(tiny_model_dir, tmp_path):
    space(tmp_path, {"schedule.learning_rate": "tag(log, interval(1e-4, 1e-2))"})
    folder = tmp_path / "sweeps" / "quick-cpu"
    folder.mkdir(parents=True)
    storage = optuna.storages.RDBStorage(f"sqlite:///{folder / 'study.db'}", heartbeat_interval=1, grace_period=30)
    study = optuna.create_study(study_name="quick-cpu", storage=storage)
    elsewhere = study.ask(LR)  # a trial of a sweeper on another machine, alive: it keeps beating
    record = {"host": "elsewhere", "machine": "elsewhere|boot|pid:[1]", "pid": 1, "started": 1, "trial": 0}
    storage.set_trial_system_attr(elsewhere._trial_id, liveness.KEY, record)
    stop = threading.Event()
    beating = threading.Thread(target=beat, args=(storage, elsewhere._trial_id, stop), daemon=True)
    beating.start()
    beats = ["hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=30", "hydra.sweeper.n_trials=1"]
    command = swept_command(tiny_model_dir, tmp_path, "hydra/sweeper/pruner=none", *beats)
    log = tmp_path / "sweeper.log"
    with log.open("w") as out:
        sweeper = subprocess.Popen(command, cwd=tmp_path, env=ENV, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "Waiting for trial 0" in log.read_text() or sweeper.poll() is not None, "the waiting line")
        assert sweeper.poll() is None, f"the sweeper ended with trial 0 still running:\n{log.read_text()[-3000:]}"
        assert "Waiting for trial 0, running in process 1 on elsewhere" in log.read_text()
        time.sleep(1.5)  # it goes on waiting
        assert sweeper.poll() is None
        study.tell(elsewhere, 1.0)  # the other machine's trial ends
        stop.set()
        assert sweeper.wait(timeout=30) == 0, log.read_text()[-3000:]
    finally:
        stop.set()
        if sweeper.poll() is None:
            sweeper.kill()
    assert [t.state for t in trials(tmp_path)] == [optuna.trial.TrialState.COMPLETE]  # no trial ran here
    assert not list(folder.glob("trial-*"))


def beat(storage: optuna.storages.RDBStorage, trial_id: int, stop: threading.Event) -> None:
    """Keep a trial's heartbeat fresh until stop is set, as its live sweeper elsewhere would."""
    while not stop.wait(0.3):
        storage.record_heartbeat(trial_id)


def test_liveness_knows_a_gone_process_from_a_live_one_and_judges_only_its_own_machine():
    assert not liveness.gone(liveness.owner(0))  # this process
    child = subprocess.Popen(["sleep", "30"])
    record = liveness.owner(0) | {"pid": child.pid, "started": liveness.started(child.pid)}
    assert not liveness.gone(record)
    if record["started"] is not None:  # Linux: the same pid with another start time is another process
        assert liveness.gone(record | {"started": record["started"] - 1})
    child.kill()
    wait_for(lambda: liveness.gone(record), "the killed child to be gone", 10)  # not yet reaped: a zombie is gone
    child.wait()
    assert liveness.gone(record)
    assert not liveness.gone(record | {"machine": "elsewhere|boot|ns"})  # another machine: its heartbeat decides
    assert not liveness.gone(None) and not liveness.gone(record | {"pid": 0})


@pytest.mark.parametrize("number", [0, 3])
def test_a_retried_trial_does_not_inherit_its_originals_owner(number):
    frozen = optuna.trial.create_trial(state=optuna.trial.TrialState.RUNNING, system_attrs={liveness.KEY: {"trial": 0}})
    frozen.number = number
    assert (liveness.recorded(frozen) is not None) == (number == 0)


def test_a_sweep_ending_with_its_budget_unmet_exits_with_an_error_not_0(tmp_path):
    from hydra_plugins.claire_sweeper.claire_sweeper import ClaireSweeper

    study = optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path / 'study.db'}")
    study.add_trial(
        optuna.trial.create_trial(value=1.0, params={"x": 0.001}, distributions={"x": LR["schedule.learning_rate"]})
    )
    ClaireSweeper(n_trials=1).check_budget(study)  # met: nothing said
    with pytest.raises(SystemExit, match=r"ended 1 trials of n_trials=2 \(.*'COMPLETE': 1"):
        ClaireSweeper(n_trials=2).check_budget(study)
