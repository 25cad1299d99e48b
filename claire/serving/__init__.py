"""Serving a Claire model over an OpenAI-compatible API: the folder served (folder.py), the server (server.py), or
vLLM's server on the same folder (vllm.py)."""

from claire.serving.folder import served_folder
from claire.serving.server import build_app
from claire.serving.vllm import vllm_command

__all__ = ["build_app", "served_folder", "vllm_command"]
