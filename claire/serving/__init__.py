"""Serving a Claire model over an OpenAI-compatible API: the folder served (folder.py) and the server (server.py)."""

from claire.serving.folder import served_folder
from claire.serving.server import build_app

__all__ = ["build_app", "served_folder"]
