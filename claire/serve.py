"""claire.serve: a Claire model behind an OpenAI-compatible API, its reasoning apart from its answer.

python -m claire.serve run=experiments/<run_name>/<timestamp>       # http://127.0.0.1:8000/v1, model "claire"
"""

import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

from claire import ClaireError, configs, decoding, resolvers, run_folders

resolvers.register()


def check(cfg: DictConfig) -> None:
    """One-line errors for a bad config, before any model loads; a run's own model settings replace model.*."""
    decoding.check(cfg.decode)
    if cfg.decode.name not in ("greedy", "budget"):
        raise ClaireError(f"decode={cfg.decode.name} is not served; use greedy or budget (a vote is several requests)")
    if not isinstance(cfg.port, int) or not 0 < cfg.port < 65536:
        raise ClaireError(f"port={cfg.port} is not a TCP port; give one in 1-65535, e.g. 8000")
    if not str(cfg.served_name or "").strip():
        raise ClaireError("served_name= is empty; give the model name clients will send, e.g. served_name=claire")
    if cfg.engine not in ("transformers", "vllm"):
        raise ClaireError(f"engine={cfg.engine} is not a serving engine; choose transformers (CPU) or vllm (a GPU)")
    if cfg.engine == "vllm":
        if cfg.decode.name != "greedy":
            raise ClaireError(f"decode={cfg.decode.name} is served by engine=transformers only (vLLM has no 'Wait'); "
                              "use decode=greedy with engine=vllm")  # fmt: skip
        from claire.serving.vllm import vllm_executable

        vllm_executable(cfg.vllm)
    if cfg.run:
        cfg.model = run_folders.trained_model(Path(cfg.run), cfg.merged, cfg.model.trust_remote_code)
    elif cfg.merged:
        raise ClaireError("merged=true needs run=<a claire.train run folder>")


def run(cfg: DictConfig) -> None:
    """Check, build the served folder (once), then serve until stopped."""
    check(cfg)
    if cfg.threads:
        os.environ["OMP_NUM_THREADS"] = str(cfg.threads)  # the model's process, spawned later, reads it
    import uvicorn

    from claire.serving import build_app, served_folder, vllm_command

    served = served_folder(cfg.model, cfg.run, cfg.merged)
    if cfg.engine == "vllm":
        command = vllm_command(served, cfg)
        print(f"claire.serve: {' '.join(command)}", flush=True)
        os.execvp(command[0], command)  # vLLM's server in this process's place (check() found the command)
    app = build_app(served, cfg)
    print(f"claire.serve: model '{cfg.served_name}' at http://{cfg.host}:{cfg.port}/v1 (from {served})", flush=True)

    async def stop_if_the_model_died() -> None:  # as `transformers serve` does: a supervisor can then restart it
        if app.state.served.is_dead:
            server.should_exit = True

    config = uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level="warning",
                            callback_notify=stop_if_the_model_died, timeout_notify=5)  # fmt: skip
    server = uvicorn.Server(config)
    server.run()
    if app.state.served.is_dead:
        raise ClaireError("the model's process stopped (see the error above); the server stopped with it")


@hydra.main(version_base="1.3", config_path=configs.CONFIG_DIR, config_name="serve")
def main(cfg: DictConfig) -> None:
    """Hydra entrypoint: `python -m claire.serve run=<run folder>`."""
    try:
        run(cfg)
    except ClaireError as error:
        raise SystemExit(f"claire.serve: error: {error}") from None


if __name__ == "__main__":
    main()
