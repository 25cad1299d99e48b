"""claire.generate against a real OpenAI-compatible server: `transformers serve` hosting the embedded model."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from conftest import compose_generate

from claire import ClaireError
from claire.generate import run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(embedded_model_dir):
    """`transformers serve` on 127.0.0.1 with the embedded model pinned (the request's model is its path)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_UPDATE_CHECK": "1", "OMP_NUM_THREADS": "2"}
    command = [sys.executable, "-m", "transformers.cli.transformers", "serve", str(embedded_model_dir)]
    command += ["--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]
    server = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, server.stderr.read()[-2000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                    break
            except OSError:
                assert time.monotonic() < deadline, "transformers serve did not start in 180 s"
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def test_real_server_answers_land_in_the_ledger_and_are_judged(served, embedded_model_dir, tmp_path):
    questions = tmp_path / "questions.jsonl"
    rows = [{"question": "Tom has 3 apples and buys 4 more. How many apples has he?", "answer": "#### 7"},
            {"question": "A box holds 6 eggs. How many eggs are in 2 boxes?", "answer": "#### 12"}]  # fmt: skip
    questions.write_text("".join(json.dumps(row) + "\n" for row in rows))
    refs = [f"decontaminate.{name}=null" for name in ("gsm8k_test", "gpqa_diamond", "gpqa_extended", "causal_test")]
    overrides = ["mix=gsm8k", "mix.train=1", "mix.eval=0", "api=local", f"api.base_url={served}", "progress=false",
                 f"api.model={embedded_model_dir}", "api.max_tokens=48", "verify.tries=2",
                 f"sources.gsm8k.path={questions}", "verify.require_correct=false", f"out={tmp_path / 'gen'}",
                 *refs]  # fmt: skip
    # a 135M model does not write <think>/<causality> traces: every answer is judged, recorded and rejected
    with pytest.raises(ClaireError, match=r"no trace passed verification \(\w+ \d"):
        run(compose_generate(*overrides))
    entries = [json.loads(line) for line in (tmp_path / "gen" / "ledger.jsonl").read_text().splitlines()]
    assert len(entries) == 4 and {e["sample"] for e in entries} == {0, 1}  # 2 questions x 2 tries
    assert all(e["content"] and e["tokens_in"] > 20 and e["tokens_out"] > 0 for e in entries)
    assert {e["finish_reason"] for e in entries} <= {"stop", "length"} and sum(e["cost_usd"] for e in entries) == 0
    # a rerun finds every try spent in the ledger and asks the server nothing
    before = (tmp_path / "gen" / "ledger.jsonl").read_bytes()
    with pytest.raises(ClaireError, match="no trace passed verification"):
        run(compose_generate(*overrides))
    assert (tmp_path / "gen" / "ledger.jsonl").read_bytes() == before
