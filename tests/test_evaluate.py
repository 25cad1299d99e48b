"""claire.evaluate: checks before loading, base vs fine-tuned with identical settings, the result folder."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import GSM8K, ROOT, compose_evaluate
from omegaconf import OmegaConf

from claire import ClaireError, evaluate
from claire.evaluation import harness

pytest.importorskip("lm_eval")


def read(path):
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    """A finished tiny claire.train run folder."""
    from conftest import compose_train, tiny_overrides

    from claire.train import run

    out = tmp_path_factory.mktemp("trained") / "run"
    run(compose_train(*tiny_overrides(tiny_model_dir, out)))
    return out


def tiny_eval(run_dir, out, *extra):
    """A seconds-long evaluation of a tiny run: 2 causal items, 8 new tokens, batch 2, one thread."""
    overrides = [f"run={run_dir}", f"output_dir={out}", "tasks=[claire_causal]", "limit=2", "threads=1"]
    overrides += ["gen_kwargs.max_gen_toks=8", "backend.batch_size=2", "backend.dtype=float32", *extra]
    return compose_evaluate(*overrides)


@pytest.fixture(scope="module")
def evaluated(trained, tmp_path_factory):
    """The tiny run evaluated, base and fine-tuned, through lm-eval's real hf backend."""
    out = tmp_path_factory.mktemp("evaluated") / "eval"
    objective = evaluate.run(tiny_eval(trained, out, "objective='tuned/claire_causal/acc,none'"))
    return out, objective


def test_base_and_tuned_are_evaluated_with_identical_settings(evaluated, trained):
    out, objective = evaluated
    base, tuned = read(out / "base" / "results.json"), read(out / "tuned" / "results.json")
    assert tuned["config"]["model_args"]["peft"] == str(trained / "adapter")
    assert "peft" not in base["config"]["model_args"]
    same = ("n-shot", "n-samples")
    assert all(base[k] == tuned[k] for k in same)
    settings = ("generation_kwargs", "num_fewshot")
    assert base["configs"]["claire_causal"]["generation_kwargs"]["max_gen_toks"] == 8
    assert all(base["configs"]["claire_causal"].get(k) == tuned["configs"]["claire_causal"].get(k) for k in settings)
    for label in ("base", "tuned"):
        lines = (out / label / "samples_claire_causal.jsonl").read_text().splitlines()
        assert len(lines) == 2 and "resps" in json.loads(lines[0])
    assert objective == read(out / "metrics.json")["tuned/claire_causal/acc,none"]
    prompts = {label: [json.loads(line)["prompt_hash"] for line in (out / label / "samples_claire_causal.jsonl").open()]
               for label in ("base", "tuned")}  # fmt: skip
    assert prompts["base"] == prompts["tuned"] and read(out / "results.json")["prompt_mismatches"] == {
        "claire_causal": 0
    }


def test_results_rows_comparisons_and_format_failures(evaluated):
    out, _ = evaluated
    results = read(out / "results.json")
    rows = {(r["model"], r["metric"], r["filter"]): r for r in results["rows"]}
    assert {("base", "acc", "none"), ("tuned", "acc", "none"), ("tuned", "graph_f1", "none")} <= set(rows)
    row = rows[("tuned", "acc", "none")]
    assert (
        row["n"] == 2
        and row["apply_chat_template"] is True
        and row["seeds"]["fewshot_seed"] == 1234
        and row["lm_eval_version"]
    )
    assert row["generation_kwargs"]["max_gen_toks"] == 8
    acc = next(c for c in results["comparisons"] if c["metric"] == "acc")
    base_acc = [json.loads(line)["acc"] for line in (out / "base" / "samples_claire_causal.jsonl").open()]
    assert acc["n"] == 2 and acc["base"] == sum(base_acc) / 2 and acc["test"] == "McNemar"
    failures = {f["model"]: f for f in results["format_failures"]}
    assert failures["base"]["no_marker"] == 2 and failures["base"]["n"] == 2  # a random model writes no answer line
    assert failures["base"]["no_answer"] is None  # claire_causal scores answers itself, with no claire filter
    assert failures["tuned"]["runaway"] is not None
    summary = (out / "summary.md").read_text()
    assert "| Benchmark | Metric | n | Base | Claire | Difference [95% CI] | p (test) |" in summary
    assert "| claire_causal | acc (none) | 2 |" in summary and "## Format failures" in summary
    assert "(McNemar) |" in summary and "(sign test) |" in summary  # graph_f1 is graded
    shd = next(c for c in results["comparisons"] if c["metric"] == "graph_shd")
    assert shd["higher_is_better"] is False and shd["test"] == "sign test"
    manifest = read(out / "manifest.json")
    assert manifest["packages"]["lm_eval"] and manifest["data"]["tasks"] == ["claire_causal"]


def test_finished_results_are_never_overwritten(evaluated, trained):
    out, _ = evaluated
    before = (out / "results.json").read_bytes()
    with pytest.raises(ClaireError, match=r"already holds base and \d+ more; Claire writes only into a new or empty"):
        evaluate.run(tiny_eval(trained, out))
    assert (out / "results.json").read_bytes() == before


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["run=/nonexistent/run"], r"run=/nonexistent/run is not a claire.train run folder"),
        (["tasks=[claire_causl]"], r"task claire_causl is not an lm-eval task .*close ones: \['claire_causal'"),
        (["tasks=[]"], r"must be a non-empty list"),
        (["backend=api", "tasks=[claire_causal,arc_easy]"], r"backend=api cannot score \['arc_easy'\]"),
        (["data.gsm8k_test_file=/no/such.jsonl"], r"data.gsm8k_test_file=/no/such.jsonl does not exist"),
        (["merged=true"], r"merged=true needs run="),
        (["backend.name=tpu"], r"backend=tpu is not a backend; choose one of \['hf', 'vllm', 'api'\]"),
        (["objective=acc"], r"objective=acc is not a metrics.json key"),
    ],
)
def test_bad_input_fails_in_one_line_before_any_model_loads(overrides, message, tmp_path):
    cfg = compose_evaluate(f"output_dir={tmp_path / 'out'}", "tasks=[claire_causal]", *overrides)
    with pytest.raises(ClaireError, match=message):
        harness.check(cfg)
    assert not (tmp_path / "out").exists()


def test_a_run_without_its_adapter_is_refused(trained, tmp_path):
    broken = tmp_path / "run"
    broken.mkdir()
    (broken / "config.yaml").write_text((trained / "config.yaml").read_text())
    with pytest.raises(ClaireError, match=r"has no adapter/adapter_config.json; it has no adapter"):
        harness.check(compose_evaluate(f"run={broken}", f"output_dir={tmp_path / 'out'}"))
    with pytest.raises(ClaireError, match=r"has no merged/config.json; train with merge=true"):
        harness.check(compose_evaluate(f"run={trained}", "merged=true", f"output_dir={tmp_path / 'out'}"))


def test_a_run_brings_its_base_model_and_the_output_goes_inside_it(trained):
    cfg = compose_evaluate(f"run={trained}", "tasks=[claire_causal]")
    harness.check(cfg)
    assert cfg.model.name == "tiny" and cfg.model.id.endswith("tiny-llama0")
    assert cfg.output_dir.startswith(f"{trained}/eval/report-")


def test_backends_get_the_adapter_their_own_way(trained, monkeypatch):
    cfg = compose_evaluate(f"run={trained}", "backend=vllm", "tasks=[claire_causal]")
    harness.check(cfg)
    chosen = harness.subjects(cfg)
    assert chosen["base"][0] == "vllm" and "lora_local_path" not in chosen["base"][1]
    engine = ("enable_lora", "max_lora_rank", "dtype", "max_model_len", "gpu_memory_utilization", "seed")
    assert [chosen["base"][1][k] for k in engine] == [chosen["tuned"][1][k] for k in engine]  # the same engine
    assert chosen["tuned"][1]["lora_local_path"] == f"{trained}/adapter" and chosen["tuned"][1]["max_lora_rank"] == 8
    monkeypatch.setenv("MY_SERVER_KEY", "sk-local")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    cfg = compose_evaluate(f"run={trained}", "backend=api", "backend.key_env=MY_SERVER_KEY", "tasks=[claire_causal]")
    harness.check(cfg)
    lm, args = harness.subjects(cfg)["tuned"]
    assert lm == "local-chat-completions" and args["model"] == "claire"
    assert args["base_url"] == "http://127.0.0.1:8000/v1/chat/completions" and "sk-local" not in json.dumps(args)
    with harness.server_key(cfg.backend):
        assert os.environ["OPENAI_API_KEY"] == "sk-local"  # where lm-eval's chat backend reads it, while it runs
    assert "OPENAI_API_KEY" not in os.environ
    monkeypatch.delenv("MY_SERVER_KEY")
    with pytest.raises(ClaireError, match="backend.key_env=MY_SERVER_KEY is not set in the environment"):
        harness.check(cfg)


def test_cli_error_is_one_line(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "claire.evaluate", "tasks=[claire_causl]", f"output_dir={tmp_path / 'out'}"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith("claire.evaluate: error: task claire_causl is not")


def test_format_failures_count_missing_answers_and_outputs_cut_at_the_limit(tiny_model_dir):
    from transformers import AutoTokenizer

    from claire.evaluation import scoring

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    long = " ".join(["cause"] * 40)
    assert len(tokenizer(long, add_special_tokens=False)["input_ids"]) == 40
    outputs = [long, "think\nA -> B\nanswer\nyes", "<|im_start|>answer\n12", "It is 12, I think."]
    reads = ["[invalid]", "yes", "12", "[invalid]"]
    samples = [
        {"doc_id": i, "filter": f, "resps": [[text]], "filtered_resps": [read if f == "claire" else text]}
        for f in ("strict-match", "claire")
        for i, (text, read) in enumerate(zip(outputs, reads, strict=True))
    ]
    results = {
        "samples": {"t": samples},
        "configs": {"t": {"output_type": "generate_until", "generation_kwargs": {"max_gen_toks": 40}}},
        "config": {"model_args": {"pretrained": str(tiny_model_dir)}},
    }
    failures = scoring.format_failures(compose_evaluate(), "tuned", "t", results)
    assert failures == {"model": "tuned", "task": "t", "n": 4, "no_marker": 2, "no_answer": 2, "runaway": 1}


def served_reply(golds: dict[str, str]):
    """A scripted server playing three parts: the base model (writes `#### N`), the fine-tuned one (Claire format),
    and a literal-minded judge (equivalent when the output's last line, minus any '#### ', is the gold number)."""

    def reply(messages: list[dict], model: str) -> str:
        if messages[0]["role"] == "system" and "strict grader" in messages[0]["content"]:
            user = messages[-1]["content"]
            gold = user.split("<gold_answer>")[1].split("</gold_answer>")[0].split("####")[-1].strip()
            output = user.split("<model_output>")[1].split("</model_output>")[0].strip()
            right = output.splitlines()[-1].removeprefix("#### ").strip() == gold
            return json.dumps({"equivalent": right, "trace_score": 4 if "causality" in output else 1, "reason": "."})
        question = messages[-1]["content"]
        gold, doc = golds[question], list(golds).index(question)
        if doc == 3:
            return "I am not sure.\n#### 0" if model != "claire" else "<|im_start|>answer\n0"
        if model != "claire":
            return f"Step by step.\n#### {gold}"
        unit = " dollars" if doc == 2 else ""  # the reader reads the number; the literal judge does not
        return f"<|im_start|>think\n<|im_start|>causality\nA -> B\n<|im_start|>answer\n{gold}{unit}"

    return reply


def gsm8k_golds(n: int) -> dict[str, str]:
    """The first n GSM8K questions and their final numbers."""
    rows = [json.loads(line) for line in GSM8K.read_text().splitlines()[:n]]
    return {row["question"]: row["answer"].split("####")[-1].strip() for row in rows}


def api_eval(trained, models_url: str, judge_url: str, tmp_path, n: int):
    """claire_gsm8k_chat on n items through backend=api, judged by judge=local, writing to tmp_path/eval."""
    return compose_evaluate(
        f"run={trained}", "backend=api", f"backend.base_url={models_url}", "judge=local",
        f"judge.base_url={judge_url}", f"judge.cache_dir={tmp_path / 'judge'}", "tasks=[claire_gsm8k_chat]",
        f"limit={n}", f"data.gsm8k_test_file={GSM8K}", f"output_dir={tmp_path / 'eval'}",
    )  # fmt: skip


@pytest.mark.skipif(not GSM8K.exists(), reason="needs ../shared/data/gsm8k/train.jsonl")
def test_api_backend_with_the_judge_counts_false_wrong_and_disagreements(trained, tmp_path, monkeypatch):
    from scripted_server import ScriptedServer

    monkeypatch.setenv("OPENAI_API_KEY", "sk-real-openai-key")  # exported for a judge=openai: never for this server
    out = tmp_path / "eval"
    with ScriptedServer(reply=served_reply(gsm8k_golds(4))) as server:
        evaluate.run(api_eval(trained, server.url, server.url, tmp_path, 4))
        asked = server.counts["received"]
        sent = {request["authorization"] for request in server.requests}
    assert asked == 4 * 2 + 4 * 2  # each model once per item, the judge once per output
    assert not any("sk-real-openai-key" in (header or "") for header in sent)
    assert os.environ["OPENAI_API_KEY"] == "sk-real-openai-key"  # restored after the run
    metrics = read(out / "metrics.json")
    task = "claire_gsm8k_chat"
    assert metrics[f"base/{task}/exact_match,strict-match"] == 0.75
    assert metrics[f"tuned/{task}/exact_match,strict-match"] == 0.0  # the Claire format has no '####'
    assert metrics[f"tuned/{task}/exact_match,claire"] == 0.75
    assert metrics[f"tuned/{task}/judge_equivalent,judge"] == 0.5
    assert metrics[f"tuned/{task}/strict_wrong_claire_right"] == 3 and metrics[f"tuned/{task}/false_wrong"] == 2
    results = read(out / "results.json")
    assert [(d["model"], d["doc_id"], d["claire"], d["judge"]) for d in results["disagreements"]] == [
        ("tuned", 2, 1.0, 0.0)
    ]
    strict = next(c for c in results["comparisons"] if c["filter"] == "strict-match")
    assert strict["diff"] == -0.75 and not strict["significant"]  # 3 discordant items cannot reach p < 0.05
    verdicts = [json.loads(line) for line in (out / "tuned" / f"judge_{task}.jsonl").read_text().splitlines()]
    assert [v["equivalent"] for v in verdicts] == [True, True, False, False] and verdicts[0]["trace_score"] == 4
    summary = (out / "summary.md").read_text()
    assert "| Claire | claire_gsm8k_chat | 4 | 3 | 2 |" in summary and "disagreements.md" in summary
    assert "tuned · claire_gsm8k_chat · doc 2" not in (out / "disagreements.md").read_text()  # labelled as Claire
    assert "Claire · claire_gsm8k_chat · doc 2" in (out / "disagreements.md").read_text()


def test_bad_data_fails_before_any_model_loads(tmp_path, monkeypatch):
    from claire import models

    def no_loading(*_):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(models, "model_path", no_loading)
    (tmp_path / "bad.jsonl").write_text('{"text": "no question here"}\n')
    cfg = compose_evaluate(
        "tasks=[claire_gsm8k_chat]", f"data.gsm8k_test_file={tmp_path / 'bad.jsonl'}", f"output_dir={tmp_path / 'o'}"
    )
    with pytest.raises(ClaireError, match=r"gsm8k_test_file=.*bad.jsonl has no column \['answer', 'question'\]"):
        evaluate.run(cfg)
    assert not (tmp_path / "o").exists()


def test_vllm_refuses_an_adapter_with_trained_marker_embeddings(trained, tmp_path):
    import shutil

    run_dir = tmp_path / "special"
    shutil.copytree(trained / "adapter", run_dir / "adapter")
    config = (trained / "config.yaml").read_text().replace("markers: native", "markers: special")
    (run_dir / "config.yaml").write_text(config)
    with pytest.raises(ClaireError, match=r"vLLM's LoRA cannot load; evaluate its merged model"):
        harness.check(compose_evaluate(f"run={run_dir}", "backend=vllm", "tasks=[claire_causal]"))
    harness.check(compose_evaluate(f"run={run_dir}", "backend=hf", "tasks=[claire_causal]"))  # peft loads them


def test_runs_with_special_markers_decode_them_on_the_hf_backend(trained, tiny_model_dir, tmp_path):
    import shutil

    from lm_eval.models.huggingface import HFLM
    from transformers import AutoTokenizer

    from claire.evaluation.hf_model import ClaireHFLM
    from claire.traces import TRACE_TAGS

    run_dir = tmp_path / "special"
    shutil.copytree(trained / "adapter", run_dir / "adapter")
    (run_dir / "config.yaml").write_text((trained / "config.yaml").read_text().replace("native", "special"))
    cfg = compose_evaluate(f"run={run_dir}", "tasks=[claire_causal]")
    harness.check(cfg)
    assert {label: lm for label, (lm, _) in harness.subjects(cfg).items()} == {
        "base": "claire-hf",
        "tuned": "claire-hf",
    }
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.add_tokens(list(TRACE_TAGS), special_tokens=True)
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    ids = tokenizer("<think>\nA -> B</think>\nyes<|im_end|>", add_special_tokens=False)["input_ids"]
    args = {"pretrained": str(tiny_model_dir), "tokenizer": str(tmp_path / "tokenizer"), "device": "cpu"}
    assert ClaireHFLM(**args).tok_decode(ids) == "<think>\nA -> B</think>\nyes"  # markers kept, <|im_end|> dropped
    assert "<think>" not in HFLM(**args).tok_decode(ids)  # what stock decoding would have made of it


def test_the_hf_backend_evaluates_the_adapter_merged_into_the_weights(trained, tiny_model_dir):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from claire.evaluation.hf_model import ClaireHFLM

    adapter = str(trained / "adapter")
    lm = ClaireHFLM(pretrained=str(tiny_model_dir), peft=adapter, tokenizer=adapter, device="cpu", dtype="float32")
    assert not isinstance(lm.model, PeftModel)  # merged: no adapter matmuls left on each decoded token
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    ids = torch.randint(0, 1000, (2, 12))
    with torch.no_grad():
        expected = PeftModel.from_pretrained(base, adapter)(input_ids=ids).logits
        assert torch.allclose(lm.model(input_ids=ids).logits, expected, atol=1e-5)  # the same fine-tuned model


@pytest.mark.skipif(not GSM8K.exists(), reason="needs ../shared/data/gsm8k/train.jsonl")
def test_a_judge_that_refuses_does_not_lose_the_evaluation(trained, tmp_path):
    from scripted_server import ScriptedServer

    with ScriptedServer(reply=served_reply(gsm8k_golds(2))) as models, ScriptedServer(default="401") as judge:
        evaluate.run(api_eval(trained, models.url, judge.url, tmp_path, 2))
    results = read(tmp_path / "eval" / "results.json")
    assert "the judge API refused the request" in results["judge_error"]
    assert read(tmp_path / "eval" / "metrics.json")["tuned/claire_gsm8k_chat/exact_match,claire"] == 1.0
    assert "**The judge failed**" in (tmp_path / "eval" / "summary.md").read_text()


def test_a_full_fine_tune_is_evaluated_as_a_whole_model(trained, tiny_model_dir, tmp_path):
    import shutil

    run_dir = tmp_path / "full"
    shutil.copytree(tiny_model_dir, run_dir / "adapter")  # lora=none saves the whole model
    (run_dir / "config.yaml").write_text((trained / "config.yaml").read_text())
    cfg = compose_evaluate(f"run={run_dir}", "tasks=[claire_causal]")
    harness.check(cfg)
    lm, args = harness.subjects(cfg)["tuned"]
    assert args["pretrained"] == str(run_dir / "adapter") and "peft" not in args


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed here")
def test_vllm_missing_is_one_line_before_any_model_loads(tmp_path):
    cfg = compose_evaluate("backend=vllm", "tasks=[claire_causal]", f"output_dir={tmp_path / 'out'}")
    with pytest.raises(ClaireError, match=r"backend=vllm needs the package vllm, which is not installed; pip install"):
        evaluate.run(cfg)
    assert not (tmp_path / "out").exists()


def test_each_model_in_its_own_process_gives_the_same_results(evaluated, trained, tmp_path):
    out, _ = evaluated
    isolated = tmp_path / "isolated"
    evaluate.run(tiny_eval(trained, isolated, "objective='tuned/claire_causal/acc,none'", "backend.isolate=true"))
    for label in ("base", "tuned"):
        first = [json.loads(line)["resps"] for line in (out / label / "samples_claire_causal.jsonl").open()]
        again = [json.loads(line)["resps"] for line in (isolated / label / "samples_claire_causal.jsonl").open()]
        assert again == first
    assert read(isolated / "metrics.json") == read(out / "metrics.json")


def test_a_users_own_task_folder_sits_beside_claires(tmp_path):
    folder = tmp_path / "my_tasks"
    folder.mkdir()
    (folder / "items.jsonl").write_text(
        "".join(json.dumps({"q": f"{i} + 1 =", "a": str(i + 1)}) + "\n" for i in range(3))
    )
    (folder / "my_sums.yaml").write_text(
        "task: my_sums\ndataset_path: json\n"
        f"dataset_kwargs: {{data_files: {{test: {folder / 'items.jsonl'}}}}}\n"
        "test_split: test\noutput_type: generate_until\ndoc_to_text: '{{q}}'\ndoc_to_target: '{{a}}'\n"
        "generation_kwargs: {until: ['\\n'], max_gen_toks: 4}\nmetric_list: [{metric: exact_match}]\n"
    )
    out = f"output_dir={tmp_path / 'out'}"
    with pytest.raises(ClaireError, match="task my_sums is not an lm-eval task"):
        harness.check(compose_evaluate(out, "tasks=[my_sums]"))
    cfg = compose_evaluate(out, "tasks=[my_sums,claire_causal]", f"include_path=[{folder}]")
    names, manager = harness.check(cfg)
    assert names == ["my_sums", "claire_causal"]
    harness.load_tasks(cfg, names, manager)  # built, data included, before any model loads
    with pytest.raises(ClaireError, match=r"^include_path: /nowhere is not a folder"):
        harness.check(compose_evaluate(out, "tasks=[my_sums]", "include_path=[/nowhere]"))


def stock_gsm8k_folder(tmp_path, n: int):
    """A task folder overriding lm-eval's stock `gsm8k` with its own YAML and local data (the hub is out of reach)."""
    import lm_eval

    folder = tmp_path / "stock"
    folder.mkdir()
    rows = GSM8K.read_text().splitlines()
    (folder / "test.jsonl").write_text("\n".join(rows[:n]) + "\n")
    (folder / "train.jsonl").write_text("\n".join(rows[n : n + 20]) + "\n")
    stock = Path(lm_eval.__file__).parent / "tasks" / "gsm8k" / "gsm8k.yaml"
    files = {"train": str(folder / "train.jsonl"), "test": str(folder / "test.jsonl")}
    (folder / "gsm8k.yaml").write_text(
        f"include: {stock}\ntask: gsm8k\ndataset_path: json\ndataset_name: null\n"
        f"dataset_kwargs: {{data_files: {json.dumps(files)}}}\n"
    )
    return folder


@pytest.mark.skipif(not GSM8K.exists(), reason="needs ../shared/data/gsm8k/train.jsonl")
def test_stock_tasks_get_claires_reader_and_stop_at_the_models_end_token(tmp_path):
    from scripted_server import ScriptedServer

    golds = gsm8k_golds(3)

    def reply(messages: list[dict], model: str) -> str:
        gold = next(g for q, g in golds.items() if q in messages[-1]["content"])
        return f"<|im_start|>think\n<|im_start|>causality\nA -> B\n<|im_start|>answer\n{gold}"

    folder = stock_gsm8k_folder(tmp_path, 3)
    out = tmp_path / "eval"
    with ScriptedServer(reply=reply) as server:
        cfg = compose_evaluate(
            "backend=api", f"backend.base_url={server.url}", "tasks=[gsm8k]", f"include_path=[{folder}]",
            "model.end_token='<|eot_id|>'", "num_fewshot=0", f"output_dir={out}",
        )  # fmt: skip
        evaluate.run(cfg)
    metrics = read(out / "metrics.json")
    assert metrics["model/gsm8k/exact_match,strict-match"] == 0.0  # the Claire format has no '#### N'
    assert metrics["model/gsm8k/exact_match,claire"] == 1.0  # the `claire` row on a stock task
    assert metrics["model/gsm8k/strict_wrong_claire_right"] == 3
    config = read(out / "model" / "results.json")["configs"]["gsm8k"]
    assert config["generation_kwargs"]["until"] == ["Question:", "</s>", "<|im_end|>", "<|eot_id|>"]
    assert [f["name"] for f in config["filter_list"]] == ["strict-match", "flexible-extract", "claire"]


def test_end_token_stays_in_stop_sequences_a_user_gives(tmp_path):
    cfg = compose_evaluate("model.end_token='<|eot_id|>'", "tasks=[claire_causal]", f"output_dir={tmp_path}")
    names, manager = harness.check(cfg)
    (task,) = harness.load_tasks(cfg, names, manager)
    assert task.get_config("generation_kwargs")["until"][-1] == "<|eot_id|>"
    assert harness.with_end_token(["\n\n"], cfg) == ["\n\n", "<|eot_id|>"]
    assert harness.with_end_token(["<|eot_id|>"], cfg) == ["<|eot_id|>"]


@pytest.mark.skipif(not GSM8K.exists(), reason="needs ../shared/data/gsm8k/train.jsonl")
def test_claires_own_gsm8k_keeps_one_claire_filter_and_the_name_is_registered(tmp_path):
    from lm_eval.api.registry import get_filter

    from claire.evaluation.tasks.filters import ClaireAnswer

    cfg = compose_evaluate("tasks=[claire_gsm8k_chat]", f"data.gsm8k_test_file={GSM8K}", f"output_dir={tmp_path}")
    names, manager = harness.check(cfg)
    (task,) = harness.load_tasks(cfg, names, manager)
    assert [f["name"] for f in task.get_config("filter_list")].count("claire") == 1
    assert get_filter("claire") is ClaireAnswer  # `function: claire` in a user's own task YAML


def test_base_and_tuned_load_with_one_vocabulary(tiny_model_dir, tmp_path):
    """A padded vocabulary (more embedding rows than tokens, as Qwen2.5 has) is not shrunk for the adapter only."""
    import torch
    from lm_eval.api.registry import get_model
    from lm_eval.models.huggingface import HFLM
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import claire.evaluation.hf_model  # noqa: F401  (registers claire-hf, as an evaluation does)

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model.resize_token_embeddings(len(tokenizer) + 64)  # padded rows, as a hub model ships them
    padded = tmp_path / "padded"
    model.save_pretrained(padded)
    tokenizer.save_pretrained(padded)
    torch.manual_seed(0)
    adapter = get_peft_model(AutoModelForCausalLM.from_pretrained(padded), LoraConfig(r=2, target_modules="all-linear"))
    adapter.save_pretrained(tmp_path / "adapter")
    tokenizer.save_pretrained(tmp_path / "adapter")
    cfg = compose_evaluate(f"model.id={padded}", "backend.dtype=float32", f"output_dir={tmp_path / 'out'}")
    loaded = {}
    for label, peft in (("base", None), ("tuned", str(tmp_path / "adapter"))):
        lm, args = harness.model_args(cfg, str(padded), peft, None)
        loaded[label] = harness.vocabulary(get_model(lm).create_from_arg_obj(args, {"batch_size": 1}))
    rows = len(tokenizer) + 64
    assert loaded["base"] == loaded["tuned"] == {"embedding_rows": rows, "tokenizer_length": len(tokenizer)}
    stock = HFLM(
        pretrained=str(padded), peft=str(tmp_path / "adapter"), tokenizer=str(tmp_path / "adapter"), device="cpu"
    )
    assert harness.vocabulary(stock)["embedding_rows"] == len(tokenizer)  # what lm-eval's own peft path does


def test_results_record_each_models_vocabulary(evaluated):
    out, _ = evaluated
    vocabulary = read(out / "results.json")["vocabulary"]
    assert vocabulary["base"] == vocabulary["tuned"] and vocabulary["base"]["embedding_rows"] > 0
    assert read(out / "tuned" / "results.json")["vocabulary"] == vocabulary["tuned"]
    assert "vocabularies differ" not in (out / "summary.md").read_text()


def test_budget_forcing_scores_base_and_tuned_through_lm_eval_alike(trained, tmp_path):
    from claire.datafiles import read_samples

    out = tmp_path / "budget"
    budget = [
        "decode=budget",
        "decode.min_thinking_tokens=0",
        "decode.max_thinking_tokens=4",
        "decode.max_new_tokens=36",
    ]
    cfg = tiny_eval(trained, out, *budget, "gen_kwargs.max_gen_toks=null", "compare_base=false")
    harness.check(cfg)
    both = harness.subjects(OmegaConf.merge(cfg, {"compare_base": True}))
    assert both["base"][1]["max_thinking_tokens"] == both["tuned"][1]["max_thinking_tokens"] == 4  # alike
    evaluate.run(cfg)  # the tuned model through lm-eval (the base model goes the same way, without the adapter)
    results = read(out / "tuned" / "results.json")
    assert results["configs"]["claire_causal"]["generation_kwargs"]["max_gen_toks"] == 36  # decode's length
    assert results["decoding"]["decode"]["max_thinking_tokens"] == 4 and results["config"]["model_args"]["markers"]
    for row in read_samples(out / "tuned" / "samples_claire_causal.jsonl"):  # the answer marker forced at 4 tokens
        assert "\nanswer\n" in row["resps"][0][0], row["resps"][0][0]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["decode=budget", "backend=vllm"], "decode=budget runs on backend=hf"),
        (["decode=budget", "decode.max_waits=-2"], "decode.max_waits=-2 must be a whole number"),
        (["decode=budget", "gen_kwargs.max_gen_toks=520"], "leaves no room to answer within the generation length=520"),
    ],
)
def test_a_decode_the_backend_cannot_do_is_one_line(trained, tmp_path, overrides, message):
    with pytest.raises(ClaireError, match=message):
        harness.check(tiny_eval(trained, tmp_path / "out", *overrides))


def test_a_vote_samples_each_item_and_scores_the_majority_answer(trained, tmp_path):
    from claire.datafiles import read_samples

    out = tmp_path / "vote"
    evaluate.run(tiny_eval(trained, out, "decode=vote", "decode.samples=3", "compare_base=false"))
    results = read(out / "tuned" / "results.json")
    assert results["configs"]["claire_causal"]["repeats"] == 3
    assert results["configs"]["claire_causal"]["generation_kwargs"]["do_sample"] is True
    for row in read_samples(out / "tuned" / "samples_claire_causal.jsonl"):
        (samples,) = row["resps"]
        assert len(samples) == 3 and row["filtered_resps"][0] in samples  # the vote keeps one of the 3 samples


def test_the_causal_vote_keeps_the_completion_of_the_majority_answer():
    from claire.evaluation.tasks.filters import CausalVote

    samples = ["x\nanswer\nThe answer is B, A.", "y\nanswer\nC", "z\nanswer\nA and B"]
    assert CausalVote().apply([samples, ["no answer at all"]], [{}, {}]) == [samples[0], "no answer at all"]


@pytest.mark.skipif(not GSM8K.exists(), reason="needs ../shared/data/gsm8k/train.jsonl")
def test_a_vote_on_a_stock_style_task_votes_before_taking_one(tmp_path):
    cfg = compose_evaluate("tasks=[claire_gsm8k_chat]", "decode=vote", "decode.samples=4", f"output_dir={tmp_path}",
                           f"data.gsm8k_test_file={GSM8K}", f"data.gsm8k_train_file={GSM8K}")  # fmt: skip
    (task,) = harness.load_tasks(cfg, ["claire_gsm8k_chat"], harness.task_manager(cfg))
    assert task.get_config("repeats") == 4
    pipelines = {f.name: [type(make()).__name__ for make in f.filters] for f in task._filters}
    assert pipelines["claire"] == ["ClaireAnswer", "MajorityVoteFilter", "TakeFirstFilter"]
    assert pipelines["strict-match"] == ["RegexFilter", "MajorityVoteFilter", "TakeFirstFilter"]  # lm-eval's own
    (claire,) = [f for f in task._filters if f.name == "claire"]
    resps, docs = [["So.\nThe answer is 72", "The answer is 70", "The answer is $72.00"]], [{"answer": "#### 72"}]
    for make in claire.filters:
        resps = make().apply(resps, docs)
    assert list(resps) == ["72"]  # two of three samples say 72 (one as $72.00)


def test_a_vote_refuses_a_task_that_samples_already(tmp_path):
    cfg = compose_evaluate("tasks=[claire_causal_sampled]", "decode=vote", f"output_dir={tmp_path}")
    with pytest.raises(ClaireError, match="task claire_causal_sampled samples already"):
        harness.load_tasks(cfg, ["claire_causal_sampled"], harness.task_manager(cfg))
