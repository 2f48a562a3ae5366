"""Load test of ``sopagent serve`` from a second process: turns/s and latency under concurrency.

For each store (SQLite, Redis) and each level of concurrency (1, 10, 100 sessions at once),
this process drives a ``sopagent serve`` process on 127.0.0.1: every virtual user holds one
keep-alive connection and plays retail conversations (identify, then order-status questions;
a new session every 20 turns), sending the next message as soon as the last is answered. Each
level runs for a fixed time after a warm-up, so the loop stops by itself.

Baselines, measured in the same run:

* ``in-process``: `Agent.respond` on the same conversation in one thread, no HTTP, no store;
* ``echo``: a trivial FastAPI endpoint (``bench/_echo.py``) under uvicorn with the same
  settings, driven by the same client at the same concurrency.

    python bench/serve_load.py [--stores sqlite redis] [--levels 1 10 100] [--seconds 5]
                               [--workers 1] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import markdown, row, write_json
from _serve import (
    RETAIL,
    SCRIPT,
    TURNS_PER_SESSION,
    Connection,
    Machine,
    Redis,
    Server,
    cpu_seconds,
    free_port,
    message,
    start_echo,
)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _user(port: int, stop_at: float, warm_until: float, out: dict[str, list[float]]) -> None:
    connection = Connection(port)
    try:
        while time.perf_counter() < stop_at:
            status, body = await connection.request("POST", "/v1/sessions", {"policy": "retail"})
            if status != 201:
                out["errors"].append(status)
                continue
            path = f"/v1/sessions/{body['session']['id']}/messages"
            for turn in range(1, TURNS_PER_SESSION + 1):
                started = time.perf_counter()
                if started >= stop_at:
                    break
                status, body = await connection.request("POST", path, {"text": message(turn)})
                took = time.perf_counter() - started
                if status != 200:
                    out["errors"].append(status)
                elif started >= warm_until:
                    out["latency"].append(took)
    finally:
        connection.close()


async def _echo_user(
    port: int, stop_at: float, warm_until: float, out: dict[str, list[float]]
) -> None:
    connection = Connection(port)
    try:
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            status, _ = await connection.request("POST", "/echo", {"text": message(2)})
            if status == 200 and started >= warm_until:
                out["latency"].append(time.perf_counter() - started)
    finally:
        connection.close()


def drive(
    port: int, users: int, seconds: float, *, echo: bool = False, pid: int | None = None
) -> dict[str, Any]:
    """Run ``users`` virtual users for ``seconds`` (plus a 1 s warm-up); return the figures.

    With ``pid``, also the CPU time the server process used in the measured part, so that
    throughput can be given per CPU-second of the server, which contention on a shared
    machine does not change.
    """
    out: dict[str, list[Any]] = {"latency": [], "errors": []}
    cpu: dict[str, float] = {}

    async def main() -> None:
        now = time.perf_counter()
        warm_until, stop_at = now + 1.0, now + 1.0 + seconds
        user = _echo_user if echo else _user

        async def meter() -> None:
            await asyncio.sleep(max(0.0, warm_until - time.perf_counter()))
            cpu["start"] = cpu_seconds(pid) if pid else 0.0
            await asyncio.sleep(max(0.0, stop_at - time.perf_counter()))
            cpu["end"] = cpu_seconds(pid) if pid else 0.0

        await asyncio.gather(meter(), *(user(port, stop_at, warm_until, out) for _ in range(users)))

    asyncio.run(main())
    latency = out["latency"]
    server_cpu = cpu.get("end", 0.0) - cpu.get("start", 0.0)
    return {
        "server_cpu_s": server_cpu,
        "turns_per_cpu_s": len(latency) / server_cpu if server_cpu > 0 else 0.0,
        "turns": len(latency),
        "turns_per_s": len(latency) / seconds,
        "p50_ms": percentile(latency, 0.50) * 1000 if latency else 0.0,
        "p99_ms": percentile(latency, 0.99) * 1000 if latency else 0.0,
        "errors": len(out["errors"]),
    }


def in_process(turns: int = 3000) -> float:
    """Turns per second of `Agent.respond` on the same conversation, in this process."""
    from sopagent import MemorySink, ScriptedBackend, load_agent  # noqa: PLC0415

    backend = ScriptedBackend(SCRIPT)
    agent = load_agent(RETAIL, backend=backend, audit=MemorySink())
    rates = []
    for _ in range(5):
        done, started = 0, time.perf_counter()
        while done < turns // 5:
            session = agent.new_session()
            agent.start(session)
            for turn in range(1, TURNS_PER_SESSION + 1):
                agent.respond(session, message(turn))
                done += 1
            backend.requests.clear()
            agent.audit.events.clear()  # type: ignore[attr-defined]
        rates.append(done / (time.perf_counter() - started))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stores", nargs="+", default=["sqlite", "redis"])
    parser.add_argument("--levels", nargs="+", type=int, default=[1, 10, 100])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    machine = Machine()
    rows: list[dict[str, Any]] = []
    results: dict[str, Any] = {"levels": {}, "workers": args.workers}

    base_rate = in_process()
    print(f"in-process Agent.respond: {base_rate:,.0f} turns/s", file=sys.stderr)
    echo: dict[int, dict[str, Any]] = {}
    port = free_port()
    process = start_echo(port)
    try:
        for users in args.levels:
            echo[users] = drive(port, users, args.seconds, echo=True, pid=process.pid)
            print(f"echo x{users}: {echo[users]}", file=sys.stderr)
    finally:
        process.terminate()
        process.wait()
    results["in_process_turns_per_s"] = base_rate
    results["echo"] = echo

    for store_kind in args.stores:
        redis = Redis.start() if store_kind == "redis" else None
        directory = Path(tempfile.mkdtemp(prefix=f"bench-serve-{store_kind}-"))
        store = redis.url if redis else str(directory / "sessions.db")
        server = Server.start(store, directory, workers=args.workers)
        try:
            for users in args.levels:
                figures = drive(server.port, users, args.seconds, pid=server.process.pid)
                results["levels"][f"{store_kind}x{users}"] = figures
                print(f"{store_kind} x{users}: {figures}", file=sys.stderr)
                name = f"{store_kind}, {users} session{'s' if users > 1 else ''}"
                rows.append(row(
                    f"{name}: turns/s", figures["turns_per_s"], "turns/s",
                    baseline=echo[users]["turns_per_s"], baseline_name="echo req/s",
                    n=figures["turns"],
                ))  # fmt: skip
                rows.append(row(
                    f"{name}: turns per server CPU-second", figures["turns_per_cpu_s"], "turns",
                    baseline=echo[users]["turns_per_cpu_s"], baseline_name="echo",
                    n=figures["turns"],
                ))  # fmt: skip
                rows.append(row(
                    f"{name}: p50 latency", figures["p50_ms"], "ms",
                    baseline=echo[users]["p50_ms"], baseline_name="echo", n=figures["turns"],
                ))  # fmt: skip
                rows.append(row(
                    f"{name}: p99 latency", figures["p99_ms"], "ms",
                    baseline=echo[users]["p99_ms"], baseline_name="echo", n=figures["turns"],
                ))  # fmt: skip
        finally:
            server.stop()
            if redis is not None:
                redis.stop()
    best = max(v["turns_per_s"] for v in results["levels"].values())
    rows.append(row("best turns/s over HTTP", best, "turns/s", baseline=base_rate,
                    baseline_name="in-process Agent.respond"))  # fmt: skip
    results["machine"] = machine.done()
    results["rows"] = rows
    print(markdown(rows))
    print(f"\nmachine: {results['machine']}, server workers: {args.workers}")
    write_json(args.json, results)


if __name__ == "__main__":
    main()
