"""Config checks that run in about a second, before any model or data loads.

The libraries' own classes (trl.SFTConfig, peft.LoraConfig, transformers.BitsAndBytesConfig) are the schema:
their fields, types and choices are read from the classes once per library version and cached as JSON,
because importing them takes ~6 s on a small CPU; the real objects are then built from the same values.
"""

import dataclasses
import enum
import importlib
import importlib.metadata
import importlib.util
import inspect
import json
import os
import types
import typing
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from claire import ClaireError, cache_root, datafiles
from claire.machine import Gpu
from claire.traces import MARKER_STYLES

DTYPES = ("bfloat16", "float16", "float32")
# transformers' attention implementations (its ALL_ATTENTION_FUNCTIONS and "eager"; importing it takes seconds)
ATTENTION = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flash_attention_4", "flex_attention")
CLASSES = {
    "SFTConfig": ("trl", "trl"),
    "GRPOConfig": ("trl", "trl"),
    "LoraConfig": ("peft", "peft"),
    "BitsAndBytesConfig": ("transformers", "transformers"),
}


def schema(name: str) -> dict[str, dict]:
    """{field: {"kinds": [...], "choices": [...]}} of a library class, cached per library version."""
    module, package = CLASSES[name]
    path = cache_root() / "schemas" / f"{name}-{importlib.metadata.version(package)}.json"
    if path.exists():
        return json.loads(path.read_text())
    cls = getattr(importlib.import_module(module), name)
    fields = _fields(cls)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(fields, indent=1, sort_keys=True))
    return fields


def _fields(cls: type) -> dict[str, dict]:
    """Field kinds and choices from a class's __init__ parameters, dataclass fields and annotations."""
    params = inspect.signature(cls.__init__).parameters
    hints = {**_hints(cls.__init__), **_hints(cls)}
    meta = {k: None for k, p in params.items() if k != "self" and p.kind is p.POSITIONAL_OR_KEYWORD}
    if dataclasses.is_dataclass(cls):
        meta |= {f.name: f.metadata.get("choices") for f in dataclasses.fields(cls) if f.init}
    fields = {}
    for name, choices in meta.items():
        kinds, enum_choices = _kinds(hints.get(name, Any))
        choices = choices or enum_choices
        fields[name] = {"kinds": sorted(kinds), "choices": [str(c) for c in choices] if choices else None}
    return fields


def _hints(obj: Any) -> dict[str, Any]:
    """Resolved annotations, or none where a forward reference cannot be resolved (those fields accept any)."""
    try:
        return typing.get_type_hints(obj)
    except (NameError, TypeError):
        return {}


def _kinds(hint: Any) -> tuple[set[str], list | None]:
    """Flatten an annotation into kind names ("int", "str", "none", "any", ...) and enum/Literal choices."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        kinds, choices = set(), None
        for arg in typing.get_args(hint):
            arg_kinds, arg_choices = _kinds(arg)
            kinds |= arg_kinds
            choices = choices or arg_choices
        return kinds, choices
    if typing.get_origin(hint) is typing.Literal:
        return {"any"}, list(typing.get_args(hint))
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return {"str"}, [e.value for e in hint]
    origin = typing.get_origin(hint) or hint
    names = {int: "int", float: "float", bool: "bool", str: "str", list: "list", tuple: "list", set: "list"}
    names |= {dict: "dict", type(None): "none"}
    return {names.get(origin, "any")}, None


def _fits(value: Any, kinds: list[str]) -> bool:
    """Whether a config value has one of the kinds a field accepts."""
    checks = {
        "any": lambda v: True,
        "none": lambda v: v is None,
        "bool": lambda v: isinstance(v, bool),
        "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "float": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        "str": lambda v: isinstance(v, str),
        "list": lambda v: isinstance(v, list | tuple),
        "dict": lambda v: isinstance(v, dict),
    }
    return any(checks[kind](value) for kind in kinds)


def check_keys(name: str, group: str, values: dict[str, Any]) -> None:
    """Each key must be a field of the library class, of the field's type, and one of its choices."""
    fields = schema(name)
    for key, value in values.items():
        if key not in fields:
            close = [f for f in fields if key.split("_")[0] in f][:8] or sorted(fields)[:8]
            raise ClaireError(f"{group}.{key} is not a {name} option; close ones: {close}")
        kinds, choices = fields[key]["kinds"], fields[key]["choices"]
        if not _fits(value, kinds):
            raise ClaireError(f"{group}.{key}={value!r} has the wrong type; {name} expects {' or '.join(kinds)}")
        if choices and value is not None and value not in choices:
            raise ClaireError(f"{group}.{key}={value!r} is not allowed; choose one of {choices}")


def build(name: str, group: str, values: dict[str, Any]) -> Any:
    """The library object from checked values; its own validation errors become one line."""
    module, _ = CLASSES[name]
    cls = getattr(importlib.import_module(module), name)
    try:
        return cls(**values)
    except (ValueError, TypeError, ImportError) as error:
        reason = str(error).strip().splitlines()[0]
        raise ClaireError(f"{group}: {reason}") from error


def positive(group: str, key: str, value: Any) -> None:
    """Raise unless value is a number above zero."""
    if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
        raise ClaireError(f"{group}.{key}={value!r} must be a number above 0")


def one_of(key: str, value: Any, allowed: tuple) -> None:
    """Raise unless value is one of allowed."""
    if value not in allowed:
        raise ClaireError(f"{key}={value!r} is not allowed; choose one of {list(allowed)}")


def check_model(cfg: DictConfig) -> None:
    """Model keys that no library checks before loading weights."""
    one_of("model.dtype", cfg.model.dtype, DTYPES)
    one_of("model.markers", cfg.model.markers, MARKER_STYLES)
    attention = cfg.model.attn_implementation
    if attention is not None and "/" not in str(attention):  # org/name: a kernel from the hub, checked on load
        one_of("model.attn_implementation", attention, ATTENTION)


# the trl config class of each training method; its fields are the schema of the trainer, schedule and method keys
METHODS = {"sft": "SFTConfig", "grpo": "GRPOConfig"}


def method_class(cfg: DictConfig) -> str:
    """The trl config class of cfg.method (one line naming the methods if it is none of them)."""
    one_of("method", cfg.method.name, tuple(METHODS))
    return METHODS[cfg.method.name]


def trainer_values(cfg: DictConfig, output_dir: str) -> dict[str, Any]:
    """SFTConfig (or GRPOConfig) keyword arguments from the trainer, schedule, method and tracking groups, checked."""
    name = method_class(cfg)
    trainer = OmegaConf.to_container(cfg.trainer, resolve=True)
    schedule = OmegaConf.to_container(cfg.schedule, resolve=True)
    method = {k: v for k, v in OmegaConf.to_container(cfg.method, resolve=True).items() if k != "name"}
    for key in set(trainer) & set(schedule):
        raise ClaireError(f"trainer.{key} and schedule.{key} both set; keep it in schedule")
    for key in (set(trainer) | set(schedule)) & set(method):
        raise ClaireError(f"method.{key} is also set in trainer or schedule; keep it in one place")
    # max_length is SFTConfig's; under RL it bounds prompt + completion in data preparation
    max_length = trainer["max_length"] if name == "SFTConfig" else trainer.pop("max_length")
    check_keys(name, "trainer", trainer)
    check_keys(name, "schedule", schedule)
    check_keys(name, "method", method)
    positive("schedule", "learning_rate", schedule.get("learning_rate"))
    for key in ("per_device_train_batch_size", "gradient_accumulation_steps"):
        positive("trainer", key, trainer.get(key))
    positive("trainer", "max_length", max_length)
    if max_length < 32:
        raise ClaireError(f"trainer.max_length={max_length} is too short for any prompt; use >= 256")
    if name != "SFTConfig":
        check_rl(cfg, max_length)
    if trainer.get("max_steps", -1) <= 0:
        positive("trainer", "num_train_epochs", trainer.get("num_train_epochs"))
    if schedule.get("warmup_steps", 0) < 0:
        raise ClaireError(f"schedule.warmup_steps={schedule['warmup_steps']} must be >= 0 (a float < 1 is a share)")
    if cfg.get("keep_global_batch", True):  # configs saved before it existed kept 16 too
        trainer["gradient_accumulation_steps"] = shared_accumulation(trainer["gradient_accumulation_steps"])
    run = {"output_dir": output_dir, "seed": cfg.seed, "data_seed": cfg.seed, "run_name": cfg.run_name}
    run |= {"report_to": cfg.tracking.report_to}
    if name == "SFTConfig":
        run["completion_only_loss"] = True
    return {**trainer, **schedule, **method, **run}


def shared_accumulation(steps: int) -> int:
    """Gradient accumulation per process that keeps the global batch of one process across WORLD_SIZE of them."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if steps % world:
        raise ClaireError(
            f"trainer.gradient_accumulation_steps={steps} does not divide among {world} processes, so the global "
            f"batch cannot stay as configured; use a multiple of {world}, or keep_global_batch=false ({world}x larger)"
        )
    return steps // world


def check_rl(cfg: DictConfig, max_length: int) -> None:
    """method=grpo: its rewards, room for a completion within max_length, and the SFT run it continues."""
    if cfg.get("reward") is None:
        raise ClaireError("method=grpo needs rewards: reward=causal or reward=gsm8k")
    from claire.training import rewards

    rewards.check(cfg.reward)
    room = cfg.method.get("max_completion_length", 256)
    if not whole(room, 1) or room >= max_length:
        raise ClaireError(
            f"method.max_completion_length={room!r} leaves no room for a prompt within trainer.max_length={max_length}"
        )
    check_init(cfg)


def check_init(cfg: DictConfig) -> None:
    """init=<run folder>: a finished Claire run whose adapter was trained on this run's base model."""
    if not cfg.get("init"):
        return
    folder = Path(str(cfg.init))
    if not (folder / "adapter" / "adapter_config.json").is_file() or not (folder / "config.yaml").is_file():
        raise ClaireError(
            f"init={cfg.init} is not a finished Claire run folder (no adapter/ or config.yaml); "
            "use init=experiments/<run_name>/<time> of an SFT run"
        )
    saved = OmegaConf.load(folder / "config.yaml").model
    for key in ("id", "gguf_file", "markers"):
        if saved.get(key) != cfg.model.get(key):
            raise ClaireError(
                f"init={cfg.init} was trained with model.{key}={saved.get(key)}, this run has "
                f"model.{key}={cfg.model.get(key)}; its adapter fits only its own base: use model={saved.name}"
            )


def lora_values(cfg: DictConfig) -> dict[str, Any] | None:
    """LoraConfig keyword arguments from the lora group (None for full fine-tuning), checked."""
    if cfg.lora is None:
        return None
    values = OmegaConf.to_container(cfg.lora, resolve=True)
    check_keys("LoraConfig", "lora", values)
    positive("lora", "r", values.get("r"))
    positive("lora", "lora_alpha", values.get("lora_alpha"))
    if not 0 <= values.get("lora_dropout", 0) < 1:
        raise ClaireError(f"lora.lora_dropout={values['lora_dropout']} must be in [0, 1)")
    return values


def quant_values(cfg: DictConfig) -> dict[str, Any] | None:
    """BitsAndBytesConfig keyword arguments from the quant group (None without quantization), checked."""
    if cfg.quant is None:
        return None
    values = OmegaConf.to_container(cfg.quant, resolve=True)
    check_keys("BitsAndBytesConfig", "quant", values)
    return values


# metrics.json keys a sweep may optimise besides eval_* and the eval group's task metrics (see sft.finish)
OBJECTIVES = ("train_loss", "tokens_per_second", "train_runtime_s", "wall_time_s", "tokens_seen", "steps", "epochs")
OBJECTIVES += ("trainable_params", "total_params", "merge_max_logit_diff")
# what trl's SFTTrainer reports at evaluation
EVAL_METRICS = ("eval_loss", "eval_mean_token_accuracy", "eval_entropy", "eval_num_tokens", "eval_runtime")
EVAL_METRICS += ("eval_samples_per_second", "eval_steps_per_second")
# what trl's GRPOTrainer reports at evaluation besides eval_loss; eval_rewards/<function>/mean per reward function
EVAL_METRICS += ("eval_reward", "eval_reward_std", "eval_kl", "eval_completions/mean_length")
EVAL_METRICS += ("eval_completions/clipped_ratio",)


def whole(value: Any, least: int) -> bool:
    """Whether value is a whole number (not a bool) of at least `least`."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def check_run(cfg: DictConfig) -> None:
    """Top-level keys: objective, direction, data share, hub push."""
    one_of("direction", cfg.direction, ("minimize", "maximize"))
    prefixes = (*(str(task) for task in cfg.eval.get("tasks") or []), "eval_rewards/")
    if cfg.objective not in (*EVAL_METRICS, *OBJECTIVES) and not str(cfg.objective).startswith(prefixes):
        raise ClaireError(
            f"objective={cfg.objective} is not a metric of metrics.json; choose one of {[*EVAL_METRICS, *OBJECTIVES]}"
        )
    fraction = cfg.data.max_drop_fraction
    if not isinstance(fraction, int | float) or isinstance(fraction, bool) or not 0 <= fraction <= 1:
        raise ClaireError(f"data.max_drop_fraction={fraction!r} must be a number in [0, 1]")
    if not whole(cfg.seed, 0):
        raise ClaireError(f"seed={cfg.seed!r} must be a whole number >= 0")
    if cfg.threads is not None and not whole(cfg.threads, 1):
        raise ClaireError(f"threads={cfg.threads!r} must be a whole number above 0, or null for all cores")
    for key in ("max_train_rows", "max_eval_rows"):
        value = cfg.data[key]
        if value is not None and not whole(value, 1):
            raise ClaireError(f"data.{key}={value!r} must be a whole number above 0, or null for all rows")
    name = Path(str(cfg.run_name))
    if name.is_absolute() or ".." in name.parts:
        raise ClaireError(
            f"run_name={cfg.run_name} would leave experiments/; use a plain name, or output_dir=<folder> for elsewhere"
        )
    if cfg.method.name == "sft" and cfg.data.response_field is None:
        raise ClaireError(
            f"data={cfg.data.name} holds no traces (data.response_field is null); train on it with method=grpo"
        )
    if cfg.get("init") and cfg.method.name == "sft":
        raise ClaireError("init= starts RL from an SFT run: add method=grpo (resume= goes on with an SFT run)")
    if cfg.push_to_hub and not cfg.hub_repo_id:
        raise ClaireError("push_to_hub=true needs hub_repo_id=<user>/<repo> (and HF_TOKEN in the environment)")


def check(cfg: DictConfig, output_dir: str) -> dict[str, dict | None]:
    """All fast checks; returns the checked keyword arguments of the method's trl config (SFTConfig or GRPOConfig),
    LoraConfig and BitsAndBytesConfig, by class name."""
    check_run(cfg)
    check_model(cfg)
    datafiles.check_local(cfg.data, datafiles.fields(cfg.data, cfg.method.name))
    return {
        method_class(cfg): trainer_values(cfg, output_dir),
        "LoraConfig": lora_values(cfg),
        "BitsAndBytesConfig": quant_values(cfg),
    }


def check_machine(cfg: DictConfig, card: Gpu | None) -> None:
    """What the machine must offer the run: bitsandbytes and a GPU for quant, one GPU per process."""
    if cfg.quant is not None:
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ClaireError("quant=4bit/8bit needs bitsandbytes, which is not installed: pip install -e '.[gpu]'")
        if card is None:
            raise ClaireError("quant=4bit/8bit needs a CUDA GPU; use quant=none on this machine")
        if cfg.trainer.get("use_cpu"):
            raise ClaireError(
                "quant=4bit/8bit loads the weights on the GPU, but trainer=cpu trains on the CPU; "
                "use trainer=l4 or trainer=a100"
            )
    if card is not None and card.count > 1 and "WORLD_SIZE" not in os.environ:
        raise ClaireError(
            f"this process sees {card.count} GPUs, and one process on several would be wrapped in DataParallel, "
            f"which trl refuses; use one (CUDA_VISIBLE_DEVICES=0 python -m claire.train ...) or all "
            f"(torchrun --nproc_per_node={card.count} -m claire.train ...; docs/train.md, several GPUs)"
        )


def build_all(checked: dict[str, dict | None]) -> tuple[Any, Any, Any]:
    """The library objects (imports trl, peft, transformers)."""
    groups = {**dict.fromkeys(METHODS.values(), "trainer"), "LoraConfig": "lora", "BitsAndBytesConfig": "quant"}
    built = {n: build(n, groups[n], v) if v is not None else None for n, v in checked.items()}
    return built[trainer_class(checked)], built["LoraConfig"], built["BitsAndBytesConfig"]


def trainer_class(checked: dict[str, dict | None]) -> str:
    """Which trl config class the checked values are for (SFTConfig or GRPOConfig)."""
    return next(name for name in checked if name in METHODS.values())
