"""method=grpo (issue 18): GRPO through claire.train on a tiny random model, in seconds, and the one-line refusals."""

import json
import subprocess
import sys

import pytest
from conftest import GSM8K, ROOT, compose_train, tiny_overrides

from claire import ClaireError
from claire.train import run
from claire.training import checks

# a seconds-long GRPO run: per step one prompt x 2 completions of up to 12 tokens, 2 steps, 2 eval prompts
GRPO = [
    "method=grpo",
    "method.num_generations=2",
    "method.max_completion_length=12",
    "trainer.per_device_train_batch_size=2",
    "trainer.per_device_eval_batch_size=2",
    "trainer.max_steps=2",
    "trainer.eval_steps=2",
    "trainer.save_steps=2",
    "data.max_train_rows=8",
    "data.max_eval_rows=2",
]


def read(path):
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def grpo_run(tiny_model_dir, tmp_path_factory):
    """A finished GRPO run of the tiny model on the embedded sample, from a fresh adapter."""
    out = tmp_path_factory.mktemp("grpo") / "run"
    run(compose_train(*tiny_overrides(tiny_model_dir, out, *GRPO)))
    return out


def test_a_grpo_run_leaves_a_self_describing_folder(grpo_run):
    names = {p.name for p in grpo_run.iterdir()}
    assert {"config.yaml", "manifest.json", "data_report.json", "metrics.json", "adapter", "samples.jsonl"} <= names
    metrics = read(grpo_run / "metrics.json")
    assert metrics["steps"] == 2 and "eval_reward" in metrics and metrics["trainable_params"] > 0
    curves = metrics["curves"]
    assert {"reward", "kl", "completions/clipped_ratio", "rewards/answer/mean", "rewards/format/mean"} <= set(curves)
    assert [step for step, _ in curves["reward"]] == [1, 2]  # one point per optimizer step
    assert read(grpo_run / "data_report.json")["kept"] == {"train": 8, "eval": 2}


def test_the_samples_hold_what_the_policy_wrote_with_its_rewards(grpo_run):
    rows = [json.loads(line) for line in (grpo_run / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 2  # 2 logged steps x (1 prompt x 2 completions)
    assert {row["step"] for row in rows} == {1, 2}
    assert all(row["question"].startswith("A causal system") and isinstance(row["completion"], str) for row in rows)
    assert all({"answer", "format"} <= set(row["rewards"]) for row in rows)


def test_grpo_continues_an_sft_runs_adapter(tiny_model_dir, tmp_path):
    sft_run = tmp_path / "sft"
    run(compose_train(*tiny_overrides(tiny_model_dir, sft_run, "trainer.max_steps=1", "data.max_train_rows=4")))
    out = tmp_path / "grpo"
    run(compose_train(*tiny_overrides(tiny_model_dir, out, *GRPO, f"init={sft_run}", "lora=r16")))
    assert read(out / "manifest.json")["init"]["run"] == str(sft_run.resolve())
    assert read(out / "adapter" / "adapter_config.json")["r"] == 8  # the SFT run's r8 adapter, not lora=r16's


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["init=/no/such/run"], "init=/no/such/run is not a finished Claire run folder"),
        (["+method.num_generation=4"], "method.num_generation is not a GRPOConfig option"),
        (["method.max_completion_length=4096"], "leaves no room for a prompt within trainer.max_length=1024"),
        (["+schedule.beta=0.1"], "method.beta is also set in trainer or schedule"),
    ],
)
def test_bad_grpo_settings_fail_in_one_line_before_any_model_loads(tmp_path, overrides, message):
    cfg = compose_train("method=grpo", *overrides, f"output_dir={tmp_path / 'run'}")
    with pytest.raises(ClaireError, match=message.replace("(", r"\(").replace(")", r"\)")):
        checks.check(cfg, str(tmp_path))


def test_init_needs_grpo_and_a_run_of_the_same_base(tiny_model_dir, tmp_path):
    saved = tmp_path / "sft"
    (saved / "adapter").mkdir(parents=True)
    (saved / "adapter" / "adapter_config.json").write_text("{}")
    (saved / "config.yaml").write_text("model: {name: qwen2.5-0.5b, id: Qwen/Qwen2.5-0.5B-Instruct, markers: native}\n")
    with pytest.raises(ClaireError, match="init= starts RL from an SFT run: add method=grpo"):
        checks.check(compose_train(f"init={saved}"), str(tmp_path))
    mismatch = r"was trained with model.id=Qwen/Qwen2.5-0.5B-Instruct.*use model=qwen2.5-0.5b"
    with pytest.raises(ClaireError, match=mismatch):
        checks.check(compose_train("method=grpo", f"init={saved}"), str(tmp_path))


@pytest.mark.parametrize(("override", "shown"), [("method=ppo", "method/ppo"), ("reward=nope", "reward/nope")])
def test_an_unknown_method_or_reward_lists_the_choices(override, shown):
    done = subprocess.run(
        [sys.executable, "-m", "claire.train", override, "--cfg", "job"], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 1 and f"Could not find '{shown}'" in done.stderr and "Available options" in done.stderr


def test_the_gpu_presets_compose_and_pass_the_checks_with_grpo(tmp_path):
    for trainer in ("a100", "l4"):
        cfg = compose_train("method=grpo", "model=1.5b", f"trainer={trainer}", f"output_dir={tmp_path / trainer}")
        args = checks.check(cfg, str(tmp_path))["GRPOConfig"]
        assert args["num_generations"] == 8 and "max_length" not in args


def test_claire_evaluate_scores_a_grpo_run_as_it_scores_an_sft_run(grpo_run, tmp_path):
    pytest.importorskip("lm_eval")
    from conftest import compose_evaluate

    from claire import evaluate

    overrides = [f"run={grpo_run}", f"output_dir={tmp_path / 'eval'}", "tasks=[claire_causal]", "limit=2"]
    overrides += ["threads=1", "gen_kwargs.max_gen_toks=8", "backend.batch_size=2", "backend.dtype=float32"]
    evaluate.run(compose_evaluate(*overrides))
    tuned = read(tmp_path / "eval" / "tuned" / "results.json")
    assert tuned["config"]["model_args"]["peft"] == str(grpo_run / "adapter") and "claire_causal" in tuned["results"]


def test_a_grpo_run_resumes_from_its_checkpoint(tiny_model_dir, tmp_path):
    import shutil

    out = tmp_path / "run"
    overrides = tiny_overrides(tiny_model_dir, out, *GRPO, "trainer.save_steps=1")
    run(compose_train(*overrides))
    (out / "metrics.json").unlink()  # as if it had been killed after its first checkpoint
    shutil.rmtree(out / "checkpoints" / "checkpoint-2")
    run(compose_train(*overrides, "resume=true"))
    metrics = read(out / "metrics.json")
    assert metrics["steps"] == 2 and [step for step, _ in metrics["curves"]["reward"]] == [1, 2]


def test_generation_uses_vllm_where_a_gpu_and_vllm_are_there(monkeypatch, tmp_path):
    import importlib.util

    from claire import machine

    assert compose_train("method=grpo").method.use_vllm is False  # this machine: no GPU, no vLLM
    monkeypatch.setattr(machine, "DRIVER_FILES", (str(tmp_path), str(tmp_path)))  # a driver file that exists
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())  # and vLLM installed
    assert compose_train("method=grpo").method.use_vllm is True


@pytest.mark.skipif(not GSM8K.exists(), reason=f"{GSM8K} is absent")
def test_gsm8k_is_rl_data_with_a_stable_held_out_share_of_train(tmp_path):
    from claire import datafiles
    from claire.training import preprocess

    cfg = compose_train("method=grpo", "reward=gsm8k", "data=gsm8k", f"data.path={GSM8K}", f"output_dir={tmp_path}")
    checks.check(cfg, str(tmp_path))
    raw = datafiles.load_raw(cfg.data, datafiles.fields(cfg.data, "grpo"))
    total = len(raw["train"]) + len(raw["eval"])
    assert total == 7473 and 0.04 < len(raw["eval"]) / total < 0.06  # GSM8K's train split alone; test never read
    assert set(raw["eval"]["question"]).isdisjoint(raw["train"]["question"])
    assert datafiles.load_raw(cfg.data, ("question", "answer"))["eval"]["question"] == raw["eval"]["question"]
    rows, dropped = preprocess.prepare_prompts(raw["eval"].select(range(3)), cfg.data)
    assert all(row["answer"].lstrip("-").replace(",", "").isdigit() for row in rows) and not dropped
    with pytest.raises(ClaireError, match="data=gsm8k holds no traces"):
        checks.check(compose_train("data=gsm8k", f"data.path={GSM8K}"), str(tmp_path))


def test_the_dry_run_says_what_its_estimate_leaves_out_under_grpo(capsys, tmp_path):
    from claire.training import dry_run

    dry_run.run(compose_train("method=grpo", "model=0.5b", f"output_dir={tmp_path}"))
    assert "method=grpo: this is the training step's estimate; generation adds its KV cache" in capsys.readouterr().out


def test_claire_report_reads_a_grpo_run_folder(grpo_run, tmp_path):
    import shutil

    from hydra import compose, initialize_config_dir

    from claire import report

    shutil.copytree(grpo_run, tmp_path / "runs" / "tiny-grpo" / "2026-12-04_00-00-00")
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("report", overrides=[f"runs=[{tmp_path / 'runs'}]", f"output_dir={tmp_path / 'out'}"])
    out = report.run(cfg)
    page = (out / "report.md").read_text()
    assert "tiny" in page and f"{read(grpo_run / 'metrics.json')['trainable_params']:,}" in page
    curves = [name for name in page.split("(") if name.startswith("reward-")]
    assert curves and (out / curves[0].split(")")[0]).stat().st_size > 0  # the reward curve, drawn from the run


@pytest.fixture
def tiny_trainer(tiny_model_dir, tmp_path):
    """A ClaireGRPOTrainer over the tiny model with a fresh LoRA adapter whose B matrices are not zero."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig

    from claire.training.grpo import ClaireGRPOTrainer

    torch.manual_seed(0)
    args = GRPOConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=2,
        num_generations=2,
        max_completion_length=8,
        use_cpu=True,
        report_to=[],
        bf16=False,
    )
    trainer = ClaireGRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32),
        reward_funcs=lambda completions, **_: [float(len(c)) for c in completions],
        args=args,
        train_dataset=Dataset.from_list([{"prompt": "Does rain cause wet grass?"}] * 4),
        processing_class=AutoTokenizer.from_pretrained(tiny_model_dir),
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    for name, parameter in trainer.model.named_parameters():
        if "lora_B" in name:
            parameter.data.normal_(0, 0.1)
    return trainer


def test_generation_decodes_from_the_merged_adapter_and_leaves_the_base_weights_bit_for_bit(tiny_trainer):
    import torch

    from claire.training.grpo import merged_adapter

    model = tiny_trainer.model.eval()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    ids = torch.randint(0, model.config.vocab_size, (2, 10))
    with torch.no_grad():
        with model.disable_adapter():
            base = model(input_ids=ids).logits
        unmerged = model(input_ids=ids).logits
        with merged_adapter(model):
            merged = model(input_ids=ids).logits
        after = model(input_ids=ids).logits
    assert not torch.allclose(unmerged, base, atol=1e-3)  # the adapter changes the policy...
    assert torch.allclose(merged, unmerged, atol=1e-5)  # ...and merged it is the same policy, a matmul a layer fewer
    assert torch.equal(after, unmerged)  # the adapter is unmerged again: training goes on from the same weights
    assert all(torch.equal(before[name], p) for name, p in model.named_parameters())

    from peft.tuners.lora import LoraLayer

    layer = next(m for m in model.modules() if isinstance(m, LoraLayer))
    seen = []
    layer.register_forward_pre_hook(lambda module, _: seen.append(module.merged))
    tiny_trainer._generate_single_turn(torch.randint(0, 100, (2, 5)).tolist(), None, {}, 2)
    assert seen and all(seen)  # every decoding step ran on merged weights
    assert all(torch.equal(before[name], p) for name, p in model.named_parameters())


def test_completion_log_probs_match_trls_fused_head_on_a_cpu(tiny_trainer):
    import torch
    from trl import GRPOTrainer

    ids = torch.randint(0, tiny_trainer.model.config.vocab_size, (4, 12))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # a left-padded prompt
    claire = tiny_trainer._get_per_token_logps_and_entropies(
        tiny_trainer.model, ids, mask, 5, batch_size=3, compute_entropy=True
    )
    trl = GRPOTrainer._get_per_token_logps_and_entropies(
        tiny_trainer, tiny_trainer.model, ids, mask, 5, batch_size=3, compute_entropy=True
    )
    assert claire[0].shape == trl[0].shape == (4, 5)
    assert torch.allclose(claire[0], trl[0], atol=5e-5) and torch.allclose(claire[1], trl[1], atol=5e-5)
    claire[0].sum().backward()  # the policy gradient flows through Claire's path into the adapter
    adapter = [p for name, p in tiny_trainer.model.named_parameters() if "lora" in name]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in adapter)


def test_claire_reproduce_reruns_a_grpo_run_identically(grpo_run, tmp_path):
    import os

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    again = tmp_path / "again"
    command = [sys.executable, "-m", "claire.reproduce", str(grpo_run), "--output-dir", str(again)]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]  # 0: every number identical
    compared = {row["key"] for row in read(again / "reproduction.json")["compared"]}
    assert {"eval_reward", "history.reward@1", "history.reward@2", "history.kl@2"} <= compared
