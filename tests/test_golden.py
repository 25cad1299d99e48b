"""The founding report's own example (section 4.6): its question, and Claire-1.5B-V1's answer, as golden data.

The excerpt is kept as the report prints it, with what its text extraction garbled put back: `<im\\_start>` is
`<|im_start|>` and LaTeX arrows ($\\mathbb{W} \\to \\mathbb{A}$) are plain `W → A`. The model wrote its reasoning
as `#` lines and, after the causality block, opened a second `think` part instead of closing the first.
"""

from claire.answers import causal_answer, causal_correct, final_answer
from claire.graphs import graph_metrics
from claire.traces import convert_trace, split_trace

QUESTION = "Let A cause C, B cause C, and W cause both A and B. What is the root cause of C?"
GOLD_EDGES = [["A", "C"], ["B", "C"], ["W", "A"], ["W", "B"]]
REPORT_OUTPUT = """<|im_start|>think
# Let's break down the causal relationships:
# - A causes C (A → C)
# - B causes C (B → C)
# - W causes both A and B (W → A) and (W → B)
# The question asks: "What is the root cause of C?"
<|im_start|>causality
# World model:
# There are three variables: A, B, and C.
# Each variable has an effect on C through two different paths:
# 1. Path from A to C: A → C
# 2. Path from B to C: B → C
# 3. Path from W to both A and B: W → A AND W → B
# To find the root cause(s), we need to consider which variable(s) directly cause(s) C without any intervening steps.
<|im_start|>think
# Therefore, the answer is: W is the root cause of C.
<|im_start|>answer
W is the root cause of C."""
# The same answer as a teacher writes it (section 3.2's tags), before the report's preprocessing (section 3.3).
RAW_TRACE = """<think>
Let's break down the causal relationships: A causes C, B causes C, W causes both A and B.
<causality>
A → C
B → C
W → A
W → B
W is upstream of both causes of C and nothing causes W.
</causality>
Therefore W is the root cause of C.
</think>
W is the root cause of C."""


def test_the_answer_reader_reads_w():
    assert final_answer(REPORT_OUTPUT) == "W is the root cause of C"
    assert causal_answer(REPORT_OUTPUT) == "W"
    assert causal_correct(REPORT_OUTPUT, "W") and not causal_correct(REPORT_OUTPUT, "A")


def test_the_graph_reader_finds_the_four_edges():
    scores = graph_metrics(REPORT_OUTPUT, GOLD_EDGES, ["A", "B", "C", "W"])
    assert (scores["precision"], scores["recall"], scores["shd"]) == (1.0, 1.0, 0)


def test_preprocessing_turns_the_tags_into_the_markers_the_report_shows():
    converted = convert_trace(RAW_TRACE)
    assert converted.startswith("<|im_start|>think\nLet's break down")
    assert "\n<|im_start|>causality\nA → C\nB → C\nW → A\nW → B\n" in converted
    assert converted.endswith("\n<|im_start|>answer\nW is the root cause of C.")
    assert "</think>" not in converted and "</causality>" not in converted and "<think>" not in converted
    assert split_trace(RAW_TRACE)["answer"] == "W is the root cause of C."
    assert causal_correct(converted, "W")
