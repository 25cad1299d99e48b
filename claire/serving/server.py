"""claire.serve's server: `transformers serve`'s OpenAI-compatible app on one Claire model folder, under the name
clients ask for, with a request's `decode` (the decode group's keys: a thinking budget) applied to its generation."""

import functools
import json
from pathlib import Path
from typing import Any

from fastapi.exceptions import RequestValidationError
from omegaconf import DictConfig, OmegaConf
from starlette.exceptions import HTTPException
from transformers.cli.serving.chat_completion import ChatCompletionHandler, TransformersCompletionCreateParamsStreaming
from transformers.cli.serving.completion import CompletionHandler
from transformers.cli.serving.model_manager import ModelLoader, ModelManager
from transformers.cli.serving.response import ResponseHandler
from transformers.cli.serving.server import build_server
from transformers.cli.serving.systemone import SystemOneHandler
from transformers.cli.serving.transcription import TranscriptionHandler
from transformers.cli.serving.utils import EngineDeadError, GenerationState, ModelNotServedError

from claire import ClaireError, configs, decoding

SERVED_DECODES = ("greedy", "budget")  # a vote is several requests, made by the client (claire.chat decode=vote)


class ClaireCompletionParams(TransformersCompletionCreateParamsStreaming, total=False):
    """The chat completion request transformers takes, plus Claire's `decode`."""

    decode: dict


@functools.cache
def decode_options() -> dict[str, dict]:
    """Each served decode group option as its own keys (its `defaults:` left out: a request's decode merges over the
    server's), read once."""
    folder = Path(configs.CONFIG_DIR) / "decode"
    options = {name: OmegaConf.to_container(OmegaConf.load(folder / f"{name}.yaml")) for name in SERVED_DECODES}
    return {name: {k: v for k, v in option.items() if k != "defaults"} for name, option in options.items()}


def request_decode(server: DictConfig, asked: Any) -> DictConfig:
    """The decoding one request gets: the server's, with the request's `decode` keys over it (budget keys alone ask
    for a budget); a ClaireError names a setting that cannot work."""
    example = '{"name": "budget", "max_thinking_tokens": 256}'
    if not isinstance(asked, dict):
        raise ClaireError(f"decode must be an object of decode settings, e.g. {example}")
    for key, value in asked.items():  # plain values only: a config string like ${oc.env:...} would be resolved
        if not isinstance(value, int | float | str | None) or "${" in str(value):
            raise ClaireError(f"decode.{key}={json.dumps(value)} is not a plain number or text; e.g. {example}")
        if key in ("temperature", "top_p") and not isinstance(value, int | float | None):
            raise ClaireError(f"decode.{key}={json.dumps(value)} must be a number (or null)")
    thinking = {"min_thinking_tokens", "max_thinking_tokens", "max_waits", "wait"}
    name = asked.get("name") or ("budget" if thinking & asked.keys() else server.name)
    if name not in SERVED_DECODES:
        raise ClaireError(f"decode.name={name} is not served; choose one of {', '.join(SERVED_DECODES)} (vote: send "
                          "several sampled requests and take the majority)")  # fmt: skip
    decode = OmegaConf.to_container(server, resolve=True) | (decode_options()[name] if name != server.name else {})
    unknown = sorted(set(asked) - set(decode))
    if unknown:
        raise ClaireError(f"decode.{unknown[0]} is not a decode setting; known: {', '.join(sorted(decode))}")
    decode |= asked | {"name": name}
    cap = asked.get("max_thinking_tokens")
    if type(cap) is int and cap > 0 and "min_thinking_tokens" not in asked and decode.get("min_thinking_tokens"):
        decode["min_thinking_tokens"] = min(decode["min_thinking_tokens"], cap)  # a cap alone lowers the minimum
    decode = OmegaConf.create(decode)
    decoding.check(decode)
    return decode


class ClaireChatHandler(ChatCompletionHandler):
    """Chat completions as transformers serves them, with the request's decoding (greedy, or a thinking budget)."""

    _valid_params_class = ClaireCompletionParams

    def __init__(self, *args: Any, decode: DictConfig, markers: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.decode, self.markers = decode, markers

    async def handle_request(self, body: dict, request_id: str) -> Any:
        """transformers' handling, after checking the messages are a list of {role, content} objects."""
        messages = body.get("messages")
        if (
            not isinstance(messages, list)
            or not messages
            or not all(isinstance(m, dict) and isinstance(m.get("role"), str) and "content" in m for m in messages)
        ):
            raise HTTPException(422, 'messages must be a non-empty list of {"role": ..., "content": ...} objects')
        return await super().handle_request(body, request_id)

    def _build_generation_kwargs(self, body: dict, model_generation_config: Any) -> dict:
        """transformers' generation settings, then the decode's: its length, greedy or its temperature and top_p
        unless the request gives them (whatever the model's generation config says), and budget forcing."""
        kwargs = super()._build_generation_kwargs(body, model_generation_config)
        try:
            decode = request_decode(self.decode, body["decode"]) if body.get("decode") is not None else self.decode
            if body.get("max_completion_tokens") is None and body.get("max_tokens") is None and decode.max_new_tokens:
                kwargs["max_new_tokens"] = decode.max_new_tokens
            if decode.name == "budget":
                decoding.check_room(decode.max_thinking_tokens, kwargs["max_new_tokens"], "max_tokens")
        except ClaireError as error:
            raise HTTPException(status_code=422, detail=str(error)) from None
        temperature = body.get("temperature") if body.get("temperature") is not None else decode.temperature
        kwargs["do_sample"] = bool(temperature and float(temperature) > 0)
        if kwargs["do_sample"]:
            kwargs["temperature"] = float(temperature)
            if body.get("top_p") is None and decode.get("top_p") is not None:
                kwargs["top_p"] = float(decode.top_p)
        if decode.name == "budget":
            tokenizer = self.model_manager.get_engine(body.get("model")).processor
            kwargs["logits_processor"] = decoding.generate_kwargs(
                decode, tokenizer, None, self.markers, kwargs.get("eos_token_id")
            )["logits_processor"]
        return kwargs

    def _build_completion(self, request_id: str, content: str, model_id: str, *args: Any, **kwargs: Any) -> dict:
        """The response, naming the model as the client does."""
        return super()._build_completion(request_id, content, self.model_manager.name, *args, **kwargs)

    def _build_chunk_sse(self, *args: Any, model: str | None = None, **kwargs: Any) -> str:
        """A stream's chunk, naming the model as the client does."""
        return super()._build_chunk_sse(*args, model=model and self.model_manager.name, **kwargs)


class ServedModel(ModelManager):
    """transformers' model manager pinned to one folder, which requests and /v1/models call by the served name."""

    def __init__(self, name: str, folder: Path, loader: ModelLoader, state: GenerationState) -> None:
        self.name = name
        super().__init__(loader, state, model_timeout=-1, force_model=str(folder))

    def get_engine(self, model: str | None) -> Any:
        """The one model, whether a request names it or not; any other name is the request's error (400)."""
        if model not in (None, self.name, self.force_model):
            raise ModelNotServedError(f"this server serves the model '{self.name}'; the request asked for '{model}'")
        return super().get_engine(None)

    def list_models(self, cache_dir: str | None = None) -> list[dict]:
        """The served model, by its served name."""
        return [{"id": self.name, "object": "model", "created": 0, "owned_by": "claire"}]


SERVED_ROUTES = ("/v1/chat/completions", "/v1/models", "/health")  # the others would bypass Claire's handling


def build_app(folder: Path, cfg: DictConfig) -> Any:
    """transformers serve's FastAPI app on the model folder, with Claire's chat handler and only the routes above
    (starts the model's process); app.state.served is the model, for a caller that watches it."""
    loader = ModelLoader(device=cfg.device, dtype=cfg.dtype, trust_remote_code=cfg.model.trust_remote_code)
    state = GenerationState(seed=cfg.seed, max_model_len=cfg.max_model_len)
    served = ServedModel(cfg.served_name, folder, loader, state)
    common = {"model_manager": served, "generation_state": state}
    app = build_server(
        served,
        ClaireChatHandler(**common, decode=cfg.decode, markers=cfg.model.markers),
        completion_handler=CompletionHandler(**common),
        response_handler=ResponseHandler(**common),
        transcription_handler=TranscriptionHandler(served),
        systemone_handler=SystemOneHandler(**common),
    )
    app.router.routes = [r for r in app.router.routes if getattr(r, "path", "").startswith(("/docs", "/openapi"))
                         or getattr(r, "path", "") in SERVED_ROUTES]  # fmt: skip
    for error in (HTTPException, RequestValidationError, ValueError, EngineDeadError):
        app.add_exception_handler(error, openai_error)
    app.state.served = served
    return app


async def openai_error(_request: Any, error: Exception) -> Any:
    """A request's error in OpenAI's shape ({"error": {"message", "type", "code"}}), which its clients print."""
    from fastapi.responses import JSONResponse

    if isinstance(error, RequestValidationError):  # FastAPI's: the body is not JSON, or not an object
        first = error.errors()[0]
        status, message = 422, f"the request body is not a JSON object: {first['msg']} ({first.get('ctx', {})})"
    elif isinstance(error, EngineDeadError):
        status, message = 503, f"the model's process stopped ({error}); the server is stopping"
    else:
        status, message = getattr(error, "status_code", 400), str(getattr(error, "detail", error))
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status)
