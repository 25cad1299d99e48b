#!/bin/sh
# The images' entrypoint: serve the run mounted at /srv/claire-run (or, when nothing is mounted there, the embedded
# model) on all interfaces. Arguments are more claire.serve overrides, e.g. decode=budget decode.max_thinking_tokens=256.
# CLAIRE_ENGINE (transformers | vllm) and CLAIRE_DEVICE come from the image (docker run -e changes them).
set -e
RUN_DIR="${CLAIRE_RUN_DIR:-/srv/claire-run}"
if [ -f "$RUN_DIR/config.yaml" ]; then
  set -- "run=$RUN_DIR" "$@"
elif [ -d "$RUN_DIR" ]; then
  echo "claire-serve: error: $RUN_DIR has no config.yaml; mount a run folder (experiments/<run_name>/<time>) there" >&2
  exit 2
fi
exec python3 -m claire.serve host=0.0.0.0 port=8000 engine="${CLAIRE_ENGINE:-transformers}" device="${CLAIRE_DEVICE:-cpu}" "$@"
