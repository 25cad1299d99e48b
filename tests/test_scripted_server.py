"""The scripted OpenAI-compatible server, driven through the real openai client."""

import asyncio
import json
import threading
import time

import openai
import pytest
from scripted_server import ScriptedServer, wrong_answer

MESSAGES = [{"role": "system", "content": "Think causally."}, {"role": "user", "content": "What is 6*7?"}]


def client(server: ScriptedServer, **kwargs) -> openai.OpenAI:
    """A sync client for the server."""
    return openai.OpenAI(base_url=server.url, api_key="sk-test", **{"max_retries": 0, **kwargs})


def ask(server: ScriptedServer, **kwargs):
    """One chat completion with the default messages."""
    options = {key: kwargs.pop(key) for key in ("timeout", "max_retries") if key in kwargs}
    return client(server, **options).chat.completions.create(model="m", messages=MESSAGES, **kwargs)


def test_good_answer_uses_answer_for_and_records_requests():
    with ScriptedServer(answer_for=lambda question: "7" if "6*7" in question else "x") as server:
        raw = client(server).chat.completions.with_raw_response.create(model="m", messages=MESSAGES, seed=11)
        response = raw.parse()
    content = response.choices[0].message.content
    assert content.startswith("<think>\n") and "</causality>" in content and content.endswith("</think>\n7")
    assert response.choices[0].finish_reason == "stop" and response.model == "m"
    assert response.usage.prompt_tokens == len("Think causally.What is 6*7?") // 4
    assert raw.headers["x-claire-seed"] == "11"
    assert server.counts == {"received": 1, "good": 1, "answered": 1}
    assert server.requests[0]["authorization"] == "Bearer sk-test" and server.requests[0]["seed"] == 11


def test_wrong_malformed_truncated_shapes():
    with ScriptedServer(plan=["wrong", "malformed", "truncated"]) as server:
        wrong, malformed, truncated = (ask(server).choices[0] for _ in range(3))
    assert wrong.message.content.endswith("</think>\n0")
    assert "<causality>" in malformed.message.content and "</causality>" not in malformed.message.content
    assert truncated.finish_reason == "length" and truncated.message.content.endswith("\n42")
    assert server.counts["answered"] == 3 and server.counts["wrong"] == 1 and server.counts["malformed"] == 1
    assert [wrong_answer(a) for a in ("0", "5", "A", "D", "yes", "No")] == ["1", "0", "B", "A", "no", "yes"]


def test_429_is_retried_by_the_client():
    with ScriptedServer(plan=["429"]) as server:
        response = ask(server, max_retries=2)
    assert response.choices[0].message.content.endswith("42")
    assert server.counts["429"] == 1 and server.counts["answered"] == 1 and server.counts["received"] == 2


def test_500_and_400_raise_without_retries():
    with ScriptedServer(plan=["500", "400"]) as server:
        with pytest.raises(openai.InternalServerError):
            ask(server)
        with pytest.raises(openai.BadRequestError):
            ask(server, max_retries=2)
    assert server.counts == {"received": 2, "500": 1, "400": 1}


def test_stall_times_out_and_release_frees_the_handler():
    with ScriptedServer(default="stall", stall_seconds=20) as server:
        start = time.monotonic()
        with pytest.raises(openai.APITimeoutError):
            ask(server, timeout=0.5)
        assert time.monotonic() - start < 3 and server.counts["stall"] == 1
        server.set_default("good")
        assert ask(server).choices[0].message.content.endswith("42")
        alive = threading.active_count()
        server.release()
        time.sleep(0.2)
        assert threading.active_count() < alive
    assert server.counts["answered"] == 1


def test_stop_releases_a_stalled_request():
    server = ScriptedServer(default="stall", stall_seconds=20).start()
    threading.Timer(0.2, server.stop).start()
    start = time.monotonic()
    with pytest.raises(openai.APIConnectionError):
        ask(server, timeout=10)
    assert time.monotonic() - start < 3


def test_latency_overlaps_concurrent_requests():
    async def burst(server: ScriptedServer) -> list:
        async with openai.AsyncOpenAI(base_url=server.url, api_key="sk-test", max_retries=0) as aclient:
            calls = [aclient.chat.completions.create(model="m", messages=MESSAGES) for _ in range(8)]
            return await asyncio.gather(*calls)

    with ScriptedServer(latency=0.3) as server:
        start = time.monotonic()
        responses = asyncio.run(burst(server))
        elapsed = time.monotonic() - start
    assert len(responses) == 8 and elapsed < 1.5
    assert server.counts["answered"] == 8


def test_rpm_limits_the_fourth_request():
    with ScriptedServer(rpm=3, plan=["wrong"]) as server:
        for _ in range(3):
            ask(server)
        with pytest.raises(openai.RateLimitError):
            ask(server)
    assert server.counts == {"received": 4, "wrong": 1, "good": 2, "answered": 3, "429": 1}


def test_batch_round_trip():
    answers = {"q1": "A", "q2": "yes", "q3": "12"}
    lines = [
        {
            "custom_id": f"id-{q}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "m", "messages": [{"role": "user", "content": q}]},
        }
        for q in answers
    ]
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    with ScriptedServer(answer_for=answers.get, plan=["good", "429"], batch_polls=2) as server:
        api = client(server)
        upload = api.files.create(file=("in.jsonl", data), purpose="batch")
        assert upload.bytes == len(data) and upload.filename == "in.jsonl" and upload.purpose == "batch"
        batch = api.batches.create(
            input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h", metadata={"k": "v"}
        )
        statuses = [api.batches.retrieve(batch.id).status for _ in range(3)]
        assert statuses == ["in_progress", "in_progress", "completed"]
        done = api.batches.retrieve(batch.id)
        assert [b.id for b in api.batches.list()] == [batch.id] and done.metadata == {"k": "v"}
        output = api.files.content(done.output_file_id).content
        assert api.files.content(upload.id).content == data
    results = [json.loads(line) for line in output.decode().splitlines()]
    assert [r["custom_id"] for r in results] == ["id-q1", "id-q2", "id-q3"]
    assert [r["response"]["status_code"] for r in results] == [200, 429, 200]
    assert results[0]["response"]["body"]["choices"][0]["message"]["content"].endswith("\nA")
    assert results[1]["response"]["body"]["error"]["type"] == "rate_limit_error"
    assert results[2]["response"]["body"]["choices"][0]["message"]["content"].endswith("\n12")
    assert done.request_counts.total == 3 and done.request_counts.completed == 2 and done.request_counts.failed == 1
    assert server.counts["batch_lines"] == 3 and server.counts["answered"] == 2 and server.counts["received"] == 3
    assert [r["messages"][0]["content"] for r in server.requests] == ["q1", "q2", "q3"]


def test_reply_writes_the_content_from_the_messages_and_the_plan_still_applies():
    def reply(messages: list[dict], model: str) -> str:
        return f"{model}: {len(messages)} messages, last: {messages[-1]['content']}"

    with ScriptedServer(reply=reply, plan=["429", "good", "truncated"]) as server:
        first, second = (ask(server, max_retries=1).choices[0] for _ in range(2))
    assert first.message.content == "m: 2 messages, last: What is 6*7?" and first.finish_reason == "stop"
    assert second.message.content == first.message.content and second.finish_reason == "length"
    assert server.counts["429"] == 1 and server.counts["received"] == 3 and server.counts["answered"] == 2
