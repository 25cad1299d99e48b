"""claire.evaluate counts looping outputs (a line or n-gram repeated to the token limit) among its format failures."""

import json
from pathlib import Path

import pytest
from conftest import compose_evaluate

from claire import datafiles
from claire.evaluation import harness, scoring

pytest.importorskip("lm_eval")

LOOP = "Let me see.\n" + "I will think it.\n" * 40  # the loop: no answer marker
LOOP_CUT = "think\nA -> B\ncausality\nA -> B\nanswer\nyes\n" + "I will think it. " * 30 + "I will th"  # answered
CLEAN = "think\nA causes B.\ncausality\nA -> B\nanswer\nyes"
ANSWERLESS = "It depends on many things, honestly."
GSM_LOOP = "The answer is 12. " * 20

# Per model and task, each document's raw output and (gsm only) what Claire's reader read from it.
CAUSAL = {"base": [LOOP, CLEAN, ANSWERLESS, LOOP_CUT], "tuned": [CLEAN, CLEAN, LOOP_CUT, CLEAN]}
GSM = {"base": [("#### 12", "12"), (GSM_LOOP, "12"), ("no idea", "[invalid]")]} | {
    "tuned": [(GSM_LOOP + "The answ", "[invalid]"), ("answer\n12", "12"), ("answer\n12", "12")]
}


def causal_rows(outputs: list[str]) -> list[dict]:
    """claire_causal-like samples: one filter (none), the task scoring answers itself."""
    return [
        {"doc_id": i, "filter": "none", "resps": [[text]], "filtered_resps": [text], "metrics": ["acc"]}
        | {"acc": float(text == CLEAN), "prompt_hash": f"c{i}", "target": "yes", "doc": {"question": "q"}}
        for i, text in enumerate(outputs)
    ]


def gsm_rows(outputs: list[tuple[str, str]]) -> list[dict]:
    """gsm8k-like samples: strict-match and Claire's reader, one row per filter and document."""
    return [
        {"doc_id": i, "filter": f, "resps": [[text]], "filtered_resps": [read if f == "claire" else text]}
        | {"metrics": ["exact_match"], "exact_match": float(read == "12"), "prompt_hash": f"g{i}", "target": "12"}
        for f in ("strict-match", "claire")
        for i, (text, read) in enumerate(outputs)
    ]


def choice_rows() -> list[dict]:
    """A log-likelihood task (GPQA multiple choice): its responses are scores, not text, and never counted."""
    resps = [[[-1.5, False]], [[-0.2, True]]]
    return [
        {"doc_id": i, "filter": "none", "resps": resps, "filtered_resps": [-1.5, -0.2], "metrics": ["acc"]}
        | {"acc": 1.0, "prompt_hash": f"m{i}", "target": 1}
        for i in range(2)
    ]


def write_model(folder: Path, label: str) -> None:
    """One model's folder as claire.evaluate saves it: lm-eval's results.json and samples_<task>.jsonl."""
    generate = {"output_type": "generate_until", "generation_kwargs": {"max_gen_toks": 64}}
    results = {
        "results": {
            "causal": {"acc,none": 0.5, "acc_stderr,none": 0.25},
            "gsm": {"exact_match,strict-match": 0.3, "exact_match,claire": 0.6},
            "mc": {"acc,none": 1.0},
        },
        "configs": {"causal": generate, "gsm": generate, "mc": {"output_type": "multiple_choice"}},
        "n-shot": {"causal": 0, "gsm": 0, "mc": 0},
        "n-samples": {task: {"effective": n} for task, n in (("causal", 4), ("gsm", 3), ("mc", 2))},
        "higher_is_better": {"causal": {"acc": True}, "gsm": {"exact_match": True}, "mc": {"acc": True}},
    }
    samples = {"causal": causal_rows(CAUSAL[label]), "gsm": gsm_rows(GSM[label]), "mc": choice_rows()}
    harness.save_results(results | {"samples": samples}, folder / label)


@pytest.fixture
def evaluation(tmp_path: Path) -> tuple[Path, dict]:
    """A fake evaluation folder of two models, read back and scored as claire.evaluate does."""
    for label in ("base", "tuned"):
        write_model(tmp_path, label)
    evaluated = {label: harness.load_results(tmp_path / label) for label in ("base", "tuned")}
    return tmp_path, scoring.score(compose_evaluate(), evaluated, tmp_path)


def failures_of(report: dict) -> dict[tuple[str, str], dict]:
    return {(f["model"], f["task"]): f for f in report["format_failures"]}


COUNTS = ("n", "no_marker", "no_answer", "looping", "looping_share", "looping_answered", "failed", "failed_share")


def counted(failures: dict) -> tuple:
    """A format-failure entry's counts, in COUNTS order."""
    return tuple(failures[key] for key in COUNTS)


def test_looping_outputs_are_counted_per_model_and_generative_task(evaluation):
    _, report = evaluation
    found = failures_of(report)
    assert set(found) == {(m, t) for m in ("base", "tuned") for t in ("causal", "gsm")}  # mc is log-likelihood
    assert counted(found[("base", "causal")]) == (4, 2, None, 2, 0.5, 1, 3, 0.75)
    assert counted(found[("tuned", "causal")]) == (4, 0, None, 1, 0.25, 1, 1, 0.25)
    assert counted(found[("base", "gsm")]) == (3, 3, 1, 1, 1 / 3, 1, 2, 2 / 3)
    assert counted(found[("tuned", "gsm")]) == (3, 1, 1, 1, 1 / 3, 0, 1, 1 / 3)  # loop and no answer: one failure
    metrics = report["metrics"]
    assert metrics["base/causal/looping_share"] == 0.5 and metrics["base/causal/format_failure_share"] == 0.75
    assert "base/mc/looping_share" not in metrics


def test_loops_of_one_task_and_of_a_task_with_no_samples():
    samples = gsm_rows([(GSM_LOOP, "12"), ("answer\n12", "12")])
    results = {"samples": {"gsm": samples}}
    assert scoring.loops("gsm", results) == {
        "looping": 1,
        "looping_share": 0.5,
        "looping_answered": 1,
        "failed": 1,
        "failed_share": 0.5,
    }
    assert scoring.loops("gsm", {"samples": {}}) == {
        "looping": 0,
        "looping_share": None,
        "looping_answered": 0,
        "failed": 0,
        "failed_share": None,
    }


def test_the_summary_reports_the_looping_share_beside_the_format_failures(evaluation):
    out, report = evaluation
    (out / "summary.md").write_text(report["summary"])
    datafiles.write_json(out / "results.json", report)  # as claire.evaluate writes the result folder
    summary = (out / "summary.md").read_text()
    header = (
        "| Model | Task | n | no Claire answer marker | no answer Claire's reader can read | ran to the token limit "
        "| looping | format failures |"
    )
    assert header in summary
    assert "| Base | causal | 4 | 2 | — | — | 2 (50.0%) | 3 (75.0%) |" in summary
    assert "| Claire | causal | 4 | 0 | — | — | 1 (25.0%) | 1 (25.0%) |" in summary
    assert "| Claire | gsm | 3 | 1 | 1 | — | 1 (33.3%) | 1 (33.3%) |" in summary
    assert "| mc |" not in summary.split("## Format failures")[1]
    assert scoring.LOOP_NOTE in summary
    saved = failures_of(json.loads((out / "results.json").read_text()))
    assert saved[("base", "causal")]["looping_share"] == 0.5
