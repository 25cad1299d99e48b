"""Run folders: where a run goes, which folders it refuses, and the manifest that makes it self-describing."""

import importlib.metadata
import os
import platform
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from claire import ClaireError, configs, machine

STARTED = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
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
    return configs.differences(OmegaConf.to_container(saved), configs.resolved(cfg))


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
            "cpu_bf16": machine.cpu_has_bf16(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "torch_threads": torch.get_num_threads(),
            "gpus": gpus,
        },
    }
