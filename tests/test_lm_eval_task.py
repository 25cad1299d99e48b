"""The claire_causal lm-eval task, run through lm-eval's own evaluator with scripted models (no network)."""

import pytest

lm_eval = pytest.importorskip("lm_eval")
from lm_eval.api.model import LM  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

import claire.evaluation.tasks  # noqa: E402
from claire.generate import run as generate  # noqa: E402

LIMIT = 60


class Scripted(LM):
    """Answers every request with answer(question)."""

    def __init__(self, answer):
        super().__init__()
        self.answer = answer

    def generate_until(self, requests, disable_tqdm=False):
        return [self.answer(request.args[0]) for request in requests]

    def loglikelihood(self, requests, disable_tqdm=False):
        raise NotImplementedError

    def loglikelihood_rolling(self, requests, disable_tqdm=False):
        raise NotImplementedError


def evaluate(answer, metadata=None):
    manager = TaskManager(include_path=str(claire.evaluation.tasks.PATH), metadata=metadata)
    results = lm_eval.simple_evaluate(
        model=Scripted(answer), tasks=["claire_causal"], task_manager=manager, limit=LIMIT, log_samples=False
    )
    return {k.split(",")[0]: v for k, v in results["results"]["claire_causal"].items() if "," in k}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A small saved suite, and its test rows by question."""
    import datasets
    from conftest import CONF
    from hydra import compose, initialize_config_dir

    out = tmp_path_factory.mktemp("suite") / "causal"
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        generate(compose("generate", overrides=["source=causal", "n=700", f"out={out}"]))
    test = datasets.load_from_disk(str(out))["test"]
    return out, {row["question"]: row for row in test}


def test_a_perfect_model_scores_one(saved):
    out, rows = saved
    scores = evaluate(lambda q: rows[q]["response"], {"data_dir": str(out)})
    assert scores["acc"] == 1.0 and scores["graph_f1"] == 1.0 and scores["graph_shd"] == 0.0
    assert scores["acc_rung0"] == 1.0 and "acc_unseen_shape" in scores


def test_a_yes_sayer_scores_its_share(saved):
    out, rows = saved
    scores = evaluate(lambda q: "<|im_start|>answer\nThe answer is yes.", {"data_dir": str(out)})
    first = list(rows.values())[:LIMIT]
    assert scores["acc"] == pytest.approx(sum(r["answer"] == "yes" for r in first) / LIMIT)
    assert 0 < scores["acc"] < 0.5 and scores["graph_f1"] == 0.0  # no graph written: F1 0
    assert scores["acc_rung1"] == 0.0  # numeric answers are never "yes"


def test_default_data_is_generated_in_memory():
    scores = evaluate(lambda q: "The answer is no.")
    assert 0 <= scores["acc"] < 0.5 and "acc_rung0" in scores
