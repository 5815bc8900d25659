"""`zoo report`: the published layout with measured values, the reproduction table, plots, determinism."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from test_compare import R50, UBODY, W48, M, error_record, ok_json, ok_record, skipped_record

from zoo.cli import main
from zoo.report import write_report
from zoo.results import Record, write_record

ENV = {
    "zoo": "0.1.0", "git_commit": "abc123", "python": "3.11.7", "platform": "Linux-x86_64",
    "packages": {"torch": {"version": "2.13.0+cpu", "path": "/somewhere/torch"}, "mmpose": {"version": "1.3.2"}},
    "device": {"cpu": "x86_64", "cpu_threads": 2, "cuda_available": False}, "mmcv_ops": {"loaded": True},
}  # fmt: skip


def _records() -> dict[str, Record]:
    return {
        R50.id: ok_record(R50, {"whole.ap": -0.0123, "hand.ar": 0.0004}, box_source="det", environment=ENV,
                          inference={"crops_per_s": 41.25, "device": "cuda"}, timings={"total_s": 60.0}),
        W48.id: ok_record(W48, {"body.ap": 0.03}, box_source="det", environment={**ENV, "git_commit": "def456"},
                          inference={"crops_per_s": 12.5, "device": "cuda", "shared_pass": [R50.id]}),
        "res152-256x192": error_record(M.row("res152-256x192")),
        UBODY.id: skipped_record(UBODY),
    }  # fmt: skip


def _cells(markdown: str) -> list[list[str]]:
    """The cells of every markdown table line, stripped."""
    return [
        [c.strip() for c in line.strip("|").split("|")]
        for line in markdown.splitlines()
        if line.startswith("|")
    ]


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_same_records_give_byte_identical_reports(tmp_path: Path) -> None:
    first = write_report(M, _records(), tmp_path / "a")
    write_report(M, _records(), tmp_path / "b")
    assert [p.name for p in first] == [
        "coco-wholebody.md", "coco-wholebody-delta.png", "coco-wholebody-speed.png",
        "ubody2d.md", "ubody2d-delta.png", "ubody2d-speed.png",
    ]  # fmt: skip
    assert _digests(tmp_path / "a") == _digests(tmp_path / "b")
    for png in (tmp_path / "a").glob("*.png"):
        data = png.read_bytes()
        assert data.startswith(b"\x89PNG") and b"Software" not in data and b"Matplotlib" not in data
    other = _records()
    changed = other[R50.id].to_json()
    changed["metrics"]["wholebody"]["AP"] += 0.001  # one number changes: the report changes
    other[R50.id] = Record.from_json(changed)
    write_report(M, other, tmp_path / "c")
    assert _digests(tmp_path / "c")["coco-wholebody.md"] != _digests(tmp_path / "a")["coco-wholebody.md"]


def test_report_content(tmp_path: Path) -> None:
    write_report(M, _records(), tmp_path)
    text = (tmp_path / "coco-wholebody.md").read_text(encoding="utf-8")
    # (a) the published layout, measured values in place of expected; failed/missing rows show n/a
    assert "|      ResNet-50      |  256x192   |  0.509   |  0.633   |" in text
    assert "|      HRNet-w48      |  256x192   |  0.579   |  0.681   |" in text
    assert "|     ResNet-152      |  256x192   |   n/a    |   n/a    |" in text
    # (b) reproduction: status, box source, throughput per row; every published metric with Δ and status
    cells = _cells(text)
    assert ["res50-256x192", "ResNet-50", "256x192", "det", "FAIL", "41.25", "cuda"] in [c[:7] for c in cells]
    # a pass shared by rows runs all their models on each crop: its pace says it is theirs together
    assert [W48.id, "12.50 (pass of 2 rows)", "cuda"] in [[c[0], *c[5:7]] for c in cells]
    assert [
        "res152-256x192",
        "ResNet-152",
        "256x192",
        "det",
        "ERROR",
        "n/a",
        "",
        "run failed: CUDA OOM at batch 1",
    ] in cells
    assert [
        "res50-256x192",
        "ResNet-50",
        "Whole AP",
        "0.5210",
        "0.5087",
        "-0.0123",
        "±0.005",
        "FAIL",
    ] in cells
    assert ["res50-256x192", "ResNet-50", "Hand AR", "0.5840", "0.5844", "+0.0004", "±0.005", "PASS"] in cells
    assert (
        sum(c[0] == "res50-256x192" for c in cells) == 10 + 2
    )  # ten metrics, the row's line, its provenance
    provenance = next(c for c in cells if c[0] == "res50-256x192" and c[1].startswith("9e37ed88"))
    assert provenance[2] == "det" and provenance[4] == "full set" and provenance[5] == "—"
    assert not any(
        c[0] == "res152-256x192" and c[2] == "Whole AP" for c in cells
    )  # an ERROR row has no metrics
    # (c) environment: two distinct environments, one column each; no install paths
    assert ["git commit", "def456", "abc123"] in cells
    assert "/somewhere" not in text
    # (d) plots, linked relatively
    assert "![Δ per row and metric](coco-wholebody-delta.png)" in text
    assert "![Throughput per row (boxes/s)](coco-wholebody-speed.png)" in text
    assert "## Per keypoint" in text and "No record carries per-keypoint numbers" in text
    assert "## Box source" not in text  # no row was run with another box source
    # 'Details and Download' points at mmpose's published page, not a relative path that leads nowhere
    page = "https://github.com/open-mmlab/mmpose/blob/v1.3.2/configs/wholebody_2d_keypoint/topdown_heatmap/"
    assert f"[resnet_coco-wholebody.md]({page}coco-wholebody/resnet_coco-wholebody.md)" in text
    assert "](./" not in text and "Not a reproduction" not in text
    ubody = (tmp_path / "ubody2d.md").read_text(encoding="utf-8")
    assert "| HRNet-w32 |  256x192   |   n/a    |   n/a    |" in ubody and "SKIPPED" in ubody


def test_cli_report_selects_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = tmp_path / "runs"
    for record in _records().values():
        write_record(runs, record)
    assert main(["report", "--results", str(runs), "--out", str(tmp_path / "rep"), "--table", "ubody2d"]) == 0
    assert capsys.readouterr().out.split() == [
        str(tmp_path / "rep" / n) for n in ("ubody2d.md", "ubody2d-delta.png", "ubody2d-speed.png")
    ]
    assert main(["report", "--results", str(runs), "--out", str(tmp_path / "rep2"), R50.id]) == 0
    text = (tmp_path / "rep2" / "coco-wholebody.md").read_text(encoding="utf-8")
    assert "res50-256x192" in text and "hrnet-w48-256x192" not in text
    assert main(["report", "--results", str(tmp_path / "missing"), "--out", str(tmp_path / "rep3")]) == 2


def _per_keypoint(low_part: str) -> dict:
    """Valid `per_keypoint` numbers: every keypoint at OKS 0.8 except `low_part`'s at 0.3."""
    from zoo.keypoints import KeypointStats
    from zoo.metrics import PARTS

    spans = {p.name: (p.start, p.stop) for p in PARTS}
    lo, hi = spans[low_part]
    oks = [0.3 if lo <= k < hi else 0.8 for k in range(133)]
    parts = {
        name: {"n": 4 * (b - a), "oks": sum(oks[a:b]) / (b - a), "pck": 0.5, "dist": 3.0}
        for name, (a, b) in spans.items()
    }
    data = {"matched": 4, "use_area": True, "pck_threshold": 0.1, "n": [4] * 133, "oks": oks,
            "pck": [0.5] * 133, "dist": [3.0] * 133, "parts": parts}  # fmt: skip
    KeypointStats.from_json(data)  # the shape a run writes
    return data


def test_report_per_keypoint_box_sources_and_caveats(tmp_path: Path) -> None:
    """Per-keypoint plot and weakest part per row; the box-source table from `--boxes det,gt`
    records; a subset or synthetic run is flagged above everything."""
    fingerprint = ok_json(R50)["fingerprint"]
    records = {
        R50.id: ok_record(R50, {"whole.ap": -0.02}, per_keypoint=_per_keypoint("lefthand")),
        W48.id: ok_record(W48, per_keypoint=_per_keypoint("face"),
                          fingerprint={**ok_json(W48)["fingerprint"], "subset": 5}),
    }  # fmt: skip
    gt = ok_record(R50, {"whole.ap": -0.005, "body.ap": 0.01}, box_source="gt",
                   fingerprint={**fingerprint, "boxes": "gt"})  # fmt: skip
    written = write_report(M, records, tmp_path, variants={R50.id: {"gt": gt}})
    assert tmp_path / "coco-wholebody-keypoints.png" in written
    assert (tmp_path / "coco-wholebody-keypoints.png").read_bytes().startswith(b"\x89PNG")
    assert not (tmp_path / "ubody2d-keypoints.png").exists()  # no record there carries the numbers
    text = (tmp_path / "coco-wholebody.md").read_text(encoding="utf-8")
    assert "![Per-keypoint OKS](coco-wholebody-keypoints.png)" in text
    cells = _cells(text)
    weakest = {c[0]: c[2] for c in cells if len(c) == 4 and c[0] in ("ResNet-50", "HRNet-w48")}
    assert weakest == {"ResNet-50": "lefthand 0.300", "HRNet-w48": "face 0.300"}
    boxes = {c[2]: c for c in cells if len(c) == 8 and c[1] == "det → gt"}
    # whole: own 0.521 - 0.02, with GT boxes 0.521 - 0.005: the boxes explain 0.015 of the 0.02 gap
    assert boxes["Whole AP"][3:7] == ["0.5010", "0.5160", "+0.0150", "-0.0200"]
    assert boxes["Body AP"][5:7] == ["+0.0100", "+0.0000"]
    assert set(boxes) == {"Body AP", "Foot AP", "Face AP", "Hand AP", "Whole AP"}
    assert "Not a reproduction of the published numbers:** 1 row(s) measured a subset" in text


def test_report_marks_stale_and_synthetic_records(tmp_path: Path) -> None:
    """A record that measured something else than the manifest row is STALE in the report, with the
    differing field and both values; a record of the harness's synthetic data is flagged above the
    tables and in its provenance row."""
    from zoo.provenance import all_differences

    synthetic = {**ok_json(R50)["fingerprint"], "data": {"synthetic": True}}
    records = {
        R50.id: ok_record(R50, fingerprint=synthetic),
        W48.id: Record.from_json({**ok_json(W48), "box_source": "gt"}),
    }
    write_report(M, records, tmp_path, differences=all_differences(list(M.rows), records, M))
    text = (tmp_path / "coco-wholebody.md").read_text(encoding="utf-8")
    stale = [c for c in _cells(text) if c[0] == W48.id or W48.name in c[0]]
    assert any("STALE" in cell for row in stale for cell in row), stale
    assert "box source: record gt, manifest det" in text
    assert f"1 row(s) measured the harness's synthetic data ({R50.id})" in text
    provenance = [c for c in _cells(text) if c[0] == R50.id and any("synthetic data" in x for x in c)]
    assert provenance, "the synthetic run is not marked in its provenance row"


def test_rows_of_the_same_model_keep_their_own_labels(tmp_path: Path) -> None:
    """The table has two "HRNet-w32" rows at 256x192 (COCO-WholeBody and UBody+COCO training): each
    keeps its own label in the per-keypoint section and the speed plot, none is dropped or merged."""
    from zoo.report import row_labels

    rows = [row for row in M.rows if row.table == "coco-wholebody"]
    twins = [row for row in rows if row.name == "HRNet-w32"]
    assert len(twins) == 2 and len({row.input_size_text for row in twins}) == 1  # the case in point
    for with_size in (False, True):
        labels = row_labels(rows, with_size)
        assert len(set(labels.values())) == len(rows), labels
    records = {row.id: ok_record(row, per_keypoint=_per_keypoint("face")) for row in twins}
    write_report(M, records, tmp_path)
    text = (tmp_path / "coco-wholebody.md").read_text(encoding="utf-8")
    keypoint_rows = [c[0] for c in _cells(text) if len(c) == 4 and c[0].startswith("HRNet-w32 (")]
    assert sorted(keypoint_rows) == sorted(f"HRNet-w32 ({row.id})" for row in twins)
