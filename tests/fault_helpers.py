"""Helpers for the fault tests: the `zoo` command as a user runs it, and folders that are really read-only."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def zoo(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    """`python -m zoo ARGS` in a fresh process (this checkout first on the path, no ZOO_* settings
    inherited), so stderr holds exactly what a user would see, library log lines included."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("ZOO_")}
    base["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    return subprocess.run(
        [sys.executable, "-m", "zoo", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd or REPO,
        env={**base, **(env or {})},
    )


def closed_port() -> int:
    """A loopback port nobody listens on: connecting is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def silent_server() -> Iterator[int]:
    """A loopback port whose socket listens but never accepts or answers: the kernel completes the
    handshake, the request goes out, and no byte ever comes back."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield s.getsockname()[1]


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[Path]:
    """Make `folder` read-only for real for the duration: its mode bits for a normal user; for root,
    whom mode bits do not stop, a read-only bind mount (EROFS). Skips when neither is possible."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        mode = folder.stat().st_mode
        folder.chmod(0o555)
        try:
            yield folder
        finally:
            folder.chmod(mode)
        return
    if shutil.which("mount") is None:
        pytest.skip("running as root without mount(8): cannot make a folder read-only")
    bind = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True)
    if bind.returncode != 0:
        pytest.skip(f"running as root and cannot bind-mount: {bind.stderr.decode().strip()}")
    try:
        ro = subprocess.run(["mount", "-o", "remount,ro,bind", str(folder)], capture_output=True)
        if ro.returncode != 0:
            pytest.skip(f"running as root and cannot remount read-only: {ro.stderr.decode().strip()}")
        yield folder
    finally:
        if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)
