"""The GPU backends set up right on a CPU: vLLM's LoRA rank, the decoding each result folder records and the
report that never compares numbers decoded by different backends, and the hf batch size that follows the machine."""

import csv
import json
from pathlib import Path

import lm_eval
import lm_eval.api.registry
import pytest
from conftest import CONF, compose_evaluate, compose_train
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from claire import ClaireError, configs, datafiles, machine, report
from claire.evaluation import harness
from claire.reporting import experiments

GSM8K = ("claire_gsm8k", "exact_match", "strict-match")


def fake_run(folder: Path, rank: int) -> Path:
    """A claire.train run folder with a saved LoRA adapter of this rank (its config, no weights)."""
    (folder / "adapter").mkdir(parents=True)
    (folder / "config.yaml").write_text(OmegaConf.to_yaml({"model": compose_evaluate().model}))
    datafiles.write_json(folder / "adapter" / "adapter_config.json", {"r": rank, "peft_type": "LORA"})
    return folder


@pytest.mark.parametrize(("rank", "allowed"), [(1, 1), (4, 8), (12, 16), (64, 64), (100, 128), (300, 320)])
def test_vllm_lora_rank_rounds_up_to_a_value_vllm_accepts(rank, allowed):
    assert harness.vllm_lora_rank(rank) == allowed


def test_a_rank_above_vllms_largest_fails_in_one_line_before_any_model(tmp_path):
    with pytest.raises(ClaireError, match=r"LoRA rank 1024 is above vLLM's largest max_lora_rank \(512\)"):
        harness.vllm_lora_rank(1024)
    run = fake_run(tmp_path / "run", 1024)
    with pytest.raises(ClaireError, match=r"rank 1024 is above"):
        harness.adopt_run(compose_evaluate(f"run={run}", "backend=vllm"))
    harness.adopt_run(compose_evaluate(f"run={run}", "backend=hf"))  # peft takes any rank


def test_a_rank_12_adapter_starts_both_vllm_engines_at_16(tmp_path):
    run = fake_run(tmp_path / "run", 12)
    cfg = compose_evaluate(f"run={run}", "backend=vllm", "tasks=[claire_causal]")
    harness.adopt_run(cfg)
    chosen = harness.subjects(cfg)
    assert chosen["tuned"][1]["max_lora_rank"] == 16 and chosen["tuned"][1]["enable_lora"] is True
    assert chosen["base"][1]["max_lora_rank"] == 16 and "lora_local_path" not in chosen["base"][1]


@pytest.mark.parametrize(
    ("backend", "overrides", "expected"),
    [
        ("hf", [], {"backend": "hf", "special_tokens": "skipped"}),
        ("vllm", [], {"backend": "vllm", "special_tokens": "kept"}),
        ("vllm", ["+gen_kwargs.skip_special_tokens=true"], {"backend": "vllm", "special_tokens": "skipped"}),
        ("api", [], {"backend": "api", "special_tokens": "server"}),
    ],
)
def test_decoding_says_which_backend_and_whether_special_tokens_stay(backend, overrides, expected):
    assert harness.decoding(compose_evaluate(f"backend={backend}", *overrides)) == expected


class FakeLM:
    """Stands in for lm-eval's model: records the batch settings it was built with."""

    built: dict = {}

    @classmethod
    def create_from_arg_obj(cls, args: dict, batch: dict) -> "FakeLM":
        cls.built = batch
        return cls()


def evaluate_fake(monkeypatch, tmp_path: Path, cuda: bool, *overrides: str) -> tuple[dict, dict]:
    """_evaluate_and_save with lm-eval stubbed out: (the batch settings the model got, the saved results.json)."""
    passed = {}

    def simple_evaluate(**kwargs):
        passed.update(kwargs)
        return {"config": {}, "results": {}}

    monkeypatch.setattr(machine, "has_cuda", lambda: cuda)
    monkeypatch.setattr(harness, "load_tasks", lambda *_: [])
    monkeypatch.setattr(lm_eval.api.registry, "get_model", lambda _: FakeLM)
    monkeypatch.setattr(lm_eval, "simple_evaluate", simple_evaluate)
    cfg = compose_evaluate("tasks=[claire_causal]", *overrides)
    harness._evaluate_and_save(cfg, "claire-hf", {}, ["claire_causal"], tmp_path / "model", manager=object())
    assert passed["batch_size"] == FakeLM.built["batch_size"]  # the model and lm-eval's record agree
    return FakeLM.built, json.loads((tmp_path / "model" / "results.json").read_text())


@pytest.mark.parametrize(
    ("cuda", "overrides", "batch"), [(True, [], "auto"), (False, [], 32), (True, ["backend.batch_size=8"], 8)]
)
def test_the_hf_batch_follows_the_machine_unless_given(monkeypatch, tmp_path, cuda, overrides, batch):
    built, results = evaluate_fake(monkeypatch, tmp_path, cuda, *overrides)
    assert built == {"batch_size": batch, "max_batch_size": 64}
    assert results["decoding"] == {"backend": "hf", "special_tokens": "skipped"}


def test_an_explicit_cpu_device_keeps_batch_32_on_a_gpu_machine(monkeypatch):
    monkeypatch.setattr(machine, "has_cuda", lambda: True)
    assert harness.batch_args(compose_evaluate("backend.device=cpu").backend)["batch_size"] == 32
    assert harness.batch_args(compose_evaluate("backend=vllm").backend)["batch_size"] == "auto"


def write_run(folder: Path, seed: int, values: tuple[float, float], decoded: dict | None) -> Path:
    """A finished run with one evaluation of base and fine-tuned on gsm8k; decoded: each model's results.json."""
    cfg = compose_train(f"seed={seed}", "run_name=exp", f"output_dir={folder}")
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(configs.resolved(cfg))))
    datafiles.write_json(folder / "metrics.json", {"eval_loss": 1.4, "history": []})
    evaluation = folder / "eval" / "report-2026"
    evaluation.mkdir(parents=True)
    (evaluation / "config.yaml").write_text(f"run: {folder}\n")
    rows = [
        {"model": label, "task": GSM8K[0], "metric": GSM8K[1], "filter": GSM8K[2], "value": value}
        for label, value in zip(("base", "tuned"), values, strict=True)
    ]
    comparison = {"task": GSM8K[0], "metric": GSM8K[1], "filter": GSM8K[2], "n": 40, "diff": values[1] - values[0],
                  "ci_low": 0.01, "ci_high": 0.2, "p_mcnemar": 0.01, "test": "McNemar"}  # fmt: skip
    datafiles.write_json(evaluation / "results.json", {"rows": rows, "comparisons": [comparison]})
    for label, results in (decoded or {}).items():
        datafiles.write_json(evaluation / label / "results.json", results)
    return folder


def make_report(tmp_path: Path, *folders: Path) -> tuple[str, dict]:
    """claire.report over the folders: the gsm8k line of tables.md and its tables.csv row."""
    listed = ",".join(str(f) for f in folders)
    overrides = [f"runs=[{listed}]", f"output_dir={tmp_path / 'report'}", "count_parameters=false"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("report", overrides=[*overrides, "decontamination.enabled=false"])
    out = report.run(cfg)
    line = next(t for t in (out / "tables.md").read_text().splitlines() if t.startswith("| gsm8k |"))
    with open(out / "tables.csv") as f:
        return line, next(csv.DictReader(f))


def decoded(backend: str) -> dict:
    """Both models' results.json as claire.evaluate now writes them."""
    return {label: {"decoding": {"backend": backend}} for label in ("base", "tuned")}


def test_older_folders_read_the_backend_from_lm_evals_model_type(tmp_path):
    folder = tmp_path / "eval"
    for label, model in (("base", "claire-hf"), ("tuned", "vllm")):
        datafiles.write_json(folder / label / "results.json", {"config": {"model": model}})
    assert experiments.decoded_by(folder, "base") == "hf" and experiments.decoded_by(folder, "tuned") == "vllm"
    datafiles.write_json(folder / "model" / "results.json", {"config": {}})
    assert experiments.decoded_by(folder, "model") is None and experiments.decoded_by(folder, "none") is None


def test_seeds_decoded_by_different_backends_are_not_compared(tmp_path):
    hf = write_run(tmp_path / "s1", 1, (0.2, 0.3), decoded("hf"))
    old_vllm = {label: {"config": {"model": "vllm"}} for label in ("base", "tuned")}  # an older folder
    vllm = write_run(tmp_path / "s2", 2, (0.4, 0.6), old_vllm)
    line, row = make_report(tmp_path, hf, vllm)
    assert "| — | — | not comparable: hf decoding (" in line and ") vs vllm decoding (" in line
    assert str(hf / "eval" / "report-2026" / "base") in line and str(vllm / "eval" / "report-2026" / "base") in line
    assert row["base"] == row["tuned"] == row["p"] == "" and row["not_comparable"].startswith("not comparable: hf")


def test_one_evaluation_with_two_backends_is_not_compared(tmp_path):
    mixed = {"base": {"decoding": {"backend": "hf"}}, "tuned": {"decoding": {"backend": "vllm"}}}
    line, _ = make_report(tmp_path, write_run(tmp_path / "s1", 1, (0.2, 0.3), mixed))
    assert "not comparable: hf decoding (" in line and "+0.100" not in line


@pytest.mark.parametrize("second", [decoded("vllm"), None])  # one backend, or one backend and an unknown one
def test_seeds_of_one_backend_or_unknown_are_compared(tmp_path, second):
    one = write_run(tmp_path / "s1", 1, (0.2, 0.3), decoded("vllm"))
    line, row = make_report(tmp_path, one, write_run(tmp_path / "s2", 2, (0.4, 0.5), second))
    assert "| 0.300 ± " in line and "not comparable" not in line and row["not_comparable"] == ""
