"""Serving the folder with vLLM instead of transformers: the `vllm serve` command for it. vLLM's `hf` reasoning parser
reads the folder's response template, so vLLM returns the same split (as `reasoning`) with no Claire code inside it."""

import json
import shutil
from pathlib import Path

from omegaconf import DictConfig

from claire import ClaireError


def vllm_executable(command: str) -> str:
    """The vllm command's full path, or a one-line error saying how to get one."""
    found = shutil.which(command)
    if found is None:
        raise ClaireError(f"engine=vllm: no `{command}` command found; install vLLM (>= 0.34, in an environment of its "
                          "own: it pins an older transformers) and give it as vllm=/path/to/bin/vllm, or use "
                          "engine=transformers")  # fmt: skip
    return found


def vllm_command(folder: Path, cfg: DictConfig) -> list[str]:
    """`vllm serve` on the served folder with claire.serve's name, address and limits; a request without its own
    gets the decode's temperature (greedy: 0, whatever the model's generation config says), top_p and length."""
    decode = {"temperature": cfg.decode.temperature or 0.0, "max_new_tokens": cfg.decode.max_new_tokens}
    decode |= {"top_p": cfg.decode.top_p} if cfg.decode.top_p is not None else {}
    command = [str(cfg.vllm), "serve", str(folder), "--served-model-name", str(cfg.served_name),
               "--host", str(cfg.host), "--port", str(cfg.port), "--dtype", str(cfg.dtype),
               "--reasoning-parser", "hf", "--override-generation-config", json.dumps(decode)]  # fmt: skip
    if cfg.max_model_len:
        command += ["--max-model-len", str(cfg.max_model_len)]
    if cfg.seed is not None:
        command += ["--seed", str(cfg.seed)]
    return command
