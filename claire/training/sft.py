"""The SFT run itself: data, model, trl SFTTrainer, and the files of the run folder."""

import gc
import json
import logging
import os
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass
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


def train(cfg: DictConfig, checked: dict, build: Callable | None = None) -> float:
    """Train as configured, evaluate, save the run folder; return the sweep objective. However it ends, free the
    trained model: the trials of a sweep share one process, and Hydra keeps a failed trial's exception."""
    try:
        return trained(cfg, checked, build or build_trainer)
    except BaseException as error:
        forget_frames(error)  # the finished frames it carries hold the trainer and the model
        raise
    finally:
        free_memory()


def trained(cfg: DictConfig, checked: dict, build: Callable) -> float:
    """Build the trainer, train and finish (the trainer released however that ends); return the objective."""
    started = time.time()
    trainer, checkpoint, tracker_id = build(cfg, checked)
    try:
        pruning = sweep_callback(trainer, cfg)
        metrics = train_and_finish(trainer, cfg, checkpoint, tracker_id, started)
        step = trainer.state.global_step
    finally:
        release(trainer)
        del trainer
    return outcome(cfg, metrics, pruning is not None and pruning.pruned, step)


def train_and_finish(
    trainer: SFTTrainer, cfg: DictConfig, checkpoint: str | None, tracker_id: str | None, started: float
) -> dict:
    """Train (from the checkpoint), evaluate and save; a failure ends the tracker's run as failed."""
    args = trainer.args
    log.info("Global batch %d", args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size)
    try:
        trainer.train(resume_from_checkpoint=checkpoint)
        return finish(trainer, cfg, Path(cfg.output_dir), time.time() - started, tracker_id)
    except BaseException:
        close_tracking(cfg, "failed")
        raise


def outcome(cfg: DictConfig, metrics: dict, pruned: bool, step: int) -> float:
    """A pruned trial: mark metrics.json and raise optuna.TrialPruned; else the objective from the metrics."""
    out = Path(cfg.output_dir)
    if pruned:
        import optuna

        if writes_run_folder():
            datafiles.write_json(out / "metrics.json", metrics | {"pruned": True, "pruned_at_step": step})
        close_tracking(cfg, "pruned")
        raise optuna.TrialPruned(f"pruned at step {step}; run folder {out}")
    close_tracking(cfg, "finished")
    if cfg.objective not in metrics:
        raise ClaireError(f"objective={cfg.objective} is not in metrics.json; it has {sorted(metrics)}")
    print(f"claire.train: done; run folder {out} ({cfg.objective}={metrics[cfg.objective]:.4f})")
    return float(metrics[cfg.objective])


def release(trainer: SFTTrainer) -> None:
    """Drop the trainer's references to the model, optimizer, scheduler and data loaders (the accelerator's too)."""
    trainer.accelerator.free_memory()
    handler = trainer.callback_handler
    handler.model = handler.optimizer = handler.lr_scheduler = None
    handler.train_dataloader = handler.eval_dataloader = None
    trainer.model = trainer.model_wrapped = trainer.optimizer = trainer.lr_scheduler = None


def forget_frames(error: BaseException | None, seen: set[int] | None = None) -> None:
    """Clear the local variables of the finished frames in an exception's traceback, and in those it chains."""
    seen = set() if seen is None else seen
    if error is None or id(error) in seen:
        return
    seen.add(id(error))
    traceback.clear_frames(error.__traceback__)
    forget_frames(error.__cause__, seen)
    forget_frames(error.__context__, seen)


def free_memory() -> None:
    """Collect what the run left unreachable and hand the cached CUDA memory back."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def sweep_callback(trainer: SFTTrainer, cfg: DictConfig) -> Any:
    """In a sweep trial: report the objective at each evaluation to the study, stop when pruned (else None)."""
    if "CLAIRE_SWEEP_TRIAL" not in os.environ:
        return None
    from claire import sweep

    callback = sweep.pruning_callback(cfg.objective)
    trainer.add_callback(callback)
    return callback


@dataclass
class Prepared:
    """What every method builds before its model loads: checked library objects, tokenizer, data, run folder."""

    args: Any
    lora: Any
    quant: Any
    checkpoint: str | None
    tokenizer: Any
    train_set: Any
    eval_set: Any
    tracker_id: str | None


def prepare_run(cfg: DictConfig, checked: dict) -> Prepared:
    """Library objects, tokenizer and data; then the run folder (record, config, data report, manifest, tracker)."""
    out = Path(cfg.output_dir)
    args, lora, quant = checks.build_all(checked)
    checkpoint = run_folders.check_run_dir(out, cfg)
    everyone_checked(args)
    if writes_run_folder():
        run_folders.set_aside_torn(out / "checkpoints")
    torch.set_num_threads(cpu_threads(cfg.threads))
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
        data = {"path": str(cfg.data.path), "fingerprint": fingerprint, "rows": data_report["kept"]}
        datafiles.write_json(out / "manifest.json", run_folders.manifest(cfg, data) | started_from(cfg))
        tracker_id = start_tracking(cfg, out)
    return Prepared(args, lora, quant, checkpoint, tokenizer, train_set, eval_set, tracker_id)


def started_from(cfg: DictConfig) -> dict[str, Any]:
    """The run this one continues (init=): its folder and the data it was trained on, for the manifest."""
    if not cfg.get("init"):
        return {}
    manifest = Path(str(cfg.init)) / "manifest.json"
    data = json.loads(manifest.read_text()).get("data") if manifest.is_file() else None
    return {"init": {"run": str(Path(str(cfg.init)).resolve()), "data": data}}


def build_trainer(cfg: DictConfig, checked: dict) -> tuple[SFTTrainer, str | None, str | None]:
    """Run folder, data, tokenizer, model and SFTTrainer; returns it with the checkpoint to resume from."""
    run = prepare_run(cfg, checked)
    model = models.load_model(cfg.model, run.quant, run.tokenizer)
    if run.lora is not None and cfg.model.markers == "special":
        models.train_marker_embeddings(run.lora, model.config.get_text_config())
    trainer = ClaireSFTTrainer(
        model=model,
        args=run.args,
        train_dataset=run.train_set,
        eval_dataset=run.eval_set,
        processing_class=run.tokenizer,
        peft_config=run.lora,
    )
    preview(trainer, run.tokenizer, cfg, Path(cfg.output_dir) / "examples.txt")
    return trainer, run.checkpoint, run.tracker_id


def cpu_threads(configured: int | None) -> int:
    """threads= if set, else this machine's cores shared by the processes torchrun started on it."""
    if configured:
        return configured
    processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, (os.cpu_count() or 1) // processes)


def writes_run_folder() -> bool:
    """Whether this process writes the run folder: the only process, or rank 0 of a multi-process run."""
    return int(os.environ.get("RANK", "0")) == 0


def everyone_checked(args: Any) -> None:
    """In a multi-process run, wait until every rank has checked the run folder before rank 0 writes into it."""
    if args.world_size > 1:
        args.distributed_state.wait_for_everyone()


def prepare_data(cfg: DictConfig, tokenizer: Any) -> tuple[Any, Any, dict]:
    """Raw rows -> prompt/completion splits (SFT) or prompt/gold-answer splits (RL), malformed and over-long rows
    dropped and counted."""
    rl = cfg.method.name != "sft"
    raw = datafiles.load_raw(cfg.data, datafiles.fields(cfg.data, cfg.method.name))
    max_length = cfg.trainer.max_length
    prepared, report = {}, {"dropped": {}, "kept": {}, "raw": {}}
    for split, rows in raw.items():
        if rl:
            kept, dropped = preprocess.prepare_prompts(rows, cfg.data)
        else:
            kept, dropped = preprocess.prepare_split(rows, cfg.data, cfg.model.markers)
        unreadable = len(raw.unreadable) if split == "train" else 0  # a file's lines hold no split: counted here
        if unreadable:
            dropped["unreadable_line"] += unreadable
        if rl:  # a prompt must leave room for a whole completion
            kept = preprocess.drop_long_prompts(kept, tokenizer, max_length - cfg.method.max_completion_length, dropped)
            longest_prompt = 0
        else:
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
    peak = gpu_peak()  # read before the final evaluation and merging, which are not training
    state = trainer.state
    evals = [h for h in state.log_history if "eval_loss" in h]
    fresh = evals and evals[-1]["step"] == state.global_step  # the trainer just evaluated: don't repeat it
    eval_metrics = {k: v for k, v in evals[-1].items() if k.startswith("eval_")} if fresh else trainer.evaluate()
    train_logs = [h for h in state.log_history if "train_loss" in h]
    trainable, total = parameter_counts(trainer.model)
    summary = trainer.run_summary() if hasattr(trainer, "run_summary") else {}  # what a method adds (RL: rewards)
    metrics = {
        **eval_metrics,
        "train_loss": train_logs[-1]["train_loss"] if train_logs else None,
        "train_runtime_s": train_logs[-1].get("train_runtime") if train_logs else None,
        "trainable_params": trainable,
        "total_params": total,
        "tokens_seen": state.num_input_tokens_seen,
        "steps": state.global_step,
        "epochs": state.epoch,
        "wall_time_s": wall,
        "tracker_run_id": tracker_id,
        **peak,
        **summary,
        "history": state.log_history,
    }
    if metrics["train_runtime_s"]:
        metrics["tokens_per_second"] = state.num_input_tokens_seen / metrics["train_runtime_s"]
    trainer.save_model(str(out / "adapter"))  # every rank calls it; the trainer saves on rank 0
    if not writes_run_folder():
        return metrics
    trainer.processing_class.save_pretrained(str(out / "adapter"))
    if cfg.push_to_hub:  # the card reads the trained model, which merging after QLoRA releases
        trainer.create_model_card(model_name=cfg.hub_repo_id, tags=["claire", "causal-reasoning", "trl", "sft"])
    if cfg.merge:
        metrics |= save_merged(trainer, cfg, out)
    if cfg.push_to_hub:
        push(cfg, out)
    datafiles.write_json(out / "metrics.json", metrics)
    return metrics


def gpu_peak() -> dict[str, int]:
    """The most GPU memory torch allocated and reserved so far (the dry run's estimate is checked against it)."""
    if not torch.cuda.is_available():
        return {}
    return {
        "gpu_peak_allocated_bytes": torch.cuda.max_memory_allocated(),
        "gpu_peak_reserved_bytes": torch.cuda.max_memory_reserved(),
    }


def parameter_counts(model: Any) -> tuple[int, int]:
    """Trainable and total parameters; a peft model's as peft counts them (a packed 4-bit weight counts in full)."""
    if hasattr(model, "get_nb_trainable_parameters"):
        return model.get_nb_trainable_parameters()
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def is_quantized(model: Any) -> bool:
    """Whether the model (under its adapter) holds bitsandbytes 4- or 8-bit weights, as peft tells them apart."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return bool(getattr(base, "is_loaded_in_4bit", False) or getattr(base, "is_loaded_in_8bit", False))


def save_merged(trainer: SFTTrainer, cfg: DictConfig, out: Path) -> dict:
    """Save the adapter merged into the base weights in merged/; return how it merged and the largest logit change
    it caused. After QLoRA the base is reloaded in model.dtype: merging into 4-bit weights would re-quantize them."""
    probe = trainer.train_dataset[0]["input_ids"][:64]
    tokenizer = trainer.processing_class
    if not is_quantized(trainer.model):
        diff = merge_and_save(trainer.model, probe, tokenizer, out / "merged")
        return {"merge_max_logit_diff": diff, "merged_from": "trained weights"}
    release(trainer)  # the 4-bit model and optimizer leave the GPU before the full-precision base comes in
    free_memory()
    diff = merge_and_save(reloaded(cfg, tokenizer, out / "adapter"), probe, tokenizer, out / "merged")
    return {"merge_max_logit_diff": diff, "merged_from": f"{cfg.model.dtype} reload"}


def reloaded(cfg: DictConfig, tokenizer: Any, adapter: Path) -> Any:
    """The base model unquantized in model.dtype (on the GPU if there is one) with the saved adapter applied."""
    from peft import PeftModel

    base = models.load_model(cfg.model, None, tokenizer)
    if torch.cuda.is_available():
        base = base.to(torch.device("cuda", torch.cuda.current_device()))
    return PeftModel.from_pretrained(base, str(adapter))


def merge_and_save(model: Any, probe: list[int], tokenizer: Any, path: Path) -> float:
    """Merge the adapter into the model's weights, save it with the tokenizer; return the largest logit change."""
    ids = torch.tensor([probe], device=model.device)
    model.eval()
    with torch.no_grad():
        before = model(input_ids=ids).logits.float()
        merged = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
        after = merged(input_ids=ids).logits.float()
    merged.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return float((before - after).abs().max())


def push(cfg: DictConfig, out: Path) -> None:
    """Upload the merged model if there is one, else the adapter, with the model card finish() wrote (token from
    HF_TOKEN)."""
    from huggingface_hub import HfApi

    folder = out / ("merged" if cfg.merge else "adapter")
    if (out / "checkpoints" / "README.md").exists():
        (folder / "README.md").write_text((out / "checkpoints" / "README.md").read_text())
    api = HfApi(token=os.environ.get("HF_TOKEN"))
    api.create_repo(cfg.hub_repo_id, exist_ok=True, private=True)
    api.upload_folder(folder_path=str(folder), repo_id=cfg.hub_repo_id, commit_message=f"claire run {out.name}")
