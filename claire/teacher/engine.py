"""Ask an OpenAI-compatible model for traces; every answer lands in an append-only ledger the moment it arrives.

The ledger (ledger.jsonl in the output folder) is the only state. Each response is appended, flushed and fsynced
as soon as it arrives, keyed by (source, id, prompt version, model, sample). A rerun reads it back and asks only
for what is missing, so a run killed at any moment loses at most the requests that were still in flight.
Rejection sampling: a question is asked again (next sample, next seed) until one trace passes verification or
`tries` samples are spent; a question that never passes is replaced by the next one of its source.
"""

import asyncio
import hashlib
import json
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import openai
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from claire import ClaireError
from claire.openai_client import FATAL, REFUSED, describe
from claire.teacher.ledger import BatchState, Ledger, request_key

TERMINAL_BATCH = ("completed", "failed", "expired", "cancelled")
BATCH_LIMIT = 50_000
SETTINGS = ("temperature", "max_tokens", "seed", "extra_body")


def price_of(model: str, prices: dict) -> dict | None:
    """The price row of a model: an exact name, else the longest prefix (dated snapshots like gpt-4.1-2025-04-14)."""
    if model in prices:
        return prices[model]
    matches = [name for name in prices if model.startswith(name)]
    return prices[max(matches, key=len)] if matches else None


def cost_usd(tokens_in: int, tokens_out: int, price: dict | None, discount: float = 1.0) -> float:
    """Dollars for one request; the table is in dollars per million tokens."""
    if price is None:
        return 0.0
    return (tokens_in * price["input"] + tokens_out * price["output"]) * discount / 1e6


def estimate_tokens(messages: list[dict]) -> int:
    """A cheap estimate of prompt tokens (3 characters a token, on the safe side, plus per-message overhead)."""
    return sum(len(m["content"]) // 3 + 8 for m in messages)


class Pacer:
    """Spaces requests under requests/min and tokens/min limits: the openai client retries 429s but never paces.

    Tokens are counted as the API counts them when it admits a request: the prompt plus max_tokens in full.
    """

    def __init__(self, rpm: int | None, tpm: int | None) -> None:
        self.interval = 60.0 / rpm if rpm else 0.0
        self.tpm = tpm
        self.tokens = float(tpm or 0)
        self.next_slot = 0.0
        self.updated = time.monotonic()
        self.lock = asyncio.Lock()

    def _refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.tpm, self.tokens + (now - self.updated) * self.tpm / 60.0)
        self.updated = now

    async def acquire(self, tokens: int) -> None:
        """Wait for a request slot and for `tokens` of the per-minute token budget (first come, first served)."""
        async with self.lock:
            wait = max(0.0, self.next_slot - time.monotonic())
            if self.tpm:
                tokens = min(tokens, self.tpm)
                self._refill()
                wait = max(wait, (tokens - self.tokens) * 60.0 / self.tpm)
            if wait > 0:
                await asyncio.sleep(wait)
            self.next_slot = max(time.monotonic(), self.next_slot) + self.interval
            if self.tpm:
                self._refill()
                self.tokens -= tokens


@dataclass
class Budget:
    """A dollar cap: a request starts only if its worst case still fits under the cap."""

    limit: float | None
    spent: float
    reserved: float = 0.0

    def reserve(self, worst: float) -> bool:
        """Hold the worst-case cost of a request; False when it could cross the cap."""
        if self.limit is not None and self.spent + self.reserved + worst > self.limit:
            return False
        self.reserved += worst
        return True


@dataclass
class Job:
    """What to ask: question candidates per source in draw order, how many rows each source must yield, and how."""

    candidates: dict[str, list[dict]]
    quotas: dict[str, int]
    prompt: dict  # version, hash, system, user (with {question})
    api: Any  # the api config node
    price: dict | None
    budget: float | None
    tries: int
    verify: Callable[[dict, dict], str]  # (question row, ledger entry) -> "ok" or the rejection reason


@dataclass
class Outcome:
    """How a run went: rejections seen, requests that failed after all retries, and why it stopped early."""

    rejections: Counter = field(default_factory=Counter)
    failures: Counter = field(default_factory=Counter)
    answered: int = 0
    stopped: str | None = None


def settings_hash(api: Any) -> str:
    """A hash of the request settings that shape an answer besides prompt and model (temperature, max tokens...)."""
    values = {key: plain(api.get(key)) for key in SETTINGS}
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]


def plain(value: Any) -> Any:
    """A config value as plain Python (nested extra_body dicts included), ready for JSON."""
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig) else value


class Teacher:
    """Runs a Job against the API, online (concurrent, paced) or through the Batch API, recording into a Ledger."""

    def __init__(self, job: Job, ledger: Ledger, client: Any, progress: bool = True) -> None:
        self.job, self.ledger, self.client = job, ledger, client
        self.outcome = Outcome()
        self.rows = {(row["source"], row["id"]): row for rows in job.candidates.values() for row in rows}
        self.settings = settings_hash(job.api)
        self.answered_before = any(entry.get("settings") == self.settings for entry in ledger.entries.values())
        self.budget = Budget(job.budget, ledger.cost())
        self.settled = asyncio.Condition()
        self.pacer = Pacer(job.api.rpm, job.api.tpm)
        self.consecutive_failures = 0
        self.progress = tqdm(
            total=sum(job.quotas.values()), unit="row", desc="claire.generate", disable=not progress, mininterval=1.0
        )

    # -- requests and the ledger ------------------------------------------------------------------------------
    def messages(self, row: dict) -> list[dict]:
        """The chat messages of one question under the prompt."""
        system = self.job.prompt.get("system")
        user = self.job.prompt["user"].replace("{question}", row["question"])
        return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]

    def body(self, row: dict, sample: int) -> dict:
        """The chat-completions request body of one sample (its seed is the config seed plus the sample index)."""
        api = self.job.api
        body = {"model": api.model, "messages": self.messages(row), "temperature": api.temperature}
        return body | {"max_tokens": api.max_tokens, "seed": api.seed + sample} | (plain(api.extra_body) or {})

    def key(self, row: dict, sample: int) -> str:
        return request_key(row["source"], row["id"], self.job.prompt["version"], self.job.api.model, sample)

    def entry(self, key: str, completion: dict, mode: str) -> dict:
        """The ledger entry of one chat.completion object, for the request with this key."""
        source, question_id, version, model, sample = json.loads(key)
        choice, usage = completion["choices"][0], completion.get("usage") or {}
        tokens_in, tokens_out = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
        discount = self.job.api.batch_discount if mode == "batch" else 1.0
        current = (version, model) == (self.job.prompt["version"], self.job.api.model)
        return {
            "key": key,
            "source": source,
            "id": question_id,
            "prompt_version": version,
            "prompt_hash": self.job.prompt["hash"] if current else None,
            "model": model,
            "settings": self.settings if current else None,
            "sample": sample,
            "served_model": completion.get("model"),
            "content": choice["message"].get("content") or "",
            "finish_reason": choice.get("finish_reason"),
            "tokens_in": tokens_in,
            "tokens_out": tokens_out,
            "cost_usd": cost_usd(tokens_in, tokens_out, self.job.price, discount),
            "mode": mode,
            "time": datetime.now(UTC).isoformat(timespec="seconds"),
        }

    def record(self, key: str, completion: dict, mode: str) -> dict:
        """Write one response to the ledger (once) and return its entry."""
        entry = self.entry(key, completion, mode)
        if self.ledger.append(entry):
            self.budget.spent += entry["cost_usd"]
            self.outcome.answered += 1
        self.progress.set_postfix(cost=f"${self.budget.spent:.2f}", rejected=sum(self.outcome.rejections.values()))
        return self.ledger.entries[key]

    def refusal(self, error: Exception) -> dict:
        """A chat.completion stand-in for a request the API refused (400/422): recorded free, checked as 'refused'."""
        message = {"content": ""}
        return {"choices": [{"message": message, "finish_reason": f"refused: {describe(error)}"}], "usage": {}}

    def worst_case(self, row: dict, discount: float = 1.0) -> tuple[int, float]:
        """Estimated tokens (prompt + max_tokens) and the most one request can cost."""
        prompt_tokens = estimate_tokens(self.messages(row))
        worst = cost_usd(prompt_tokens, self.job.api.max_tokens, self.job.price, discount)
        return prompt_tokens + self.job.api.max_tokens, worst

    def status(self, row: dict) -> tuple[str, int, dict | None, list[str]]:
        """From the ledger: ('accepted', sample, entry) | ('rejected', tries, None) | ('open', next sample, None),
        with the verdicts of the samples checked so far."""
        verdicts = []
        for sample in range(self.job.tries):
            entry = self.ledger.entries.get(self.key(row, sample))
            if entry is None:
                return "open", sample, None, verdicts
            verdicts.append(self.job.verify(row, entry))
            if verdicts[-1] == "ok":
                return "accepted", sample, entry, verdicts
        return "rejected", self.job.tries, None, verdicts

    def accepted(self) -> tuple[list[tuple[dict, dict]], Counter]:
        """The first passing trace of each question, up to each quota in draw order; rejections per reason."""
        pairs, rejections = [], Counter()
        for source, quota in self.job.quotas.items():
            taken = 0
            for row in self.job.candidates[source]:
                if taken >= quota:
                    break
                state, _, entry, verdicts = self.status(row)
                rejections.update(v for v in verdicts if v != "ok")
                if state == "accepted":
                    pairs.append((row, entry))
                    taken += 1
        return pairs, rejections

    # -- online -----------------------------------------------------------------------------------------------
    async def ask(self, row: dict, sample: int) -> dict | None:
        """One paced, budgeted request; its entry, or None when it failed or the budget is spent."""
        tokens, worst = self.worst_case(row)
        while not self.budget.reserve(worst):
            if self.budget.reserved <= 0:  # nothing in flight will free any room: the cap is reached
                self.outcome.stopped = self.outcome.stopped or "budget"
                return None
            async with self.settled:
                await self.settled.wait()
        entry = None
        try:
            await self.pacer.acquire(tokens)
            response = await self.respond(row, sample)
            entry = self.record(self.key(row, sample), response, "online") if response else None
        finally:  # the reservation is released only after the real cost is booked
            self.budget.reserved -= worst
            async with self.settled:
                self.settled.notify_all()
        return entry

    async def respond(self, row: dict, sample: int) -> dict | None:
        """The API's chat.completion as a dict; a refusal stand-in for a refused question; None when it failed."""
        try:
            response = await self.client.chat.completions.create(**self.request_args(row, sample))
        except FATAL as error:
            raise ClaireError(f"the API refused the request ({describe(error)}); check api.* in the config") from None
        except REFUSED as error:
            if not (self.outcome.answered or self.answered_before):  # nothing ever answered: a setting is wrong
                raise ClaireError(f"the API rejected the request ({describe(error)}); check api.*") from None
            return self.refusal(error)
        except openai.APIError as error:  # the client's own retries (429, 5xx, timeouts) are spent
            self.fail(error)
            return None
        self.consecutive_failures = 0
        return response.model_dump()

    def request_args(self, row: dict, sample: int) -> dict:
        """The body as openai client arguments: parameters it does not know travel in extra_body."""
        body = self.body(row, sample)
        known = {k: body.pop(k) for k in ("model", "messages", "temperature", "max_tokens", "seed")}
        return known | ({"extra_body": body} if body else {})

    def fail(self, error: Exception) -> None:
        """Count a request that failed after the client's retries; stop after too many in a row."""
        self.outcome.failures[describe(error)] += 1
        self.consecutive_failures += 1
        if self.consecutive_failures >= self.job.api.max_consecutive_failures:
            self.outcome.stopped = f"{self.consecutive_failures} requests in a row failed (last: {describe(error)})"

    async def question(self, row: dict) -> str:
        """Sample a question until a trace passes: 'accepted', 'rejected' (all tries spent) or 'unfinished'."""
        while True:
            state, sample, _, _ = self.status(row)
            if state != "open":
                return state
            if self.outcome.stopped:
                return "unfinished"
            entry = await self.ask(row, sample)
            if entry is None:
                return "unfinished"
            verdict = self.job.verify(row, entry)
            if verdict != "ok":
                self.outcome.rejections[verdict] += 1

    async def run_online(self) -> Outcome:
        """Ask concurrently, pacing requests, until every source has its quota or runs out of questions."""
        cursor, accepted, unfinished = Counter(), Counter(), Counter()
        active: dict[asyncio.Task, str] = {}
        try:
            while True:
                while len(active) < self.job.api.max_concurrency and not self.outcome.stopped:
                    source = self.next_source(cursor, accepted + Counter(active.values()) + unfinished)
                    if source is None:
                        break
                    active[asyncio.create_task(self.question(self.job.candidates[source][cursor[source]]))] = source
                    cursor[source] += 1
                if not active:
                    break
                done, _ = await asyncio.wait(active, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    source, result = active.pop(task), task.result()
                    if result == "accepted":
                        accepted[source] += 1
                        self.progress.update()
                    elif result == "unfinished":
                        unfinished[source] += 1
        finally:
            for task in active:
                task.cancel()
            await asyncio.gather(*active, return_exceptions=True)
            self.progress.close()
        return self.outcome

    def next_source(self, cursor: Counter, claimed: Counter) -> str | None:
        """The source furthest behind its quota (counting questions accepted, running or unfinished) that still
        has questions to ask, or None."""
        open_sources = [
            s for s, quota in self.job.quotas.items() if claimed[s] < quota and cursor[s] < len(self.job.candidates[s])
        ]
        return min(open_sources, key=lambda s: claimed[s] / self.job.quotas[s], default=None)

    # -- Batch API --------------------------------------------------------------------------------------------
    async def run_batch(self, state_path: Path, tag: str) -> Outcome:
        """Rounds of build / submit / poll / collect until every quota is met; resumable from the state file."""
        state = BatchState(state_path)
        try:
            await self.adopt_unrecorded(state, tag)
            for round_index in range(self.job.api.max_batch_rounds + 1):
                for batch_id in state.open_batches():
                    await self.collect(state, batch_id)
                if self.outcome.stopped:
                    break
                lines = self.plan_batch()
                if not lines:
                    break
                if round_index == self.job.api.max_batch_rounds:
                    self.outcome.stopped = f"api.max_batch_rounds={round_index} rounds did not finish it"
                    break
                for start in range(0, len(lines), BATCH_LIMIT):  # the Batch API takes 50,000 requests a file
                    await self.submit(state, lines[start : start + BATCH_LIMIT], tag)
        except openai.NotFoundError as error:
            raise ClaireError(
                f"api.base_url={self.job.api.base_url} has no Batch API ({describe(error)}); use api.mode=online"
            ) from None
        finally:
            self.progress.close()
        return self.outcome

    def plan_batch(self) -> list[dict]:
        """The next sample of enough open questions to fill each quota, expecting the pass rate seen so far; in
        draw order, within the budget (what fits is submitted, then the run stops)."""
        pairs, rejections = self.accepted()
        self.progress.n = len(pairs)
        self.progress.refresh()
        checked = len(pairs) + sum(rejections.values())
        pass_rate = max(0.2, len(pairs) / checked) if checked else 1.0
        done = Counter(row["source"] for row, _ in pairs)
        self.budget.reserved = 0.0  # every earlier batch is collected: nothing is in flight
        lines = []
        for source, quota in self.job.quotas.items():
            wanted = math.ceil((quota - done[source]) / pass_rate)
            for row in self.job.candidates[source]:
                if wanted <= 0:
                    break
                state, sample, _, _ = self.status(row)
                if state == "accepted":
                    continue
                if state == "open":
                    if not self.budget.reserve(self.worst_case(row, self.job.api.batch_discount)[1]):
                        self.outcome.stopped = "budget"
                        return lines
                    lines.append({"custom_id": self.key(row, sample), "row": row, "sample": sample})
                    wanted -= 1
        return lines

    async def submit(self, state: "BatchState", lines: list[dict], tag: str) -> None:
        """Upload a batch file, create the batch, and record it before anything else can go wrong."""
        requests = [
            {"custom_id": line["custom_id"], "method": "POST", "url": "/v1/chat/completions"}
            | {"body": self.body(line["row"], line["sample"])}
            for line in lines
        ]
        content = "".join(json.dumps(request) + "\n" for request in requests).encode()
        name = f"claire-{tag}-{hashlib.sha256(content).hexdigest()[:12]}.jsonl"
        try:
            upload = await self.client.files.create(file=(name, content), purpose="batch")
            batch = await self.client.batches.create(
                input_file_id=upload.id,
                endpoint="/v1/chat/completions",
                completion_window="24h",
                metadata={"claire_run": tag},
            )
        except (*FATAL, *REFUSED) as error:
            raise ClaireError(f"the Batch API refused the batch ({describe(error)}); check api.* settings") from None
        state.add(batch.id, len(lines))
        self.progress.write(f"claire.generate: submitted batch {batch.id} with {len(lines)} requests")

    async def adopt_unrecorded(self, state: "BatchState", tag: str) -> None:
        """Find batches of this run created just before a kill, before the state file could record them."""
        async for batch in self.client.batches.list(limit=100):
            if (batch.metadata or {}).get("claire_run") == tag and batch.id not in state.batches:
                state.add(batch.id, None)

    async def collect(self, state: "BatchState", batch_id: str) -> None:
        """Poll a batch until it ends, then move its results into the ledger."""
        while True:
            batch = await self.client.batches.retrieve(batch_id)
            if batch.status in TERMINAL_BATCH:
                break
            done = batch.request_counts.completed if batch.request_counts else 0
            self.progress.set_postfix(batch=batch.id, status=batch.status, done=done)
            await asyncio.sleep(self.job.api.poll_seconds)
        for file_id in (batch.output_file_id, batch.error_file_id):
            if file_id:
                content = await self.client.files.content(file_id)
                for line in content.text.splitlines():
                    self.collect_line(json.loads(line))
        state.close_batch(batch_id)
        if batch.status == "failed":
            errors = batch.errors.data if batch.errors and batch.errors.data else []
            reason = errors[0].message if errors else "no reason given"
            raise ClaireError(f"batch {batch_id} failed ({reason}); check api.* settings and rerun")
        if batch.status != "completed":
            self.outcome.failures[f"batch {batch.status}"] += 1

    def collect_line(self, line: dict) -> None:
        """One Batch API result into the ledger under its own key; failed lines stay unrecorded and are asked again
        (refused ones, 400/422, are recorded as refused)."""
        response = line.get("response") or {}
        status = response.get("status_code")
        if status == 200:
            self.record(line["custom_id"], response["body"], "batch")
        elif status in (400, 422):
            error = (response.get("body") or {}).get("error", {}).get("message", "")
            self.record(line["custom_id"], self.refusal(ClaireError(f"{status}: {error}")), "batch")
        else:
            self.outcome.failures[f"batch line {status or (line.get('error') or {}).get('code', 'error')}"] += 1
