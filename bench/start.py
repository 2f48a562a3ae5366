"""Import and start-up: ``import sopagent``, the core API, and ``sopagent chat`` ready for input.

Every figure is a fresh interpreter (bytecode cached), median over ``--reps`` runs:

* ``python -c pass``: the interpreter alone, the baseline of the import figures.
* ``import sopagent``: the package; public names load on first use.
* ``from sopagent import Agent, load_agent``: the run step and everything it needs (pydantic's
  policy models, transitions, the compiler), what a program serving a policy imports.
* ``sopagent chat policies/refund.yaml`` on the embedded model: from launch until the agent's
  greeting is on standard output (ready for input), and until its answer to the first message.
  Baseline: a fresh interpreter that imports llama-cpp-python and loads the same GGUF file.

    python bench/start.py [--reps N] [--quick] [--json FILE]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _report import markdown, median, row, write_json

ROOT = Path(__file__).resolve().parent.parent
POLICY = ROOT / "policies" / "refund.yaml"
SOPAGENT = Path(sys.executable).with_name("sopagent")
FIRST = "hi, I would like my money back for an order"


def wall(code: str) -> float:
    """Milliseconds to run ``python -c code`` in a fresh interpreter."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, stderr=subprocess.DEVNULL)
    return (time.perf_counter() - start) * 1000


def chat_times() -> tuple[float, float]:
    """Milliseconds from launching ``sopagent chat`` to its greeting and to its first answer."""
    env = dict(os.environ, COLUMNS="200")
    start = time.perf_counter()
    process = subprocess.Popen(
        [str(SOPAGENT), "chat", str(POLICY)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
        env=env,
    )
    assert process.stdin is not None
    assert process.stdout is not None
    greeting = process.stdout.readline()
    ready = (time.perf_counter() - start) * 1000
    if not greeting.strip():
        raise SystemExit("sopagent chat printed no greeting")
    process.stdin.write(FIRST + "\n")
    process.stdin.flush()
    answered = ready
    for line in process.stdout:
        if line.strip() and FIRST not in line:
            answered = (time.perf_counter() - start) * 1000
            break
    process.stdin.close()
    process.wait(timeout=60)
    return ready, answered


def model_path() -> str:
    code = "from sopagent.backends.llamacpp import default_model_path; print(default_model_path())"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return out.stdout.strip()


def measure(reps: int, chat_reps: int) -> dict[str, Any]:
    samples: dict[str, list[float]] = {
        "pass": [],
        "import": [],
        "core": [],
        "llama": [],
        "ready": [],
        "answer": [],
    }
    load_llama = (
        "from llama_cpp import Llama; "
        f"Llama(model_path={model_path()!r}, n_ctx=2048, verbose=False, n_threads=2)"
    )
    wall("import sopagent._agent")  # warm the bytecode and the file cache
    for _ in range(reps):
        samples["pass"].append(wall("pass"))
        samples["import"].append(wall("import sopagent"))
        samples["core"].append(wall("from sopagent import Agent, load_agent"))
    chat_times()  # warm: the model file is assembled on the first run
    for _ in range(chat_reps):
        samples["llama"].append(wall(load_llama))
        ready, answer = chat_times()
        samples["ready"].append(ready)
        samples["answer"].append(answer)
    m = {name: median(values) for name, values in samples.items()}
    rows = [
        row("python -c pass (fresh interpreter)", m["pass"], "ms", n=reps),
        row(
            "import sopagent",
            m["import"],
            "ms",
            baseline=m["pass"],
            baseline_name="python -c pass",
            note=f"{m['import'] - m['pass']:.1f} ms above the interpreter",
            n=reps,
        ),
        row(
            "from sopagent import Agent, load_agent (the run step)",
            m["core"],
            "ms",
            baseline=m["pass"],
            baseline_name="python -c pass",
            note=f"{m['core'] - m['pass']:.1f} ms above the interpreter",
            n=reps,
        ),
        row(
            "sopagent chat: launch to greeting (ready for input), embedded model",
            m["ready"],
            "ms",
            baseline=m["llama"],
            baseline_name="fresh interpreter loading the GGUF with llama-cpp-python",
            n=chat_reps,
        ),
        row(
            "sopagent chat: launch to the answer to the first message",
            m["answer"],
            "ms",
            baseline=m["ready"],
            baseline_name="launch to greeting",
            n=chat_reps,
        ),
    ]
    return {"samples_ms": samples, "figures": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--chat-reps", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="5 import runs, 2 chat runs")
    parser.add_argument("--json", type=Path, metavar="FILE")
    args = parser.parse_args(argv)
    reps, chat_reps = (5, 2) if args.quick else (args.reps, args.chat_reps)
    result = measure(reps, chat_reps)
    print(markdown(result["figures"]))
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
