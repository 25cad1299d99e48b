"""Claire's gsm8k and GPQA lm-eval tasks, run offline through lm-eval's evaluator with scripted models."""

import csv
import random

import pytest

lm_eval = pytest.importorskip("lm_eval")
pytest.importorskip("math_verify")
from conftest import GSM8K  # noqa: E402
from lm_eval.api.model import LM  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

import claire.evaluation.tasks  # noqa: E402
from claire import ClaireError  # noqa: E402
from claire.evaluation.tasks.filters import ClaireAnswer  # noqa: E402

needs_gsm8k = pytest.mark.skipif(not GSM8K.exists(), reason=f"{GSM8K} is not here")
LIMIT = 6


class Scripted(LM):
    """Generates write(doc); scores an option 0 if choose(doc) is it, else -10; records each request."""

    def __init__(self, write=None, choose=None):
        super().__init__()
        self.write, self.choose, self.requests = write, choose, []

    def generate_until(self, requests, disable_tqdm=False):
        self.requests += requests
        return [self.write(request.doc) for request in requests]

    def loglikelihood(self, requests, disable_tqdm=False):
        self.requests += requests
        return [(0.0, True) if r.args[1].strip() == self.choose(r.doc) else (-10.0, False) for r in requests]

    def loglikelihood_rolling(self, requests, disable_tqdm=False):
        raise NotImplementedError


def evaluate(task, model, metadata, limit=LIMIT, **kwargs):
    """lm-eval's results for one of Claire's tasks: ({metric,filter: value}, samples)."""
    # Without lm-eval's own tasks: indexing their YAML files costs ~4 s a call (the hf test below includes them).
    manager = TaskManager(include_path=str(claire.evaluation.tasks.PATH), include_defaults=False, metadata=metadata)
    out = lm_eval.simple_evaluate(model=model, tasks=[task], task_manager=manager, limit=limit, **kwargs)
    return out["results"][task], out["samples"][task]


def gold(doc):
    """gsm8k's final number."""
    return doc["answer"].split("#### ")[-1]


@pytest.fixture(scope="module")
def gsm8k_files(tmp_path_factory):
    """A small test file and a separate few-shot pool, both from the real gsm8k train split."""
    lines = GSM8K.read_text().splitlines()
    folder = tmp_path_factory.mktemp("gsm8k")
    (folder / "test.jsonl").write_text("\n".join(lines[:LIMIT]) + "\n")
    (folder / "train.jsonl").write_text("\n".join(lines[LIMIT:200]) + "\n")
    return {"gsm8k_test_file": str(folder / "test.jsonl"), "gsm8k_train_file": str(folder / "train.jsonl")}


@needs_gsm8k
def test_claire_format_scores_on_the_claire_filter_only(gsm8k_files):
    def write(doc):
        return f"<|im_start|>think\nAdd 2 and 3.\n<|im_start|>answer\n{gold(doc)} in all, from 2 + 3<|im_end|>"

    scores, samples = evaluate("claire_gsm8k", Scripted(write), gsm8k_files)
    assert scores["exact_match,claire"] == 1.0
    assert scores["exact_match,strict-match"] == 0.0  # no '#### N'
    assert scores["exact_match,flexible-extract"] == 0.0  # the last number, 3, is the trailing explanation's
    assert {s["filter"] for s in samples} == {"strict-match", "flexible-extract", "claire"}


@needs_gsm8k
def test_decoded_claire_format_with_a_wrong_number_scores_zero(gsm8k_files):
    scores, _ = evaluate(
        "claire_gsm8k", Scripted(lambda doc: f"think\nSo {gold(doc)}.\nanswer\n{int(gold(doc)) + 1}"), gsm8k_files
    )
    assert scores["exact_match,claire"] == 0.0


@needs_gsm8k
def test_hash_answers_score_on_strict_match_and_claire(gsm8k_files):
    scores, _ = evaluate(
        "claire_gsm8k", Scripted(lambda doc: f"She has 4 + 5 = 9 left.\n#### {gold(doc)}"), gsm8k_files
    )
    assert scores["exact_match,strict-match"] == 1.0 and scores["exact_match,claire"] == 1.0


@needs_gsm8k
def test_a_trace_without_an_answer_is_invalid(gsm8k_files):
    model = Scripted(lambda doc: f"First 3 + 4 = 7, then 7 * 2 = 14, and {gold(doc)} is close.")
    scores, samples = evaluate("claire_gsm8k_chat", model, gsm8k_files)
    claire_samples = [s for s in samples if s["filter"] == "claire"]
    assert scores["exact_match,claire"] == 0.0
    assert scores["exact_match,flexible-extract"] == 1.0  # it takes the trace's last number, never stated as answer
    assert {s["filtered_resps"][0] for s in claire_samples} == {"[invalid]"}


@needs_gsm8k
def test_five_shot_prompt_and_generation_are_stock(gsm8k_files):
    model = Scripted(lambda doc: "#### 1")
    evaluate("claire_gsm8k", model, gsm8k_files, limit=2)
    context, kwargs = model.requests[0].args
    question = model.requests[0].doc["question"]
    assert context.count("Question: ") == 6 and context.endswith(f"Question: {question}\nAnswer:")
    assert question not in context.split(f"Question: {question}")[0]  # not among its own examples
    assert kwargs["until"] == ["Question:", "</s>", "<|im_end|>"] and "max_gen_toks" not in kwargs


@needs_gsm8k
def test_chat_prompt_is_the_question_alone(gsm8k_files):
    model = Scripted(lambda doc: "answer\n1")
    evaluate("claire_gsm8k_chat", model, {"gsm8k_test_file": gsm8k_files["gsm8k_test_file"]}, limit=2)
    context, kwargs = model.requests[0].args
    assert context == model.requests[0].doc["question"]
    assert kwargs["max_gen_toks"] == 1024 and "<|im_end|>" in kwargs["until"] and kwargs["do_sample"] is False


@needs_gsm8k
def test_few_shot_needs_its_own_train_file(gsm8k_files):
    with pytest.raises(ClaireError, match="gsm8k_train_file is required"):
        evaluate("claire_gsm8k", Scripted(), {"gsm8k_test_file": gsm8k_files["gsm8k_test_file"]})


def test_the_hub_stays_the_default(monkeypatch):
    import datasets

    asked = []
    fake = datasets.DatasetDict(
        test=datasets.Dataset.from_list([{"question": "1 + 1?", "answer": "1 + 1 = 2\n#### 2"}]),
        train=datasets.Dataset.from_list([{"question": "Q?", "answer": "#### 3"}] * 5),
    )
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: asked.append(args) or fake)
    scores, _ = evaluate("claire_gsm8k", Scripted(lambda doc: "The answer is 2."), {"unrelated_key": 1})
    assert asked == [("openai/gsm8k", "main")] and scores["exact_match,claire"] == 1.0
    asked.clear()
    fake = datasets.DatasetDict(train=datasets.Dataset.from_list(GPQA[:2]))
    evaluate("claire_gpqa_extended_cot", Scripted(lambda doc: f"The answer is {doc['answer']}."), None)
    assert asked == [("Idavidrein/gpqa", "gpqa_extended")]


def test_the_filter_emits_the_gold_when_equivalent():
    docs = [{"answer": "2 * 540 = 1080\n#### 1080"}, {"answer": "#### 1080"}, {"answer": "#### -5"}]
    resps = [["answer\n$1,080.00 in total"], ["answer\n1,081"], ["answer\n\u22125 degrees"]]
    assert [r[0] for r in ClaireAnswer("number").apply(resps, docs)] == ["1080", "1081", "-5"]
    choices = ClaireAnswer("choice").apply([["answer\nOption b"], ["So (C)."], ["no idea"]], [{"answer": "(B)"}] * 3)
    assert choices == [["(B)"], ["(C)"], ["[invalid]"]]


GPQA = [
    {
        "Question": f"Invented question {i}: which value does the made-up quantity Q{i} take?",
        "Correct Answer": f"right {i}",
        "Incorrect Answer 1": f"wrong {i}a",
        "Incorrect Answer 2": f"wrong {i}b",
        "Incorrect Answer 3": f"wrong {i}c",
    }
    for i in range(8)
]


@pytest.fixture
def gpqa_file(tmp_path):
    """A hand-made GPQA CSV with invented questions."""
    path = tmp_path / "gpqa.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(GPQA[0]))
        writer.writeheader()
        writer.writerows(GPQA)
    return str(path)


def test_a_gpqa_file_without_its_columns_is_refused(tmp_path):
    (tmp_path / "bad.csv").write_text("Question,Correct Answer\nWhat?,This.\n")
    with pytest.raises(ClaireError, match=r"gpqa_diamond_file=.* has no column \['Incorrect Answer 1'"):
        evaluate("claire_gpqa_diamond", Scripted(), {"gpqa_diamond_file": str(tmp_path / "bad.csv")})


def test_gpqa_log_likelihood_scores_the_preferred_option(gpqa_file):
    scores, _ = evaluate(
        "claire_gpqa_diamond", Scripted(choose=lambda doc: doc["answer"]), {"gpqa_diamond_file": gpqa_file}, 8
    )
    assert scores["acc,none"] == 1.0 and scores["acc_norm,none"] == 1.0
    always_a, samples = evaluate(
        "claire_gpqa_diamond", Scripted(choose=lambda doc: "(A)"), {"gpqa_diamond_file": gpqa_file}, 8
    )
    share = sum(s["doc"]["answer"] == "(A)" for s in samples) / len(samples)
    assert always_a["acc,none"] == pytest.approx(share) and share < 1


def test_gpqa_shuffle_is_stable_and_differs_across_questions(gpqa_file):
    def orders(seed):
        model = Scripted(choose=lambda doc: "(A)")
        evaluate("claire_gpqa_extended", model, {"gpqa_extended_file": gpqa_file}, 8, random_seed=seed)
        return {r.doc["Question"]: tuple(r.doc["choices"]) for r in model.requests}

    first = orders(0)
    random.seed(12345)
    assert orders(1) == first and len(first) == 8  # stock gpqa's shuffle follows the (seeded) global random
    assert first[GPQA[0]["Question"]] == ("wrong 0c", "wrong 0a", "right 0", "wrong 0b")  # on every machine
    positions = {choices.index(row["Correct Answer"]) for row in GPQA for choices in [first[row["Question"]]]}
    assert len(positions) > 1


def test_gpqa_cot_reads_claire_answers(gpqa_file):
    def write(doc):
        return f"<|im_start|>think\nCompare (A) and (D).\n<|im_start|>answer\n{doc['answer']} {doc['choices'][0]}"

    scores, _ = evaluate("claire_gpqa_diamond_cot", Scripted(write), {"gpqa_diamond_file": gpqa_file}, 8)
    assert scores["exact_match,claire"] == 1.0 and scores["exact_match,strict-match"] == 0.0
    stock = Scripted(lambda doc: f"Compare (A) and (D). The answer is {doc['answer']}.")
    scores, _ = evaluate("claire_gpqa_diamond_cot", stock, {"gpqa_diamond_file": gpqa_file}, 8)
    assert scores["exact_match,strict-match"] == 1.0 and scores["exact_match,claire"] == 1.0


SHIPPED = {  # every task Claire ships -> the keys its results must hold
    "claire_gsm8k": {"exact_match,strict-match", "exact_match,flexible-extract", "exact_match,claire"},
    "claire_gsm8k_chat": {"exact_match,strict-match", "exact_match,flexible-extract", "exact_match,claire"},
    "claire_gpqa_diamond": {"acc,none", "acc_norm,none"},
    "claire_gpqa_extended": {"acc,none", "acc_norm,none"},
    "claire_gpqa_diamond_cot": {"exact_match,strict-match", "exact_match,flexible-extract", "exact_match,claire"},
    "claire_gpqa_extended_cot": {"exact_match,strict-match", "exact_match,flexible-extract", "exact_match,claire"},
    "claire_causal": {"acc,none", "graph_f1,none", "acc_rung0,none"},
    "claire_causal_sampled": {"pass_at_1,k8", "pass_at_k,k8", "graph_f1,k8"},
}


@pytest.fixture(scope="module")
def tiny_hf(tiny_model_dir):
    """lm-eval's real hf backend on the tiny random model."""
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=str(tiny_model_dir), batch_size=2, device="cpu", dtype="float32")


def test_every_shipped_task_is_tested_here():
    found = {p.stem for p in claire.evaluation.tasks.PATH.glob("*/*.yaml") if not p.stem.startswith("_")}
    found = {"claire_causal" if name == "causal" else name for name in found}
    assert found == set(SHIPPED)


@needs_gsm8k
@pytest.mark.parametrize("task", sorted(SHIPPED))
def test_each_shipped_task_runs_offline_on_the_hf_backend(task, tiny_hf, gsm8k_files, gpqa_file):
    metadata = gsm8k_files | {"gpqa_diamond_file": gpqa_file, "gpqa_extended_file": gpqa_file}
    manager = TaskManager(include_path=str(claire.evaluation.tasks.PATH), include_defaults=False, metadata=metadata)
    out = lm_eval.simple_evaluate(
        model=tiny_hf, tasks=[task], task_manager=manager, limit=2, apply_chat_template=True,
        gen_kwargs={"max_gen_toks": 4},
    )  # fmt: skip
    assert SHIPPED[task] <= set(out["results"][task])
    assert out["n-samples"][task]["effective"] == 2
    sample = out["samples"][task][0]
    if task == "claire_causal_sampled":  # k samples per question reach the scorer, not the first alone
        assert len(sample["resps"][0]) == 8 and len(sample["filtered_resps"][0]) == 8
    assert "<|im_start|>user\n" in str(sample["arguments"][0][0])  # the chat template was applied


def test_sampled_causal_scores_pass_at_1_and_pass_at_k():
    from claire.evaluation.tasks.causal import utils

    doc = {"answer": "G", "edges": [["G", "A"], ["A", "B"]]}
    right = "think\nI follow the arrows.\ncausality\nG -> A\nA -> B\nanswer\nG"
    wrong = "think\nI follow the arrows.\ncausality\nA -> G\nanswer\nB"
    scored = utils.process_sampled(doc, [[right, wrong, wrong, wrong]])
    assert (scored["pass_at_1"], scored["pass_at_k"]) == (0.25, 1.0)
    assert utils.process_sampled(doc, [[wrong] * 4])["pass_at_k"] == 0.0
