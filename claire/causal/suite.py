"""The causal task suite as a dataset: rows from the question generator, split train / eval / test by graph shape.

Graph shapes (isomorphism invariants) are hashed; a share of shapes goes only to the test split, so test accuracy can
be read separately on shapes seen and unseen in training. The rest are split by a hash of the question text: the
everyday stories repeat, and a question drawn twice must not be both trained on and tested.
"""

from collections import Counter
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from claire import ClaireError, configs, run_folders
from claire.causal.questions import QUERY_SETS, VERBALISATIONS, generate_rows
from claire.splits import bucket

CONFIG = Path(configs.CONFIG_DIR) / "source" / "causal.yaml"  # the suite's settings: `source=causal`
KEYS = (
    "source",
    "n",
    "seed",
    "queries",
    "verbalisation",
    "eval_fraction",
    "test_fraction",
    "unseen_shape_fraction",
    "out",
)
SPLITS = ("train", "eval", "test")


def shape(edges: list[list[str]]) -> str:
    """A label-free signature of a DAG: equal for isomorphic graphs (so an unseen signature is an unseen shape)."""
    nodes = sorted({v for edge in edges for v in edge})
    degrees = sorted((sum(b == v for _, b in edges), sum(a == v for a, _ in edges)) for v in nodes)
    return f"n{len(nodes)}-e{len(edges)}-" + ".".join(f"{i}{o}" for i, o in degrees)


def assign_splits(rows: list[dict], cfg: DictConfig) -> list[dict]:
    """train / eval / test by a hash of the question text (so a question drawn twice cannot sit on both sides),
    except rows of held-out shapes, which are all test."""
    for row in rows:
        row["shape"] = shape(row["edges"])
        row["unseen_shape"] = bucket(row["shape"], cfg.seed) < cfg.unseen_shape_fraction
        u = bucket(" ".join(row["question"].lower().split()), cfg.seed)  # a repeated question stays in one split
        if row["unseen_shape"]:
            row["split"] = "test"
        else:
            row["split"] = (
                "eval" if u < cfg.eval_fraction else "test" if u < cfg.eval_fraction + cfg.test_fraction else "train"
            )
    return rows


def check(cfg: DictConfig) -> None:
    """One-line errors for bad parameters, before anything is generated."""
    if not isinstance(cfg.n, int) or cfg.n <= 0:
        raise ClaireError(f"n={cfg.n} must be a whole number above 0")
    for key in ("eval_fraction", "test_fraction", "unseen_shape_fraction"):
        if not 0 <= cfg[key] < 1:
            raise ClaireError(f"{key}={cfg[key]} must be in [0, 1)")
    if cfg.eval_fraction + cfg.test_fraction >= 1:
        raise ClaireError("eval_fraction + test_fraction must stay below 1, or nothing is left to train on")
    if cfg.queries not in QUERY_SETS:
        raise ClaireError(f"queries={cfg.queries} is not a query set; choose one of {sorted(QUERY_SETS)}")
    allowed = [*VERBALISATIONS, "mixed"]
    if cfg.verbalisation not in allowed:
        raise ClaireError(f"verbalisation={cfg.verbalisation} is not known; choose one of {allowed}")
    if (Path(cfg.out) / "dataset_dict.json").exists():
        raise ClaireError(f"out={cfg.out} already holds a dataset; choose another out (data is never overwritten)")


def split_rows(cfg: DictConfig) -> dict[str, list[dict]]:
    """The suite's rows for these settings, by split."""
    rows = assign_splits(generate_rows(cfg.n, cfg.seed, queries=cfg.queries, verbalisation=cfg.verbalisation), cfg)
    return {s: [r for r in rows if r["split"] == s] for s in SPLITS}


def default_splits(n: int = 5000, seed: int = 0) -> dict[str, list[dict]]:
    """The suite with its shipped settings (conf/source/causal.yaml) and the given size and seed, in memory."""
    cfg = OmegaConf.load(CONFIG)
    cfg.n, cfg.seed = n, seed
    return split_rows(cfg)


def card(splits: dict[str, list[dict]], cfg: DictConfig) -> str:
    """The dataset card: what was generated, how, and the counts a reader needs."""
    rows = [row for part in splits.values() for row in part]
    fields = [("split", "split"), ("rung", "rung"), ("query type", "query_type"), ("verbalisation", "verbalisation")]
    counts = {name: Counter(str(row[field]) for row in rows) for name, field in fields}
    unseen = Counter(row["split"] for row in rows if row["unseen_shape"])
    lines = [
        "# Claire causal task suite",
        "",
        "Causal questions with exact answers and gold graphs, generated offline by `claire.generate source=causal`.",
        "Each row: question, given, answer, response (reference trace in the raw Claire format), edges, rung,",
        "query_type, verbalisation, story, shape, unseen_shape, seed.",
        "",
        "```yaml",
        OmegaConf.to_yaml({key: cfg[key] for key in KEYS}).strip(),
        "```",
        "",
        f"Test rows on graph shapes never seen in train or eval: {unseen['test']} of {counts['split']['test']}.",
    ]
    for name, counter in counts.items():
        lines += ["", f"| {name} | rows |", "|---|---|", *(f"| {k} | {v} |" for k, v in sorted(counter.items()))]
    return "\n".join(lines) + "\n"


def write_suite(cfg: DictConfig) -> Path:
    """Generate, split and save the causal suite with its card; return its folder."""
    check(cfg)
    import datasets

    splits = split_rows(cfg)
    empty = [s for s, part in splits.items() if not part]
    if empty:
        raise ClaireError(f"n={cfg.n} leaves the {empty} split(s) empty; raise n or the fractions")
    out = Path(cfg.out)
    run_folders.refuse_foreign(out, "out")
    datasets.DatasetDict({s: datasets.Dataset.from_list(part) for s, part in splits.items()}).save_to_disk(out)
    (out / "README.md").write_text(card(splits, cfg))
    run_folders.record(out, cfg)
    sizes = ", ".join(f"{s} {len(part)}" for s, part in splits.items())
    print(f"claire.generate: wrote {cfg.n} rows ({sizes}) to {out}")
    return out
