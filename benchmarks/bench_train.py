"""claire.train vs a plain trl script on the same model, data and hyperparameters, side by side.

Each run is its own process (so peak memory is its own); the two alternate, and medians are quoted.
Prints non-padding tokens per second, peak RSS, eval loss after training, and Claire's speed-up.
    python benchmarks/bench_train.py [--steps 4] [--repeats 2] [--threads 2] [--override KEY=VALUE ...]
--override is a Hydra override of conf/train.yaml for both trainers: the model, the data and the batch shape
(trainer.per_device_train_batch_size, per_device_eval_batch_size, gradient_accumulation_steps, max_length), e.g. a
tiny model on a few short batches for a smoke run; LoRA and the other hyperparameters stay the benchmark's.
"""

import json
import resource
import tempfile
from pathlib import Path

import children  # benchmarks/children.py: one process per run

from claire import machine

ROOT = Path(__file__).resolve().parents[1]
HYPER = {"learning_rate": 3e-4, "lr_scheduler_type": "cosine", "warmup_steps": 0.05, "weight_decay": 1e-4}


def claire_run(steps: int, threads: int, out: Path, extra: list[str]) -> dict:
    """claire.train with its CPU preset (bf16 weights + autocast where native, no checkpointing, length-grouped
    batches, the model's own loss instead of trl's fused LM head)."""
    from hydra import compose, initialize_config_dir

    from claire.train import run

    overrides = [f"trainer.max_steps={steps}", "trainer.save_strategy=no", "trainer.eval_strategy=no"]
    overrides += [f"threads={threads}", f"output_dir={out}", "trainer.disable_tqdm=true", *extra]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    run(cfg)
    metrics = json.loads((out / "metrics.json").read_text())
    return {"tokens": metrics["tokens_seen"], "seconds": metrics["train_runtime_s"], "eval_loss": metrics["eval_loss"]}


def trl_run(steps: int, threads: int, out: Path, extra: list[str]) -> dict:
    """What a hand-written trl script does: model by path (fp32), trl's defaults, same data and hyperparameters.

    One change from trl's defaults, in the baseline's favour: bf16 autocast only where the CPU has native bf16
    (trl's default bf16=True is ~24x slower on AVX2-only CPUs, which would make the ratio meaningless)."""
    import torch
    from hydra import compose, initialize_config_dir
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from claire import models
    from claire.training import sft

    torch.set_num_threads(threads)
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=extra)
    tokenizer = models.load_tokenizer(cfg.model)
    train, evaluation, _ = sft.prepare_data(cfg, tokenizer)
    args = SFTConfig(
        output_dir=str(out),
        per_device_train_batch_size=cfg.trainer.per_device_train_batch_size,  # 4, 8, 4 and 1024: Claire's batch shape
        per_device_eval_batch_size=cfg.trainer.per_device_eval_batch_size,
        gradient_accumulation_steps=cfg.trainer.gradient_accumulation_steps,
        max_steps=steps,
        max_length=cfg.trainer.max_length,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=machine.cpu_has_bf16(),
        seed=42,
        disable_tqdm=True,
        include_num_input_tokens_seen="non_padding",
        **HYPER,
    )
    lora = LoraConfig(r=64, lora_alpha=128, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = SFTTrainer(
        model=models.model_path(cfg.model), args=args, train_dataset=train, eval_dataset=evaluation, peft_config=lora
    )
    result = trainer.train()
    eval_loss = trainer.evaluate()["eval_loss"]
    return {
        "tokens": trainer.state.num_input_tokens_seen,
        "seconds": result.metrics["train_runtime"],
        "eval_loss": eval_loss,
    }


def one(kind: str, steps: int, threads: int, extra: list[str]) -> None:
    """Child process: run one trainer and print its figures as JSON on the last line."""
    with tempfile.TemporaryDirectory() as tmp:
        figures = (claire_run if kind == "claire" else trl_run)(steps, threads, Path(tmp) / "run", extra)
    figures["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    figures["tokens_per_s"] = figures["tokens"] / figures["seconds"]
    print(json.dumps(figures))


def main() -> None:
    """Alternate claire and trl runs, then print medians and ratios."""
    parser = children.parser(__doc__.splitlines()[0], "optimizer steps per run (16 rows each)")
    opts = parser.parse_args()
    if opts.one:
        return one(opts.one, opts.steps, opts.threads, opts.override)
    med, seconds = children.alternate(__file__, opts.repeats, opts.steps, opts.threads, opts.override, "tok/s")

    setup = "SmolLM2-135M, LoRA r64 all-linear, batch 4 x accum 4"
    if opts.override:
        setup = f"LoRA r64 all-linear, overrides {' '.join(opts.override)}"
    print(
        f"\n{setup}, {opts.steps} steps, {opts.threads} threads, "
        f"medians of {opts.repeats} alternating runs ({seconds:.0f} s); "
        f"CPU native bf16: {machine.cpu_has_bf16()}"
    )
    print(f"{'':8s}{'non-pad tok/s':>15s}{'peak RSS MB':>13s}{'eval loss':>11s}")
    for kind in ("claire", "trl"):
        m = med[kind]
        print(f"{kind:8s}{m['tokens_per_s']:15.1f}{m['peak_rss_mb']:13.0f}{m['eval_loss']:11.4f}")
    speed = med["claire"]["tokens_per_s"] / med["trl"]["tokens_per_s"]
    memory = med["claire"]["peak_rss_mb"] / med["trl"]["peak_rss_mb"]
    print(
        f"ratio   speed {speed:.2f}x   memory {memory:.2f}x   eval-loss diff "
        f"{med['claire']['eval_loss'] - med['trl']['eval_loss']:+.4f}"
    )


if __name__ == "__main__":
    main()
