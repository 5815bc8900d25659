"""Deterministic PNG plots: the same numbers draw the same bytes on every machine.

Committed reports change only when a number does, so plots use matplotlib's own defaults (not the
user's matplotlibrc) with its bundled DejaVu font, a fixed dpi, the Agg canvas behind
`matplotlib.figure.Figure` (no GUI backend, no global pyplot state) and no 'Software' stamp, and are
written atomically.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from zoo.errors import InputError
from zoo.fileio import write_atomic

RC: dict[str, Any] = {
    "font.family": "DejaVu Sans",
    "font.size": 9,
    "axes.titlesize": 10,
    "figure.dpi": 100,
    "savefig.dpi": 100,
}


@contextlib.contextmanager
def plot_style() -> Iterator[None]:
    """matplotlib's defaults plus `RC`, for the figures drawn inside the block only."""
    import matplotlib

    with matplotlib.rc_context():
        matplotlib.rcdefaults()
        matplotlib.rcParams.update(RC)
        yield


def save_png(fig: Any, path: Path) -> Path:
    """Render `fig` to PNG in memory, then write it atomically: never a half-written image; an
    unwritable path is one InputError line naming it."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    try:
        write_atomic(Path(path), buffer.getvalue())
    except OSError as exc:
        raise InputError(f"{path}: cannot write the plot: {exc.strerror or exc}") from None
    return Path(path)
