"""claire.evaluate: a model, or a training run's base and fine-tuned models side by side, on lm-eval tasks.

Both models of a run are evaluated by lm-eval's own `simple_evaluate` with identical settings (tasks, shots, chat
template, generation settings, seeds); the only difference is the adapter. Every result lands in one folder:
lm-eval's results and per-sample logs for each model, `results.json` (one row per task, metric and filter, the
paired comparisons, format failures, the "false wrong" counts), `metrics.json` and `summary.md`.

The lm-eval runs live in claire.evaluation.harness, what is made of their results in claire.evaluation.scoring.
"""

import logging
import os
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from claire import ClaireError, configs, datafiles, machine, resolvers, run_folders
from claire.evaluation import harness

resolvers.register()
log = logging.getLogger("claire.evaluate")


def run(cfg: DictConfig) -> float | None:
    """Check the config, evaluate each model, write the result folder; return the objective (if one is set)."""
    task_names, manager = harness.check(cfg)
    harness.require_packages(cfg)
    harness.load_tasks(cfg, task_names, manager)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    run_folders.record(out, cfg)
    (out / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(configs.resolved(cfg))))
    if cfg.threads or not machine.has_cuda():
        import torch

        torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
    data = {"tasks": task_names, **OmegaConf.to_container(cfg.data)}
    datafiles.write_json(out / "manifest.json", run_folders.manifest(cfg, data, harness.PACKAGES))
    evaluated = {}
    for label, (lm, args) in harness.subjects(cfg).items():
        log.info("Evaluating %s (%s) on %s", label, args.get("pretrained") or args.get("model"), task_names)
        evaluated[label] = harness.evaluate_model(cfg, lm, args, task_names, manager, out / label)
    from claire.evaluation import scoring

    report = scoring.score(cfg, evaluated, out)
    datafiles.write_json(out / "results.json", report)
    datafiles.write_json(out / "metrics.json", report["metrics"])
    (out / "summary.md").write_text(report["summary"])
    print(report["summary"])
    print(f"claire.evaluate: done; results in {out}")
    return harness.objective_value(cfg, report["metrics"])


@hydra.main(version_base="1.3", config_path=configs.CONFIG_DIR, config_name="evaluate")
def main(cfg: DictConfig) -> float | None:
    """Hydra entrypoint: `python -m claire.evaluate run=<run folder> suite=report ...`."""
    cfg.output_dir = run_folders.invocation_dir(cfg.output_dir)
    try:
        return run(cfg)
    except ClaireError as error:
        raise SystemExit(f"claire.evaluate: error: {error}") from None


if __name__ == "__main__":
    main()
