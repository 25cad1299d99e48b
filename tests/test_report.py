"""claire.report: the report's tables, figures and page from run folders alone (fixtures written here or by the
tiny model), the published numbers of experiments/report as printed, and seeds with their statistics."""

import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, compose_train
from omegaconf import OmegaConf

from claire import ClaireError, configs, datafiles, report, stats
from claire.reporting import experiments

REFERENCES = ROOT / "experiments" / "report"
GSM8K = ("claire_gsm8k", "exact_match", "strict-match")


def compose_report(*overrides: str):
    """conf/report.yaml composed with overrides, as `python -m claire.report` would."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("report", overrides=list(overrides))


def write_run(folder: Path, seed: int = 1, run_name: str = "exp", rows: dict | None = None, items: dict | None = None,
              **extra) -> Path:  # fmt: skip
    """A finished run folder: its resolved config, metrics with a loss history, and one evaluation of base and
    fine-tuned. rows: {(task, metric, filter): (base, tuned)}; items: {(task, metric, filter): {doc: (b, t)}}."""
    cfg = compose_train(f"seed={seed}", f"run_name={run_name}", f"output_dir={folder}", *extra.get("overrides", []))
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(configs.resolved(cfg))))
    history = [{"loss": 2.0 - i / 4, "step": i} for i in range(1, 5)] + [{"eval_loss": 1.4, "step": 4}]
    metrics = {"eval_loss": 1.4, "trainable_params": 1234, "total_params": 99999, "history": history}
    datafiles.write_json(folder / "metrics.json", metrics | extra.get("metrics", {}))
    if not extra.get("evaluated", True):
        return folder
    evaluation = folder / "eval" / "report-2026"
    (evaluation / "base").mkdir(parents=True)
    (evaluation / "tuned").mkdir()
    (evaluation / "config.yaml").write_text(f"run: {folder}\n")
    rows = rows or {}
    result_rows = [
        {"model": label, "task": k[0], "metric": k[1], "filter": k[2], "value": v[i]}
        for k, v in rows.items() for i, label in enumerate(("base", "tuned"))
    ]  # fmt: skip
    comparisons = extra.get("comparisons", [])
    datafiles.write_json(evaluation / "results.json", {"rows": result_rows, "comparisons": comparisons})
    for (task, metric, filter_name), docs in (items or {}).items():
        for i, label in enumerate(("base", "tuned")):
            with open(evaluation / label / f"samples_{task}.jsonl", "a") as f:
                for doc, values in docs.items():
                    question = extra.get("questions", {}).get(doc, f"question number {doc}")
                    sample = {"doc_id": doc, "filter": filter_name, "metrics": [metric], metric: values[i]}
                    f.write(json.dumps(sample | {"doc": {"question": question}}) + "\n")
    return folder


def make_report(tmp_path: Path, *runs_given: Path, extra: tuple = ()) -> Path:
    """Run claire.report over the folders; the output folder."""
    listed = ",".join(str(p) for p in runs_given)
    return report.run(compose_report(f"runs=[{listed}]", f"output_dir={tmp_path / 'report'}", *extra))


def table_line(out: Path, benchmark: str) -> str:
    """The tables.md line of one benchmark (the first)."""
    return next(line for line in (out / "tables.md").read_text().splitlines() if line.startswith(f"| {benchmark} |"))


def csv_rows(out: Path) -> list[dict]:
    with open(out / "tables.csv") as f:
        return list(csv.DictReader(f))


# The founding report, section 4.5 "Evaluation Results (V1)": base vs Claire, all nine pairs as printed.
V1_TABLES = {
    "0.5b": [("gpqa_diamond", "0.23", "0.27"), ("gpqa_extended", "0.26", "0.27"), ("gsm8k", "0.22", "0.31")],
    "1.5b": [("gpqa_diamond", "0.29", "0.29"), ("gpqa_extended", "0.31", "0.29"), ("gsm8k", "0.29", "0.61")],
    "7b": [("gpqa_diamond", "0.32", "0.38"), ("gpqa_extended", "0.33", "0.35"), ("gsm8k", "0.77", "0.88")],
}


def test_the_published_numbers_render_exactly_as_the_report_printed_them(tmp_path):
    out = make_report(tmp_path, REFERENCES)
    tables = (out / "tables.md").read_text()
    for size, printed in V1_TABLES.items():
        section = tables.split(f"### claire-{size}-v1 ")[1].split("###")[0]
        metric = {"gsm8k": "exact_match (strict-match)"}
        rows = [f"| {b} | {metric.get(b, 'acc')} | {base} | {claire} |" for b, base, claire in printed]
        body = ["| Benchmark | Metric | Base | Claire |", "|---|---|---|---|", *rows]
        assert section.split("\n\n")[1].splitlines() == body  # the three rows in the report's order, nothing else
        v2 = tables.split(f"### claire-{size}-v2 ")[1].split("###")[0]
        assert "No benchmark numbers." in v2 and "| gsm8k |" not in v2  # section 4.7 has charts only
    page = (out / "report.md").read_text()
    for size, printed, exact in (
        ("0.5b", "35M", "35,192,832"),
        ("1.5b", "74M", "73,859,072"),
        ("7b", "80M", "80,740,352"),
    ):
        for version in ("v1", "v2"):  # as the report printed it; the dry run's exact count
            assert f"| claire-{size}-{version} | qwen2.5-{size} | {printed} | — | — | {exact} |" in page
    assert (out / "bars-claire-7b-v1.png").read_bytes().startswith(b"\x89PNG")


def test_the_reference_runs_are_frozen_from_the_experiment_configs():
    for folder in sorted(REFERENCES.glob("claire-*")):
        cfg = compose_train(f"experiment={folder.name}", f"output_dir=experiments/report/{folder.name}")
        frozen = OmegaConf.to_container(OmegaConf.load(folder / "config.yaml"))
        assert frozen == configs.resolved(cfg), f"rerun `sh experiments/report/freeze.sh`: {folder.name} drifted"
        reference = json.loads((folder / "reference.json").read_text())
        assert reference["run_name"] == folder.name == frozen["run_name"]
        assert reference["model"] == frozen["model"]["name"]
        hydra_saved = OmegaConf.load(folder / ".hydra" / "config.yaml")
        assert OmegaConf.to_container(hydra_saved, resolve=True) == frozen


def test_seeds_are_one_row_with_the_mean_and_its_t_interval(tmp_path):
    folders = [
        write_run(tmp_path / f"s{seed}", seed=seed, rows={GSM8K: (base, base + 0.1)})
        for seed, base in ((1, 0.2), (2, 0.3), (3, 0.4))
    ]
    out = make_report(tmp_path, *folders)
    half = 4.302652729911275 * 0.1 / 3**0.5  # t(0.975, 2 df) x sd / sqrt(3)
    assert f"| gsm8k | exact_match (strict-match) | 0.300 ± {half:.3f} | 0.400 ± {half:.3f} |" in table_line(
        out, "gsm8k"
    )
    assert "3 seeds (1, 2, 3)" in (out / "tables.md").read_text()
    (row,) = csv_rows(out)
    assert float(row["base"]) == pytest.approx(0.3) and float(row["base_ci"]) == pytest.approx(half)
    assert row["seeds"] == "3" and row["p"] == ""  # no per-item samples, so no paired test (the table shows —)


def test_across_seeds_the_paired_test_compares_item_means(tmp_path):
    per_seed = [
        {0: (0.0, 1.0), 1: (0.0, 1.0), 2: (1.0, 1.0), 3: (0.0, 0.0)},
        {0: (0.0, 1.0), 1: (1.0, 1.0), 2: (1.0, 0.0), 3: (0.0, 1.0)},
    ]
    folders = [
        write_run(tmp_path / f"s{i}", seed=i, rows={GSM8K: (0.25 + i / 4, 0.75)}, items={GSM8K: docs})
        for i, docs in enumerate(per_seed)
    ]
    out = make_report(tmp_path, *folders)
    base = [statistics.fmean(s[d][0] for s in per_seed) for d in range(4)]
    tuned = [statistics.fmean(s[d][1] for s in per_seed) for d in range(4)]
    expected = stats.compare(base, tuned)
    line = table_line(out, "gsm8k")
    assert f"{expected['diff']:+.3f} [{expected['ci_low']:+.3f}, {expected['ci_high']:+.3f}]" in line
    assert f"{expected['p_mcnemar']:.3g} (sign test on item means over 2 seeds, n=4), not significant at 0.05" in line
    seed_half = 12.706204736174707 * statistics.stdev([0.5, 0.25]) / 2**0.5  # per-seed differences 0.5 and 0.25
    assert f"; over seeds ± {seed_half:.3f} |" in line


def test_one_seed_shows_its_evaluations_own_test_and_says_when_it_is_significant(tmp_path):
    comparison = {"task": GSM8K[0], "metric": GSM8K[1], "filter": GSM8K[2], "n": 400, "diff": 0.09, "ci_low": 0.05,
                  "ci_high": 0.13, "p_mcnemar": 0.0004, "test": "McNemar", "significant": True}  # fmt: skip
    folder = write_run(tmp_path / "one", rows={GSM8K: (0.22, 0.31)}, comparisons=[comparison])
    line = table_line(make_report(tmp_path, folder), "gsm8k")
    assert "| 0.220 | 0.310 | +0.090 [+0.050, +0.130] | 0.0004 (McNemar, n=400) |" in line
    assert "not significant" not in line


def test_a_reproduced_run_sits_beside_the_published_one_with_the_differences(tmp_path):
    folder = write_run(tmp_path / "mine", run_name="claire-0.5b-v1", rows={GSM8K: (0.25, 0.35)},
                       overrides=["model=0.5b"])  # fmt: skip
    out = make_report(tmp_path, folder, REFERENCES / "claire-0.5b-v1")
    tables = (out / "tables.md").read_text()
    title = "claire-0.5b-v1 (qwen2.5-0.5b): 1 seed (1), beside the published run (its config differs at "
    assert title + "data.name, data.path, " in tables
    assert "| Published Base | Published Claire | Base − published | Claire − published |" in tables
    assert table_line(out, "gsm8k").endswith("| 0.22 | 0.31 | +0.030 | +0.040 |")
    assert "| claire-0.5b-v1 | qwen2.5-0.5b | 35M | 1,234 | 99,999 | 35,192,832 |" in (out / "report.md").read_text()
    row = next(r for r in csv_rows(out) if r["benchmark"] == "gsm8k")
    assert float(row["tuned_minus_published"]) == pytest.approx(0.04)


def test_alpha_decides_what_is_significant(tmp_path):
    comparison = {"task": GSM8K[0], "metric": GSM8K[1], "filter": GSM8K[2], "n": 400, "diff": 0.05, "ci_low": 0.01,
                  "ci_high": 0.09, "p_mcnemar": 0.03, "test": "McNemar", "significant": True}  # fmt: skip
    folder = write_run(tmp_path / "one", rows={GSM8K: (0.22, 0.27)}, comparisons=[comparison])
    assert "not significant" not in table_line(make_report(tmp_path, folder), "gsm8k")
    strict = make_report(tmp_path / "strict", folder, extra=("alpha=0.01",))
    assert table_line(strict, "gsm8k").endswith("| 0.03 (McNemar, n=400), not significant at 0.01 |")


def test_published_numbers_may_be_numbers_and_zero_is_a_number(tmp_path):
    reference = tmp_path / "ref"
    shutil.copytree(REFERENCES / "claire-0.5b-v1", reference)
    data = json.loads((reference / "reference.json").read_text())
    next(row for row in data["evaluation"] if row["benchmark"] == "gsm8k").update(base=0.0, tuned=0.31)
    (reference / "reference.json").write_text(json.dumps(data))
    assert (
        table_line(make_report(tmp_path, reference), "gsm8k") == "| gsm8k | exact_match (strict-match) | 0.0 | 0.31 |"
    )


def test_an_evaluation_typed_with_a_relative_run_path_is_found_from_anywhere(tmp_path, monkeypatch):
    folder = write_run(tmp_path / "experiments" / "x" / "r", evaluated=False)
    evaluation = tmp_path / "experiments" / "eval" / "e"
    evaluation.mkdir(parents=True)
    (evaluation / "config.yaml").write_text("run: experiments/x/r\n")  # as typed in tmp_path
    rows = [{"model": m, "task": "gsm8k", "metric": "exact_match", "filter": "strict-match", "value": v}
            for m, v in (("base", 0.5), ("tuned", 0.6))]  # fmt: skip
    datafiles.write_json(evaluation / "results.json", {"rows": rows, "comparisons": []})
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    (found,) = experiments.find_runs([str(tmp_path / "experiments")])
    assert found.folder == folder and found.evals == [evaluation.resolve()]


def test_experiments_sharing_a_run_name_keep_their_own_tables(tmp_path):
    a = write_run(tmp_path / "a", rows={GSM8K: (0.1, 0.2)})
    b = write_run(tmp_path / "b", rows={GSM8K: (0.1, 0.3)}, overrides=["schedule.learning_rate=1e-4"])
    out = make_report(tmp_path, a, b)
    sections = (out / "tables.md").read_text().split("### ")[1:]
    assert len(sections) == 2
    twin = next(s for s in sections if "differs at schedule.learning_rate)" in s)
    other = next(s for s in sections if s is not twin)
    assert "| 0.100 | 0.300 |" in twin and "| 0.100 | 0.200 |" in other
    assert sorted(r["tuned"] for r in csv_rows(out)) == ["0.2", "0.3"]
    assert len({r["group"] for r in csv_rows(out)}) == 2
    assert len(list(out.glob("bars-exp*.png"))) == 2


def test_a_report_never_writes_into_a_run_folder(tmp_path):
    folder = write_run(tmp_path / "r", rows={GSM8K: (0.1, 0.2)})
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    with pytest.raises(ClaireError, match="already holds config.yaml"):
        report.run(compose_report(f"runs=[{folder}]", f"output_dir={folder}"))
    done = subprocess.run([sys.executable, "-m", "claire.report", f"runs=[{folder}]", f"output_dir={folder}"],
                          capture_output=True, text=True, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 1 and "already holds config.yaml" in done.stderr
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file() and p.name != "report.log"} == before


def test_repeats_of_one_seed_count_once_and_pruned_trials_not_at_all(tmp_path):
    first = write_run(tmp_path / "a", seed=7, rows={GSM8K: (0.1, 0.2)})
    again = write_run(tmp_path / "b", seed=7, rows={GSM8K: (0.3, 0.4)})  # a reproduction: newer, same seed
    pruned = write_run(tmp_path / "c", seed=8, rows={GSM8K: (0.9, 0.9)}, metrics={"pruned": True})
    groups = experiments.group_runs(experiments.find_runs([str(first), str(again), str(pruned)]))
    (group,) = groups
    assert [r.folder for r in group.runs] == [again] and [r.folder for r in group.repeats] == [first]
    reproduced = write_run(tmp_path / "d", seed=7, evaluated=False)  # a reproduction not evaluated yet
    (group,) = experiments.group_runs(experiments.find_runs([str(first), str(again), str(reproduced)]))
    assert [r.folder for r in group.runs] == [again] and {r.folder for r in group.repeats} == {first, reproduced}
    page = (make_report(tmp_path, first, again, reproduced) / "report.md").read_text()
    assert page.count("a repeat of this seed, not counted") == 2


def test_an_evaluation_outside_the_run_folder_is_found_by_its_run(tmp_path):
    folder = write_run(tmp_path / "runs" / "r", rows={})
    elsewhere = tmp_path / "evals" / "e"
    elsewhere.mkdir(parents=True)
    (elsewhere / "config.yaml").write_text(f"run: {folder}\n")
    rows = [{"model": m, "task": "gsm8k", "metric": "exact_match", "filter": "strict-match", "value": v}
            for m, v in (("base", 0.5), ("tuned", 0.6))]  # fmt: skip
    datafiles.write_json(elsewhere / "results.json", {"rows": rows, "comparisons": []})
    line = table_line(make_report(tmp_path, tmp_path / "runs", tmp_path / "evals"), "gsm8k")
    assert "| 0.500 | 0.600 |" in line


def test_figures_are_drawn_and_linked_and_the_csv_has_every_row(tmp_path):
    folder = write_run(tmp_path / "r", rows={GSM8K: (0.2, 0.3), ("claire_gpqa_diamond", "acc", "none"): (0.3, 0.3)})
    out = make_report(tmp_path, folder)
    page = (out / "report.md").read_text()
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["bars-exp.png", "bars-gpqa_diamond-acc.png", "bars-gsm8k-exact_match-strict-match.png",
                    "loss-exp-seed1-r.png"]  # fmt: skip
    for name in pngs:
        assert f"({name})" in page and (out / name).read_bytes().startswith(b"\x89PNG")
    assert [(r["benchmark"], r["metric"], r["filter"]) for r in csv_rows(out)] == [
        ("gpqa_diamond", "acc", "none"), ("gsm8k", "exact_match", "strict-match")
    ]  # fmt: skip


def test_the_page_shows_the_13_gram_overlap_of_training_and_evaluation_data(tmp_path):
    from claire import decontamination

    train = decontamination.training_texts(compose_train().data)
    copied = " ".join(train[0].split()[:20])  # 20 words of a training row: contaminated
    questions = {0: copied, 1: "a question that appears nowhere in the causal sample data at all, not even in part"}
    docs = {0: (0.0, 1.0), 1: (0.0, 0.0)}
    folder = write_run(tmp_path / "r", rows={GSM8K: (0.0, 0.5)}, items={GSM8K: docs}, questions=questions)
    page = (make_report(tmp_path, folder) / "report.md").read_text()
    assert "| Training data | Task | Items | With a 13-gram overlap | Share |" in page
    assert f"| sample ({len(train):,} rows) | claire_gsm8k | 2 | 1 | 50.0% |" in page


def test_bad_input_fails_in_one_line_and_a_report_is_never_overwritten(tmp_path):
    with pytest.raises(ClaireError, match="does not exist"):
        make_report(tmp_path, tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ClaireError, match="no run folders"):
        make_report(tmp_path, tmp_path / "empty")
    out = make_report(tmp_path, REFERENCES)
    before = (out / "report.md").read_text()
    with pytest.raises(ClaireError, match=r"already holds \S+ and \d+ more; Claire writes only into a new or empty"):
        make_report(tmp_path, REFERENCES)
    assert (out / "report.md").read_text() == before
    done = subprocess.run([sys.executable, "-m", "claire.report", f"runs=[{tmp_path / 'missing'}]",
                           f"output_dir={tmp_path / 'x'}"], capture_output=True, text=True, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 1 and done.stderr.strip().splitlines() == [
        f"claire.report: error: runs: {tmp_path / 'missing'} does not exist; pass run folders, sweep folders or "
        "experiments/"
    ]


@pytest.fixture(scope="module")
def seeds(tiny_model_dir, tmp_path_factory):
    """`python -m claire.train -m seed=1,2` of the tiny model, then `python -m claire.evaluate -m run=<both>` (base vs
    fine-tuned through lm-eval, 2 causal items), as the README says to run seeds."""
    from conftest import tiny_overrides

    root = tmp_path_factory.mktemp("seeds")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "claire.train", "-m", "seed=1,2", "run_name=tiny-seeds"]
    command += [*tiny_overrides(tiny_model_dir, root / "unused"), f"hydra.sweep.dir={root}/multirun"]
    done = subprocess.run(command, cwd=root, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    folders = [root / "multirun" / "0", root / "multirun" / "1"]
    command = [sys.executable, "-m", "claire.evaluate", "-m", f"run={folders[0]},{folders[1]}", "tasks=[claire_causal]"]
    command += ["limit=2", "threads=1", "gen_kwargs.max_gen_toks=8", "backend.batch_size=2", "backend.dtype=float32"]
    done = subprocess.run(
        [*command, f"hydra.sweep.dir={root}/evals"], cwd=root, capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return root, folders


def test_tiny_model_runs_give_the_exact_expected_table(seeds, tmp_path):
    root, folders = seeds
    out = make_report(tmp_path, root, extra=("rows=[]", "all_metrics=true"))
    values: dict[tuple, dict[str, list[float]]] = {}
    for folder in folders:
        evaluations = [f for f in (root / "evals").glob("*") if f.is_dir()]
        (evaluation,) = [f for f in evaluations if (f / "config.yaml").read_text().count(f"run: {folder}\n")]
        for row in json.loads((evaluation / "results.json").read_text())["rows"]:
            key = (row["task"].removeprefix("claire_"), row["metric"], row["filter"])
            values.setdefault(key, {"base": [], "tuned": []})[row["model"]].append(row["value"])
    table = csv_rows(out)
    assert sorted((r["benchmark"], r["metric"], r["filter"]) for r in table) == sorted(values)
    for row in table:
        expected = values[(row["benchmark"], row["metric"], row["filter"])]
        for column in ("base", "tuned"):
            a, b = expected[column]
            half = 12.706204736174707 * abs(a - b) / 2  # t(0.975, 1 df) x sd / sqrt(2), sd = |a - b| / sqrt(2)
            assert float(row[column]) == pytest.approx((a + b) / 2) and float(row[f"{column}_ci"]) == pytest.approx(
                half
            )
            assert row[f"{column}_n"] == "2"
    shd = {k: values[("causal", "graph_shd", "none")][k] for k in ("base", "tuned")}
    cells = [f"{sum(v) / 2:.3f} ± {12.706204736174707 * abs(v[0] - v[1]) / 2:.3f}" for v in shd.values()]
    assert f"| causal | graph_shd | {cells[0]} | {cells[1]} |" in (out / "tables.md").read_text()
    assert "tiny-seeds (tiny): 2 seeds (1, 2)" in (out / "tables.md").read_text()
    page = (out / "report.md").read_text()
    assert "loss-tiny-seeds-seed1-0.png" in page and "loss-tiny-seeds-seed2-1.png" in page
    assert "| sample (200 rows) | claire_causal | 2 | 2 | 100.0% |" in page  # templated causal questions overlap


def test_a_setting_added_by_a_newer_claire_does_not_split_older_runs(tmp_path):
    old = write_run(tmp_path / "old", seed=1, rows={GSM8K: (0.2, 0.3)})
    new = write_run(tmp_path / "new", seed=2, rows={GSM8K: (0.2, 0.4)})
    config = OmegaConf.load(old / "config.yaml")
    del config["merge"], config.model["attn_implementation"]  # settings this run's Claire did not have yet
    (old / "config.yaml").write_text(OmegaConf.to_yaml(config))
    tables = (make_report(tmp_path, old, new) / "tables.md").read_text()
    assert tables.count("### ") == 1 and "2 seeds (1, 2)" in tables
    changed = write_run(tmp_path / "changed", seed=3, rows={GSM8K: (0.2, 0.4)}, overrides=["lora=r8"])
    assert (make_report(tmp_path / "again", old, new, changed) / "tables.md").read_text().count("### ") == 2
