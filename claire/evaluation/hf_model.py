"""lm-eval's hf backend as Claire loads models: the base and the fine-tuned model with one vocabulary, and Claire's
trace markers kept when a run added them as special tokens.

Vocabulary: with `peft=`, lm-eval resizes the model's embeddings to the tokenizer's length, which *shrinks* a padded
vocabulary (Qwen2.5's 151,936 rows hold 151,665 tokens) for the fine-tuned model only, so its softmax would run over
fewer rows than the base model's. Here both load as training loaded them (claire.models.grow_embeddings): grown for
added tokens, never shrunk.

Markers: lm-eval's HFLM decodes generations with skip_special_tokens=True. With model.markers=special (the Llama
configs) the trace tags <think>, <causality> and their closing tags are added special tokens, so they would vanish
from every output and neither the answer reader nor the graph metrics could find them.
"""

from typing import Any

from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM

from claire.completions import decode
from claire.decoding import BudgetForcing
from claire.models import grow_embeddings

BUDGET_KEYS = ("min_thinking_tokens", "max_thinking_tokens", "max_waits", "wait", "markers")


@register_model("claire-hf")
class ClaireHFLM(HFLM):
    """HFLM loading adapters without shrinking the vocabulary, decoding Claire's trace markers, and forcing a
    thinking budget when model_args carry one (decode=budget)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.budget = {key: kwargs.pop(key) for key in BUDGET_KEYS if key in kwargs}
        super().__init__(*args, **kwargs)

    def _model_generate(self, context: Any, max_length: int, stop: list[str], **generation_kwargs: Any) -> Any:
        """lm-eval's generate call, with a fresh BudgetForcing per batch under decode=budget."""
        if self.budget:
            ends = self.model.generation_config.eos_token_id  # every end-of-turn token the model stops on
            forcing = BudgetForcing(self.tokenizer, context.shape[1], **self.budget, eos_token_id=ends)
            generation_kwargs["logits_processor"] = [forcing]
        return super()._model_generate(context, max_length, stop, **generation_kwargs)

    def _create_model(self, pretrained: str, *args: Any, peft: str | None = None, **kwargs: Any) -> None:
        super()._create_model(pretrained, *args, peft=None, **kwargs)
        if peft:
            from peft import PeftModel

            grow_embeddings(self._model, self.tokenizer)
            adapted = PeftModel.from_pretrained(self._model, peft, revision=kwargs.get("revision") or "main")
            quantized = getattr(self._model, "is_quantized", False) or getattr(self._model, "hf_quantizer", None)
            self._model = adapted if quantized else adapted.merge_and_unload()

    def tok_decode(self, tokens: Any, skip_special_tokens: bool = True) -> str:
        """The text of tokens; with skip_special_tokens, every special token but the trace markers is dropped."""
        if not skip_special_tokens:
            return super().tok_decode(tokens, skip_special_tokens=False)
        return decode(self.tokenizer, tokens)
