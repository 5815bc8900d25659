"""`zoo data verify --decode`: decode every image the evaluation will read, as it will read it.

Why: a listing and a size check cannot see a JPEG cut short by an interrupted copy or an HTML error
page saved as `.jpg`; mmpose would only fail on it (or, worse, skip it) hours into a run. Each image
is decoded with the decoder mmpose's `LoadImage` uses (`mmcv.imfrombytes`, default cv2 backend,
colour), in a thread pool (cv2 releases the GIL while decoding), and every unreadable one is named
with the reason.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

_JPEG = b"\xff\xd8\xff"
_PNG = b"\x89PNG\r\n\x1a\n"


def default_jobs() -> int:
    return min(8, os.cpu_count() or 1)


def image_problem(path: Path) -> str | None:
    """Why `path` cannot be used as an evaluation image, or None when it decodes."""
    import cv2
    from mmcv import imfrombytes

    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return "missing (listed in the annotation file, not on disk)"
    except IsADirectoryError:
        return "a folder, not an image"
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    if not data:
        return "empty file (0 bytes)"
    try:
        image = imfrombytes(data)
    except cv2.error as exc:
        return f"cannot be decoded ({' '.join(str(exc).split())})"
    if image is not None:
        return None
    if data.startswith(_JPEG):
        end = "" if data.rstrip(b"\0\r\n ").endswith(b"\xff\xd9") else ", no end-of-image marker: truncated"
        return f"JPEG data that cannot be decoded ({len(data)} bytes{end})"
    if data.startswith(_PNG):
        return f"PNG data that cannot be decoded ({len(data)} bytes, truncated or corrupt)"
    return f"not an image: cannot be decoded ({len(data)} bytes starting with {data[:16]!r})"


@contextlib.contextmanager
def _quiet_native_stderr() -> Iterator[None]:
    """libpng and libjpeg print their own messages (`libpng error: ...`) straight to file descriptor 2;
    `image_problem` already names each such file in one line, so those raw lines are dropped."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (embedded use): nothing to silence
        yield
        return
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def decode_problems(paths: Sequence[Path], jobs: int | None = None) -> list[tuple[Path, str]]:
    """(path, why) for every path that does not decode, in the order given; `jobs` threads."""
    import mmcv  # noqa: F401 - imported once here, not concurrently by the first threads

    with _quiet_native_stderr(), ThreadPoolExecutor(max_workers=jobs or default_jobs()) as pool:
        results = list(pool.map(image_problem, paths))
    return [(p, why) for p, why in zip(paths, results, strict=True) if why is not None]
