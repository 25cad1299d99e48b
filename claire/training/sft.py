"""The SFT run itself: data, model, trl SFTTrainer, and the files of the run folder."""

import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from transformers import Trainer
from trl import SFTTrainer

from claire import ClaireError, configs, datafiles, models, run_folders
from claire.training import checks, preprocess

log = logging.getLogger("claire.train")


class ClaireSFTTrainer(SFTTrainer):
    """trl's SFTTrainer, training with the model's own loss on CPU."""

    def compute_loss(self, model: Any, inputs: dict, return_outputs: bool = False, num_items_in_batch: Any = None):
        # trl's fused LM head has only a Triton kernel; its CPU fallback makes a step ~30% slower (docs/results.md)
        if self.model.training and self.args.device.type == "cpu":
            inputs["use_cache"] = False
            return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


def train(cfg: DictConfig, checked: dict) -> float:
    """Train as configured, evaluate, save the run folder; return the sweep objective."""
    started = time.time()
    out = Path(cfg.output_dir)
    trainer, checkpoint, tracker_id = build_trainer(cfg, checked)
    args = trainer.args
    log.info("Global batch %d", args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size)
    pruning = sweep_callback(trainer, cfg)
    try:
        trainer.train(resume_from_checkpoint=checkpoint)
        metrics = finish(trainer, cfg, out, time.time() - started, tracker_id)
    except BaseException:
        close_tracking(cfg, "failed")
        raise
    if pruning is not None and pruning.pruned:
        import optuna

        if writes_run_folder():
            pruned = {"pruned": True, "pruned_at_step": trainer.state.global_step}
            datafiles.write_json(out / "metrics.json", metrics | pruned)
        close_tracking(cfg, "pruned")
        raise optuna.TrialPruned(f"pruned at step {trainer.state.global_step}; run folder {out}")
    close_tracking(cfg, "finished")
    if cfg.objective not in metrics:
        raise ClaireError(f"objective={cfg.objective} is not in metrics.json; it has {sorted(metrics)}")
    print(f"claire.train: done; run folder {out} ({cfg.objective}={metrics[cfg.objective]:.4f})")
    return float(metrics[cfg.objective])


def sweep_callback(trainer: SFTTrainer, cfg: DictConfig) -> Any:
    """In a sweep trial: report the objective at each evaluation to the study, stop when pruned (else None)."""
    if "CLAIRE_SWEEP_TRIAL" not in os.environ:
        return None
    from claire import sweep

    callback = sweep.pruning_callback(cfg.objective)
    trainer.add_callback(callback)
    return callback


def build_trainer(cfg: DictConfig, checked: dict) -> tuple[SFTTrainer, str | None, str | None]:
    """Run folder, data, tokenizer, model and SFTTrainer; returns it with the checkpoint to resume from."""
    out = Path(cfg.output_dir)
    args, lora, quant = checks.build_all(checked)
    checkpoint = run_folders.check_run_dir(out, cfg)
    everyone_checked(args)
    if writes_run_folder():
        run_folders.set_aside_torn(out / "checkpoints")
    torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
    tokenizer = models.load_tokenizer(cfg.model)
    train_set, eval_set, data_report = prepare_data(cfg, tokenizer)
    tracker_id = None
    if writes_run_folder():  # the data and tokenizer loaded: from here on the run has a folder
        out.mkdir(parents=True, exist_ok=True)
        run_folders.record(out, cfg)
        if checkpoint is None:
            (out / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(configs.resolved(cfg))))
        datafiles.write_json(out / "data_report.json", data_report)
        fingerprint = preprocess.fingerprint(train_set, eval_set)
        rows = data_report["kept"]
        datafiles.write_json(
            out / "manifest.json",
            run_folders.manifest(cfg, {"path": str(cfg.data.path), "fingerprint": fingerprint, "rows": rows}),
        )
        tracker_id = start_tracking(cfg, out)
    model = models.load_model(cfg.model, quant, tokenizer)
    if lora is not None and cfg.model.markers == "special":
        models.train_marker_embeddings(lora, model.config.get_text_config())
    trainer = ClaireSFTTrainer(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=eval_set,
        processing_class=tokenizer,
        peft_config=lora,
    )
    preview(trainer, tokenizer, cfg, out / "examples.txt")
    return trainer, checkpoint, tracker_id


def writes_run_folder() -> bool:
    """Whether this process writes the run folder: the only process, or rank 0 of a multi-process run."""
    return int(os.environ.get("RANK", "0")) == 0


def everyone_checked(args: Any) -> None:
    """In a multi-process run, wait until every rank has checked the run folder before rank 0 writes into it."""
    if args.world_size > 1:
        args.distributed_state.wait_for_everyone()


def prepare_data(cfg: DictConfig, tokenizer: Any) -> tuple[Any, Any, dict]:
    """Raw traces -> prompt/completion splits, malformed and over-long rows dropped and counted."""
    raw = datafiles.load_raw(cfg.data)
    max_length = cfg.trainer.max_length
    prepared, report = {}, {"dropped": {}, "kept": {}, "raw": {}}
    for split, rows in raw.items():
        kept, dropped = preprocess.prepare_split(rows, cfg.data, cfg.model.markers)
        unreadable = len(raw.unreadable) if split == "train" else 0  # a file's lines hold no split: counted here
        if unreadable:
            dropped["unreadable_line"] += unreadable
        kept, longest_prompt = preprocess.drop_too_long(kept, tokenizer, max_length, dropped)
        if longest_prompt > max_length:
            raise ClaireError(
                f"trainer.max_length={max_length} is below the longest {split} prompt ({longest_prompt} tokens); "
                f"use trainer.max_length>={longest_prompt}"
            )
        total = len(rows) + unreadable
        preprocess.check_drops(split, total, dropped, cfg.data.max_drop_fraction)
        prepared[split] = kept
        report["raw"][split], report["kept"][split], report["dropped"][split] = total, len(kept), dict(dropped)
    expected = cfg.data.expected_rows
    if expected and any(report["raw"].get(k) != v for k, v in expected.items()):
        log.warning("data.path=%s has %s rows; the report's data had %s", cfg.data.path, report["raw"], dict(expected))
    return prepared["train"], prepared["eval"], report


def start_tracking(cfg: DictConfig, out: Path) -> str | None:
    """Point the tracker at this run (wandb offline unless WANDB_MODE says otherwise); return its run id."""
    if cfg.tracking.report_to != "wandb":
        return None
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ["WANDB_PROJECT"] = cfg.tracking.project
    os.environ["WANDB_DIR"] = str(out)
    id_file = out / "wandb_run_id"
    run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:12]
    id_file.write_text(run_id)
    os.environ["WANDB_RUN_ID"], os.environ["WANDB_RESUME"] = run_id, "allow"
    return run_id


def close_tracking(cfg: DictConfig, outcome: str) -> None:
    """End this run's tracker run tagged with how it ended (finished, pruned, failed) and, in a sweep, its study and
    trial: the trials of a sweep share one process, and the next would otherwise log into this run."""
    if cfg.tracking.report_to != "wandb":
        return
    import wandb

    if wandb.run is None:
        return
    tags = [outcome]
    if "CLAIRE_SWEEP_TRIAL" in os.environ:
        tags += [f"study:{os.environ['CLAIRE_SWEEP_STUDY']}", f"trial:{os.environ['CLAIRE_SWEEP_TRIAL']}"]
    wandb.run.tags = (*wandb.run.tags, *tags)
    wandb.run.summary["outcome"] = outcome
    wandb.finish(exit_code=int(outcome == "failed"))
    wandb.teardown()  # wandb keeps the environment it first read (WANDB_DIR, WANDB_RUN_ID): the next run re-reads it


def preview(trainer: SFTTrainer, tokenizer: Any, cfg: DictConfig, path: Path) -> None:
    """Render a few training examples with the loss mask; fail if any row's end token carries no loss."""
    end_id = tokenizer.convert_tokens_to_ids(cfg.model.end_token)
    dataset = trainer.train_dataset
    missing = [i for i, row in enumerate(dataset["labels"]) if end_id not in row]
    if missing:
        raise ClaireError(
            f"{len(missing)} training rows have no loss on model.end_token={cfg.model.end_token} (row {missing[0]}); "
            "the chat template or trainer.max_length cuts it off, so the model would never learn to stop"
        )
    blocks = []
    for i in range(min(cfg.preview_examples, len(dataset))):
        ids, labels = dataset[i]["input_ids"], dataset[i]["labels"]
        blocks.append(f"=== example {i}: {len(ids)} tokens, {sum(x != -100 for x in labels)} with loss\n")
        blocks.append(render_loss_mask(tokenizer, ids, labels) + "\n")
    if writes_run_folder():
        path.write_text(
            "Training examples as the model sees them (chat template applied). Text inside [[ ]] carries loss.\n\n"
            + "".join(blocks)
        )


def render_loss_mask(tokenizer: Any, ids: list[int], labels: list[int]) -> str:
    """Decode ids, wrapping each run of loss-carrying tokens in [[ ]]."""
    pieces, start = [], 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or (labels[i] == -100) != (labels[start] == -100):
            text = tokenizer.decode(ids[start:i])
            pieces.append(text if labels[start] == -100 else f"[[{text}]]")
            start = i
    return "".join(pieces)


def finish(trainer: SFTTrainer, cfg: DictConfig, out: Path, wall: float, tracker_id: str | None) -> dict:
    """Evaluate, save adapter (and merged model), write metrics.json; push if asked."""
    state = trainer.state
    evals = [h for h in state.log_history if "eval_loss" in h]
    fresh = evals and evals[-1]["step"] == state.global_step  # the trainer just evaluated: don't repeat it
    eval_metrics = {k: v for k, v in evals[-1].items() if k.startswith("eval_")} if fresh else trainer.evaluate()
    train_logs = [h for h in state.log_history if "train_loss" in h]
    model = trainer.model
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    metrics = {
        **eval_metrics,
        "train_loss": train_logs[-1]["train_loss"] if train_logs else None,
        "train_runtime_s": train_logs[-1].get("train_runtime") if train_logs else None,
        "trainable_params": trainable,
        "total_params": sum(p.numel() for p in model.parameters()),
        "tokens_seen": state.num_input_tokens_seen,
        "steps": state.global_step,
        "epochs": state.epoch,
        "wall_time_s": wall,
        "tracker_run_id": tracker_id,
        "history": state.log_history,
    }
    if metrics["train_runtime_s"]:
        metrics["tokens_per_second"] = state.num_input_tokens_seen / metrics["train_runtime_s"]
    trainer.save_model(str(out / "adapter"))  # every rank calls it; the trainer saves on rank 0
    if not writes_run_folder():
        return metrics
    trainer.processing_class.save_pretrained(str(out / "adapter"))
    if cfg.merge:
        metrics["merge_max_logit_diff"] = save_merged(trainer, out / "merged")
    if cfg.push_to_hub:
        push(trainer, cfg, out)
    datafiles.write_json(out / "metrics.json", metrics)
    return metrics


def save_merged(trainer: SFTTrainer, path: Path) -> float:
    """Merge the adapter into the base weights, save, and return the largest logit change it caused."""
    model = trainer.model
    probe = torch.tensor([trainer.train_dataset[0]["input_ids"][:64]], device=model.device)
    model.eval()
    with torch.no_grad():
        before = model(input_ids=probe).logits.float()
        merged = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
        after = merged(input_ids=probe).logits.float()
    merged.save_pretrained(str(path))
    trainer.processing_class.save_pretrained(str(path))
    return float((before - after).abs().max())


def push(trainer: SFTTrainer, cfg: DictConfig, out: Path) -> None:
    """Upload the merged model if there is one, else the adapter, with a model card (token from HF_TOKEN)."""
    from huggingface_hub import HfApi

    folder = out / ("merged" if cfg.merge else "adapter")
    trainer.create_model_card(model_name=cfg.hub_repo_id, tags=["claire", "causal-reasoning", "trl", "sft"])
    if (out / "checkpoints" / "README.md").exists():
        (folder / "README.md").write_text((out / "checkpoints" / "README.md").read_text())
    api = HfApi(token=os.environ.get("HF_TOKEN"))
    api.create_repo(cfg.hub_repo_id, exist_ok=True, private=True)
    api.upload_folder(folder_path=str(folder), repo_id=cfg.hub_repo_id, commit_message=f"claire run {out.name}")
