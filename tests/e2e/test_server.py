"""`sopagent serve` as a deployment runs it: a real process on 127.0.0.1, spoken to over HTTP."""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest

from sopagent.server import hash_key
from tests.conftest import REFUND_POLICY, free_port

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = {
    "I'd like a refund": "request_refund",
    "let me talk to a human": "talk_to_human",
    "yes please": "affirm",
}


@dataclass
class Running:
    """A `sopagent serve` process and a client for it."""

    process: subprocess.Popen[bytes]
    url: str
    log: Path
    keys: dict[str, str]
    clients: list[httpx.Client] = field(default_factory=list)

    def client(self, key: str = "acme") -> httpx.Client:
        """An HTTP client authenticated with one of the keys (acme, beta)."""
        made = httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {self.keys[key]}"}, timeout=30
        )
        self.clients.append(made)
        return made

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Stop the process and return its exit code."""
        for made in self.clients:
            made.close()
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout=30)


Start = Callable[..., Running]


def _keys_file(directory: Path) -> tuple[Path, dict[str, str]]:
    keys = {"acme": "sk_test_acme", "beta": "sk_test_beta"}
    path = directory / "keys.yaml"
    acme, beta = hash_key(keys["acme"]), hash_key(keys["beta"])
    path.write_text(
        "keys:\n"
        f"  - {{id: acme-web, tenant: acme, policies: [refund], hash: '{acme}'}}\n"
        f"  - {{id: beta-web, tenant: beta, policies: ['*'], hash: '{beta}'}}\n",
        encoding="utf-8",
    )
    return path, keys


def launch(directory: Path, *args: str, policy: Path = REFUND_POLICY, wait: bool = True) -> Running:
    """Start ``sopagent serve`` with a scripted backend (unless args choose one)."""
    directory.mkdir(parents=True, exist_ok=True)
    keys_path, keys = _keys_file(directory)
    script = directory / "script.json"
    script.write_text(json.dumps(SCRIPT), encoding="utf-8")
    port = free_port()
    backend = [] if "--backend" in args else ["--script", str(script)]
    command = [
        sys.executable, "-m", "sopagent", "serve", str(policy), "--port", str(port),
        "--keys", str(keys_path), "--audit", str(directory / "audit.jsonl"),
        "--store", str(directory / "sessions.db"), *backend, *args,
    ]  # fmt: skip
    log = directory / "server.log"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    with log.open("ab") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    running = Running(process, f"http://127.0.0.1:{port}", log, keys)
    if wait:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                pytest.fail(f"sopagent serve exited {process.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(running.url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                running.stop(signal.SIGKILL)
                pytest.fail(f"sopagent serve did not answer:\n{log.read_text()}")
            time.sleep(0.1)
    return running


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Start]:
    """Return ``start(*args, directory=..., policy=...)``; every server is stopped afterwards."""
    started: list[Running] = []

    def run(*args: str, directory: Path | None = None, **options: Any) -> Running:
        running = launch(directory or tmp_path / f"run{len(started)}", *args, **options)
        started.append(running)
        return running

    yield run
    for running in started:
        running.stop(signal.SIGKILL)


@pytest.fixture(params=["sqlite", "redis"])
def store_args(request: pytest.FixtureRequest) -> list[str]:
    """Arguments choosing each store kind."""
    if request.param == "sqlite":
        return []
    url = request.getfixturevalue("redis_url")
    return ["--store", url]


def _create(client: httpx.Client) -> str:
    answer = client.post("/v1/sessions", json={"policy": "refund"})
    assert answer.status_code == 201, answer.text
    session_id: str = answer.json()["session"]["id"]
    assert answer.headers["location"] == f"/v1/sessions/{session_id}"
    return session_id


def test_conversation_over_http_on_each_store(start: Start, store_args: list[str]) -> None:
    """Create, talk, read, list, end: the whole API against a real process and store."""
    server = start(*store_args)
    client = server.client()
    policies = client.get("/v1/policies").json()["policies"]
    assert [p["name"] for p in policies] == ["refund"]
    session_id = _create(client)
    answer = client.post(f"/v1/sessions/{session_id}/messages", json={"text": "I'd like a refund"})
    assert answer.status_code == 200
    body = answer.json()
    assert body["session"]["state"] == "ask_order"
    assert body["turn"]["intent"] == "request_refund"
    assert answer.headers["x-request-id"] == body["request_id"]
    view = client.get(f"/v1/sessions/{session_id}").json()
    assert (view["state"], view["turns"], view["status"]) == ("ask_order", 2, "active")
    records = client.get(f"/v1/sessions/{session_id}/transcript").json()["records"]
    assert [r["turn"]["index"] for r in records] == [0, 1]
    assert client.post(f"/v1/sessions/{session_id}/end").json()["status"] == "ended"
    late = client.post(f"/v1/sessions/{session_id}/messages", json={"text": "hello"})
    assert (late.status_code, late.json()["error"]["code"]) == (409, "session_ended")
    assert server.stop() == 0


def test_several_policies_side_by_side(start: Start) -> None:
    """Two policies in one service: each key lists the ones in its scope, with their hashes."""
    retail = ROOT / "policies" / "retail.yaml"
    server = start(str(retail))
    everything = server.client("beta").get("/v1/policies").json()["policies"]
    assert sorted(p["name"] for p in everything) == ["refund", "retail"]
    assert all(p["hash"].startswith("sha256:") and p["default"] for p in everything)
    assert [p["name"] for p in server.client("acme").get("/v1/policies").json()["policies"]] == [
        "refund"
    ]
    answer = server.client("beta").post("/v1/sessions", json={"policy": "retail"})
    assert answer.status_code == 201
    assert answer.json()["session"]["state"] == "identify"
    refused = server.client("acme").post("/v1/sessions", json={"policy": "retail"})
    assert (refused.status_code, refused.json()["error"]["code"]) == (403, "policy_forbidden")


def test_openapi_document_describes_the_api(start: Start) -> None:
    """/openapi.json lists every endpoint, the bearer scheme and the error body."""
    server = start()
    document = httpx.get(server.url + "/openapi.json").json()
    assert set(document["paths"]) >= {
        "/healthz", "/readyz", "/v1/policies", "/v1/sessions",
        "/v1/sessions/{session_id}", "/v1/sessions/{session_id}/messages",
        "/v1/sessions/{session_id}/transcript", "/v1/sessions/{session_id}/end", "/v1/handoffs",
    }  # fmt: skip
    assert "HTTPBearer" in document["components"]["securitySchemes"]
    assert "ErrorBody" in document["components"]["schemas"]
    assert httpx.get(server.url + "/healthz").headers["x-request-id"]


def test_bad_requests_get_clear_4xx_errors(start: Start) -> None:
    """No key, a wrong key, bad JSON, a missing field, a huge body, an unknown route: 4xx JSON."""
    server = start()
    client = server.client()
    session_id = _create(client)
    path = f"/v1/sessions/{session_id}/messages"
    cases = [
        (httpx.post(server.url + path, json={"text": "hi"}), 401, "unauthorized"),
        (
            httpx.post(server.url + path, json={"text": "hi"},
                       headers={"Authorization": "Bearer sk_wrong"}),
            401, "unauthorized",
        ),
        (client.post(path, content=b"{not json", headers={"content-type": "application/json"}),
         400, "invalid_json"),
        (client.post(path, json={"txt": "hi"}), 422, "invalid_request"),
        (client.post(path, json={"text": "x" * 20_000}), 422, "invalid_request"),
        (client.post(path, content=b"x" * 100_000), 413, "body_too_large"),
        (client.get("/v1/nowhere"), 404, "not_found"),
        (client.get("/v1/sessions/" + "0" * 32), 404, "session_not_found"),
        (server.client("beta").get(f"/v1/sessions/{session_id}"), 404, "session_not_found"),
    ]  # fmt: skip
    for answer, status, code in cases:
        assert answer.status_code == status, answer.text
        error = answer.json()["error"]
        assert error["code"] == code
        assert error["message"]
        assert error["request_id"] == answer.headers["x-request-id"]
    assert client.get(f"/v1/sessions/{session_id}").json()["turns"] == 1
    # Longer than the policy's limit but within the API's: the policy's answer, state kept.
    before = client.get(f"/v1/sessions/{session_id}").json()["state"]
    answer = client.post(path, json={"text": "refund " * 1000})
    assert answer.status_code == 200, answer.text
    assert answer.json()["turn"]["error"].startswith("InputTooLong")
    assert client.get(f"/v1/sessions/{session_id}").json()["state"] == before


def test_concurrent_messages_to_one_session_never_interleave(
    start: Start, store_args: list[str]
) -> None:
    """Twenty messages at once: each is answered or refused with 409; the transcript is whole."""
    server = start(*store_args)
    client = server.client()
    session_id = _create(client)

    def send(index: int) -> httpx.Response:
        return client.post(
            f"/v1/sessions/{session_id}/messages",
            json={"text": f"message {index}"},
            headers={"Idempotency-Key": f"k{index}"},
        )

    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(pool.map(send, range(20)))
    assert {a.status_code for a in answers} <= {200, 409}
    accepted = [a.json() for a in answers if a.status_code == 200]
    refused = [a for a in answers if a.status_code == 409]
    assert all(a.json()["error"]["code"] == "session_busy" for a in refused)
    records = client.get(f"/v1/sessions/{session_id}/transcript").json()["records"]
    assert [r["turn"]["index"] for r in records] == list(range(1 + len(accepted)))
    assert sorted(r["turn"]["user_text"] for r in records[1:]) == sorted(
        a["turn"]["user_text"] for a in accepted
    )
    # A refused message retried with its key is answered now, once.
    for answer in refused:
        index = int(json.loads(answer.request.content)["text"].split()[1])
        assert send(index).status_code == 200
    final = client.get(f"/v1/sessions/{session_id}").json()
    assert final["turns"] == 21


def test_retry_with_idempotency_key_returns_first_answer(start: Start) -> None:
    """A retried POST with the same key returns the same body and does not advance the session."""
    server = start()
    client = server.client()
    session_id = _create(client)
    path = f"/v1/sessions/{session_id}/messages"
    headers = {"Idempotency-Key": "retry-1"}
    first = client.post(path, json={"text": "I'd like a refund"}, headers=headers)
    second = client.post(path, json={"text": "I'd like a refund"}, headers=headers)
    assert second.headers["idempotent-replayed"] == "true"
    assert second.json() == first.json()
    assert client.get(f"/v1/sessions/{session_id}").json()["turns"] == 2


class _Receiver(http.server.BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        self.received.append(json.loads(self.rfile.read(length)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_handoff_posts_the_transcript_to_a_webhook(start: Start) -> None:
    """Entering the handoff state POSTs an event with the transcript; the bot then stays quiet."""
    receiver = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    _Receiver.received = []
    thread = threading.Thread(target=receiver.serve_forever, daemon=True)
    thread.start()
    try:
        hook = f"http://127.0.0.1:{receiver.server_address[1]}/handoff"
        server = start("--handoff-webhook", hook)
        client = server.client()
        session_id = _create(client)
        path = f"/v1/sessions/{session_id}/messages"
        client.post(path, json={"text": "let me talk to a human"})
        last = client.post(path, json={"text": "yes please"}).json()
        assert (last["handoff"], last["session"]["status"]) == (True, "handoff")
        deadline = time.monotonic() + 10
        while not _Receiver.received and time.monotonic() < deadline:
            time.sleep(0.05)
        (event,) = _Receiver.received
        assert event["session_id"] == session_id
        assert [r["turn"]["index"] for r in event["transcript"]] == [0, 1, 2]
        quiet = client.post(path, json={"text": "hello?"})
        assert quiet.json()["error"]["code"] == "session_handed_off"
        listed = client.get("/v1/handoffs").json()["sessions"]
        assert [s["id"] for s in listed] == [session_id]
    finally:
        receiver.shutdown()
        receiver.server_close()


def test_handoff_goes_to_a_redis_stream(start: Start, redis_url: str) -> None:
    """With --handoff-stream, the event is one entry of the Redis stream."""
    import redis  # noqa: PLC0415

    stream = f"handoffs-{time.monotonic_ns()}"
    server = start("--store", redis_url, "--handoff-stream", f"{redis_url}#{stream}")
    client = server.client()
    session_id = _create(client)
    path = f"/v1/sessions/{session_id}/messages"
    client.post(path, json={"text": "let me talk to a human"})
    client.post(path, json={"text": "yes please"})
    reader = redis.Redis.from_url(redis_url, decode_responses=True)
    entries = reader.xrange(stream)
    reader.close()
    assert len(entries) == 1
    event = json.loads(entries[0][1]["event"])
    assert (event["session_id"], event["state"]) == (session_id, "handoff")


def test_audit_log_has_request_ids(start: Start, tmp_path: Path) -> None:
    """Every turn event in the audit file names the request that caused it."""
    server = start(directory=tmp_path / "audited")
    client = server.client()
    session_id = _create(client)
    answer = client.post(
        f"/v1/sessions/{session_id}/messages",
        json={"text": "I'd like a refund"},
        headers={"X-Request-ID": "trace-123"},
    )
    assert answer.headers["x-request-id"] == "trace-123"
    assert server.stop() == 0
    lines = (tmp_path / "audited" / "audit.jsonl").read_text().splitlines()
    events = [json.loads(line) for line in lines]
    turns = [e for e in events if e["event"] == "turn" and e.get("turn") == 1]
    assert turns[0]["request_id"] == "trace-123"
    assert turns[0]["tenant"] == "acme"
    assert "session_created" in [e["event"] for e in events]


def test_kill_9_loses_no_acknowledged_turn(start: Start, tmp_path: Path) -> None:
    """kill -9 mid-conversation, restart on the same file: every answered turn is there."""
    directory = tmp_path / "crash"
    server = start("--lock-ttl", "1", directory=directory)
    client = server.client()
    sessions = [_create(client) for _ in range(5)]
    acknowledged: dict[str, list[str]] = {s: [] for s in sessions}
    for round_ in range(6):
        for session_id in sessions:
            text = f"round {round_}"
            answer = client.post(f"/v1/sessions/{session_id}/messages", json={"text": text})
            assert answer.status_code == 200
            acknowledged[session_id].append(text)
    assert server.stop(signal.SIGKILL) == -signal.SIGKILL
    again = start("--lock-ttl", "1", directory=directory)
    client = again.client()
    for session_id, texts in acknowledged.items():
        records = client.get(f"/v1/sessions/{session_id}/transcript").json()["records"]
        assert [r["turn"]["user_text"] for r in records[1:]] == texts
        answer = client.post(f"/v1/sessions/{session_id}/messages", json={"text": "after"})
        assert answer.status_code == 200


def test_exit_codes(start: Start, tmp_path: Path, write_policy: Callable[..., Path]) -> None:
    """2 for a broken policy, a missing keys file or option; 3 for an unusable store or port."""
    broken = write_policy(policy=lambda t: t.replace("initial: start", "initial: nowhere"))
    running = start(policy=broken, wait=False)
    assert running.process.wait(timeout=60) == 2
    assert "SOP020" in running.log.read_text()

    no_keys = subprocess.run(
        [sys.executable, "-m", "sopagent", "serve", str(REFUND_POLICY), "--backend", "scripted",
         "--script", str(tmp_path / "none.yaml")],
        capture_output=True, text=True, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert no_keys.returncode == 2
    assert "--keys" in no_keys.stderr

    dead_redis = start("--store", f"redis://127.0.0.1:{free_port()}/0", wait=False)
    assert dead_redis.process.wait(timeout=60) == 3
    assert "Redis store" in dead_redis.log.read_text()

    first = start()
    port = first.url.rsplit(":", 1)[1]
    taken = start("--port", port, wait=False, directory=tmp_path / "taken")
    assert taken.process.wait(timeout=60) == 3
    assert "cannot listen" in taken.log.read_text()


def test_two_workers_share_one_store(start: Start, redis_url: str) -> None:
    """--workers 2 on Redis: sessions created through one worker continue through any."""
    server = start("--store", redis_url, "--workers", "2")
    client = server.client()
    session_id = _create(client)
    for index in range(10):
        fresh = httpx.Client(base_url=server.url, headers=client.headers)  # a new connection
        answer = fresh.post(f"/v1/sessions/{session_id}/messages", json={"text": f"m{index}"})
        fresh.close()
        assert answer.status_code == 200
    assert client.get(f"/v1/sessions/{session_id}").json()["turns"] == 11
    assert server.stop() == 0


@pytest.mark.model
def test_embedded_model_behind_the_service(start: Start) -> None:
    """The offline model classifies over HTTP: a refund request moves to asking the order."""
    server = start("--backend", "embedded")
    client = server.client()
    session_id = _create(client)
    answer = client.post(
        f"/v1/sessions/{session_id}/messages",
        json={"text": "hi, I would like to get my money back for an order please"},
    )
    assert answer.status_code == 200
    body = answer.json()
    assert body["turn"]["intent"] == "request_refund"
    assert body["turn"]["intent_source"] == "model"
    assert body["session"]["state"] == "ask_order"
