"""claire.report: the report's tables and figures, rebuilt from run folders alone.

    python -m claire.report                                        # all of experiments/ -> reports/<time>/
    python -m claire.report 'runs=[experiments/multirun/2026-12-02_10-00-00]' output_dir=reports/seeds

Reads each training run's config.yaml and metrics.json, the evaluations made of it (results.json and per-item
samples of `claire.evaluate`) and the published numbers of a reference run (reference.json); writes report.md,
tables.md, tables.csv, bar charts and loss curves. Runs that differ only in their seed are one row of the tables:
mean ± 95% CI across seeds, and a paired test of base vs fine-tuned on the same items.
"""

import contextlib
import io
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from claire import ClaireError, configs, resolvers, run_folders
from claire.reporting import experiments, page, tables

resolvers.register()


def count_planned(groups: list[experiments.Group]) -> None:
    """Trainable parameters of each reference config from the dry run (meta device: no weights, seconds)."""
    from claire.training import dry_run

    for group in (g for g in groups if g.reference_config):
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                group.planned = dry_run.run(OmegaConf.create(group.reference_config))["trainable_params"]
        except ClaireError as error:
            group.planned = f"not counted: {error}"


def run(cfg: DictConfig) -> Path:
    """Find the runs, build every table and figure, write the page; return the output folder."""
    out = Path(cfg.output_dir)
    run_folders.refuse_foreign(out, "output_dir")
    found = experiments.find_runs(list(cfg.runs))
    if not found:
        raise ClaireError(f"no run folders under {list(cfg.runs)}; a run folder has config.yaml and metrics.json")
    groups = experiments.group_runs(found)
    if cfg.count_parameters:
        count_planned(groups)
    wanted = OmegaConf.to_container(cfg.rows)
    rows = {g.key: tables.table_rows(g, wanted, cfg.all_metrics, cfg.alpha) for g in groups}
    out.mkdir(parents=True, exist_ok=True)
    run_folders.record(out, cfg)
    (out / "report.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    tables.write_csv([row for group_rows in rows.values() for row in group_rows], out / "tables.csv")
    sections = [f"### {tables.group_title(g)}\n\n{tables.markdown_table(g, rows[g.key], cfg.alpha)}" for g in groups]
    (out / "tables.md").write_text("\n\n".join(sections) + "\n")
    from claire.reporting import figures  # matplotlib: only when a report is drawn

    drawn = figures.draw(groups, rows, out)
    contamination = page.decontamination(groups, cfg) if cfg.decontamination.enabled else None
    (out / "report.md").write_text(page.page(cfg, found, groups, sections, drawn, contamination))
    print(f"claire.report: {len(found)} runs in {len(groups)} experiments; report in {out / 'report.md'}")
    return out


@hydra.main(version_base="1.3", config_path=configs.CONFIG_DIR, config_name="report")
def main(cfg: DictConfig) -> None:
    """Hydra entrypoint: `python -m claire.report [runs=[...]] [output_dir=...]`."""
    try:
        run(cfg)
    except ClaireError as error:
        raise SystemExit(f"claire.report: error: {error}") from None


if __name__ == "__main__":
    main()
