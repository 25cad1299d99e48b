"""Reinforcement learning on verifiable rewards (method=grpo): trl's GRPOTrainer over the run folder SFT uses.

The run is built as an SFT run is (claire.training.sft.prepare_run: checks, tokenizer, data, run folder), then the
policy: the SFT run's adapter when `init=` names one (trained on), else a fresh adapter on the base model. Rewards
come from the reward group (claire.training.rewards); every logged step's completions go to samples.jsonl.
"""

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from trl import GRPOTrainer

from claire import models
from claire.training import rewards, sft

# what trl logs at each step that metrics.json keeps as curves: the reward, each function's, KL, length and truncation
CURVES = ("reward", "reward_std", "kl", "completions/mean_length", "completions/clipped_ratio", "entropy")


class ClaireGRPOTrainer(GRPOTrainer):
    """trl's GRPOTrainer writing the completions of each logged training step to samples.jsonl."""

    samples: Path | None = None

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """trl's log, then this step's prompts, completions and rewards appended to samples.jsonl (rank 0)."""
        training = self.model.training
        super().log(logs, start_time)
        if training and self.samples is not None and self.accelerator.is_main_process and self._logs["completion"]:
            with self.samples.open("a", encoding="utf-8") as out:
                for row in sampled(self._logs, self.state.global_step):
                    out.write(json.dumps(row, ensure_ascii=False) + "\n")

    def run_summary(self) -> dict[str, Any]:
        """The reward curves per function, KL and completion shares over training, for metrics.json."""
        logged = [h for h in self.state.log_history if "reward" in h and "step" in h]
        names = sorted({k for h in logged for k in h if k.startswith("rewards/")})
        curves = {key: [[h["step"], h[key]] for h in logged if h.get(key) is not None] for key in (*CURVES, *names)}
        return {"curves": {key: points for key, points in curves.items() if points}}


def sampled(logs: dict, step: int) -> list[dict[str, Any]]:
    """trl's buffered generation batch as rows: the question, the completion, each reward and the advantage."""
    rows = []
    for i, (prompt, completion) in enumerate(zip(logs["prompt"], logs["completion"], strict=False)):
        rows.append(
            {
                "step": step,
                "question": text(prompt[-1] if isinstance(prompt, list) else prompt),
                "completion": text(completion),
                "rewards": {name: values[i] for name, values in logs["rewards"].items() if i < len(values)},
                "advantage": logs["advantages"][i] if i < len(logs["advantages"]) else None,
            }
        )
    return rows


def text(message: Any) -> str:
    """A message's content, a conversational completion's, or the text itself."""
    if isinstance(message, list):
        return "".join(text(m) for m in message)
    return message["content"] if isinstance(message, dict) else str(message)


def policy(cfg: DictConfig, run: sft.Prepared) -> Any:
    """The model to train: the base with the init run's adapter (trainable), or the base alone (peft adds one)."""
    model = models.load_model(cfg.model, run.quant, run.tokenizer)
    if not cfg.get("init"):
        if run.lora is not None and cfg.model.markers == "special":
            models.train_marker_embeddings(run.lora, model.config.get_text_config())
        return model
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(Path(str(cfg.init)) / "adapter"), is_trainable=True)


def build_trainer(cfg: DictConfig, checked: dict) -> tuple[GRPOTrainer, str | None, str | None]:
    """Run folder, prompts, policy, rewards and GRPOTrainer; returns it with the checkpoint to resume from."""
    run = sft.prepare_run(cfg, checked)
    functions, weights = rewards.build(cfg.reward, run.tokenizer)
    run.args.reward_weights = weights
    trainer = ClaireGRPOTrainer(
        model=policy(cfg, run),
        reward_funcs=functions,
        args=run.args,
        train_dataset=run.train_set,
        eval_dataset=run.eval_set,
        processing_class=run.tokenizer,
        peft_config=None if cfg.get("init") else run.lora,
    )
    if sft.writes_run_folder():
        trainer.samples = Path(cfg.output_dir) / "samples.jsonl"
    return trainer, run.checkpoint, run.tracker_id


def train(cfg: DictConfig, checked: dict) -> float:
    """GRPO as configured; the run folder, evaluation, saving and sweeps as for SFT. Returns the sweep objective."""
    return sft.train(cfg, checked, build_trainer)
