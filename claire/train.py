"""claire.train: LoRA (or full) SFT on causality traces; one run, one self-describing folder.

This module imports only Hydra and OmegaConf, so a bad config fails in about a second; the training
itself lives in claire.training.sft, imported once the config has passed its checks.
"""

import os
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from claire import ClaireError, configs, resolvers, run_folders
from claire.training import checks

resolvers.register()


def run(cfg: DictConfig) -> float:
    """Check the config, train, evaluate, save the run folder; return the sweep objective."""
    if cfg.dry_run:  # plan only: parameters and GPU memory from the architecture; no data, weights or run folder
        from claire.training import dry_run

        dry_run.run(cfg)
        return float("nan")
    checked = checks.check(cfg, f"{cfg.output_dir}/checkpoints")
    run_folders.check_run_dir(Path(cfg.output_dir), cfg)  # a folder it may not use: one line, before torch loads
    from claire.training import sft

    return sft.train(cfg, checked)


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
    cfg.output_dir = run_folders.invocation_dir(cfg.output_dir)
    join_submitit_ranks()
    try:
        return run(cfg)
    except ClaireError as error:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # an exception fails this trial; SystemExit would end the whole sweep
        raise SystemExit(f"claire.train: error: {error}") from None


if __name__ == "__main__":
    main()
