"""Reading the graph a model writes in <causality> and scoring it against the gold graph."""

import pytest

from claire.causal.questions import generate_rows
from claire.graphs import causality_block, graph_metrics, parse_edges, score, shd


@pytest.mark.parametrize(
    ("text", "edges"),
    [
        ("A -> C\nB -> C", {("a", "c"), ("b", "c")}),
        ("A → C", {("a", "c")}),
        ("A --> B => C", {("a", "b"), ("b", "c")}),
        ("A -> B -> C", {("a", "b"), ("b", "c")}),  # a chain is two edges
        ("C <- A; D ← B", {("a", "c"), ("b", "d")}),  # reversed arrows
        ("A causes C. B directly causes D.", {("a", "c"), ("b", "d")}),
        ("C is caused by A", {("a", "c")}),
        ("A does not cause C; B doesn't cause C; A never causes B", set()),
        ("So the path A -> B -> E remains.", {("a", "b"), ("b", "e")}),
        ("A -> A", set()),  # no self loops
        ("There is no arrow H -> A; H acts through H -> G -> A", {("h", "g"), ("g", "a")}),
        ("no arrows here", set()),
        ("The direct causes of E are A. Into E: A -> E, B -> E.", {("a", "e"), ("b", "e")}),  # "causes of" is a noun
    ],
)
def test_edges_from_arrows_and_sentences(text, edges):
    assert parse_edges(text) == edges


def test_multi_word_names_when_the_names_are_known():
    text = "Rain causes wet grass, and the sprinkler -> wet grass. Wet grass → slippery path"
    names = ["rain", "sprinkler", "wet grass", "slippery path", "grass"]
    expected = {("rain", "wet grass"), ("sprinkler", "wet grass"), ("wet grass", "slippery path")}
    assert parse_edges(text, names) == expected
    assert parse_edges("Rain -> umbrella", names) == set()  # an unknown name is no node


@pytest.mark.parametrize(
    "output",
    [
        "<think>x\n<causality>\nA -> B\n</causality>\nso\n</think>\nThe answer is B.",
        "<|im_start|>think\nx\n<|im_start|>causality\nA -> B\nso\n<|im_start|>answer\nB -> C<|im_end|>",
        "think\nx\ncausality\nA -> B\nanswer\nB -> C",  # decoded with special tokens skipped
    ],
)
def test_only_the_causality_block_is_read(output):
    assert parse_edges(causality_block(output)) == {("a", "b")}


def test_output_without_a_block_is_read_whole():
    assert parse_edges(causality_block("I think A -> B.")) == {("a", "b")}


def test_scores():
    gold = {("a", "b"), ("b", "c"), ("a", "c")}
    assert score(gold, gold) == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "shd": 0}
    got = score({("a", "b"), ("c", "b"), ("c", "d")}, gold)  # one hit, one reversed, one extra, one missing
    assert got["precision"] == pytest.approx(1 / 3) and got["recall"] == pytest.approx(1 / 3)
    assert got["f1"] == pytest.approx(1 / 3) and got["shd"] == 3  # reverse b-c, delete c-d, add a-c
    assert score(set(), gold) == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "shd": 3}
    assert score(set(), set())["f1"] == 1.0


def test_shd_counts_a_reversal_once():
    assert shd({("b", "a")}, {("a", "b")}) == 1
    assert shd({("a", "b"), ("b", "a")}, {("a", "b")}) == 1


def test_every_reference_trace_parses_back_to_its_gold_graph():
    rows = [row for q in ("sample", "structure", "ladder") for row in generate_rows(300, seed=3, queries=q)]
    for row in rows:
        names = sorted({v for edge in row["edges"] for v in edge})
        assert graph_metrics(row["response"], row["edges"], names)["shd"] == 0, row["id"]
        assert graph_metrics(row["response"], row["edges"])["f1"] == 1.0, row["id"]


def test_story_traces_parse_back_with_their_names():
    for row in generate_rows(200, seed=4, queries="all", verbalisation="mixed"):
        names = sorted({v for edge in row["edges"] for v in edge})
        assert graph_metrics(row["response"], row["edges"], names)["shd"] == 0, row["id"]
