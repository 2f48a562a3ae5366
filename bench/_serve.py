"""What the service benchmarks share: processes to start and a lean HTTP/1.1 client.

The client speaks keep-alive HTTP/1.1 over asyncio streams by hand, so that the process that
generates the load spends as little of the two cores as possible per request; it reads only
``Content-Length`` bodies, which is what uvicorn sends for these endpoints.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PYTHON = sys.executable
RETAIL = ROOT / "policies" / "retail.yaml"
KEY = "sk_bench_key"

# A retail conversation: identify, then ask for the status of each of the user's orders in
# turn. Every message needs the (scripted) model, a decision function reads the database, and
# the session stays open, so a conversation can go on as long as a benchmark wants.
IDENTIFY = "Hi, I'm Olivia Ito, zip 80218"
ORDERS = ("#W5866402", "#W5353646", "#W5442520", "#W7941031", "#W3657213")
STATUS = tuple(f"what's the status of order {order}?" for order in ORDERS)
SCRIPT = {IDENTIFY: "give_identity", **dict.fromkeys(STATUS, "order_status")}
TURNS_PER_SESSION = 20


def message(turn: int) -> str:
    """The user's text of message ``turn`` (1-based) of a benchmark conversation."""
    return IDENTIFY if turn == 1 else STATUS[turn % len(STATUS)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def write_keys(directory: Path, key: str) -> Path:
    """Write a keys file in ``directory`` giving ``key`` every policy; return its path."""
    from sopagent.server import hash_key  # noqa: PLC0415

    directory.mkdir(parents=True, exist_ok=True)
    keys = directory / "keys.yaml"
    keys.write_text(
        f"keys:\n  - {{id: bench, tenant: bench, policies: ['*'], hash: '{hash_key(key)}'}}\n"
    )
    return keys


def wait_http(port: int, process: subprocess.Popen[bytes], path: str = "/healthz") -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                if sock.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError("server did not answer")


@dataclass
class Redis:
    """A private redis-server (append-only file on) in a temporary directory."""

    process: subprocess.Popen[bytes]
    url: str
    port: int
    directory: Path

    @classmethod
    def start(cls) -> Redis:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server is not installed: apt-get install redis-server")
        directory = Path(tempfile.mkdtemp(prefix="bench-redis-"))
        port = free_port()
        process = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory),
             "--save", "", "--appendonly", "yes"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.05)
        return cls(process, f"redis://127.0.0.1:{port}/0", port, directory)

    def info_memory(self) -> int:
        with socket.create_connection(("127.0.0.1", self.port)) as sock:
            sock.sendall(b"INFO memory\r\n")
            data = b""
            while b"used_memory:" not in data or not data.endswith(b"\r\n"):
                data += sock.recv(65536)
        for line in data.decode().splitlines():
            if line.startswith("used_memory:"):
                return int(line.split(":")[1])
        raise RuntimeError("no used_memory in INFO")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)
        shutil.rmtree(self.directory, ignore_errors=True)


@dataclass
class Server:
    """A ``sopagent serve`` process on the retail policy with the scripted backend."""

    process: subprocess.Popen[bytes]
    port: int
    directory: Path
    store: str
    args: tuple[str, ...] = ()

    @classmethod
    def start(
        cls,
        store: str,
        directory: Path,
        *,
        workers: int = 1,
        port: int | None = None,
        extra: Sequence[str] = (),
    ) -> Server:
        keys = write_keys(directory, KEY)
        script = directory / "script.json"
        script.write_text(json.dumps(SCRIPT))
        port = port or free_port()
        args = (
            "--store", store, "--keys", str(keys), "--script", str(script),
            "--audit", str(directory / "audit.jsonl"), "--workers", str(workers), *extra,
        )  # fmt: skip
        server = cls(_spawn(port, args, directory), port, directory, store, args)
        wait_http(port, server.process)
        return server

    def restart(self) -> None:
        self.process = _spawn(self.port, self.args, self.directory)
        wait_http(self.port, self.process)

    def rss(self) -> int:
        """Resident memory of the server process (and its workers), in bytes."""
        pids = [self.process.pid, *_children(self.process.pid)]
        total = 0
        for pid in pids:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        return total

    def cpu_seconds(self) -> float:
        """CPU time used so far by the server process and its workers."""
        return cpu_seconds(self.process.pid)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)

    def kill(self) -> None:
        pids = _children(self.process.pid)
        self.process.kill()
        self.process.wait(timeout=30)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _spawn(port: int, args: Sequence[str], directory: Path) -> subprocess.Popen[bytes]:
    command = [PYTHON, "-m", "sopagent", "serve", str(RETAIL), "--port", str(port), *args]
    log = (directory / "server.log").open("ab")
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process and its live children, in seconds."""
    total = 0
    for each in (pid, *_children(pid)):
        try:
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def start_echo(port: int) -> subprocess.Popen[bytes]:
    """A trivial FastAPI endpoint under uvicorn with the same settings, as the HTTP baseline."""
    command = [
        PYTHON, "-m", "uvicorn", "_echo:app", "--app-dir", str(HERE), "--port", str(port),
        "--host", "127.0.0.1", "--log-level", "warning", "--no-access-log",
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_http(port, process, "/healthz")
    return process


class Connection:
    """One keep-alive HTTP/1.1 connection to 127.0.0.1."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        data = b"" if body is None else json.dumps(body).encode()
        lines = [
            f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", f"Authorization: Bearer {KEY}",
            "Content-Type: application/json", f"Content-Length: {len(data)}",
        ]  # fmt: skip
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + data)
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("connection closed")
        status = int(status_line.split()[1])
        length = 0
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        payload = await self.reader.readexactly(length) if length else b""
        return status, (json.loads(payload) if payload else None)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


@dataclass
class Machine:
    """What the benchmark ran on, and how loaded the machine was."""

    cores: int = field(default_factory=lambda: os.cpu_count() or 0)
    load_before: tuple[float, ...] = field(default_factory=os.getloadavg)
    load_after: tuple[float, ...] = ()

    def done(self) -> dict[str, Any]:
        self.load_after = os.getloadavg()
        return {"cores": self.cores, "load_before": self.load_before,
                "load_after": self.load_after}  # fmt: skip
