"""The OmegaConf resolvers Claire's configs use (`${claire_run_dir:...}` and friends), registered by each command."""

from typing import Any

from omegaconf import OmegaConf

from claire.machine import if_cpu_bf16, if_vllm
from claire.run_folders import eval_dir, run_dir


def lora_tag(r: Any) -> str:
    """Resolver for run names: 'r64', or 'full' without an adapter."""
    return f"r{r}" if r else "full"


def method_tag(method: str) -> str:
    """Resolver for run names: nothing for SFT (the report's runs keep their names), '-grpo' for the others."""
    return "" if method == "sft" else f"-{method}"


def register() -> None:
    """Make the resolvers of conf/ known to OmegaConf (idempotent)."""
    OmegaConf.register_new_resolver("claire_if_cpu_bf16", if_cpu_bf16, replace=True)
    OmegaConf.register_new_resolver("claire_if_vllm", if_vllm, replace=True)
    OmegaConf.register_new_resolver("claire_run_dir", run_dir, use_cache=True, replace=True)
    OmegaConf.register_new_resolver("claire_lora_tag", lora_tag, replace=True)
    OmegaConf.register_new_resolver("claire_method_tag", method_tag, replace=True)
    OmegaConf.register_new_resolver("claire_eval_dir", eval_dir, use_cache=True, replace=True)
