"""The gate: statuses, tolerance policy, `zoo check` exit codes and output, JUnit, `zoo baseline accept`."""

from __future__ import annotations

import json
import math
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from zoo.cli import main
from zoo.compare import accept_command, check_metric, check_row, compare, render_lines
from zoo.junit import junit_xml
from zoo.manifest import METRICS, Band, Tolerance, load_manifests
from zoo.results import SCHEMA, write_record

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = (ROOT / "tests" / "fixtures" / "seed-tables.md").read_text(encoding="utf-8")
M = load_manifests(ROOT / "manifests")
R50, W48, UBODY = M.row("res50-256x192"), M.row("hrnet-w48-256x192"), M.row("hrnet-w32-ubody2d-256x192")
_PART = {"body": "body", "foot": "foot", "face": "face", "hand": "hand", "whole": "wholebody"}


def ok_record(row, shift: dict[str, float] | None = None, **overrides) -> dict:
    """An ok record whose metrics equal the row's expected values, plus `shift` per metric key."""
    metrics: dict[str, dict[str, float]] = {}
    for key in METRICS:
        part, stat = key.split(".")
        value = row.expected.get(key)
        metrics.setdefault(_PART[part], {})[stat.upper()] = (0.5 if value is None else value) + (
            shift or {}
        ).get(key, 0.0)
    return {
        "schema": SCHEMA,
        "row_id": row.id,
        "table": row.table,
        "status": "ok",
        "metrics": metrics,
        **overrides,
    }


def error_record(row) -> dict:
    return {
        "schema": SCHEMA,
        "row_id": row.id,
        "table": row.table,
        "status": "error",
        "error": "CUDA OOM at batch 1",
    }


def skipped_record(row) -> dict:
    return {"schema": SCHEMA, "row_id": row.id, "table": row.table, "status": "skipped",
            "reason": "dataset coco-wholebody-v1.0-val not available: annotations missing"}  # fmt: skip


# -- statuses -------------------------------------------------------------------------------------------


def test_all_six_statuses() -> None:
    rows = [R50, W48, M.row("res101-256x192"), M.row("res152-256x192"), M.row("hrnet-w32-256x192"), UBODY]
    records = {
        R50.id: ok_record(R50, {"whole.ap": 0.004}),  # inside ±0.005
        W48.id: ok_record(W48, {"body.ap": -0.02, "foot.ar": 0.03}),  # one drop and one gain: FAIL wins
        "res101-256x192": ok_record(M.row("res101-256x192"), {"hand.ar": 0.03}),
        "res152-256x192": error_record(M.row("res152-256x192")),
        UBODY.id: skipped_record(UBODY),
    }
    c = compare(rows, records)
    assert [r.status for r in c.rows] == ["PASS", "FAIL", "IMPROVED", "ERROR", "MISSING", "SKIPPED"]
    fail = c.rows[1]
    assert [m.key for m in fail.off_metrics] == ["body.ap", "foot.ar"]
    assert [m.status for m in fail.off_metrics] == ["FAIL", "IMPROVED"]
    assert "body.ap 0.7010 -> 0.6810 (Δ -0.0200, tol ±0.0050)" in fail.detail()
    assert c.rows[3].detail() == "run failed: CUDA OOM at batch 1"
    assert c.rows[4].detail() == "no result record"
    assert "annotations missing" in c.rows[5].detail()
    assert c.counts() == {"PASS": 1, "FAIL": 1, "IMPROVED": 1, "MISSING": 1, "ERROR": 1, "SKIPPED": 1}


@pytest.mark.parametrize(
    ("delta", "direction", "status"),
    [
        (0.0, "both", "PASS"),
        (0.005, "both", "PASS"),  # on the edge: 0.661 + 0.005 is not 0.666 in binary floating point
        (-0.005, "both", "PASS"),
        (0.0051, "both", "IMPROVED"),
        (-0.0051, "both", "FAIL"),
        (0.3, "lower", "PASS"),  # one-sided: a gain never counts
        (-0.0051, "lower", "FAIL"),
    ],
)
def test_tolerance_band(delta: float, direction: str, status: str) -> None:
    assert check_metric("whole.ap", 0.661, 0.661 + delta, Band(0.005, direction)).status == status


def test_one_sided_row_tolerance_from_the_manifest_model() -> None:
    row = R50.model_copy(update={"tolerance": Tolerance(abs=0.005, direction="lower")})
    assert check_row(row, ok_record(row, {"whole.ap": 0.2})).status == "PASS"
    assert check_row(row, ok_record(row, {"whole.ap": -0.2})).status == "FAIL"
    assert check_row(R50, ok_record(R50, {"whole.ap": 0.2})).status == "IMPROVED"


def test_missing_nan_and_undefined_metrics_fail() -> None:
    record = ok_record(R50)
    del record["metrics"]["foot"]["AR"]
    record["metrics"]["face"]["AP"] = math.nan
    record["metrics"]["hand"]["AR"] = -1.0
    check = check_row(R50, record)
    assert check.status == "FAIL"
    notes = {m.key: m.note for m in check.off_metrics}
    assert notes == {
        "foot.ar": "missing from the result record",
        "face.ap": "not finite",
        "hand.ar": "undefined (-1: no ground truth for this part)",
    }
    assert check_row(R50, {**record, "metrics": None}).status == "FAIL"  # an ok record without metrics


def test_unpublished_metrics_are_not_compared() -> None:
    record = ok_record(UBODY)
    record["metrics"]["body"]["AP"] = math.nan  # unpublished for the UBody2D row: ignored
    check = check_row(UBODY, record)
    assert check.status == "PASS"
    assert [m.key for m in check.metrics] == ["whole.ap", "whole.ar"]


def test_strict_and_allow_missing_policy() -> None:
    improved = {R50.id: ok_record(R50, {"whole.ar": 0.05})}
    assert compare([R50], improved).passed
    assert not compare([R50], improved, strict=True).passed
    assert not compare([R50], {}).passed
    assert compare([R50], {}, allow_missing=True).passed
    assert compare([UBODY], {UBODY.id: skipped_record(UBODY)}, allow_missing=True).passed
    assert not compare([R50], {R50.id: error_record(R50)}, allow_missing=True).passed


def test_lines_are_aligned_and_accept_command_names_the_off_rows() -> None:
    c = compare([R50, W48], {R50.id: ok_record(R50), W48.id: ok_record(W48, {"whole.ap": 0.1})})
    lines = render_lines(c)
    assert lines[0] == f"PASS      {R50.id}"  # no trailing blanks
    assert lines[1].index("hrnet") == lines[0].index("res50")
    assert lines[1].startswith(f"IMPROVED  {W48.id}  whole.ap 0.5790 -> 0.6790 (Δ +0.1000, tol ±0.0050)")
    assert lines[1].endswith("[not a failure without --strict]")
    assert accept_command(c, "runs dir") == f"zoo baseline accept {W48.id} --results 'runs dir'"
    assert accept_command(compare([R50], {R50.id: ok_record(R50)}), "runs") is None


# -- JUnit ----------------------------------------------------------------------------------------------


def test_junit_has_one_testcase_per_row_and_names_failing_metrics() -> None:
    rows = [R50, W48, M.row("res152-256x192"), M.row("hrnet-w32-256x192"), UBODY]
    records = {
        R50.id: ok_record(R50, timings={"total_s": 12.5}),
        W48.id: ok_record(W48, {"face.ap": -0.1}),
        "res152-256x192": error_record(M.row("res152-256x192")),
        UBODY.id: skipped_record(UBODY),
    }
    c = compare(rows, records, allow_missing=True)
    data = junit_xml(c, records)
    assert data == junit_xml(compare(rows, records, allow_missing=True), records)  # deterministic bytes
    root = ET.fromstring(data)
    assert root.attrib == {"name": "zoo check", "tests": "5", "failures": "1", "errors": "1", "skipped": "2"}
    cases = {case.get("name"): case for case in root.iter("testcase")}
    assert list(cases) == [r.id for r in rows]
    assert cases[R50.id].get("time") == "12.500" and cases[R50.id].find("failure") is None
    failure = cases[W48.id].find("failure")
    assert failure.get("type") == "FAIL" and "face.ap 0.6560 -> 0.5560 (Δ -0.1000" in failure.get("message")
    assert "CUDA OOM" in cases["res152-256x192"].find("error").get("message")
    assert cases["hrnet-w32-256x192"].find("skipped") is not None  # MISSING, allowed
    strict = ET.fromstring(junit_xml(compare(rows, records), records))
    assert strict.get("failures") == "3" and strict.get("skipped") == "0"  # MISSING/SKIPPED fail without it


# -- zoo check -------------------------------------------------------------------------------------------


def _results(tmp_path: Path, records: list[dict]) -> Path:
    out = tmp_path / "runs"
    out.mkdir(parents=True, exist_ok=True)
    for record in records:
        write_record(out, record)
    return out


def test_check_exit_codes_and_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = _results(tmp_path, [ok_record(R50), ok_record(W48, {"whole.ar": 0.02})])
    assert main(["check", "--results", str(runs), R50.id, W48.id]) == 0
    out = capsys.readouterr().out
    assert "PASS" in out and "IMPROVED" in out and "gate: PASS (2 rows): 1 PASS, 1 IMPROVED" in out
    assert f"zoo baseline accept {W48.id} --results {runs}" in out
    assert main(["check", "--results", str(runs), "--strict", R50.id, W48.id]) == 1
    capsys.readouterr()
    assert main(["check", "--results", str(runs), "--table", "coco-wholebody"]) == 1  # 9 MISSING rows
    assert "MISSING" in capsys.readouterr().out
    assert main(["check", "--results", str(runs), "--table", "coco-wholebody", "--allow-missing"]) == 0
    capsys.readouterr()
    junit = tmp_path / "out" / "check.xml"
    assert main(["check", "--results", str(runs), "--junit", str(junit), R50.id]) == 0
    assert ET.parse(junit).getroot().get("tests") == "1"


def test_check_bad_input_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--results", str(tmp_path / "nowhere")]) == 2
    assert "results folder not found" in capsys.readouterr().err
    runs = _results(tmp_path, [ok_record(R50)])
    (runs / R50.id / "result.json").write_text("{not json")
    assert main(["check", "--results", str(runs)]) == 2
    assert "result.json: not valid JSON" in capsys.readouterr().err
    assert main(["check", "--results", str(runs), "no-such-row"]) == 2
    assert main(["check", "--results", str(runs), R50.id, "--table", "ubody2d"]) == 2


# -- zoo baseline accept -----------------------------------------------------------------------------------


def test_baseline_accept_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifests = tmp_path / "manifests"
    shutil.copytree(ROOT / "manifests", manifests)
    shift = {"body.ap": -0.0123, "whole.ap": 0.0201, "whole.ar": -0.0456}
    runs = _results(
        tmp_path, [ok_record(W48, shift), ok_record(UBODY, {"whole.ap": -0.05}), error_record(R50)]
    )
    before = {p.name: p.read_text() for p in manifests.glob("*.yaml")}

    assert main(["check", "--results", str(runs), "--manifests", str(manifests), W48.id, UBODY.id]) == 1
    assert (
        main(["baseline", "accept", W48.id, UBODY.id, "--results", str(runs), "--manifests", str(manifests)])
        == 0
    )
    out = capsys.readouterr().out
    assert "+    expected:  # measured: zoo baseline accept\n+      body: {ap: 0.6887, ar: 0.7760}\n" in out
    assert "+    published:\n       body: {ap: 0.701, ar: 0.776}\n" in out  # the old block, unchanged

    # published numbers kept: the regenerated README tables are byte-identical
    assert main(["table", "--expected", "--manifests", str(manifests)]) == 0
    assert capsys.readouterr().out == FIXTURE
    after = load_manifests(manifests)
    w48 = after.row(W48.id)
    assert w48.published == W48.expected
    assert w48.expected.get("body.ap") == 0.6887 and w48.expected.get("whole.ar") == 0.6354
    assert (
        after.row(UBODY.id).expected.get("whole.ap") == 0.64
        and after.row(UBODY.id).expected.get("body.ap") is None
    )
    for row in M.rows:
        if row.id not in (W48.id, UBODY.id):
            assert after.row(row.id) == row
    # the diff is small: only the two rows' expected/published blocks changed
    new = (manifests / "coco-wholebody.yaml").read_text().splitlines()
    old = before["coco-wholebody.yaml"].splitlines()
    assert len(new) - len(old) == 6 and set(old) - set(new) == set()
    assert main(["check", "--results", str(runs), "--manifests", str(manifests), W48.id, UBODY.id]) == 0
    capsys.readouterr()

    # accepting again replaces expected but never the published block
    runs2 = _results(tmp_path / "second", [ok_record(w48, {"whole.ap": 0.01})])
    assert main(["baseline", "accept", W48.id, "--results", str(runs2), "--manifests", str(manifests)]) == 0
    again = load_manifests(manifests).row(W48.id)
    assert again.published == W48.expected and again.expected.get("whole.ap") == pytest.approx(0.6091)
    capsys.readouterr()

    # an error record cannot be accepted, and nothing is written (all rows or none)
    snapshot = {p.name: p.read_text() for p in manifests.glob("*.yaml")}
    assert (
        main(["baseline", "accept", UBODY.id, R50.id, "--results", str(runs), "--manifests", str(manifests)])
        == 2
    )
    assert f"row {R50.id}: its result has status 'error'" in capsys.readouterr().err
    assert {p.name: p.read_text() for p in manifests.glob("*.yaml")} == snapshot


def test_baseline_accept_refuses_unusable_values(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifests = tmp_path / "manifests"
    shutil.copytree(ROOT / "manifests", manifests)
    record = ok_record(R50)
    record["metrics"]["wholebody"]["AP"] = -1.0
    runs = _results(tmp_path, [record])
    assert main(["baseline", "accept", R50.id, "--results", str(runs), "--manifests", str(manifests)]) == 2
    assert "no usable value for whole.ap" in capsys.readouterr().err
    assert main(["baseline", "accept", W48.id, "--results", str(runs), "--manifests", str(manifests)]) == 2
    assert "no result record to accept" in capsys.readouterr().err
    assert json.loads((runs / R50.id / "result.json").read_text())["status"] == "ok"
