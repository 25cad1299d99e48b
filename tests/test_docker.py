"""The Dockerfile and compose file cannot be built here (no Docker daemon): what they copy and run must exist, and the
images' entrypoint must hand claire.serve the mounted run."""

import os
import re
import subprocess

import yaml
from conftest import ROOT

DOCKERFILE = (ROOT / "Dockerfile").read_text()


def test_every_file_the_images_copy_exists():
    sources = [s for line in re.findall(r"^COPY (.+)$", DOCKERFILE, re.M) for s in line.split()[:-1]]
    assert sources and all((ROOT / source).exists() for source in sources), sources
    assert set(re.findall(r"^FROM \S+ AS (\w+)$", DOCKERFILE, re.M)) == {"cpu", "gpu"}
    assert os.access(ROOT / "docker" / "serve.sh", os.X_OK) and "claire-serve" in re.findall(
        r'ENTRYPOINT \["(\S+)"\]', DOCKERFILE
    )


def test_compose_builds_the_dockerfiles_targets_and_mounts_the_run_read_only():
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    for service in compose["services"].values():
        assert service["build"]["target"] in ("cpu", "gpu") and service["ports"] == ["8000:8000"]
        assert any(volume.endswith(":/srv/claire-run:ro") for volume in service["volumes"])


def test_the_entrypoint_serves_the_mounted_run_or_the_embedded_model(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "python3").write_text('#!/bin/sh\necho "$@"\n')
    (fake / "python3").chmod(0o755)
    run = tmp_path / "run"  # nothing mounted yet
    env = {k: v for k, v in os.environ.items() if k not in ("CLAIRE_ENGINE", "CLAIRE_DEVICE")}  # the images' own
    env |= {"PATH": f"{fake}:{os.environ['PATH']}", "CLAIRE_RUN_DIR": str(run)}

    def argv() -> str:
        done = subprocess.run([ROOT / "docker" / "serve.sh", "decode=budget"], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    assert argv() == "-m claire.serve host=0.0.0.0 port=8000 engine=transformers device=cpu decode=budget"  # no run
    run.mkdir()
    (run / "config.yaml").write_text("model: {}\n")
    env |= {"CLAIRE_DEVICE": "cuda", "CLAIRE_ENGINE": "vllm"}
    assert argv() == f"-m claire.serve host=0.0.0.0 port=8000 engine=vllm device=cuda run={run} decode=budget"
    (run / "config.yaml").unlink()  # a folder mounted that is not a run (e.g. the run's parent) is refused
    done = subprocess.run([ROOT / "docker" / "serve.sh"], env=env, capture_output=True, text=True)
    assert (
        done.returncode == 2
        and done.stderr
        == f"claire-serve: error: {run} has no config.yaml; mount a run folder (experiments/<run_name>/<time>) there\n"
    )
