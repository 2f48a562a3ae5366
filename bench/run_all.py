"""Run every benchmark and collect the figures in one table and bench/results/latest.json.

Runs, each in its own interpreter with ``--json``: ``overhead.py`` (framework cost per turn
against raw transitions), ``instructions.py`` (the same in instructions, under callgrind),
``sessions.py`` (memory of 100,000 live sessions, restoring one),
``check_scale.py`` (load, check and compile of generated policies of 100 to 10,000 states),
``start.py`` (import and ``sopagent chat`` start-up), ``embedded_turns.py`` (turns on the
embedded model against a raw llama.cpp forward pass, tokens per turn), ``hosted_tokens.py``
(tokens per turn through the OpenAI backend and a real server, with and without prefix
reuse), ``clinc_eval.py``
(intent accuracy on CLINC150) and ``npc.py`` (game NPCs). Their own output goes to stderr;
stdout gets one markdown table with machine information on top, then the performance targets
with the figure that decides each, its baseline, the ratio and whether it is met.

    python bench/run_all.py [--quick] [--only NAME ...] [--out FILE]    (or: make bench)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BENCHMARKS = (
    "overhead",
    "instructions",
    "sessions",
    "check_scale",
    "start",
    "embedded_turns",
    "hosted_tokens",
    "clinc_eval",
    "npc",
)
# Options per benchmark (full run, --quick run) where they differ from none / --quick.
OPTIONS: dict[str, tuple[list[str], list[str]]] = {
    "clinc_eval": ([], ["--oos", "200", "--limit", "100"]),
    # The 100,000 sessions of the target even when quick: only the restore timing is shortened.
    "sessions": ([], ["--reps", "50"]),
    # The 10,000-state target is decided by a median even when quick, never by one sample.
    "check_scale": (
        ["--sizes", "100", "1000", "10000", "--intents", "50", "--reps", "5"],
        ["--sizes", "100", "1000", "10000", "--intents", "50", "--reps", "3"],
    ),
}


@dataclass(frozen=True)
class Target:
    """A performance target: a figure of one benchmark and the limit it must stay within."""

    goal: str
    benchmark: str
    figure: str  # the start of the figure's name
    limit: float
    on: str = "value"  # or "ratio"


TARGETS = (
    Target("framework turn <= 25 µs", "overhead", "turn, median over the conversation (Mem", 25),
    Target(
        "framework turn <= 4x a raw trigger",
        "overhead",
        "turn vs raw trigger, paired (Mem",
        4,
        "ratio",
    ),
    Target("100,000 live sessions < 300 MB", "sessions", "100,000 live refund sessions", 300),
    Target("restore a session < 20 µs", "sessions", "restore a session", 20),
    Target("10,000 states load+check+compile < 3 s", "check_scale", "10,000 states", 3),
    Target("import sopagent < 150 ms", "start", "import sopagent", 150),
    Target("sopagent chat ready < 2 s", "start", "sopagent chat: launch to greeting", 2000),
    Target(
        "model turn <= 1.3x its limit (forward pass)",
        "embedded_turns",
        "warm model turns, paired",
        1.3,
        "ratio",
    ),
)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def git_revision() -> str | None:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "sopagent"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + (" (sopagent/ modified)" if dirty else "")


def machine_info() -> dict[str, Any]:
    import sopagent  # noqa: PLC0415 (imported here so the benchmarks time a fresh import)

    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "sopagent": sopagent.__version__,
        "transitions": version("transitions"),
        "pydantic": version("pydantic"),
        "llama_cpp_python": version("llama_cpp_python"),
        "git": git_revision(),
        "load_average_at_start": [round(x, 2) for x in load] if load else None,
    }


def run_benchmark(name: str, quick: bool, workdir: Path) -> dict[str, Any]:
    out = workdir / f"{name}.json"
    full, fast = OPTIONS.get(name, ([], ["--quick"]))
    options = fast if quick else full
    shown = " ".join([f"bench/{name}.py", *options])
    command = [sys.executable, str(HERE / f"{name}.py"), *options, "--json", str(out)]
    print(f"$ python {shown} --json ...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    # The benchmark's own output is progress for the reader: send it to stderr.
    subprocess.run(command, cwd=ROOT, check=True, stdout=sys.stderr)
    result: dict[str, Any] = json.loads(out.read_text())
    return {
        "command": f"python {shown}",
        "seconds": round(time.perf_counter() - started, 1),
        "result": result,
    }


def clinc_rows(figures: dict[str, Any]) -> list[dict[str, Any]]:
    """clinc_eval.py writes a flat dict: turn it into table rows (it has no baselines)."""
    units = {"latency_ms_median": "ms", "latency_ms_p90": "ms", "load_s": "s"}
    rows = []
    for key, value in figures.items():
        if value is None:
            continue
        rows.append(
            {
                "name": key,
                "value": value,
                "unit": units.get(key, ""),
                "baseline": None,
                "baseline_name": None,
                "ratio": None,
                "n": None,
                "note": "",
            }
        )
    return rows


def fmt(value: Any, unit: str) -> str:
    if isinstance(value, float):
        text = f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"
    else:
        text = str(value)
    return f"{text} {unit}".strip()


def table(info: dict[str, Any], results: dict[str, dict[str, Any]]) -> str:
    lines = [
        "## sopagent benchmarks",
        "",
        f"- date: {info['date']}",
        f"- platform: {info['platform']}",
        f"- CPU: {info['cpu']}, {info['cores']} cores"
        f" (load average at start {info['load_average_at_start']})",
        f"- Python {info['python']}, sopagent {info['sopagent']}, transitions"
        f" {info['transitions']}, pydantic {info['pydantic']}, llama-cpp-python"
        f" {info['llama_cpp_python']}, git {info['git']}",
        "",
        "| benchmark | figure | value | p90 | baseline | ratio |",
        "|---|---|---:|---:|---|---:|",
    ]
    for name, run in results.items():
        figures = run["result"]
        rows = clinc_rows(figures) if name == "clinc_eval" else figures["figures"]
        for r in rows:
            base = ""
            if r.get("baseline") is not None:
                base = f"{fmt(r['baseline'], r['unit'])} ({r['baseline_name']})"
            ratio = "" if r.get("ratio") is None else f"{r['ratio']:g}x"
            high = "" if r.get("p90") is None else fmt(r["p90"], r["unit"])
            value = fmt(r["value"], r["unit"])
            lines.append(f"| {name} | {r['name']} | {value} | {high} | {base} | {ratio} |")
    lines += ["", *targets(results), ""]
    lines.append(
        "Commands (each with --json): "
        + ", ".join(f"`{run['command']}` ({run['seconds']} s)" for run in results.values())
    )
    return "\n".join(lines)


def targets(results: dict[str, dict[str, Any]]) -> list[str]:
    """The performance targets, each with its figure, baseline, ratio and whether it is met."""
    lines = [
        "| target | figure | value | baseline | ratio | met |",
        "|---|---|---:|---|---:|:---:|",
    ]
    for target in TARGETS:
        run = results.get(target.benchmark)
        if run is None:
            continue
        found = [r for r in run["result"]["figures"] if r["name"].startswith(target.figure)]
        if not found:
            lines.append(f"| {target.goal} | (no figure) | | | | |")
            continue
        r = found[0]
        measured = r["ratio"] if target.on == "ratio" else r["value"]
        met = "yes" if measured is not None and measured <= target.limit else "**no**"
        base = ""
        if r.get("baseline") is not None:
            base = f"{fmt(r['baseline'], r['unit'])} ({r['baseline_name']})"
        ratio = "" if r.get("ratio") is None else f"{r['ratio']:g}x"
        value = fmt(r["value"], r["unit"])
        lines.append(f"| {target.goal} | {r['name']} | {value} | {base} | {ratio} | {met} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="fewer repetitions; clinc_eval with --oos 200 --limit 100",
    )
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, help="run only these")
    parser.add_argument(
        "--out", type=Path, default=HERE / "results" / "latest.json", help="combined JSON"
    )
    args = parser.parse_args(argv)

    info = machine_info()
    started = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="sopagent-bench-") as tmp:
        for name in args.only or BENCHMARKS:
            results[name] = run_benchmark(name, args.quick, Path(tmp))
    info["total_seconds"] = round(time.perf_counter() - started, 1)
    info["quick"] = args.quick

    print(table(info, results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"machine": info, "benchmarks": results}, indent=2, ensure_ascii=False) + "\n"
    )
    print(f"\nwrote {args.out} ({info['total_seconds']} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
