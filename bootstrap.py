#!/usr/bin/env python3
"""Set up a virtual environment for sopagent and run the demo or the test suite.

    python3 bootstrap.py demo     # set up, then chat with the refund agent on the embedded model
    python3 bootstrap.py test     # set up, then run ruff, mypy and the whole pytest suite
    python3 bootstrap.py setup    # only set up

Needs only Python 3.11+ and the package registries. llama-cpp-python has no Linux wheel, so it
is built once from source, portable (no CPU-specific kernels: the native build crashes on some
CPUs), and the wheel is kept in the user's cache directory for every later setup.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("SOPAGENT_VENV", ROOT / ".venv"))
LLAMA = "llama-cpp-python==0.3.36"


def cache_dir() -> Path:
    explicit = os.environ.get("SOPAGENT_CACHE")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sopagent"


def run(*command: str | Path, env: dict[str, str] | None = None) -> None:
    print("+", " ".join(str(c) for c in command), flush=True)
    subprocess.run([str(c) for c in command], check=True, env=env)


def bin_path(name: str) -> Path:
    return VENV / ("Scripts" if os.name == "nt" else "bin") / name


def llama_wheel(python: Path) -> Path:
    wheels = cache_dir() / "wheels"
    version = LLAMA.split("==")[1]
    found = sorted(wheels.glob(f"llama_cpp_python-{version}-*.whl"))
    if found:
        return wheels
    wheels.mkdir(parents=True, exist_ok=True)
    print(f"building {LLAMA} once (about 5-10 minutes); the wheel is cached in {wheels}")
    env = dict(os.environ, CMAKE_ARGS="-DGGML_NATIVE=OFF", CMAKE_BUILD_PARALLEL_LEVEL="2")
    run(
        python, "-m", "pip", "wheel", "--no-deps", "--no-cache-dir",
        "--no-binary", "llama-cpp-python", LLAMA, "-w", wheels, env=env,
    )  # fmt: skip
    return wheels


def setup() -> None:
    python = bin_path("python")
    if not python.exists():
        print(f"creating virtual environment {VENV}")
        venv.create(VENV, with_pip=True)
        run(python, "-m", "pip", "install", "--quiet", "--upgrade", "pip")
    stamp = VENV / ".sopagent-installed"
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text() == digest:
        return
    wheels = llama_wheel(python)
    run(
        python, "-m", "pip", "install", "--quiet",
        "--find-links", wheels, "--only-binary", "llama-cpp-python",
        "-e", f"{ROOT}[embedded,dev]",
    )  # fmt: skip
    stamp.write_text(digest)


def main(argv: list[str]) -> int:
    task = argv[0] if argv else "demo"
    if task not in ("setup", "demo", "test"):
        print(__doc__)
        return 2
    os.chdir(ROOT)
    setup()
    if task == "demo":
        os.execv(bin_path("sopagent"), ["sopagent", "chat", "policies/refund.yaml", *argv[1:]])
    if task == "test":
        run(bin_path("ruff"), "check", ".")
        run(bin_path("mypy"))
        os.execv(bin_path("pytest"), ["pytest", *argv[1:]])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
