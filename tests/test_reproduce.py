"""`zoo reproduce`: fetch -> verify -> run -> check -> report in one command, resumable, rows whose data is
missing SKIPPED with the reason, rows whose checkpoint cannot be fetched ERROR, exit code from the gate."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from zoo.cli import main

pytestmark = pytest.mark.slow
ROWS = ("res50-256x192", "hrnet-w32-ubody2d-256x192")


def test_reproduce_runs_skips_and_resumes(local_zoo, synth_root: Path, tmp_path: Path, capsys) -> None:
    manifests = local_zoo(*ROWS)
    runs, reports, junit = tmp_path / "runs", tmp_path / "reports", tmp_path / "junit.xml"
    args = ["reproduce", *ROWS, "--manifests", str(manifests), "--data-root", str(synth_root), "--out", str(runs),
            "--report-dir", str(reports), "--junit", str(junit), "--cache", str(tmp_path / "cache"),
            "--workers", "0", "--no-progress"]  # fmt: skip
    assert main(args) == 1  # random weights against the published numbers: FAIL
    captured = capsys.readouterr()
    ok = json.loads((runs / ROWS[0] / "result.json").read_text())
    skipped = json.loads((runs / ROWS[1] / "result.json").read_text())
    assert ok["status"] == "ok" and skipped["status"] == "skipped"
    assert skipped["reason"].startswith("dataset ubody2d-val not available: ")
    assert any("annotations/val_annotations.json: missing" in line for line in skipped["missing"])
    out = captured.out
    assert out.index("row") < out.index(ROWS[0]) < out.index("gate: FAIL")  # the summary table comes first
    assert f"SKIPPED   {ROWS[1]}" in out and "not run: dataset ubody2d-val not available" in out
    assert (
        "face.ap 0.6060 -> -1.0000 (undefined (-1: no ground truth for this part)" in out
    )  # 3 images, no face
    assert "zoo baseline accept" not in out  # nothing acceptable: a published metric is undefined
    assert (reports / "coco-wholebody.md").is_file() and (reports / "ubody2d.md").is_file()
    cases = {c.get("name"): c for c in ET.parse(junit).getroot().iter("testcase")}
    assert cases[ROWS[0]].find("failure") is not None and cases[ROWS[1]].find("failure") is not None

    # resumable: the finished row is not run again, and its verdict is the same
    assert main(args) == 1
    again = capsys.readouterr()
    assert f"{ROWS[0]}: up to date" in again.err
    table_line = [line for line in out.splitlines() if line.startswith(ROWS[0])][0]
    assert table_line in again.out.splitlines()  # the summary table's row, unchanged
    assert json.loads((runs / ROWS[0] / "result.json").read_text())["finished"] == ok["finished"]


def test_unfetchable_checkpoint_is_an_error_row(local_zoo, synth_root: Path, tmp_path: Path, capsys) -> None:
    manifests = local_zoo(ROWS[0])
    table = manifests / "coco-wholebody.yaml"
    doc = yaml.safe_load(table.read_text())
    url = doc["rows"][0]["checkpoint"]["url"]
    doc["rows"][0]["checkpoint"]["url"] = url.rsplit("/", 1)[0] + "/gone-" + url.rsplit("/", 1)[1]
    table.write_text(yaml.safe_dump(doc, sort_keys=False))
    runs = tmp_path / "runs"
    code = main(["reproduce", ROWS[0], "--manifests", str(manifests), "--data-root", str(synth_root), "--out",
                 str(runs), "--report-dir", str(tmp_path / "reports"), "--cache", str(tmp_path / "cache")])  # fmt: skip
    assert code == 1
    record = json.loads((runs / ROWS[0] / "result.json").read_text())
    assert record["status"] == "error" and record["error"].startswith("fetch failed: ")
    assert f"ERROR     {ROWS[0]}  run failed: fetch failed: " in capsys.readouterr().out


def test_missing_data_root_is_bad_input(local_zoo, tmp_path: Path, capsys) -> None:
    manifests = local_zoo(ROWS[0])
    assert main(["reproduce", ROWS[0], "--manifests", str(manifests), "--data-root", str(tmp_path / "none"),
                 "--out", str(tmp_path / "runs"), "--cache", str(tmp_path / "cache")]) == 2  # fmt: skip
    assert "--data-root" in capsys.readouterr().err


def test_reproduce_with_both_box_sources(local_zoo, synth_root: Path, tmp_path: Path, capsys) -> None:
    """`zoo reproduce --boxes det,gt`: both records kept (the GT one beside the row's own), the gate
    judges the row's own box source only, and the report shows the Δ between the two per part."""
    from zoo.results import box_variant_dir

    manifests = local_zoo(ROWS[0])
    runs, reports = tmp_path / "runs", tmp_path / "reports"
    code = main(["reproduce", ROWS[0], "--boxes", "det,gt", "--manifests", str(manifests), "--data-root",
                 str(synth_root), "--out", str(runs), "--report-dir", str(reports), "--cache", str(tmp_path / "cache"),
                 "--workers", "0", "--no-progress"])  # fmt: skip
    assert code == 1  # random weights: FAIL, judged on the row's own (detector) boxes
    own = json.loads((runs / ROWS[0] / "result.json").read_text())
    gt = json.loads((box_variant_dir(runs, "gt") / ROWS[0] / "result.json").read_text())
    assert own["box_source"] == "det" and gt["box_source"] == "gt" and own["status"] == gt["status"] == "ok"
    out = capsys.readouterr().out
    assert [line.split()[1] for line in out.splitlines() if line.startswith("FAIL")] == [ROWS[0]]
    text = (reports / "coco-wholebody.md").read_text(encoding="utf-8")
    assert "## Box source" in text and "det → gt" in text
