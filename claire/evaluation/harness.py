"""lm-eval runs with identical settings for base and fine-tuned: config checks, each model's lm-eval arguments, results.

claire.evaluate runs these in order: check the config and tasks, build the tasks, evaluate each model of `subjects`
through lm-eval's `simple_evaluate` (the only difference between them is the adapter), save its results and samples.
"""

import contextlib
import difflib
import functools
import importlib.util
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from claire import ClaireError, configs, datafiles, machine, run_folders
from claire.decoding import check as check_decode
from claire.decoding import check_room

BACKENDS = {"hf": "hf", "vllm": "vllm", "api": "local-chat-completions"}
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the max_lora_rank values vLLM accepts (vllm.config.lora)
CPU_BATCH = 32  # backend.batch_size=null on a CPU; on a GPU lm-eval's "auto" finds the largest that fits
PACKAGES = [*run_folders.VERSIONED, "lm_eval", "math-verify", "openai", "vllm"]


def objective_value(cfg: DictConfig, metrics: dict) -> float | None:
    """The metrics.json value named by cfg.objective (None when no objective is set)."""
    if cfg.objective is None:
        return None
    if metrics.get(cfg.objective) is None:
        close = difflib.get_close_matches(str(cfg.objective), list(metrics), n=5, cutoff=0.3)
        raise ClaireError(f"objective={cfg.objective} is not a value of metrics.json; close ones: {close}")
    return float(metrics[cfg.objective])


def check(cfg: DictConfig) -> tuple[list[str], Any]:
    """One-line errors for a bad config, before any model loads; returns the task names and lm-eval's TaskManager."""
    if cfg.backend.name not in BACKENDS:
        raise ClaireError(f"backend={cfg.backend.name} is not a backend; choose one of {list(BACKENDS)}")
    check_decode(cfg.decode)
    if cfg.decode.name == "budget" and cfg.backend.name != "hf":
        raise ClaireError(
            f"decode=budget runs on backend=hf (a logits processor in generate); backend={cfg.backend.name} has no "
            "Wait extension (vLLM only caps thinking): use backend=hf"
        )
    if cfg.decode.name == "budget":  # the generation length lm-eval will use must leave room to answer too
        check_room(cfg.decode.max_thinking_tokens, generation_overrides(cfg)["max_gen_toks"], "the generation length")
    if cfg.run:
        adopt_run(cfg)
    elif cfg.merged:
        raise ClaireError("merged=true needs run=<a claire.train run folder>")
    run_folders.refuse_foreign(Path(cfg.output_dir), "output_dir")
    for key, value in cfg.data.items():
        if isinstance(value, str) and key.endswith(("_file", "_dir")) and not Path(value).exists():
            raise ClaireError(f"data.{key}={value} does not exist; give an existing file or folder, or drop the key")
    limit = cfg.limit
    share = isinstance(limit, float) and 0 < limit < 1
    if not (limit is None or share or isinstance(limit, int) and not isinstance(limit, bool) and limit >= 1):
        raise ClaireError(f"limit={limit!r} must be a whole number above 0 (items per task), a share in (0, 1) or null")
    names = list(cfg.tasks if cfg.tasks is not None else cfg.suite.tasks)
    if not names or not all(isinstance(n, str) for n in names):
        raise ClaireError(f"tasks={names} must be a non-empty list of lm-eval task names")
    manager = task_manager(cfg)
    for name in names:
        if name not in manager.all_tasks:
            close = difflib.get_close_matches(name, manager.all_tasks, n=5)
            raise ClaireError(f"task {name} is not an lm-eval task (Claire's included); close ones: {close}")
    if cfg.backend.name == "api":
        check_api_backend(cfg, names, manager)
    if cfg.judge.enabled:
        from claire.evaluation import judge

        judge.check(cfg.judge)
    labels = (["base"] if cfg.compare_base else []) + ["tuned"] if cfg.run else ["model"]
    prefixes = tuple(f"{label}/{name}/" for label in labels for name in names)
    if cfg.objective is not None and not str(cfg.objective).startswith(prefixes):
        raise ClaireError(
            f"objective={cfg.objective} is not a metrics.json key; they read <{'|'.join(labels)}>/<task>/<metric>,"
            f"<filter>, e.g. {labels[-1]}/{names[0]}/exact_match,claire"
        )
    return names, manager


def check_api_backend(cfg: DictConfig, names: list[str], manager: Any) -> None:
    """An OpenAI-compatible server takes chat messages and gives no log-likelihoods; its key must be exported."""
    if cfg.backend.key_env and cfg.backend.key_env not in os.environ:
        raise ClaireError(f"backend.key_env={cfg.backend.key_env} is not set in the environment; export it")
    if not cfg.apply_chat_template:
        raise ClaireError("backend=api sends chat messages: it needs apply_chat_template=true")
    scored = [n for n in names if _output_type(manager, n) not in (None, "generate_until")]
    if scored:
        raise ClaireError(
            f"backend=api cannot score {scored}: chat completions give no log-likelihoods; "
            "use backend=hf or backend=vllm, or the generative variants (suite=generative)"
        )


def require_packages(cfg: DictConfig) -> None:
    """The packages this evaluation imports late (vLLM, math-verify), present before anything runs."""
    needed = [("math_verify", "pip install 'claire[eval]'")]
    if cfg.backend.name == "vllm":
        needed.append(("vllm", "pip install vllm (a CUDA machine)"))
    for module, how in needed:
        if importlib.util.find_spec(module) is None:
            raise ClaireError(f"backend={cfg.backend.name} needs the package {module}, which is not installed; {how}")


def load_tasks(cfg: DictConfig, names: list[str], manager: Any) -> list:
    """lm-eval's tasks, built (data included) so a bad data file fails before any model loads; each generative one
    stops at the model's end-of-turn token and, for a stock task family Claire knows, reads answers with its reader;
    under decode=vote each generative task becomes self-consistency (claire.evaluation.tasks.filters.vote).
    """
    from claire.evaluation.tasks import filters

    loaded = manager.load(names)
    for task in loaded["tasks"].values():
        if task.get_config("output_type") == "generate_until":
            filters.add_reader(task)
            kwargs = dict(task.get_config("generation_kwargs") or {})
            task.set_config("generation_kwargs", kwargs | {"until": with_end_token(list(kwargs.get("until", [])), cfg)})
            if cfg.get("decode") and cfg.decode.name == "vote":
                filters.vote(task, cfg.decode.samples, cfg.decode.temperature, cfg.decode.top_p)
    inside = {id(t) for group in loaded["groups"].values() for t in [*group.get_all_tasks(), *group.get_all_groups()]}
    outermost = [*loaded["groups"].values(), *loaded["tasks"].values()]
    return [item for item in outermost if id(item) not in inside]


def generation_overrides(cfg: DictConfig) -> dict:
    """The gen_kwargs the user set (the null ones leave each task's own setting); under decode=budget the
    generation length is decode.max_new_tokens unless gen_kwargs.max_gen_toks says otherwise."""
    given = {key: value for key, value in OmegaConf.to_container(cfg.gen_kwargs).items() if value is not None}
    if cfg.get("decode") and cfg.decode.name == "budget":
        given.setdefault("max_gen_toks", cfg.decode.max_new_tokens)
    return given


def with_end_token(until: list[str], cfg: DictConfig) -> list[str]:
    """Stop sequences with the model's end-of-turn token (ChatML's <|im_end|>, Llama 3's <|eot_id|>) added."""
    end = cfg.model.get("end_token")
    return until if not end or end in until else [*until, end]


def adopt_run(cfg: DictConfig) -> None:
    """Take the base model's settings from a claire.train run folder, after checking it holds what is evaluated."""
    folder = Path(cfg.run)
    cfg.model = run_folders.trained_model(folder, cfg.merged, cfg.model.trust_remote_code)
    if cfg.backend.name == "vllm" and cfg.model.markers == "special" and not cfg.merged:
        raise ClaireError(
            f"run={folder} trained new marker tokens (model.markers=special), whose embeddings vLLM's LoRA cannot "
            "load; evaluate its merged model (train with merge=true, then merged=true) or use backend=hf"
        )
    needed = folder / "adapter" / "adapter_config.json"
    if cfg.backend.name == "vllm" and not cfg.merged and needed.is_file():
        vllm_lora_rank(adapter_rank(str(needed.parent)))  # a rank vLLM cannot serve fails here, before any model


def task_manager(cfg: DictConfig) -> Any:
    """lm-eval's TaskManager with Claire's tasks and the user's include_path folders, cfg.data as metadata."""
    given = {k: v for k, v in OmegaConf.to_container(cfg.data).items() if v is not None}
    folders = [str(folder) for folder in cfg.get("include_path") or []]
    for folder in folders:
        if not Path(folder).is_dir():
            raise ClaireError(f"include_path: {folder} is not a folder; give folders of lm-eval task YAML files")
    return _task_manager(json.dumps(given, sort_keys=True), tuple(folders))


@functools.cache
def _task_manager(metadata: str, folders: tuple[str, ...] = ()) -> Any:
    """One TaskManager per metadata and folders: indexing lm-eval's few thousand task files takes seconds."""
    from lm_eval.tasks import TaskManager

    from claire.evaluation import tasks

    return TaskManager(include_path=[str(tasks.PATH), *folders], metadata=json.loads(metadata) or None)


def _output_type(manager: Any, name: str) -> str | None:
    """A task's output_type from its YAML, includes followed (None for groups and tags, which may mix types)."""
    from lm_eval.tasks._yaml_loader import load_yaml

    entry = manager.task_index.get(name)
    if entry is None or entry.yaml_path is None or entry.kind.name != "TASK":
        return None
    return load_yaml(entry.yaml_path, resolve_func=False).get("output_type")


def subjects(cfg: DictConfig) -> dict[str, tuple[str, dict]]:
    """The models to evaluate: {"base": ..., "tuned": ...} for a run, {"model": ...} alone; lm-eval type and args."""
    from claire import models

    base = models.model_path(cfg.model)
    if not cfg.run:
        return {"model": model_args(cfg, base, None, cfg.backend.get("base_model"))}
    folder = Path(cfg.run)
    chosen = {}
    if cfg.compare_base:
        chosen["base"] = model_args(cfg, base, None, cfg.backend.get("base_model"))
    if cfg.merged or (folder / "adapter" / "config.json").is_file():  # merged, or a full fine-tune
        whole = folder / ("merged" if cfg.merged else "adapter")
        chosen["tuned"] = model_args(cfg, str(whole), None, cfg.backend.get("tuned_model"))
    else:
        chosen["tuned"] = model_args(cfg, base, str(folder / "adapter"), cfg.backend.get("tuned_model"))
    return chosen


def model_args(cfg: DictConfig, path: str, adapter: str | None, served_name: str | None) -> tuple[str, dict]:
    """lm-eval's model type and model_args for one model under the configured backend."""
    backend = cfg.backend
    extra = dict(backend.model_args)
    if backend.name == "api":
        args = {"model": served_name, "base_url": f"{backend.base_url.rstrip('/')}/chat/completions"}
        args |= {"num_concurrent": backend.num_concurrent, "max_retries": backend.max_retries}
        args |= {"timeout": backend.timeout, "tokenized_requests": False, "tokenizer_backend": None}
        return BACKENDS["api"], args | extra
    args = {"pretrained": path, "dtype": dtype(cfg), "trust_remote_code": bool(cfg.model.trust_remote_code)}
    if backend.name == "hf":
        args |= {"device": device(backend)}
        if adapter:
            args |= {"peft": adapter, "tokenizer": adapter}  # the chat template and any added tokens live there
        if cfg.decode.name == "budget":  # claire-hf adds the budget-forcing logits processor to each generate call
            keys = ("min_thinking_tokens", "max_thinking_tokens", "max_waits", "wait")
            args |= {key: cfg.decode[key] for key in keys} | {"markers": cfg.model.markers}
        return "claire-hf", args | extra  # both models load and decode alike (claire.evaluation.hf_model)
    else:
        args |= {"gpu_memory_utilization": backend.gpu_memory_utilization, "max_model_len": backend.max_model_len}
        args |= {"tensor_parallel_size": backend.tensor_parallel_size, "seed": cfg.seed}
        if adapter:
            args |= {"lora_local_path": adapter, "tokenizer": adapter}
        if cfg.run and not cfg.merged and Path(cfg.run, "adapter", "adapter_config.json").is_file():
            # the base model's engine is built as the tuned one's (LoRA enabled, same rank), just never given it
            rank = vllm_lora_rank(adapter_rank(str(Path(cfg.run, "adapter"))))
            args |= {"enable_lora": True, "max_lora_rank": rank}
    return BACKENDS[backend.name], args | extra


def dtype(cfg: DictConfig) -> str:
    """The backend's dtype: as configured, else bfloat16 on a GPU or a CPU with native bf16, else float32."""
    if cfg.backend.dtype:
        return str(cfg.backend.dtype)
    return "bfloat16" if machine.has_cuda() or machine.cpu_has_bf16() else "float32"


def device(backend: DictConfig) -> str:
    """The backend's device: as configured, else cuda when torch sees one, else cpu."""
    return str(backend.get("device") or ("cuda" if machine.has_cuda() else "cpu"))


def batch_args(backend: DictConfig) -> dict[str, Any]:
    """lm-eval's batch_size and max_batch_size: batch_size as configured, or (null) "auto" on a GPU, 32 on a CPU."""
    size = backend.batch_size
    if size is None:
        size = "auto" if device(backend).startswith("cuda") else CPU_BATCH
    return {"batch_size": size, "max_batch_size": backend.max_batch_size}


def adapter_rank(adapter: str) -> int:
    """The LoRA rank of a saved adapter (vLLM must be started with max_lora_rank at least this)."""
    return int(json.loads((Path(adapter) / "adapter_config.json").read_text())["r"])


def vllm_lora_rank(rank: int) -> int:
    """The smallest max_lora_rank vLLM accepts that holds a LoRA of this rank (vLLM refuses any other value)."""
    fitting = [allowed for allowed in LORA_RANKS if allowed >= rank]
    if not fitting:
        raise ClaireError(
            f"the adapter's LoRA rank {rank} is above vLLM's largest max_lora_rank ({LORA_RANKS[-1]}); evaluate "
            "its merged model (train with merge=true, then merged=true) or use backend=hf"
        )
    return fitting[0]


def decoding(cfg: DictConfig) -> dict[str, str]:
    """How a model's generations became text: the backend, and whether special tokens stay in the text.

    lm-eval's vLLM path asks vLLM for skip_special_tokens=False (unless gen_kwargs say otherwise); its HF path
    decodes with skip_special_tokens=True (claire-hf keeps Claire's trace markers); behind the api backend the
    server decides (`vllm serve` skips them by default).
    """
    forced = cfg.get("decode") and cfg.decode.name != "greedy"  # greedy: each task's own settings, nothing added
    name, decode = cfg.backend.name, {"decode": OmegaConf.to_container(cfg.decode)} if forced else {}
    if name == "vllm":
        skipped = bool(generation_overrides(cfg).get("skip_special_tokens", False))
        return {"backend": name, "special_tokens": "skipped" if skipped else "kept"} | decode
    return {"backend": name, "special_tokens": "skipped" if name == "hf" else "server"} | decode


def evaluate_model(cfg: DictConfig, lm: str, args: dict, names: list[str], manager: Any, out: Path) -> dict:
    """One model through lm-eval's simple_evaluate; its results and per-sample logs are saved under out.

    With backend.isolate (vLLM) it runs in a child process, so the engine's GPU memory is free for the next model.
    """
    if cfg.backend.get("isolate"):
        import multiprocessing

        child = multiprocessing.get_context("spawn").Process(
            target=_evaluate_and_save, args=(OmegaConf.to_container(cfg, resolve=True), lm, args, names, out)
        )
        child.start()
        child.join()
        if child.exitcode:
            raise ClaireError(f"evaluating {out.name} failed in its process (exit code {child.exitcode}); see above")
        return load_results(out)
    return _evaluate_and_save(cfg, lm, args, names, out, manager)


def _evaluate_and_save(cfg: Any, lm: str, args: dict, names: list[str], out: Path, manager: Any = None) -> dict:
    import lm_eval
    from lm_eval.api.registry import get_model

    import claire.evaluation.hf_model  # noqa: F401  (registers claire-hf, here too in a child process)

    cfg = OmegaConf.create(cfg) if isinstance(cfg, dict) else cfg
    backend = cfg.backend
    gen_kwargs = generation_overrides(cfg)
    if "until" in gen_kwargs:  # a user's own stop sequences replace each task's: the end-of-turn token stays
        gen_kwargs["until"] = with_end_token(list(gen_kwargs["until"]), cfg)
    tasks = load_tasks(cfg, names, manager or task_manager(cfg))
    with server_key(backend):
        batch = batch_args(backend)
        model = get_model(lm).create_from_arg_obj(args, batch)  # built here to read its vocabulary afterwards
        results = lm_eval.simple_evaluate(
            model=model,
            model_args=args,
            tasks=tasks,
            num_fewshot=cfg.num_fewshot,
            limit=cfg.limit,
            log_samples=True,
            apply_chat_template=cfg.apply_chat_template,
            system_instruction=cfg.system_instruction,
            gen_kwargs=gen_kwargs or None,
            random_seed=cfg.seed,
            numpy_random_seed=cfg.numpy_seed,
            torch_random_seed=cfg.torch_seed,
            fewshot_random_seed=cfg.fewshot_seed,
            **batch,
        )
    results["config"]["model"] = lm
    results["vocabulary"] = vocabulary(model)
    results["decoding"] = decoding(cfg)
    save_results(results, out)
    return results


def vocabulary(lm: Any) -> dict[str, int | None]:
    """The loaded model's embedding rows and its tokenizer's length (None where the backend holds no such thing)."""
    tokenizer, model = getattr(lm, "tokenizer", None), getattr(lm, "model", None)
    rows = None
    if hasattr(model, "get_input_embeddings"):
        rows = int(model.get_input_embeddings().num_embeddings)
    elif hasattr(model, "llm_engine"):  # vLLM
        rows = int(model.llm_engine.model_config.get_vocab_size())
    return {"embedding_rows": rows, "tokenizer_length": len(tokenizer) if tokenizer is not None else None}


def load_results(out: Path) -> dict:
    """What save_results wrote, read back as lm-eval's results dict (samples included)."""
    results = json.loads((out / "results.json").read_text())
    results["samples"] = {
        path.name.removeprefix("samples_").removesuffix(".jsonl"): datafiles.read_samples(path)
        for path in sorted(out.glob("samples_*.jsonl"))
    }
    return results


@contextlib.contextmanager
def server_key(backend: DictConfig) -> Iterator[None]:
    """While lm-eval runs, OPENAI_API_KEY holds the key named by backend.key_env, or nothing (lm-eval sends that
    variable to the server: an OpenAI key exported for the judge must not reach a local model server)."""
    if backend.name != "api":
        yield
        return
    key_env = backend.get("key_env")  # checked to be exported by check_api_backend
    saved = os.environ.get("OPENAI_API_KEY")
    os.environ["OPENAI_API_KEY"] = os.environ[key_env] if key_env else ""
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("OPENAI_API_KEY")
        else:
            os.environ["OPENAI_API_KEY"] = saved


def save_results(results: dict, out: Path) -> None:
    """lm-eval's results as results.json and one samples_<task>.jsonl per task, as its own tracker would."""
    from lm_eval.utils import handle_non_serializable

    out.mkdir(parents=True, exist_ok=True)
    samples = results.get("samples", {})
    summary = {k: v for k, v in results.items() if k != "samples"}
    summary["config"] = configs.mask(summary.get("config", {}))  # a key passed in backend.model_args, say
    (out / "results.json").write_text(json.dumps(summary, indent=2, default=handle_non_serializable))
    for task, rows in samples.items():
        with open(out / f"samples_{task}.jsonl", "w") as f:
            for row in rows:
                f.write(json.dumps(row, default=handle_non_serializable, ensure_ascii=False) + "\n")
