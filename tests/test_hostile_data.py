"""Bad data files and bad values: one line naming what is wrong and what would be right, before any model loads.

Each case here was a traceback (or a failure after training) before issue 16.
"""

import json
import subprocess
import sys

import pytest
from conftest import ROOT, compose_evaluate, compose_train
from omegaconf import OmegaConf

from claire import ClaireError, datafiles
from claire.training import checks

TRACE = "<think>\nRain.\n<causality>\nrain -> wet\n</causality>\n</think>\nRain."
ROW = {"question": "Why is the grass wet?", "response": TRACE}


def jsonl(path, lines: list) -> str:
    """A JSONL file of the given lines (dicts are dumped, bytes and strings written as they are)."""
    data = b""
    for line in lines:
        if isinstance(line, dict):
            line = json.dumps(line)
        data += (line if isinstance(line, bytes) else line.encode()) + b"\n"
    path.write_bytes(data)
    return str(path)


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([], r"data.path=\S+ is empty; give a JSONL file, one JSON object a line"),
        ([b"\xff\xfe\x00garbage", b"\x80\x81"], r"has no readable row \(line 1: not UTF-8 text\)"),
        (['{"question": "cut sho'], r"has no readable row \(line 1: not JSON \(Unterminated string"),
        (["[1, 2]"], r"has no readable row \(line 1: a JSON list, not an object\)"),
        ([{"question": "q", "answer": "a"}], r"has no field 'response'; its fields are \['answer', 'question'\]"),
        ([ROW] * 3 + ["{torn"] * 2, r"2 of 5 lines cannot be read \(line 4: not JSON .*max_drop_fraction=0.1"),
    ],
)
def test_a_bad_training_file_is_one_line_before_anything_loads(tmp_path, lines, message):
    cfg = compose_train(f"data.path={jsonl(tmp_path / 'data.jsonl', lines)}", f"output_dir={tmp_path / 'run'}")
    with pytest.raises(ClaireError, match=message):
        checks.check(cfg, str(tmp_path / "run" / "checkpoints"))


def test_a_few_bad_lines_among_good_ones_are_dropped_and_counted(tmp_path):
    number = {"question": "How many?", "response": 7}
    lines = [ROW] * 20 + ['{"question": "torn', b"\xff\xfe bad bytes", number, "[]"]
    cfg = compose_train(f"data.path={jsonl(tmp_path / 'data.jsonl', lines)}", "data.max_drop_fraction=0.2")
    checks.check(cfg, str(tmp_path / "checkpoints"))  # 4 of 24 lines: within the fraction
    loaded = datafiles.load_any(cfg.data.path, None)
    assert len(loaded["train"]) == 20
    assert [reason.split(":")[0] for reason in loaded.unreadable] == ["line 21", "line 22", "line 23", "line 24"]
    assert loaded.unreadable[2] == "line 23: 'response' is a number, elsewhere text"


def test_a_response_that_is_not_text_is_a_malformed_row(tmp_path):
    from claire.training import preprocess

    cfg = compose_train(f"data.path={jsonl(tmp_path / 'data.jsonl', [ROW])}")
    rows = [ROW, {"question": "q", "response": 3}, {"question": ["a", "list"], "response": ROW["response"]}]
    import datasets

    kept = [preprocess.prepare_split(datasets.Dataset.from_list([row]), cfg.data, "native") for row in rows]
    assert [len(split) for split, _ in kept] == [1, 0, 0]
    assert [dict(dropped) for _, dropped in kept[1:]] == [{"response_not_text": 1}, {"question_not_text": 1}]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("objective=eval_bogus", r"^objective=eval_bogus is not a metric of metrics.json; choose one of \['eval_loss'"),
        ("seed=abc", r"^seed='abc' must be a whole number >= 0$"),
        ("threads=-1", r"^threads=-1 must be a whole number above 0, or null for all cores$"),
        ("data.max_drop_fraction=abc", r"^data.max_drop_fraction='abc' must be a number in \[0, 1\]$"),
        (
            "model.attn_implementation=fast",
            r"^model.attn_implementation='fast' is not allowed; choose one of \['eager'",
        ),
    ],
)
def test_bad_values_are_caught_before_training(tmp_path, override, message):
    with pytest.raises(ClaireError, match=message):
        checks.check(compose_train(override), str(tmp_path))


def test_the_command_line_says_it_in_one_line(tmp_path):
    path = jsonl(tmp_path / "data.jsonl", [])
    done = subprocess.run(
        [sys.executable, "-m", "claire.train", f"data.path={path}", f"output_dir={tmp_path / 'run'}"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1 and done.stderr.strip() == (
        f"claire.train: error: data.path={path} is empty; give a JSONL file, one JSON object a line"
    )
    assert "torch" not in done.stdout  # nothing heavy ran


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("limit=-1", r"^limit=-1 must be a whole number above 0 \(items per task\), a share in \(0, 1\) or null$"),
        ("limit=abc", r"^limit='abc' must be a whole number above 0"),
    ],
)
def test_a_bad_evaluation_limit_is_one_line_before_any_model_loads(tmp_path, override, message):
    from claire.evaluation import harness

    with pytest.raises(ClaireError, match=message):
        harness.check(compose_evaluate(override, "tasks=[claire_causal]", f"output_dir={tmp_path}"))


def test_the_documented_generation_override_works(tmp_path):
    from claire.evaluation import harness

    cfg = compose_evaluate("gen_kwargs.max_gen_toks=256", "+gen_kwargs.top_p=0.9", f"output_dir={tmp_path}")
    assert harness.generation_overrides(cfg) == {"max_gen_toks": 256, "top_p": 0.9}
    assert harness.generation_overrides(compose_evaluate(f"output_dir={tmp_path}")) == {}


def test_bad_rows_in_a_teacher_source_file_are_dropped_and_counted(tmp_path, caplog):
    from claire.teacher import sources

    good = [{"question": f"What is {i} + 1?", "answer": f"{i} + 1 = {i + 1}\n#### {i + 1}"} for i in range(5)]
    odd = {"question": ["a", "list"], "answer": "#### 3"}
    path = jsonl(tmp_path / "gsm8k.jsonl", [*good, "{torn", odd, {"question": 12, "answer": "#### 1"}])
    spec = OmegaConf.create({"path": path, "split": "train"})
    rows = sources.load_source("gsm8k", spec, seed=0)
    assert sorted(row["gold"] for row in rows) == ["1", "2", "3", "4", "5"]
    assert "gsm8k.jsonl: 3 lines dropped (line 6: not JSON" in caplog.text
    with pytest.raises(ClaireError, match=r"^sources.gsm8k.path=\S+ is empty; give a JSONL file"):
        sources.load_source(
            "gsm8k", OmegaConf.create({"path": jsonl(tmp_path / "empty.jsonl", []), "split": "train"}), 0
        )


def test_a_run_counts_the_lines_it_could_not_read_in_its_data_report(tiny_model_dir, tmp_path):
    from conftest import tiny_overrides

    from claire.train import run

    sample = (datafiles.PACKAGE_DATA / "causal_sample.jsonl").read_bytes()
    path = tmp_path / "data.jsonl"
    path.write_bytes(sample + b'{"id": "torn", "split": "train", "question": "cut sh')  # a write cut short
    run(compose_train(*tiny_overrides(tiny_model_dir, tmp_path / "run", f"data.path={path}")))
    report = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert report["dropped"]["train"]["unreadable_line"] == 1
    assert report["raw"]["train"] == sum(b'"split": "train"' in line for line in sample.splitlines()) + 1
