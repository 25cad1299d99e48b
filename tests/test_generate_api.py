"""claire.generate with a teacher model: the whole pipeline against a scripted OpenAI-compatible server on 127.0.0.1.

The server answers well or badly on a plan (malformed traces, wrong answers, 429, 500, stalls) and counts what it
receives, so the tests can check rejection sampling, retries, costs, the budget cap, kill -9 + resume with exact
request counts, and the Batch API mode.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import pytest
from conftest import CONF, ROOT, compose_train
from hydra import compose, initialize_config_dir
from scripted_server import ScriptedServer

from claire import ClaireError, datafiles
from claire.generate import run
from claire.teacher import engine
from claire.teacher.ledger import BatchState, Ledger
from claire.teacher.pipeline import allocate
from claire.training import preprocess

NO_REFERENCES = [
    f"decontaminate.{name}=null" for name in ("gsm8k_test", "gpqa_diamond", "gpqa_extended", "causal_test")
]


def word_problem(i: int) -> dict:
    """A GSM8K-shaped row with a known answer."""
    a, b = 3 + i, 7 + 2 * i
    return {
        "question": f"Ann has {a} red pens and buys {b} blue pens at shop {i}. How many pens has she now?",
        "answer": f"She has {a} + {b} = {a + b} pens.\n#### {a + b}",
    }


@pytest.fixture
def questions(tmp_path) -> Path:
    path = tmp_path / "gsm8k-train.jsonl"
    path.write_text("".join(json.dumps(word_problem(i)) + "\n" for i in range(60)))
    return path


def answer_for(question: str) -> str:
    numbers = [int(n) for n in re.findall(r"\d+", question)[:2]]
    return str(sum(numbers))


def compose_api(server: ScriptedServer, questions: Path, out: Path, *extra: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("generate", overrides=api_overrides(server, questions, out, *extra))


def api_overrides(server: ScriptedServer, questions: Path, out: Path, *extra: str) -> list[str]:
    """A small gsm8k-only mix (18 train / 2 eval) against the scripted server, nothing downloaded."""
    return [
        "mix=gsm8k", "mix.train=18", "mix.eval=2", "api=local", f"api.base_url={server.url}", "api.max_retries=2",
        f"sources.gsm8k.path={questions}", f"out={out}", "progress=false", *NO_REFERENCES, *extra,
    ]  # fmt: skip


def ledger_entries(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "ledger.jsonl").read_text().splitlines()]


def test_pipeline_verifies_retries_and_writes_a_dataset_data_can_load(questions, tmp_path):
    plan = ["malformed", "wrong", "429", "500", "truncated"]
    with ScriptedServer(answer_for=answer_for, plan=plan) as server:
        out = run(compose_api(server, questions, tmp_path / "gen"))
    dd = datasets.load_from_disk(str(out))
    assert {name: len(split) for name, split in dd.items()} == {"train": 18, "eval": 2}
    assert all(dd["train"]["correct"]) and set(dd["train"]["source"]) == {"gsm8k"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rejections"] == {"unbalanced_tags": 1, "wrong_answer": 1, "truncated": 1}
    # 429 and 500 were retried by the client itself; every answered request is in the ledger exactly once
    entries = ledger_entries(out)
    assert server.counts["received"] == 25 and server.counts["answered"] == len(entries) == 23
    assert len({e["key"] for e in entries}) == len(entries)
    # a rejected question is asked again with the next sample's seed, unless questions already in flight filled the
    # quota first (which of the 25 requests drew which planned failure depends on their timing)
    retried = {e["id"] for e in entries if e["sample"] == 1}
    first = {e["id"] for e in entries if e["sample"] == 0}
    assert len(retried) <= 3 and retried <= first and len(first) + len(retried) == 23
    assert all(e["sample"] in (0, 1) for e in entries)
    card = (out / "README.md").read_text()
    assert "with prompt `v2`" in card and summary["prompt"]["hash"] in card and "wrong_answer 1" in card
    # the foundation's data= option reads it directly
    cfg = compose_train("data=v2", f"data.path={out}")
    raw = datafiles.load_raw(cfg.data)
    prepared, dropped = preprocess.prepare_split(raw["train"], cfg.data, "native")
    assert len(prepared) == 18 and not dropped
    assert prepared[0]["completion"][0]["content"].startswith("<|im_start|>think")


def test_a_question_that_never_passes_is_replaced_after_its_tries(questions, tmp_path):
    with ScriptedServer(answer_for=answer_for, plan=["wrong"] * 3) as server:
        out = run(compose_api(server, questions, tmp_path / "gen", "api.max_concurrency=1", "verify.tries=3"))
    seeds = [body["seed"] for body in server.requests[:3]]
    asked = {body["messages"][-1]["content"] for body in server.requests[:3]}
    assert seeds == [0, 1, 2] and len(asked) == 1  # one question, three samples, three seeds
    dd = datasets.load_from_disk(str(out))
    assert asked.isdisjoint([*dd["train"]["question"], *dd["eval"]["question"]])
    assert len(dd["train"]) + len(dd["eval"]) == 20 and server.counts["received"] == 23


def test_require_correct_false_keeps_wrong_answers_but_marks_them(questions, tmp_path):
    with ScriptedServer(answer_for=answer_for, default="wrong") as server:
        out = run(compose_api(server, questions, tmp_path / "gen", "verify.require_correct=false"))
    dd = datasets.load_from_disk(str(out))
    assert server.counts["received"] == 20 and not any(dd["train"]["correct"])


def test_budget_stops_cleanly_and_a_rerun_goes_on_without_asking_again(questions, tmp_path):
    out = tmp_path / "gen"
    priced = ["api.price={input: 10000.0, output: 0.0}", "api.max_concurrency=1"]  # about $2 a request
    with ScriptedServer(answer_for=answer_for) as server:
        with pytest.raises(ClaireError, match=r"stopped at \d+ of 20 rows because the budget would be exceeded"):
            run(compose_api(server, questions, out, *priced, "budget_usd=10"))
        paid = ledger_entries(out)
        assert 0 < len(paid) < 20 and sum(e["cost_usd"] for e in paid) <= 10
        assert not (out / "dataset_dict.json").exists()
        run(compose_api(server, questions, out, *priced, "budget_usd=null"))
    assert server.counts["received"] == 20 == len(ledger_entries(out))  # nothing paid for was asked twice


def test_kill_9_midway_then_resume_asks_only_for_what_is_missing(questions, tmp_path):
    out, secret = tmp_path / "gen", "sk-claire-test-SECRET-0123456789"
    with ScriptedServer(answer_for=answer_for, plan=["good"] * 7, default="stall") as server:
        args = api_overrides(server, questions, out, "api.key_env=CLAIRE_TEST_KEY", "api.max_concurrency=3")
        command = [sys.executable, "-m", "claire.generate", *args]
        env = {**os.environ, "CLAIRE_TEST_KEY": secret}
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (
            (out / "ledger.jsonl").exists() and len(ledger_entries(out)) == 7 and server.counts["stall"] == 3
        ):
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        log = process.communicate()[0].decode()
        assert len(ledger_entries(out)) == 7 and server.counts["answered"] == 7
        server.release()
        server.set_default("good")
        first = server.counts["received"]
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
    entries = ledger_entries(out)
    assert server.counts["received"] - first == 13  # exactly the 13 rows not yet paid for
    assert len(entries) == len({e["key"] for e in entries}) == 20 == server.counts["answered"]
    assert all(r["authorization"] == f"Bearer {secret}" for r in server.requests)
    written = [p.read_bytes() for p in out.rglob("*") if p.is_file()]
    assert written and not any(secret.encode() in blob for blob in written)  # config dump, ledger, card, data
    assert secret not in log + done.stdout + done.stderr


def test_torn_last_line_is_cut_off_and_appending_goes_on(tmp_path):
    path = tmp_path / "ledger.jsonl"
    path.write_text(json.dumps({"key": "a", "cost_usd": 1.5}) + "\n" + '{"key": "b", "cost_')
    ledger = Ledger(path)
    assert list(ledger.entries) == ["a"] and ledger.cost() == 1.5
    assert ledger.append({"key": "b", "cost_usd": 0.5}) and not ledger.append({"key": "a", "cost_usd": 9})
    ledger.close()
    assert [json.loads(line)["key"] for line in path.read_text().splitlines()] == ["a", "b"]


def test_batch_mode_rounds_and_resume_after_a_kill_between_submit_and_collect(questions, tmp_path, monkeypatch):
    out = tmp_path / "gen"
    batch = ["api.mode=batch", "api.poll_seconds=0.01"]
    with ScriptedServer(answer_for=answer_for, plan=["wrong", "malformed"], batch_polls=2) as server:
        real_collect = engine.Teacher.collect

        async def killed(self, state, batch_id):
            raise KeyboardInterrupt  # the process dies right after the batch was submitted

        monkeypatch.setattr(engine.Teacher, "collect", killed)
        with pytest.raises(KeyboardInterrupt):
            run(compose_api(server, questions, out, *batch))
        # and the state file lost its record too: the rerun must find the batch through the API's list
        (out / "batches.jsonl").unlink()
        monkeypatch.setattr(engine.Teacher, "collect", real_collect)
        run(compose_api(server, questions, out, *batch))
    entries = ledger_entries(out)
    # round 1: 20 lines, 2 rejected; round 2 asks for 2 more rows at the pass rate seen (18/20): 3 lines, none twice
    assert server.counts["batch_lines"] == len(entries) == 23
    assert {e["mode"] for e in entries} == {"batch"} and len({e["key"] for e in entries}) == 23
    states = [json.loads(line) for line in (out / "batches.jsonl").read_text().splitlines()]
    assert sum(s["collected"] for s in states) == 2
    dd = datasets.load_from_disk(str(out))
    assert len(dd["train"]) == 18 and all(dd["train"]["correct"])


def test_overlap_with_evaluation_sets_is_removed_and_counted(questions, tmp_path):
    reference = tmp_path / "gsm8k-test.jsonl"
    leaked = [word_problem(i)["question"].replace("now?", "today?") for i in (1, 2, 3)]
    reference.write_text("".join(json.dumps({"question": q}) + "\n" for q in leaked))
    spec = f"decontaminate.gsm8k_test={{path: {reference}, config_name: null, split: test, field: question}}"
    with ScriptedServer(answer_for=answer_for) as server:
        out = run(compose_api(server, questions, tmp_path / "gen", spec))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sources"]["gsm8k"]["overlap_gsm8k_test"] == 3
    asked = {body["messages"][-1]["content"] for body in server.requests}
    assert not asked & {word_problem(i)["question"] for i in (1, 2, 3)}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("+mix.weights.web=1", "mix.weights.web: web is not a source; choose among"),
        ("api.mode=stream", "api.mode=stream is not a mode; choose online or batch"),
        ("verify.tries=0", "verify.tries=0 must be a whole number of samples, at least 1"),
        ("api.key_env=CLAIRE_UNSET_KEY", "api.key_env=CLAIRE_UNSET_KEY: that environment variable is not set"),
        ("api.price=null", "api.model=local has no price in prices; add prices.local"),
        ("prompt.user=Answer", "has no {question} placeholder"),
    ],
)
def test_bad_settings_fail_in_one_line_before_any_request(override, message, questions, tmp_path):
    with ScriptedServer(answer_for=answer_for) as server, pytest.raises(ClaireError, match=re.escape(message)):
        run(compose_api(server, questions, tmp_path / "gen", override))
    assert server.counts["received"] == 0 and not (tmp_path / "gen").exists()


def test_a_finished_dataset_is_never_overwritten(questions, tmp_path):
    with ScriptedServer(answer_for=answer_for) as server:
        out = run(compose_api(server, questions, tmp_path / "gen"))
        before = (out / "ledger.jsonl").read_bytes()
        with pytest.raises(ClaireError, match="already holds a finished dataset"):
            run(compose_api(server, questions, out))
    assert (out / "ledger.jsonl").read_bytes() == before


def test_a_changed_prompt_text_needs_a_new_version(questions, tmp_path):
    with ScriptedServer(answer_for=answer_for, plan=["good"] * 5, default="500") as server:
        with pytest.raises(ClaireError):
            run(compose_api(server, questions, tmp_path / "gen", "api.max_retries=0", "api.max_concurrency=1",
                            "api.max_consecutive_failures=1"))  # fmt: skip
        with pytest.raises(ClaireError, match="prompt v2 has changed since"):
            run(compose_api(server, questions, tmp_path / "gen", "prompt.system=Be brief."))


def test_push_to_hub_pushes_the_saved_dataset_privately(questions, tmp_path, monkeypatch):
    pushed = []
    monkeypatch.setattr(datasets.DatasetDict, "push_to_hub", lambda self, repo, **kw: pushed.append((repo, kw, self)))
    with ScriptedServer(answer_for=answer_for) as server:
        run(compose_api(server, questions, tmp_path / "gen", "push_to_hub=me/claire-traces"))
    ((repo, options, dataset),) = pushed
    assert repo == "me/claire-traces" and options == {"private": True} and len(dataset["train"]) == 18


def test_pacer_spaces_requests_to_the_rpm_limit():
    import asyncio

    async def ten() -> float:
        pacer = engine.Pacer(rpm=1200, tpm=None)  # one request every 50 ms
        start = time.monotonic()
        for _ in range(11):
            await pacer.acquire(100)
        return time.monotonic() - start

    assert asyncio.run(ten()) >= 0.5 - 0.01


def test_allocate_follows_weights_and_passes_on_what_a_source_lacks():
    assert allocate(100, {"a": 0.5, "b": 0.3, "c": 0.2}, {"a": 1000, "b": 1000, "c": 1000}) == {
        "a": 50,
        "b": 30,
        "c": 20,
    }
    assert allocate(100, {"a": 0.5, "b": 0.3, "c": 0.2}, {"a": 1000, "b": 10, "c": 1000}) == {"a": 64, "b": 10, "c": 26}
    assert allocate(10, {"a": 1, "b": 1}, {"a": 3, "b": 4}) == {"a": 3, "b": 4}  # everything there is
    assert (
        sum(allocate(12105 + 1214, {"a": 0.3, "b": 0.35, "c": 0.35}, {"a": 7473, "b": 10**5, "c": 10**5}).values())
        == 13319
    )


def test_prices_match_dated_snapshots_and_batch_halves_them():
    prices = {"gpt-4.1": {"input": 2.0, "output": 8.0}, "gpt-4.1-mini": {"input": 0.4, "output": 1.6}}
    assert engine.price_of("gpt-4.1-2025-04-14", prices) == prices["gpt-4.1"]
    assert engine.price_of("gpt-4.1-mini-2025-04-14", prices) == prices["gpt-4.1-mini"]
    assert engine.price_of("o3", prices) is None
    assert engine.cost_usd(1_000_000, 500_000, prices["gpt-4.1"]) == pytest.approx(6.0)
    assert engine.cost_usd(1_000_000, 500_000, prices["gpt-4.1"], discount=0.5) == pytest.approx(3.0)


def test_batch_mode_splits_a_round_into_files_of_the_apis_limit(questions, tmp_path, monkeypatch):
    monkeypatch.setattr(engine, "BATCH_LIMIT", 8)
    with ScriptedServer(answer_for=answer_for) as server:
        out = run(compose_api(server, questions, tmp_path / "gen", "api.mode=batch", "api.poll_seconds=0.01"))
    states = [json.loads(line) for line in (out / "batches.jsonl").read_text().splitlines()]
    assert [s["requests"] for s in states if not s["collected"]] == [8, 8, 4]


def test_batch_mode_stops_when_its_rounds_run_out(questions, tmp_path):
    rounds = ["api.mode=batch", "api.poll_seconds=0.01", "api.max_batch_rounds=1"]
    with ScriptedServer(answer_for=answer_for, default="wrong") as server:
        cfg = compose_api(server, questions, tmp_path / "gen", *rounds)
        with pytest.raises(ClaireError, match="api.max_batch_rounds=1 rounds did not finish it"):
            run(cfg)
    assert server.counts["batch_lines"] == 20 == len(ledger_entries(tmp_path / "gen"))


def test_sources_that_run_short_give_a_smaller_dataset_and_say_so(tmp_path, caplog):
    few = tmp_path / "few.jsonl"
    few.write_text("".join(json.dumps(word_problem(i)) + "\n" for i in range(22)))
    with ScriptedServer(answer_for=answer_for, plan=["wrong"] * 5) as server:
        out = run(compose_api(server, few, tmp_path / "gen", "verify.tries=1", "api.max_concurrency=1"))
    dd = datasets.load_from_disk(str(out))
    assert (len(dd["train"]), len(dd["eval"])) == (15, 2) and server.counts["received"] == 22
    assert "only 17 of 20 rows" in caplog.text
    assert json.loads((out / "summary.json").read_text())["sources"]["gsm8k"] == {
        "available": 22, "overlap": 0, "quota": 20, "rows": 17
    }  # fmt: skip


def test_the_budget_waits_for_requests_in_flight_instead_of_stopping_early(questions, tmp_path):
    # each request may cost up to $2.05 (2048 tokens out at $1000/M) but costs ~$0.02: with 8 in flight the cap
    # of $5 is reached by reservations long before it is spent; the run must go on, two at a time, and finish
    priced = ["api.price={input: 0.0, output: 1000.0}", "budget_usd=5", "api.max_concurrency=8"]
    with ScriptedServer(answer_for=answer_for, latency=0.02) as server:
        out = run(compose_api(server, questions, tmp_path / "gen", *priced))
    entries = ledger_entries(out)
    assert len(entries) == server.counts["answered"] == 20 and 0 < sum(e["cost_usd"] for e in entries) < 5


def test_a_refused_question_is_recorded_once_and_replaced(questions, tmp_path):
    with ScriptedServer(answer_for=answer_for, plan=["good", "good", "400"]) as server:
        out = run(compose_api(server, questions, tmp_path / "gen", "api.max_concurrency=1"))
    assert json.loads((out / "summary.json").read_text())["rejections"] == {"refused": 1}
    refused = [e for e in ledger_entries(out) if e["finish_reason"].startswith("refused")]
    assert len(refused) == 1 and refused[0]["cost_usd"] == 0 and server.counts["received"] == 21


def test_a_refusal_before_any_answer_is_a_settings_error(questions, tmp_path):
    with ScriptedServer(answer_for=answer_for, default="400") as server:
        with pytest.raises(ClaireError, match="the API rejected the request .*BadRequestError 400.*check api"):
            run(compose_api(server, questions, tmp_path / "gen", "api.max_concurrency=1"))
        assert server.counts["received"] == 1 and not ledger_entries(tmp_path / "gen")


def test_extra_body_passes_nested_fields_and_changed_settings_are_refused(questions, tmp_path):
    thinking = "+api.extra_body.chat_template_kwargs={enable_thinking: false}"
    with ScriptedServer(answer_for=answer_for, plan=["good"] * 3, default="500") as server:
        stop = ["api.max_retries=0", "api.max_concurrency=1", "api.max_consecutive_failures=1"]
        with pytest.raises(ClaireError, match="stopped at 3 of 20 rows because 1 requests in a row failed"):
            run(compose_api(server, questions, tmp_path / "gen", thinking, *stop))
        assert server.requests[0]["chat_template_kwargs"] == {"enable_thinking": False}
        with pytest.raises(ClaireError, match="differ from those .* was asked with"):
            run(compose_api(server, questions, tmp_path / "gen", thinking, "api.temperature=1.0"))


def test_pacer_waits_for_the_token_budget():
    import asyncio

    async def two() -> float:
        pacer = engine.Pacer(rpm=None, tpm=60_000)  # 1,000 tokens a second; starts with a minute's worth
        await pacer.acquire(60_000)
        start = time.monotonic()
        await pacer.acquire(500)
        return time.monotonic() - start

    assert asyncio.run(two()) >= 0.45


def test_one_writer_per_ledger(tmp_path):
    first = Ledger(tmp_path / "ledger.jsonl")
    with pytest.raises(ClaireError, match="another claire.generate is writing"):
        Ledger(tmp_path / "ledger.jsonl")
    first.close()
    Ledger(tmp_path / "ledger.jsonl").close()


def test_open_batches_must_be_collected_before_going_online(questions, tmp_path):
    out = tmp_path / "gen"
    out.mkdir()
    BatchState(out / "batches.jsonl").add("batch_9", 20)
    with ScriptedServer(answer_for=answer_for) as server, pytest.raises(ClaireError, match="rerun with api.mode=batch"):
        run(compose_api(server, questions, out))
    assert server.counts["received"] == 0


def test_a_request_stalled_past_the_timeout_is_retried_by_the_client(questions, tmp_path):
    with ScriptedServer(answer_for=answer_for, plan=["stall"], stall_seconds=5) as server:
        out = run(compose_api(server, questions, tmp_path / "gen", "api.timeout=0.5", "api.max_concurrency=1"))
    assert server.counts["stall"] == 1 and server.counts["received"] == 21 == len(ledger_entries(out)) + 1


def test_after_a_resume_a_refusal_is_the_questions_not_the_settings(questions, tmp_path):
    stop = ["api.max_retries=0", "api.max_concurrency=1", "api.max_consecutive_failures=1"]
    first = ScriptedServer(answer_for=answer_for, plan=["good"] * 3, default="500")
    with first as server, pytest.raises(ClaireError, match="stopped at 3 of 20"):
        run(compose_api(server, questions, tmp_path / "gen", *stop))
    with ScriptedServer(answer_for=answer_for, plan=["400"]) as server:
        out = run(compose_api(server, questions, tmp_path / "gen", *stop))
    assert json.loads((out / "summary.json").read_text())["rejections"] == {"refused": 1}
