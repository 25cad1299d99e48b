"""claire.generate: make a training dataset: traces from a teacher model, or the offline causal suite.

    python -m claire.generate                        the report's method: a teacher model answers the mix (api)
    python -m claire.generate source=causal n=5000   the causal suite with exact answers and reference traces

The teacher path lives in claire.teacher.pipeline, the causal suite in claire.causal.suite.
"""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from claire import ClaireError, configs

SOURCES = ("api", "causal")


def run(cfg: DictConfig) -> Path:
    """Make the dataset the config asks for; return its folder."""
    if cfg.source not in SOURCES:
        raise ClaireError(f"source={cfg.source} is not a source; choose one of {list(SOURCES)}")
    if cfg.source == "causal":
        from claire.causal import suite

        return suite.write_suite(cfg)
    from claire.teacher import pipeline

    return pipeline.make_dataset(cfg)


@hydra.main(version_base="1.3", config_path=configs.CONFIG_DIR, config_name="generate")
def main(cfg: DictConfig) -> None:
    """Hydra entrypoint: `python -m claire.generate mix=v2` (teacher) or `... source=causal n=5000` (offline)."""
    try:
        run(cfg)
    except ClaireError as error:
        raise SystemExit(f"claire.generate: error: {error}") from None


if __name__ == "__main__":
    main()
