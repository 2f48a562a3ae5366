"""How `sopagent check` and compile scale: time and peak memory on policies of 10 to 10,000 states.

Policies come from ``bench/generate_policy.py`` (20 intents by default). Every repetition runs
in a fresh interpreter, so no cache (imported decision modules, parsed syntax trees, warmed
allocator) carries over between repetitions; figures are medians, and the repetitions go in
rounds over every size and kind of measurement, so that a change in the machine's load is
shared by all figures. A child process measures, in this order:

* **parse (baseline)**: ``yaml.load`` with libyaml's safe loader of the policy and catalog
  text: the least any YAML tool pays to read the same files;
* **load**: `load_policy` and `load_catalog` (YAML with locations, pydantic validation);
  also, in other children, with the garbage collector left running during the load, as the
  loader did before it paused it (``sopagent._load.collection_paused``);
* **check**: every rule of `sopagent check` on the loaded policy (`check_loaded`);
* **compile**: `compile_policy` on the same objects (the reference check, which it reuses
  from the check just made on them, and the transitions machine).

A second child per size measures peak Python memory with tracemalloc (which slows the code, so
its times are not used): peak while loading and checking, and peak while compiling. A third
kind of child is the whole command a user runs, ``python -m sopagent check POLICY``, timed
wall-clock against ``python -c "import sopagent"`` in the same run.

Growth is reported as the ratio of one size's median to the previous size's: with ten times the
states, a linear cost is ten times larger. ``--baseline-rev REV`` also times the command of an
earlier git revision of this repository (its package extracted with ``git archive`` and put
first on ``PYTHONPATH``), interleaved with the current one, to show a change's effect on the
same machine in the same run.

    python bench/check_scale.py [--sizes 10 100 1000 10000] [--reps 5] [--quick] [--json FILE]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

from _report import median, row, write_json

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

_CHILD = r"""
import json, sys, time
mode, path = sys.argv[1], sys.argv[2]
if mode == "memory":
    import tracemalloc
    tracemalloc.start()
started = time.perf_counter()
import yaml
from pathlib import Path
from sopagent._analysis import check_loaded
from sopagent._compile import compile_policy
from sopagent._load import load_catalog, load_policy
if mode == "collector":
    import contextlib
    import sopagent._load
    sopagent._load.collection_paused = contextlib.nullcontext  # the loader as it was before
imported = time.perf_counter()
policy_file = Path(path)
catalog_file = policy_file.with_name("catalog.yaml")
out = {"import_s": imported - started}
if mode == "time":
    t0 = time.perf_counter()
    for name in (policy_file, catalog_file):
        yaml.load(name.read_text(encoding="utf-8"), Loader=yaml.CSafeLoader)
    out["parse_s"] = time.perf_counter() - t0
t0 = time.perf_counter()
if mode == "memory":
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
policy = load_policy(policy_file)
catalog = load_catalog(catalog_file)
t1 = time.perf_counter()
problems = check_loaded(policy, catalog)
t2 = time.perf_counter()
if mode == "memory":
    out["peak_check_bytes"] = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
t3 = time.perf_counter()
compiled = compile_policy(policy, catalog)
t4 = time.perf_counter()
if mode == "memory":
    out["peak_compile_bytes"] = tracemalloc.get_traced_memory()[1] - base
out.update(
    load_s=t1 - t0,
    check_s=t2 - t1,
    compile_s=t4 - t3,
    findings=len(problems),
    states=len(compiled.states),
)
print(json.dumps(out))
"""


def _child(mode: str, policy: Path) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, mode, str(policy)],
        capture_output=True,
        text=True,
        check=True,
        cwd=policy.parent,
    )
    figures: dict[str, Any] = json.loads(result.stdout)
    return figures


def _wall(args: list[str], cwd: Path, pythonpath: str | None = None) -> float:
    """Wall time of a command run in ``cwd``.

    ``cwd`` must not hold a ``sopagent`` directory: ``python -m`` and ``-c`` put the working
    directory first on the import path, before ``PYTHONPATH``.
    """
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    started = time.perf_counter()
    subprocess.run(args, capture_output=True, check=False, env=env, cwd=cwd)
    return time.perf_counter() - started


def _extract(revision: str, into: Path) -> Path:
    """The package of ``revision`` unpacked into ``into`` (for PYTHONPATH)."""
    into.mkdir(parents=True, exist_ok=True)
    archive = into / "rev.tar"
    with archive.open("wb") as out:
        subprocess.run(
            ["git", "archive", "--format=tar", revision, "sopagent"],
            cwd=ROOT,
            stdout=out,
            check=True,
        )
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return into


def measure(sizes: list[int], intents: int, reps: int, baseline_rev: str | None) -> dict[str, Any]:
    from generate_policy import generate  # noqa: PLC0415 (beside this script)

    before = os.getloadavg()
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="sopagent-check-scale-") as tmp:
        old_path = str(_extract(baseline_rev, Path(tmp) / "rev")) if baseline_rev else None
        policies = {s: generate(Path(tmp) / f"p{s}", states=s, intents=intents) for s in sizes}
        memory = {s: _child("memory", policies[s]) for s in sizes}
        samples: dict[int, dict[str, list[Any]]] = {
            s: {"runs": [], "collector": [], "import": [], "cli": [], "old": []} for s in sizes
        }
        # Rounds over every size and kind, so that a change in the machine's load hits all
        # figures alike instead of one size.
        for round_number in range(reps):
            for size in sizes:
                policy, got = policies[size], samples[size]
                here = policy.parent
                command = [sys.executable, "-m", "sopagent", "check", str(policy)]
                got["runs"].append(_child("time", policy))
                got["collector"].append(_child("collector", policy)["load_s"])
                got["import"].append(_wall([sys.executable, "-c", "import sopagent"], here))
                got["cli"].append(_wall(command, here))
                if old_path is not None:
                    got["old"].append(_wall(command, here, old_path))
            print(f"round {round_number + 1} of {reps}", file=sys.stderr)
        for size in sizes:
            policy, got = policies[size], samples[size]
            runs = got["runs"]
            figure: dict[str, Any] = {
                "states": size,
                "intents": intents,
                "reps": reps,
                "findings": runs[0]["findings"],
                "policy_bytes": policy.stat().st_size,
                "catalog_bytes": policy.with_name("catalog.yaml").stat().st_size,
            }
            for key in ("parse_s", "load_s", "check_s", "compile_s"):
                figure[key] = median([r[key] for r in runs])
            figure["load_check_s"] = median([r["load_s"] + r["check_s"] for r in runs])
            figure["load_collector_on_s"] = median(got["collector"])
            figure["peak_check_mib"] = memory[size]["peak_check_bytes"] / 2**20
            figure["peak_compile_mib"] = memory[size]["peak_compile_bytes"] / 2**20
            figure["cli_s"] = median(got["cli"])
            figure["import_s"] = median(got["import"])
            if got["old"]:
                figure["cli_baseline_rev_s"] = median(got["old"])
            results.append(figure)
    for previous, current in itertools.pairwise(results):
        for key in ("load_check_s", "check_s", "compile_s", "peak_check_mib"):
            current[f"growth_{key}"] = current[key] / previous[key] if previous[key] else None
    figures = []
    for r in results:
        total = r["load_s"] + r["check_s"] + r["compile_s"]
        figures.append(
            row(
                f"{r['states']:,} states, {intents} intents: load + check + compile",
                total,
                "s",
                baseline=r["parse_s"],
                baseline_name="parsing the same YAML (yaml.CSafeLoader)",
                note=f"peak {r['peak_compile_mib']:.0f} MiB",
                n=reps,
            )
        )
    for previous, current in itertools.pairwise(list(figures)):
        figures.append(
            row(
                f"growth {previous['name'].split(' states')[0]} -> {current['name']}",
                current["value"],
                "s",
                baseline=previous["value"],
                baseline_name=f"{previous['name'].split(' states')[0]} states",
                note="x10 states: linear growth is a ratio near 10",
            )
        )
    return {
        "benchmark": "check_scale",
        "figures": figures,
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "load_average_before": before,
        "load_average_after": os.getloadavg(),
        "baseline_rev": baseline_rev,
        "results": results,
    }


def _ms(value: float) -> str:
    return f"{value * 1000:,.1f}"


def table(result: dict[str, Any]) -> str:
    rows = result["results"]
    load = ", ".join(f"{a:.1f}" for a in result["load_average_before"])
    lines = [
        f"{result['cpus']} CPUs, load average {load} when it started; medians of"
        f" {rows[0]['reps']} fresh processes each.",
        "",
        "| states | parse (baseline) ms | load ms | check ms | load+check ms | x parse |"
        " compile ms | peak MiB load+check | peak MiB compile | `sopagent check` ms |"
        " `import sopagent` ms |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['states']:,} | {_ms(r['parse_s'])} | {_ms(r['load_s'])} |"
            f" {_ms(r['check_s'])} | {_ms(r['load_check_s'])} |"
            f" {r['load_check_s'] / r['parse_s']:.1f}x | {_ms(r['compile_s'])} |"
            f" {r['peak_check_mib']:.1f} | {r['peak_compile_mib']:.1f} | {_ms(r['cli_s'])} |"
            f" {_ms(r['import_s'])} |"
        )
    lines += [
        "",
        "| states | x10 growth: parse (baseline) | load+check | check | compile | peak memory |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for previous, r in itertools.pairwise(rows):
        lines.append(
            f"| {r['states']:,} | {r['parse_s'] / previous['parse_s']:.1f}x |"
            f" {r['growth_load_check_s']:.1f}x | {r['growth_check_s']:.1f}x |"
            f" {r['growth_compile_s']:.1f}x | {r['growth_peak_check_mib']:.1f}x |"
        )
    lines += [
        "",
        "| states | load, collector paused ms | load, collector on ms | ratio |",
        "|---:|---:|---:|---:|",
    ]
    for r in rows:
        on = r["load_collector_on_s"]
        lines.append(
            f"| {r['states']:,} | {_ms(r['load_s'])} | {_ms(on)} | {on / r['load_s']:.2f}x |"
        )
    if result["baseline_rev"]:
        lines += [
            "",
            f"| states | `sopagent check` ms, {result['baseline_rev']} | now | ratio |",
            "|---:|---:|---:|---:|",
        ]
        for r in rows:
            old = r["cli_baseline_rev_s"]
            lines.append(
                f"| {r['states']:,} | {_ms(old)} | {_ms(r['cli_s'])} | {r['cli_s'] / old:.2f}x |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000, 10000])
    parser.add_argument("--intents", type=int, default=20)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="3 repetitions")
    parser.add_argument("--baseline-rev", metavar="REV", help="also time this git revision")
    parser.add_argument("--json", type=Path, metavar="FILE")
    args = parser.parse_args(argv)
    reps = 3 if args.quick else args.reps
    result = measure(args.sizes, args.intents, reps, args.baseline_rev)
    print(table(result))
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
