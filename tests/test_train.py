"""End to end on a tiny random model: run folder, loss mask, determinism, resume, merge, markers, tracking."""

import json
import shutil

import pytest
import torch

from claire import ClaireError, run_folders
from claire.train import run
from claire.training import checks, sft


def read(path):
    return json.loads(path.read_text())


def losses(metrics):
    return [(h["step"], h["loss"]) for h in metrics["history"] if "loss" in h]


@pytest.fixture(scope="module")
def finished(tiny_model_dir, tmp_path_factory):
    """One finished tiny run, shared by the tests that only read its folder."""
    from conftest import compose_train, tiny_overrides

    out = tmp_path_factory.mktemp("finished") / "run"
    cfg = compose_train(*tiny_overrides(tiny_model_dir, out))
    objective = run(cfg)
    return out, cfg, objective


def test_run_folder_is_self_describing(finished):
    out, cfg, objective = finished
    metrics = read(out / "metrics.json")
    assert objective == metrics["eval_loss"] > 0
    assert metrics["steps"] == 4 and metrics["tokens_seen"] > 0 and metrics["tokens_per_second"] > 0
    assert 0 < metrics["trainable_params"] < metrics["total_params"]
    assert [h["step"] for h in metrics["history"] if "eval_loss" in h][:2] == [2, 4]
    manifest = read(out / "manifest.json")
    assert manifest["seed"] == 42 and len(manifest["data"]["fingerprint"]) == 64
    assert {"torch", "transformers", "trl", "peft"} <= set(manifest["packages"])
    assert set(manifest["git"]) == {"commit", "dirty"} and manifest["hardware"]["cpu_count"] >= 1
    report = read(out / "data_report.json")
    assert report["kept"]["train"] == report["raw"]["train"] > 100 and report["raw"]["eval"] == 8  # max_eval_rows
    saved = (out / "config.yaml").read_text()
    assert "r: 8" in saved and "${" not in saved  # resolved
    assert (out / "adapter" / "adapter_model.safetensors").exists()
    assert (out / "adapter" / "tokenizer_config.json").exists()
    assert sorted(p.name for p in (out / "checkpoints").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]


def test_examples_show_the_loss_mask(finished):
    out, _, _ = finished
    text = (out / "examples.txt").read_text()
    assert text.count("=== example") == 3
    # the prompt (system + user + generation prompt) carries no loss; the whole completion and its end token do
    first = text.split("=== example 0")[1].split("=== example 1")[0]
    prompt, trained = first.split("[[", 1)
    assert "<|im_start|>user" in prompt and prompt.rstrip().endswith("<|im_start|>assistant")
    assert trained.startswith("<|im_start|>think") and "<|im_start|>causality" in trained
    assert "<|im_start|>answer" in trained and trained.rstrip().endswith("<|im_end|>\n]]")


def test_labels_token_by_token(tiny_cfg):
    cfg = tiny_cfg()
    trainer, _, _ = sft.build_trainer(cfg, checks.check(cfg, f"{cfg.output_dir}/checkpoints"))
    tokenizer = trainer.processing_class
    row = trainer.train_dataset[0]
    batch = trainer.data_collator([row])
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "x"}], tokenize=False, add_generation_prompt=True
    )  # template sanity: the generation prompt ends the prompt
    assert prompt.endswith("<|im_start|>assistant\n")
    start = labels.index(next(x for x in labels if x != -100))
    assert all(x == -100 for x in labels[:start])  # no loss on any prompt token
    assert labels[start:] == ids[start:]  # loss on every completion token...
    assert tokenizer.decode(ids[:start]).endswith("<|im_start|>assistant\n")
    assert tokenizer.decode(ids[start : start + 2]) == "<|im_start|>think"
    end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert end_id in labels[start:]  # ...the end token included


def test_same_seed_same_loss_curve(finished, tiny_cfg, tmp_path):
    out, _, _ = finished
    run(tiny_cfg(out=tmp_path / "again"))
    assert losses(read(tmp_path / "again" / "metrics.json")) == losses(read(out / "metrics.json"))


def test_finished_run_is_never_overwritten(finished, tiny_cfg):
    out, _, _ = finished
    with pytest.raises(ClaireError, match="already holds a finished run"):
        run(tiny_cfg(out=out))


def test_resume_continues_from_the_last_checkpoint(finished, tiny_cfg, tmp_path):
    out, _, _ = finished
    crashed = tmp_path / "crashed"
    shutil.copytree(out, crashed)
    (crashed / "metrics.json").unlink()  # as if killed after checkpoint-2
    shutil.rmtree(crashed / "checkpoints" / "checkpoint-4")
    shutil.rmtree(crashed / "adapter")
    with pytest.raises(ClaireError, match="holds an interrupted run; pass resume=true"):
        run(tiny_cfg(out=crashed))
    with pytest.raises(ClaireError, match=r"differs from the interrupted run's at \['lora.lora_alpha'\]"):
        run(tiny_cfg("resume=true", "lora.lora_alpha=99", out=crashed))
    run(tiny_cfg("resume=true", out=crashed))
    resumed, original = read(crashed / "metrics.json"), read(out / "metrics.json")
    assert losses(resumed)[-2:] == losses(original)[-2:]
    assert resumed["eval_loss"] == pytest.approx(original["eval_loss"], rel=1e-6)


def test_resume_true_finds_the_newest_interrupted_run(tmp_path):
    root = tmp_path / "experiments" / "x"
    for name in ("2026-01-01_00-00-00", "2026-01-02_00-00-00"):
        (root / name / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    (root / "2026-01-02_00-00-00" / "metrics.json").write_text("{}")  # finished: not a candidate
    assert run_folders.run_dir(str(root), True) == str(root / "2026-01-01_00-00-00")
    assert run_folders.run_dir(str(root), False) == f"{root}/{run_folders.STARTED}"
    assert run_folders.run_dir(str(root), "some/folder") == "some/folder"


def test_resume_without_a_checkpoint_says_so(tiny_cfg):
    with pytest.raises(ClaireError, match="no interrupted run"):
        run(tiny_cfg("resume=true"))


def test_merged_model_matches_the_adapter(tiny_cfg, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg = tiny_cfg("merge=true", "schedule.learning_rate=0.05")
    run(cfg)
    out = tmp_path / "run"
    assert read(out / "metrics.json")["merge_max_logit_diff"] < 1e-4
    base = AutoModelForCausalLM.from_pretrained(cfg.model.id, dtype=torch.float32)
    ids = torch.tensor([[1, 9690, 198, 2683, 359, 253, 5356]])
    with torch.no_grad():
        plain = base(input_ids=ids).logits
        adapted = PeftModel.from_pretrained(base, out / "adapter")(input_ids=ids).logits
        merged = AutoModelForCausalLM.from_pretrained(out / "merged", dtype=torch.float32)(input_ids=ids).logits
    assert (adapted - plain).abs().max() > 1e-3  # the adapter learned something...
    torch.testing.assert_close(merged, adapted, atol=1e-4, rtol=1e-4)  # ...and merging keeps it exactly


def test_special_markers_add_trained_tokens(tiny_cfg, tmp_path):
    run(tiny_cfg("model.markers=special"))
    out = tmp_path / "run"
    text = (out / "examples.txt").read_text()
    assert "[[<think>" in text and "</causality>" in text and "<|im_start|>think" not in text
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out / "adapter")
    assert all(len(tokenizer.encode(t, add_special_tokens=False)) == 1 for t in ("<think>", "</causality>"))
    config = read(out / "adapter" / "adapter_config.json")
    assert "embed_tokens" in config["modules_to_save"]  # tied to lm_head in this model: trained as one
    from safetensors import safe_open

    with safe_open(out / "adapter" / "adapter_model.safetensors", "pt") as f:
        embeddings = [f.get_tensor(k) for k in f.keys() if "embed_tokens" in k]  # noqa: SIM118
    assert embeddings and embeddings[0].shape[0] == len(tokenizer)  # the grown table, saved with the adapter


def test_full_fine_tuning(tiny_cfg, tmp_path):
    run(tiny_cfg("lora=none"))
    metrics = read(tmp_path / "run" / "metrics.json")
    assert metrics["trainable_params"] == metrics["total_params"]
    assert (tmp_path / "run" / "adapter" / "model.safetensors").exists()


def test_objective_can_be_any_metric(tiny_cfg, tmp_path):
    objective = run(tiny_cfg("objective=train_loss"))
    assert objective == read(tmp_path / "run" / "metrics.json")["train_loss"] > 0


def test_end_token_must_carry_loss(tiny_cfg):
    with pytest.raises(ClaireError, match="have no loss on model.end_token=<|endoftext|>"):
        run(tiny_cfg("model.end_token='<|endoftext|>'"))


@pytest.mark.slow
def test_wandb_offline_records_the_run_id(tiny_cfg, tmp_path):
    run(tiny_cfg("tracking=wandb"))
    out = tmp_path / "run"
    run_id = read(out / "metrics.json")["tracker_run_id"]
    assert run_id and (out / "wandb_run_id").read_text() == run_id
    assert any(run_id in p.name for p in (out / "wandb").glob("offline-run-*"))


def test_cpu_training_loss_is_trls_loss(tiny_cfg):
    # On CPU Claire trains with the model's own loss instead of trl's fused LM head: same value, same gradients
    from trl import SFTTrainer

    cfg = tiny_cfg("lora.lora_dropout=0.0")
    trainer, _, _ = sft.build_trainer(cfg, checks.check(cfg, f"{cfg.output_dir}/checkpoints"))
    model = trainer.model.train()
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    tokens = int((batch["labels"][:, 1:] != -100).sum())
    with torch.no_grad():
        _, outputs = trainer.compute_loss(model, dict(batch), return_outputs=True)
    assert outputs.logits.shape[-1] == model.config.vocab_size  # the model's own forward, not the fused head
    for num_items in (None, 2 * tokens):  # a micro-batch alone, and one of two under gradient accumulation
        ours = trainer.compute_loss(model, dict(batch), num_items_in_batch=num_items)
        ours.backward()
        ours_grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
        model.zero_grad()
        trls = SFTTrainer.compute_loss(trainer, model, dict(batch), num_items_in_batch=num_items)
        trls.backward()
        torch.testing.assert_close(ours, trls, rtol=1e-5, atol=1e-5)
        for mine, theirs in zip(ours_grads, [p.grad for p in model.parameters() if p.requires_grad], strict=True):
            torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-6)
        model.zero_grad()
