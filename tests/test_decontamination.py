"""claire.decontamination: 13-gram overlap between a run's training data and its eval items."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from claire import ClaireError, decontamination

ROOT = Path(__file__).resolve().parents[1]
GSM8K = ROOT.parent / "shared" / "data" / "gsm8k" / "train.jsonl"
WORDS = [f"w{i}" for i in range(40)]
TRAIN = " ".join(WORDS)


def words(start: int, stop: int) -> str:
    """Words start..stop-1 of the training text."""
    return " ".join(WORDS[start:stop])


def test_copied_13_word_span_is_found_and_12_is_not():
    train = decontamination.training_ngrams([TRAIN])
    items = {
        "copied13": f"some other text {words(5, 18)} and more",
        "copied12": f"some other text {words(5, 17)} and more words",
        "unrelated": "entirely different words that never appear in the training text at all here",
    }
    result = decontamination.overlap(train, items)
    assert result == {"n": 13, "items": 3, "contaminated": 1, "share": 1 / 3, "short": 0, "examples": ["copied13"]}


def test_case_and_punctuation_do_not_hide_a_match():
    train = decontamination.training_ngrams([TRAIN])
    shouted = ", ".join(w.upper() for w in WORDS[20:33]) + "!?"
    assert decontamination.overlap(train, {"0": f"({shouted})"})["contaminated"] == 1
    assert decontamination.ngrams(f"({shouted})") <= train


def test_short_items_are_counted_and_match_only_a_copy():
    train = decontamination.training_ngrams([TRAIN, "How many apples?"])
    items = {"0": words(0, 12), "1": words(0, 13), "2": "too short", "3": "how many APPLES"}
    result = decontamination.overlap(train, items)
    assert (result["items"], result["short"], result["contaminated"], result["examples"]) == (4, 3, 2, ["1", "3"])
    assert result["share"] == pytest.approx(2 / 4)
    assert len(decontamination.ngrams(words(0, 12))) == 1 and decontamination.ngrams("") == set()


def test_share_and_examples_are_sorted_by_numeric_id():
    train = decontamination.training_ngrams([TRAIN])
    items = {"10": words(0, 13), "2": words(1, 14), "3": words(2, 15), "4": "nothing in common " * 5}
    result = decontamination.overlap(train, items, examples=2)
    assert (result["contaminated"], result["share"], result["examples"]) == (3, 0.75, ["2", "3"])


def test_no_items():
    train = decontamination.training_ngrams([TRAIN])
    assert decontamination.overlap(train, {}, n=8) == {
        "n": 8,
        "items": 0,
        "contaminated": 0,
        "share": 0.0,
        "short": 0,
        "examples": [],
    }


def test_ngrams_counts_and_hash_is_stable_across_processes():
    grams = decontamination.ngrams("A b, c d", n=2)
    assert len(grams) == 3 and all(0 <= g < 2**60 for g in grams)
    assert decontamination.ngrams("a a a a", n=2) == decontamination.ngrams("a a", n=2)  # a set: repeats count once
    code = "from claire import decontamination; print(sorted(decontamination.ngrams('A b, c d', n=2)))"
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert json.loads(other.stdout) == sorted(grams)


def gsm8k_rows() -> list[dict]:
    """The GSM8K train rows, or skip when the shared copy is absent."""
    if not GSM8K.is_file():
        pytest.skip(f"{GSM8K} is not there")
    return [json.loads(line) for line in GSM8K.open()]


def test_gsm8k_questions_in_and_out_of_the_training_rows():
    rows = gsm8k_rows()
    train = decontamination.training_ngrams(f"{r['question']}\n{r['answer']}" for r in rows[:1000])
    seen = decontamination.overlap(train, {str(i): rows[i]["question"] for i in range(200)})
    assert (seen["contaminated"], seen["share"], seen["short"]) == (200, 1.0, 0)
    unseen = decontamination.overlap(train, {str(i): rows[i]["question"] for i in range(5000, 5200)})
    # two genuine near-duplicates of training questions (rows 705 and 685)
    assert (unseen["contaminated"], unseen["examples"]) == (2, ["5168", "5180"])
    assert unseen["share"] < 0.05


TRAIN_ROWS = [
    {"question": "How many apples are left when Ann gives away two of her five red apples?", "response": TRAIN},
    {"question": "Does rain cause wet streets or do wet streets cause rain?", "response": "<think>rain</think> rain"},
    {"question": "Short one?", "response": "<think>x</think> yes"},
]
EVAL_ROW = {"question": "An eval split question", "response": " ".join(f"e{i}" for i in range(20))}


def sample_rows(docs: list[dict]) -> list[dict]:
    """lm-eval per-sample log rows: each doc once per filter, as save_results writes them."""
    rows = []
    for doc_id, doc in enumerate(docs):
        for filter_name in ("strict-match", "flexible-extract"):
            rows.append(
                {
                    "doc_id": doc_id,
                    "doc": doc,
                    "target": doc.get("answer", ""),
                    "arguments": {"gen_args_0": {"arg_0": "prompt", "arg_1": {}}},
                    "resps": [["3"]],
                    "filtered_resps": ["3"],
                    "filter": filter_name,
                    "metrics": ["exact_match"],
                    "doc_hash": "d",
                    "prompt_hash": "p",
                    "target_hash": "t",
                    "exact_match": 1.0,
                }
            )
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> None:
    """rows as one JSON object per line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


@pytest.fixture
def run_folder(tmp_path: Path) -> Path:
    """A training run folder: config.yaml with a local data file, and one evaluation with base and tuned logs."""
    data_file = tmp_path / "traces.jsonl"
    write_jsonl(data_file, [{"split": "train", **r} for r in TRAIN_ROWS] + [{"split": "eval", **EVAL_ROW}])
    data = OmegaConf.load(ROOT / "conf" / "data" / "sample.yaml")
    data.name, data.path = "fixture", str(data_file)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(OmegaConf.to_yaml({"data": data, "seed": 1}))
    docs = [
        {"question": f"Quoting the trace: {words(3, 16)}?", "answer": "#### 1"},  # a training 13-gram
        {"question": "A long question with thirteen or more words that the training data never saw.", "answer": "2"},
        {"question": "How many apples?", "answer": "3"},  # short
        {"question": " ".join(f"e{i}" for i in range(15)), "answer": "4"},  # only in the eval split
        {"problem": f"{words(0, 6)} then {words(6, 19)}", "answer": "5"},  # no "question": "problem" is read
        {"Question": "Which one?", "answer": words(0, 20)},  # the answer is not the item
    ]
    suite = run / "eval" / "report-2025-01-01_00-00-00"
    write_jsonl(suite / "base" / "samples_arith.jsonl", sample_rows(docs))
    write_jsonl(suite / "tuned" / "samples_arith.jsonl", sample_rows(docs[:1]))
    write_jsonl(suite / "tuned" / "samples_other.jsonl", sample_rows([{"input": words(10, 30)}]))
    return run


def test_eval_items_one_question_per_doc(run_folder: Path):
    items = decontamination.eval_items(
        run_folder / "eval" / "report-2025-01-01_00-00-00" / "base" / "samples_arith.jsonl"
    )
    assert list(items) == ["0", "1", "2", "3", "4", "5"]
    assert items["2"] == "How many apples?" and items["5"] == "Which one?"
    assert items["4"].startswith("w0 w1")


def test_eval_items_without_a_question_field_joins_the_string_fields(tmp_path: Path):
    path = tmp_path / "samples_t.jsonl"
    write_jsonl(path, [{"doc_id": 7, "doc": {"context": "Some context.", "label": 3, "ending": "An ending."}}])
    assert decontamination.eval_items(path) == {"7": "Some context.\nAn ending."}


def test_training_texts_are_the_train_split(run_folder: Path):
    data = OmegaConf.load(run_folder / "config.yaml").data
    texts = decontamination.training_texts(data)
    assert texts == [f"{r['question']}\n{r['response']}" for r in TRAIN_ROWS]


def test_training_texts_missing_path_names_it(tmp_path: Path):
    data = OmegaConf.load(ROOT / "conf" / "data" / "sample.yaml")
    data.path = str(tmp_path / "nowhere.jsonl")
    with pytest.raises(ClaireError, match="nowhere.jsonl"):
        decontamination.training_texts(data)


def test_for_run(run_folder: Path):
    results = decontamination.for_run(run_folder)
    assert list(results) == ["arith", "other"]
    assert results["arith"] == {
        "n": 13,
        "items": 6,
        "contaminated": 2,
        "share": 2 / 6,
        "short": 2,
        "examples": ["0", "4"],
        "train": "fixture",
        "train_rows": 3,
    }
    assert (results["other"]["items"], results["other"]["contaminated"]) == (1, 1)
    assert decontamination.for_run(run_folder, n=20)["arith"]["contaminated"] == 0


def test_for_run_without_samples_is_empty(run_folder: Path):
    for path in run_folder.glob("eval/*/*/samples_*.jsonl"):
        path.unlink()
    assert decontamination.for_run(run_folder) == {}


def test_cli_prints_the_table(run_folder: Path, capsys):
    assert decontamination.main([str(run_folder)]) == 0
    out = capsys.readouterr().out
    assert "Training data: fixture (3 rows)" in out
    assert "| Task | Items | With 13-gram overlap | Share |" in out
    assert "| arith | 6 | 2 | 33.3% |" in out and "| other | 1 | 1 | 100.0% |" in out


def test_cli_bad_folder_exits_2_with_one_line(tmp_path: Path):
    done = subprocess.run(
        [sys.executable, "-m", "claire.decontamination", str(tmp_path)], capture_output=True, text=True, cwd=ROOT
    )
    assert done.returncode == 2
    message = f"claire.decontamination: error: {tmp_path} is not a claire.train run folder (no config.yaml)"
    assert done.stderr.strip() == message
    assert done.stdout == ""
