"""`zoo reproduce`: fetch -> data verify -> run -> check -> report, as one resumable command.

Each step is the one its own command runs (`zoo fetch`, `zoo data verify`, `zoo run`, `zoo check`,
`zoo report`); this module only sequences them and keeps going past a failing row, so one broken
checkpoint or one missing dataset does not hide the other rows' results. A row whose checkpoint
cannot be fetched gets an error record (the gate reports ERROR); a row whose dataset does not pass
verification gets a 'skipped' record naming what is missing (SKIPPED). Rerunning resumes: finished
rows are skipped by `run_rows`' fingerprint check and cached checkpoints are not downloaded again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from zoo.compare import Comparison, compare
from zoo.errors import InputError, ZooError
from zoo.evaluate import RunOptions
from zoo.manifest import Manifests, Row
from zoo.results import Record

log = logging.getLogger(__name__)
_MAX_REASONS = 3  # findings quoted in a skipped record's reason (all of them are in `missing`)


@dataclass
class ReproduceOptions:
    """How to run the rows (exactly `zoo run`'s options) plus where the gate's and report's outputs go."""

    run: RunOptions = field(default_factory=RunOptions)
    report_dir: Path = Path("reports")
    junit: Path | None = None
    strict: bool = False
    allow_missing: bool = False


@dataclass
class ReproduceResult:
    comparison: Comparison
    records: dict[str, Record]
    reports: list[Path]
    junit: Path | None
    seconds: float


def skipped_record(row: Row, problems: Sequence[str], argv: Sequence[str]) -> Record:
    shown = "; ".join(problems[:_MAX_REASONS]) + (
        f"; and {len(problems) - _MAX_REASONS} more" if len(problems) > _MAX_REASONS else ""
    )
    return Record.skipped(
        row, f"dataset {row.dataset} not available: {shown}", problems,
        dataset=row.dataset, command=list(argv), finished=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )  # fmt: skip


def reproduce(
    manifests: Manifests,
    rows: Sequence[Row],
    opts: ReproduceOptions,
    say: Callable[[str], None] = log.info,
) -> ReproduceResult:
    """The whole reproduction of `rows`; the caller turns `result.comparison` into an exit code."""
    from zoo import fetch, preflight, results
    from zoo.evaluate import run_rows, write_error_record
    from zoo.junit import write_junit
    from zoo.provenance import all_differences
    from zoo.report import write_report

    started = time.perf_counter()
    run_opts = opts.run  # settled by the caller (zoo.preflight.settle)
    if run_opts.data_root is not None and not Path(run_opts.data_root).is_dir():
        raise InputError(f"--data-root {run_opts.data_root}: no such folder")  # before any download
    preflight.check_outputs(
        [
            ("--out", run_opts.out, True),
            ("--report-dir", opts.report_dir, True),
            ("--junit", opts.junit, False),
        ]
    )
    say(f"[check] {len(rows)} rows: data and checkpoints")
    problems: dict[str, list[preflight.RowProblem]] = {}
    for problem in preflight.row_problems(rows, manifests, run_opts):
        problems.setdefault(problem.row_id, []).append(problem)
    lock = fetch.ChecksumLock(manifests.dir / "checkpoints.lock")
    available: list[Row] = []
    for i, row in enumerate(rows, 1):
        mine = problems.get(row.id, [])
        data = [p for p in mine if p.kind == "data"]
        if data:  # nothing to run it on: not a failure of the row, a missing input (SKIPPED)
            results.write_record(run_opts.out, skipped_record(row, data[0].details, run_opts.argv))
            say(f"  SKIPPED {row.id}: {data[0].message}")
            continue
        if mine:
            write_error_record(run_opts, row, f"checkpoint not available: {mine[0].message}")
            say(f"  ERROR {row.id}: {mine[0].message}")
            continue
        say(f"[fetch {i}/{len(rows)}] {row.id}")
        try:
            fetch.fetch_row(row, lock=lock, cache=run_opts.cache, offline=run_opts.offline)
        except ZooError as exc:
            write_error_record(run_opts, row, f"fetch failed: {exc}")
            say(f"  ERROR {row.id}: {exc}")
            continue
        available.append(row)
    say(f"[run] {len(available)} rows")
    run_rows(available, manifests, run_opts, say=lambda text: say(f"  {text}"))

    records = results.load_records(run_opts.out)
    differences = all_differences(rows, records, manifests)
    comparison = compare(
        rows, records, strict=opts.strict, allow_missing=opts.allow_missing, differences=differences
    )
    junit = write_junit(opts.junit, comparison, records) if opts.junit else None
    variants = results.load_box_variants(run_opts.out)
    reports = write_report(manifests, records, opts.report_dir, rows, differences, variants)
    return ReproduceResult(comparison, records, reports, junit, time.perf_counter() - started)
