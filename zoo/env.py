"""What the harness runs on: versions, install paths, compiled ops, device.

Recorded in every result (a number without its environment cannot be compared) and shown by
`zoo env`. Each probe turns its own failure into a value so one broken package never hides the
state of the others; `problems()` then says which broken parts are fatal.
"""

from __future__ import annotations

import importlib
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

# Packages whose version and location matter for the numbers; all are required.
PACKAGES = (
    "torch",
    "torchvision",
    "mmcv",
    "mmengine",
    "mmpose",
    "mmdet",
    "xtcocotools",
    "pycocotools",
    "numpy",
    "cv2",
)


def _probe_package(name: str) -> dict[str, Any]:
    try:
        mod = importlib.import_module(name)
    except Exception as exc:  # any import failure is the finding itself
        return {"version": None, "error": f"{type(exc).__name__}: {exc}".splitlines()[0]}
    version = getattr(mod, "__version__", None)
    if version is None:
        from importlib.metadata import PackageNotFoundError
        from importlib.metadata import version as dist_version

        try:
            version = dist_version(name)
        except PackageNotFoundError:
            version = "unknown"
    return {"version": str(version), "path": str(Path(mod.__file__).parent) if mod.__file__ else None}


def _probe_mmcv_ops() -> dict[str, Any]:
    """mmpose imports mmcv.ops at `import mmpose.apis`; mmcv-lite or a failed compile lacks `_ext`."""
    try:
        from mmcv.ops import nms  # noqa: F401

        return {"loaded": True}
    except Exception as exc:
        return {"loaded": False, "error": f"{type(exc).__name__}: {exc}".splitlines()[0]}


def _probe_device() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "cpu": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "cuda_available": torch.cuda.is_available(),
        "torch_cuda": torch.version.cuda,
    }
    if torch.cuda.is_available():
        info["gpus"] = [
            {
                "name": torch.cuda.get_device_name(i),
                "capability": ".".join(map(str, torch.cuda.get_device_capability(i))),
                "memory_gib": round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1),
            }
            for i in range(torch.cuda.device_count())
        ]
        info["cudnn"] = torch.backends.cudnn.version()
    return info


def git_commit(path: Path | None = None) -> str | None:
    """The harness's own commit (with `+dirty`), so a result names the code that produced it."""
    root = path or Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("+dirty" if dirty else "")


def collect_env(cache: Path | None = None) -> dict[str, Any]:
    """A JSON-serialisable snapshot of everything that can change a measured number; `cache` is the
    checkpoint cache a run really used (default: the one the environment points at)."""
    from zoo import __version__, compat

    compat_error = None
    try:
        compat.apply()
    except Exception as exc:
        compat_error = f"{type(exc).__name__}: {exc}".splitlines()[0]
    env: dict[str, Any] = {
        "zoo": __version__,
        "git_commit": git_commit(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": {name: _probe_package(name) for name in PACKAGES},
        "mmcv_ops": _probe_mmcv_ops(),
        "compat": {"error": compat_error, "torchvision_schema_fix": compat.torchvision_fixed()},
    }
    try:
        env["device"] = _probe_device()
    except Exception as exc:
        env["device"] = {"error": f"{type(exc).__name__}: {exc}".splitlines()[0]}
    env["dirs"] = {
        "cache": str(cache if cache is not None else _cache_dir()),
        "data_root": os.environ.get("ZOO_DATA_ROOT"),
    }
    return env


def _cache_dir() -> Path:
    from zoo.fetch import resolve_cache_dir

    return resolve_cache_dir(None)


def problems(env: dict[str, Any]) -> list[str]:
    """Fatal findings, each one line: what is broken and what to do about it."""
    out = []
    if env["compat"]["error"]:
        out.append(f"stack fixes failed: {env['compat']['error']}")
    for name, info in env["packages"].items():
        if info.get("version") is None:
            out.append(f"{name} does not import: {info['error']}")
    if not env["mmcv_ops"]["loaded"]:
        out.append(
            f"mmcv compiled ops do not load ({env['mmcv_ops']['error']}); mmpose.apis needs them: "
            "install full mmcv (not mmcv-lite) with --no-build-isolation"
        )
    if "error" in env["device"]:
        out.append(f"device probe failed: {env['device']['error']}")
    return out
