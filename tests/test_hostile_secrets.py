"""Secrets come from the environment only (issue 16 item 3): one on the command line is refused, in one line that
names the variable to use and never repeats the value, before Hydra or Claire writes anything."""

import re
import subprocess
import sys

import pytest
from conftest import ROOT

from claire import configs

SECRET = "sk-claire-planted-SECRET-0123456789"
HF_SECRET = "hf_claireplantedSECRET0123456789abcd"


@pytest.mark.parametrize(
    ("command", "override", "message"),
    [
        ("train", f"+hf_token={HF_SECRET}", "hf_token=... puts a secret on the command line, .*export HF_TOKEN"),
        ("train", f"-m +hf_token={HF_SECRET} seed=1,2", "hf_token=... puts a secret .*export HF_TOKEN"),
        ("generate", f"+api.api_key={SECRET}", "api.api_key=... puts a secret .*name the variable with api.key_env"),
        ("generate", f"api.key_env={SECRET}", "api.key_env= takes the name of the variable holding the key, not"),
        ("generate", f"api.base_url='http://127.0.0.1:1/v1?key={SECRET}'", "api.base_url=... puts a secret"),
        ("evaluate", f"+judge.api_key={SECRET}", "judge.api_key=... puts a secret .*with judge.key_env"),
        ("evaluate", f"+backend.model_args.api_key={SECRET}", "backend.model_args.api_key=... puts a secret"),
        ("report", f"+token={HF_SECRET}", "token=... puts a secret .*export HF_TOKEN"),
    ],
)
def test_a_secret_on_the_command_line_is_refused_and_nothing_is_written(tmp_path, command, override, message):
    done = subprocess.run(
        [sys.executable, "-m", f"claire.{command}", *override.split()],
        capture_output=True, text=True, cwd=tmp_path, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 1 and done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert re.match(f"claire.{command}: error: {message}", done.stderr), done.stderr
    assert SECRET not in done.stderr and HF_SECRET not in done.stderr
    assert list(tmp_path.iterdir()) == []  # no run folder, no .hydra/, no log


@pytest.mark.parametrize(
    "override",
    [
        "model.end_token=<|eot_id|>", "api.key_env=MY_TEACHER_KEY", "gen_kwargs.max_gen_toks=256",
        "trainer.max_length=2048", "judge.key_env=null", "+hf_token=null", "run_name=tokenizer-study",
    ],
)  # fmt: skip
def test_settings_that_only_look_like_secrets_pass(override):
    assert configs.secret_override([override]) is None
