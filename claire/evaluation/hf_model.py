"""lm-eval's hf backend, decoding Claire's trace markers when a run added them as special tokens.

lm-eval's HFLM decodes generations with skip_special_tokens=True. With model.markers=special (the Llama configs)
the trace tags <think>, <causality> and their closing tags are added special tokens, so they would vanish from
every output and neither the answer reader nor the graph metrics could find them.
"""

from typing import Any

from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM

from claire.traces import TRACE_TAGS


@register_model("claire-hf")
class ClaireHFLM(HFLM):
    """HFLM whose decoding skips special tokens except Claire's trace markers."""

    def tok_decode(self, tokens: Any, skip_special_tokens: bool = True) -> str:
        """The text of tokens; with skip_special_tokens, every special token but the trace markers is dropped."""
        if not skip_special_tokens:
            return super().tok_decode(tokens, skip_special_tokens=False)
        vocab = self.tokenizer.get_vocab()
        kept = {vocab[marker] for marker in TRACE_TAGS if marker in vocab}
        dropped = set(self.tokenizer.all_special_ids) - kept
        return self.tokenizer.decode([t for t in tokens if t not in dropped], skip_special_tokens=False)
