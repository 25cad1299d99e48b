"""Final answers read from Claire-format, decoded and plain outputs, and judged against causal golds."""

import pytest

from claire.answers import causal_correct, final_answer
from claire.causal import generate_rows


@pytest.mark.parametrize(
    ("output", "answer"),
    [
        (
            "<|im_start|>think\nx\n<|im_start|>causality\nA -> B\n<|im_start|>answer\nThe answer is B, C.<|im_end|>",
            "B, C",
        ),
        ("think\nx\ncausality\nA -> B\nanswer\nThe answer is yes.", "yes"),  # special tokens skipped
        ("<think>x<causality>A -> B</causality></think>\nThe answer is 0.42.", "0.42"),
        ("<think>a</think> early </think>\nAnswer: no", "no"),  # the last </think>
        ("Let me think.\nSo the final answer is D.", "D"),
        ("**The answer is indirect.**", "indirect"),
        ("", ""),
    ],
)
def test_final_answer(output, answer):
    assert final_answer(output) == answer


@pytest.mark.parametrize(
    ("output", "gold", "right"),
    [
        ("The answer is yes.", "yes", True),
        ("The answer is no, because...", "yes", False),
        ("The answer is Yes", "yes", True),
        ("The answer is 0.4625.", "0.463", True),  # within half a unit of the third decimal
        ("The answer is 0.47.", "0.463", False),
        ("The answer is ≈0.463", "0.463", True),
        ("The answer is C, A.", "A, C", True),  # a list in any order
        ("The answer is A and C.", "A, C", True),
        ("The answer is A.", "A, C", False),
        ("The answer is none.", "none", True),
        ("The answer is wet grass, rain.", "rain, wet grass", True),
        ("The answer is direct.", "indirect", False),
    ],
)
def test_causal_correct(output, gold, right):
    assert causal_correct(output, gold) is right


def test_every_reference_trace_is_judged_right_in_every_format():
    for row in generate_rows(280, seed=9, queries="all", verbalisation="mixed"):
        response, gold = row["response"], row["answer"]
        native = response.replace("<think>", "<|im_start|>think").replace("</think>", "<|im_start|>answer")
        assert causal_correct(response, gold) and causal_correct(native + "<|im_end|>", gold), row["id"]
        assert not causal_correct(response.replace(f"is {gold}.", "is maybe."), gold), row["id"]
