"""Hooks of the claire_causal lm-eval task: data, prompt, and scoring with the Claire answer reader."""

from typing import Any

from claire import answers, causal, graphs


def load(data_dir: str | None = None, n: int = 5000, seed: int = 0, **_: Any) -> dict:
    """The suite's splits: from a folder claire.generate wrote, or regenerated in memory with its settings."""
    import datasets

    if data_dir:
        return dict(datasets.load_from_disk(data_dir))
    return {split: datasets.Dataset.from_list(rows) for split, rows in causal.default_splits(n, seed).items()}


def doc_to_text(doc: dict) -> str:
    """The question alone: the chat template (--apply_chat_template) makes it a user turn."""
    return doc["question"]


def process_results(doc: dict, results: list[str]) -> dict[str, float]:
    """Accuracy overall and by rung, query type and shape novelty; graph scores of the <causality> block."""
    output = results[0]
    right = float(answers.causal_correct(output, doc["answer"]))
    names = sorted({v for edge in doc["edges"] for v in edge})
    graph = graphs.graph_metrics(output, doc["edges"], names)
    novelty = "unseen" if doc.get("unseen_shape") else "seen"
    return {
        "acc": right,
        f"acc_rung{doc['rung']}": right,
        f"acc_{doc['query_type']}": right,
        f"acc_{novelty}_shape": right,
        "graph_f1": graph["f1"],
        "graph_precision": graph["precision"],
        "graph_recall": graph["recall"],
        "graph_shd": float(graph["shd"]),
    }


def process_sampled(doc: dict, results: list[list[str]]) -> dict[str, float]:
    """Of k samples of one question: the share correct (pass@1), whether any is (pass@k), their mean graph F1."""
    outputs = results[0] if results and isinstance(results[0], list) else results
    right = [answers.causal_correct(output, doc["answer"]) for output in outputs]
    names = sorted({v for edge in doc["edges"] for v in edge})
    f1 = [graphs.graph_metrics(output, doc["edges"], names)["f1"] for output in outputs]
    return {"pass_at_1": sum(right) / len(right), "pass_at_k": float(any(right)), "graph_f1": sum(f1) / len(f1)}
