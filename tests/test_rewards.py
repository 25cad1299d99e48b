"""GRPO's rewards on hand-written completions, the hacks a policy finds included; loops and well-formed traces."""

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from claire import ClaireError
from claire.answers import final_answer, read_answer
from claire.completions import answer_section, decode, looping, well_formed
from claire.traces import TRACE_TAGS, convert_trace
from claire.training import rewards

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = [json.loads(line) for line in (ROOT / "claire" / "data" / "causal_sample.jsonl").read_text().splitlines()]
EDGES = [["A", "B"], ["B", "C"], ["C", "D"]]
GRAPH = "A -> B\nB -> C\nC -> D"
RIGHT = f"think\nI follow the arrows.\ncausality\n{GRAPH}\nInto D: C -> D.\nanswer\nThe answer is C."  # as trl decodes
LOOP = "I will think it.\n"


def rewarded(text: str, gold: str = "C", edges: list | None = EDGES, config: str = "causal") -> dict:
    """Every reward of one completion, by name, as trl would get them."""
    functions, _ = rewards.build(OmegaConf.load(ROOT / "conf" / "reward" / f"{config}.yaml"))
    columns = {"answer": [gold], "edges": [edges]} if edges is not None else {"answer": [gold]}
    return {f.__name__: f(prompts=["q"], completions=[text], completion_ids=None, **columns)[0] for f in functions}


def all_edges(names: str) -> str:
    """A <causality> block body claiming every directed edge among the names."""
    return "\n".join(f"{a} -> {b}" for a in names for b in names if a != b)


def test_a_right_trace_earns_every_reward():
    assert rewarded(RIGHT) == {"answer": 1.0, "graph_f1": 1.0, "format": 1.0, "loop": 0.0}


def test_a_wrong_answer_earns_the_graph_but_not_the_answer():
    assert rewarded(RIGHT.replace("is C.", "is B.")) == {"answer": 0.0, "graph_f1": 1.0, "format": 1.0, "loop": 0.0}


@pytest.mark.parametrize(
    "text",
    [
        f"think\nThe answer is C.\ncausality\n{GRAPH}\nThe answer is C.",  # no answer section: evaluation reads the
        f"think\nThe answer is C.\ncausality\n{GRAPH}\nanswer\n",  # last line; an empty one: the trace's statement
        f"think\nx\ncausality\n{GRAPH}\nanswer\nThe answer is C is not it.",  # neither reads C
    ],
)
def test_an_answer_outside_the_answer_section_earns_nothing(text):
    assert rewarded(text)["answer"] == 0.0


@pytest.mark.parametrize(
    ("answer", "gold", "reward"),
    [
        ("C\nB", "C", 1.0),  # the reader takes the answer section's first line: a hedge after it is never read,
        ("B\nC", "C", 0.0),  # so listing several answers earns what the first alone earns, never more
        ("B or C", "C", 0.0),
        ("C, B", "C", 0.0),  # a set of names must be the gold set
        ("C and D", "C, D", 1.0),
        ("yes or no", "yes", 1.0),  # the first word counts: the same as answering yes
        ("yes or no", "no", 0.0),
        ("0.25 or 0.5", "0.5", 0.0),  # the first number counts
    ],
)
def test_several_answers_count_as_the_first(answer, gold, reward):
    assert rewarded(f"think\nx\ncausality\n{GRAPH}\nanswer\n{answer}", gold)["answer"] == reward


def test_several_answer_sections_count_as_the_first_and_are_not_well_formed():
    text = f"think\nx\ncausality\n{GRAPH}\nanswer\nB\nanswer\nC"
    assert rewarded(text) == {"answer": 0.0, "graph_f1": 1.0, "format": 0.0, "loop": 0.0}


def test_a_block_with_every_possible_edge_scores_its_f1():
    # 3 of the 12 directed edges among A-D are right: precision 1/4, recall 1, F1 2/5
    assert rewarded(RIGHT.replace(GRAPH, all_edges("ABCD")))["graph_f1"] == pytest.approx(0.4)


def test_edges_outside_the_causality_block_earn_no_graph_reward():
    assert rewarded(f"think\n{GRAPH}\nanswer\nC") == {"answer": 1.0, "graph_f1": 0.0, "format": 0.0, "loop": 0.0}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", {"answer": 0.0, "graph_f1": 0.0, "format": 0.0, "loop": 0.0}),
        ("answer\nC", {"answer": 1.0, "graph_f1": 0.0, "format": 0.0, "loop": 0.0}),  # the answer alone
        ("think\ncausality\nanswer\nC", {"answer": 1.0, "graph_f1": 0.0, "format": 0.0, "loop": 0.0}),
    ],
)
def test_an_empty_trace_earns_no_graph_or_format(text, expected):
    assert rewarded(text) == expected


def test_a_completion_cut_at_the_token_limit_in_a_loop():
    text = f"think\n{LOOP * 40}I will th"
    assert rewarded(text) == {"answer": 0.0, "graph_f1": 0.0, "format": 0.0, "loop": -1.0}


def test_a_trace_ending_in_a_loop_is_not_well_formed():
    text = f"{RIGHT}\n{'C -> D ' * 30}"
    assert rewarded(text) == {"answer": 1.0, "graph_f1": 1.0, "format": 0.0, "loop": -1.0}


def test_conversational_completions_and_batches():
    answer, graph_f1, *_ = rewards.build(OmegaConf.load(ROOT / "conf" / "reward" / "causal.yaml"))[0]
    completions = [[{"role": "assistant", "content": RIGHT}], [{"role": "assistant", "content": "C"}]]
    columns = {"answer": ["C", "D"], "edges": [EDGES, None], "trainer_state": object(), "log_metric": print}
    assert answer(["q", "q"], completions, **columns) == [1.0, 0.0]
    assert graph_f1(["q", "q"], completions, **columns) == [1.0, None]  # a row without gold edges


def test_the_raw_form_and_native_markers_are_read():
    raw = f"<think>\nI follow.\n<causality>\n{GRAPH}\n</causality>\n</think>\nThe answer is C."
    native = convert_trace(raw)
    assert rewarded(raw) == rewarded(native) == {"answer": 1.0, "graph_f1": 1.0, "format": 1.0, "loop": 0.0}


def test_trace_tags_survive_decoding_from_completion_ids(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    native = convert_trace(f"<think>\nI follow.\n<causality>\n{GRAPH}\n</causality>\n</think>\nC")
    ids = tokenizer(f"{native}<|im_end|>", add_special_tokens=False)["input_ids"]
    assert decode(tokenizer, ids) == native.replace("<|im_start|>", "")  # native markers decode as trl decodes them
    tokenizer.add_tokens(list(TRACE_TAGS), special_tokens=True)  # markers=special
    raw = f"<think>\nI follow.\n<causality>\n{GRAPH}\n</causality>\n</think>\nC"
    ids = tokenizer(f"{raw}<|im_end|>", add_special_tokens=False)["input_ids"]
    assert decode(tokenizer, ids) == raw  # tags kept, <|im_end|> dropped
    trl_text = tokenizer.decode(ids, skip_special_tokens=True)  # what trl hands the reward functions: no tags
    config = OmegaConf.load(ROOT / "conf" / "reward" / "causal.yaml")
    for with_tokenizer, expected in ((None, [0.0, 0.0]), (tokenizer, [1.0, 1.0])):
        functions, _ = rewards.build(config, with_tokenizer)
        got = [f([""], [trl_text], [ids], answer=["C"], edges=[EDGES])[0] for f in functions[1:3]]
        assert got == expected  # graph_f1 and format


@pytest.mark.parametrize(
    ("answer", "gold", "reward"),
    [
        ("The answer is 72.", "72", 1.0),
        ("72", "Natalia sold 48+24 = <<48+24=72>>72 clips.\n#### 72", 1.0),  # a gsm8k solution as the gold
        ("$72.00", "72", 1.0),
        ("1,080", "1080", 1.0),
        ("36, so 72", "72", 1.0),  # the number after the last conclusion word
        ("72 or 36", "72", 1.0),  # else the first
        ("36 or 72", "72", 0.0),
        ("3/4", "0.75", 1.0),
        ("71", "72", 0.0),
        ("seventy-two", "72", 0.0),
    ],
)
def test_gsm8k_answers_are_read_as_the_claire_filter_reads_them(answer, gold, reward):
    text = f"think\n36 + 36 = 72\ncausality\nhalf -> total\nanswer\n{answer}"
    assert rewarded(text, gold, edges=None, config="gsm8k") == {"answer": reward, "format": 1.0, "loop": 0.0}


def test_a_gsm8k_answer_stated_only_in_the_trace_earns_nothing():
    text = "think\nx\ncausality\nhalf -> total\nThe answer is 72.\nanswer\n"  # an empty answer section
    assert read_answer(text, "number") == "72"  # the filter would read the trace's statement
    assert rewarded(text, "72", edges=None, config="gsm8k")["answer"] == 0.0


def test_choice_answers():
    assert rewards.answer_score("answer\n(B) 42 kJ", "B", "choice") == 1.0
    assert rewards.answer_score("answer\nC", "B", "choice") == 0.0


def test_build_returns_the_named_functions_and_weights_in_one_order():
    functions, weights = rewards.build({"answer_kind": "number", "weights": {"loop": 0.5, "answer": 2}})
    assert [f.__name__ for f in functions] == ["loop", "answer"] and weights == [0.5, 2.0]
    gsm8k = OmegaConf.load(ROOT / "conf" / "reward" / "gsm8k.yaml")
    assert dict(gsm8k.weights) == {"answer": 1.0, "format": 0.1, "loop": 0.5} and gsm8k.answer_kind == "number"


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"answer_kind": "causal", "weights": {"answr": 1.0}}, "reward.weights.answr is not a known reward; known "),
        ({"answer_kind": "causal", "weights": {"answer": "high"}}, "reward.weights.answer=high is not a number"),
        ({"answer_kind": "causal", "weights": {"answer": True}}, "reward.weights.answer=True is not a number"),
        ({"answer_kind": "causal", "weights": {}}, "reward.weights={} must map reward names to numbers"),
        ({"answer_kind": "causal", "weights": [1.0]}, "reward.weights=[1.0] must map reward names to numbers"),
        ({"answer_kind": "math", "weights": {"answer": 1.0}}, "reward.answer_kind=math is not one of causal, number"),
    ],
)
def test_check_refuses_a_bad_group_in_one_line(config, message):
    with pytest.raises(ClaireError, match="^" + message.replace("[", r"\[").replace("]", r"\]")) as error:
        rewards.check(OmegaConf.create(config))
    assert "\n" not in str(error.value)
    if "known reward" in message:
        assert str(error.value).endswith("known rewards: answer, graph_f1, format, loop")


def test_check_accepts_the_shipped_groups():
    for path in sorted((ROOT / "conf" / "reward").glob("*.yaml")):
        rewards.check(OmegaConf.load(path))


def test_a_missing_gold_answer_column_is_named():
    answer = rewards.reward_function("answer", "causal")
    with pytest.raises(ClaireError, match="needs the dataset column 'answer'"):
        answer(["q"], [RIGHT], edges=[EDGES])


@pytest.mark.parametrize("form", ["raw", "native", "decoded"])
def test_no_sample_trace_loops_and_every_one_is_well_formed(form):
    for row in SAMPLE:
        native = convert_trace(row["response"])
        text = {"raw": row["response"], "native": native, "decoded": native.replace("<|im_start|>", "")}[form]
        assert not looping(text) and well_formed(text), row["id"]


@pytest.mark.parametrize(
    "text",
    [
        "think\n" + LOOP * 40,
        "think\n" + LOOP * 40 + "I will th",  # cut mid-line
        "Let me see. " + "A -> B\n" * 12,  # a short line
        "x " + "so so so so so " * 10,  # an n-gram within a line
        "answer\n" + "7" * 80,
        "the same long line of reasoning that goes on and on and on, each time word for word\n" * 4,
    ],
)
def test_loops(text):
    assert looping(text)


@pytest.mark.parametrize(
    "text",
    [
        LOOP * 3,  # three times is not yet a loop
        "answer\n1000000",  # a short repeated tail
        "think\nA -> B\nA -> C\nB -> C\nC -> D\nInto D: C -> D.",
        "",
    ],
)
def test_not_loops(text):
    assert not looping(text)


def test_the_answer_section_is_where_the_reader_reads():
    for row in SAMPLE:
        native = convert_trace(row["response"])
        for text in (row["response"], native, native.replace("<|im_start|>", "")):
            assert final_answer(f"answer\n{answer_section(text)}") == final_answer(text) == row["answer"]
    assert answer_section(f"think\nThe answer is C.\ncausality\n{GRAPH}\nanswer\n") is None


@pytest.mark.parametrize(
    "text",
    [
        "think\nx\nanswer\nC",  # no causality block
        f"causality\n{GRAPH}\nanswer\nC",  # no think section
        f"think\nx\ncausality\n{GRAPH}\nanswer\n",  # no answer
        "think\nx\ncausality\n\nanswer\nC",  # an empty causality block
        f"Sure!\nthink\nx\ncausality\n{GRAPH}\nanswer\nC",  # text before the trace
        f"think\nx\nanswer\nC\ncausality\n{GRAPH}",  # out of order
        f"think\nx\ncausality\n{GRAPH}\ncausality\n{GRAPH}\nanswer\nC",  # two blocks
        f"<think>x<causality>{GRAPH}</think>C",  # raw, unclosed block
    ],
)
def test_malformed_traces(text):
    assert not well_formed(text)
