"""A scripted OpenAI-compatible HTTP server on 127.0.0.1 for tests: chat completions, files and batches."""

from __future__ import annotations

import collections
import email.parser
import email.policy
import json
import re
import threading
import time
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

BEHAVIOURS = ("good", "wrong", "malformed", "truncated", "429", "500", "stall", "400", "401")
ERRORS = {
    "429": {"message": "Rate limit reached", "type": "rate_limit_error", "code": "rate_limit_exceeded"},
    "500": {"message": "Scripted server error", "type": "server_error", "code": None},
    "400": {"message": "Scripted invalid request", "type": "invalid_request_error", "code": None},
    "401": {"message": "Incorrect API key provided", "type": "invalid_request_error", "code": "invalid_api_key"},
    "503": {"message": "Scripted stall released", "type": "server_error", "code": None},
}
TRACE = (
    "<think>\nI read the question.\n<causality>\nThe question causes the answer.\n{close}"
    "So the result follows.\n</think>\n"
)


def _text(content: Any) -> str:
    """The text of a message content, either a string or a list of content parts."""
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return content if isinstance(content, str) else ""


def wrong_answer(right: str) -> str:
    """A wrong answer for a right one: the next option letter, the other of yes/no, else "0" (or "1")."""
    if right in ("A", "B", "C", "D"):
        return "ABCD"[("ABCD".index(right) + 1) % 4]
    if right.lower() in ("yes", "no"):
        return "no" if right.lower() == "yes" else "yes"
    return "1" if right == "0" else "0"


class ScriptedServer:
    """An OpenAI-compatible server whose chat completions follow a plan of behaviours, then a default one; `reply`,
    when given, writes the text of every successful completion from the request's messages and model name."""

    def __init__(
        self,
        answer_for: Callable[[str], str] | None = None,
        plan: Sequence[str] = (),
        default: str = "good",
        latency: float = 0.0,
        rpm: int | None = None,
        stall_seconds: float = 30.0,
        batch_polls: int = 1,
        reply: Callable[[list[dict], str], str] | None = None,
    ) -> None:
        for behaviour in [*plan, default]:
            self._check(behaviour)
        self.answer_for = answer_for or (lambda _question: "42")
        self.reply = reply  # when given: the content of every 200 reply, from the request's messages and model
        self.plan = collections.deque(plan)
        self.default = default
        self.latency, self.rpm, self.stall_seconds, self.batch_polls = latency, rpm, stall_seconds, batch_polls
        self.counts: collections.Counter[str] = collections.Counter()
        self.requests: list[dict] = []
        self.url = ""
        self._lock = threading.Lock()
        self._window: collections.deque[float] = collections.deque()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._ids: collections.Counter[str] = collections.Counter()
        self._files: dict[str, tuple[dict, bytes]] = {}
        self._batches: dict[str, dict] = {}
        self._polls: collections.Counter[str] = collections.Counter()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    @staticmethod
    def _check(behaviour: str) -> None:
        """Reject unknown behaviour names early."""
        if behaviour not in BEHAVIOURS:
            raise ValueError(f"unknown behaviour {behaviour!r}; expected one of {BEHAVIOURS}")

    def start(self) -> ScriptedServer:
        """Bind a free port and serve in a daemon thread."""
        handler = type("Handler", (_Handler,), {"scripted": self})
        self._httpd = _Server(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"
        serve = lambda: self._httpd.serve_forever(poll_interval=0.05)  # noqa: E731  (quick shutdown)
        self._thread = threading.Thread(target=serve, name="scripted-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Release stalled handlers, stop serving and close the socket."""
        self._stopping.set()
        self.release()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> ScriptedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def set_default(self, behaviour: str) -> None:
        """Change the behaviour of requests once the plan is exhausted."""
        self._check(behaviour)
        with self._lock:
            self.default = behaviour

    def release(self) -> None:
        """Wake up every handler stalled now (later stalls stall again)."""
        with self._lock:
            wake, self._wake = self._wake, threading.Event()
        wake.set()

    def _next_id(self, kind: str) -> str:
        """A fresh id such as file-1, batch_1 or chatcmpl-1."""
        with self._lock:
            self._ids[kind] += 1
            return f"{kind}{self._ids[kind]}"

    def _receive(self, body: dict, authorization: str | None, live: bool) -> str:
        """Record one chat completion request and pick its behaviour (rate limit first, then plan, then default)."""
        now = time.monotonic()
        with self._lock:
            self.requests.append({**body, "authorization": authorization})
            self.counts["received"] += 1
            if live and self.rpm is not None:
                while self._window and now - self._window[0] >= 60.0:
                    self._window.popleft()
                if len(self._window) >= self.rpm:
                    self.counts["429"] += 1
                    return "429"
                self._window.append(now)
            behaviour = self.plan.popleft() if self.plan else self.default
            self.counts[behaviour] += 1
            return behaviour

    def _completion(self, body: dict, behaviour: str) -> dict:
        """The chat.completion object for a 200 behaviour."""
        messages = body.get("messages") or []
        if self.reply is not None:
            content = self.reply(messages, body.get("model", ""))
        else:
            users = [_text(m.get("content")) for m in messages if m.get("role") == "user"]
            right = self.answer_for(users[-1] if users else "")
            answer = wrong_answer(right) if behaviour == "wrong" else right
            content = TRACE.format(close="" if behaviour == "malformed" else "</causality>\n") + answer
        prompt = max(1, len("".join(_text(m.get("content")) for m in messages)) // 4)
        completion = max(1, len(content) // 4)
        return {
            "id": self._next_id("chatcmpl-"),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "scripted"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "length" if behaviour == "truncated" else "stop",
                }
            ],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
        }

    def _respond(self, body: dict, behaviour: str) -> tuple[int, dict]:
        """Status and JSON body for a non-stall behaviour."""
        if behaviour in ERRORS:
            return int(behaviour), {"error": ERRORS[behaviour]}
        return 200, self._completion(body, behaviour)

    def _finish_batch(self, batch: dict) -> None:
        """Answer every line of a batch's input file and attach the output file."""
        _, data = self._files[batch["input_file_id"]]
        lines, failed = [], 0
        for raw in data.decode().splitlines():
            if not raw.strip():
                continue
            line = json.loads(raw)
            behaviour = self._receive(line.get("body") or {}, batch["_authorization"], live=False)
            status, out = self._respond(line.get("body") or {}, "500" if behaviour == "stall" else behaviour)
            with self._lock:
                self.counts["batch_lines"] += 1
                self.counts["answered"] += status == 200
            failed += status != 200
            response = {"status_code": status, "request_id": self._next_id("req_"), "body": out}
            lines.append({"id": self._next_id("batch_req_"), "custom_id": line.get("custom_id")})
            lines[-1] |= {"response": response, "error": None}
        output = "".join(json.dumps(line) + "\n" for line in lines).encode()
        batch["output_file_id"] = self._store_file("batch_output.jsonl", "batch_output", output)["id"]
        batch["request_counts"] = {"total": len(lines), "completed": len(lines) - failed, "failed": failed}
        batch["status"], batch["completed_at"] = "completed", int(time.time())

    def _store_file(self, filename: str, purpose: str, data: bytes) -> dict:
        """Keep uploaded (or generated) bytes and return their FileObject."""
        file = {"id": self._next_id("file-"), "object": "file", "bytes": len(data), "created_at": int(time.time())}
        file |= {"filename": filename, "purpose": purpose, "status": "processed"}
        with self._lock:
            self._files[file["id"]] = (file, data)
        return file


class _Server(ThreadingHTTPServer):
    """A threading server with a deep listen backlog (a full backlog of 5 costs clients a 1 s SYN retry)."""

    daemon_threads = True
    request_queue_size = 128


class _Handler(BaseHTTPRequestHandler):
    """Routes the few endpoints the openai client uses to the owning ScriptedServer."""

    scripted: ScriptedServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet."""

    def _body(self) -> bytes:
        """The request body (the openai client always sends Content-Length, never chunked)."""
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, status: int, payload: dict | bytes, headers: dict[str, str] | None = None) -> bool:
        """Write a complete response; False if the client has gone."""
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        kind = "application/octet-stream" if isinstance(payload, bytes) else "application/json"
        try:
            self.send_response(status)
            for key, value in {"Content-Type": kind, "Content-Length": str(len(data)), **(headers or {})}.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()
        except OSError:
            self.close_connection = True
            return False
        return True

    def _not_found(self) -> None:
        """404 with an OpenAI-style error body."""
        self._send(404, {"error": {"message": f"No route {self.command} {self.path}", "type": "invalid_request_error"}})

    def do_POST(self) -> None:
        """Chat completions, file uploads, batch creation and cancellation."""
        path, data, server = self.path.split("?")[0], self._body(), self.scripted
        if path == "/v1/chat/completions":
            self._chat(json.loads(data or b"{}"))
        elif path == "/v1/files":
            parsed = self._multipart(data)
            file = server._store_file(
                parsed["file"][0] or "upload.jsonl", parsed["purpose"][1].decode(), parsed["file"][1]
            )
            self._send(200, file)
        elif path == "/v1/batches":
            body = json.loads(data or b"{}")
            batch = {"id": server._next_id("batch_"), "object": "batch", "endpoint": body.get("endpoint")}
            batch |= {key: body.get(key) for key in ("input_file_id", "completion_window", "metadata")}
            batch |= {"status": "in_progress", "created_at": int(time.time()), "output_file_id": None}
            batch |= {"request_counts": {"total": 0, "completed": 0, "failed": 0}}
            batch["_authorization"] = self.headers.get("Authorization")
            with server._lock:
                server._batches[batch["id"]] = batch
            self._send(200, _public(batch))
        elif (match := re.fullmatch(r"/v1/batches/([^/]+)/cancel", path)) and match[1] in server._batches:
            batch = server._batches[match[1]]
            if batch["status"] == "in_progress":
                batch["status"], batch["cancelled_at"] = "cancelled", int(time.time())
            self._send(200, _public(batch))
        else:
            self._not_found()

    def do_GET(self) -> None:
        """Batch retrieval (which advances it), batch listing, file objects and file contents."""
        path, server = self.path.split("?")[0], self.scripted
        self._body()
        if path == "/v1/batches":
            self._send(
                200, {"object": "list", "data": [_public(b) for b in server._batches.values()], "has_more": False}
            )
        elif (match := re.fullmatch(r"/v1/batches/([^/]+)", path)) and match[1] in server._batches:
            batch = server._batches[match[1]]
            with server._lock:
                server._polls[batch["id"]] += 1
                due = batch["status"] == "in_progress" and server._polls[batch["id"]] > server.batch_polls
                if due:
                    batch["status"] = "finalizing"
            if due:
                server._finish_batch(batch)
            self._send(200, _public(batch))
        elif (match := re.fullmatch(r"/v1/files/([^/]+)(/content)?", path)) and match[1] in server._files:
            file, data = server._files[match[1]]
            self._send(200, data if match[2] else file)
        else:
            self._not_found()

    def _multipart(self, data: bytes) -> dict[str, tuple[str | None, bytes]]:
        """Form fields of a multipart/form-data body: name -> (filename, bytes)."""
        head = f"Content-Type: {self.headers['Content-Type']}\r\n\r\n".encode()
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + data)
        fields = {}
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            fields[str(name)] = (part.get_filename(), part.get_payload(decode=True) or b"")
        return fields

    def _chat(self, body: dict) -> None:
        """One live chat completion, following the server's script."""
        server = self.scripted
        behaviour = server._receive(body, self.headers.get("Authorization"), live=True)
        if behaviour == "stall":
            with server._lock:
                wake = server._wake
            if server._stopping.is_set() or wake.wait(server.stall_seconds) and server._stopping.is_set():
                self.close_connection = True
                return
            self._send(503, {"error": ERRORS["503"]})
            return
        server._stopping.wait(server.latency)
        status, payload = server._respond(body, behaviour)
        headers = {"retry-after-ms": "50"} if behaviour == "429" else {}
        if body.get("seed") is not None:
            headers["x-claire-seed"] = str(body["seed"])
        if self._send(status, payload, headers) and status == 200:
            with server._lock:
                server.counts["answered"] += 1


def _public(batch: dict) -> dict:
    """A batch object without the server's private keys."""
    return {key: value for key, value in batch.items() if not key.startswith("_")}
