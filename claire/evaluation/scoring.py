"""What claire.evaluate makes of lm-eval's results: rows, paired comparisons, the judge, format failures, summary.

lm-eval reports each (metric, filter) pair on its own; Claire reads its per-sample logs to compare base and
fine-tuned item by item (claire.stats), to count outputs with no answer, cut off at the token limit or looping (one
line or n-gram repeated to the end: each a format failure, counted once however many ways it fails), and to count
"false wrong" items: strict-match says wrong where Claire's answer reader (and the judge) say right.
"""

import json
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from claire import ClaireError, answers, completions, stats
from claire.evaluation import harness

STRICT, CLAIRE, JUDGE = "strict-match", "claire", "judge"
INVALID = "[invalid]"  # lm-eval's (and the claire filter's) mark for "no answer found"
LOOP_NOTE = (
    f"Looping: the output ends repeating one line or n-gram ({completions.LOOP_MIN_REPEATS} times or more, "
    f"{completions.LOOP_MIN_CHARS} characters or more). Format failures: the outputs with no answer (Claire's "
    "reader's, else no answer marker) or looping, each counted once."
)
log = logging.getLogger("claire.evaluate")


def score(cfg: DictConfig, evaluated: dict[str, dict], out: Path) -> dict[str, Any]:
    """Everything results.json holds, from each model's lm-eval results (saved under out/<label>/)."""
    rows, items, failures, false_wrong, disagreements, judge_failed = [], {}, [], [], [], None
    for label, results in evaluated.items():
        rows += result_rows(cfg, label, results)
        items[label] = per_item(results.get("samples", {}))
        generative = [t for t in results["results"] if _generative(results, t)]
        if cfg.judge.enabled and not judge_failed:
            try:
                judged = judge_samples(cfg, label, results, generative, out / label)
            except ClaireError as error:  # keep the evaluation that is done; the judge can be rerun from the cache
                judge_failed = str(error)
                log.error("claire.evaluate: the judge failed, results are written without it: %s", error)
            else:
                rows += judge_rows(label, judged, results)
                items[label] |= judged
        for task in generative:
            failures.append(format_failures(cfg, label, task, results) | loops(task, results))
            counted = count_false_wrong(label, task, items[label])
            if counted:
                false_wrong.append(counted)
            disagreements += find_disagreements(label, task, items[label], results["samples"].get(task, []))
    both = {"base", "tuned"} <= set(items)
    better = next(iter(evaluated.values())).get("higher_is_better", {})
    comparisons = compare_models(items, better, cfg.alpha) if both else []
    for row in rows:  # a metric over a subset of the items (acc_rung1, acc_unseen_shape) counts its own items
        row["n"] = len(items[row["model"]].get((row["task"], row["metric"], row["filter"]), {})) or row["n"]
    if disagreements:
        (out / "disagreements.md").write_text(disagreements_page(disagreements))
    report = {"rows": rows, "comparisons": comparisons, "format_failures": failures, "false_wrong": false_wrong}
    report["disagreements"], report["judge_error"] = disagreements, judge_failed
    report["prompt_mismatches"] = prompt_mismatches(evaluated) if both else {}
    report["vocabulary"] = {label: results.get("vocabulary") for label, results in evaluated.items()}
    report["metrics"] = flat_metrics(rows, failures, false_wrong)
    report["summary"] = summary(cfg, evaluated, report)
    return report


def _generative(results: dict, task: str) -> bool:
    return results.get("configs", {}).get(task, {}).get("output_type") == "generate_until"


def result_rows(cfg: DictConfig, label: str, results: dict) -> list[dict]:
    """One row per task, metric and filter, with the settings it was measured under."""
    import lm_eval

    rows = []
    for task, values in results["results"].items():
        config = results.get("configs", {}).get(task, {})
        settings = {
            "n": results.get("n-samples", {}).get(task, {}).get("effective"),
            "num_fewshot": results.get("n-shot", {}).get(task),
            "apply_chat_template": bool(cfg.apply_chat_template),
            "generation_kwargs": config.get("generation_kwargs") if _generative(results, task) else None,
            "seeds": {k: cfg[k] for k in ("seed", "numpy_seed", "torch_seed", "fewshot_seed")},
            "system_instruction": cfg.system_instruction,
            "lm_eval_version": lm_eval.__version__,
        }
        for key, value in values.items():
            if "," not in key or "_stderr" in key or not isinstance(value, int | float):
                continue
            metric, filter_name = key.split(",", 1)
            stderr = values.get(f"{metric}_stderr,{filter_name}")
            row = {"model": label, "task": task, "metric": metric, "filter": filter_name, "value": float(value)}
            rows.append(row | {"stderr": stderr if isinstance(stderr, int | float) else None} | settings)
    return rows


def per_item(samples: dict[str, list[dict]]) -> dict[tuple[str, str, str], dict[int, float]]:
    """{(task, metric, filter): {doc_id: value}} from lm-eval's per-sample logs."""
    found: dict[tuple[str, str, str], dict[int, float]] = defaultdict(dict)
    for task, rows in samples.items():
        for row in rows:
            for metric in row.get("metrics", []):
                if isinstance(row.get(metric), int | float):
                    found[(task, metric, row["filter"])][row["doc_id"]] = float(row[metric])
    return dict(found)


def raw_outputs(samples: list[dict]) -> dict[int, dict]:
    """One sample per document (every filter sees the same raw output)."""
    return {row["doc_id"]: row for row in samples}


def judge_samples(cfg: DictConfig, label: str, results: dict, tasks: list[str], out: Path) -> dict:
    """Ask the judge about every generative output; per-item equivalence and trace score, verdicts saved per task."""
    from claire.evaluation import judge

    judged = {}
    for task in tasks:
        docs = raw_outputs(results["samples"].get(task, []))
        requests = [
            {"question": question_of(row), "gold": str(row["target"]), "output": row["resps"][0][0]}
            for row in docs.values()
        ]
        verdicts = dict(zip(docs, judge.judge_outputs(requests, cfg.judge), strict=True))
        with open(out / f"judge_{task}.jsonl", "w") as f:
            for (doc_id, verdict), request in zip(verdicts.items(), requests, strict=True):
                f.write(json.dumps({"doc_id": doc_id, **request, **verdict}, ensure_ascii=False) + "\n")
        ok = {d: v for d, v in verdicts.items() if not v.get("error")}
        judged[(task, "judge_equivalent", JUDGE)] = {d: float(bool(v["equivalent"])) for d, v in ok.items()}
        scores = {d: float(v["trace_score"]) for d, v in ok.items() if v.get("trace_score") is not None}
        judged[(task, "judge_trace_score", JUDGE)] = scores
        judged[(task, "judge_errors", JUDGE)] = {d: float(bool(v.get("error"))) for d, v in verdicts.items()}
    return judged


def question_of(sample: dict) -> str:
    """The document's own question where it has one (gsm8k, causal), else the prompt the model saw (GPQA's options)."""
    doc = sample.get("doc") or {}
    question = doc.get("question")
    return question if isinstance(question, str) and question.strip() else sample["arguments"][0][0]


def judge_rows(label: str, judged: dict, results: dict) -> list[dict]:
    """Rows for the judge's accuracy and mean trace score, next to lm-eval's own."""
    rows = []
    for (task, metric, filter_name), values in judged.items():
        if metric == "judge_errors" or not values:
            continue
        mean = sum(values.values()) / len(values)
        errors = int(sum(judged[(task, "judge_errors", JUDGE)].values()))
        rows.append(
            {"model": label, "task": task, "metric": metric, "filter": filter_name, "value": mean, "stderr": None}
            | {"n": len(values), "judge_errors": errors, "num_fewshot": results.get("n-shot", {}).get(task)}
        )
    return rows


def format_failures(cfg: DictConfig, label: str, task: str, results: dict) -> dict:
    """Outputs of one task with no answer marker, and outputs that ran to the token limit."""
    docs = raw_outputs(results["samples"].get(task, []))
    kwargs = results.get("configs", {}).get(task, {}).get("generation_kwargs", {}) or {}
    limit = int(kwargs.get("max_gen_toks", 256))
    outputs = [row["resps"][0][0] or "" for row in docs.values()]  # an API may answer with no content
    lengths = token_lengths(results, outputs)
    # re-encoding the decoded text can merge tokens (runs of newlines), so this is a lower bound
    runaway = None if lengths is None else sum(n >= limit - 2 for n in lengths)
    no_marker = sum(not answers.has_answer_marker(text) for text in outputs)
    reads = [row["filtered_resps"][0] for row in results["samples"].get(task, []) if row["filter"] == CLAIRE]
    unread = sum(read == INVALID for read in reads) if reads else None
    return {"model": label, "task": task, "n": len(outputs), "no_marker": no_marker, "no_answer": unread} | {
        "runaway": runaway
    }


def loops(task: str, results: dict) -> dict:
    """Outputs of one task that loop, and the format failures in all: each output that loops or has no answer, once."""
    samples = results["samples"].get(task, [])
    outputs = {doc_id: row["resps"][0][0] or "" for doc_id, row in raw_outputs(samples).items()}
    looped = {doc_id for doc_id, text in outputs.items() if completions.looping(text)}
    unanswered = answerless(samples, outputs)
    n, failed = len(outputs), len(looped | unanswered)
    return {"looping": len(looped), "looping_share": _share(len(looped), n)} | {
        "looping_answered": len(looped - unanswered),  # what looping adds to the answer-less ones
        "failed": failed,
        "failed_share": _share(failed, n),
    }


def answerless(samples: list[dict], outputs: dict[int, str]) -> set[int]:
    """The documents with no answer: the claire reader's [invalid] where the task has it, else no answer marker."""
    reads = {row["doc_id"]: row["filtered_resps"][0] for row in samples if row["filter"] == CLAIRE}
    if reads:
        return {doc_id for doc_id, read in reads.items() if read == INVALID}
    return {doc_id for doc_id, text in outputs.items() if not answers.has_answer_marker(text)}


def _share(count: int, n: int) -> float | None:
    return count / n if n else None


def token_lengths(results: dict, outputs: list[str]) -> list[int] | None:
    """Token counts of outputs under the evaluated model's tokenizer (None where the backend has no local one)."""
    args = results.get("config", {}).get("model_args") or {}
    if isinstance(args, str):
        args = dict(part.split("=", 1) for part in args.split(",") if "=" in part)
    path = args.get("tokenizer") or args.get("pretrained")
    if not path:
        return None
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=bool(args.get("trust_remote_code")))
    except (OSError, ValueError) as error:  # a count is not worth losing the results for
        log.warning("claire.evaluate: no tokenizer at %s to count output tokens (%s)", path, error)
        return None
    return [len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in outputs]


def count_false_wrong(label: str, task: str, items: dict) -> dict | None:
    """Items strict-match marks wrong that Claire's reader marks right, and of those the ones the judge confirms."""
    strict, claire = items.get((task, "exact_match", STRICT)), items.get((task, "exact_match", CLAIRE))
    if strict is None or claire is None:
        return None
    flagged = [d for d in strict if strict[d] == 0 and claire.get(d) == 1]
    judged = items.get((task, "judge_equivalent", JUDGE))
    confirmed = None if judged is None else [d for d in flagged if judged.get(d) == 1]
    return {
        "model": label,
        "task": task,
        "n": len(strict),
        "strict_wrong_claire_right": len(flagged),
        "false_wrong": None if confirmed is None else len(confirmed),
        "doc_ids": confirmed if confirmed is not None else flagged,
    }


def find_disagreements(label: str, task: str, items: dict, samples: list[dict]) -> list[dict]:
    """Items where Claire's reader and the judge disagree, with what each saw."""
    claire, judged = items.get((task, "exact_match", CLAIRE)), items.get((task, "judge_equivalent", JUDGE))
    if claire is None or judged is None:
        return []
    docs = raw_outputs(samples)
    reads = {row["doc_id"]: row["filtered_resps"][0] for row in samples if row["filter"] == CLAIRE}
    return [
        {
            "model": label,
            "task": task,
            "doc_id": d,
            "gold": str(docs[d]["target"]),
            "claire_read": reads.get(d),
            "claire": claire[d],
            "judge": judged[d],
            "output": docs[d]["resps"][0][0],
        }
        for d in sorted(set(claire) & set(judged))
        if claire[d] != judged[d]
    ]


def prompt_mismatches(evaluated: dict[str, dict]) -> dict[str, int]:
    """Per task, the items whose prompt differed between base and fine-tuned (0 when settings were identical)."""
    found = {}
    for task, rows in evaluated["base"].get("samples", {}).items():
        base = {row["doc_id"]: row["prompt_hash"] for row in rows}
        tuned = {row["doc_id"]: row["prompt_hash"] for row in evaluated["tuned"].get("samples", {}).get(task, [])}
        found[task] = sum(base[d] != tuned.get(d) for d in base)
    return found


def compare_models(items: dict[str, dict], better: dict[str, dict], alpha: float) -> list[dict]:
    """Base vs fine-tuned on the items both scored: difference, bootstrap 95% CI and an exact p per metric (McNemar
    on right/wrong items, which is the sign test on the items that differ; so named for graded metrics)."""
    found = []
    for key in sorted(set(items["base"]) & set(items["tuned"])):
        base, tuned = items["base"][key], items["tuned"][key]
        common = sorted(set(base) & set(tuned))
        if not common or key[1] == "judge_errors":
            continue
        result = stats.compare([base[d] for d in common], [tuned[d] for d in common])
        significant = stats.significant(result, alpha)
        binary = {base[d] for d in common} | {tuned[d] for d in common} <= {0.0, 1.0}
        found.append(
            {"task": key[0], "metric": key[1], "filter": key[2], **result, "significant": significant}
            | {"test": "McNemar" if binary else "sign test", "higher_is_better": better.get(key[0], {}).get(key[1])}
        )
    return found


def flat_metrics(rows: list[dict], failures: list[dict], false_wrong: list[dict]) -> dict[str, float | None]:
    """metrics.json: '<model>/<task>/<metric>,<filter>' -> value, plus format failures and false-wrong counts."""
    metrics: dict[str, float | None] = {
        f"{r['model']}/{r['task']}/{r['metric']},{r['filter']}": r["value"] for r in rows
    }
    for f in failures:
        metrics |= {
            f"{f['model']}/{f['task']}/no_answer": f["no_answer"],
            f"{f['model']}/{f['task']}/runaway": f["runaway"],
            f"{f['model']}/{f['task']}/looping_share": f["looping_share"],
            f"{f['model']}/{f['task']}/format_failure_share": f["failed_share"],
        }
    for f in false_wrong:
        prefix = f"{f['model']}/{f['task']}"
        metrics |= {f"{prefix}/strict_wrong_claire_right": f["strict_wrong_claire_right"]}
        metrics |= {f"{prefix}/false_wrong": f["false_wrong"]}
    return metrics


def _cell(row: dict | None) -> str:
    if row is None:
        return "—"
    return f"{row['value']:.3f}" + (f" ± {row['stderr']:.3f}" if row.get("stderr") is not None else "")


def summary(cfg: DictConfig, evaluated: dict[str, dict], report: dict) -> str:
    """The Markdown summary: the report's table layout (Benchmark | Metric | Base | Claire), then the checks."""
    labels = list(evaluated)
    by_key = {(r["model"], r["task"], r["metric"], r["filter"]): r for r in report["rows"]}
    keys = sorted({(r["task"], r["metric"], r["filter"]) for r in report["rows"]}, key=_order)
    compared = {(c["task"], c["metric"], c["filter"]): c for c in report["comparisons"]}
    title = f"# Claire evaluation: {cfg.model.name}" + (f" (run {cfg.run})" if cfg.run else "")
    lines = [title, "", _settings_line(cfg, evaluated), ""]
    header = ["Benchmark", "Metric", "n", *(stats.LABELS[label] for label in labels)]
    if compared:
        header += ["Difference [95% CI]", "p (test)"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for task, metric, filter_name in keys:
        n = next(
            (by_key[(m, task, metric, filter_name)]["n"] for m in labels if (m, task, metric, filter_name) in by_key),
            None,
        )
        cells = [task, f"{metric} ({filter_name})", str(n)]
        cells += [_cell(by_key.get((label, task, metric, filter_name))) for label in labels]
        if compared:
            c = compared.get((task, metric, filter_name))
            cells += _comparison_cells(c)
        lines.append("| " + " | ".join(cells) + " |")
    if compared:
        lines += [
            "",
            "Each p-value is for its own row, uncorrected for the number of rows; read the report's metrics first.",
        ]
    if report["judge_error"]:
        lines += ["", f"**The judge failed** ({report['judge_error']}); the table has no judge rows."]
    differ = {task: n for task, n in report["prompt_mismatches"].items() if n}
    if differ:
        lines += [
            "",
            f"**Warning: base and fine-tuned saw different prompts** on {differ} items (tokenizer or template).",
        ]
    sizes = {stats.LABELS[label]: v for label, v in report["vocabulary"].items() if v and v["embedding_rows"]}
    if len({v["embedding_rows"] for v in sizes.values()}) > 1:
        lines += ["", f"**Warning: the models' vocabularies differ** (embedding rows, tokenizer length): {sizes}."]
    lines += _failure_lines(report) + _false_wrong_lines(report)
    return "\n".join(lines) + "\n"


def _order(key: tuple[str, str, str]) -> tuple:
    """Tasks in order; within a task strict-match first, then flexible-extract, Claire, the judge, the rest."""
    rank = {STRICT: 0, "flexible-extract": 1, CLAIRE: 2, JUDGE: 3}
    return (key[0], rank.get(key[2], 4), key[1], key[2])


def _comparison_cells(c: dict | None) -> list[str]:
    if c is None:
        return ["—", "—"]
    verdict = "" if c["significant"] else " (n.s.)"
    lower = " (lower is better)" if c["higher_is_better"] is False else ""
    diff = f"{c['diff']:+.3f} [{c['ci_low']:+.3f}, {c['ci_high']:+.3f}]{verdict}{lower}"
    return [diff, f"{c['p_mcnemar']:.3g} ({c['test']})"]


def _settings_line(cfg: DictConfig, evaluated: dict[str, dict]) -> str:
    import lm_eval

    first = next(iter(evaluated.values()))
    shots = first.get("n-shot", {})
    return (
        f"Suite `{cfg.suite.name}`, backend `{cfg.backend.name}`, chat template {bool(cfg.apply_chat_template)}, "
        f"shots {dict(shots)}, limit {cfg.limit}, seed {cfg.seed}, lm-eval {lm_eval.__version__}; "
        f"generation overrides {harness.generation_overrides(cfg) or 'none'}. Models: {', '.join(evaluated)}."
    )


def _failure_lines(report: dict) -> list[str]:
    if not report["format_failures"]:
        return []
    lines = ["", "## Format failures", ""]
    lines += [
        "| Model | Task | n | no Claire answer marker | no answer Claire's reader can read | ran to the token limit "
        "| looping | format failures |"
    ]
    lines.append("|---|---|---|---|---|---|---|---|")
    for f in report["format_failures"]:
        cells = [stats.LABELS[f["model"]], f["task"], f["n"], f["no_marker"], f["no_answer"], f["runaway"]]
        cells += [_counted(f["looping"], f["looping_share"]), _counted(f["failed"], f["failed_share"])]
        lines.append("| " + " | ".join("—" if c is None else str(c) for c in cells) + " |")
    lines += ["", LOOP_NOTE]
    return lines


def _counted(count: int, share: float | None) -> str:
    return f"{count} ({share:.1%})" if share is not None else str(count)


def _false_wrong_lines(report: dict) -> list[str]:
    if not report["false_wrong"]:
        return []
    lines = ["", "## False wrong (strict-match says wrong)", ""]
    lines += ["| Model | Task | n | Claire's reader says right | and the judge agrees |", "|---|---|---|---|---|"]
    for f in report["false_wrong"]:
        judged = "no judge" if f["false_wrong"] is None else f["false_wrong"]
        lines.append(
            f"| {stats.LABELS[f['model']]} | {f['task']} | {f['n']} | {f['strict_wrong_claire_right']} | {judged} |"
        )
    if report["disagreements"]:
        lines += ["", f"{len(report['disagreements'])} items where the reader and the judge disagree: disagreements.md"]
    return lines


def disagreements_page(found: list[dict]) -> str:
    """A Markdown list of the items where Claire's reader and the judge disagree."""
    lines = ["# Claire's answer reader vs the judge", ""]
    for d in found:
        lines += [f"## {stats.LABELS[d['model']]} · {d['task']} · doc {d['doc_id']}", ""]
        verdict = "right" if d["claire"] else "wrong"  # a right answer is filtered to the gold's own form
        lines += [f"gold `{d['gold'][-200:]}` · Claire's reader: `{d['claire_read']}` ({verdict})"]
        lines += [f"· judge says {'right' if d['judge'] else 'wrong'}", "", "```", d["output"][-1500:], "```", ""]
    return "\n".join(lines)
