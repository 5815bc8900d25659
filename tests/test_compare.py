"""The gate: statuses, tolerance policy, `zoo check` exit codes and output, JUnit, `zoo baseline accept`."""

from __future__ import annotations

import json
import math
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from zoo.cli import main
from zoo.compare import accept_command, check_metric, check_row, compare, render_lines
from zoo.errors import InputError
from zoo.junit import junit_xml
from zoo.manifest import METRICS, Band, Tolerance, load_manifests
from zoo.provenance import all_differences, required
from zoo.results import SCHEMA, Record, write_json

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = (ROOT / "tests" / "fixtures" / "seed-tables.md").read_text(encoding="utf-8")
M = load_manifests(ROOT / "manifests")
R50, W48, UBODY = M.row("res50-256x192"), M.row("hrnet-w48-256x192"), M.row("hrnet-w32-ubody2d-256x192")
_PART = {"body": "body", "foot": "foot", "face": "face", "hand": "hand", "whole": "wholebody"}


_REQUIRED: dict[str, Any] = {}


def fingerprint_for(row) -> dict:
    """A fingerprint that measured exactly what `row` requires (zoo.provenance), as `zoo run` writes it."""
    if row.id not in _REQUIRED:
        _REQUIRED[row.id] = required([row], M)[row.id]
    req = _REQUIRED[row.id]
    return {
        "row": {
            "id": row.id,
            "input_size": list(row.input_size),
            "dataset": row.dataset,
            "use_area": row.use_area,
        },
        "config_sha256": req.config_sha256,
        "checkpoint_sha256": req.checkpoint_sha256 or req.checkpoint_prefix.ljust(64, "0"),
        "boxes": row.boxes,
        "data": {key: sha for key, (sha, _) in req.data.items()},
        "subset": None,
    }


def ok_json(row, shift: dict[str, float] | None = None, **details) -> dict:
    """An ok record's JSON whose metrics equal the row's expected values, plus `shift` per metric key,
    and whose fingerprint matches the row."""
    metrics: dict[str, dict[str, float]] = {}
    for key in METRICS:
        part, stat = key.split(".")
        value = row.expected.get(key)
        metrics.setdefault(_PART[part], {})[stat.upper()] = (0.5 if value is None else value) + (
            shift or {}
        ).get(key, 0.0)
    fingerprint = fingerprint_for(row)
    return {
        "schema": SCHEMA,
        "row_id": row.id,
        "table": row.table,
        "name": row.name,
        "status": "ok",
        "metrics": metrics,
        "fingerprint": fingerprint,
        "fingerprint_digest": "0" * 64,
        "checkpoint": {"sha256": fingerprint["checkpoint_sha256"]},
        "box_source": row.boxes,
        "use_area": row.use_area,
        **details,
    }


def ok_record(row, shift: dict[str, float] | None = None, **details) -> Record:
    return Record.from_json(ok_json(row, shift, **details))


def error_record(row) -> Record:
    return Record.error(row, "CUDA OOM at batch 1")


def skipped_record(row) -> Record:
    return Record.skipped(
        row, "dataset coco-wholebody-v1.0-val not available: annotations missing", ["annotations"]
    )


# -- statuses -------------------------------------------------------------------------------------------


def stale_json(manifest_row, **fingerprint) -> dict:
    """An ok record whose fingerprint differs from the row's requirement in `fingerprint`'s fields."""
    record = ok_json(manifest_row)
    record["fingerprint"].update(fingerprint)
    if "checkpoint_sha256" in fingerprint:
        record["checkpoint"] = {"sha256": fingerprint["checkpoint_sha256"]}
    return record


def test_all_seven_statuses() -> None:
    vipnas = M.row("vipnas-res50-256x192")
    rows = [
        R50,
        W48,
        M.row("res101-256x192"),
        vipnas,
        M.row("res152-256x192"),
        M.row("hrnet-w32-256x192"),
        UBODY,
    ]
    records = {
        R50.id: ok_record(R50, {"whole.ap": 0.004}),  # inside ±0.005
        W48.id: ok_record(W48, {"body.ap": -0.02, "foot.ar": 0.03}),  # one drop and one gain: FAIL wins
        "res101-256x192": ok_record(M.row("res101-256x192"), {"hand.ar": 0.03}),
        vipnas.id: Record.from_json(stale_json(vipnas, subset=10, checkpoint_sha256="dced59f8" + "0" * 56)),
        "res152-256x192": error_record(M.row("res152-256x192")),
        UBODY.id: skipped_record(UBODY),
    }
    c = compare(rows, records, differences=all_differences(rows, records, M))
    assert [r.status for r in c.rows] == ["PASS", "FAIL", "IMPROVED", "STALE", "ERROR", "MISSING", "SKIPPED"]
    fail = c.rows[1]
    assert [m.key for m in fail.off_metrics] == ["body.ap", "foot.ar"]
    assert [m.status for m in fail.off_metrics] == ["FAIL", "IMPROVED"]
    assert "body.ap 0.7010 -> 0.6810 (Δ -0.0200, tol ±0.0050)" in fail.detail()
    assert c.rows[3].detail() == (
        "measured something else: checkpoint sha256: record dced59f80000, manifest 49e1c3a4...; "
        "subset: record 10, manifest all images"
    )
    assert c.is_failure(c.rows[3]) and not compare(
        rows, records, allow_missing=True, strict=False
    ).is_failure(c.rows[0])
    assert c.rows[4].detail() == "run failed: CUDA OOM at batch 1"
    assert c.rows[5].detail() == "no result record"
    assert "annotations missing" in c.rows[6].detail()
    assert c.counts() == {
        "PASS": 1, "FAIL": 1, "IMPROVED": 1, "STALE": 1, "MISSING": 1, "ERROR": 1, "SKIPPED": 1,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("config_sha256", "f" * 64, "effective config: record ffffffffffff"),
        ("boxes", "gt", None),  # the record's box source is read from its top level; set below
        ("use_area", False, None),  # so is its OKS area rule
        ("row", {"input_size": [384, 288], "dataset": "coco-wholebody-v1.0-val", "use_area": True},
         "input size: record 384x288, manifest 256x192"),
        ("row", {"input_size": [256, 192], "dataset": "ubody2d-val", "use_area": True},
         "dataset: record ubody2d-val, manifest coco-wholebody-v1.0-val"),
        ("data", {"ann_sha256": "a" * 64}, "annotation file sha256: record aaaaaaaaaaaa"),
    ],
)  # fmt: skip
def test_each_fingerprint_field_makes_a_record_stale(field: str, value: Any, named: str | None) -> None:
    record = stale_json(R50, **{field: value})
    if field == "boxes":
        record["box_source"], named = "gt", "box source: record gt, manifest det"
    if field == "use_area":
        record["use_area"], named = False, "use_area: record False, manifest True"
    diffs = all_differences([R50], {R50.id: Record.from_json(record)}, M)[R50.id]
    check = check_row(R50, Record.from_json(record), diffs)
    if field == "data":  # the registry's checksum of the annotation file is a third party's: reported only
        assert check.status == "PASS" and named in check.notes[0].describe()
        assert "(the manifest's checksum is unverified)" in check.notes[0].describe()
        return
    assert check.status == "STALE" and named in check.detail()
    assert not all_differences([R50], {R50.id: ok_record(R50)}, M)[R50.id]  # the right record is not stale


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
    record = ok_json(R50)
    del record["metrics"]["foot"]["AR"]
    record["metrics"]["face"]["AP"] = math.nan
    record["metrics"]["hand"]["AR"] = -1.0
    check = check_row(R50, Record.from_json(record))
    assert check.status == "FAIL"
    notes = {m.key: m.note for m in check.off_metrics}
    assert notes == {
        "foot.ar": "missing from the result record",
        "face.ap": "not finite",
        "hand.ar": "undefined (-1: no ground truth for this part)",
    }
    with pytest.raises(InputError, match="field 'metrics'"):  # an ok record without metrics is malformed
        Record.from_json({**record, "metrics": None}, "result.json")


def test_unpublished_metrics_are_not_compared() -> None:
    record = ok_json(UBODY)
    record["metrics"]["body"]["AP"] = math.nan  # unpublished for the UBody2D row: ignored
    check = check_row(UBODY, Record.from_json(record))
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


def _results(tmp_path: Path, records: list[Record | dict]) -> Path:
    """A results folder with these records (a dict is written as it is: a record's raw JSON)."""
    out = tmp_path / "runs"
    out.mkdir(parents=True, exist_ok=True)
    for record in records:
        data = record.to_json() if isinstance(record, Record) else record
        write_json(out / data["row_id"] / "result.json", data)
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
    record = ok_json(R50)
    record["metrics"]["wholebody"]["AP"] = -1.0
    runs = _results(tmp_path, [record])
    assert main(["baseline", "accept", R50.id, "--results", str(runs), "--manifests", str(manifests)]) == 2
    assert "no usable value for whole.ap" in capsys.readouterr().err
    assert main(["baseline", "accept", W48.id, "--results", str(runs), "--manifests", str(manifests)]) == 2
    assert "no result record to accept" in capsys.readouterr().err
    assert json.loads((runs / R50.id / "result.json").read_text())["status"] == "ok"


def test_baseline_accept_refuses_a_stale_record_unless_forced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A subset run of another checkpoint (the trial in issue #13) is STALE: `zoo check` fails without
    suggesting an accept, `baseline accept` refuses it and writes nothing; --force writes the
    differences and the reason into the row, after which exactly those differences are accepted."""
    manifests = tmp_path / "manifests"
    shutil.copytree(ROOT / "manifests", manifests)
    stale = stale_json(R50, subset=10, checkpoint_sha256="dced59f8" + "1" * 56)
    stale["metrics"] = {
        part: {"AP": 0.0, "AR": 0.0} for part in ("body", "foot", "face", "hand", "wholebody")
    }
    runs = _results(tmp_path, [stale])
    args = ["--results", str(runs), "--manifests", str(manifests)]
    assert main(["check", R50.id, *args]) == 1
    out = capsys.readouterr().out
    assert f"STALE     {R50.id}  measured something else: checkpoint sha256: record dced59f81111" in out
    assert "subset: record 10, manifest all images" in out and "zoo baseline accept" not in out
    before = (manifests / "coco-wholebody.yaml").read_text()
    assert main(["baseline", "accept", R50.id, *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"zoo: error: row {R50.id}: its record measured something else (checkpoint sha256")
    assert "--force REASON" in err and err.count("\n") == 1
    assert (manifests / "coco-wholebody.yaml").read_text() == before

    stale["metrics"] = ok_json(R50)["metrics"]  # a usable record, still of a subset and another checkpoint
    runs = _results(tmp_path / "usable", [stale])
    args = ["--results", str(runs), "--manifests", str(manifests)]
    assert main(["baseline", "accept", R50.id, *args, "--force", "CI smoke baseline: 10-image subset"]) == 0
    assert "+    forced_accept:  # zoo baseline accept --force" in capsys.readouterr().out
    row = load_manifests(manifests).row(R50.id)
    assert row.forced_accept.reason == "CI smoke baseline: 10-image subset"
    assert [d.field for d in row.forced_accept.differences] == ["checkpoint sha256", "subset"]
    assert main(["check", R50.id, *args]) == 0  # exactly these differences are accepted now
    assert "accepted with --force" not in capsys.readouterr().out
    other = stale_json(R50, subset=20, checkpoint_sha256="dced59f8" + "1" * 56)  # another subset: stale again
    assert main(["check", R50.id, "--results", str(_results(tmp_path / "other", [other])), "--manifests",
                 str(manifests)]) == 1  # fmt: skip
    assert "subset: record 20, manifest all images" in capsys.readouterr().out
    # a normal accept of a record that measured the row removes the forced block
    assert main(["baseline", "accept", R50.id, "--results", str(_results(tmp_path / "good", [ok_record(R50)])),
                 "--manifests", str(manifests)]) == 0  # fmt: skip
    assert load_manifests(manifests).row(R50.id).forced_accept is None
