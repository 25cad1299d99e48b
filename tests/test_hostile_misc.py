"""Smaller hostile cases (issue 16 item 6): request logs, someone else's run turning remote code on, escaping names."""

import asyncio
import logging

import pytest
from conftest import compose_evaluate, compose_train
from omegaconf import OmegaConf

from claire import ClaireError, openai_client
from claire.evaluation import harness
from claire.training import checks


def test_api_requests_are_not_logged_one_line_each(caplog):
    from scripted_server import ScriptedServer

    caplog.set_level(logging.INFO)
    with ScriptedServer(reply=lambda messages, model: "yes") as server:
        api = OmegaConf.create({"base_url": server.url, "key_env": None, "timeout": 10, "max_retries": 0})
        client = openai_client.client_of(api)
        messages = [{"role": "user", "content": "Does rain cause wet grass?"}]
        reply = asyncio.run(client.chat.completions.create(model="m", messages=messages))
    assert reply.choices[0].message.content == "yes"
    assert not [r for r in caplog.records if "HTTP Request" in r.getMessage()]  # httpx2 logged one per request


def test_someone_elses_run_does_not_turn_remote_code_on(tmp_path):
    run = tmp_path / "their-run"
    (run / "adapter").mkdir(parents=True)
    (run / "adapter" / "adapter_config.json").write_text("{}")
    saved = compose_train("model.trust_remote_code=true")
    (run / "config.yaml").write_text(OmegaConf.to_yaml(saved))
    out = f"output_dir={tmp_path / 'out'}"
    with pytest.raises(ClaireError, match=r"was trained with model.trust_remote_code=true: .*add model.trust_remote"):
        harness.check(compose_evaluate(f"run={run}", "tasks=[claire_causal]", out))
    cfg = compose_evaluate(f"run={run}", "tasks=[claire_causal]", "model.trust_remote_code=true", out)
    harness.check(cfg)  # the user said so on the command line
    assert cfg.model.trust_remote_code is True


@pytest.mark.parametrize("name", ["../outside", "a/../../b", "/etc/claire"])
def test_a_run_name_cannot_leave_experiments(tmp_path, name):
    with pytest.raises(ClaireError, match=r"^run_name=\S+ would leave experiments/; use a plain name"):
        checks.check(compose_train(f"run_name={name}"), str(tmp_path))
