"""The teacher pipeline behind `claire.generate` (source=api): questions in, verified traces out, as a dataset.

Questions are drawn from the mix's sources (decontaminated, in a seeded order), asked through the engine (every
answer kept in the ledger the moment it arrives), checked by claire.teacher.verification, and saved as a DatasetDict
with a dataset card.
"""

import asyncio
import functools
import hashlib
import json
import logging
import os
from collections import Counter
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from claire import ClaireError, configs, datafiles, openai_client, run_folders, traces
from claire.splits import bucket
from claire.teacher import engine, sources, verification
from claire.teacher.ledger import BatchState, Ledger

log = logging.getLogger(__name__)


def check_teacher(cfg: DictConfig) -> dict | None:
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


def check_ledger(ledger: Ledger, prompt: dict, api: DictConfig) -> None:
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


async def ask_teacher(job: engine.Job, ledger: Ledger, cfg: DictConfig) -> engine.Teacher:
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


def make_dataset(cfg: DictConfig) -> Path:
    """Ask the teacher for every question the mix needs, verify, and save the DatasetDict with its card."""
    price = check_teacher(cfg)
    prompt = prompt_of(cfg)
    if cfg.mix.get("prompt_published") is False and prompt["version"] == "v2":
        unpublished = "the report never published its prompt; asking with the V2 prompt (prompt=v2)"
        log.warning("mix=%s: %s", cfg.mix.name, unpublished)
    candidates, counts = draw_questions(cfg)
    total = cfg.mix.train + cfg.mix.eval
    available = {s: len(rows) for s, rows in candidates.items()}
    quotas = allocate(total, {s: cfg.mix.weights[s] for s in candidates}, available)
    out = Path(cfg.out)
    open_batches = BatchState(out / "batches.jsonl").open_batches()
    if open_batches and cfg.api.mode != "batch":
        raise ClaireError(
            f"out={out} has {len(open_batches)} submitted batch(es) not yet collected; rerun with api.mode=batch to "
            "collect them (asking online would pay for the same answers again)"
        )
    run_folders.refuse_foreign(out, "out", ours=GOES_ON_FROM)
    out.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(out / "ledger.jsonl")  # locked: a second claire.generate on this folder stops here
    try:
        run_folders.record(out, cfg)
        check_ledger(ledger, prompt, cfg.api)
        verify = functools.partial(verification.check_trace, rules=cfg.verify)
        job = engine.Job(candidates, quotas, prompt, cfg.api, price, cfg.budget_usd, cfg.verify.tries, verify)
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


# what an unfinished claire.generate leaves in its folder, and a rerun goes on from
GOES_ON_FROM = ("ledger.jsonl", "batches.jsonl", ".hydra", "generate.log")
CARD_KEYS = ("mix", "api", "verify", "seed", "budget_usd")  # the settings the dataset card shows


def write_card(
    out: Path,
    cfg: DictConfig,
    prompt: dict,
    teacher: engine.Teacher,
    counts: dict,
    quotas: dict,
    rows: list[dict],
    rejections: Counter,
    ledger: Ledger,
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
        "`claire.teacher.verification` (tags well formed and nested, final answer present, length sane"
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
        OmegaConf.to_yaml({k: v for k, v in configs.resolved(cfg).items() if k in CARD_KEYS}).strip(),  # masked
        "```",
    ]
    (out / "README.md").write_text("\n".join(lines) + "\n")
