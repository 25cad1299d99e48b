"""The decode group (issue 19): s1 budget forcing as a logits processor, checked token by token on a scripted model
and end to end on the tiny model; bad settings fail in one line."""

import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoTokenizer

from claire import ClaireError, decoding
from claire.decoding import BudgetForcing


@pytest.fixture(scope="module")
def tokenizer(embedded_model_dir):
    return AutoTokenizer.from_pretrained(embedded_model_dir)


def ids(tokenizer, text):
    return tokenizer.encode(text, add_special_tokens=False)


def decode_with(processor, tokenizer, prompt, wants, steps):
    """Generate `steps` tokens greedily from a scripted model: at each step it prefers wants(generated so far)."""
    sequence = list(prompt)
    for _ in range(steps):
        scores = torch.zeros(1, len(tokenizer))
        scores[0, wants(sequence[len(prompt) :])] = 5.0
        sequence.append(int(processor(torch.tensor([sequence]), scores)[0].argmax()))
    return tokenizer.decode(sequence[len(prompt) :], skip_special_tokens=False)


def script(tokenizer, text):
    """A model that writes text token by token, then keeps ending the turn."""
    tokens = ids(tokenizer, text)
    return lambda written: tokens[len(written)] if len(written) < len(tokens) else tokenizer.eos_token_id


TRACE = "<|im_start|>think\nA causes C.\n<|im_start|>causality\nA -> C\n<|im_start|>answer\nA"


def test_an_early_end_of_thinking_becomes_wait_up_to_max_waits(tokenizer):
    prompt = ids(tokenizer, "<|im_start|>user\nWhy?<|im_end|>\n<|im_start|>assistant\n")
    forcing = BudgetForcing(tokenizer, len(prompt), min_thinking_tokens=60, max_waits=2)
    # the scripted model tries to answer right after its graph; each try is replaced by "\nWait" (2 at most)
    wants = script(tokenizer, TRACE)
    written = decode_with(forcing, tokenizer, prompt, lambda done: wants(strip_waits(tokenizer, done)), 40)
    assert written.count("\nWait") == 2 and forcing.waits == [2]
    assert written.index("A -> C") < written.index("\nWait") < written.index("<|im_start|>answer")


def strip_waits(tokenizer, written):
    """What the scripted model has written of its own text (the forced Waits removed), as token ids."""
    text = tokenizer.decode(written, skip_special_tokens=False).replace("\nWait", "")
    return ids(tokenizer, text)


def test_the_marker_that_opens_the_causality_block_is_never_taken_for_an_exit(tokenizer):
    forcing = BudgetForcing(tokenizer, 0, min_thinking_tokens=1000, max_waits=5)
    written = decode_with(forcing, tokenizer, [], script(tokenizer, TRACE), 20)
    assert written.startswith("<|im_start|>think\nA causes C.\n<|im_start|>causality\nA -> C")
    assert forcing.waits == [1]  # only the answer marker after the graph was an attempt to leave


def test_a_sampled_early_exit_is_banned_while_the_budget_is_unmet(tokenizer):
    generated = ids(tokenizer, "<|im_start|>think\nx\n<|im_start|>causality\nA -> C\n")
    forcing = BudgetForcing(tokenizer, 0, min_thinking_tokens=1000)
    scores = torch.zeros(1, len(tokenizer))
    scores[0, 100] = 5.0  # the model prefers to go on, but an exit still has some probability
    out = forcing(torch.tensor([generated]), scores)
    assert out[0, 1] == -float("inf") and out[0, tokenizer.eos_token_id] == -float("inf")  # <|im_start|>, <|im_end|>
    assert out[0, 100] == 5.0 and forcing.waits == [0]


def test_at_the_cap_the_answer_marker_is_forced(tokenizer):
    forcing = BudgetForcing(tokenizer, 0, max_thinking_tokens=6)
    written = decode_with(forcing, tokenizer, [], lambda _: ids(tokenizer, " on")[0], 12)
    assert written.startswith(" on" * 6 + "\n<|im_start|>answer\n")
    assert written.endswith(" on" * (12 - 6 - 4))  # then the model answers as it likes


def test_a_marker_half_written_at_the_cap_is_completed_not_repeated(tokenizer):
    forcing = BudgetForcing(tokenizer, 0, max_thinking_tokens=3)
    wants = script(tokenizer, "a b<|im_start|>")  # 3 tokens, the last one the marker's first
    written = decode_with(forcing, tokenizer, [], wants, 6)
    assert written.startswith("a b<|im_start|>answer\n") and written.count("<|im_start|>") == 1


def test_special_markers_end_thinking_at_the_think_tag(embedded_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir)
    tokenizer.add_tokens(["<think>", "</think>", "<causality>", "</causality>"], special_tokens=True)
    forcing = BudgetForcing(tokenizer, 0, markers="special", min_thinking_tokens=1000)
    trace = "<think>x<causality>A -> C</causality></think>A"
    written = decode_with(
        forcing, tokenizer, [], lambda done: script(tokenizer, trace)(strip_waits(tokenizer, done)), 20
    )
    assert "</causality>\nWait" in written and forcing.waits == [1]


def test_budget_forcing_runs_inside_generate_on_the_tiny_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    cfg = OmegaConf.create({"name": "budget", "max_new_tokens": 16, "min_thinking_tokens": 0, "max_thinking_tokens": 8,
                            "max_waits": 1, "wait": "\nWait", "temperature": None, "top_p": None})  # fmt: skip
    prompt = tokenizer("Does A cause C?", return_tensors="pt")
    kwargs = decoding.generate_kwargs(cfg, tokenizer, prompt["input_ids"].shape[1])
    out = model.generate(**prompt, **kwargs, pad_token_id=tokenizer.eos_token_id)
    generated = out[0, prompt["input_ids"].shape[1] :].tolist()
    assert generated[8:12] == ids(tokenizer, "\n<|im_start|>answer\n")  # a random model answers at the cap too


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"max_thinking_tokens": -1}, "decode.max_thinking_tokens=-1 must be a whole number >= 0"),
        ({"min_thinking_tokens": 600, "max_thinking_tokens": 500}, "min_thinking_tokens=600 is above"),
        ({"max_thinking_tokens": 900, "max_new_tokens": 900}, "leaves no room to answer"),
        ({"name": "vote", "samples": 1}, "decode=vote needs decode.samples >= 2"),
        ({"name": "vote", "samples": 4, "temperature": 0}, "decode.temperature=0 must be above 0"),
        ({"max_waits": None}, "decode=budget needs decode.max_waits"),
        ({"max_thinking_tokens": 0}, "decode.max_thinking_tokens=0 would answer at once"),
        ({"max_thinking_tokens": 512, "max_new_tokens": 520}, "give at least 544"),
        ({"name": "beam"}, "decode=beam is not a decoding; choose one of greedy, budget, vote"),
    ],
)
def test_bad_decode_settings_fail_in_one_line(overrides, message):
    cfg = OmegaConf.create({"name": "budget", "max_new_tokens": 640, "min_thinking_tokens": 256,
                            "max_thinking_tokens": 512, "max_waits": 2, "wait": "\nWait", "samples": None,
                            "temperature": None} | overrides)  # fmt: skip
    with pytest.raises(ClaireError, match=message):
        decoding.check(cfg)


def test_each_decode_option_passes_its_own_checks():
    from conftest import CONF
    from hydra import compose, initialize_config_dir

    for option in ("greedy", "budget", "vote"):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            decoding.check(compose("chat", overrides=[f"decode={option}"]).decode)


def test_a_causality_block_cut_by_the_cap_is_closed_before_the_answer(embedded_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir)
    tokenizer.add_tokens(["<think>", "</think>", "<causality>", "</causality>"], special_tokens=True)
    forcing = BudgetForcing(tokenizer, 0, markers="special", max_thinking_tokens=4)
    written = decode_with(forcing, tokenizer, [], script(tokenizer, "<think>x<causality>A -> C B -> D"), 9)
    assert written.startswith("<think>x<causality>A</causality>\n</think>\n")  # cut at 4 tokens, closed, answered


def test_every_end_of_turn_token_of_the_model_is_an_exit(tokenizer):
    generated = ids(tokenizer, "<|im_start|>think\nx\n<|im_start|>causality\nA -> C\n")
    forcing = BudgetForcing(tokenizer, 0, min_thinking_tokens=1000, eos_token_id=[7, 8])
    out = forcing(torch.tensor([generated]), torch.zeros(1, len(tokenizer)))
    assert out[0, 7] == out[0, 8] == -float("inf")  # e.g. Qwen's <|endoftext|> beside <|im_end|>
