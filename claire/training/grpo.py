"""Reinforcement learning on verifiable rewards (method=grpo): trl's GRPOTrainer over the run folder SFT uses.

The run is built as an SFT run is (claire.training.sft.prepare_run: checks, tokenizer, data, run folder), then the
policy: the SFT run's adapter when `init=` names one (trained on), else a fresh adapter on the base model. Rewards
come from the reward group (claire.training.rewards); every logged step's completions go to samples.jsonl.
"""

import json
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from trl import GRPOTrainer
from trl.trainer.utils import selective_log_softmax_and_entropy

from claire import models
from claire.training import rewards, sft

# what trl logs at each step that metrics.json keeps as curves: the reward, each function's, KL, length and truncation
CURVES = ("reward", "reward_std", "kl", "completions/mean_length", "completions/clipped_ratio", "entropy")


class ClaireGRPOTrainer(GRPOTrainer):
    """trl's GRPOTrainer writing each logged step's completions to samples.jsonl, and two CPU speed-ups.

    Generation dominates a GRPO step on a CPU, and trl 1.16 spends it in two places Claire changes there (measured by
    `make bench-rl`, docs/results.md): it decodes through the unmerged LoRA adapter, every token paying for the
    adapter's extra matmuls, and it scores completions through its fused LM head, whose CPU fallback is slower than
    the model's own logits. Both are private trl methods (trl is pinned); on a GPU, with vLLM or with continuous
    batching trl's own path runs unchanged.
    """

    samples: Path | None = None

    def _generate_single_turn(self, *args: Any, **kwargs: Any) -> Any:
        """trl's generation, on a CPU decoding from the adapter merged into copies of the base weights."""
        plain = self.args.device.type == "cpu" and not (self.use_vllm or self.use_transformers_continuous_batching)
        with merged_adapter(self.model) if plain else nullcontext():
            return super()._generate_single_turn(*args, **kwargs)

    def _get_per_token_logps_and_entropies(
        self,
        model: Any,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        logits_to_keep: int,
        batch_size: int | None = None,
        compute_entropy: bool = False,
        compute_aux_loss: bool = False,
        **multimodal: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Completion tokens' log-probs (and entropies); on a CPU from the model's logits of those positions only."""
        fused = self.args.device.type != "cpu" or self.args.cast_lm_head_to_fp32 or compute_aux_loss
        if fused or any(value is not None for value in multimodal.values()):
            return super()._get_per_token_logps_and_entropies(
                model,
                input_ids,
                attention_mask,
                logits_to_keep,
                batch_size,
                compute_entropy,
                compute_aux_loss,
                **multimodal,
            )
        batch_size = batch_size or input_ids.size(0)
        grad_entropy = bool(self.args.entropy_coef) or self.args.use_adaptive_entropy
        logps, entropies = [], []
        for start in range(0, input_ids.size(0), batch_size):
            ids, mask = input_ids[start : start + batch_size], attention_mask[start : start + batch_size]
            with self.accelerator.autocast():
                logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=logits_to_keep + 1, use_cache=False)
            chosen, entropy = selective_log_softmax_and_entropy(
                logits.logits[:, -logits_to_keep - 1 : -1].float(),
                ids[:, -logits_to_keep:],
                grad_entropy,
                self.temperature,
            )
            logps.append(chosen)
            entropies.append(entropy)
        return torch.cat(logps), torch.cat(entropies) if compute_entropy else None, None

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


@contextmanager
def merged_adapter(model: Any) -> Iterator[None]:
    """The active LoRA adapters merged into copies of the base weights; the original tensors are back afterwards.

    peft's merge/unmerge would subtract the delta again and leave rounding in bf16 weights; swapping the tensors back
    leaves the base weights bit for bit as they were. A model without unmerged LoRA layers is left as it is.
    """
    from peft.tuners.lora import LoraLayer

    layers = [m for m in model.modules() if isinstance(m, LoraLayer) and m.active_adapters and not m.merged]
    saved = [layer.get_base_layer().weight.data for layer in layers]
    try:
        with torch.no_grad():
            for layer in layers:
                base = layer.get_base_layer()
                base.weight.data = base.weight.data.clone()
                layer.merge(adapter_names=layer.active_adapters)
        yield
    finally:
        for layer, weight in zip(layers, saved, strict=True):
            layer.get_base_layer().weight.data = weight
            layer.merged_adapters = []


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
