"""The gate: measured results against the manifests' expected values, as data.

A pure function from (manifest rows, result records) to one status per row and per metric, so that
the CLI, the JUnit file, the report and the tests all read the same verdicts, and only the CLI picks
an exit code. Status words are a closed set:

    PASS      every published metric within its tolerance
    FAIL      a metric below its tolerance (a regression), or missing / not finite / undefined
    IMPROVED  a metric above a two-sided tolerance (reported; a failure only under --strict, so a
              baseline moves only when someone accepts it: `zoo baseline accept`)
    STALE     the record did not measure what the row requires now (another checkpoint, config, box
              source, data, a subset: `zoo.provenance`); each differing field is named with both values.
              Always a failure: its numbers say nothing about the row
    MISSING   no result record for the row
    ERROR     the run failed; the record says why
    SKIPPED   the run was not attempted because data is not available; the record says what is missing

Metrics the manifest leaves unpublished (None, e.g. the per-part numbers of the UBody2D row) are not
compared. Manifest keys are read with `Record.metric` (`whole.ap` is metrics['wholebody']['AP'],
`hand.*` the mean of both hands).
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from zoo.manifest import METRICS, Band, Row
from zoo.provenance import Difference
from zoo.results import Record

Status = Literal["PASS", "FAIL", "IMPROVED", "STALE", "MISSING", "ERROR", "SKIPPED"]
MetricStatus = Literal["PASS", "FAIL", "IMPROVED"]
STATUSES: tuple[Status, ...] = ("PASS", "FAIL", "IMPROVED", "STALE", "MISSING", "ERROR", "SKIPPED")

# Float noise guard for values that sit exactly on a tolerance edge (0.661 + 0.005 is 0.66600000000000004).
_EPS = 1e-9


@dataclass(frozen=True)
class MetricCheck:
    """One published metric of one row. `measured`/`delta` are None when the record lacks the value."""

    key: str  # manifest key, e.g. "whole.ap"
    expected: float
    measured: float | None
    band: Band
    status: MetricStatus
    note: str = ""  # why a value could not be compared, e.g. "not finite"

    @property
    def delta(self) -> float | None:
        return None if self.measured is None else self.measured - self.expected

    def describe(self) -> str:
        """`body.ap 0.7420 -> 0.7301 (Δ -0.0119, tol ±0.0050)`: one clause for the one-line summaries."""
        tol = f"{'±' if self.band.direction == 'both' else '-'}{self.band.abs:.4f}"
        if self.measured is None or self.note:
            got = "n/a" if self.measured is None else f"{self.measured:.4f}"
            return f"{self.key} {self.expected:.4f} -> {got} ({self.note}, tol {tol})"
        delta = round(self.delta, 4) + 0.0  # no "-0.0000"
        return f"{self.key} {self.expected:.4f} -> {self.measured:.4f} (Δ {delta:+.4f}, tol {tol})"


@dataclass(frozen=True)
class RowCheck:
    """The verdict on one manifest row."""

    row_id: str
    table: str
    name: str
    status: Status
    metrics: tuple[MetricCheck, ...] = ()
    reason: str = ""  # for ERROR / SKIPPED / MISSING: what the record (or its absence) says
    differences: tuple[Difference, ...] = ()  # where the record did not measure what the row requires

    @property
    def off_metrics(self) -> tuple[MetricCheck, ...]:
        """The metrics outside their tolerance (FAIL or IMPROVED), in manifest order."""
        return tuple(m for m in self.metrics if m.status != "PASS")

    @property
    def notes(self) -> tuple[Difference, ...]:
        """Differences that do not block (an unverified third-party checksum): shown, not failed."""
        return tuple(d for d in self.differences if not d.blocking)

    def detail(self) -> str:
        """What explains the status, on one line (empty for PASS)."""
        if self.status == "STALE":
            return "measured something else: " + "; ".join(
                d.describe() for d in self.differences if d.blocking
            )
        if self.status in ("FAIL", "IMPROVED"):
            return "; ".join(m.describe() for m in self.off_metrics)
        return self.reason


@dataclass(frozen=True)
class Comparison:
    """All row verdicts plus the gate policy that turns them into pass/fail."""

    rows: tuple[RowCheck, ...]
    strict: bool = False
    allow_missing: bool = False

    def is_failure(self, check: RowCheck) -> bool:
        """Whether this row makes the gate fail under the comparison's policy."""
        if check.status in ("FAIL", "ERROR", "STALE"):
            return True
        if check.status == "IMPROVED":
            return self.strict
        if check.status in ("MISSING", "SKIPPED"):
            return not self.allow_missing
        return False

    @property
    def failures(self) -> tuple[RowCheck, ...]:
        return tuple(r for r in self.rows if self.is_failure(r))

    @property
    def passed(self) -> bool:
        return not self.failures

    def counts(self) -> dict[Status, int]:
        """Rows per status word, every word present (zeros included), in STATUSES order."""
        return {s: sum(r.status == s for r in self.rows) for s in STATUSES}


def check_metric(key: str, expected: float, measured: float | None, band: Band) -> MetricCheck:
    """PASS / FAIL / IMPROVED for one metric (a value that cannot be compared is a FAIL)."""
    if measured is None:
        return MetricCheck(key, expected, None, band, "FAIL", "missing from the result record")
    if not math.isfinite(measured):
        return MetricCheck(key, expected, measured, band, "FAIL", "not finite")
    if measured < 0:  # COCOeval reports -1 when the part has no ground truth to score against
        return MetricCheck(
            key, expected, measured, band, "FAIL", "undefined (-1: no ground truth for this part)"
        )
    delta = measured - expected
    if delta < -(band.abs + _EPS):
        return MetricCheck(key, expected, measured, band, "FAIL")
    if band.direction == "both" and delta > band.abs + _EPS:
        return MetricCheck(key, expected, measured, band, "IMPROVED")
    return MetricCheck(key, expected, measured, band, "PASS")


def check_row(row: Row, record: Record | None, differences: Sequence[Difference] = ()) -> RowCheck:
    """The verdict on one row given its result record (None when there is none) and where that
    record did not measure what the row requires (`zoo.provenance.differences`)."""
    base = {"row_id": row.id, "table": row.table, "name": row.name}
    if record is None:
        return RowCheck(**base, status="MISSING", reason="no result record")
    if record.status == "error":
        return RowCheck(**base, status="ERROR", reason=f"run failed: {record.reason or 'no reason recorded'}")
    if record.status == "skipped":
        return RowCheck(**base, status="SKIPPED", reason=f"not run: {record.reason or 'no reason recorded'}")
    checks = tuple(
        check_metric(key, expected, record.metric(key), row.tolerance.for_metric(key))
        for key in METRICS
        if (expected := row.expected.get(key)) is not None
    )
    verdicts = {c.status for c in checks}
    row_status: Status = "FAIL" if "FAIL" in verdicts else "IMPROVED" if "IMPROVED" in verdicts else "PASS"
    if any(d.blocking for d in differences):
        row_status = "STALE"
    return RowCheck(**base, status=row_status, metrics=checks, differences=tuple(differences))


def compare(
    rows: Iterable[Row],
    records: Mapping[str, Record],
    *,
    strict: bool = False,
    allow_missing: bool = False,
    differences: Mapping[str, Sequence[Difference]] | None = None,
) -> Comparison:
    """Check every given row (in the given order) against its record in `records` (row id -> record)
    and `differences` (row id -> where its record measured something else; see `zoo.provenance`)."""
    differences = differences or {}
    return Comparison(
        rows=tuple(check_row(row, records.get(row.id), differences.get(row.id, ())) for row in rows),
        strict=strict,
        allow_missing=allow_missing,
    )


def render_lines(comparison: Comparison) -> list[str]:
    """One aligned line per row: status, row id, and what explains a non-PASS status."""
    width = max((len(r.row_id) for r in comparison.rows), default=0)
    lines = []
    for r in comparison.rows:
        detail = r.detail()
        if r.status == "IMPROVED" and not comparison.strict:
            detail += " [not a failure without --strict]"
        if r.status in ("MISSING", "SKIPPED") and comparison.allow_missing:
            detail += " [allowed by --allow-missing]"
        lines.append(f"{r.status:<8}  {r.row_id:<{width}}  {detail}".rstrip())
    return lines


def render_summary(comparison: Comparison) -> str:
    """`gate: FAIL (2 of 12 rows fail): 10 PASS, 1 FAIL, 1 ERROR` (status words with zero rows left out)."""
    counts = ", ".join(f"{n} {s}" for s, n in comparison.counts().items() if n)
    total = len(comparison.rows)
    if comparison.passed:
        return f"gate: PASS ({total} rows): {counts}"
    return f"gate: FAIL ({len(comparison.failures)} of {total} rows fail): {counts}"


def summary_table(comparison: Comparison, records: Mapping[str, Record], results_dir: Path) -> str:
    """The end-of-run table of `zoo run` and `zoo reproduce`: per row its verdict, Whole AP and AR
    (expected, measured, Δ), the run's minutes and where its record is."""
    from tabulate import tabulate

    def cells(check: RowCheck, key: str) -> list[str]:
        m = next((m for m in check.metrics if m.key == key), None)
        if m is None:
            return ["", "", ""]
        got = "n/a" if m.measured is None else f"{m.measured:.4f}"
        delta = "" if m.delta is None else f"{m.delta:+.4f}"
        return [f"{m.expected:.3f}", got, delta]

    lines = []
    for check in comparison.rows:
        record = records.get(check.row_id)
        seconds = record.timings.get("total_s") if record is not None else None
        lines.append([
            check.row_id, check.status, *cells(check, "whole.ap"), *cells(check, "whole.ar"),
            "" if seconds is None else f"{seconds / 60:.1f}",
            str(Path(results_dir) / check.row_id / "result.json") if record is not None else "",
        ])  # fmt: skip
    headers = ["row", "status", "Whole AP", "measured", "Δ", "Whole AR", "measured", "Δ", "min", "record"]
    return tabulate(lines, headers=headers, disable_numparse=True)


def accept_command(comparison: Comparison, results: str, manifests: str | None = None) -> str | None:
    """The exact command that makes the measured values of the off-tolerance rows the new baseline,
    or None when no row has measured values outside its tolerance."""
    ids = [
        r.row_id
        for r in comparison.rows
        if r.status in ("FAIL", "IMPROVED") and not any(m.note for m in r.metrics)  # only real numbers
    ]
    if not ids:
        return None
    where = ["--manifests", manifests] if manifests else []
    return shlex.join(["zoo", "baseline", "accept", *ids, "--results", results, *where])
