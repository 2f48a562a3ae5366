"""Tokens per turn on the hosted-model path: the OpenAI backend against a real server.

The refund conversations of ``embedded_turns.py`` (user texts, not forced labels) run through
`sopagent.backends.openai.from_openai` against llama-cpp-python's OpenAI-compatible server
(``python -m llama_cpp.server``), started on 127.0.0.1 with the embedded model, exactly as the
backend would reach vLLM, Ollama or OpenAI. Per turn, from the server's own ``usage``: model
calls, prompt tokens and completion tokens (the JSON answer the server generates under its
schema grammar).

**With and without prefix reuse.** The backend's classify prompt puts the policy's part (its
instructions and every intent) first and the state's part (the intents allowed now) last, so
consecutive requests share a long prefix that a server with prefix caching evaluates once
(OpenAI's prompt caching, vLLM's prefix caching, llama.cpp's KV reuse). The server here logs,
for each request, how many tokens of the prompt matched the previous one's
(``Llama.generate: N prefix-match hit``); the tokens it evaluated are the prompt tokens less
those. Without prefix reuse, a server evaluates every prompt token: that is the baseline.

Rasa CALM's published cost of a turn (~1,000 prompt, ~10 completion tokens) is shown beside
them: a published figure, not measured here.

    python bench/hosted_tokens.py [--reps N] [--quick] [--json FILE]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _report import markdown, mean, median, row, write_json
from _serve import free_port, wait_http
from embedded_turns import CONVERSATIONS, POLICY, RASA_CALM, forget_refunds

import sopagent
from sopagent.audit import NullSink

_REUSED = re.compile(r"Llama\.generate: (\d+) prefix-match hit")
_WHOLE = "Llama.generate: full prompt already cached"


class Server:
    """``python -m llama_cpp.server`` on the embedded model, its log in a file."""

    def __init__(self, log: Path) -> None:
        from sopagent.backends.llamacpp import default_model_path  # noqa: PLC0415

        self.log = log
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        command = [
            sys.executable, "-m", "llama_cpp.server",
            "--model", str(default_model_path()),
            "--host", "127.0.0.1", "--port", str(self.port),
            "--n_ctx", "4096", "--verbose", "True",
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
        env["PYTHONUNBUFFERED"] = "1"
        self._out = log.open("wb")
        self.process = subprocess.Popen(
            command, stdout=self._out, stderr=subprocess.STDOUT, env=env
        )
        self._read = 0

    def wait(self) -> str:
        """The model id, once ``GET /v1/models`` answers."""
        import openai  # noqa: PLC0415

        try:
            wait_http(self.port, self.process, "/v1/models")
        except RuntimeError as exc:
            raise SystemExit(f"{exc}:\n{self.tail()}") from None
        with openai.OpenAI(base_url=self.base_url, api_key="local", max_retries=0) as client:
            return str(client.models.list().data[0].id)

    def new_lines(self) -> str:
        """What the server logged since the last call."""
        with self.log.open("rb") as log:
            log.seek(self._read)
            data = log.read()
        self._read += len(data)
        return data.decode("utf-8", errors="replace")

    def tail(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")[-2000:]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)
        self._out.close()


def reused_tokens(log: str, turn: sopagent.Turn) -> int:
    """Prompt tokens of the turn's requests that the server did not evaluate again."""
    reused = sum(int(found) for found in _REUSED.findall(log))
    if _WHOLE in log and turn.model_calls == 1:
        reused = turn.prompt_tokens  # the very same prompt as the request before
    return min(reused, turn.prompt_tokens)


def run(reps: int) -> dict[str, Any]:
    import openai  # noqa: PLC0415 (the benchmark's own dependency)

    from sopagent.backends.openai import from_openai  # noqa: PLC0415

    compiled = sopagent.compile_policy(sopagent.load_policy(POLICY))
    turns: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="sopagent-hosted-") as tmp:
        server = Server(Path(tmp) / "server.log")
        try:
            model = server.wait()
            client = openai.OpenAI(base_url=server.base_url, api_key="local", max_retries=0)
            backend = from_openai(client, model=model, dialect="llamacpp", timeout=120)
            agent = sopagent.Agent(compiled, backend, audit=NullSink())
            server.new_lines()
            for rep in range(reps):
                for name, texts in CONVERSATIONS.items():
                    forget_refunds(compiled)
                    session = agent.new_session()
                    agent.start(session)
                    for text in texts:
                        server.new_lines()
                        started = time.perf_counter()
                        turn = agent.respond(session, text)
                        elapsed = time.perf_counter() - started
                        if turn.error is not None:
                            raise SystemExit(f"{name}: {text!r} failed: {turn.error}")
                        reused = reused_tokens(server.new_lines(), turn) if turn.model_calls else 0
                        turns.append(
                            {
                                "rep": rep,
                                "conversation": name,
                                "text": text,
                                "intent": turn.intent,
                                "state_after": turn.state_after,
                                "model_calls": turn.model_calls,
                                "prompt_tokens": turn.prompt_tokens,
                                "completion_tokens": turn.completion_tokens,
                                "reused_tokens": reused,
                                "ms": elapsed * 1000,
                            }
                        )
        finally:
            server.stop()
    return {"benchmark": "hosted_tokens", "reps": reps, "model": model, "turns": turns}


def figures(result: dict[str, Any]) -> list[dict[str, Any]]:
    turns = result["turns"]
    called = [t for t in turns if t["model_calls"]]
    calls = sum(t["model_calls"] for t in turns)
    prompt = [t["prompt_tokens"] for t in turns]
    evaluated = [t["prompt_tokens"] - t["reused_tokens"] for t in turns]
    per_call_prompt = sum(prompt) / calls
    per_call_evaluated = sum(evaluated) / calls
    rasa = "Rasa CALM, published"
    return [
        row("model calls per turn (all turns)", mean([t["model_calls"] for t in turns]), "calls",
            baseline=RASA_CALM["calls"], baseline_name=rasa, n=len(turns)),
        row("prompt tokens per turn, without prefix reuse (all evaluated)", mean(prompt),
            "tokens", baseline=RASA_CALM["prompt_tokens"], baseline_name=rasa, n=len(turns)),
        row("prompt tokens evaluated per turn, with prefix reuse", mean(evaluated), "tokens",
            baseline=RASA_CALM["prompt_tokens"], baseline_name=rasa, n=len(turns)),
        row("completion tokens per turn", mean([t["completion_tokens"] for t in turns]),
            "tokens", baseline=RASA_CALM["completion_tokens"], baseline_name=rasa, n=len(turns)),
        row("prompt tokens per model call", per_call_prompt, "tokens", n=calls),
        row("prompt tokens evaluated per model call, with prefix reuse", per_call_evaluated,
            "tokens", baseline=per_call_prompt, baseline_name="without prefix reuse", n=calls),
        row("completion tokens per model call",
            sum(t["completion_tokens"] for t in turns) / calls, "tokens", n=calls),
        row("turn with a model call, over HTTP (median)", median([t["ms"] for t in called]),
            "ms", n=len(called)),
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3, help="runs of every conversation")
    parser.add_argument("--quick", action="store_true", help="one run of every conversation")
    parser.add_argument("--json", type=Path, metavar="FILE")
    args = parser.parse_args(argv)
    result = run(1 if args.quick else args.reps)
    result["figures"] = figures(result)
    print(markdown(result["figures"]))
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
