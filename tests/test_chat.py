"""claire.chat (issue 19): a run answers in three parts, streams, votes, draws its graph; bad input is one line."""

import io
import subprocess
import sys

import pytest
from conftest import CONF, ROOT, compose_train, tiny_overrides
from hydra import compose, initialize_config_dir

from claire import ClaireError, chat, completions
from claire.train import run as train

QUESTION = "Let A cause C, B cause C, and W cause both A and B. What is the root cause of C?"  # the report's, 4.6


def compose_chat(*overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("chat", overrides=list(overrides))


@pytest.fixture(scope="module")
def tiny_run(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("chat") / "run"
    train(compose_train(*tiny_overrides(tiny_model_dir, out, "trainer.max_steps=1", "data.max_train_rows=4")))
    return out


def test_one_question_streams_and_shows_three_parts(tiny_run, capsys):
    shown = chat.run(compose_chat(f"run={tiny_run}", f"question={QUESTION!r}", "decode.max_new_tokens=12", "threads=1"))
    printed = capsys.readouterr().out
    assert len(shown) == 1 and set(shown[0]) >= {"thinking", "causality", "answer", "edges", "text"}
    assert printed.index("── thinking") < printed.index("── causal world model") < printed.index("── answer")


def test_tokens_stream_as_they_are_generated(tiny_run):
    cfg = compose_chat(f"run={tiny_run}", "decode.max_new_tokens=8")
    chat.check(cfg)
    from claire import models

    model, tokenizer = models.load_for_inference(cfg.model, cfg.run)
    writes = []

    class Out(io.StringIO):
        def write(self, text):
            writes.append(text)
            return super().write(text)

    (text,) = chat.ask(model, tokenizer, cfg, QUESTION, Out())
    assert len(writes) > 2 and "".join(writes).strip() == text.strip()  # piece by piece, the whole completion


def test_a_trace_is_read_into_thinking_edges_and_answer_and_drawn(tmp_path):
    completion = (
        "<|im_start|>think\nI write the graph.\n<|im_start|>causality\nA -> C\nB -> C\nW -> A\nW -> B\n"
        "<|im_start|>answer\nThe root cause of C is W."
    )
    out = io.StringIO()
    shown = chat.show([completion], compose_chat("graph_png=true", f"graphs_dir={tmp_path}"), 1, out)
    assert shown["thinking"] == "I write the graph." and shown["answer"] == "The root cause of C is W."
    assert shown["edges"] == [("a", "c"), ("b", "c"), ("w", "a"), ("w", "b")]
    assert "  w -> a" in out.getvalue() and (tmp_path / "graph-1.png").read_bytes()[:4] == b"\x89PNG"


def test_a_vote_takes_the_answer_most_samples_give():
    samples = ["answer\nThe answer is A.", "causality\nW -> C\nanswer\nC and W", "answer\nW, C"]
    out = io.StringIO()
    shown = chat.show(samples, compose_chat("decode=vote"), 1, out)
    assert shown["vote"] == "c, w" and "vote: c, w (2 of 3 samples)" in out.getvalue()  # one answer, two spellings
    assert shown["edges"] == [("w", "c")] and shown["answer"] == "C and W"  # the parts of a sample giving it


def test_vote_and_budget_run_end_to_end(tiny_run, capsys):
    voted = chat.run(compose_chat(f"run={tiny_run}", "question=Why?", "decode=vote", "decode.samples=3",
                                  "decode.max_new_tokens=6", "threads=1"))  # fmt: skip
    assert "vote" in voted[0]
    cfg = compose_chat(f"run={tiny_run}", "question=Why?", "decode=budget", "decode.min_thinking_tokens=0",
                       "decode.max_thinking_tokens=4", "decode.max_new_tokens=36", "threads=1")  # fmt: skip
    (budgeted,) = chat.run(cfg)
    assert completions.SECTION_MARKERS["answer"].search(budgeted["text"])  # the answer marker, forced at 4 tokens


def test_an_interactive_session_answers_each_line_until_an_empty_one(tiny_run, monkeypatch, capsys):
    lines = iter(["Why does C happen?", "And B?", ""])
    monkeypatch.setattr("builtins.input", lambda _: next(lines))
    shown = chat.run(compose_chat(f"run={tiny_run}", "decode.max_new_tokens=4", "threads=1"))
    assert len(shown) == 2


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["run=/no/such/run"], "run=/no/such/run is not a claire.train run folder"),
        (["merged=true"], "merged=true needs run="),
        (["question=' '"], "question= is empty"),
        (["decode=budget", "decode.max_thinking_tokens=-1"], "decode.max_thinking_tokens=-1 must be a whole number"),
    ],
)
def test_bad_input_is_one_line_before_any_model_loads(overrides, message, monkeypatch):
    monkeypatch.setattr("claire.models.load_for_inference", lambda *a: pytest.fail("a model was loaded"))
    with pytest.raises(ClaireError, match=message):
        chat.run(compose_chat(*overrides))


def test_the_command_line_answers_one_question(tiny_run):
    command = [sys.executable, "-m", "claire.chat", f"run={tiny_run}", f"'question=\"{QUESTION}\"'"[1:-1]]
    command += ["decode.max_new_tokens=6", "threads=1"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "── answer" in done.stdout
    bad = subprocess.run([*command[:3], "decode=beam"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "Could not find 'decode/beam'" in bad.stderr and "budget" in bad.stderr


def test_a_special_markers_run_answers_with_its_tags_merged_or_not(tiny_model_dir, tmp_path):
    import torch

    from claire import models

    out = tmp_path / "special"
    overrides = ["model.markers=special", "merge=true", "trainer.max_steps=1", "data.max_train_rows=4"]
    train(compose_train(*tiny_overrides(tiny_model_dir, out, *overrides)))
    logits = []
    for merged in ("false", "true"):
        cfg = compose_chat(f"run={out}", f"merged={merged}")
        chat.check(cfg)
        model, tokenizer = models.load_for_inference(cfg.model, cfg.run, cfg.merged)
        think = tokenizer.convert_tokens_to_ids("<think>")
        assert think != tokenizer.unk_token_id and "<think>" in completions.decode(tokenizer, [think, 100])
        with torch.no_grad():  # the trained rows of the markers' embeddings are in both
            logits.append(model(input_ids=torch.tensor([[think, 100, 101]])).logits)
        shown = chat.run(compose_chat(f"run={out}", f"merged={merged}", "question=Why?", "decode.max_new_tokens=4"))
        assert len(shown) == 1
    assert torch.allclose(logits[0], logits[1], atol=1e-4)  # adapter merged here = the merged model the run saved


def test_an_empty_causality_block_reads_as_none():
    shown = completions.parts("think\nfirst line\nsecond line\ncausality\nanswer\nA")
    assert shown == {"thinking": "first line\nsecond line", "causality": None, "answer": "A"}
