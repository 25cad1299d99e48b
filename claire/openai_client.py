"""OpenAI-compatible API helpers shared by the teacher and the judge: the client, and errors in one line."""

import logging
import os
from typing import Any

import openai
from omegaconf import DictConfig

FATAL = (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError)  # retrying cannot help
REFUSED = (openai.BadRequestError, openai.UnprocessableEntityError)  # this request, not the server, is the problem


def client_of(api: DictConfig) -> Any:
    """The openai async client; it retries 429, 5xx and timeouts itself with backoff."""
    # one INFO line per request would bury the progress bar; openai's HTTP library logs as httpx2 (httpx before 2.x)
    for name in ("httpx", "httpx2", "openai"):
        logging.getLogger(name).setLevel(logging.WARNING)
    key = os.environ[api.key_env] if api.key_env else "not-needed"
    client = openai.AsyncOpenAI(base_url=api.base_url, api_key=key, timeout=api.timeout, max_retries=api.max_retries)
    return client


def describe(error: Exception) -> str:
    """A short description of an API error: its type and status, and the first line of its message."""
    status = getattr(error, "status_code", None)
    message = str(getattr(error, "message", "") or error).strip().splitlines()
    return f"{type(error).__name__}{f' {status}' if status else ''}: {message[0][:120] if message else ''}".strip()
