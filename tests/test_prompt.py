"""The report's V2 prompt ships verbatim (section 5.3.1), and mix=v1 says it has no published prompt of its own."""

import logging

import pytest
from conftest import ROOT, compose_generate
from omegaconf import OmegaConf

# The founding report, section 5.3.1, from "You are a helpful assistant" to "...your thinking above.", as printed
# (the extraction's markdown escape \*causal\* is *causal*).
REPORT_V2_PROMPT = """You are a helpful assistant whose task it is to generate synthetic data for the supervised fine-tuning of a smaller LLM.

You will be given a question and your task is to generate an answer and *causal* reasoning traces.

Your reasoning trace should involve building a causal world model based on your knowledge, the query, and any other user context. You should try very hard to reason causally to the best of your ability. You should think step-by-step and reassess your causal reasoning if necessary.

When outputting your causal reasoning, you should use <think>...</think> XML tags to denote the reasoning trace, and <causality>...</causality> XML tags to denote the use of causality-aware reasoning. Note that the causality tokens should be used within the thinking tokens.

You MUST return the ENTIRE reasoning trace, i.e. everything in the <think> and <causality> XML tags as well.

You should follow this format:

<think>

Do some thinking, if necessary (you may exclude this part if not needed)

<causality>

Build a world model of relevant concepts, from the query and your knowledge

Reason about the world model and query in a causal manner

</causality>

Do some more thinking, if necessary (you may exclude this part if not needed)

</think>

Finally, answer the query based on your thinking above."""  # noqa: E501


def test_the_v2_prompt_is_the_reports_text_byte_for_byte():
    shipped = OmegaConf.load(ROOT / "conf" / "prompt" / "v2.yaml")
    assert shipped.version == "v2" and shipped.system == REPORT_V2_PROMPT and shipped.user == "{question}"


def test_the_v2_prompt_is_the_default_and_the_only_prompt():
    assert compose_generate().prompt.system == REPORT_V2_PROMPT
    assert compose_generate("mix=v1").prompt.version == "v2"
    assert sorted(p.name for p in (ROOT / "conf" / "prompt").iterdir()) == ["v2.yaml"]


def test_mix_v1_says_its_prompt_was_never_published(tmp_path, monkeypatch, caplog):
    from claire.teacher import pipeline

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    cfg = compose_generate("mix=v1", f"out={tmp_path}")
    monkeypatch.setattr(pipeline, "draw_questions", lambda cfg: (_ for _ in ()).throw(SystemExit("stop")))
    with caplog.at_level(logging.WARNING), pytest.raises(SystemExit, match="stop"):
        pipeline.make_dataset(cfg)
    assert "mix=v1: the report never published its prompt; asking with the V2 prompt (prompt=v2)" in caplog.text
