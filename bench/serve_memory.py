"""Memory per idle session: in the store (SQLite file, Redis memory) and in a worker process.

Creates N retail sessions through ``sopagent serve`` (each: the opening turn and one message,
so it waits in the menu with a user identified), then measures what N idle sessions cost:

* SQLite: growth of the database file (after a WAL checkpoint) per session;
* Redis: growth of ``used_memory`` per session;
* the worker: growth of the server process's resident memory per session (workers keep no
  session between requests, so this is allocator noise around zero);
* for comparison, a `Session` object kept in a Python process (tracemalloc), as an in-memory
  host would keep it.

    python bench/serve_memory.py [--sessions 5000] [--stores sqlite redis] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
import tempfile
import tracemalloc
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import markdown, row, write_json
from _serve import RETAIL, SCRIPT, Connection, Machine, Redis, Server, message


def create(port: int, sessions: int, concurrency: int = 20) -> list[int]:
    """Create idle sessions; return the sizes of their session JSON (bytes)."""
    sizes: list[int] = []

    async def worker(count: int) -> None:
        connection = Connection(port)
        for _ in range(count):
            status, body = await connection.request("POST", "/v1/sessions", {"policy": "retail"})
            assert status == 201, body
            session_id = body["session"]["id"]
            status, body = await connection.request(
                "POST", f"/v1/sessions/{session_id}/messages", {"text": message(1)}
            )
            assert status == 200, body
        connection.close()

    async def main() -> None:
        share, extra = divmod(sessions, concurrency)
        await asyncio.gather(*(worker(share + (i < extra)) for i in range(concurrency)))

    asyncio.run(main())
    return sizes


def session_object_bytes(count: int = 2000) -> tuple[float, float]:
    """Bytes per `Session` object held in memory, and per its JSON text."""
    from sopagent import MemorySink, ScriptedBackend, load_agent  # noqa: PLC0415

    agent = load_agent(RETAIL, backend=ScriptedBackend(SCRIPT), audit=MemorySink())
    template = agent.new_session()
    agent.start(template)
    agent.respond(template, message(1))
    text = template.to_json()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    kept = [type(template).from_json(text) for _ in range(count)]
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert len(kept) == count
    return (after - before) / count, len(text.encode())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=5000)
    parser.add_argument("--stores", nargs="+", default=["sqlite", "redis"])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    machine = Machine()
    rows: list[dict[str, Any]] = []
    results: dict[str, Any] = {"sessions": args.sessions}
    n = args.sessions
    object_bytes, json_bytes = session_object_bytes()
    for store_kind in args.stores:
        redis = Redis.start() if store_kind == "redis" else None
        directory = Path(tempfile.mkdtemp(prefix=f"bench-memory-{store_kind}-"))
        db = directory / "sessions.db"
        server = Server.start(redis.url if redis else str(db), directory)
        try:
            create(server.port, 200)  # warm the worker: imports, caches, connections
            rss_before = server.rss()
            store_before = redis.info_memory() if redis else _sqlite_bytes(db)
            create(server.port, n)
            rss_after = server.rss()
            store_after = redis.info_memory() if redis else _sqlite_bytes(db)
        finally:
            server.stop()
            if redis is not None:
                redis.stop()
        per_store = (store_after - store_before) / n
        per_worker = (rss_after - rss_before) / n
        results[store_kind] = {
            "store_bytes_per_session": per_store,
            "worker_rss_bytes_per_session": per_worker,
            "worker_rss_before": rss_before,
            "worker_rss_after": rss_after,
        }
        what = "SQLite file" if store_kind == "sqlite" else "Redis used_memory"
        rows.append(row(f"{what} per idle session", per_store / 1024, "KiB", n=n,
                        baseline=json_bytes / 1024, baseline_name="its Session JSON"))  # fmt: skip
        note = f"RSS {rss_before / 2**20:.0f} -> {rss_after / 2**20:.0f} MiB"
        rows.append(row(f"worker RSS per idle session ({store_kind})", per_worker / 1024, "KiB",
                        n=n, note=note))  # fmt: skip
    rows.append(row("Session object kept in memory", object_bytes / 1024, "KiB",
                    baseline=json_bytes / 1024, baseline_name="its JSON"))  # fmt: skip
    results["session_object_bytes"] = object_bytes
    results["session_json_bytes"] = json_bytes
    results["machine"] = machine.done()
    results["rows"] = rows
    print(markdown(rows))
    write_json(args.json, results)


def _sqlite_bytes(path: Path) -> int:
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    wal = path.with_name(path.name + "-wal")
    return path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


if __name__ == "__main__":
    main()
