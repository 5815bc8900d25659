"""`zoo audit` finds every known disagreement with mmpose's metafiles and passes only when all are acknowledged."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from zoo.audit import audit, same_value
from zoo.cli import main
from zoo.manifest import load_manifests

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "manifests"
MINIMAL = Path(__file__).resolve().parent / "fixtures" / "minimal-manifest" / "table.yaml"
CSPNEXT_ACK = "      - {source: metafile, field: hand.ar, value: 0.567, why: the metafile disagrees with the per-model .md table (0.543)}\n"


@pytest.fixture(scope="module")
def report():
    return audit(load_manifests(MANIFESTS))


def _differences(report) -> dict[tuple[str, str], tuple]:
    return {
        (f.row, f.field): (f.manifest, f.metafile, f.status) for f in report.findings if f.status != "agree"
    }


def test_audit_of_the_project_manifests_passes_with_the_known_drifts(report):
    assert report.ok
    diffs = _differences(report)
    assert diffs[("cspnext-m-udp-256x192", "hand.ar")] == (0.543, 0.567, "acknowledged")
    # The ubody metafile copies row hrnet-w32-256x192's numbers: every metric differs.
    row7 = load_manifests(MANIFESTS).row("hrnet-w32-256x192").expected.flat()
    for key, value in row7.items():
        assert diffs[("hrnet-w32-ubody-coco-256x192", key)][1:] == (value, "acknowledged")
    assert diffs[("hrnet-w32-ubody2d-256x192", "config")][2] == "acknowledged"
    assert diffs[("hrnet-w32-ubody2d-256x192", "results")] == ("UBody2D", "COCO-WholeBody", "acknowledged")
    assert len(diffs) == 13


def test_every_row_is_matched_to_a_metafile_entry_by_its_weights(report):
    urls = {f.row: f.status for f in report.findings if f.field == "checkpoint.url"}
    assert len(urls) == 12 and set(urls.values()) == {"agree"}
    res101 = [f for f in report.findings if f.row == "res101-256x192"]
    assert len(res101) == 12 and {f.status for f in res101} == {"agree"}


def _copy_manifests(tmp_path: Path) -> Path:
    dest = tmp_path / "manifests"
    shutil.copytree(MANIFESTS, dest)
    return dest


def test_removing_an_acknowledgement_makes_audit_fail(tmp_path, capsys):
    dest = _copy_manifests(tmp_path)
    text = (dest / "coco-wholebody.yaml").read_text()
    assert CSPNEXT_ACK in text
    (dest / "coco-wholebody.yaml").write_text(
        text.replace(CSPNEXT_ACK, "").replace("    acknowledged_drift:\n\n", "\n")
    )
    assert main(["audit", "--manifests", str(dest)]) == 1
    out = capsys.readouterr()
    line = next(x for x in out.out.splitlines() if x.split()[:2] == ["cspnext-m-udp-256x192", "hand.ar"])
    assert "0.543" in line and "0.567" in line and "DRIFT" in line
    assert "unacknowledged differences" in out.err
    assert main(["audit"]) == 0


def test_an_acknowledgement_with_another_value_is_a_drift_and_stale(tmp_path):
    dest = _copy_manifests(tmp_path)
    text = (dest / "coco-wholebody.yaml").read_text()
    (dest / "coco-wholebody.yaml").write_text(
        text.replace(CSPNEXT_ACK, CSPNEXT_ACK.replace("0.567", "0.566"))
    )
    found = {
        (f.field, f.status) for f in audit(load_manifests(dest)).findings if f.row == "cspnext-m-udp-256x192"
    }
    assert {("hand.ar", "DRIFT"), ("hand.ar", "STALE")} <= found


METAFILE = """\
Models:
- Config: configs/wholebody_2d_keypoint/topdown_heatmap/coco-wholebody/td-hm_res50_8xb64-210e_coco-wholebody-256x192.py
  Name: td-hm_res50_8xb64-210e_coco-wholebody-256x192
  Results:
  - Dataset: COCO-WholeBody
    Metrics: {{Whole AP: {ap}, Whole AR: 0.633, Body AP: 0.652}}
  Weights: {url}
"""
URL = (
    "https://download.openmmlab.com/mmpose/top_down/resnet/res50_coco_wholebody_256x192-9e37ed88_20201004.pth"
)


def _synthetic(tmp_path: Path, metafile: str, acks: str = "") -> tuple:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "table.yaml").write_text(MINIMAL.read_text() + acks)
    configs = tmp_path / "configs" / "wholebody_2d_keypoint"
    configs.mkdir(parents=True)
    (configs / "res50.yml").write_text(metafile)
    (configs / "unrelated.yml").write_text("Collections:\n- Name: HRNet\n")
    return audit(load_manifests(folder), configs_root=tmp_path / "configs").findings


def test_metric_only_in_the_metafile_and_a_different_number_are_drifts(tmp_path):
    findings = _synthetic(tmp_path, METAFILE.format(ap=0.46, url=URL))
    status = {f.field: (f.manifest, f.metafile, f.status) for f in findings}
    assert status["whole.ap"] == (0.521, 0.46, "DRIFT")
    assert status["whole.ar"][2] == "agree"
    assert status["body.ap"] == (None, 0.652, "DRIFT")
    assert status["config"][2] == "agree" and status["checkpoint.url"][2] == "agree"


def test_entry_found_by_config_when_the_weights_differ(tmp_path):
    other = URL.replace("9e37ed88", "00000000")
    acks = "    acknowledged_drift:\n      - {source: metafile, field: body.ap, value: 0.652, why: test}\n"
    findings = _synthetic(tmp_path, METAFILE.format(ap=0.521, url=other), acks)
    status = {f.field: (f.metafile, f.status) for f in findings}
    assert status["checkpoint.url"] == (other, "DRIFT")
    assert status["body.ap"] == (0.652, "acknowledged")


def test_a_row_without_any_metafile_entry(tmp_path):
    findings = _synthetic(tmp_path, METAFILE.format(ap=0.521, url="x").replace("res50_8xb64", "res18_8xb64"))
    assert [(f.field, f.status) for f in findings] == [("entry", "DRIFT")]


def test_same_value_compares_numbers_not_spelling():
    assert same_value(0.46, 0.460) and same_value(None, None) and same_value("a", "a")
    assert not same_value(0.543, 0.567) and not same_value(0.5, None) and not same_value("0.5", 0.5)
