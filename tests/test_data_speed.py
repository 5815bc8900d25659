"""benchmarks.data_speed at a tiny scale: both paths run in their own processes, every crop is
compared, the result files are written and summary.json is merged, not replaced."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_crop_digest_sees_one_pixel_and_one_field(synth_root: Path) -> None:
    """The benchmark's identity check can fail: a changed pixel or box field changes the digest,
    and mmpose's sample and zoo's chunk give the same digest for the same box."""
    from benchmarks.data_speed import _boxes, _per_box, crop_digest
    from zoo.data import dataset_paths, load_registry
    from zoo.evaluate import build_dataset, load_config
    from zoo.manifest import load_manifests

    manifests = ROOT / "manifests"
    row = load_manifests(manifests).row("res50-256x192")
    ds = build_dataset(load_config(row, dataset_paths(load_registry(manifests).get(row.dataset), synth_root)))
    crop, fields = next(iter(_per_box("fast", next(iter(_boxes("fast", ds, [0], 1, 0))))))
    digest = crop_digest(crop, fields)
    assert (
        crop_digest(*next(iter(_per_box("reference", next(iter(_boxes("reference", ds, [0], 1, 0)))))))
        == digest
    )
    changed = crop.clone()
    changed[0, 0, 0] ^= 1
    assert crop_digest(changed, fields) != digest
    assert crop_digest(crop, {**fields, "center": fields["center"] + 1e-3}) != digest


@pytest.mark.slow
def test_tiny_benchmark_writes_results_and_merges_summary(tmp_path: Path) -> None:
    from benchmarks import data_speed

    (tmp_path / "summary.json").write_text(
        json.dumps({"eval_speedup": 25.0, "runs": {"eval_speed": {"images": 9}}})
    )
    summary = data_speed.run(images=2, workers=(0,), batch_size=4, repeats=1, noise=4.0, out=tmp_path)
    assert summary["data_crops_identical"] is True and summary["mismatched_crops"] == 0
    assert summary["crops"] > 0 and summary["data_speedup"] > 0
    with open(tmp_path / "data_speed.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["path"], r["workers"]) for r in rows] == [("reference", "0"), ("fast", "0")]
    assert all(int(r["crops"]) == summary["crops"] and float(r["crops_per_s"]) > 0 for r in rows)
    assert all(float(r["main_peak_rss_mib"]) > 0 and float(r["cpu_ms_per_crop"]) > 0 for r in rows)
    md = (tmp_path / "data_speed.md").read_text()
    assert "byte-identical" in md and "| fast | 0 |" in md
    merged = json.loads((tmp_path / "summary.json").read_text())
    assert merged["eval_speedup"] == 25.0 and merged["runs"]["eval_speed"] == {"images": 9}
    assert merged["data_crops_identical"] is True and merged["data_speedup"] == summary["data_speedup"]
    assert merged["runs"]["data_speed"]["crops"] == summary["crops"]
    assert {"cpu", "python", "packages"} <= set(merged["runs"]["data_speed"]["machine"])
