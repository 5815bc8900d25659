"""Pre-flight: what a run needs that can be checked in seconds, checked before any inference.

A reproduction takes hours; an unwritable output folder, a missing checkpoint or a broken data root
must not be found after them. `zoo run` (and `zoo reproduce`, `zoo check`, `zoo report`) call these
first:

- `settle`: the environment-dependent choices (the cache folder, offline, the device) resolved once,
  at the edge, so every module below receives plain values and records what was really used;
- `check_outputs`: every output path (`--out`, `--junit`, the report folder) can be written (a real
  probe: read-only mounts and root on a read-only file system included);
- `row_problems`: per row, what stops it: its dataset under the data root does not verify, or its
  checkpoint is neither cached nor fetchable (offline: not in the cache).

`zoo run` turns any problem into one line and exit 2 before loading a model; `zoo reproduce` turns a
row's problems into SKIPPED (data) or ERROR (checkpoint) records and runs the other rows.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from zoo.errors import InputError


def settle(opts: Any) -> Any:
    """`opts` (RunOptions) with the cache folder, offline mode and device resolved: $ZOO_CACHE or
    the user cache for no --cache, $ZOO_OFFLINE for no --offline, `auto` to cuda or cpu."""
    from zoo.evaluate import resolve_device
    from zoo.fetch import Cache, offline_from_env, resolve_cache_dir

    cache = resolve_cache_dir(opts.cache)
    offline = bool(opts.offline) or offline_from_env()
    Cache(cache).check(writable=not offline)
    return replace(opts, cache=cache, offline=offline, device=resolve_device(opts.device))


def output_problem(path: Path, *, folder: bool) -> str | None:
    """Why `path` (a folder to fill, or a file to write) cannot be written, or None. Creates nothing
    that was not there: the probe runs in the nearest existing parent."""
    from zoo.fetch import dir_write_problem

    path = Path(path)
    if folder and path.exists() and not path.is_dir():
        return f"{path} is a file, not a folder"
    if not folder and path.is_dir():
        return f"{path} is a folder, not a file"
    target = path if folder else path.parent
    existing = target
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    if not folder and path.exists() and not os.access(path, os.W_OK):
        return f"{path} is read-only"
    return dir_write_problem(existing)


def check_outputs(outputs: Sequence[tuple[str, Path | None, bool]]) -> None:
    """InputError (one line, the option and the path) for the first unwritable output.
    `outputs`: (option, path or None, is a folder)."""
    for option, path, folder in outputs:
        if path is None:
            continue
        problem = output_problem(path, folder=folder)
        if problem:
            raise InputError(f"{option} {path}: cannot write there ({problem})")


def data_problems(dataset: Any, data_root: Path | None) -> list[str]:
    """Why `dataset` cannot be evaluated under `data_root` (empty when `zoo data verify` passes).

    A `--data-root` that does not exist at all is bad input and raises; a dataset missing under an
    existing root, or a default root that was never prepared, is a reason to skip its rows.
    """
    from zoo.data import verify
    from zoo.evaluate import locate_data

    paths = locate_data(dataset, data_root)
    if not paths.root.is_dir():
        return [
            f"{paths.root}: data root of {dataset.id} does not exist (run `zoo data prepare {dataset.id}`)"
        ]
    report = verify(dataset, paths.root)
    return [f.message for f in report.findings if f.level == "error"]


@dataclass(frozen=True)
class RowProblem:
    """Why one row cannot run: `kind` is "data" (its dataset does not verify) or "checkpoint"."""

    row_id: str
    kind: str
    message: str
    details: tuple[str, ...] = ()  # the findings behind the message (data: zoo data verify's errors)


def row_problems(rows: Sequence[Any], manifests: Any, opts: Any) -> list[RowProblem]:
    """Everything that stops a row, found in seconds: data that does not verify (one check per
    dataset) and checkpoints that are not cached when offline, or whose expected hash the manifest,
    the lock and the file name do not agree on."""
    from zoo import fetch
    from zoo.data import load_registry

    registry = load_registry(manifests.dir)
    lock = fetch.ChecksumLock(manifests.dir / "checkpoints.lock")
    cache = fetch.Cache(opts.cache)
    data: dict[str, list[str]] = {}
    out: list[RowProblem] = []
    for row in rows:
        if row.dataset not in data:
            data[row.dataset] = data_problems(registry.get(row.dataset), opts.data_root)
        if data[row.dataset]:
            shown = "; ".join(data[row.dataset][:2]) + (
                f"; and {len(data[row.dataset]) - 2} more" if len(data[row.dataset]) > 2 else ""
            )
            message = f"dataset {row.dataset} not available: {shown}"
            out.append(RowProblem(row.id, "data", message, tuple(data[row.dataset])))
        try:
            expected = fetch.row_expected(row, lock)
        except InputError as exc:
            out.append(RowProblem(row.id, "checkpoint", str(exc)))
            continue
        if opts.offline and not _cached(cache, row, expected):
            out.append(RowProblem(
                row.id, "checkpoint",
                f"checkpoint {row.checkpoint.url} is not in the cache {cache.root} and --offline/ZOO_OFFLINE "
                "forbids downloading it (`zoo fetch` it first)",
            ))  # fmt: skip
    return out


def _cached(cache: Any, row: Any, expected: Any) -> bool:
    """Whether the row's checkpoint can be served offline: verified content in the store, or a file
    put at its cache name by hand (fetch hashes that one when the run starts). Reads, never writes."""
    from zoo.fetch import url_filename

    digest = expected.sha256 or cache.lookup(row.checkpoint.url)
    if digest and expected.matches(digest) and cache.blob_path(digest).is_file():
        return True
    return cache.name_path(f"{row.id}{Path(url_filename(row.checkpoint.url)).suffix}").is_file()


def refuse(problems: Sequence[RowProblem]) -> None:
    """InputError, one line, when any row cannot run (what `zoo run` does before any work)."""
    if not problems:
        return
    head = "; ".join(f"{p.row_id}: {p.message}" for p in problems[:3])
    more = f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
    raise InputError(f"{len({p.row_id for p in problems})} of the selected rows cannot run: {head}{more}")
