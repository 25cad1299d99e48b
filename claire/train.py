"""claire.train: LoRA (or full) SFT on causality traces; one run, one self-describing folder.

This module imports only Hydra and OmegaConf, so a bad config fails in about a second; the training
itself lives in claire.training.sft, imported once the config has passed its checks.
"""

import logging
import os
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from claire import ClaireError, configs, machine, resolvers, run_folders
from claire.training import checks

resolvers.register()
log = logging.getLogger("claire.train")


def run(cfg: DictConfig) -> float:
    """Check the config, train, evaluate, save the run folder; return the sweep objective."""
    if cfg.dry_run:  # plan only: parameters and GPU memory from the architecture; no data, weights or run folder
        from claire.training import dry_run

        dry_run.run(cfg)
        return float("nan")
    checked = checks.check(cfg, f"{cfg.output_dir}/checkpoints")
    card = machine.gpu()
    checks.check_machine(cfg, card)
    run_folders.check_run_dir(Path(cfg.output_dir), cfg)  # a folder it may not use: one line, before torch loads
    plan_memory(cfg, checked, card)
    if cfg.method.name == "grpo":
        from claire.training import grpo

        return grpo.train(cfg, checked)
    from claire.training import sft

    return sft.train(cfg, checked)


def follow_machine(cfg: DictConfig, card: machine.Gpu | None) -> DictConfig:
    """trainer=auto (the default) is the CPU preset; on a GPU the run is composed again with the card's preset."""
    if HydraConfig.get().runtime.choices.get("trainer") != "auto" or card is None:
        return cfg
    if not card.bf16:
        raise ClaireError(
            f"this {card.name} has no bf16, which the GPU presets train in; pass "
            "trainer=l4 trainer.bf16=false trainer.fp16=true model.dtype=float16"
        )
    preset = machine.gpu_trainer(card)
    log.info("trainer=%s for this %s (%.1f GB); pass trainer= to choose another", preset, card.name, card.memory / 1e9)
    return configs.recomposed("train", f"trainer={preset}")


def plan_memory(cfg: DictConfig, checked: dict, card: machine.Gpu | None) -> None:
    """Activation checkpointing as set or, where null, as the card needs; a GPU run the card cannot hold stops here."""
    chosen = cfg.trainer.activation_checkpointing
    if card is not None and not cfg.trainer.get("use_cpu") and cfg.get("memory_check", True):
        from claire.training import dry_run

        chosen = dry_run.fit(cfg, card.memory, card.name)
    elif chosen is None:
        chosen = card is not None  # no estimate asked for: on for a GPU, off on a CPU
    args = checked[checks.trainer_class(checked)]
    cfg.trainer.activation_checkpointing = args["activation_checkpointing"] = bool(chosen)


def join_submitit_ranks() -> None:
    """A job of several submitit tasks (hydra.launcher.tasks_per_node=N, one per GPU) is one torch distributed run:
    export the rank variables torch and accelerate read, as torchrun would."""
    if "RANK" in os.environ or "SUBMITIT_EXECUTOR" not in os.environ:
        return
    import submitit

    if submitit.JobEnvironment().num_tasks > 1:
        submitit.helpers.TorchDistributedEnvironment().export()


@hydra.main(version_base="1.3", config_path=configs.CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float:
    """Hydra entrypoint: `python -m claire.train group=option key=value ...`."""
    join_submitit_ranks()
    try:
        cfg = follow_machine(cfg, machine.gpu())
        cfg.output_dir = run_folders.same_on_every_rank(run_folders.invocation_dir(cfg.output_dir))
        return run(cfg)
    except ClaireError as error:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # an exception fails this trial; SystemExit would end the whole sweep
        raise SystemExit(f"claire.train: error: {error}") from None


if __name__ == "__main__":
    main()
