"""An OpenAI-compatible chat completion server on 127.0.0.1 that fails on purpose.

It speaks enough of ``POST /v1/chat/completions`` for `sopagent.backends.openai` and answers
each request by the next step of its script; once the script is used up every request gets
``then`` (a healthy answer by default). The steps are the faults a remote model shows:

==============  =================================================================================
``ok``          a healthy answer: the label given with the step (``ok:affirm``), else ``label``,
                else the first value the request's schema allows
``timeout``     reads the request and never answers (until the server stops)
``reset``       closes the connection with a TCP reset instead of answering
``429``         ``429 Too Many Requests`` with ``Retry-After``
``500``         ``500 Internal Server Error`` with an error body
``invalid``     ``200`` whose body is not JSON
``off_enum``    a completion whose intent is not one the schema allows
``missing``     a completion whose JSON lacks the intent
``refusal``     a completion refusing to answer
``length``      a completion cut off (``finish_reason: length``) in the middle of its JSON
``drip``        a healthy answer trickled a few bytes at a time, slower than any timeout
==============  =================================================================================

``server.seen`` lists the step each request got, in order, so a test counts what reached it.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

KINDS = (
    "ok", "timeout", "reset", "429", "500", "invalid", "off_enum", "missing", "refusal",
    "length", "drip",
)  # fmt: skip
RETRYABLE = frozenset({"timeout", "reset", "429", "500", "invalid", "drip"})
"""The faults a client may fix by trying again; the others are answers, wrong ones."""


def completion(
    content: str | None, *, finish_reason: str = "stop", refusal: str | None = None
) -> dict[str, Any]:
    """The body of a chat completion whose only choice says ``content``."""
    return {
        "id": "chatcmpl-fault",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": "fault-model",
        "choices": [
            {
                "index": 0,
                "finish_reason": finish_reason,
                "logprobs": None,
                "message": {"role": "assistant", "content": content, "refusal": refusal},
            }
        ],
        "usage": {"prompt_tokens": 50, "completion_tokens": 8, "total_tokens": 58},
    }


class FaultServer(ThreadingHTTPServer):
    """The server: its script, what it served, and the switch that stops hung answers.

    Args:
        drip_pause: seconds between two trickled chunks of a ``drip`` answer.
        retry_after: the ``Retry-After`` of a ``429``, in seconds.
    """

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, *, drip_pause: float = 0.25, retry_after: int = 1) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.drip_pause = drip_pause
        self.retry_after = retry_after
        self.script: deque[str] = deque()
        self.then = "ok"
        self.label: str | None = None
        self.seen: list[str] = []
        self.bodies: list[dict[str, Any]] = []
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        """The ``base_url`` an OpenAI client needs."""
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def start(self) -> FaultServer:
        """Serve in a background thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Release hung and dripping answers, stop serving, close the socket."""
        self.stopping.set()
        self.shutdown()
        self.server_close()
        self._thread.join(timeout=10)

    def play(self, steps: Iterable[str], *, then: str = "ok") -> None:
        """Answer the next requests by ``steps``, and every later one by ``then``."""
        steps = list(steps)
        for step in [*steps, then]:
            if step.partition(":")[0] not in KINDS:
                raise ValueError(f"unknown step {step!r}: use one of {', '.join(KINDS)}")
        with self._lock:
            self.script = deque(steps)
            self.then = then

    def count(self) -> int:
        """How many chat completion requests arrived so far."""
        with self._lock:
            return len(self.seen)

    def next_step(self, body: dict[str, Any]) -> str:
        with self._lock:
            step = self.script.popleft() if self.script else self.then
            self.seen.append(step)
            self.bodies.append(body)
            return step

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients that give up mid-answer are expected here: say nothing."""


class _Handler(BaseHTTPRequestHandler):
    server: FaultServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        if self.path.rstrip("/").endswith("/models"):
            self._json(200, {"object": "list", "data": [{"id": "fault-model", "object": "model"}]})
        else:
            self._json(404, {"error": {"message": "not found", "type": "not_found"}})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        if not self.path.rstrip("/").endswith("/chat/completions"):
            self._json(404, {"error": {"message": "not found", "type": "not_found"}})
            return
        body = json.loads(raw or b"{}")
        step = self.server.next_step(body)
        kind, _, label = step.partition(":")
        server = self.server
        if kind == "timeout":
            server.stopping.wait()
            self.close_connection = True
        elif kind == "reset":
            # SO_LINGER with a zero timeout: close() sends RST, not FIN.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
        elif kind == "429":
            self._json(
                429,
                {"error": {"message": "rate limited", "type": "rate_limit_exceeded"}},
                {"Retry-After": str(server.retry_after)},
            )
        elif kind == "500":
            self._json(500, {"error": {"message": "the model crashed", "type": "server_error"}})
        elif kind == "invalid":
            self._send(200, b'{"id": "chatcmpl-fault", "choices": [{"message": ', {})
        elif kind == "off_enum":
            self._json(200, completion(json.dumps({"intent": "launch_the_rockets"})))
        elif kind == "missing":
            self._json(200, completion("{}"))
        elif kind == "refusal":
            self._json(200, completion(None, refusal="I cannot help with that."))
        elif kind == "length":
            self._json(200, completion('{"intent": "req', finish_reason="length"))
        elif kind == "drip":
            self._drip(json.dumps(completion(self._healthy(body, label))).encode())
        else:
            self._json(200, completion(self._healthy(body, label)))

    def _healthy(self, body: dict[str, Any], label: str) -> str:
        """A valid answer to the request's schema: ``label`` if the schema allows it."""
        schema = _schema(body)
        properties: dict[str, Any] = schema.get("properties", {})
        answer: dict[str, str] = {}
        wanted = label or self.server.label
        for name, field in properties.items():
            allowed = list(field.get("enum") or ["?"])
            answer[name] = (
                wanted if wanted in allowed and name in ("intent", "response") else allowed[0]
            )
        return json.dumps(answer)

    def _drip(self, data: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.flush()
        for start in range(0, len(data), 4):
            if self.server.stopping.wait(self.server.drip_pause):
                self.close_connection = True
                return
            self.wfile.write(data[start : start + 4])
            self.wfile.flush()

    def _json(
        self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        self._send(status, json.dumps(body).encode(), headers or {})

    def _send(self, status: int, data: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


def _schema(body: dict[str, Any]) -> dict[str, Any]:
    """The JSON Schema of either dialect's ``response_format``."""
    form = body.get("response_format") or {}
    if "json_schema" in form:
        return dict(form["json_schema"].get("schema") or {})
    return dict(form.get("schema") or {})
