"""Final answers read from Claire-format, decoded and plain outputs, judged against golds; teacher traces judged."""

import pytest
from omegaconf import OmegaConf

from claire.answers import answer_matches, causal_correct, equivalent, final_answer, has_answer_marker, read_answer
from claire.causal.questions import generate_rows
from claire.teacher.verification import check_trace


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
        ("W is the root cause of C.", "W", True),  # a sentence about the question's variable: its subject
        ("A and B are the direct causes of C.", "A, B", True),
        ("The direct causes of wet grass are rain and sprinkler.", "rain, sprinkler", True),  # the answer last
        ("C is the root cause of W.", "W", False),
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


@pytest.mark.parametrize(
    ("answer", "gold", "kind", "expected"),
    [
        ("The answer is $1,080.00.", "1080", "number", True),
        ("72 apples", "72", "number", True),
        ("73", "72", "number", False),
        ("(B) because it is", "B", "choice", True),
        ("Option c", "C", "choice", True),
        ("D", "B", "choice", False),
        ("\\boxed{\\dfrac{1}{2}}", "\\frac{1}{2}", "math", True),
        ("0.5", "\\frac{1}{2}", "math", True),
        ("\\sqrt{3}", "\\sqrt{3}", "math", True),
        ("\\sqrt{2}", "\\sqrt{3}", "math", False),
        ("x = 2", "2", "math", True),
        ("**Final answer:** B", "B", "choice", True),
        ("The answer is **(C)**.", "C", "choice", True),
        ("$\\boxed{\\text{B}}$", "B", "choice", True),
        ("\\(\\frac{3}{4}\\)", "0.75", "math", True),
        ("-\\frac{1}{2}", "-0.5", "math", True),
        ("12", "1, 2", "math", False),  # a list is not a number
        ("3, 4", "34", "number", False),
        ("\u22125", "5", "number", False),  # a unicode minus is a minus
        ("Yes.", "yes", "causal", True),
    ],
)
def test_answer_matches_by_kind(answer, gold, kind, expected):
    assert answer_matches(answer, gold, kind) is expected


NATIVE = "<|im_start|>think\nShe sells 16 - 3 - 4 = 9 eggs.\n<|im_start|>causality\neggs -> money\n<|im_start|>answer\n"


@pytest.mark.parametrize(
    ("output", "kind", "answer"),
    [
        (NATIVE + "18<|im_end|>", "number", "18"),  # Claire native
        ("think\n9 * 2 = 18\ncausality\neggs -> money\nanswer\nThe answer is $18.", "number", "18"),  # decoded
        ("<think>9 * 2 = 18</think>\n18 dollars", "number", "18"),  # after the last </think>, a unit
        ("9 * 2 = 18, minus 2 for the feed.\nThe answer is 16.", "number", "16"),  # plain chain of thought
        ("She earns 9 * 2 = 18.\nFinal answer: $1,080.00", "number", "1080.00"),
        ("so she makes 9 * 2 = 18 dollars.\n#### 18", "number", "18"),
        ("The total is \\boxed{70,000}.", "number", "70000"),
        ("answer\n18.", "number", "18"),
        ("answer\n3 apples at $2 each, so 6", "number", "6"),  # several numbers: the one after the conclusion
        ("answer\n18 because 16 - 3 - 4 = 9 eggs at $2", "number", "18"),  # a trailing explanation
        ("answer\n18. Then 9 * 2 = 18 - 0", "number", "18"),  # the first sentence counts
        ("answer\nThe temperature fell to \u22125 degrees.", "number", "-5"),  # unicode minus
        ("answer\n3/4 of a pie", "number", "3/4"),
        ("She had 5 apples and ate 2, leaving 3 apples.", "number", None),  # numbers, but no answer line
        ("<|im_start|>think\n12 and 7<|im_end|>", "number", None),
        ("answer\nI am not sure.", "number", None),
        ("Adding 5 and 3 gives:\n8", "number", "8"),  # a last line that is only the answer
        ("**Final Answer:**\n\n42", "number", "42"),  # an empty statement: its answer is on the next line
        ("So the answer is:\n\n42", "number", "42"),
        ("The answer is 14.\nI hope this helps!", "number", "14"),  # one closing line after the statement
        ("To find the answer: first 3 + 4 = 7.\nThen 7 * 2 = 14.\nShe pays 14 dollars.", "number", None),  # no end
        ("Thus the answer is (B).", "choice", "B"),
        ("The correct answer is B because A is wrong.", "choice", "B"),
        ("answer\nB) 42 kJ", "choice", "B"),
        ("answer\nOption c", "choice", "C"),
        ("answer\n4.2 eV (D)", "choice", "D"),
        ("Options (A) and (C) look close; (C) fits.\nSo (C).", "choice", "C"),
        ("Options (A) and (C) look close.", "choice", None),  # letters in the trace, no answer
        ("Therefore $\\boxed{\\dfrac{1}{2}}$.", "math", "\\dfrac{1}{2}"),
        (NATIVE + "\\frac{3}{4}<|im_end|>", "math", "\\frac{3}{4}"),
    ],
)
def test_read_answer(output, kind, answer):
    assert read_answer(output, kind) == answer


@pytest.mark.parametrize(
    ("answer", "gold", "kind", "expected"),
    [
        ("1080.00", "1080", "number", True),
        ("1080", "1,080", "number", True),
        ("70000", "70,000", "number", True),
        ("-5", "5", "number", False),
        ("-5", "\u22125", "number", True),
        ("3/4", "0.75", "number", True),
        ("17", "18", "number", False),
        ("B", "(B)", "choice", True),
        ("C", "(B)", "choice", False),
        ("0.5", "\\frac{1}{2}", "math", True),
        ("\\dfrac{1}{2}", "\\boxed{\\frac{1}{2}}", "math", True),
        ("2\\pi", "\\pi \\cdot 2", "math", True),
        ("\\sqrt{2}", "\\sqrt{3}", "math", False),
        ("12", "1, 2", "math", False),
    ],
)
def test_equivalent(answer, gold, kind, expected):
    pytest.importorskip("math_verify")
    assert equivalent(answer, gold, kind) is expected


def test_has_answer_marker():
    assert has_answer_marker(NATIVE + "18") and has_answer_marker("think\nx\nanswer\n18")
    assert has_answer_marker("<think>x</think>18") and not has_answer_marker("So the answer is 18.")


def test_read_answer_names_the_kinds():
    with pytest.raises(ValueError, match="kind='causal'"):
        read_answer("yes", "causal")


RULES = OmegaConf.create({"require_correct": True, "min_trace_chars": 40, "max_chars": 2000, "max_answer_chars": 50})
GOOD = "<think>\nGiven 3 and 4.\n<causality>\nBuying more apples -> more apples.\n</causality>\nSo 3 + 4.\n</think>\n7"


@pytest.mark.parametrize(
    ("content", "finish", "verdict"),
    [
        (GOOD, "stop", "ok"),
        (GOOD, "length", "truncated"),
        (GOOD.replace("</causality>", ""), "stop", "unbalanced_tags"),
        (GOOD.replace("<think>", "").replace("</think>", ""), "stop", "unbalanced_tags"),
        (GOOD.replace("\n7", "\n"), "stop", "no_answer"),
        (GOOD.replace("</think>\n7", "</think>\n8"), "stop", "wrong_answer"),
        ("<think>a<causality>b</causality>c</think>7", "stop", "too_short"),
        (GOOD + " and so on" * 10, "stop", "long_answer"),
        (GOOD.replace("So 3 + 4.", "x" * 2000), "stop", "too_long"),
        ("<causality>b</causality><think>a</think>7", "stop", "misnested_tags"),
    ],
)
def test_judge_rejects_with_a_reason(content, finish, verdict):
    row = {"gold": "7", "kind": "number"}
    assert check_trace(row, {"content": content, "finish_reason": finish}, RULES) == verdict


@pytest.mark.parametrize(
    ("output", "key"),
    [
        ("answer\nThe answer is B, A.", "a, b"),
        ("answer\nA and B", "a, b"),
        ("answer\nYes, because A causes B.", "yes"),
        ("answer\n0.350", "0.35"),
        ("answer\nThe effect is 0.35.", "0.35"),
        ("answer\nnone", "none"),
        ("answer\nNo variables.", "none"),
        ("answer\n0.5004", "0.5"),
        ("", None),
    ],
)
def test_causal_answers_that_score_alike_share_one_vote_key(output, key):
    from claire.answers import causal_key

    assert causal_key(output) == key
    if key and key not in ("none", "yes", "0.5"):
        assert causal_correct(output, key.upper() if "," in key else key)  # the key is what causal_correct accepts
