"""A session store that fails under `sopagent serve`: SQLite locked or full, Redis killed.

Each fault must give a clear ``503 store_unavailable`` with ``Retry-After``, never a 500; every
turn a client got 200 for must be in the session once the store is back; a turn whose commit
failed must leave nothing behind, so the next turn continues from the last acknowledged state.
"""

from __future__ import annotations

import json
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tests.e2e.test_server import launch

PATTERN = ("I'd like a refund", "12345", "hello there")


def post(
    client: httpx.Client, session_id: str, text: str, key: str | None = None
) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key else {}
    return client.post(f"/v1/sessions/{session_id}/messages", json={"text": text}, headers=headers)


def create(client: httpx.Client) -> str:
    answer = client.post("/v1/sessions", json={"policy": "refund"})
    assert answer.status_code == 201, answer.text
    session_id: str = answer.json()["session"]["id"]
    return session_id


def assert_unavailable(answer: httpx.Response) -> None:
    """A clear 503: the stable code, a message, Retry-After."""
    assert answer.status_code == 503, answer.text
    error = answer.json()["error"]
    assert error["code"] == "store_unavailable"
    assert error["message"]
    assert int(answer.headers["retry-after"]) >= 1


def user_texts(client: httpx.Client, session_id: str) -> list[str]:
    answer = client.get(f"/v1/sessions/{session_id}/transcript")
    assert answer.status_code == 200, answer.text
    records = answer.json()["records"]
    indexes = [r["turn"]["index"] for r in records]
    assert indexes == list(range(len(records))), [
        (r["turn"]["index"], r["turn"]["user_text"], r["session"], r["request_id"], r["at"])
        for r in records
        if indexes.count(r["turn"]["index"]) > 1
    ]
    assert [r["session"]["turns"] for r in records] == list(range(1, len(records) + 1))
    return [r["turn"]["user_text"] for r in records[1:]]


def until_answered(client: httpx.Client, session_id: str, text: str, key: str) -> httpx.Response:
    """Retry one message with its key through 503s and 409s (a dead worker's lease) until 200."""
    deadline = time.monotonic() + 60
    while True:
        answer = post(client, session_id, text, key)
        if answer.status_code == 200:
            return answer
        assert answer.status_code in (409, 503), answer.text
        if answer.status_code == 409:
            assert answer.json()["error"]["code"] == "session_busy"
        assert time.monotonic() < deadline, answer.text
        time.sleep(0.2)


# --- SQLite --------------------------------------------------------------------------------------


def test_sqlite_locked_longer_than_the_busy_timeout(tmp_path: Path) -> None:
    """Another connection holds the write lock past the busy timeout: 503, then it recovers."""
    running = launch(tmp_path / "locked", "--lock-ttl", "1")
    try:
        client = running.client()
        session_id = create(client)
        assert post(client, session_id, "I'd like a refund").status_code == 200
        holder = sqlite3.connect(tmp_path / "locked" / "sessions.db", isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            assert_unavailable(post(client, session_id, "12345", "k-locked"))
            # Readers are not blocked by a writer in WAL mode.
            assert client.get(f"/v1/sessions/{session_id}").json()["state"] == "ask_order"
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        answer = until_answered(client, session_id, "12345", "k-locked")
        assert answer.json()["turn"]["state_before"] == "ask_order"
        assert answer.json()["turn"]["index"] == 2
        assert user_texts(client, session_id) == ["I'd like a refund", "12345"]
    finally:
        assert running.stop() == 0


def test_a_commit_that_fails_midway_leaves_the_session_as_it_was(tmp_path: Path) -> None:
    """The commit fails after updating the session row: nothing of the turn is kept."""
    running = launch(tmp_path / "midway", "--lock-ttl", "1")
    try:
        client = running.client()
        session_id = create(client)
        first = post(client, session_id, "I'd like a refund")
        assert first.status_code == 200
        before = client.get(f"/v1/sessions/{session_id}").json()
        db = sqlite3.connect(tmp_path / "midway" / "sessions.db", isolation_level=None)
        # The transcript insert comes after the session update in the same transaction.
        db.execute(
            "CREATE TRIGGER full BEFORE INSERT ON turns"
            " BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
        )
        try:
            assert_unavailable(post(client, session_id, "12345", "k-midway"))
            after = client.get(f"/v1/sessions/{session_id}").json()
            assert {k: v for k, v in after.items() if k != "updated"} == {
                k: v for k, v in before.items() if k != "updated"
            }
            assert after["updated"] == before["updated"]
        finally:
            db.execute("DROP TRIGGER full")
            db.close()
        answer = until_answered(client, session_id, "12345", "k-midway")
        assert answer.json()["turn"]["state_before"] == "ask_order"
        assert answer.json()["turn"]["index"] == 2
        assert user_texts(client, session_id) == ["I'd like a refund", "12345"]
    finally:
        assert running.stop() == 0


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs (needs the right to mount; skipped without it)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace').strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(directory: Path) -> Path:
    filler = directory / "filler"
    try:
        with filler.open("wb") as out:
            while True:
                out.write(b"\0" * 4096)
                out.flush()
    except OSError:  # no space left: that is the point
        pass
    return filler


def test_sqlite_on_a_full_disk(tmp_path: Path, small_disk: Path) -> None:
    """The store's disk fills up: 503 while full, no acknowledged turn lost, then recovery."""
    running = launch(tmp_path / "full", "--lock-ttl", "1", "--store", str(small_disk / "s.db"))
    try:
        client = running.client()
        session_id = create(client)
        acknowledged = []
        for index in range(3):
            text = PATTERN[index % len(PATTERN)]
            assert post(client, session_id, text).status_code == 200
            acknowledged.append(text)
        before = client.get(f"/v1/sessions/{session_id}").json()
        filler = _fill(small_disk)
        refused = 0
        for index in range(5):
            answer = post(client, session_id, f"while full {index}", f"k-full-{index}")
            if answer.status_code == 200:  # a write that fit in pages SQLite already had
                acknowledged.append(f"while full {index}")
                continue
            if answer.status_code == 409:  # a lease the failed turn could not release
                assert answer.json()["error"]["code"] == "session_busy"
                continue
            assert_unavailable(answer)
            assert "full" in answer.json()["error"]["message"]
            refused += 1
        assert refused >= 1
        assert user_texts(client, session_id) == acknowledged
        assert client.get(f"/v1/sessions/{session_id}").json()["turns"] == before["turns"] + (
            len(acknowledged) - 3
        )
        filler.unlink()
        answer = until_answered(client, session_id, "after the disk", "k-after")
        acknowledged.append("after the disk")
        assert answer.json()["turn"]["index"] == len(acknowledged)
        assert user_texts(client, session_id) == acknowledged
    finally:
        assert running.stop() == 0


# --- Redis ---------------------------------------------------------------------------------------


class RedisProcess:
    """A redis-server of the test's own, to kill and restart on the same port and files."""

    def __init__(self, directory: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("REDIS TESTS SKIPPED: redis-server is not installed")
        self.binary = binary
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        # appendfsync always: a turn acknowledged to a client is on disk before Redis dies.
        command = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", str(self.directory), "--save", "", "--appendonly", "yes",
            "--appendfsync", "always", "--protected-mode", "yes",
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                import redis  # noqa: PLC0415

                with redis.Redis(port=self.port, socket_timeout=0.5) as probe:
                    if probe.ping():
                        return
            except Exception:  # any failure means: not up yet
                pass
            assert self.process.poll() is None, "redis-server exited"
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)
        self.process = None


@pytest.fixture
def redis_process(tmp_path: Path) -> Iterator[RedisProcess]:
    """A running redis-server, killed at the end whatever happened."""
    directory = tmp_path / "redis"
    directory.mkdir()
    made = RedisProcess(directory)
    made.start()
    yield made
    if made.process is not None:
        made.kill()


def test_redis_killed_between_turns(tmp_path: Path, redis_process: RedisProcess) -> None:
    """Redis dies between two turns: 503 while down; after a restart the session continues."""
    running = launch(tmp_path / "between", "--lock-ttl", "1", "--store", redis_process.url)
    try:
        client = running.client()
        session_id = create(client)
        assert post(client, session_id, "I'd like a refund").status_code == 200
        redis_process.kill()
        assert_unavailable(post(client, session_id, "12345", "k-down"))
        assert_unavailable(client.get(f"/v1/sessions/{session_id}"))
        ready = httpx.get(running.url + "/readyz")
        assert ready.status_code == 503
        assert ready.json()["error"]["code"] == "store_unavailable"
        redis_process.start()
        answer = until_answered(client, session_id, "12345", "k-down")
        assert answer.json()["turn"]["state_before"] == "ask_order"
        assert user_texts(client, session_id) == ["I'd like a refund", "12345"]
        assert httpx.get(running.url + "/readyz").status_code == 200
    finally:
        assert running.stop() == 0


def test_redis_killed_during_a_run_of_turns(tmp_path: Path, redis_process: RedisProcess) -> None:
    """Clients keep talking while Redis is killed twice: every 200 is kept, no 500 is seen."""
    running = launch(tmp_path / "during", "--lock-ttl", "1", "--store", redis_process.url)
    try:
        clients = [running.client() for _ in range(3)]
        sessions = [create(c) for c in clients]
        acknowledged: dict[str, list[str]] = {s: [] for s in sessions}
        statuses: list[int] = []
        stop = threading.Event()
        lock = threading.Lock()

        def talk(client: httpx.Client, session_id: str) -> None:
            index = 0
            while not stop.is_set() or index < 3:
                text = f"{PATTERN[index % len(PATTERN)]} #{index}"
                key = f"{session_id}-{index}"
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    answer = post(client, session_id, text, key)
                    with lock:
                        statuses.append(answer.status_code)
                    if answer.status_code == 200:
                        acknowledged[session_id].append(text)
                        break
                    time.sleep(0.05)
                index += 1

        threads = [
            threading.Thread(target=talk, args=(c, s))
            for c, s in zip(clients, sessions, strict=True)
        ]
        for thread in threads:
            thread.start()
        for _ in range(2):
            time.sleep(0.5)
            redis_process.kill()
            time.sleep(0.5)
            redis_process.start()
        time.sleep(0.5)
        stop.set()
        for thread in threads:
            thread.join(timeout=120)
        assert set(statuses) <= {200, 409, 503}, sorted(set(statuses))
        assert 503 in statuses
        for session_id, client in zip(sessions, clients, strict=True):
            assert user_texts(client, session_id) == acknowledged[session_id]
            view = client.get(f"/v1/sessions/{session_id}").json()
            assert view["turns"] == 1 + len(acknowledged[session_id])
    finally:
        assert running.stop() == 0


def test_redis_commit_kept_only_in_part_is_neither_read_nor_replayed(
    tmp_path: Path, redis_process: RedisProcess
) -> None:
    """A record and a key left past the session's count by a cut-short commit are ignored."""
    import redis  # noqa: PLC0415

    from sopagent.server._service import _digest  # noqa: PLC0415 (the service's request digest)

    running = launch(tmp_path / "partial", "--lock-ttl", "1", "--store", redis_process.url)
    try:
        client = running.client()
        session_id = create(client)
        assert post(client, session_id, "I'd like a refund").status_code == 200
        # What a crash in the middle of writing the next commit can leave: its record and
        # its idempotency key, without the session update that counts them.
        raw = redis.Redis.from_url(redis_process.url, decode_responses=True)
        orphan = client.get(f"/v1/sessions/{session_id}/transcript").json()["records"][1]
        raw.rpush(f"sopagent:t:{session_id}", json.dumps(orphan))
        raw.hset(f"sopagent:i:{session_id}", "k-cut", f"{_digest('12345', None)} 2")
        raw.close()
        assert user_texts(client, session_id) == ["I'd like a refund"]
        answer = post(client, session_id, "12345", "k-cut")
        assert answer.status_code == 200, answer.text
        assert "idempotent-replayed" not in answer.headers
        assert answer.json()["turn"]["index"] == 2
        assert user_texts(client, session_id) == ["I'd like a refund", "12345"]
        assert post(client, session_id, "12345", "k-cut").headers["idempotent-replayed"] == "true"
    finally:
        assert running.stop() == 0
