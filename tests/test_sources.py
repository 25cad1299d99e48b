"""Benchmark sources: adapters on raw rows in the hub layouts, seeded order, decontamination and dedupe."""

import json
import re
from collections import Counter
from pathlib import Path

import datasets
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from claire import ClaireError
from claire.decontamination import ngrams
from claire.evaluation.tasks.gpqa.utils import shuffled
from claire.generate import run
from claire.teacher.sources import (
    CHOICE_LINE,
    SOURCES,
    Overlap,
    decontaminate,
    dedupe,
    last_boxed,
    load_references,
    load_source,
)

CONF = Path(__file__).resolve().parents[1] / "conf"
GSM8K = Path(__file__).parents[2] / "shared/data/gsm8k/train.jsonl"
QUESTION = (
    "Janet's ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes muffins for her "
    "friends every day with four. She sells the remainder at the farmers' market daily for $2 per fresh duck egg. "
    "How much in dollars does she make every day at the farmers' market?"
)


def spec(path, split="train", config_name=None, **extra):
    return OmegaConf.create({"path": str(path), "config_name": config_name, "split": split, **extra})


def write_jsonl(rows, path):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def gpqa_raw(i):
    return {
        "Record ID": f"rec{i:04d}",
        "Question": f"Which particle mediates interaction number {i}?",
        "Correct Answer": f" right {i} ",
        "Incorrect Answer 1": f"wrong a{i}",
        "Incorrect Answer 2": f"wrong b{i}",
        "Incorrect Answer 3": f"wrong c{i}\n",
    }


GSM8K_ROWS = [
    {"question": "A shop sells 1,234 pens a week. How many?", "answer": "It sells 1,234.\n#### 1,234"},
    {"question": "Tom has 3 apples and eats 5. What is left?", "answer": "3-5=-2\n#### -2"},
    {"question": "How much?", "answer": "no final answer line"},
]


def test_gsm8k_gold_drops_thousands_commas():
    rows = [SOURCES["gsm8k"](row) for row in GSM8K_ROWS]
    assert rows[0]["gold"] == "1234" and rows[1]["gold"] == "-2" and rows[2] is None
    assert rows[0]["kind"] == "number" and rows[0]["choices"] is None and rows[0]["source"] == "gsm8k"
    assert re.fullmatch(r"gsm8k-[0-9a-f]{12}", rows[0]["id"])
    assert SOURCES["gsm8k"](GSM8K_ROWS[0])["id"] == rows[0]["id"]  # the id depends on the question text only


def test_numina_gold_is_the_last_boxed_with_nested_braces():
    solution = r"First $\boxed{3}$ then the answer is $\boxed {\frac{1}{2}}$."
    row = SOURCES["numina-math"]({"problem": " Find x. ", "solution": solution, "source": "olympiads"})
    assert row["gold"] == r"\frac{1}{2}" and row["question"] == "Find x." and row["kind"] == "math"
    assert last_boxed(r"\boxed{\sqrt{\frac{a}{b}}} and \boxed{x^{2}}") == "x^{2}"
    assert SOURCES["numina-math"]({"problem": "P", "solution": "no box here"}) is None
    assert last_boxed(r"\boxed{unclosed {") is None


def test_gpqa_letter_points_at_the_correct_answer_and_the_shuffle_is_stable():
    rows = [SOURCES["gpqa"](gpqa_raw(i), seed=0) for i in range(20)]
    for i, row in enumerate(rows):
        assert row["choices"][ord(row["gold"]) - ord("A")] == f"right {i}"  # stripped
        assert sorted(row["choices"]) == sorted([f"right {i}", f"wrong a{i}", f"wrong b{i}", f"wrong c{i}"])
        assert row["question"].endswith(CHOICE_LINE) and f"(A) {row['choices'][0]}\n(B)" in row["question"]
        assert row["id"] == f"gpqa-rec{i:04d}" and row["kind"] == "choice"
    assert [SOURCES["gpqa"](gpqa_raw(i), seed=0) for i in range(20)] == rows  # stable across calls
    assert len({row["gold"] for row in rows}) > 1  # the shuffle differs between questions
    assert [SOURCES["gpqa"](gpqa_raw(i), seed=1) for i in range(20)] == rows  # one order everywhere: not by seed
    for i, row in enumerate(rows):  # the evaluation task shows the same question's options in the same order
        assert shuffled({**gpqa_raw(i), "Question": gpqa_raw(i)["Question"].strip()})["choices"] == row["choices"]


def olympic_raw(i, **kw):
    row = {
        "id": f"Math_{i}",
        "problem": f"Compute the value of problem {i}.",
        "answer": [f"{i}", "$\\frac{1}{2}$"],
        "answer_type": "MPV",
        "language": "EN",
        "figure_urls": None,
        "subject": "Math",
        "unit": [None, None],
    }
    return row | kw


def test_olympic_arena_keeps_english_text_only_problems_with_answers():
    adapt = SOURCES["olympic-arena"]
    row = adapt(olympic_raw(1))
    assert row["gold"] == "1, $\\frac{1}{2}$" and row["id"] == "olympic-arena-Math_1" and row["kind"] == "math"
    assert adapt(olympic_raw(2, language="ZH")) is None
    assert adapt(olympic_raw(3, figure_urls=["https://example.org/fig.png"])) is None
    assert adapt(olympic_raw(4, figure_urls=[])) is not None
    assert adapt(olympic_raw(5, answer_type="CODE", answer=None)) is None
    assert adapt(olympic_raw(6, answer=[])) is None


def test_aime_filters_years_and_reads_integer_answers():
    raw = [
        {"ID": "1983-1", "Year": 1983, "Problem Number": 1, "Question": "Find w.", "Answer": "060", "Part": None},
        {"ID": "2021-I-3", "Year": 2021, "Problem Number": 3, "Question": "Find n.", "Answer": "5", "Part": "I"},
        {"ID": "2024-II-1", "Year": 2024, "Problem Number": 1, "Question": "Find m.", "Answer": "7", "Part": "II"},
    ]
    rows = [SOURCES["aime"](row, years=[1983, 2021]) for row in raw]
    assert rows[0]["gold"] == "60" and rows[0]["id"] == "aime-1983-1" and rows[1]["gold"] == "5" and rows[2] is None
    assert SOURCES["aime"](raw[2])["gold"] == "7"  # no years: every year


def test_load_source_from_jsonl_parquet_and_a_saved_folder(tmp_path):
    rows = [
        {"question": f"Sam has {i} cats and buys 2 more. How many cats?", "answer": f"#### {i + 2}"} for i in range(30)
    ]
    jsonl = write_jsonl(rows, tmp_path / "gsm8k.jsonl")
    parquet = tmp_path / "gsm8k.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(parquet))
    folder = tmp_path / "gsm8k-folder"
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(rows[:20]), "test": datasets.Dataset.from_list(rows[20:])}
    ).save_to_disk(folder)
    from_jsonl = load_source("gsm8k", spec(jsonl, config_name="main"), seed=0)
    assert from_jsonl == load_source("gsm8k", spec(parquet), seed=0)
    assert len(from_jsonl) == 30 and {row["gold"] for row in from_jsonl} == {str(i + 2) for i in range(30)}
    assert len(load_source("gsm8k", spec(folder), seed=0)) == 20
    with pytest.raises(ClaireError, match=r"has no split 'val'; it has \['test', 'train'\]"):
        load_source("gsm8k", spec(folder, split="val"), seed=0)


def test_order_is_seeded_and_independent_of_file_order(tmp_path):
    rows = [{"question": f"What is {i} plus {i}?", "answer": f"#### {2 * i}"} for i in range(40)]
    forward = load_source("gsm8k", spec(write_jsonl(rows, tmp_path / "a.jsonl")), seed=0)
    backward = load_source("gsm8k", spec(write_jsonl(rows[::-1], tmp_path / "b.jsonl")), seed=0)
    assert [r["id"] for r in forward] == [r["id"] for r in backward]
    assert [r["id"] for r in load_source("gsm8k", spec(tmp_path / "a.jsonl"), seed=1)] != [r["id"] for r in forward]


def test_aime_years_come_from_the_spec(tmp_path):
    raw = [
        {"ID": f"{y}-1", "Year": y, "Problem Number": 1, "Question": f"Q{y}", "Answer": "1"} for y in range(1980, 2025)
    ]
    path = write_jsonl(raw, tmp_path / "aime.jsonl")
    years = sorted(int(row["id"].split("-")[1]) for row in load_source("aime", spec(path, years=[1983, 2021]), seed=0))
    assert years == list(range(1983, 2022))
    with pytest.raises(ClaireError, match=r"years=\[1983\] must be \[first, last\]"):
        load_source("aime", spec(path, years=[1983]), seed=0)


def test_olympic_arena_concatenates_subject_configs_from_a_local_file(tmp_path):
    path = tmp_path / "olympic.parquet"
    datasets.Dataset.from_list([olympic_raw(i, figure_urls=[]) for i in range(5)]).to_parquet(str(path))
    rows = load_source("olympic-arena", spec(path, split="val", config_name=["Math", "Physics"]), seed=0)
    assert len(rows) == 5  # a local file is loaded once, whatever the configs


def test_source_errors_are_one_line(tmp_path):
    with pytest.raises(ClaireError, match=r"source 'web' is not known; choose one of \['aime', 'causal'"):
        load_source("web", spec(tmp_path), seed=0)
    path = write_jsonl([{"problem": "x", "answer": "y"}], tmp_path / "wrong.jsonl")
    with pytest.raises(ClaireError, match=r"has no field 'question'; its columns are \['problem', 'answer'\]"):
        load_source("gsm8k", spec(path), seed=0)
    with pytest.raises(ClaireError, match="split=test is an evaluation split"):
        load_source("gsm8k", spec(path, split="test"), seed=0)


def test_gated_gpqa_says_how_to_get_access(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no local folder of that name; the conftest keeps the hub offline
    with pytest.raises(ClaireError) as error:
        load_source("gpqa", spec("Idavidrein/gpqa", config_name="gpqa_extended"), seed=0)
    message = str(error.value)
    assert "accept its terms" in message and "HF_TOKEN" in message and "\n" not in message


@pytest.mark.skipif(not GSM8K.exists(), reason=f"{GSM8K} is absent")
def test_the_real_gsm8k_train_split():
    rows = load_source("gsm8k", spec(GSM8K, config_name="main"), seed=0)
    assert len(rows) == 7473 and len({row["id"] for row in rows}) >= 7470
    assert all(re.fullmatch(r"-?\d+(\.\d+)?", row["gold"]) for row in rows)


def test_load_references_reads_fields_and_skips_null_specs(tmp_path):
    path = write_jsonl([{"Question": "Q one?"}, {"Question": "Q two?"}], tmp_path / "gpqa.jsonl")
    specs = OmegaConf.create(
        {
            "gpqa_diamond": {"path": str(path), "config_name": "gpqa_diamond", "split": "train", "field": "Question"},
            "off": None,
        }
    )
    assert load_references(specs) == {"gpqa_diamond": ["Q one?", "Q two?"]}
    specs.gpqa_diamond.field = "question"
    with pytest.raises(ClaireError, match=r"has no column 'question'; columns are \['Question'\]"):
        load_references(specs)


def test_ngrams_of_short_and_long_texts():
    assert ngrams("What is 2+2?", 13) == ngrams("what is 2 2", 13) and len(ngrams("What is 2+2?", 13)) == 1
    assert len(ngrams(" ".join(f"w{i}" for i in range(20)), 13)) == 8 and ngrams("", 13) == set()


def test_overlap_finds_shared_13_grams_and_ignores_boilerplate():
    template = "Think step by step and write your final answer on the last line after the words The answer is."
    references = {"gsm8k_test": [QUESTION] + [f"{template} Question {i}: how many {i} cows?" for i in range(12)]}
    overlap = Overlap(references)
    changed = QUESTION.replace("farmers' market?", "local market on Sundays?")
    assert overlap.hits(changed) == ["gsm8k_test"]
    assert overlap.hits("A train leaves the station at 3pm travelling at 60 miles per hour toward a city.") == []
    assert overlap.hits(f"{template} How many sheep does Jo have if she buys 3 more?") == []  # 12 > max_docs docs
    assert Overlap(references, max_docs=20).hits(f"{template} How many sheep?") == ["gsm8k_test"]
    assert overlap.hits("How many 3 cows?") == [] and Overlap({"r": ["How many cows?"]}).hits("how  many COWS") == ["r"]


def test_decontaminate_counts_per_source_and_reference():
    overlap = Overlap({"gsm8k_test": [QUESTION], "other": [QUESTION, "Completely different short one"]})
    rows = [
        {"id": "gsm8k-1", "source": "gsm8k", "question": QUESTION.upper()},
        {"id": "aime-1", "source": "aime", "question": "completely different short ONE"},
        {"id": "aime-2", "source": "aime", "question": "An unrelated problem about primes."},
    ]
    kept, removed = decontaminate(rows, overlap)
    assert [row["id"] for row in kept] == ["aime-2"]
    assert removed == Counter({"gsm8k:gsm8k_test": 1, "gsm8k:other": 1, "aime:other": 1})


def test_dedupe_keeps_the_first_of_repeated_questions():
    rows = [
        {"source": "s", "id": "a", "question": "How many  cats?"},
        {"source": "s", "id": "b", "question": "how many\ncats? "},
        {"source": "s", "id": "c", "question": "Dogs?"},
        {"source": "s", "id": "c", "question": "Birds?"},  # another question under an id already taken
        {"source": "t", "id": "c", "question": "Fish?"},
    ]
    kept, dropped = dedupe(rows)
    assert [row["question"] for row in kept] == ["How many  cats?", "Dogs?", "Fish?"] and dropped == 2


@pytest.fixture(scope="module")
def causal_suite(tmp_path_factory):
    out = tmp_path_factory.mktemp("sources") / "causal"
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        run(compose("generate", overrides=["source=causal", "n=600", f"out={out}"]))
    return out


def test_causal_suite_against_its_own_test_split(causal_suite):
    rows = load_source("causal", spec(causal_suite), seed=0)
    train = datasets.load_from_disk(str(causal_suite))["train"]
    assert len(rows) == len(train) and {row["id"] for row in rows} == set(train["id"])
    assert all(row["kind"] == "causal" and row["id"].startswith("causal-") for row in rows)
    references = load_references(
        OmegaConf.create(
            {"causal_test": {"path": str(causal_suite), "config_name": None, "split": "test", "field": "question"}}
        )
    )
    test_questions = {" ".join(q.lower().split()) for q in references["causal_test"]}
    kept, removed = decontaminate(rows, Overlap(references))
    exact = sum(" ".join(row["question"].lower().split()) in test_questions for row in rows)
    hit = removed["causal:causal_test"]
    print(f"\ncausal n=600: {hit} of {len(rows)} train questions hit the test split; {exact} are exact duplicates")
    assert 0 < len(kept) < len(rows)  # boilerplate ignored: not every question hits
    assert exact == 0  # the suite splits by question text: no question sits in both train and test
    # 13-gram hits are different questions sharing template text; matched exactly, the suite has no overlap ...
    _, removed = decontaminate(rows, Overlap(references, exact=["causal_test"]))
    assert removed["causal:causal_test"] == 0
    # ... and a train question copied into the test split is caught (with its repeats in train)
    leaked = {"causal_test": [*references["causal_test"], rows[0]["question"]]}
    copies = sum(" ".join(r["question"].lower().split()) == " ".join(rows[0]["question"].lower().split()) for r in rows)
    _, removed = decontaminate(rows, Overlap(leaked, exact=["causal_test"]))
    assert removed["causal:causal_test"] == copies >= 1


def test_exact_references_match_whole_questions_only():
    overlap = Overlap({"suite": [QUESTION], "gsm8k_test": ["How many cows?"]}, exact=["suite"])
    assert overlap.hits(f"  {QUESTION.lower()} ") == ["suite"]
    assert overlap.hits(QUESTION.replace("farmers' market?", "local market on Sundays?")) == []
    assert overlap.hits("how many cows") == ["gsm8k_test"]
