"""An LLM judge for evaluation: is a model's final answer equivalent to the gold, and how good is its causal trace?

Each item (question, gold, the model's full output) goes to an OpenAI-compatible judge (config group `judge`) as
delimited data, with tag-like text inside the data neutralised so an output cannot close its block and speak as
the rubric. The judge answers JSON: `equivalent` (bool), `trace_score` (1-5) and `reason`. Verdicts are cached on
disk by a hash of the prompt version and the full request, so a rerun asks nothing; a reply that does not parse is
an error for that item, never cached.
"""

import asyncio
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import openai
from omegaconf import DictConfig
from tqdm.auto import tqdm

from claire import ClaireError, cache_root, datafiles
from claire.openai_client import FATAL, client_of, describe

FIELDS = {"question": "question", "gold": "gold_answer", "output": "model_output"}  # item key -> tag and placeholder
PLACEHOLDER = re.compile(r"\{(" + "|".join(FIELDS.values()) + r")\}")
# "<" opening one of our tags (any case, spaces, a slash) or a chat special token such as <|im_start|>
TAG_LIKE = re.compile(r"<(?=\s*/?\s*(?:" + "|".join(FIELDS.values()) + r")\b|\|)", re.IGNORECASE)
FENCED = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL | re.IGNORECASE)


def enabled(cfg: DictConfig | None) -> bool:
    """Whether a judge is configured (judge=none sets enabled: false)."""
    return bool(cfg is not None and cfg.get("enabled", False))


def check(cfg: DictConfig) -> None:
    """Fail with one line naming the key when the judge config cannot work; asks nothing."""
    if not enabled(cfg):
        raise ClaireError("judge.enabled=false (judge=none): choose judge=openai or judge=local to use a judge")
    for key in ("model", "base_url", "prompt_version", "system", "user"):
        if not isinstance(cfg.get(key), str) or not cfg.get(key).strip():
            raise ClaireError(f"judge.{key}={cfg.get(key)!r} must be set (a non-empty text), e.g. judge=openai")
    missing = [f"{{{name}}}" for name in FIELDS.values() if f"{{{name}}}" not in cfg.user]
    if missing:
        raise ClaireError(f"judge.user of prompt {cfg.prompt_version} lacks the placeholders {', '.join(missing)}")
    for key, low in (("max_tokens", 1), ("max_concurrency", 1), ("max_retries", 0)):
        if not isinstance(cfg.get(key), int) or isinstance(cfg.get(key), bool) or cfg.get(key) < low:
            raise ClaireError(f"judge.{key}={cfg.get(key)} must be a whole number, at least {low}")
    if not is_number(cfg.get("temperature")) or cfg.temperature < 0:
        raise ClaireError(f"judge.temperature={cfg.get('temperature')} must be a number, at least 0 (0: greedy)")
    if not is_number(cfg.get("timeout")) or cfg.timeout <= 0:
        raise ClaireError(f"judge.timeout={cfg.get('timeout')} must be a number of seconds above 0")
    if cfg.key_env and not os.environ.get(cfg.key_env):
        raise ClaireError(
            f"judge.key_env={cfg.key_env}: that environment variable is not set; export it with the judge's API key "
            "(keys are read from the environment only), or set judge.key_env=null for a server that needs none"
        )


def is_number(value: Any) -> bool:
    """An int or float, not a bool."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def neutralise(text: str) -> str:
    """Data text that cannot open or close a data block, nor a chat turn: such a "<" is written "&lt;"."""
    return TAG_LIKE.sub("&lt;", text)


def messages_for(item: dict, cfg: DictConfig) -> list[dict]:
    """The system and user messages for one item, its fields inside their tags as neutralised data."""
    blocks = {tag: f"<{tag}>\n{neutralise(str(item[key]))}\n</{tag}>" for key, tag in FIELDS.items()}
    user = PLACEHOLDER.sub(lambda match: blocks[match[1]], cfg.user)  # one pass: data is never re-substituted
    return [{"role": "system", "content": cfg.system}, {"role": "user", "content": user}]


def request_for(item: dict, cfg: DictConfig) -> dict:
    """The chat completion arguments for one item (no key among them)."""
    request = {"model": cfg.model, "messages": messages_for(item, cfg), "temperature": cfg.temperature}
    request["max_tokens"] = cfg.max_tokens
    return request | ({"response_format": {"type": "json_object"}} if cfg.json_mode else {})


def cache_key(request: dict, prompt_version: str, base_url: str) -> str:
    """The hash naming a verdict: prompt version, server, model, prompt text, question, gold, output and settings."""
    # the server too: `judge=local` names every model "local", whichever one the server runs
    return hashlib.sha256(json.dumps([prompt_version, base_url, request], sort_keys=True).encode()).hexdigest()


def cache_path(cfg: DictConfig, key: str) -> Path:
    """Where the verdict of a request is cached."""
    root = Path(cfg.cache_dir) if cfg.get("cache_dir") else cache_root() / "judge"
    return root / key[:2] / f"{key}.json"


def parse_verdict(text: str) -> dict:
    """equivalent, trace_score and reason from a judge reply (bare, fenced or embedded JSON); ValueError if none."""
    start, end = text.find("{"), text.rfind("}")
    candidates = [text.strip(), *FENCED.findall(text), text[start : end + 1] if 0 <= start < end else ""]
    for candidate in candidates:
        try:
            verdict = json.loads(candidate)
        except json.JSONDecodeError:
            continue
        if isinstance(verdict, dict):
            return valid(verdict)
    raise ValueError(f"the judge's reply holds no JSON object: {text[:80]!r}")


def valid(verdict: dict) -> dict:
    """The three fields of a parsed verdict, checked; ValueError naming the field that is wrong."""
    equivalent, score, reason = verdict.get("equivalent"), verdict.get("trace_score"), verdict.get("reason", "")
    if not isinstance(equivalent, bool):
        raise ValueError(f"equivalent={equivalent!r} is not true or false")
    if not isinstance(score, int) or isinstance(score, bool) or not 1 <= score <= 5:
        raise ValueError(f"trace_score={score!r} is not a whole number from 1 to 5")
    if not isinstance(reason, str):
        raise ValueError(f"reason={reason!r} is not a text")
    return {"equivalent": equivalent, "trace_score": score, "reason": reason.strip()}


def result(verdict: dict | None = None, error: str | None = None, cached: bool = False) -> dict:
    """One item's result: equivalent, trace_score, reason (None on error), error (None on success), cached."""
    empty = {"equivalent": None, "trace_score": None, "reason": None}
    return {**empty, **(verdict or {}), "error": error, "cached": cached}


def read_cache(path: Path) -> dict | None:
    """The cached verdict at path, or None (absent or unreadable: asked again)."""
    try:
        return valid(json.loads(path.read_text()))
    except (OSError, ValueError):
        return None


def scrubbed(error: Exception, secret: str | None) -> str:
    """describe(error) with the API key masked, should a server echo it back."""
    text = describe(error)
    return text.replace(secret, "***") if secret else text


async def ask(client: Any, request: dict, secret: str | None) -> tuple[dict, str | None]:
    """One judge call: (the result, the reply text to cache, or None when it failed)."""
    try:
        response = await client.chat.completions.create(**request)
    except FATAL as error:
        problem = f"the judge API refused the request ({scrubbed(error, secret)})"
        raise ClaireError(f"{problem}; check judge.base_url, judge.model and judge.key_env") from None
    except openai.APIError as error:  # the client's own retries (429, 5xx, timeouts) are spent, or a 400
        return result(error=scrubbed(error, secret)), None
    text = response.choices[0].message.content if response.choices else None
    if not text:
        return result(error="the judge's reply is empty"), None
    try:
        return result(parse_verdict(text)), text
    except ValueError as error:
        return result(error=str(error)), None


async def ask_all(requests: dict[str, dict], cfg: DictConfig, progress: bool) -> dict[str, dict]:
    """Ask every request concurrently (max_concurrency in flight), caching each verdict as it arrives."""
    client, gate = client_of(cfg), asyncio.Semaphore(cfg.max_concurrency)
    secret = os.environ.get(cfg.key_env) if cfg.key_env else None
    bar = tqdm(total=len(requests), desc="judge", unit="item", disable=not progress)

    async def one(key: str, request: dict) -> tuple[str, dict]:
        async with gate:
            answer, text = await ask(client, request, secret)
        if text is not None:
            record = {"model": cfg.model, "prompt_version": cfg.prompt_version, "reply": text}
            datafiles.write_json(
                cache_path(cfg, key), record | {k: answer[k] for k in ("equivalent", "trace_score", "reason")}
            )
        bar.update()
        return key, answer

    tasks = [asyncio.create_task(one(key, request)) for key, request in requests.items()]
    try:
        return dict(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        bar.close()
        await client.close()


def judge_outputs(items: list[dict], cfg: DictConfig, progress: bool = True) -> list[dict]:
    """Judge items ({question, gold, output}) in order: one result dict each (see `result`); cached ones ask nothing."""
    check(cfg)
    for index, item in enumerate(items):
        missing = [key for key in FIELDS if key not in item]
        if missing:
            raise ClaireError(f"judge item {index} lacks {', '.join(missing)} (each needs question, gold, output)")
    requests = [request_for(item, cfg) for item in items]
    keys = [cache_key(request, cfg.prompt_version, cfg.base_url) for request in requests]
    done = {key: result(verdict, cached=True) for key in set(keys) if (verdict := read_cache(cache_path(cfg, key)))}
    pending = {key: request for key, request in zip(keys, requests, strict=True) if key not in done}  # once each
    if pending:
        done |= asyncio.run(ask_all(pending, cfg, progress))
    return [dict(done[key]) for key in keys]
