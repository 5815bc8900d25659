"""Sessions: tests, lint, demo, reproduce, bench. A thin shell over `zoo` and pytest.

The OpenMMLab stack takes ~10 minutes to install the first time (mmcv compiles from source), so
the stack sessions share ONE virtualenv, `.nox/stack`, rebuilt only when the lock changes
(sha256 of requirements/constraints.txt + pyproject.toml, stamped inside the venv).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path

import nox

ROOT = Path(__file__).parent
STACK = ROOT / ".nox" / "stack"
LOCK_INPUTS = (ROOT / "requirements" / "constraints.txt", ROOT / "pyproject.toml")
PYTHON = "3.11"  # the CPU torch wheel and xtcocotools wheels are cp311 (README "Install")

nox.options.sessions = ["tests"]
nox.options.default_venv_backend = "venv"


def _lock_digest() -> str:
    h = hashlib.sha256()
    for path in LOCK_INPUTS:
        h.update(path.read_bytes())
    return h.hexdigest()


def _find_python(session: nox.Session) -> str:
    exe = shutil.which(f"python{PYTHON}")
    if exe is None and sys.version_info[:2] == tuple(map(int, PYTHON.split("."))):
        exe = sys.executable
    if exe is None:
        session.error(f"python{PYTHON} not found on PATH (the pinned CPU torch wheel is cp311)")
    return exe


def stack(session: nox.Session) -> Path:
    """Create or reuse `.nox/stack`; return its bin dir. Installs exactly as the README says."""
    stamp = STACK / "zoo-lock.sha256"
    bindir = STACK / "bin"
    digest = _lock_digest()
    if stamp.exists() and stamp.read_text().strip() == digest:
        session.log(f"reusing {STACK} (lock unchanged)")
        return bindir
    if STACK.exists():
        session.log(f"lock changed: rebuilding {STACK}")
        shutil.rmtree(STACK)
    session.run(_find_python(session), "-m", "venv", str(STACK), external=True)
    pip = [str(bindir / "python"), "-m", "pip", "install", "-c", "requirements/constraints.txt"]
    # 1. torch (local CPU wheel) and a setuptools that still has pkg_resources (mmcv's setup.py imports it)
    session.run(*pip, "torch", "setuptools", "wheel", "ninja", external=True)
    # 2. everything else without build isolation, so mmcv compiles against that torch and setuptools
    session.run(*pip, "--no-build-isolation", "-e", ".[test]", external=True, env={"MAX_JOBS": "2"})
    stamp.write_text(digest + "\n")
    return bindir


@nox.session(venv_backend="none")
def tests(session: nox.Session) -> None:
    """The full test suite on CPU (the CI gate)."""
    bindir = stack(session)
    session.run(str(bindir / "python"), "-m", "pytest", *(session.posargs or ["-q"]), external=True)


@nox.session(python=PYTHON, reuse_venv=True)
def lint(session: nox.Session) -> None:
    session.install("-c", "requirements/constraints.txt", "ruff")
    session.run("ruff", "check", "zoo", "tests", "benchmarks", "noxfile.py")
    session.run("ruff", "format", "--check", "zoo", "tests", "benchmarks", "noxfile.py")


@nox.session(venv_backend="none")
def demo(session: nox.Session) -> None:
    """The whole pipeline offline on embedded synthetic data (`zoo demo`): writes runs/demo/ (untracked).
    `-- --out reports/demo` refreshes the committed example, `-- --perturb` shows the gate failing."""
    bindir = stack(session)
    session.run(str(bindir / "zoo"), "demo", *session.posargs, external=True)


@nox.session(venv_backend="none")
def reproduce(session: nox.Session) -> None:
    """fetch -> verify data -> run -> check -> report on the real data (`zoo reproduce`)."""
    bindir = stack(session)
    session.run(str(bindir / "zoo"), "reproduce", *session.posargs, external=True)


CPU_BENCHMARKS = ("eval_speed", "data_speed", "postprocess_speed", "table_speed", "startup_speed")
GPU_BENCHMARKS = ("gpu_speed", "gpu_pipeline")  # need CUDA: run by name (or benchmarks/gpu_run.sh)
BENCHMARKS = CPU_BENCHMARKS + GPU_BENCHMARKS


@nox.session(venv_backend="none")
def bench(session: nox.Session) -> None:
    """Performance benchmarks (results under benchmarks/results/): the CPU ones by default; `-- NAME ARGS...`
    runs one (GPU ones included) with ARGS."""
    bindir = stack(session)
    env = {"PYTHONPATH": str(ROOT)}
    if session.posargs and session.posargs[0] in BENCHMARKS:
        plan = [(session.posargs[0], session.posargs[1:])]
    elif session.posargs:
        session.error(f"unknown benchmark {session.posargs[0]!r}; choose one of {', '.join(BENCHMARKS)}")
    else:
        plan = [(name, []) for name in CPU_BENCHMARKS]
    for name, args in plan:
        session.run(str(bindir / "python"), "-m", f"benchmarks.{name}", *args, external=True, env=env)


if os.environ.get("CI"):
    nox.options.error_on_missing_interpreters = True
