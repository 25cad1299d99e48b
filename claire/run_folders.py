"""Run folders: where a run goes, and the files that make it self-describing."""

import importlib.metadata
import json
import os
import platform
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from claire import ClaireError

STARTED = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
# secret-looking keys (hf_token, api_key, ...), not the names of tokens (end_token, max_tokens)
SECRET_KEY = re.compile(r"secret|password|api_?key|^(?:hf_|hub_|auth_|access_|api_)?token$", re.IGNORECASE)
VERSIONED = ["claire", "torch", "transformers", "trl", "peft", "accelerate", "datasets", "hydra-core", "omegaconf"]


def interrupted_runs(root: Path) -> list[Path]:
    """Run folders under root with a checkpoint and no final metrics, newest first."""
    found = [p for p in root.glob("*") if any(p.glob("checkpoints/checkpoint-*")) and not (p / "metrics.json").exists()]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def run_dir(root: str, resume: Any) -> str:
    """Resolver for output_dir: a new timestamped folder, the newest interrupted run, or the folder given."""
    if isinstance(resume, str) and resume not in ("true", "false", "True", "False"):
        return resume
    if resume is True or resume in ("true", "True"):
        interrupted = interrupted_runs(Path(root))
        if interrupted:
            return str(interrupted[0])
    return f"{root}/{STARTED}"


def lora_tag(r: Any) -> str:
    """Resolver for run names: 'r64', or 'full' without an adapter."""
    return f"r{r}" if r else "full"


def cpu_has_bf16(cpuinfo_file: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX); without it torch emulates bf16 ~20x slower."""
    try:
        cpuinfo = cpuinfo_file.read_text()
    except OSError:
        return False
    return re.search(r"\b(avx512_bf16|amx_bf16)\b", cpuinfo) is not None


def if_cpu_bf16(native: Any, emulated: Any) -> Any:
    """Resolver for CPU presets: the first value on a CPU with native bf16, else the second."""
    return native if cpu_has_bf16() else emulated


def register_resolvers() -> None:
    """Make the resolvers of conf/train.yaml known to OmegaConf (idempotent)."""
    OmegaConf.register_new_resolver("claire_if_cpu_bf16", if_cpu_bf16, replace=True)
    OmegaConf.register_new_resolver("claire_run_dir", run_dir, use_cache=True, replace=True)
    OmegaConf.register_new_resolver("claire_lora_tag", lora_tag, replace=True)
    OmegaConf.register_new_resolver("claire_eval_dir", eval_dir, use_cache=True, replace=True)


def eval_dir(run: Any, model_name: str, suite: str) -> str:
    """Resolver for claire.evaluate's output_dir: inside the run folder evaluated, else under experiments/eval."""
    if run:
        return f"{run}/eval/{suite}-{STARTED}"
    return f"experiments/eval/{model_name}/{suite}-{STARTED}"


def check_run_dir(path: Path, cfg: DictConfig) -> str | None:
    """Refuse to overwrite a finished or interrupted run; return the checkpoint to resume from, if any."""
    checkpoints = sorted(path.glob("checkpoints/checkpoint-*"), key=lambda p: int(p.name.rsplit("-", 1)[1]))
    if (path / "metrics.json").exists():
        raise ClaireError(f"output_dir={path} already holds a finished run; choose another output_dir")
    if cfg.resume in (False, None, "false"):
        if checkpoints:
            raise ClaireError(
                f"output_dir={path} holds an interrupted run; pass resume=true to continue it or choose another"
            )
        return None
    if not checkpoints:
        raise ClaireError(
            f"resume={cfg.resume} but no interrupted run (a folder with checkpoints/ and no metrics.json) was "
            f"found at {path}; pass resume=<run folder> or resume=false"
        )
    saved = path / "config.yaml"
    if saved.exists():
        changed = config_differences(OmegaConf.load(saved), cfg)
        if changed:
            raise ClaireError(f"resume: the config differs from the interrupted run's at {changed}; undo those")
    return str(checkpoints[-1])


def config_differences(saved: DictConfig, cfg: DictConfig) -> list[str]:
    """Dotted keys whose values differ, ignoring where the run lives and how it was started."""
    flat_saved, flat_now = _flatten(OmegaConf.to_container(saved)), _flatten(resolved(cfg))
    ignored = {"resume", "output_dir", "dry_run"}
    keys = set(flat_saved) | set(flat_now)
    return sorted(k for k in keys if k.split(".")[0] not in ignored and flat_saved.get(k) != flat_now.get(k))


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix.rstrip("."): tree}
    return {k: v for key, value in tree.items() for k, v in _flatten(value, f"{prefix}{key}.").items()}


def resolved(cfg: DictConfig) -> dict:
    """The config as plain data with interpolations resolved and anything secret-looking masked."""
    return mask(OmegaConf.to_container(cfg, resolve=True))


def mask(tree: Any) -> Any:
    """Plain data with the values of secret-looking keys replaced by ***."""
    if isinstance(tree, dict):
        return {k: "***" if SECRET_KEY.search(str(k)) and v else mask(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [mask(v) for v in tree]
    return tree


def write_json(path: Path, payload: Any) -> None:
    """Write JSON atomically (temp file, fsync, rename)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2, default=str)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def git_state() -> dict[str, Any]:
    """Commit and dirty flag of the working tree the run started from (None outside git)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        status = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return {"commit": None, "dirty": None}
    if commit.returncode:
        return {"commit": None, "dirty": None}
    return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}


def manifest(cfg: DictConfig, data: dict | None = None, packages: list[str] = VERSIONED) -> dict[str, Any]:
    """Versions, git state, data (path, fingerprint, rows), seed and hardware: what it takes to trust and redo a run."""
    versions = {}
    for name in packages:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    import torch

    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "started": STARTED,
        "seed": cfg.seed,
        "python": platform.python_version(),
        "packages": versions,
        "git": git_state(),
        "data": data,
        "hardware": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "cpu_bf16": cpu_has_bf16(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "torch_threads": torch.get_num_threads(),
            "gpus": gpus,
        },
    }
