"""Run folders: where a run goes, which folders it refuses, and the manifest that makes it self-describing."""

import importlib.metadata
import json
import logging
import os
import platform
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from claire import ClaireError, configs, machine

log = logging.getLogger(__name__)
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


def refuse_foreign(path: Path, setting: str, ours: tuple[str, ...] = ()) -> None:
    """One line when the folder holds anything but `ours` (what this command may go on from): Claire writes only
    into a new or empty folder, so nothing a user made is overwritten."""
    if path.exists() and not path.is_dir():
        raise ClaireError(f"{setting}={path} is a file; give a new or empty folder")
    foreign = sorted(p.name for p in path.iterdir() if p.name not in ours) if path.is_dir() else []
    if foreign:
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        raise ClaireError(
            f"{setting}={path} already holds {foreign[0]}{more}; Claire writes only into a new or empty folder: "
            f"choose another {setting}"
        )


def invocation_dir(output_dir: str) -> str:
    """The folder this invocation writes: a sweep job's own folder under Hydra's sweep dir, a folder given as
    hydra.run.dir (the Hydra habit), else output_dir (made absolute, as Hydra's runtime.output_dir is)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra = HydraConfig.get()
    if hydra.mode == RunMode.MULTIRUN or hydra.run.dir != ".":  # a sweep's job, or hydra.run.dir=<folder> as typed
        return hydra.runtime.output_dir
    return os.path.abspath(output_dir)


def same_on_every_rank(output_dir: str) -> str:
    """Rank 0's run folder for every process of a torchrun/accelerate run (each rank resolved its own timestamp)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return output_dir
    import torch.distributed as dist
    from accelerate import PartialState

    PartialState()  # joins the process group the Trainer will use
    shared = [output_dir]
    dist.broadcast_object_list(shared, src=0)
    return shared[0]


def record(out: Path, cfg: DictConfig) -> None:
    """Hydra's record of this invocation (config, hydra, overrides; masked) in out/.hydra, or in .hydra/<time>/ when
    the folder has one already (a resumed run keeps its first), and from now on the log in out/<command>.log.

    Hydra itself writes neither (conf/hydra/default.yaml): it would write them before the command could refuse the
    folder, replacing a finished run's record."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():  # called as a library (run(cfg)): there is no invocation to record
        return
    hydra = HydraConfig.get()
    folder = out / ".hydra"
    if (folder / "config.yaml").exists():
        folder = folder / STARTED
    folder.mkdir(parents=True, exist_ok=True)
    # with Claire's Hydra settings, so `--config-path <run>/.hydra --config-name config output_dir=<new>` reruns it
    # as this command ran (its folder rule, its log, no Hydra writes)
    settings = OmegaConf.to_container(OmegaConf.load(Path(configs.CONFIG_DIR) / "hydra" / "default.yaml"))
    saved = configs.mask(OmegaConf.to_container(cfg)) | {"hydra": settings}
    (folder / "config.yaml").write_text(OmegaConf.to_yaml(saved))
    (folder / "hydra.yaml").write_text(OmegaConf.to_yaml({"hydra": configs.mask(OmegaConf.to_container(hydra))}))
    (folder / "overrides.yaml").write_text(OmegaConf.to_yaml(list(hydra.overrides.task)))
    log_to(out / f"{hydra.job.name}.log")


def log_to(path: Path) -> None:
    """Also write the log to path, in the console's format (appended: a resumed run keeps its earlier lines)."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "claire_run_log", False)]:  # the previous job of a sweep
        root.removeHandler(old)
        old.close()
    shown = next((h.formatter for h in root.handlers if h.formatter), None)
    handler = logging.FileHandler(path)
    handler.setFormatter(shown or logging.Formatter("[%(asctime)s][%(name)s] %(message)s"))
    handler.claire_run_log = True
    root.addHandler(handler)


def check_run_dir(path: Path, cfg: DictConfig) -> str | None:
    """Refuse a finished run, an interrupted one without resume, or any other folder that is not new or empty;
    return the checkpoint to resume from, if any."""
    checkpoints = sorted(path.glob("checkpoints/checkpoint-*"), key=lambda p: int(p.name.rsplit("-", 1)[1]))
    if (path / "metrics.json").exists():
        raise ClaireError(f"output_dir={path} already holds a finished run; choose another output_dir")
    if cfg.resume in (False, None, "false"):
        if checkpoints:
            raise ClaireError(
                f"output_dir={path} holds an interrupted run; pass resume=true to continue it or choose another"
            )
        refuse_foreign(path, "output_dir")
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
    newest, _ = newest_complete_checkpoint(path / "checkpoints")
    return str(newest) if newest else None


def checkpoint_problem(folder: Path) -> str | None:
    """Why the Trainer could not resume from this checkpoint folder, or None when it is complete."""
    from transformers.utils import (
        ADAPTER_SAFE_WEIGHTS_NAME,
        ADAPTER_WEIGHTS_NAME,
        SAFE_WEIGHTS_INDEX_NAME,
        SAFE_WEIGHTS_NAME,
        WEIGHTS_INDEX_NAME,
        WEIGHTS_NAME,
    )

    # transformers has no completeness check: get_last_checkpoint takes the highest checkpoint-N as it is, and
    # Trainer.train fails on a torn one (no weights: "Can't find a valid checkpoint"; no trainer_state.json:
    # FileNotFoundError). Trainer._save_checkpoint writes trainer_state.json last (after weights, optimizer, scheduler,
    # RNG), so a parseable one means the save finished; the weights are what _load_from_checkpoint cannot go without.
    try:
        state = json.loads((folder / "trainer_state.json").read_text())
    except FileNotFoundError:
        return "no trainer_state.json: killed while saving?"
    except (OSError, ValueError):
        return "trainer_state.json is cut short or unreadable: killed while saving?"
    if not isinstance(state, dict) or state.get("global_step") != step(folder):
        return f"trainer_state.json is not the state of step {step(folder)}"
    weights = (ADAPTER_SAFE_WEIGHTS_NAME, ADAPTER_WEIGHTS_NAME, SAFE_WEIGHTS_NAME, WEIGHTS_NAME)
    if not any((folder / name).is_file() for name in (*weights, SAFE_WEIGHTS_INDEX_NAME, WEIGHTS_INDEX_NAME)):
        return "no model or adapter weights"
    return None


def step(checkpoint: Path) -> int:
    """The step N of a checkpoint-N folder."""
    return int(checkpoint.name.rsplit("-", 1)[1])


def newest_complete_checkpoint(folder: Path) -> tuple[Path | None, dict[Path, str]]:
    """The highest-numbered complete checkpoint-N in folder, and the newer torn ones skipped, with why."""
    named = [p for p in folder.glob("checkpoint-*") if p.is_dir() and re.fullmatch(r"checkpoint-\d+", p.name)]
    torn = {}
    for checkpoint in sorted(named, key=step, reverse=True):
        problem = checkpoint_problem(checkpoint)
        if problem is None:
            return checkpoint, torn
        torn[checkpoint] = problem
    return None, torn


def set_aside_torn(folder: Path) -> None:
    """Rename torn checkpoints to torn-checkpoint-N-<time>: kept, and out of the Trainer's saves and rotation."""
    newest, torn = newest_complete_checkpoint(folder)
    resumed = f"resuming from {newest.name}" if newest else "no complete checkpoint: starting again from step 0"
    for checkpoint, problem in torn.items():
        aside = checkpoint.with_name(f"torn-{checkpoint.name}-{STARTED}")
        checkpoint.rename(aside)
        log.warning("resume: skipped %s (%s); kept as %s; %s", checkpoint, problem, aside.name, resumed)


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
        "command": configs.mask_text(" ".join([Path(sys.argv[0]).name, *sys.argv[1:]])),
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
            "world_size": int(os.environ.get("WORLD_SIZE", "1")),  # processes of a torchrun/accelerate run
        },
    }


def trained_model(folder: Path, merged: bool, trust_remote_code: bool) -> DictConfig:
    """The model settings of a finished claire.train run, after checking it holds the weights to load."""
    saved = folder / "config.yaml"
    if not saved.is_file():
        raise ClaireError(f"run={folder} is not a claire.train run folder (no config.yaml); pass the folder it printed")
    needed = folder / ("merged/config.json" if merged else "adapter/adapter_config.json")
    if not merged and (folder / "adapter" / "config.json").is_file():
        needed = folder / "adapter" / "config.json"  # lora=none: a full fine-tune saves the whole model there
    if not needed.is_file():
        hint = "train with merge=true, or drop merged=true" if merged else "it has no adapter: did training finish?"
        raise ClaireError(f"run={folder} has no {needed.relative_to(folder)}; {hint}")
    trained = OmegaConf.load(saved).model
    if trained.get("trust_remote_code") and not trust_remote_code:
        raise ClaireError(
            f"run={folder} was trained with model.trust_remote_code=true: loading it runs code from the model's "
            "repository; if you trust it, add model.trust_remote_code=true to this command"
        )
    return trained
