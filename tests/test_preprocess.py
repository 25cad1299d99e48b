"""Preprocessing: the report's tag conversion, malformed rows, and every way data.path can point."""

import json
from collections import Counter

import datasets
import pytest
from omegaconf import OmegaConf

from claire import ClaireError
from claire.datafiles import load_raw
from claire.traces import MalformedTrace, convert_trace, split_trace
from claire.training.preprocess import check_drops, drop_too_long, prepare_split, to_conversation

TRACE = "<think>Rain wets the grass.\n<causality>\nRain -> Wet\n</causality>\nSo wet.\n</think>\nThe answer is yes."


def data_cfg(path, **kw):
    base = {
        "name": "t",
        "path": str(path),
        "config_name": None,
        "train_split": "train",
        "eval_split": "eval",
        "split_column": "split",
        "question_field": "question",
        "response_field": "response",
        "system_prompt": None,
        "expected_rows": None,
        "max_drop_fraction": 0.1,
        "max_train_rows": None,
        "max_eval_rows": None,
    }
    return OmegaConf.create({**base, **kw})


def test_native_conversion_is_the_reports():
    assert convert_trace(TRACE) == (
        "<|im_start|>think\nRain wets the grass.\n<|im_start|>causality\nRain -> Wet\nSo wet.\n"
        "<|im_start|>answer\nThe answer is yes."
    )


def test_native_conversion_without_text_between_tags():
    raw = "<think><causality>A -> B</causality></think>B"
    assert convert_trace(raw) == "<|im_start|>think\n<|im_start|>causality\nA -> B\n<|im_start|>answer\nB"


def test_special_conversion_keeps_tags():
    assert convert_trace(TRACE, "special") == (
        "<think>\nRain wets the grass.\n<causality>\nRain -> Wet\n</causality>\nSo wet.\n</think>\nThe answer is yes."
    )


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "empty"),
        ("   \n", "empty"),
        ("<think>x<causality>y</causality>z</think>", "no_answer"),
        ("<think>x<causality>y</causality>z</think>  \n ", "no_answer"),
        ("<think>x<causality>y</causality>z answer", "unbalanced_tags"),
        ("<think>x<causality>y</think>z</causality> answer", "misnested_tags"),
        ("<causality>y</causality><think>x</think> answer", "misnested_tags"),
        ("<think>a</think><think>b<causality>c</causality></think> answer", "unbalanced_tags"),
        ("just an answer", "missing_tags"),
        ("<think>x<causality>  </causality></think> answer", "empty_causality"),
        ("preamble <think>x<causality>y</causality></think> answer", "misnested_tags"),
    ],
)
def test_malformed_traces_are_named(raw, reason):
    with pytest.raises(MalformedTrace, match=f"^{reason}$"):
        split_trace(raw)


def test_conversation_puts_the_trace_in_the_completion():
    row = to_conversation("Q?", "C", system_prompt="S")
    assert row == {
        "prompt": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q?"}],
        "completion": [{"role": "assistant", "content": "C"}],
    }


def test_prepare_split_counts_drops_per_reason():
    rows = datasets.Dataset.from_list(
        [
            {"question": "Q1", "response": TRACE},
            {"question": "Q2", "response": "no tags"},
            {"question": "Q3", "response": ""},
            {"question": "", "response": TRACE},
            {"question": "Q5", "response": TRACE.replace("</causality>", "")},
        ]
    )
    kept, dropped = prepare_split(rows, data_cfg("x"), "native")
    assert len(kept) == 1
    assert kept[0]["prompt"][0]["content"] == "Q1"
    assert dropped == Counter({"missing_tags": 1, "empty": 2, "unbalanced_tags": 1})
    with pytest.raises(ClaireError, match="4 of 5 train rows were dropped .*data.max_drop_fraction=0.1"):
        check_drops("train", 5, dropped, 0.1)
    check_drops("train", 5, dropped, 0.9)


def test_over_long_rows_are_dropped(embedded_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir)
    short = to_conversation("Q", convert_trace(TRACE))
    long = to_conversation("Q", convert_trace(TRACE.replace("So wet.", "word " * 400)))
    split = datasets.Dataset.from_list([short, long])
    dropped = Counter()
    kept, longest_prompt = drop_too_long(split, tokenizer, 256, dropped)
    assert len(kept) == 1 and dropped["too_long"] == 1
    assert 5 < longest_prompt < 64  # system turn + user turn + generation prompt


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


ROWS = [{"question": f"Q{i}", "response": TRACE, "split": "eval" if i % 4 == 0 else "train"} for i in range(12)]


def test_load_single_jsonl_with_split_column(tmp_path):
    write_jsonl(tmp_path / "d.jsonl", ROWS)
    loaded = load_raw(data_cfg(tmp_path / "d.jsonl"))
    assert (len(loaded["train"]), len(loaded["eval"])) == (9, 3)


def test_row_limits_take_the_first_rows(tmp_path):
    write_jsonl(tmp_path / "d.jsonl", ROWS)
    loaded = load_raw(data_cfg(tmp_path / "d.jsonl", max_train_rows=4, max_eval_rows=50))
    assert loaded["train"]["question"] == ["Q1", "Q2", "Q3", "Q5"] and len(loaded["eval"]) == 3


def test_load_folder_of_split_files_like_a_hub_repo(tmp_path):
    folder = tmp_path / "repo"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", [r for r in ROWS if r["split"] == "train"])
    write_jsonl(folder / "test.jsonl", [r for r in ROWS if r["split"] == "eval"])
    loaded = load_raw(data_cfg(folder, eval_split="test"))  # datasets.load_dataset(path): as for a hub id
    assert (len(loaded["train"]), len(loaded["eval"])) == (9, 3)


def test_load_saved_datasetdict(tmp_path):
    dd = datasets.DatasetDict(
        train=datasets.Dataset.from_list(ROWS[:8]), validation=datasets.Dataset.from_list(ROWS[8:])
    )
    dd.save_to_disk(tmp_path / "saved")
    loaded = load_raw(data_cfg(tmp_path / "saved", eval_split="validation"))
    assert (len(loaded["train"]), len(loaded["eval"])) == (8, 4)


def test_load_packaged_sample():
    loaded = load_raw(data_cfg("claire:causal_sample"))
    assert len(loaded["train"]) >= 160 and len(loaded["eval"]) >= 20


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"path": "data/claire-v9"}, "data.path=data/claire-v9 is no local file or folder, and could not be"),
        ({"path": "nothing-here"}, "data.path=nothing-here does not exist; make it with"),
        ({"eval_split": "test"}, r"no rows for split\(s\) \['test'\]"),
        ({"response_field": "trace"}, "has no column 'trace'"),
    ],
)
def test_bad_data_config_is_one_line(tmp_path, kw, message):
    write_jsonl(tmp_path / "d.jsonl", ROWS)
    cfg = data_cfg(tmp_path / "d.jsonl", **{k: v for k, v in kw.items() if k != "path"})
    if "path" in kw:
        cfg.path = kw["path"]
    with pytest.raises(ClaireError, match=message) as error:
        load_raw(cfg)
    assert "\n" not in str(error.value)


def test_gsm8k_rows_without_traces_are_all_dropped(tmp_path):
    from conftest import GSM8K

    if not GSM8K.exists():
        pytest.skip("../shared/data/gsm8k/train.jsonl is absent")
    cfg = data_cfg(GSM8K, response_field="answer", split_column=None, eval_split="train")
    rows = load_raw(cfg)["train"].select(range(50))
    kept, dropped = prepare_split(rows, cfg, "native")
    assert len(kept) == 0 and dropped == Counter({"missing_tags": 50})
