"""Loader fuzzing at volume: N seeded hostile files through everything that reads a policy.

Each case is written to a file and loaded as a policy (then checked and compiled, its catalog
and decision modules loaded) and as a catalog, the way ``load_agent`` and ``sopagent check``
read files. The mix: shipped policies and catalogs mutated (byte flips, deleted, duplicated and
swapped lines, truncations, inserted hostile tokens), random bytes, random text, random YAML
documents, and generated attacks (deep nesting, alias bombs, millions of values, enormous
strings, duplicate keys). A case passes when it loads or raises `sopagent.errors.PolicyError`;
anything else is a crash. Reported: cases run, crashes (must be 0), the slowest case and the
peak resident memory of the process.

    python bench/fuzz.py [--cases 10000] [--seed 8] [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import random
import resource
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

import yaml
from _report import markdown, row, write_json

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sopagent import compile_policy, load_catalog, load_policy  # noqa: E402 (after the path)
from sopagent.errors import PolicyError  # noqa: E402

SHIPPED = sorted((ROOT / "policies").glob("*.yaml")) + sorted((ROOT / "catalogs").glob("*.yaml"))
TOKENS = [
    "&a ", "*a", "*undefined", "!!python/object/apply:os.system ['true'] ", "!!binary ",
    "!custom ", "<<: ", "? ", "- ", ": ", "{", "}", "[", "]", "yes", "no", "on", "off", "010",
    "1:30", ".inf", "~", "\ufeff", "\x00", "\t", "\r", "\u202e", "'", '"', "|", ">", "#",
    "%YAML 1.1\n", "---\n", "\\", "9" * 5000,
]  # fmt: skip
WORDS = ["sopagent", "name", "catalog", "initial", "intents", "states", "global", "slots",
         "responses", "say", "on", "yes", "no", "010", "1:30", "personal", "decisions"]  # fmt: skip


def _texts() -> list[bytes]:
    return [p.read_text(encoding="utf-8").replace("../", f"{ROOT}/").encode() for p in SHIPPED]


def mutated(rng: random.Random, sources: list[bytes]) -> bytes:
    data = bytearray(rng.choice(sources))
    for _ in range(rng.randint(1, 4)):
        op = rng.choice(["flip", "delete", "duplicate", "swap", "truncate", "token"])
        if op == "flip" and data:
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif op == "truncate":
            data = data[: rng.randint(0, len(data))]
        elif op == "token":
            at = rng.randint(0, len(data))
            data[at:at] = rng.choice(TOKENS).encode("utf-8", "surrogatepass")
        else:
            lines = bytes(data).split(b"\n")
            i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
            if op == "delete":
                del lines[i]
            elif op == "duplicate":
                lines.insert(j, lines[i])
            else:
                lines[i], lines[j] = lines[j], lines[i]
            data = bytearray(b"\n".join(lines))
    return bytes(data)


def value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(8 if depth < 4 else 5)
    if kind == 0:
        return rng.choice([None, True, False, 0, -1, 2**70, 1.5, float("inf")])
    if kind in (1, 2):
        return rng.choice(WORDS)
    if kind in (3, 4):
        points = [rng.choice([rng.randrange(32, 127), rng.randrange(0x10FFFF)]) for _ in range(12)]
        return "".join(map(chr, points)).encode("utf-8", "replace").decode()
    if kind == 5:
        return [value(rng, depth + 1) for _ in range(rng.randrange(5))]
    return {rng.choice([*WORDS, rng.randrange(100)]): value(rng, depth + 1)
            for _ in range(rng.randrange(6))}  # fmt: skip


def attack(rng: random.Random) -> bytes:
    kind = rng.randrange(6)
    if kind == 0:
        n = rng.choice([65, 200, 999, 5000, 100_000])
        return (rng.choice(["[", "{a: "]) * n).encode()
    if kind == 1:
        lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
        lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 12)]
        return "\n".join(lines).encode()
    if kind == 2:
        return ("[" + "1," * rng.choice([10_000, 600_000, 4_000_000]) + "1]").encode()
    if kind == 3:
        return ("sopagent: 1\nname: " + "x" * rng.choice([10_000, 8_000_000])).encode()
    if kind == 4:
        return b"a: 1\n" * rng.choice([2, 1000, 100_000])
    return "".join("  " * i + "a:\n" for i in range(rng.choice([63, 70, 900]))).encode()


def case(rng: random.Random, sources: list[bytes]) -> tuple[str, bytes]:
    pick = rng.random()
    if pick < 0.55:
        return "mutated", mutated(rng, sources)
    if pick < 0.70:
        return "bytes", rng.randbytes(rng.randrange(400))
    if pick < 0.80:
        text = "".join(rng.choice(TOKENS + WORDS + [" ", "\n", ": ", "  "]) for _ in range(60))
        return "tokens", text.encode("utf-8", "surrogatepass")
    if pick < 0.99:
        return "yaml", yaml.safe_dump(value(rng), allow_unicode=True).encode()
    return "attack", attack(rng)


def run(path: Path) -> None:
    """Everything that reads a policy file; PolicyError is the only failure allowed."""
    with contextlib.suppress(PolicyError):
        compile_policy(load_policy(path))
    with contextlib.suppress(PolicyError):
        load_catalog(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument("--json", type=Path, default=None, help="Write the result here.")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    sources = _texts()
    kinds: Counter[str] = Counter()
    crashes: list[dict[str, str]] = []
    slowest = (0.0, "", 0)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "policies" / "case.yaml"
        path.parent.mkdir()
        for number in range(args.cases):
            kind, data = case(rng, sources)
            kinds[kind] += 1
            path.write_bytes(data)
            start = time.perf_counter()
            try:
                run(path)
            except Exception as exc:  # a crash is what is counted
                crashes.append({"case": str(number), "kind": kind, "error": repr(exc),
                                "trace": traceback.format_exc(limit=3)})  # fmt: skip
            took = (time.perf_counter() - start) * 1000
            if took > slowest[0]:
                slowest = (took, kind, len(data))
    total = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    mix = ", ".join(f"{k} {v}" for k, v in sorted(kinds.items()))
    rows = [
        row("fuzz cases run", args.cases, "cases", note=mix),
        row("crashes (not PolicyError)", len(crashes), "cases", note="must be 0"),
        row("slowest case", slowest[0], "ms", note=f"{slowest[1]}, {slowest[2]} bytes"),
        row("mean per case", total * 1000 / max(args.cases, 1), "ms"),
        row("peak resident memory", peak_mb, "MiB", note="whole process"),
    ]
    print(f"## Loader fuzzing (seed {args.seed})\n")
    print(markdown(rows))
    for crash in crashes[:10]:
        print(f"\ncase {crash['case']} ({crash['kind']}): {crash['error']}\n{crash['trace']}")
    write_json(args.json, {"seed": args.seed, "rows": rows, "crashes": crashes})
    if crashes:
        sys.exit(1)


if __name__ == "__main__":
    main()
