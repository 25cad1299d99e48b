"""claire.generate: make a training dataset: traces from a teacher model (claire.teacher), or the causal suite.

Causal suite splits: graph shapes (isomorphism invariants) are hashed; a share of shapes goes only to the test split, so
test accuracy can be read separately on shapes seen and unseen in training. The rest are split by a hash of the
question text: the everyday stories repeat, and a question drawn twice must not be both trained on and tested.
"""

import asyncio
import functools
import hashlib
import json
import logging
import os
from collections import Counter
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from claire import ClaireError, datafiles, openai_client, run_folders, traces
from claire.causal import questions
from claire.teacher import engine, sources, verification

log = logging.getLogger(__name__)

SOURCES = ("api", "causal")
CAUSAL_KEYS = (
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
CONFIG = Path(__file__).parents[1] / "conf" / "source" / "causal.yaml"  # the causal suite's settings


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
    if cfg.source not in SOURCES:
        raise ClaireError(f"source={cfg.source} is not a source; choose one of {list(SOURCES)}")
    if not isinstance(cfg.n, int) or cfg.n <= 0:
        raise ClaireError(f"n={cfg.n} must be a whole number above 0")
    for key in ("eval_fraction", "test_fraction", "unseen_shape_fraction"):
        if not 0 <= cfg[key] < 1:
            raise ClaireError(f"{key}={cfg[key]} must be in [0, 1)")
    if cfg.eval_fraction + cfg.test_fraction >= 1:
        raise ClaireError("eval_fraction + test_fraction must stay below 1, or nothing is left to train on")
    if cfg.queries not in questions.QUERY_SETS:
        raise ClaireError(f"queries={cfg.queries} is not a query set; choose one of {sorted(questions.QUERY_SETS)}")
    allowed = [*questions.VERBALISATIONS, "mixed"]
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
        OmegaConf.to_yaml({key: cfg[key] for key in CAUSAL_KEYS}).strip(),
        "```",
        "",
        f"Test rows on graph shapes never seen in train or eval: {unseen['test']} of {counts['split']['test']}.",
    ]
    for name, counter in counts.items():
        lines += ["", f"| {name} | rows |", "|---|---|", *(f"| {k} | {v} |" for k, v in sorted(counter.items()))]
    return "\n".join(lines) + "\n"


def run(cfg: DictConfig) -> Path:
    """Make the dataset the config asks for (the causal suite offline, or traces from a teacher model)."""
    return run_api(cfg) if cfg.source == "api" else run_causal(cfg)


def check_api(cfg: DictConfig) -> dict | None:
    """One-line errors for a teacher run, before any data loads or request is made; return the price row."""
    known = sorted(sources.SOURCES)
    for name, weight in cfg.mix.weights.items():
        if name not in sources.SOURCES:
            raise ClaireError(f"mix.weights.{name}: {name} is not a source; choose among {known}")
        if name not in cfg.sources:
            raise ClaireError(f"mix.weights.{name} has no sources.{name} entry saying where its questions are")
        if not isinstance(weight, int | float) or weight < 0:
            raise ClaireError(f"mix.weights.{name}={weight} must be a number >= 0")
    if not sum(cfg.mix.weights.values()) > 0:
        raise ClaireError("mix.weights are all 0; give at least one source a positive weight")
    for split in ("train", "eval"):
        if not isinstance(cfg.mix[split], int) or cfg.mix[split] < (1 if split == "train" else 0):
            raise ClaireError(f"mix.{split}={cfg.mix[split]} must be a whole number (train above 0)")
    if cfg.api.mode not in ("online", "batch"):
        raise ClaireError(f"api.mode={cfg.api.mode} is not a mode; choose online or batch")
    for key in ("max_concurrency", "max_batch_rounds", "max_retries", "rpm", "tpm"):
        value, optional = cfg.api[key], key in ("rpm", "tpm")
        if not (optional and value is None) and (
            not isinstance(value, int) or value < (0 if key == "max_retries" else 1)
        ):
            raise ClaireError(f"api.{key}={value} must be a whole number above 0" + (" or null" if optional else ""))
    if not isinstance(cfg.verify.tries, int) or cfg.verify.tries < 1:
        raise ClaireError(f"verify.tries={cfg.verify.tries} must be a whole number of samples, at least 1")
    if cfg.api.key_env and not os.environ.get(cfg.api.key_env):
        raise ClaireError(
            f"api.key_env={cfg.api.key_env}: that environment variable is not set; export it with your API key "
            "(keys are read from the environment only), or set api.key_env=null for a server that needs none"
        )
    price = cfg.api.get("price") or engine.price_of(cfg.api.model, cfg.prices)
    if price is None and cfg.budget_usd is not None:
        raise ClaireError(
            f"api.model={cfg.api.model} has no price in prices; add prices.{cfg.api.model}: {{input: .., output: ..}} "
            "(dollars per million tokens) or set budget_usd=null to run without a cap"
        )
    if "{question}" not in cfg.prompt.user:
        raise ClaireError(f"prompt.user of prompt {cfg.prompt.version} has no {{question}} placeholder")
    if (Path(cfg.out) / "dataset_dict.json").exists():
        raise ClaireError(
            f"out={cfg.out} already holds a finished dataset; choose another out (data is never overwritten)"
        )
    return OmegaConf.to_container(price) if isinstance(price, DictConfig) else price


def prompt_of(cfg: DictConfig) -> dict:
    """The prompt's version, text and a hash of the text (part of the card; a changed text needs a new version)."""
    system, user = cfg.prompt.get("system") or "", cfg.prompt.user
    digest = hashlib.sha256(json.dumps([system, user]).encode()).hexdigest()[:16]
    return {"version": cfg.prompt.version, "hash": digest, "system": system, "user": user}


def check_ledger(ledger: engine.Ledger, prompt: dict, api: DictConfig) -> None:
    """Refuse to mix answers to two prompt texts under one version, or two request settings for one model."""
    settings = engine.settings_hash(api)
    for entry in ledger.entries.values():
        if entry["prompt_version"] != prompt["version"]:
            continue
        if entry["prompt_hash"] not in (None, prompt["hash"]):
            raise ClaireError(
                f"prompt {prompt['version']} has changed since {ledger.path} was written; give the new text a new "
                "prompt version (prompt.version=...) or write to another out"
            )
        if entry["model"] == api.model and entry["settings"] not in (None, settings):
            raise ClaireError(
                f"api.{'/'.join(engine.SETTINGS)} differ from those {ledger.path} was asked with; put them back "
                "or write to another out (answers to different settings must not mix)"
            )


def draw_questions(cfg: DictConfig) -> tuple[dict[str, list[dict]], dict[str, Counter]]:
    """Training questions per source in draw order, overlapping evaluation sets and duplicates removed and counted."""
    names = [name for name, weight in cfg.mix.weights.items() if weight > 0]
    rows = [row for name in names for row in sources.load_source(name, cfg.sources[name], cfg.seed)]
    references = sources.load_references(cfg.decontaminate)
    overlap = sources.Overlap(references, cfg.ngram, cfg.boilerplate_docs, exact=cfg.exact_match)
    kept, removed = sources.decontaminate(rows, overlap)
    clean = Counter(row["source"] for row in kept)
    kept, _ = sources.dedupe(kept)
    duplicates = clean - Counter(row["source"] for row in kept)
    counts = {name: Counter(available=sum(r["source"] == name for r in rows)) for name in names}
    for name in names:
        counts[name]["overlap"] = counts[name]["available"] - clean[name]  # rows removed (once, whatever matched)
    for key, n in removed.items():
        name, reference = key.split(":", 1)
        counts[name][f"overlap_{reference}"] += n
    for name, n in duplicates.items():
        counts[name]["duplicate"] += n
    return {name: [r for r in kept if r["source"] == name] for name in names}, counts


def allocate(total: int, weights: dict[str, float], available: dict[str, int]) -> dict[str, int]:
    """Rows per source: shares of the total by weight (largest remainder), a source short of questions passing
    its surplus to the others."""
    quotas = dict.fromkeys(weights, 0)
    open_sources = [s for s, w in weights.items() if w > 0 and available[s] > 0]
    while open_sources and sum(quotas.values()) < total:
        remaining, weight_sum = total - sum(quotas.values()), sum(weights[s] for s in open_sources)
        exact = {s: remaining * weights[s] / weight_sum for s in open_sources}
        share = {s: int(exact[s]) for s in open_sources}
        largest_remainders = sorted(open_sources, key=lambda s: exact[s] - share[s], reverse=True)
        for s in largest_remainders[: remaining - sum(share.values())]:
            share[s] += 1
        for s in open_sources:
            quotas[s] += min(share[s], available[s] - quotas[s])
        open_sources = [s for s in open_sources if quotas[s] < available[s]]
    return quotas


async def ask_teacher(job: engine.Job, ledger: engine.Ledger, cfg: DictConfig) -> engine.Teacher:
    """Run the job online or through the Batch API; the client is closed however it ends."""
    client = openai_client.client_of(cfg.api)
    try:
        teacher = engine.Teacher(job, ledger, client, progress=cfg.progress)
        if cfg.api.mode == "batch":
            tag = hashlib.sha256(str(Path(cfg.out).resolve()).encode()).hexdigest()[:16]
            await teacher.run_batch(Path(cfg.out) / "batches.jsonl", tag)
        else:
            await teacher.run_online()
        return teacher
    finally:
        await client.close()


def run_api(cfg: DictConfig) -> Path:
    """Ask the teacher for every question the mix needs, verify, and save the DatasetDict with its card."""
    price = check_api(cfg)
    prompt = prompt_of(cfg)
    candidates, counts = draw_questions(cfg)
    total = cfg.mix.train + cfg.mix.eval
    available = {s: len(rows) for s, rows in candidates.items()}
    quotas = allocate(total, {s: cfg.mix.weights[s] for s in candidates}, available)
    out = Path(cfg.out)
    open_batches = engine.BatchState(out / "batches.jsonl").open_batches()
    if open_batches and cfg.api.mode != "batch":
        raise ClaireError(
            f"out={out} has {len(open_batches)} submitted batch(es) not yet collected; rerun with api.mode=batch to "
            "collect them (asking online would pay for the same answers again)"
        )
    out.mkdir(parents=True, exist_ok=True)
    ledger = engine.Ledger(out / "ledger.jsonl")
    try:
        check_ledger(ledger, prompt, cfg.api)
        judge = functools.partial(verification.judge, rules=cfg.verify)
        job = engine.Job(candidates, quotas, prompt, cfg.api, price, cfg.budget_usd, cfg.verify.tries, judge)
        teacher = asyncio.run(ask_teacher(job, ledger, cfg))
    finally:
        ledger.close()
    pairs, rejections = teacher.accepted()
    stop_if_unfinished(teacher, len(pairs), sum(quotas.values()))
    if not pairs:
        reasons = ", ".join(f"{k} {v}" for k, v in rejections.most_common()) or "no questions"
        raise ClaireError(
            f"no trace passed verification ({reasons}); the responses are in {ledger.path}: read a few, then "
            "change the prompt, the teacher or verify.*"
        )
    rows = finished_rows(pairs)
    if len(rows) < total:
        log.warning("only %d of %d rows: the sources ran out of questions that pass verification", len(rows), total)
    splits = split_rows(rows, cfg)
    save_dataset(splits, out, cfg)
    sizes = {name: len(part) for name, part in splits.items()}
    write_card(out, cfg, prompt, teacher, counts, quotas, rows, rejections, ledger, sizes)
    print(f"claire.generate: wrote {len(rows)} verified traces ({sizes}) to {out}; cost ${ledger.cost():.2f}")
    return out


def stop_if_unfinished(teacher: engine.Teacher, done: int, wanted: int) -> None:
    """A run cut short (budget, failures) writes no dataset: say how far it got and how to go on."""
    outcome = teacher.outcome
    failed = sum(outcome.failures.values())
    if done >= wanted or not (outcome.stopped or failed):
        return
    if outcome.stopped == "budget":
        why, how = "the budget would be exceeded", " with a higher budget_usd"
    else:
        why, how = outcome.stopped or f"{failed} requests failed after retries ({', '.join(outcome.failures)})", ""
    raise ClaireError(
        f"stopped at {done} of {wanted} rows because {why}; spent ${teacher.budget.spent:.2f}. Everything is kept in "
        f"{teacher.ledger.path}: rerun the same command to go on{how}"
    )


def finished_rows(pairs: list[tuple[dict, dict]]) -> list[dict]:
    """Dataset rows from accepted (question, response) pairs (questions were deduplicated before asking)."""
    rows = []
    for row, entry in pairs:
        answer = traces.split_trace(entry["content"])["answer"]
        rows.append(
            {
                **{k: row[k] for k in ("id", "source", "question", "gold", "kind")},
                "choices": row.get("choices"),
                "response": entry["content"],
                "correct": verification.is_correct(row, answer),
                **{
                    k: entry[k]
                    for k in ("sample", "model", "served_model", "prompt_version", "tokens_in", "tokens_out")
                },
                "cost_usd": entry["cost_usd"],
            }
        )
    return rows


def split_rows(rows: list[dict], cfg: DictConfig) -> dict[str, list[dict]]:
    """train / eval by a stable hash of the question id: the mix's eval count (scaled down if rows fell short)."""
    ranked = sorted(rows, key=lambda row: bucket(row["id"], cfg.seed))
    wanted = cfg.mix.train + cfg.mix.eval
    n_eval = cfg.mix.eval if len(rows) >= wanted else round(len(rows) * cfg.mix.eval / wanted)
    return {"train": ranked[n_eval:], "eval": ranked[:n_eval]}


def save_dataset(splits: dict[str, list[dict]], out: Path, cfg: DictConfig) -> None:
    """Save the DatasetDict (and push it to the hub when asked)."""
    import datasets

    dataset = datasets.DatasetDict({name: datasets.Dataset.from_list(part) for name, part in splits.items()})
    dataset.save_to_disk(str(out))
    if cfg.push_to_hub:
        dataset.push_to_hub(cfg.push_to_hub, private=True)


def write_card(
    out: Path,
    cfg: DictConfig,
    prompt: dict,
    teacher: engine.Teacher,
    counts: dict,
    quotas: dict,
    rows: list[dict],
    rejections: Counter,
    ledger: engine.Ledger,
    sizes: dict[str, int],
) -> None:
    """summary.json and the dataset card: prompt, teacher, sources and counts, rejections, cost and dates."""
    mine = [
        e for e in ledger.entries.values() if (e["prompt_version"], e["model"]) == (prompt["version"], cfg.api.model)
    ]
    times = sorted(entry["time"] for entry in mine)
    made = Counter(row["source"] for row in rows)
    summary = {
        "prompt": {"version": prompt["version"], "hash": prompt["hash"]},
        "teacher": {k: cfg.api[k] for k in ("mode", "base_url", "model", "temperature", "max_tokens", "seed")},
        "served_models": sorted({str(entry.get("served_model")) for entry in mine}),
        "mix": OmegaConf.to_container(cfg.mix),
        "sources": {name: {**counts[name], "quota": quotas[name], "rows": made[name]} for name in counts},
        "rows": {"total": len(rows), "correct": sum(bool(row["correct"]) for row in rows)},
        "rejections": dict(rejections.most_common()),
        "failed_requests": dict(teacher.outcome.failures),
        "requests": len(mine),
        "tokens": {k: sum(e[k] for e in mine) for k in ("tokens_in", "tokens_out")},
        "cost_usd": round(sum(e["cost_usd"] for e in mine), 4),
        "dates": {"first_response": times[0] if times else None, "last_response": times[-1] if times else None},
        "claire": run_folders.git_state(),
    }
    datafiles.write_json(out / "summary.json", summary)
    source_lines = [
        f"| {name} | {c['available']} | {c['overlap']} | {c['duplicate']} | {quotas[name]} | {made[name]} |"
        for name, c in counts.items()
    ]
    overlaps = Counter({k: v for c in counts.values() for k, v in c.items() if k.startswith("overlap_")})
    lines = [
        f"# Claire traces: {cfg.mix.name}",
        "",
        f"Questions from {', '.join(counts)} answered by `{cfg.api.model}` ({cfg.api.mode} mode, temperature "
        f"{cfg.api.temperature}) with prompt `{prompt['version']}` (text hash `{prompt['hash']}`), verified by "
        "`claire.verify` (tags well formed and nested, final answer present, length sane"
        + (", answer equal to the gold)." if cfg.verify.require_correct else ")."),
        f"Responses from {summary['dates']['first_response']} to {summary['dates']['last_response']}; "
        f"{summary['requests']} requests, {summary['tokens']['tokens_in']} tokens in, "
        f"{summary['tokens']['tokens_out']} out, ${summary['cost_usd']:.2f}.",
        "",
        f"Splits (by a stable hash of the question id): {', '.join(f'{k} {n}' for k, n in sizes.items())}.",
        "Columns: id, source, question, gold, kind, choices, response (raw <think>/<causality> trace), correct, "
        "sample, model, served_model, prompt_version, tokens_in, tokens_out, cost_usd.",
        "",
        "| source | training questions | overlapping evaluation sets | duplicates | asked for | rows |",
        "|---|---|---|---|---|---|",
        *source_lines,
        "",
        "Removed for overlap (shared 13-grams): "
        + (", ".join(f"{k[8:]} {v}" for k, v in overlaps.items()) or "none")
        + ".",
        "Rejected traces: " + (", ".join(f"{k} {v}" for k, v in rejections.most_common()) or "none") + ".",
        "",
        "```yaml",
        OmegaConf.to_yaml({k: cfg[k] for k in ("mix", "api", "verify", "seed", "budget_usd")}).strip(),
        "```",
    ]
    (out / "README.md").write_text("\n".join(lines) + "\n")


def run_causal(cfg: DictConfig) -> Path:
    """Generate, split and save the causal suite with its card; return its folder."""
    check(cfg)
    import datasets

    rows = questions.generate_rows(cfg.n, cfg.seed, queries=cfg.queries, verbalisation=cfg.verbalisation)
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
    """Hydra entrypoint: `python -m claire.generate mix=v2` (teacher) or `... source=causal n=5000` (offline)."""
    try:
        run(cfg)
    except ClaireError as error:
        raise SystemExit(f"claire.generate: error: {error}") from None


if __name__ == "__main__":
    main()
