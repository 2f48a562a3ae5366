"""Faults underneath ``sopagent serve``: a failing model server and failing session stores.

A fixed schedule, the same on every run:

* **model**: the service runs the refund policy over ``resilient(openai, ...)`` pointed at the
  fault-injecting server of ``tests/fault_server.py``; each fault kind (timeouts, resets, 429,
  500, invalid JSON, off-enum labels, missing fields, refusals, truncation, slow drips) is
  played to the requests of two turns, then the model is healthy again.
* **sqlite_locked**: another connection holds SQLite's write lock past the busy timeout while
  clients keep talking.
* **sqlite_commit_fails**: a commit fails after its first write (a trigger refuses the
  transcript row with "database or disk is full").
* **disk_full**: the store's 16 MiB tmpfs is filled up, then freed (skipped where tmpfs
  cannot be mounted). It must leave room for SQLite's write-ahead log, which grows to about
  4 MiB before a checkpoint: a disk that the log itself fills stays full.
* **redis_killed**: redis-server is killed with SIGKILL three times while clients talk, and
  restarted on the same files (``appendfsync always``).

Every message carries an Idempotency-Key and is retried on 503 and 409 until it is answered.
Afterwards every session is read back: an acknowledged turn (answered 200) missing from its
transcript is lost; a session whose transcript is not whole (indexes 0..n-1, as many as the
session says) or whose state differs from its last record's is half written.

    python bench/faults.py [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from _serve import free_port, write_keys  # noqa: E402

from tests.fault_server import FaultServer  # noqa: E402 (after the path is set)

REFUND = ROOT / "policies" / "refund.yaml"
KEY = "sk_bench_faults"
SCRIPT = {"I'd like a refund": "request_refund", "yes please": "affirm"}
TEXTS = ("I'd like a refund", "12345", "hello there", "what is your refund policy")
MODEL_FAULTS = ("timeout", "reset", "429", "500", "invalid", "off_enum", "missing", "refusal",
                "length", "drip")  # fmt: skip
RESILIENT = (
    "resilient(openai, retries=1, backoff=0.01, timeout=1, breaker_failures=3, breaker_reset=0.5)"
)


@dataclass
class Tally:
    """What the schedule did and what came of it."""

    faults: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    attempted: int = 0
    acknowledged: int = 0
    given_up: int = 0
    lost: int = 0
    half_written: int = 0
    phases: dict[str, dict[str, int]] = field(default_factory=dict)
    sessions: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class Service:
    """A ``sopagent serve`` process on the refund policy, and a way to talk to it."""

    def __init__(self, directory: Path, store: str, *args: str, env: dict[str, str] | None = None):
        keys = write_keys(directory, KEY)
        script = directory / "script.json"
        script.write_text(json.dumps(SCRIPT))
        self.port = free_port()
        backend = [] if "--backend" in args else ["--script", str(script)]
        command = [
            sys.executable, "-m", "sopagent", "serve", str(REFUND), "--port", str(self.port),
            "--keys", str(keys), "--no-audit", "--store", store, "--lock-ttl", "1", *backend,
            *args,
        ]  # fmt: skip
        with (directory / "server.log").open("ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                env={**os.environ, **(env or {})},
            )  # fmt: skip
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"sopagent serve did not start: see {directory / 'server.log'}")
            time.sleep(0.1)

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60
        )

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=30)


class Conversation:
    """One session: its messages, each retried with its key until answered."""

    def __init__(self, client: httpx.Client, tally: Tally) -> None:
        self.client = client
        self.tally = tally
        answer = self._until(lambda: client.post("/v1/sessions", json={"policy": "refund"}), 201)
        if answer is None:
            raise SystemExit("no session could be created in 60 s")
        self.id: str = answer.json()["session"]["id"]
        self.acknowledged: list[str] = []
        self.sent = 0
        with tally.lock:
            tally.sessions += 1

    def say(self, text: str | None = None) -> None:
        text = f"{text or TEXTS[self.sent % len(TEXTS)]} #{self.sent}"
        key = f"{self.id}-{self.sent}"
        self.sent += 1
        with self.tally.lock:
            self.tally.attempted += 1
        answered = self._until(
            lambda: self.client.post(
                f"/v1/sessions/{self.id}/messages", json={"text": text},
                headers={"Idempotency-Key": key},
            ),
            200,
        )  # fmt: skip
        with self.tally.lock:
            if answered is None:
                self.tally.given_up += 1
                return
            self.tally.acknowledged += 1
        self.acknowledged.append(text)

    def _until(self, send: Any, status: int) -> httpx.Response | None:
        """Send until the answer has ``status``; ``None`` after 60 s without one."""
        deadline = time.monotonic() + 60
        while True:
            try:
                answer: httpx.Response = send()
            except httpx.HTTPError:
                answer = None  # type: ignore[assignment]
            code = 0 if answer is None else answer.status_code
            with self.tally.lock:
                self.tally.statuses[code] += 1
            if code == status:
                return answer
            if time.monotonic() > deadline:
                return None
            time.sleep(0.2)  # a client in a hurry: Retry-After says 1 s

    def check(self) -> None:
        """Count this session's lost turns and whether it is half written."""
        records = self.client.get(f"/v1/sessions/{self.id}/transcript").json()["records"]
        view = self.client.get(f"/v1/sessions/{self.id}").json()
        texts = [r["turn"]["user_text"] for r in records[1:]]
        whole = (
            [r["turn"]["index"] for r in records] == list(range(len(records)))
            and view["turns"] == len(records)
            and records[-1]["session"]["state"] == view["state"]
            and len(texts) == len(set(texts))
            and set(texts) <= set(self.acknowledged)
        )
        with self.tally.lock:
            self.tally.lost += len(set(self.acknowledged) - set(texts))
            self.tally.half_written += 0 if whole else 1


def talking(conversations: Sequence[Conversation], stop: threading.Event) -> list[threading.Thread]:
    """Threads that keep each conversation going until ``stop`` (at least two turns each)."""

    def run(conversation: Conversation) -> None:
        while not stop.is_set() or conversation.sent < 2:
            conversation.say()

    threads = [threading.Thread(target=run, args=(c,)) for c in conversations]
    for thread in threads:
        thread.start()
    return threads


@contextmanager
def conversations(service: Service, tally: Tally, count: int) -> Iterator[list[Conversation]]:
    clients = [service.client() for _ in range(count)]
    made = [Conversation(c, tally) for c in clients]
    try:
        yield made
    finally:
        for conversation in made:
            conversation.check()
        for client in clients:
            client.close()


def model_faults(work: Path, tally: Tally) -> None:
    server = FaultServer(drip_pause=0.3).start()
    env = {
        "OPENAI_BASE_URL": server.base_url,
        "OPENAI_API_KEY": "local",
        "SOPAGENT_OPENAI_MODEL": "fault-model",
    }
    service = Service(work / "model", str(work / "model.db"), "--backend", RESILIENT,
                      "--backend-timeout", "0.5", env=env)  # fmt: skip
    try:
        with conversations(service, tally, 1) as (conversation,):
            for kind in MODEL_FAULTS:
                server.play([kind] * 4, then="ok:request_refund")
                conversation.say("it is not what I hoped for")
                conversation.say("it is still not what I hoped for")
                time.sleep(0.6)  # the breaker's cooldown, should the fault have opened it
                conversation.say("it is not what I hoped for, again")
        kinds = (step.partition(":")[0] for step in server.seen)
        tally.faults.update(f"model {kind}" for kind in kinds if kind != "ok")
    finally:
        service.stop()
        server.stop()


def sqlite_faults(work: Path, tally: Tally) -> None:
    path = work / "sqlite.db"
    service = Service(work / "sqlite", str(path))
    try:
        with conversations(service, tally, 4) as talkers:
            stop = threading.Event()
            threads = talking(talkers, stop)
            time.sleep(0.5)
            holder = sqlite3.connect(path, isolation_level=None)
            holder.execute("BEGIN IMMEDIATE")
            tally.faults["sqlite locked"] += 1
            time.sleep(6.0)  # past the store's 5 s busy timeout
            holder.execute("ROLLBACK")
            time.sleep(0.5)
            holder.execute(
                "CREATE TRIGGER full BEFORE INSERT ON turns"
                " BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
            )
            tally.faults["sqlite commit fails"] += 1
            time.sleep(1.0)
            holder.execute("DROP TRIGGER full")
            holder.close()
            time.sleep(0.5)
            stop.set()
            for thread in threads:
                thread.join()
    finally:
        service.stop()


def disk_full(work: Path, tally: Tally) -> bool:
    mount = work / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)],
                          capture_output=True, check=False)  # fmt: skip
    if done.returncode != 0:
        return False
    service = Service(work / "full", str(mount / "s.db"))
    try:
        with conversations(service, tally, 4) as talkers:
            stop = threading.Event()
            threads = talking(talkers, stop)
            time.sleep(0.5)
            filler = mount / "filler"
            try:
                with filler.open("wb") as out:
                    while True:
                        out.write(b"\0" * 4096)
                        out.flush()
            except OSError:  # the disk is full: that is the fault
                pass
            tally.faults["disk full"] += 1
            time.sleep(1.5)
            filler.unlink()
            time.sleep(0.5)
            stop.set()
            for thread in threads:
                thread.join()
    finally:
        service.stop()
        subprocess.run(["umount", "-l", str(mount)], check=False)
    return True


class Redis:
    """A redis-server on fixed files, to kill and start again."""

    def __init__(self, directory: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server is not installed: apt-get install redis-server")
        self.command = [
            binary, "--port", str(free_port()), "--bind", "127.0.0.1", "--dir", str(directory),
            "--save", "", "--appendonly", "yes", "--appendfsync", "always",
        ]  # fmt: skip
        self.url = f"redis://127.0.0.1:{self.command[2]}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        import redis  # noqa: PLC0415

        self.process = subprocess.Popen(self.command, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with redis.Redis.from_url(self.url, socket_timeout=0.5) as probe:
                    if probe.ping():
                        return
            except redis.RedisError:
                time.sleep(0.05)
        raise SystemExit("redis-server did not start")

    def kill(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)
            self.process = None


def redis_faults(work: Path, tally: Tally) -> None:
    directory = work / "redis"
    directory.mkdir()
    redis = Redis(directory)
    redis.start()
    service = Service(work / "redis-serve", redis.url)
    try:
        with conversations(service, tally, 4) as talkers:
            stop = threading.Event()
            threads = talking(talkers, stop)
            for _ in range(3):
                time.sleep(0.7)
                redis.kill()
                tally.faults["redis killed"] += 1
                time.sleep(0.7)
                redis.start()
            time.sleep(0.5)
            stop.set()
            for thread in threads:
                thread.join()
    finally:
        service.stop()
        redis.kill()


def phase(tally: Tally, name: str, run: Any) -> Any:
    """Run one phase of the schedule and keep its own counts."""
    before = (tally.attempted, tally.acknowledged, tally.given_up, tally.statuses[503])
    started = time.monotonic()
    result = run()
    after = (tally.attempted, tally.acknowledged, tally.given_up, tally.statuses[503])
    keys = ("attempted", "acknowledged", "given_up", "503")
    tally.phases[name] = {k: b - a for k, a, b in zip(keys, before, after, strict=True)}
    tally.phases[name]["seconds"] = round(time.monotonic() - started)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    options = parser.parse_args(argv)
    tally = Tally()
    skipped: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-faults-") as temporary:
        work = Path(temporary)
        phase(tally, "model", lambda: model_faults(work, tally))
        phase(tally, "sqlite", lambda: sqlite_faults(work, tally))
        if not phase(tally, "disk full", lambda: disk_full(work, tally)):
            skipped.append("disk full (cannot mount a tmpfs)")
        phase(tally, "redis", lambda: redis_faults(work, tally))
    result: dict[str, Any] = {
        "faults_injected": dict(sorted(tally.faults.items())),
        "sessions": tally.sessions,
        "turns_attempted": tally.attempted,
        "turns_acknowledged": tally.acknowledged,
        "turns_given_up": tally.given_up,
        "acknowledged_turns_lost": tally.lost,
        "half_written_sessions": tally.half_written,
        "answers": {str(k): v for k, v in sorted(tally.statuses.items())},
        "answers_500": sum(v for k, v in tally.statuses.items() if k >= 500 and k != 503),
        "phases": tally.phases,
        "skipped": skipped,
    }
    if options.json:
        print(json.dumps(result, indent=2))
    else:
        lines = ["| figure | value |", "|---|---:|"]
        lines += [f"| faults injected: {k} | {v} |" for k, v in result["faults_injected"].items()]
        lines += [
            f"| sessions | {result['sessions']} |",
            f"| turns attempted | {result['turns_attempted']} |",
            f"| turns acknowledged | {result['turns_acknowledged']} |",
            f"| turns given up (no 200 in 60 s of retries) | {result['turns_given_up']} |",
            f"| acknowledged turns lost | {result['acknowledged_turns_lost']} |",
            f"| half-written sessions | {result['half_written_sessions']} |",
            f"| 500 answers | {result['answers_500']} |",
        ]
        lines += [f"| answers {k} | {v} |" for k, v in result["answers"].items()]
        lines += [
            "",
            "| phase | turns attempted | acknowledged | given up | 503 answers | seconds |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {name} | {p['attempted']} | {p['acknowledged']} | {p['given_up']} | {p['503']}"
            f" | {p['seconds']} |"
            for name, p in tally.phases.items()
        ]
        print("\n".join(lines))
        for reason in skipped:
            print(f"skipped: {reason}")
    bad = result["acknowledged_turns_lost"] or result["half_written_sessions"] or tally.given_up
    return 1 if bad or result["answers_500"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
