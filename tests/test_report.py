"""`zoo report`: the published layout with measured values, the reproduction table, plots, determinism."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from test_compare import R50, UBODY, W48, M, error_record, ok_record, skipped_record

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
                          inference={"crops_per_s": 12.5, "device": "cuda"}),
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
    assert "![Whole AP against throughput](coco-wholebody-speed.png)" in text
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
