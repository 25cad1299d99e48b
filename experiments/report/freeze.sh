#!/bin/sh
# Rewrite the frozen configs of the report's runs from conf/experiment/claire-*-v{1,2}.yaml; review the diff after.
#   sh experiments/report/freeze.sh
# Each folder keeps its reference.json (the numbers the report published) untouched.
set -e
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
for run in claire-0.5b-v1 claire-1.5b-v1 claire-7b-v1 claire-0.5b-v2 claire-1.5b-v2 claire-7b-v2; do
  dir=experiments/report/$run
  mkdir -p "$dir/.hydra"
  $PY -m claire.train experiment=$run output_dir=$dir --cfg job --resolve > "$dir/config.yaml"
  $PY -m claire.train experiment=$run output_dir=$dir --cfg job > "$dir/.hydra/config.yaml"
  printf -- "- experiment=%s\n- output_dir=%s\n" "$run" "$dir" > "$dir/.hydra/overrides.yaml"
done
