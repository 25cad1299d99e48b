"""The folder claire.serve hands to the server: one whole model (an adapter merged into its base model once, into a
cache) whose tokenizer carries a response template, so that the server returns Claire's thinking and causality block
as the reasoning (`reasoning_content`; vLLM's `reasoning`) and the answer alone as `content`."""

import hashlib
import os
import re
import shutil
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from transformers import AutoTokenizer

from claire import cache_root, decoding, models
from claire.traces import NATIVE_MARKERS


def response_template(tokenizer: Any, markers: str, end_token: str) -> dict:
    """transformers' response template for a Claire model: reasoning from the thinking marker to the end-of-thinking
    marker, the answer up to the end of the turn; anchored where the chat template starts the assistant's turn. The
    reasoning field is named `thinking`: transformers serve reads it as reasoning_content, and vLLM's `hf` reasoning
    parser accepts no other name."""
    thinking = "<think>" if markers == "special" else NATIVE_MARKERS["think"]
    end = decoding.end_of_thinking(markers)  # literals, not a pattern: vLLM finds the end of thinking by token ids
    return {
        "defaults": {"role": "assistant"},
        "start_anchor": generation_prompt(tokenizer),
        "fields": {
            "thinking": {"open": thinking, "close": [f"{end}\n", end], "content": "text"},  # one newline swallowed
            "content": {"close_pattern": rf"\s*{re.escape(end_token)}", "content": "text"},
        },
    }


def generation_prompt(tokenizer: Any) -> str:
    """What the chat template writes to open the assistant's turn (e.g. "<|im_start|>assistant\\n")."""
    turn = [{"role": "user", "content": "x"}]
    opened = tokenizer.apply_chat_template(turn, add_generation_prompt=True, tokenize=False)
    closed = tokenizer.apply_chat_template(turn, add_generation_prompt=False, tokenize=False)
    return opened[len(closed) :] if opened.startswith(closed) else opened[opened.rindex("x") + 1 :].lstrip()


TEMPLATE_VERSION = 3  # part of the cache key: a change to response_template() rebuilds the folders


def local_model(model: DictConfig) -> Path:
    """The base model as a local folder: its own folder, the embedded model's conversion, or the hub's download."""
    path = Path(models.model_path(model))
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    try:
        files = ["*.json", "*.safetensors", "*.jinja", "*.model", "*.txt", "*.py"]  # not a repo's other checkpoints
        return Path(snapshot_download(str(model.id), revision=model.revision, allow_patterns=files))
    except Exception as error:  # offline, unknown id, gated: one line, before anything loads
        raise models.hub_error(model, error) from error


def source_folders(model: DictConfig, run: str | None, merged: bool) -> list[Path]:
    """The folders the served model is made from: a whole model alone, or a run's adapter and its base model."""
    if not run:
        return [local_model(model)]
    whole = Path(run) / ("merged" if merged else "adapter")
    if merged or (whole / "config.json").is_file():  # merge=true's merged/, or lora=none's full fine-tune
        return [whole]
    return [whole, local_model(model)]


def fingerprint(folders: list[Path], model: DictConfig) -> str:
    """A key that changes when any file of these folders does (path, size, modification time; no weights read), or
    what the response template is made from."""
    digest = hashlib.sha256(f"{TEMPLATE_VERSION}:{model.markers}:{model.end_token}:{model.dtype}\n".encode())
    for folder in folders:
        for path in sorted(p for p in folder.resolve().rglob("*") if p.is_file()):
            stat = path.stat()
            digest.update(f"{path}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:12]


def served_folder(model: DictConfig, run: str | None = None, merged: bool = False) -> Path:
    """The model to serve as one folder under the cache, built on first use (weights linked when the source is whole,
    an adapter merged otherwise); nothing is written into the run folder or the model's own folder."""
    sources = source_folders(model, run, merged)
    name = "-".join(Path(run).resolve().parts[-2:]) if run else model.name
    target = cache_root() / "serve" / f"{name}-{fingerprint(sources, model)}"
    if (target / "tokenizer_config.json").is_file():
        return target
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    lm, tokenizer = models.load_for_inference(model, run, merged) if len(sources) > 1 else (None, None)
    if lm is not None:
        lm.save_pretrained(tmp)
    else:
        tokenizer = AutoTokenizer.from_pretrained(str(sources[0]), trust_remote_code=model.trust_remote_code)
    tokenizer.response_template = response_template(tokenizer, model.markers, model.end_token)
    tokenizer.save_pretrained(tmp)
    if lm is None:  # a whole model: link its files beside the new tokenizer files
        for path in sources[0].resolve().iterdir():
            if path.is_file() and not (tmp / path.name).exists():
                (tmp / path.name).symlink_to(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp.rename(target)
    except OSError:  # another process finished first: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    return target
