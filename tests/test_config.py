"""Every config file composes and passes the checks; bad config fails with one line, before torch loads."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CONF, ROOT, compose_evaluate, compose_generate, compose_train

from claire import ClaireError, checks, evaluate, generate, runs

GENERATE_GROUPS = {"source", "mix", "prompt", "api"}  # groups of conf/generate.yaml
EVALUATE_GROUPS = {"suite", "backend", "judge", "model"}  # groups of conf/evaluate.yaml (model is shared with train)
OWN = {"hydra", *GENERATE_GROUPS, *EVALUATE_GROUPS - {"model"}}
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name not in OWN)  # the rest belong to train
OPTIONS = [(g, f.stem) for g in GROUPS for f in sorted((CONF / g).glob("*.yaml"))]
GENERATE_OPTIONS = [(g, f.stem) for g in sorted(GENERATE_GROUPS) for f in sorted((CONF / g).glob("*.yaml"))]
EVALUATE_OPTIONS = [(g, f.stem) for g in sorted(EVALUATE_GROUPS) for f in sorted((CONF / g).glob("*.yaml"))]


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m claire.train ARGS` in a fresh process."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "claire.train", *args], capture_output=True, text=True, cwd=ROOT, env=full_env
    )


@pytest.mark.parametrize(("group", "option"), GENERATE_OPTIONS)
def test_each_generate_option_composes_and_passes_checks(group, option, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    cfg = compose_generate(f"{group}={option}", f"out={tmp_path}")
    if cfg.source == "causal":
        generate.check(cfg)
    else:
        assert generate.check_api(cfg) is not None  # every teacher has a price (0 for local servers)
        assert sum(generate.allocate(cfg.mix.train + cfg.mix.eval, dict(cfg.mix.weights), {}.fromkeys(
            cfg.mix.weights, 10**6)).values()) == cfg.mix.train + cfg.mix.eval  # fmt: skip


@pytest.mark.parametrize(("group", "option"), EVALUATE_OPTIONS)
def test_each_evaluate_option_composes_and_passes_checks(group, option, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    cfg = compose_evaluate(f"{group}={option}", f"output_dir={tmp_path}")
    if cfg.backend.name == "api" and cfg.tasks is None:
        cfg.suite.tasks = ["claire_gsm8k_chat"]  # chat completions score generative tasks only (tested below)
    names, _ = evaluate.check(cfg)
    assert names == list(cfg.suite.tasks)


def test_generate_defaults_are_the_reports_method():
    cfg = compose_generate()
    assert (cfg.source, cfg.api.model, cfg.mix.train, cfg.mix.eval) == ("api", "gpt-4.1", 12105, 1214)
    assert compose_generate("mix=v1").mix.train == 4323 and compose_generate("mix=v1").out == "data/claire-v1"
    assert set(cfg.sources) == {"gsm8k", "gpqa", "numina-math", "olympic-arena", "aime", "causal"}
    assert all(cfg.sources[name].split != "test" for name in cfg.sources)  # only training splits are drawn


def test_every_group_has_options():
    assert set(GROUPS) >= {"model", "lora", "schedule", "data", "trainer", "quant", "tracking", "experiment", "eval"}
    assert len(OPTIONS) >= 30


@pytest.mark.parametrize(("group", "option"), OPTIONS)
def test_each_option_composes_and_passes_checks(group, option, tmp_path):
    cfg = compose_train(f"{group}={option}", f"output_dir={tmp_path}")
    checked = checks.check(cfg, str(tmp_path))
    assert checked["SFTConfig"]["output_dir"] == str(tmp_path)
    if cfg.lora is not None:
        assert checked["LoraConfig"]["r"] > 0


@pytest.mark.parametrize("option", [o for g, o in OPTIONS if g in ("trainer", "lora", "schedule")])
def test_library_objects_build(option, tmp_path):
    group = next(g for g, o in OPTIONS if o == option)
    cfg = compose_train(f"{group}={option}", "trainer=cpu", f"output_dir={tmp_path}")
    args, lora, quant = checks.build_all(checks.check(cfg, str(tmp_path)))
    assert args.learning_rate == cfg.schedule.learning_rate
    assert (lora is None) == (cfg.lora is None) and quant is None


@pytest.mark.parametrize(
    ("size", "model_id", "r", "alpha", "data_rows"),
    [
        ("0.5b", "Qwen/Qwen2.5-0.5B-Instruct", 64, 128, 4323),
        ("1.5b", "Qwen/Qwen2.5-1.5B-Instruct", 64, 128, 4323),
        ("7b", "Qwen/Qwen2.5-7B-Instruct", 32, 64, 4323),
    ],
)
@pytest.mark.parametrize("version", ["v1", "v2"])
def test_experiments_are_the_reports_settings(size, model_id, r, alpha, data_rows, version):
    cfg = compose_train(f"experiment=claire-{size}-{version}")
    assert cfg.model.id == model_id and cfg.run_name == f"claire-{size}-{version}"
    assert (cfg.lora.r, cfg.lora.lora_alpha, cfg.lora.lora_dropout, cfg.lora.target_modules) == (
        r,
        alpha,
        0.05,
        "all-linear",
    )
    assert (cfg.schedule.learning_rate, cfg.schedule.lr_scheduler_type) == (3e-4, "cosine")
    assert (cfg.schedule.warmup_steps, cfg.schedule.weight_decay) == (0.05, 1e-4)
    t = cfg.trainer
    assert (t.per_device_train_batch_size, t.gradient_accumulation_steps, t.num_train_epochs) == (4, 4, 1)
    assert cfg.data.expected_rows.train == (4323 if version == "v1" else 12105)


def test_default_run_name_and_folder():
    cfg = compose_train()
    assert cfg.run_name == "smollm2-135m-r64-sample"
    assert cfg.output_dir.startswith("experiments/smollm2-135m-r64-sample/")
    assert compose_train("lora=none").run_name == "smollm2-135m-full-sample"


@pytest.mark.parametrize("native", [True, False])
def test_cpu_precision_follows_the_cpu(native, monkeypatch):
    # bf16 only where the CPU has it natively: emulated bf16 on AVX2-only CPUs is ~20x slower than float32
    monkeypatch.setattr(runs, "cpu_has_bf16", lambda: native)
    cfg = compose_train()
    assert cfg.trainer.bf16 is native
    assert cfg.model.dtype == ("bfloat16" if native else "float32")
    assert compose_train("trainer.bf16=false").trainer.bf16 is False  # an explicit choice wins


@pytest.mark.parametrize(
    ("flags", "native"), [("avx2 avx512f", False), ("avx2 avx512f avx512_bf16", True), ("amx_bf16 amx_tile", True)]
)
def test_cpu_bf16_reads_the_cpu_flags(flags, native, tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: fpu sse2 {flags}\n")
    assert runs.cpu_has_bf16(cpuinfo) is native
    assert runs.cpu_has_bf16(tmp_path / "absent") is False


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("lora.r=0", "lora.r=0 must be a number above 0"),
        ("lora.r=abc", "lora.r='abc' has the wrong type; LoraConfig expects int"),
        ("+lora.rank=2", "lora.rank is not a LoraConfig option"),
        ("schedule.learning_rate=0", "schedule.learning_rate=0 must be a number above 0"),
        ("schedule.lr_scheduler_type=foo", "schedule.lr_scheduler_type='foo' is not allowed; choose one of"),
        ("trainer.per_device_train_batch_size=abc", "has the wrong type; SFTConfig expects int"),
        ("+trainer.foo=1", "trainer.foo is not a SFTConfig option"),
        ("trainer.max_length=8", "trainer.max_length=8 is too short"),
        ("model.dtype=float8", "model.dtype='float8' is not allowed; choose one of"),
        ("lora.lora_dropout=1.5", r"lora.lora_dropout=1.5 must be in \[0, 1\)"),
        ("direction=up", "direction='up' is not allowed"),
        ("objective=nope", "objective=nope is not a metric of metrics.json; choose eval_<metric> or one of"),
        ("push_to_hub=true", "push_to_hub=true needs hub_repo_id"),
        ("trainer.train_sampling_strategy=longest", "is not allowed; choose one of"),
        ("data.max_eval_rows=0", "data.max_eval_rows=0 must be a whole number above 0, or null for all rows"),
        ("data.max_train_rows=1.5", "data.max_train_rows=1.5 must be a whole number above 0"),
    ],
)
def test_bad_config_message(override, message, tmp_path):
    cfg = compose_train(override, f"output_dir={tmp_path}")
    with pytest.raises(ClaireError, match=message) as error:
        checks.check(cfg, str(tmp_path))
    assert "\n" not in str(error.value)


def test_bad_config_fails_on_the_cli_before_torch_is_imported(tmp_path):
    probe = (
        "import sys, runpy; sys.argv = ['claire.train', 'lora.r=0', 'hydra.run.dir=" + str(tmp_path) + "']\n"
        "try:\n    runpy.run_module('claire.train', run_name='__main__')\n"
        "except SystemExit as e:\n    print('EXIT', e.code); print('TORCH', 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT)
    assert "EXIT claire.train: error: lora.r=0 must be a number above 0" in out.stdout
    assert "TORCH False" in out.stdout  # the checks ran before any heavy import: ~1 s, not ~6 s


def test_unknown_group_option_lists_the_choices():
    out = cli("model=13b")
    assert out.returncode != 0
    assert "Could not find 'model/13b'" in out.stderr and "smollm2-135m" in out.stderr


def test_help_lists_groups_and_options():
    out = cli("--help")
    assert out.returncode == 0
    for line in ("model: 0.5b, 1.5b, 7b, llama-3.1-8b, llama-3.2-1b, smollm2-135m", "lora: none, r16, r32, r64, r8"):
        assert line in out.stdout
    assert "experiment: claire-0.5b-v1" in out.stdout


def test_7b_composes_and_prints():
    out = cli("model=7b", "lora=r32", "--cfg", "job")
    assert out.returncode == 0, out.stderr
    assert "id: Qwen/Qwen2.5-7B-Instruct" in out.stdout and "r: 32" in out.stdout and "lora_alpha: 64" in out.stdout


def test_unreachable_hub_fails_in_one_line(tmp_path):
    out = cli("model=7b", "lora=r32", f"hydra.run.dir={tmp_path}", env={"HF_HUB_OFFLINE": "1"})
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("claire.train: error: could not load model.id=Qwen/Qwen2.5-7B-Instruct")
    assert "pass model.id=DIR" in last
    assert not (Path(tmp_path) / "metrics.json").exists()


def test_secrets_are_masked_and_names_of_tokens_kept():
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(
        {"hf_token": "hf_abc", "token": "t", "api_key": "sk-1", "password": "p", "client_secret": "s",
         "model": {"end_token": "<|im_end|>", "key_env": "OPENAI_API_KEY"}, "api": {"max_tokens": 5}}
    )  # fmt: skip
    shown = runs.resolved(cfg)
    assert [shown[k] for k in ("hf_token", "token", "api_key", "password", "client_secret")] == ["***"] * 5
    assert (
        shown["model"] == {"end_token": "<|im_end|>", "key_env": "OPENAI_API_KEY"} and shown["api"]["max_tokens"] == 5
    )
