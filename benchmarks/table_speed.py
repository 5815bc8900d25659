"""Table mode: rows that share their crops run in one pass, vs the same rows run one by one.

What is compared (same synthetic data, the same random-weight checkpoints of the real architectures
served over loopback and fetched beforehand, every run its own `zoo run` process):
  row by row  `zoo run ROW` once per row, as a user running the table row after row would;
  table       one `zoo run ROW ROW ROW`: each image decoded and each crop warped once, cut into every
              row's own batches (`zoo.inference.run_pass`).
Two ratios: the data path (the main thread's time waiting for crops, which with `--workers 0` is all
of the decoding and warping; the records' `inference.data_s`), and the whole run (wall time of the
processes, start-up, model builds, inference, post-processing and evaluation included). The rows'
predictions must be byte-identical and their records equal but for the volatile fields
(`zoo.results.VOLATILE`); the benchmark compares them rather than assuming it.

    python -m benchmarks.table_speed                    # 3 rows, 8 images of ~20 boxes
    python -m benchmarks.table_speed --images 4 --rows res50-256x192 vipnas-res50-256x192 hrnet-w32-256x192
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import _common

MODULE = "benchmarks.table_speed"
CSV_NAME = "table_speed.csv"
MD_NAME = "table_speed.md"
PACKAGES = ("numpy", "opencv-python", "torch", "mmpose")
# three 256x192 detector-box rows of the COCO-WholeBody table: the same crops, the lighter models
ROWS = ("res50-256x192", "vipnas-res50-256x192", "vipnas-res50-dark-256x192")


def _zoo(args: Sequence[str]) -> tuple[float, subprocess.CompletedProcess]:
    t = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "zoo", *args], cwd=_common.ROOT, capture_output=True, text=True
    )
    seconds = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"zoo {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return seconds, proc


def run(
    rows: Sequence[str] = ROWS, images: int = 8, seed: int = 0, out: Path = _common.RESULTS_DIR
) -> dict[str, Any]:
    from benchmarks.data_speed import prepare_data
    from zoo.results import comparable

    load_before = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="zoo-bench-table-"))
    try:
        data = prepare_data(work / "data", images, seed, noise=24.0)
        root = work / "data"
        mdir = _common.local_zoo(work, rows, root, seed)
        run_args = ["--manifests", str(mdir), "--data-root", str(root), "--workers", "0", "--no-progress"]
        alone = {row_id: _zoo(["run", row_id, *run_args, "--out", str(work / "alone")])[0] for row_id in rows}
        table_s, _ = _zoo(["run", *rows, *run_args, "--out", str(work / "table")])

        def record(folder: str, row_id: str) -> dict[str, Any]:
            return json.loads((work / folder / row_id / "result.json").read_text())

        results = []
        for row_id in rows:
            a, t = record("alone", row_id), record("table", row_id)
            same_preds = (work / "alone" / row_id / "predictions.json.gz").read_bytes() == (
                work / "table" / row_id / "predictions.json.gz"
            ).read_bytes()
            results.append({
                "row": row_id, "boxes": a["inference"]["crops"],
                "alone_wall_s": round(alone[row_id], 2), "alone_data_s": round(a["inference"]["data_s"], 3),
                "table_data_s": round(t["inference"]["data_s"], 3),
                "predictions_identical": same_preds, "records_identical": comparable(a) == comparable(t),
                "shared_pass": t["inference"]["shared_pass"],
            })  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)
    alone_data = sum(r["alone_data_s"] for r in results)
    table_data = results[0]["table_data_s"]  # one pass, the same number in every row's record
    summary = {
        "date": _common.now_iso(),
        "machine": _common.machine_info(PACKAGES),
        "rows": list(rows),
        "images": images,
        "boxes_per_row": results[0]["boxes"],
        "mean_jpeg_kb": data["mean_jpeg_kb"],
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "alone_wall_s": round(sum(alone.values()), 2),
        "table_wall_s": round(table_s, 2),
        "alone_data_s": round(alone_data, 3),
        "table_data_s": table_data,
        "table_speedup": round(alone_data / table_data, 2),
        "table_wall_speedup": round(sum(alone.values()) / table_s, 2),
        "table_identical": all(r["predictions_identical"] and r["records_identical"] for r in results),
        "table_shared": all(sorted(r["shared_pass"]) == sorted(set(rows) - {r["row"]}) for r in results),
    }
    _common.write_csv(out / CSV_NAME, [{k: v for k, v in r.items() if k != "shared_pass"} for r in results])
    _common.write_text(out / MD_NAME, _markdown(summary, results))
    _common.update_summary(out, {
        "table_speedup": summary["table_speedup"],
        "table_identical": summary["table_identical"],
        "runs": {"table_speed": {k: v for k, v in summary.items() if k not in ("table_speedup", "table_identical")}},
    })  # fmt: skip
    return summary


def _markdown(summary: dict[str, Any], results: list[dict[str, Any]]) -> str:
    m = summary["machine"]
    lines = [
        "# Table mode: one data pass for rows that share their crops, vs row by row",
        "",
        f"Generated by `python -m {MODULE}` on {summary['date']}. Do not edit by hand.",
        "",
        f"- Machine: {m['cpu']}, {m['cpus_usable']} usable CPUs, {m['memory_gib']} GiB RAM, {m['os']}, "
        f"Python {m['python']}",
        "- Packages: " + ", ".join(f"{k} {v}" for k, v in m["packages"].items()),
        f"- Data: {summary['images']} synthetic 640 px images ({summary['mean_jpeg_kb']:.0f} KB JPEGs), "
        f"{summary['boxes_per_row']} detector boxes per row; random-weight checkpoints; CPU, `--workers 0`",
        f"- Load average before / after: {summary['load_average'][0]} / {summary['load_average'][1]}",
        "",
        "| row | boxes | row alone: wall s | row alone: data path s | table: data path s (shared) | "
        "predictions identical | record identical |",
        "|---|---:|---:|---:|---:|---|---|",
        *(
            f"| {r['row']} | {r['boxes']} | {r['alone_wall_s']:.1f} | {r['alone_data_s']:.2f} | {r['table_data_s']:.2f} | "
            f"{r['predictions_identical']} | {r['records_identical']} |"
            for r in results
        ),
        "",
        f"- Data path: row by row {summary['alone_data_s']:.2f} s, table {summary['table_data_s']:.2f} s: "
        f"**{summary['table_speedup']:.1f}x**",
        f"- Whole run (wall, processes): row by row {summary['alone_wall_s']:.1f} s, table "
        f"{summary['table_wall_s']:.1f} s: {summary['table_wall_speedup']:.2f}x (on a CPU the models dominate)",
        f"- Every row's predictions byte-identical and its record equal but for the volatile fields: "
        f"**{summary['table_identical']}**; the rows shared one pass: {summary['table_shared']}",
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", nargs="+", default=list(ROWS), help="rows sharing their crops (at least 3)")
    parser.add_argument("--images", type=int, default=8, help="synthetic 640 px images (~20 boxes each)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=_common.RESULTS_DIR, help="results folder")
    args = parser.parse_args(argv)
    s = run(args.rows, args.images, args.seed, args.out)
    print(
        f"table mode: data path {s['table_speedup']:.1f}x, whole run {s['table_wall_speedup']:.2f}x, "
        f"identical: {s['table_identical']} -> {args.out / MD_NAME}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
