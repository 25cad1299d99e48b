"""Optuna sweeps under Hydra multirun: pruning, grid, a study-wide budget topped up on rerun, failed trials."""

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest

from claire.sweep import optuna_study
from claire.sweep import summary as sweep_summary

CONF = Path(__file__).parents[1] / "conf"
SEARCHES = sorted(p.stem for p in (CONF / "hparams_search").glob("*.yaml"))
SAMPLERS = sorted(p.stem for p in (CONF / "hydra" / "sweeper" / "sampler").glob("*.yaml"))
PRUNERS = sorted(p.stem for p in (CONF / "hydra" / "sweeper" / "pruner").glob("*.yaml"))

FAST = [  # tiny trials: 4 steps of 4 rows, an evaluation after each step on 4 rows
    "data.max_train_rows=16", "data.max_eval_rows=4", "trainer.max_steps=4", "trainer.eval_steps=1",
    "trainer.save_steps=4", "trainer.gradient_accumulation_steps=1", "trainer.per_device_train_batch_size=4",
    "trainer.disable_tqdm=true", "threads=1",
]  # fmt: skip


def space(cwd, params: dict[str, str], report: bool = False) -> None:
    """A search space of the test's own, `hparams_search=test` (found through --config-dir cwd/conf)."""
    folder = cwd / "conf" / "hparams_search"
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["# @package _global_", "defaults:", "  - override /hydra/sweeper: claire", "hydra:"]
    lines += ["  sweep: {dir: 'sweeps/${hydra.sweeper.study_name}',"]
    lines += ["          subdir: 'trial-${hydra.job.env_set.CLAIRE_SWEEP_TRIAL}'}"]
    lines += ["  sweeper:", "    study_name: quick-cpu", "    sampler: {seed: 0}", f"    report: {str(report).lower()}"]
    lines += ["    params:"]
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
    space(tmp_path, {"schedule.learning_rate": "choice(0.001, 0.01, 0.02, 0.03)"}, report=True)
    pruner = ["hydra.sweeper.pruner.n_startup_trials=1", "hydra.sweeper.pruner.n_warmup_steps=0"]
    swept(tiny_model_dir, tmp_path, "hydra/sweeper/sampler=grid", "hydra.sweeper.n_trials=4", *pruner, "tracking=wandb")
    found = trials(tmp_path)
    assert sorted(t.params["schedule.learning_rate"] for t in found) == [0.001, 0.01, 0.02, 0.03]  # the grid, once each
    states = [t.state for t in found]
    assert states.count(optuna.trial.TrialState.PRUNED) >= 1 and optuna.trial.TrialState.FAIL not in states
    pruned = next(t for t in found if t.state == optuna.trial.TrialState.PRUNED)
    metrics = json.loads((tmp_path / "sweeps" / "quick-cpu" / f"trial-{pruned.number}" / "metrics.json").read_text())
    assert metrics["pruned"] is True and metrics["steps"] < 4 and pruned.intermediate_values
    assert set(pruned.intermediate_values) <= {4, 8, 12}  # reported at the rows seen: 4 a step
    folder = tmp_path / "sweeps" / "quick-cpu"
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["states"]["COMPLETE"] + summary["states"]["PRUNED"] == 4
    assert summary["best_value"] == min(t.value for t in found if t.state == optuna.trial.TrialState.COMPLETE)
    assert "schedule:\n  learning_rate:" in (folder / "best.yaml").read_text()
    assert len((folder / "trials.csv").read_text().splitlines()) == 5
    report = (folder / "report.md").read_text()  # report=true: each plot drawn, or said why not (1 finished trial)
    assert all((folder / p).exists() or f"{p} not drawn" in report for p in sweep_summary.PLOTS)
    assert (folder / "intermediate_values.png").read_bytes().startswith(b"\x89PNG")
    assert f"Best: trial {summary['best_trial']}," in (folder / "report.md").read_text()
    for t in found:  # one tracker run per trial (all ran in one process), closed and tagged with how it ended
        log = b"".join(p.read_bytes() for p in (folder / f"trial-{t.number}" / "wandb").glob("offline-run-*/*.wandb"))
        outcome = b"pruned" if t.state == optuna.trial.TrialState.PRUNED else b"finished"
        assert outcome in log and f"trial:{t.number}".encode() in log and b"study:quick-cpu" in log
    assert len({(folder / f"trial-{t.number}" / "wandb_run_id").read_text() for t in found}) == 4


def test_rerun_tops_the_study_up_and_never_replays(tiny_model_dir, tmp_path):
    space(tmp_path, {"schedule.learning_rate": "tag(log, interval(1e-4, 1e-2))"})
    common = ["hydra/sweeper/sampler=random", "hydra/sweeper/pruner=none"]
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
    assert optuna_study.grid({"a": found["a"], "b": found["b"]}) == {"a": [1, 2, 3], "b": ["r8", "r16"]}
    with pytest.raises(Exception, match="cannot grid c"):
        optuna_study.grid({"c": found["c"]})


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
    swept(tiny_model_dir, tmp_path, "hydra/sweeper/pruner=none", *beats)
    found = trials(tmp_path)
    assert [t.state for t in found] == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE]
    assert found[1].params == found[0].params and found[1].system_attrs["failed_trial"] == 0
    assert (folder / "trial-1" / "metrics.json").exists()


@pytest.mark.slow
def test_kill_9_of_the_sweeper_mid_trial_then_a_rerun_ends_with_exactly_n_trials(tiny_model_dir, tmp_path):
    import signal
    import time

    space(tmp_path, {"schedule.learning_rate": "tag(log, interval(1e-4, 1e-2))"})
    beats = ["hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=2", "hydra/sweeper/pruner=none"]
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


def test_two_sweepers_share_one_study_and_its_budget(tiny_model_dir, tmp_path):
    space(tmp_path, {"schedule.learning_rate": "tag(log, interval(1e-4, 1e-2))"})
    command = swept_command(tiny_model_dir, tmp_path, "hydra/sweeper/pruner=none", "hydra.sweeper.n_trials=6")
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    sweepers = [subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True) for _ in range(2)]  # fmt: skip
    logs = [s.communicate(timeout=600)[0] for s in sweepers]
    assert [s.returncode for s in sweepers] == [0, 0], logs[0][-2000:] + logs[1][-2000:]
    found = trials(tmp_path)
    done = [t.number for t in found if t.state == optuna.trial.TrialState.COMPLETE]
    skipped = [t for t in found if t.state == optuna.trial.TrialState.FAIL]
    assert len(done) == 6 and all("skipped" in t.user_attrs for t in skipped)  # the budget held, none ran twice
    folders = sorted(p.name for p in (tmp_path / "sweeps" / "quick-cpu").glob("trial-*"))
    assert folders == sorted(f"trial-{n}" for n in done)
    assert all("Launching" in log for log in logs)  # both sweepers ran trials of the one study


def test_joblib_launcher_runs_a_batch_of_trials_together(tiny_model_dir, tmp_path):
    space(tmp_path, {"schedule.learning_rate": "choice(0.001, 0.002, 0.003, 0.004)"})
    parallel = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "hydra.sweeper.n_jobs=2"]
    swept(tiny_model_dir, tmp_path, *parallel, "hydra/sweeper/sampler=grid", "hydra/sweeper/pruner=none",
          "hydra.sweeper.n_trials=4")  # fmt: skip
    found = trials(tmp_path)
    assert [t.state for t in found] == [optuna.trial.TrialState.COMPLETE] * 4
    assert sorted(t.params["schedule.learning_rate"] for t in found) == [0.001, 0.002, 0.003, 0.004]
    assert found[1].datetime_start < found[0].datetime_complete  # the two of a batch ran at the same time
    for t in found:  # each job wrote its own trial's folder
        metrics = json.loads((tmp_path / "sweeps" / "quick-cpu" / f"trial-{t.number}" / "metrics.json").read_text())
        assert metrics["eval_loss"] == pytest.approx(t.value)


def test_submitit_launcher_runs_trials_as_its_jobs(tiny_model_dir, tmp_path):
    space(tmp_path, {"schedule.learning_rate": "choice(0.001, 0.002)"})
    submitit = ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", "hydra.sweeper.n_jobs=2"]
    swept(tiny_model_dir, tmp_path, *submitit, "hydra/sweeper/pruner=none", "hydra.sweeper.n_trials=2")
    found = trials(tmp_path)
    assert [t.state for t in found] == [optuna.trial.TrialState.COMPLETE] * 2
    folder = tmp_path / "sweeps" / "quick-cpu"
    assert all((folder / f"trial-{t.number}" / "metrics.json").exists() for t in found)
    assert list((folder / ".submitit").glob("*/*_result.pkl"))  # submitit ran them, not the basic launcher


@pytest.mark.slow
def test_a_trial_of_two_ranks_under_submitit_is_pruned_by_rank_0_and_both_stop(tiny_model_dir, tmp_path):
    space(tmp_path, {"schedule.learning_rate": "choice(0.001)"})
    ranks = ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", "hydra.launcher.tasks_per_node=2"]
    prune = ["hydra/sweeper/pruner=threshold", "hydra.sweeper.pruner.upper=1.0"]  # the tiny model's loss is ~10.8
    batch = ["trainer.per_device_train_batch_size=2", "keep_global_batch=false"]  # accumulation 1 on each rank
    swept(tiny_model_dir, tmp_path, *ranks, *prune, "hydra.sweeper.n_trials=1", *batch)
    [trial] = trials(tmp_path)
    assert trial.state == optuna.trial.TrialState.PRUNED and list(trial.intermediate_values) == [4]  # 1 step x 2 x 2
    folder = tmp_path / "sweeps" / "quick-cpu"
    assert "Global batch 4" in (folder / "trial-0" / "train.log").read_text()  # 2 rows a rank, 2 ranks
    assert json.loads((folder / "trial-0" / "metrics.json").read_text())["pruned"] is True
    assert len(list((folder / ".submitit").glob("*/*_result.pkl"))) == 2  # both ranks returned: none hung


def test_of_trials_asked_at_once_by_two_sweepers_the_lower_numbers_win(tmp_path):
    from hydra_plugins.claire_sweeper.claire_sweeper import ClaireSweeper, counted

    study = optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path / 'study.db'}")
    sweeper = ClaireSweeper(n_trials=2)
    dist = {"x": optuna.distributions.FloatDistribution(0, 1)}
    asked = [study.ask(dist) for _ in range(3)]  # two sweepers each saw room for one more, one asked twice
    assert [sweeper.within_budget(study, t) for t in asked] == [True, True, False]
    found = study.get_trials()
    assert found[2].state == optuna.trial.TrialState.FAIL and "another sweeper" in found[2].user_attrs["skipped"]
    assert counted(found) == 2  # the skipped one never counts against the budget


def rank_follows_rank_0(rank: int, url: str, port: int, decisions) -> None:
    """One rank of a 2-process gloo group evaluating a trial: only rank 0 may reach the study."""
    import torch.distributed as dist
    from transformers import TrainerControl, TrainerState

    os.environ |= {"RANK": str(rank), "CLAIRE_SWEEP_TRIAL": "0", "CLAIRE_SWEEP_STUDY": "s"}
    os.environ["CLAIRE_SWEEP_STORAGE"] = url if rank == 0 else "sqlite:////nonexistent/folder/study.db"
    os.environ["CLAIRE_SWEEP_PRUNER"] = json.dumps({"_target_": "optuna.pruners.ThresholdPruner", "upper": 1.0})
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    callback, control, state = optuna_study.pruning_callback("eval_loss"), TrainerControl(), TrainerState(global_step=3)
    args = SimpleNamespace(per_device_train_batch_size=4, gradient_accumulation_steps=2, world_size=2)
    callback.on_evaluate(args, state, control, metrics={"eval_loss": 5.0 + rank})  # only rank 0's value counts
    decisions[rank] = (callback.trial is None, callback.pruned, control.should_training_stop)
    dist.destroy_process_group()


def test_a_trial_is_never_pruned_at_its_final_evaluation(tmp_path, monkeypatch):
    from transformers import TrainerControl, TrainerState

    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="s", storage=url)
    study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    monkeypatch.setenv("CLAIRE_SWEEP_TRIAL", "0")
    monkeypatch.setenv("CLAIRE_SWEEP_STUDY", "s")
    monkeypatch.setenv("CLAIRE_SWEEP_STORAGE", url)
    monkeypatch.setenv("CLAIRE_SWEEP_PRUNER", json.dumps({"_target_": "optuna.pruners.ThresholdPruner", "upper": 1.0}))
    args = SimpleNamespace(per_device_train_batch_size=4, gradient_accumulation_steps=1, world_size=1)
    for step, pruned in ((5, True), (10, False)):  # the same bad loss: pruned midway, kept at the last step
        callback, control = optuna_study.pruning_callback("eval_loss"), TrainerControl()
        callback.on_evaluate(args, TrainerState(global_step=step, max_steps=10), control, metrics={"eval_loss": 5.0})
        assert (callback.pruned, control.should_training_stop) == (pruned, pruned)
    assert optuna.load_study(study_name="s", storage=url).trials[0].intermediate_values == {20: 5.0, 40: 5.0}


def test_in_a_multi_process_trial_only_rank_0_reports_and_every_rank_follows(tmp_path):
    import socket

    import torch.multiprocessing as mp

    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="s", storage=url)
    study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    decisions = mp.Manager().dict()
    mp.spawn(rank_follows_rank_0, args=(url, port, decisions), nprocs=2, join=True)
    assert dict(decisions) == {0: (False, True, True), 1: (True, True, True)}  # rank 1 had no study, yet stopped
    assert study.get_trials()[0].intermediate_values == {48: 5.0}  # once, by rank 0, at 3 steps x 16 rows


def sweeper_config(*overrides: str):
    """conf/train.yaml composed with Hydra's own config, as the sweeper receives it."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=True)


def search_space(cfg) -> dict:
    """The optuna distributions of a composed config's hydra.sweeper.params."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from hydra_plugins.claire_sweeper.claire_sweeper import distribution

    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in cfg.hydra.sweeper.params.items()])
    return {o.get_key_element(): distribution(o) for o in parsed}


@pytest.mark.parametrize("search", SEARCHES)
def test_each_search_space_composes_and_builds_its_study_parts(search):
    from omegaconf import OmegaConf

    cfg = sweeper_config(f"hparams_search={search}")
    settings = cfg.hydra.sweeper
    assert settings._target_.endswith("ClaireSweeper") and cfg.hydra.sweep.dir == f"sweeps/{settings.study_name}"
    space = search_space(cfg)
    assert space and all(d is not None for d in space.values())  # every param is a sweep
    for key in space:  # every swept key exists in the config (a group name, or a key of the composed config)
        assert key in {"lora", "schedule", "model", "trainer"} or OmegaConf.select(cfg, key) is not None, key
    assert isinstance(
        optuna_study.sampler(OmegaConf.to_container(settings.sampler), space), optuna.samplers.BaseSampler
    )
    assert isinstance(optuna_study.pruner(OmegaConf.to_container(settings.pruner)), optuna.pruners.BasePruner)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_each_sampler_builds_on_the_quick_space(sampler):
    from omegaconf import OmegaConf

    cfg = sweeper_config("hparams_search=quick-cpu", f"hydra/sweeper/sampler={sampler}", "hydra/sweeper/pruner=none")
    space = search_space(cfg)
    if sampler == "grid":  # a log interval cannot be gridded: one line, before any trial
        with pytest.raises(Exception, match="cannot grid schedule.learning_rate"):
            optuna_study.sampler(OmegaConf.to_container(cfg.hydra.sweeper.sampler), space)
        space.pop("schedule.learning_rate")
    built = optuna_study.sampler(OmegaConf.to_container(cfg.hydra.sweeper.sampler), space, offset=3)
    names = {"tpe": "TPESampler", "random": "RandomSampler", "grid": "GridSampler", "cmaes": "CmaEsSampler"}
    assert type(built).__name__ == names[sampler]
    if sampler == "grid":
        assert len(built._all_grids) == 3 * 3  # lora x warm-up


@pytest.mark.parametrize("pruner", PRUNERS)
def test_each_pruner_builds_and_a_bad_key_is_one_line(pruner):
    from omegaconf import OmegaConf

    cfg = sweeper_config("hparams_search=quick-cpu", f"hydra/sweeper/pruner={pruner}")
    assert isinstance(optuna_study.pruner(OmegaConf.to_container(cfg.hydra.sweeper.pruner)), optuna.pruners.BasePruner)
    settings = OmegaConf.to_container(cfg.hydra.sweeper.pruner) | {"n_warmup_step": 3}
    with pytest.raises(Exception, match=r"hydra/sweeper/pruner: optuna\.pruners\.\w+ cannot be built") as error:
        optuna_study.pruner(settings)
    assert "\n" not in str(error.value)


def test_a_search_file_leaves_model_and_data_to_the_command_line():
    cfg = sweeper_config("hparams_search=7b", "data=v2")
    assert (cfg.model.name, cfg.data.name, cfg.lora.r) == ("qwen2.5-7b", "v2", 64)  # lora is swept, not set
    assert cfg.hydra.sweeper.study_name == "qwen2.5-7b-v2"
    grid = sweeper_config("hparams_search=report-grid", "model=0.5b")
    assert grid.hydra.sweeper.study_name == "report-grid-qwen2.5-0.5b"
    space = {k: d for k, d in search_space(grid).items() if k != "schedule.learning_rate"}
    assert sorted(optuna_study.grid(space)) == [
        "lora", "lora.lora_dropout", "schedule.warmup_steps", "schedule.weight_decay",
        "trainer.gradient_accumulation_steps", "trainer.num_train_epochs",
    ]  # fmt: skip


def test_two_sweepers_share_a_postgresql_study_and_its_password_is_never_written(
    tiny_model_dir, tmp_path, postgres_url
):
    url = postgres_url  # e.g. postgresql+psycopg://claire:secret@localhost/sweeps
    study = f"test-{tmp_path.name}-{os.getpid()}"
    space(tmp_path, {"schedule.learning_rate": "tag(log, interval(1e-4, 1e-2))"})
    command = swept_command(tiny_model_dir, tmp_path, "hydra/sweeper/pruner=none", "hydra.sweeper.n_trials=3",
                            f"hydra.sweeper.study_name={study}")  # fmt: skip
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "CLAIRE_SWEEP_DATABASE": url}
    sweepers = [subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                 text=True) for _ in range(2)]  # fmt: skip
    errors = [s.communicate(timeout=600)[1] for s in sweepers]
    assert [s.returncode for s in sweepers] == [0, 0], errors[0][-2000:] + errors[1][-2000:]
    found = optuna.load_study(study_name=study, storage=url).get_trials()
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in found) == 3
    assert not (tmp_path / "sweeps" / study / "study.db").exists()  # the study lives in PostgreSQL only
    password = url.split("@")[0].rsplit(":", 1)[-1]
    written = [p for p in (tmp_path / "sweeps").rglob("*") if p.is_file() and p.suffix in (".yaml", ".json", ".log")]
    assert written and not [p for p in written if password in p.read_text(errors="ignore")]


def test_a_grpo_sweep_prunes_on_the_eval_reward(tiny_model_dir, tmp_path):
    space(tmp_path, {"schedule.learning_rate": "choice(0.00001, 0.001)"})
    grpo = ["method=grpo", "method.num_generations=2", "method.max_completion_length=8", "data.max_eval_rows=2"]
    grpo += ["trainer.per_device_eval_batch_size=2"]  # an eval batch holds whole groups
    prune = ["hydra/sweeper/pruner=threshold", "hydra.sweeper.pruner.lower=10"]  # no reward reaches 10: prune
    swept(tiny_model_dir, tmp_path, *grpo, *prune, "hydra/sweeper/sampler=grid", "hydra.sweeper.n_trials=2")
    found = trials(tmp_path)
    assert [t.state for t in found] == [optuna.trial.TrialState.PRUNED] * 2
    assert all(list(t.intermediate_values) == [4] for t in found)  # reported after step 1: 4 completions seen
    folder = tmp_path / "sweeps" / "quick-cpu"
    assert all(json.loads((folder / f"trial-{t.number}" / "metrics.json").read_text())["pruned"] for t in found)
