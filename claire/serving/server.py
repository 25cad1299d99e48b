"""claire.serve's server: `transformers serve`'s OpenAI-compatible app on one Claire model folder, under the name
clients ask for, with a request's `decode` (the decode group's keys: a thinking budget) applied to its generation."""

from pathlib import Path
from typing import Any

from fastapi import HTTPException
from fastapi.exceptions import RequestValidationError
from omegaconf import DictConfig, OmegaConf
from transformers.cli.serving.chat_completion import ChatCompletionHandler, TransformersCompletionCreateParamsStreaming
from transformers.cli.serving.completion import CompletionHandler
from transformers.cli.serving.model_manager import ModelLoader, ModelManager
from transformers.cli.serving.response import ResponseHandler
from transformers.cli.serving.server import build_server
from transformers.cli.serving.systemone import SystemOneHandler
from transformers.cli.serving.transcription import TranscriptionHandler
from transformers.cli.serving.utils import GenerationState, ModelNotServedError

from claire import ClaireError, configs, decoding

SERVED_DECODES = ("greedy", "budget")  # a vote is several requests, made by the client (claire.chat decode=vote)


class ClaireCompletionParams(TransformersCompletionCreateParamsStreaming, total=False):
    """The chat completion request transformers takes, plus Claire's `decode`."""

    decode: dict


def decode_options() -> dict[str, DictConfig]:
    """Each served decode group option as its own keys (its `defaults:` left out: a request's decode merges over the
    server's)."""
    folder = Path(configs.CONFIG_DIR) / "decode"
    options = {name: OmegaConf.load(folder / f"{name}.yaml") for name in SERVED_DECODES}
    for option in options.values():
        option.pop("defaults", None)
    return options


def request_decode(server: DictConfig, asked: Any) -> DictConfig:
    """The decoding one request gets: the server's, with the request's `decode` keys over it (budget keys alone ask
    for a budget); a ClaireError names a setting that cannot work."""
    if not isinstance(asked, dict):
        example = '{"name": "budget", "max_thinking_tokens": 256}'
        raise ClaireError(f"decode must be an object of decode settings, e.g. {example}")
    options = decode_options()
    thinking = {"min_thinking_tokens", "max_thinking_tokens", "max_waits", "wait"}
    name = asked.get("name") or ("budget" if thinking & asked.keys() else server.name)
    if name not in options:
        raise ClaireError(f"decode.name={name} is not served; choose one of {', '.join(SERVED_DECODES)} (vote: send "
                          "several sampled requests and take the majority)")  # fmt: skip
    own = OmegaConf.create(OmegaConf.to_container(server, resolve=True))  # not the server's struct config
    decode = OmegaConf.merge(own, options[name] if name != server.name else {}, {"name": name})
    unknown = sorted(set(asked) - set(decode))
    if unknown:
        raise ClaireError(f"decode.{unknown[0]} is not a decode setting; known: {', '.join(sorted(decode))}")
    decode = OmegaConf.merge(decode, asked)
    cap = asked.get("max_thinking_tokens")
    if isinstance(cap, int) and cap > 0 and "min_thinking_tokens" not in asked and decode.get("min_thinking_tokens"):
        decode.min_thinking_tokens = min(decode.min_thinking_tokens, cap)  # a cap alone lowers the minimum to fit
    decoding.check(decode)
    return decode


class ClaireChatHandler(ChatCompletionHandler):
    """Chat completions as transformers serves them, with the request's decoding (greedy, or a thinking budget)."""

    _valid_params_class = ClaireCompletionParams

    def __init__(self, *args: Any, decode: DictConfig, markers: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.decode, self.markers = decode, markers

    def _build_generation_kwargs(self, body: dict, model_generation_config: Any) -> dict:
        """transformers' generation settings, then the decode's: its length and temperature unless the request gives
        them, and budget forcing."""
        kwargs = super()._build_generation_kwargs(body, model_generation_config)
        try:
            decode = request_decode(self.decode, body.get("decode") or {})
            if body.get("max_completion_tokens") is None and body.get("max_tokens") is None and decode.max_new_tokens:
                kwargs["max_new_tokens"] = decode.max_new_tokens
            if decode.name == "budget":
                decoding.check_room(decode.max_thinking_tokens, kwargs["max_new_tokens"], "max_tokens")
        except ClaireError as error:
            raise HTTPException(status_code=422, detail=str(error)) from None
        if body.get("temperature") is None and decode.temperature:
            kwargs |= {"do_sample": True, "temperature": decode.temperature}
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


def build_app(folder: Path, cfg: DictConfig) -> Any:
    """transformers serve's FastAPI app on the model folder, with Claire's chat handler (loads the model)."""
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
    for error in (HTTPException, RequestValidationError, ValueError):
        app.add_exception_handler(error, openai_error)
    return app


async def openai_error(_request: Any, error: Exception) -> Any:
    """A request's error in OpenAI's shape ({"error": {"message", "type", "code"}}), which its clients print."""
    from fastapi.responses import JSONResponse

    if isinstance(error, RequestValidationError):  # FastAPI's: the body is not JSON, or not an object
        first = error.errors()[0]
        status, message = 422, f"the request body is not a JSON object: {first['msg']} ({first.get('ctx', {})})"
    else:
        status, message = getattr(error, "status_code", 400), str(getattr(error, "detail", error))
    body = {"message": message, "type": "invalid_request_error", "code": status}
    return JSONResponse({"error": body}, status_code=status)
