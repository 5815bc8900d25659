"""The gate's verdicts as JUnit XML, for CI systems that display test results.

One <testsuite> per table and one <testcase> per row, so a CI page lists every row by name with the
failing metrics in the failure message. The file mirrors the exit code of `zoo check`: a row that
makes the gate fail is a <failure> (an <error> when the run itself failed); MISSING/SKIPPED rows
allowed by --allow-missing and IMPROVED rows without --strict do not fail. No timestamps and no host
names, so the same records give the same bytes.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping
from pathlib import Path

from zoo.compare import Comparison, RowCheck
from zoo.results import Record, write_atomic


def _seconds(record: Record | None) -> str:
    total = record.timings.get("total_s") if record is not None else None
    return f"{float(total):.3f}" if isinstance(total, int | float) else "0.000"


def _body(check: RowCheck) -> str:
    """Every compared metric on its own line (the message holds only the off-tolerance ones)."""
    return "\n".join(f"{m.status:<8}  {m.describe()}" for m in check.metrics) or check.reason


def _testcase(suite: ET.Element, comparison: Comparison, check: RowCheck, record: Record | None) -> str:
    """Append the row's testcase; returns its JUnit outcome: passed, failure, error or skipped."""
    case = ET.SubElement(
        suite, "testcase", {"classname": f"zoo.{check.table}", "name": check.row_id, "time": _seconds(record)}
    )
    message = f"{check.status}: {check.detail()}" if check.detail() else check.status
    if check.status == "ERROR":
        ET.SubElement(case, "error", {"type": check.status, "message": message}).text = _body(check)
        return "error"
    if comparison.is_failure(check):
        ET.SubElement(case, "failure", {"type": check.status, "message": message}).text = _body(check)
        return "failure"
    if check.status in ("MISSING", "SKIPPED"):
        ET.SubElement(case, "skipped", {"message": message})
        return "skipped"
    ET.SubElement(case, "system-out").text = f"{check.status}: {check.name}\n{_body(check)}"
    return "passed"


def junit_xml(comparison: Comparison, records: Mapping[str, Record]) -> bytes:
    """The JUnit document for a comparison; `records` (row id -> record) supply the per-row times."""
    root = ET.Element("testsuites", {"name": "zoo check"})
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for table in dict.fromkeys(c.table for c in comparison.rows):
        suite = ET.SubElement(root, "testsuite", {"name": table})
        counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
        for check in (c for c in comparison.rows if c.table == table):
            outcome = _testcase(suite, comparison, check, records.get(check.row_id))
            counts["tests"] += 1
            if outcome != "passed":
                counts[{"failure": "failures", "error": "errors", "skipped": "skipped"}[outcome]] += 1
        for key, value in counts.items():
            suite.set(key, str(value))
            totals[key] += value
    for key, value in totals.items():
        root.set(key, str(value))
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


def write_junit(path: Path, comparison: Comparison, records: Mapping[str, Record]) -> Path:
    """Write the JUnit file atomically (a CI step never reads half of it)."""
    write_atomic(Path(path), junit_xml(comparison, records))
    return Path(path)
