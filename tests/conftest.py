"""Shared fixtures: composed configs, and a tiny random Llama with the embedded model's real tokenizer."""

import os
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test may reach the hub; offline loading must still work
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

import pytest  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

import claire.train  # noqa: E402, F401  (registers the config resolvers)

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
GSM8K = ROOT.parent / "shared" / "data" / "gsm8k" / "train.jsonl"


def compose_train(*overrides: str) -> DictConfig:
    """conf/train.yaml composed with overrides, as `python -m claire.train` would (minus Hydra's run dir)."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def compose_generate(*overrides: str) -> DictConfig:
    """conf/generate.yaml composed with overrides, as `python -m claire.generate` would."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("generate", overrides=list(overrides))


def compose_evaluate(*overrides: str) -> DictConfig:
    """conf/evaluate.yaml composed with overrides, as `python -m claire.evaluate` would."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("evaluate", overrides=list(overrides))


@pytest.fixture(scope="session")
def embedded_model_dir() -> Path:
    """The embedded SmolLM2 converted once from its GGUF file (cached under ~/.cache/claire)."""
    from claire import models

    return Path(models.model_path(compose_train().model))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, embedded_model_dir) -> Path:
    """A 2-layer random Llama (float32) with SmolLM2's tokenizer and chat template, saved like a hub folder."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    path = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def tiny_overrides(model_dir: Path, out: Path, *extra: str) -> list[str]:
    """Overrides for a seconds-long CPU run of the tiny model on the sample data."""
    return [
        f"model.id={model_dir}",
        "model.name=tiny",
        "model.gguf_file=null",
        "model.gguf_package=null",
        "model.dtype=float32",
        "lora=r8",
        "trainer.bf16=false",
        "trainer.per_device_train_batch_size=4",
        "trainer.gradient_accumulation_steps=1",
        "trainer.max_steps=4",
        "trainer.eval_steps=2",
        "trainer.save_steps=2",
        "trainer.disable_tqdm=true",
        "data.max_eval_rows=8",  # evaluation through the 49k-token LM head dominates a tiny run
        "threads=1",
        f"output_dir={out}",
        *extra,
    ]


@pytest.fixture
def tiny_cfg(tiny_model_dir, tmp_path):
    """A function composing a tiny-model config that writes into a fresh folder."""

    def make(*extra: str, out: Path | None = None) -> DictConfig:
        return compose_train(*tiny_overrides(tiny_model_dir, out or tmp_path / "run", *extra))

    return make


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL URL with a password: $CLAIRE_TEST_POSTGRES, else a throw-away server started here and stopped
    after the session (skipped, saying why, only where PostgreSQL's binaries or psycopg are absent)."""
    import shutil
    import socket
    import subprocess
    import tempfile

    if os.environ.get("CLAIRE_TEST_POSTGRES"):
        yield os.environ["CLAIRE_TEST_POSTGRES"]
        return
    pytest.importorskip("psycopg", reason="psycopg is not installed (pip install -e '.[dev]')")
    if not (shutil.which("initdb") and shutil.which("pg_ctl")):
        pytest.skip("PostgreSQL's initdb and pg_ctl are not on PATH; or set CLAIRE_TEST_POSTGRES to a PostgreSQL URL")
    folder = Path(tempfile.mkdtemp(prefix="claire-test-postgres-"))  # not under pytest's root-only folders
    (folder / "password").write_text("s3cret-pg-pw\n")
    as_owner = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []  # PostgreSQL refuses to run as root
    if as_owner:
        shutil.chown(folder, "postgres")
        shutil.chown(folder / "password", "postgres")
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    data = folder / "data"
    run = lambda *command: subprocess.run([*as_owner, *command], check=True, capture_output=True)  # noqa: E731
    run("initdb", "-D", str(data), "-U", "claire", f"--pwfile={folder / 'password'}", "--auth=scram-sha-256")
    options = f"-p {port} -k {folder} -h 127.0.0.1"
    run("pg_ctl", "-D", str(data), "-o", options, "-l", str(folder / "log"), "-w", "start")
    import psycopg

    with psycopg.connect(f"postgresql://claire:s3cret-pg-pw@127.0.0.1:{port}/postgres", autocommit=True) as admin:
        admin.execute("CREATE DATABASE sweeps")
    yield f"postgresql+psycopg://claire:s3cret-pg-pw@127.0.0.1:{port}/sweeps"
    run("pg_ctl", "-D", str(data), "-m", "immediate", "stop")
    shutil.rmtree(folder, ignore_errors=True)
