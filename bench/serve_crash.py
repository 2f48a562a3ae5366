"""Crash safety of ``sopagent serve``: kill -9 in the middle of load, restart, check every session.

Each round starts the service on a store, drives it with concurrent conversations (every
message carries an Idempotency-Key and an X-Request-ID), and kills the server with SIGKILL at
a random moment while requests are in flight. The server is restarted on the same store, and
then:

* every turn that was acknowledged (answered 200) must be in its session's transcript, at the
  index it was answered with, with the same text;
* every transcript must be whole (indexes 0..n-1, as many as the session says it has) and every
  session readable;
* every request that was in flight is retried with its key: it is answered exactly once (a
  replay if it had been stored before the kill, a new turn otherwise), never stored twice;
* every session then takes one more message.

    python bench/serve_crash.py [--stores sqlite redis] [--rounds 3] [--users 20] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import markdown, row, write_json
from _serve import Connection, Machine, Redis, Server, message


@dataclass
class Sent:
    """A message sent to a session: its key, text, and the index it was answered with."""

    session_id: str
    key: str
    text: str
    index: int | None = None


@dataclass
class Round:
    acknowledged: list[Sent] = field(default_factory=list)
    in_flight: list[Sent] = field(default_factory=list)
    sessions: list[str] = field(default_factory=list)


async def _user(port: int, record: Round, stop: asyncio.Event) -> None:
    connection = Connection(port)
    try:
        status, body = await connection.request("POST", "/v1/sessions", {"policy": "retail"})
        if status != 201:
            return
        session_id = body["session"]["id"]
        record.sessions.append(session_id)
        turn = 0
        while not stop.is_set():
            turn += 1
            sent = Sent(session_id, f"{session_id}-{turn}", message(turn))
            record.in_flight.append(sent)
            status, body = await connection.request(
                "POST",
                f"/v1/sessions/{session_id}/messages",
                {"text": sent.text},
                {"Idempotency-Key": sent.key, "X-Request-ID": uuid.uuid4().hex},
            )
            record.in_flight.remove(sent)
            if status == 200:
                sent.index = body["turn"]["index"]
                record.acknowledged.append(sent)
            else:
                raise RuntimeError(f"unexpected status {status}: {body}")
    except (ConnectionError, OSError, asyncio.IncompleteReadError):
        pass  # the server was killed
    finally:
        connection.close()


def load_then_kill(server: Server, users: int, seconds: float) -> Round:
    record = Round()

    async def main() -> None:
        stop = asyncio.Event()
        tasks = [asyncio.create_task(_user(server.port, record, stop)) for _ in range(users)]
        await asyncio.sleep(seconds)
        server.kill()  # SIGKILL while requests are in flight
        await asyncio.gather(*tasks)

    asyncio.run(main())
    return record


def verify(server: Server, record: Round, states: set[str]) -> dict[str, int]:
    """Check the sessions after the restart; return the counts."""

    async def main() -> dict[str, int]:
        connection = Connection(server.port)
        counts = {"acknowledged": len(record.acknowledged), "lost": 0, "corrupt": 0,
                  "in_flight": len(record.in_flight), "in_flight_stored": 0, "duplicates": 0,
                  "continued": 0}  # fmt: skip
        transcripts: dict[str, list[dict[str, Any]]] = {}
        for session_id in record.sessions:
            status, view = await connection.request("GET", f"/v1/sessions/{session_id}")
            status_t, body = await connection.request(
                "GET", f"/v1/sessions/{session_id}/transcript"
            )
            if status != 200 or status_t != 200:
                counts["corrupt"] += 1
                continue
            records = body["records"]
            transcripts[session_id] = records
            whole = [r["turn"]["index"] for r in records] == list(range(len(records)))
            if not whole or view["turns"] != len(records) or view["state"] not in states:
                counts["corrupt"] += 1
        for sent in record.acknowledged:
            records = transcripts.get(sent.session_id, [])
            stored = (
                records[sent.index]
                if sent.index is not None and sent.index < len(records)
                else None
            )
            if stored is None or stored["turn"]["user_text"] != sent.text:
                counts["lost"] += 1
        await asyncio.sleep(server_lock_ttl + 0.2)  # leases of the killed server expire
        for sent in record.in_flight:
            attempt = uuid.uuid4().hex
            status, body = await connection.request(
                "POST",
                f"/v1/sessions/{sent.session_id}/messages",
                {"text": sent.text},
                {"Idempotency-Key": sent.key, "X-Request-ID": attempt},
            )
            if status == 200 and body["request_id"] != attempt:
                counts["in_flight_stored"] += 1
        for session_id in record.sessions:
            _, body = await connection.request("GET", f"/v1/sessions/{session_id}/transcript")
            texts = [r["turn"]["user_text"] for r in body["records"][1:]]
            keys_answered = [s.key for s in record.acknowledged if s.session_id == session_id]
            keys_answered += [s.key for s in record.in_flight if s.session_id == session_id]
            counts["duplicates"] += len(texts) - len(keys_answered)
            status, _ = await connection.request(
                "POST", f"/v1/sessions/{session_id}/messages", {"text": message(3)}
            )
            counts["continued"] += status == 200
        connection.close()
        return counts

    return asyncio.run(main())


server_lock_ttl = 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stores", nargs="+", default=["sqlite", "redis"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    from _serve import RETAIL  # noqa: PLC0415

    from sopagent import compile_policy, load_policy  # noqa: PLC0415

    states = set(compile_policy(load_policy(RETAIL)).states)
    chance = random.Random(args.seed)
    machine = Machine()
    results: dict[str, Any] = {"rounds": []}
    rows = []
    for store_kind in args.stores:
        totals: dict[str, int] = {}
        redis = Redis.start() if store_kind == "redis" else None
        directory = Path(tempfile.mkdtemp(prefix=f"bench-crash-{store_kind}-"))
        store = redis.url if redis else str(directory / "sessions.db")
        try:
            for number in range(args.rounds):
                server = Server.start(store, directory, extra=("--lock-ttl", str(server_lock_ttl)))
                record = load_then_kill(server, args.users, chance.uniform(1.0, 3.0))
                server.restart()
                counts = verify(server, record, states)
                server.stop()
                print(f"{store_kind} round {number + 1}: {counts}", file=sys.stderr)
                results["rounds"].append({"store": store_kind, **counts})
                for name, value in counts.items():
                    totals[name] = totals.get(name, 0) + value
        finally:
            if redis is not None:
                redis.stop()
        note = f"{args.rounds} kills, {args.users} concurrent sessions"
        rows += [
            row(f"{store_kind}: acknowledged turns checked", totals["acknowledged"], "turns",
                note=note),
            row(f"{store_kind}: acknowledged turns lost", totals["lost"], "turns", note=note),
            row(f"{store_kind}: corrupt sessions", totals["corrupt"], "sessions", note=note),
            row(f"{store_kind}: in flight at the kill", totals["in_flight"], "requests",
                note=note),
            row(f"{store_kind}: of those, stored before the kill", totals["in_flight_stored"],
                "requests", note="retried with their key: replayed, not stored again"),
            row(f"{store_kind}: turns stored twice", totals["duplicates"], "turns", note=note),
            row(f"{store_kind}: sessions that went on after restart", totals["continued"],
                "sessions", note=note),
        ]  # fmt: skip
    results["machine"] = machine.done()
    results["rows"] = rows
    print(markdown(rows))
    write_json(args.json, results)


if __name__ == "__main__":
    main()
