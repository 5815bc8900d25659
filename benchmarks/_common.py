"""What every benchmark needs: machine info, timing in a child process, and result files.

Each path is measured in its own child process (`run_worker`) so that its peak memory is its own and
one path's warm caches or leftover garbage cannot flatter the other. Result files are written
atomically; `summary.json` is merged under a file lock because several benchmarks update it.
"""

from __future__ import annotations

import csv
import datetime
import hashlib
import io
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from filelock import FileLock

from zoo.fileio import write_atomic

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"
SUMMARY_NAME = "summary.json"


def machine_info(packages: Sequence[str] = ()) -> dict[str, Any]:
    """CPU, cores, memory, OS, Python and the versions of `packages` (distribution names)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        mem_gib = None
    versions = {}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "cpu": cpu,
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": mem_gib,
        "os": platform.platform(),
        "python": platform.python_version(),
        "packages": versions,
    }


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def timed(fn: Callable[[], Any], repeats: int) -> tuple[list[float], Any]:
    """Wall seconds of `repeats` calls of fn (and the last call's return value)."""
    times, result = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return times, result


def median(values: Iterable[float]) -> float:
    return float(statistics.median(list(values)))


def peak_rss_mib() -> float:
    """This process's peak resident memory so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def emit(result: Mapping[str, Any]) -> None:
    """A worker's one JSON line on stdout: what `run_worker` reads back."""
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


def run_worker(
    module: str, args: Sequence[str], timeout: float | None = None, env: Mapping[str, str] | None = None,
    stderr_to: Path | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Run `python -m <module> <args>` in a fresh process and return the JSON of its last stdout line
    (its stderr written to `stderr_to` when given)."""
    cmd = [sys.executable, "-m", module, *args]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
    if stderr_to is not None:
        stderr_to.write_text(proc.stderr)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise RuntimeError(f"{' '.join(cmd)} failed with exit {proc.returncode}: " + " | ".join(tail))
    return json.loads(proc.stdout.strip().splitlines()[-1])


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """CSV with the first row's keys as header, in their order (fixed by the caller)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, buf.getvalue())


def write_text(path: Path, text: str) -> None:
    write_atomic(path, text)


def update_summary(results_dir: Path, updates: Mapping[str, Any]) -> dict[str, Any]:
    """Merge `updates` into results_dir/summary.json (nested dicts merged, other keys kept)."""

    def merge(base: dict[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
        for key, value in new.items():
            if isinstance(value, Mapping) and isinstance(base.get(key), dict):
                merge(base[key], value)
            else:
                base[key] = value
        return base

    path = results_dir / SUMMARY_NAME
    results_dir.mkdir(parents=True, exist_ok=True)
    # the lock lives in the temp dir so results/ holds only results
    lock = (
        Path(tempfile.gettempdir())
        / f"zoo-bench-{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]}.lock"
    )
    with FileLock(str(lock)):
        try:
            current = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            current = {}
        # P3 (GPU) has no benchmark that runs without a GPU: its key says so explicitly until one does
        summary = merge({"gpu_speedup": None, **current}, updates)
        write_atomic(path, json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary


def local_zoo(work: Path, rows: Sequence[str], data_root: Path, seed: int = 0) -> Path:
    """A manifest folder whose `rows` point at random-weight checkpoints of their real architectures,
    served over loopback and fetched into the zoo cache ($ZOO_CACHE, else `work/cache`, which is then
    set for child processes), so that a benchmark measures runs, not downloads."""
    from zoo import compat
    from zoo.data import dataset_paths, load_registry
    from zoo.evaluate import load_config
    from zoo.loopback import LoopbackServer
    from zoo.manifest import load_manifests
    from zoo.randweights import local_manifests, random_state_dict, save_checkpoint

    compat.apply()
    os.environ.setdefault("ZOO_CACHE", str(work / "cache"))
    manifests_dir = ROOT / "manifests"
    manifests, registry = load_manifests(manifests_dir), load_registry(manifests_dir)
    served = {}
    with LoopbackServer(work / "served") as server:
        for n, row_id in enumerate(rows):
            row = manifests.row(row_id)
            cfg = load_config(row, dataset_paths(registry.get(row.dataset), data_root))
            path = save_checkpoint(random_state_dict(cfg, seed=seed + n), server.root, row_id)
            served[row_id] = (server.url(path.name), path)
        mdir = local_manifests(manifests_dir, work / "manifests", served)
        proc = subprocess.run(
            [sys.executable, "-m", "zoo", "fetch", *rows, "--manifests", str(mdir)],
            cwd=ROOT, capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        if proc.returncode != 0:
            raise RuntimeError(f"zoo fetch failed: {proc.stderr.strip()[-2000:]}")
    return mdir
