"""claire.sweep: summary, plots and report.md from a study alone (no training), on demand or by the sweeper."""

import json
import os
import subprocess
import sys

import optuna
import pytest

from claire import ClaireError
from claire.sweep import summary

SPACE = {
    "schedule.learning_rate": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True),
    "lora": optuna.distributions.CategoricalDistribution(["r8", "r16", "r32"]),
    "trainer.gradient_accumulation_steps": optuna.distributions.IntDistribution(1, 4),
}
COMMAND = [sys.executable, "-m", "claire.sweep"]


def study_in(folder, finished: int = 4, name: str = "s") -> optuna.Study:
    """A study of `finished` complete trials with learning curves, one pruned and one failed, in folder/study.db."""
    folder.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(study_name=name, storage=f"sqlite:///{folder / 'study.db'}",
                                sampler=optuna.samplers.RandomSampler(0))  # fmt: skip
    for i in range(finished + 2):
        trial = study.ask(SPACE)
        for rows in (8, 16, 24)[: 1 if i == finished else 3]:
            trial.report(3.0 - rows / 10 + i / 7, rows)
        if i == finished:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        elif i == finished + 1:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        else:
            study.tell(trial, 3.0 - 2.4 + i / 7)
    return study


def cli(*args, cwd) -> subprocess.CompletedProcess:
    """`python -m claire.sweep ARGS` in a fresh process."""
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.run([*COMMAND, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True)


def test_a_report_has_every_plot_the_best_trial_and_a_row_per_trial(tmp_path):
    folder = tmp_path / "sweeps" / "s"
    study = study_in(folder)
    written = summary.write_report(study, folder)
    for plot in summary.PLOTS:
        data = (folder / plot).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 10_000 and folder / plot in written
    report = (folder / "report.md").read_text()
    best = study.best_trial
    assert f"Best: trial {best.number}, value {best.value:.6g}," in report and "Best: trial 0, value 0.6," in report
    assert "4 complete, 1 pruned, 1 fail" in report and "Direction: minimize" in report
    assert "copy best.yaml to conf/experiment/<name>.yaml" in report and "claire.train experiment=<name>`" in report
    assert "+experiment" not in report and all(f"]({plot})" in report for plot in summary.PLOTS)
    rows = [line for line in report.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [row.split(" | ")[:2] for row in rows] == [[f"| {t.number}", t.state.name] for t in study.trials]
    assert rows[4].endswith("| 8 |") and rows[0].endswith("| 24 |") and "lora=" in rows[0]  # the last step reported
    assert "not drawn" not in report
    for name in ("trials.csv", "summary.json", "best.yaml", "report.md"):  # write_summary's files too
        assert (folder / name).exists() and folder / name in written
    assert json.loads((folder / "summary.json").read_text())["best_trial"] == best.number


@pytest.mark.parametrize("finished", [0, 1])
def test_a_small_study_says_which_plots_it_skipped(tmp_path, finished):
    folder = tmp_path / "s"
    written = summary.write_report(study_in(folder, finished=finished), folder)
    report = (folder / "report.md").read_text()
    reason = "no trial has finished" if finished == 0 else "importances need at least 2 finished trials"
    assert f"param_importances.png not drawn: {reason}" in report
    assert not (folder / "param_importances.png").exists() and (folder / "intermediate_values.png").exists()
    assert ("optimization_history.png not drawn: no trial has finished" in report) == (finished == 0)
    assert ("Best: trial 0," in report) == (finished == 1) and (folder / "best.yaml" in written) == (finished == 1)
    assert sum(line.startswith("| ") and line[2].isdigit() for line in report.splitlines()) == finished + 2


def test_an_empty_study_and_trials_that_do_not_vary(tmp_path):
    empty = optuna.create_study(study_name="empty")
    written = summary.write_report(empty, tmp_path / "empty")
    assert [p.name for p in written] == ["trials.csv", "summary.json", "report.md"]  # no best.yaml, no plot
    assert json.loads((tmp_path / "empty" / "summary.json").read_text())["states"]["COMPLETE"] == 0
    report = (tmp_path / "empty" / "report.md").read_text()
    assert "trials: none yet" in report and report.count("not drawn") == 4
    same = optuna.create_study(study_name="same")
    for value in (1.0, 2.0):
        same.enqueue_trial({"schedule.learning_rate": 1e-3})
        same.tell(same.ask({"schedule.learning_rate": SPACE["schedule.learning_rate"]}), value)
    summary.write_report(same, tmp_path / "same")
    report = (tmp_path / "same" / "report.md").read_text()
    assert "param_importances.png not drawn: importances need at least 2 finished trials whose param" in report
    assert (tmp_path / "same" / "parallel_coordinate.png").exists()


def test_a_plot_optuna_cannot_draw_is_skipped_with_its_reason(tmp_path, monkeypatch):
    def broken(study, plot, path):
        raise ValueError(f"cannot draw {plot}\nsecond line")

    monkeypatch.setattr(summary, "draw", broken)
    folder = tmp_path / "s"
    summary.write_report(study_in(folder), folder)
    report = (folder / "report.md").read_text()
    assert "*parallel_coordinate.png not drawn: optuna could not draw it: cannot draw parallel_coordinate.png.*" in (
        report
    )
    assert "second line" not in report and not list(folder.glob("*.png")) and (folder / "summary.json").exists()


def test_the_command_line_rewrites_a_folder_and_refuses_one_without_a_study(tmp_path):
    folder = tmp_path / "sweeps" / "s"
    study_in(folder)
    done = cli(folder, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"claire.sweep: {folder}/report.md"
    assert (folder / "optimization_history.png").exists()
    (tmp_path / "empty").mkdir()
    refused = cli("empty", cwd=tmp_path)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and refused.stdout == ""
    assert refused.stderr.startswith("claire.sweep: error: empty has no study.db and $CLAIRE_SWEEP_DATABASE")


def test_usage_without_folders_and_with_help(capsys):
    with pytest.raises(SystemExit) as stopped:
        summary.main([])
    assert stopped.value.code == 2 and capsys.readouterr().err.startswith("usage: python -m claire.sweep")
    with pytest.raises(SystemExit) as stopped:
        summary.main(["--help"])
    assert stopped.value.code == 0 and capsys.readouterr().out.startswith("usage: python -m claire.sweep")


def test_the_database_from_the_environment_and_a_missing_study_name(tmp_path, monkeypatch):
    study_in(tmp_path / "db", name="elsewhere")
    monkeypatch.delenv("CLAIRE_SWEEP_DATABASE", raising=False)
    with pytest.raises(ClaireError, match=r"has no study.db and \$CLAIRE_SWEEP_DATABASE is not set"):
        summary.load(tmp_path / "sweeps" / "elsewhere")
    monkeypatch.setenv("CLAIRE_SWEEP_DATABASE", f"sqlite:///{tmp_path / 'db' / 'study.db'}")
    folder = tmp_path / "sweeps" / "elsewhere"
    summary.write_report(summary.load(folder), folder)
    assert json.loads((folder / "summary.json").read_text())["study"] == "elsewhere"
    renamed = tmp_path / "sweeps" / "renamed"  # summary.json's name wins over the folder's
    renamed.mkdir()
    (renamed / "summary.json").write_text(json.dumps({"study": "elsewhere"}))
    assert summary.load(renamed).study_name == "elsewhere"
    with pytest.raises(ClaireError, match=r"study 'other' is not in .*; it has \['elsewhere'\]"):
        summary.load(tmp_path / "sweeps" / "other")


def test_a_study_db_in_the_folder_wins_over_the_environment(tmp_path, monkeypatch):
    study_in(tmp_path / "db", name="s", finished=1)
    monkeypatch.setenv("CLAIRE_SWEEP_DATABASE", f"sqlite:///{tmp_path / 'db' / 'study.db'}")
    study_in(tmp_path / "sweeps" / "s", finished=2)
    assert len(summary.load(tmp_path / "sweeps" / "s").trials) == 4
