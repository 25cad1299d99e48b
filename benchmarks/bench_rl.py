"""claire.train method=grpo vs a plain trl GRPO script on the same model, data, rewards and batch, side by side.

Each run is its own process (so peak memory is its own); the two alternate, and medians are quoted.
Prints completion tokens per second (completion tokens generated / training wall time), optimizer steps per hour,
peak RSS and the mean reward, and Claire's speed-up.
    python benchmarks/bench_rl.py [--steps 4] [--repeats 2] [--threads 2] [--generations 8]
                                  [--max-completion-length 128] [--override KEY=VALUE ...]
--override is a Hydra override of conf/train.yaml for both trainers: the model, the data and the batch shape
(trainer.per_device_train_batch_size, gradient_accumulation_steps, max_length), e.g. a tiny model for a smoke run;
LoRA, the rewards (reward=causal) and the other hyperparameters stay the benchmark's.
"""

import json
import resource
import statistics
import tempfile
from pathlib import Path

import children  # benchmarks/children.py: one process per run

from claire import machine

ROOT = Path(__file__).resolve().parents[1]


def shape(generations: int, length: int) -> list[str]:
    """The overrides both trainers share: GRPO with the group size and completion length measured."""
    return ["method=grpo", f"method.num_generations={generations}", f"method.max_completion_length={length}"]


def completion_tokens(history: list[dict], batch: int) -> tuple[float, int]:
    """Completion tokens generated in training, from trl's per-step logs (completions/mean_length over the step's
    generation batch of `batch` completions), and the number of steps logged."""
    steps = [h for h in history if "completions/mean_length" in h and "step" in h]
    return sum(h["completions/mean_length"] for h in steps) * batch, len(steps)


def figures(history: list[dict], steps: int, batch: int, seconds: float) -> dict:
    """Tokens, seconds and mean reward of one run; refuses logs that do not cover every step."""
    tokens, logged = completion_tokens(history, batch)
    if logged != steps:
        raise SystemExit(f"{logged} of {steps} steps logged completions/mean_length; the count needs logging_steps=1")
    rewards = [h["reward"] for h in history if "reward" in h and "step" in h]
    return {"tokens": tokens, "seconds": seconds, "reward": statistics.mean(rewards) if rewards else float("nan")}


def claire_run(steps: int, threads: int, out: Path, extra: list[str]) -> dict:
    """`python -m claire.train method=grpo` with its CPU preset (precision following the CPU, no checkpointing)."""
    from hydra import compose, initialize_config_dir

    from claire.train import run

    overrides = [f"trainer.max_steps={steps}", "trainer.save_strategy=no", "trainer.eval_strategy=no"]
    overrides += [f"threads={threads}", f"output_dir={out}", "trainer.disable_tqdm=true"]
    overrides += ["data.max_eval_rows=1", *extra]  # claire.train evaluates once at the end: one prompt's group
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    run(cfg)
    metrics = json.loads((out / "metrics.json").read_text())
    batch = cfg.trainer.per_device_train_batch_size * cfg.trainer.gradient_accumulation_steps
    return figures(metrics["history"], metrics["steps"], batch, metrics["train_runtime_s"])


def trl_run(steps: int, threads: int, out: Path, extra: list[str]) -> dict:
    """What a hand-written trl GRPO script does: model by path (float32), trl's defaults, Claire's prompts and reward
    functions, and the settings that must match (group size, completion length, batch, steps, lr, beta, CPU).

    One choice in the baseline's favour, as in bench_train: bf16 autocast only where the CPU has native bf16 (trl's
    default bf16=True; on AVX2-only CPUs it is emulated and many times slower)."""
    import torch
    from hydra import compose, initialize_config_dir
    from peft import LoraConfig
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from claire import models
    from claire.training import rewards, sft

    torch.set_num_threads(threads)
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=extra)
    path = models.model_path(cfg.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    train, _, _ = sft.prepare_data(cfg, tokenizer)  # the sample's questions as conversational prompts, gold fields
    functions, weights = rewards.build(cfg.reward, tokenizer)
    args = GRPOConfig(
        output_dir=str(out),
        per_device_train_batch_size=cfg.trainer.per_device_train_batch_size,  # 4 x 4: Claire's batch shape
        gradient_accumulation_steps=cfg.trainer.gradient_accumulation_steps,
        num_generations=cfg.method.num_generations,
        max_completion_length=cfg.method.max_completion_length,
        max_steps=steps,
        learning_rate=cfg.schedule.learning_rate,
        beta=cfg.method.beta,
        reward_weights=weights,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=machine.cpu_has_bf16(),
        seed=42,
        disable_tqdm=True,
    )
    lora = LoraConfig(r=64, lora_alpha=128, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = GRPOTrainer(
        model=path,
        reward_funcs=functions,
        args=args,
        train_dataset=train,
        processing_class=tokenizer,
        peft_config=lora,
    )
    result = trainer.train()
    batch = args.per_device_train_batch_size * args.gradient_accumulation_steps
    return figures(trainer.state.log_history, trainer.state.global_step, batch, result.metrics["train_runtime"])


def one(kind: str, steps: int, threads: int, extra: list[str]) -> None:
    """Child process: run one trainer and print its figures as JSON on the last line."""
    with tempfile.TemporaryDirectory() as tmp:
        result = (claire_run if kind == "claire" else trl_run)(steps, threads, Path(tmp) / "run", extra)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["tokens_per_s"] = result["tokens"] / result["seconds"]
    result["steps_per_hour"] = steps * 3600 / result["seconds"]
    print(json.dumps(result))


def main() -> None:
    """Alternate claire and trl runs, then print medians and ratios."""
    parser = children.parser(__doc__.splitlines()[0], "optimizer steps per run (2 prompts x 8 completions)")
    parser.add_argument("--generations", type=int, default=8, help="completions per prompt (method.num_generations)")
    parser.add_argument(
        "--max-completion-length", type=int, default=128, help="tokens per completion at most (method.*)"
    )
    opts = parser.parse_args()
    extra = [*shape(opts.generations, opts.max_completion_length), *opts.override]
    if opts.one:
        return one(opts.one, opts.steps, opts.threads, opts.override)
    med, seconds = children.alternate(__file__, opts.repeats, opts.steps, opts.threads, extra, "completion tok/s")

    setup = "SmolLM2-135M, LoRA r64 all-linear, reward=causal, batch 4 x accum 4"
    if opts.override:
        setup = f"LoRA r64 all-linear, reward=causal, overrides {' '.join(opts.override)}"
    print(
        f"\n{setup}, {opts.generations} generations of <= {opts.max_completion_length} tokens, {opts.steps} steps, "
        f"{opts.threads} threads, medians of {opts.repeats} alternating runs ({seconds:.0f} s); "
        f"CPU native bf16: {machine.cpu_has_bf16()}"
    )
    print(f"{'':8s}{'completion tok/s':>18s}{'steps/hour':>12s}{'peak RSS MB':>13s}{'mean reward':>13s}")
    for kind in ("claire", "trl"):
        m = med[kind]
        row = f"{m['tokens_per_s']:18.1f}{m['steps_per_hour']:12.1f}{m['peak_rss_mb']:13.0f}{m['reward']:13.4f}"
        print(f"{kind:8s}{row}")
    speed = med["claire"]["tokens_per_s"] / med["trl"]["tokens_per_s"]
    steps = med["claire"]["steps_per_hour"] / med["trl"]["steps_per_hour"]
    memory = med["claire"]["peak_rss_mb"] / med["trl"]["peak_rss_mb"]
    print(f"ratio   speed {speed:.2f}x   steps/hour {steps:.2f}x   memory {memory:.2f}x")


if __name__ == "__main__":
    main()
