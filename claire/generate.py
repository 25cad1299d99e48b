"""claire.generate: make a training dataset; here from the causal task suite (the API source comes later).

Splits: graph shapes (isomorphism invariants) are hashed; a share of shapes goes only to the test split, so
test accuracy can be read separately on shapes seen and unseen in training. The rest are split by row id.
"""

import hashlib
from collections import Counter
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from claire import ClaireError, causal

SOURCES = ("causal",)
CONFIG = Path(__file__).parents[1] / "conf" / "generate.yaml"


def shape(edges: list[list[str]]) -> str:
    """A label-free signature of a DAG: equal for isomorphic graphs (so an unseen signature is an unseen shape)."""
    nodes = sorted({v for edge in edges for v in edge})
    degrees = sorted((sum(b == v for _, b in edges), sum(a == v for a, _ in edges)) for v in nodes)
    return f"n{len(nodes)}-e{len(edges)}-" + ".".join(f"{i}{o}" for i, o in degrees)


def bucket(key: str, seed: int) -> float:
    """A stable number in [0, 1) from a key: the same split on every machine and Python version."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_splits(rows: list[dict], cfg: DictConfig) -> list[dict]:
    """train / eval / test by row id, except rows of held-out shapes, which are all test."""
    for row in rows:
        row["shape"] = shape(row["edges"])
        row["unseen_shape"] = bucket(row["shape"], cfg.seed) < cfg.unseen_shape_fraction
        u = bucket(row["id"], cfg.seed)
        if row["unseen_shape"]:
            row["split"] = "test"
        else:
            row["split"] = (
                "eval" if u < cfg.eval_fraction else "test" if u < cfg.eval_fraction + cfg.test_fraction else "train"
            )
    return rows


def check(cfg: DictConfig) -> None:
    """One-line errors for bad parameters, before anything is generated."""
    if cfg.source not in SOURCES:
        raise ClaireError(f"source={cfg.source} is not a source; choose one of {list(SOURCES)}")
    if not isinstance(cfg.n, int) or cfg.n <= 0:
        raise ClaireError(f"n={cfg.n} must be a whole number above 0")
    for key in ("eval_fraction", "test_fraction", "unseen_shape_fraction"):
        if not 0 <= cfg[key] < 1:
            raise ClaireError(f"{key}={cfg[key]} must be in [0, 1)")
    if cfg.eval_fraction + cfg.test_fraction >= 1:
        raise ClaireError("eval_fraction + test_fraction must stay below 1, or nothing is left to train on")
    if cfg.queries not in causal.QUERY_SETS:
        raise ClaireError(f"queries={cfg.queries} is not a query set; choose one of {sorted(causal.QUERY_SETS)}")
    allowed = [*causal.VERBALISATIONS, "mixed"]
    if cfg.verbalisation not in allowed:
        raise ClaireError(f"verbalisation={cfg.verbalisation} is not known; choose one of {allowed}")
    if (Path(cfg.out) / "dataset_dict.json").exists():
        raise ClaireError(f"out={cfg.out} already holds a dataset; choose another out (data is never overwritten)")


def card(rows: list[dict], cfg: DictConfig) -> str:
    """The dataset card: what was generated, how, and the counts a reader needs."""
    counts = {
        name: Counter(str(row[field]) for row in rows)
        for name, field in [
            ("split", "split"),
            ("rung", "rung"),
            ("query type", "query_type"),
            ("verbalisation", "verbalisation"),
        ]
    }
    unseen = Counter(row["split"] for row in rows if row["unseen_shape"])
    lines = [
        "# Claire causal task suite",
        "",
        "Causal questions with exact answers and gold graphs, generated offline by `claire.causal`.",
        "Each row: question, given, answer, response (reference trace in the raw Claire format), edges, rung,",
        "query_type, verbalisation, story, shape, unseen_shape, seed.",
        "",
        "```yaml",
        OmegaConf.to_yaml(cfg).strip(),
        "```",
        "",
        f"Test rows on graph shapes never seen in train or eval: {unseen['test']} of {counts['split']['test']}.",
    ]
    for name, counter in counts.items():
        lines += ["", f"| {name} | rows |", "|---|---|", *(f"| {k} | {v} |" for k, v in sorted(counter.items()))]
    return "\n".join(lines) + "\n"


def run(cfg: DictConfig) -> Path:
    """Generate, split and save the dataset with its card; return its folder."""
    check(cfg)
    import datasets

    rows = causal.generate_rows(cfg.n, cfg.seed, queries=cfg.queries, verbalisation=cfg.verbalisation)
    rows = assign_splits(rows, cfg)
    splits = {s: [r for r in rows if r["split"] == s] for s in ("train", "eval", "test")}
    empty = [s for s, part in splits.items() if not part]
    if empty:
        raise ClaireError(f"n={cfg.n} leaves the {empty} split(s) empty; raise n or the fractions")
    out = Path(cfg.out)
    datasets.DatasetDict({s: datasets.Dataset.from_list(part) for s, part in splits.items()}).save_to_disk(out)
    (out / "README.md").write_text(card(rows, cfg))
    sizes = ", ".join(f"{s} {len(part)}" for s, part in splits.items())
    print(f"claire.generate: wrote {cfg.n} rows ({sizes}) to {out}")
    return out


@hydra.main(version_base="1.3", config_path="../conf", config_name="generate")
def main(cfg: DictConfig) -> None:
    """Hydra entrypoint: `python -m claire.generate source=causal n=5000`."""
    try:
        run(cfg)
    except ClaireError as error:
        raise SystemExit(f"claire.generate: error: {error}") from None


if __name__ == "__main__":
    main()
