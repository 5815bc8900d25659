"""P2: data-path speed, zoo.crops vs mmpose's per-box pipeline, on a synthetic COCO-WholeBody set.

What is compared (same images and boxes; every timed pass in its own process, the two paths
alternating, so that each has its own peak memory and a change in machine load falls on both):
  reference  mmpose's test dataset through a torch DataLoader with `pseudo_collate`, exactly as
             `zoo.evaluate.infer` feeds `model.test_step`: LoadImage -> GetBBoxCenterScale ->
             TopdownAffine -> PackPoseInputs once per box, so each image is decoded once per box.
  fast       `zoo.crops.chunk_loader`: each image decoded once, all of its boxes warped from it, and
             per box only what the model and the metric read (ids, center, scale, bbox score)
             instead of a PoseDataSample.
No model runs. The first process of each path and worker count makes one more, untimed pass that
hashes every crop's bytes together with those box fields (read from the PoseDataSample on the
reference side), and the benchmark compares all of them rather than assuming identity.

The images are the synthetic stick figures at COCO sizes (long side 640) with about 21 detector
boxes per image, as the real det file has (104,125 on 5,000). Flat drawings compress to ~20 KB,
while COCO val2017 photos average roughly 150-200 KB, and JPEG decode time grows with the
entropy-coded size, so seeded grain is added and the images re-encoded (quality 90) to bring them
near that size; `--noise 0` keeps the drawings as they are.

`data_speedup` in summary.json compares each path at its own fastest worker count (how a user would
run it on the machine); the ratios at equal worker counts, in wall and in CPU time, are reported too.

    python -m benchmarks.data_speed                   # 200 images, ~4k crops, workers 0 and 2
    python -m benchmarks.data_speed --images 50 --workers 2
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import _common

MODULE = "benchmarks.data_speed"
CSV_NAME = "data_speed.csv"
MD_NAME = "data_speed.md"
PACKAGES = ("opencv-python", "numpy", "torch", "mmcv", "mmengine", "mmpose")
MANIFESTS = _common.ROOT / "manifests"

DEFAULT_IMAGES = 200
ROW = "res50-256x192"  # a detector-box row at 256x192, the common case of the table
BATCH_SIZE = 32  # the configs' test batch size
FP_PER_IMAGE = 19.0  # synthetic false positives per image: ~21 boxes per image in all, as the real det file
MAX_SIDE = 640  # COCO image sizes
NOISE_SIGMA = 24.0  # seeded grain that brings the drawings' JPEGs to ~150 KB, near COCO val2017's mean
JPEG_QUALITY = 90


# --------------------------------------------------------------------------------------------------
# data


def prepare_data(root: Path, images: int, seed: int, noise: float) -> dict[str, Any]:
    """Write the synthetic set under `root`; returns its counts and mean JPEG size."""
    import cv2

    from zoo.data import SynthSpec, synthesize

    synth = synthesize(
        root, n_images=images, seed=seed, spec=SynthSpec(max_side=MAX_SIDE, fp_per_image=FP_PER_IMAGE)
    )
    files = sorted(synth.img_dir.iterdir())
    for n, path in enumerate(files):
        if noise > 0:
            img = cv2.imread(str(path), cv2.IMREAD_COLOR)
            grain = np.random.default_rng([seed, n]).normal(0.0, noise, img.shape)
            img = np.clip(img + grain, 0, 255).astype(np.uint8)
            ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
            if not ok:
                raise RuntimeError(f"cv2 could not encode {path}")
            path.write_bytes(buf.tobytes())
    return {
        "images": len(files),
        "detections": synth.n_detections,
        "mean_jpeg_kb": round(sum(p.stat().st_size for p in files) / len(files) / 1000, 1),
    }


# --------------------------------------------------------------------------------------------------
# the two paths


def _boxes(path: str, dataset: Any, indices: list[int], batch_size: int, workers: int) -> Iterable[Any]:
    """One pass of a path: mmpose's batches of (crops, PoseDataSamples), or zoo's chunks."""
    if path == "fast":
        from zoo.crops import chunk_loader

        return chunk_loader(dataset, indices, workers)
    from mmengine.dataset import pseudo_collate
    from torch.utils.data import DataLoader, Subset

    return DataLoader(
        Subset(dataset, indices), batch_size=batch_size, num_workers=workers, collate_fn=pseudo_collate
    )


def _count(path: str, item: Any) -> int:
    return len(item["sample_id"]) if path == "fast" else len(item["data_samples"])


def _per_box(path: str, item: Any) -> Iterable[tuple[Any, dict[str, Any]]]:
    """(crop, the fields the model and metric read) per box of an item of either path."""
    if path == "fast":
        for i in range(len(item["sample_id"])):
            yield (
                item["crops"][i],
                {f: item[f][i] for f in ("sample_id", "image_id", "center", "scale", "bbox_score")},
            )
        return
    for crop, sample in zip(item["inputs"], item["data_samples"], strict=True):
        yield crop, {
            "sample_id": np.int64(sample.id), "image_id": np.int64(sample.img_id),
            "center": sample.input_center, "scale": sample.input_scale,
            "bbox_score": sample.gt_instances.bbox_scores[0],
        }  # fmt: skip


def _canonical(value: Any) -> bytes:
    """Bytes that are equal exactly when two values are (dtype and shape included)."""
    import torch

    if isinstance(value, torch.Tensor):
        value = value.numpy()
    if isinstance(value, (np.ndarray, np.generic)):
        value = np.asarray(value)
        return f"{value.dtype}{value.shape}".encode() + value.tobytes()
    if isinstance(value, dict):
        return b"{" + b",".join(k.encode() + b":" + _canonical(value[k]) for k in sorted(value)) + b"}"
    return repr(value).encode()


def crop_digest(crop: Any, fields: dict[str, Any]) -> str:
    """sha256 of one crop's bytes and the box fields the model and the metric read."""
    h = hashlib.sha256(_canonical(crop))
    h.update(_canonical(fields))
    return h.hexdigest()


def _cpu_seconds() -> float:
    """User + system CPU of this process and its reaped children: the work done, whatever else the
    machine is running (wall time on a shared machine also measures the neighbours)."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def worker(
    path: str, data_root: Path, workers: int, batch_size: int, repeats: int, digests: bool
) -> dict[str, Any]:
    """Time `repeats` full passes of one path; with `digests`, then hash every crop in one untimed pass."""
    from zoo import compat

    compat.apply()
    from mmengine.utils.dl_utils import set_multi_processing

    from zoo.data import dataset_paths, load_registry
    from zoo.evaluate import build_dataset, load_config
    from zoo.manifest import load_manifests

    row = load_manifests(MANIFESTS).row(ROW)
    cfg = load_config(row, dataset_paths(load_registry(MANIFESTS).get(row.dataset), data_root))
    set_multi_processing(**cfg.env_cfg.mp_cfg)  # as mmengine's Runner does before testing (cv2 threads 0)
    dataset = build_dataset(cfg)
    indices = list(range(len(dataset)))

    cpu: list[float] = []

    def one_pass() -> int:
        start = _cpu_seconds()
        n = sum(_count(path, item) for item in _boxes(path, dataset, indices, batch_size, workers))
        cpu.append(_cpu_seconds() - start)  # the pass's DataLoader workers are reaped by now
        return n

    times, crops = _common.timed(one_pass, repeats)
    result = {
        "seconds": times,
        "cpu_seconds": cpu,
        "crops": crops,
        "main_peak_rss_mib": _common.peak_rss_mib(),
        "worker_peak_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        if workers
        else None,
    }
    if digests:
        result["digests"] = [
            crop_digest(crop, fields)
            for item in _boxes(path, dataset, indices, batch_size, workers)
            for crop, fields in _per_box(path, item)
        ]
    return result


# --------------------------------------------------------------------------------------------------
# driver


def _measure(data_root: Path, workers: Sequence[int], batch_size: int, repeats: int) -> dict[tuple, dict]:
    """Each (path, workers) `repeats` times, one process per pass, the paths alternating so that a
    change in machine load during the run falls on both; the first pass of each also hashes."""
    results: dict[tuple[str, int], dict[str, Any]] = {}
    for rep in range(repeats):
        for w in workers:
            for path in ("reference", "fast"):
                args = ["--worker", path, "--data-root", str(data_root), "--workers", str(w)]
                args += ["--batch-size", str(batch_size), "--repeats", "1"] + (
                    ["--digests"] if rep == 0 else []
                )
                res = _common.run_worker(MODULE, args)
                acc = results.setdefault(
                    (path, w), {"seconds": [], "main_peak_rss_mib": 0.0, "worker_peak_rss_mib": None}
                )
                acc["seconds"] += res["seconds"]
                acc.setdefault("cpu_seconds", []).extend(res["cpu_seconds"])
                acc["crops"] = res["crops"]
                acc["digests"] = res.get("digests", acc.get("digests"))
                acc["main_peak_rss_mib"] = max(acc["main_peak_rss_mib"], res["main_peak_rss_mib"])
                if res["worker_peak_rss_mib"] is not None:
                    acc["worker_peak_rss_mib"] = max(
                        acc["worker_peak_rss_mib"] or 0.0, res["worker_peak_rss_mib"]
                    )
    return results


def _markdown(summary: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    m = summary["machine"]
    lines = [
        "# P2 data path: zoo.crops vs mmpose's per-box test pipeline",
        "",
        f"Generated by `python -m {MODULE}` on {summary['date']}. Do not edit by hand.",
        "",
        f"- Machine: {m['cpu']}, {m['cpus_usable']} usable CPUs, {m['memory_gib']} GiB RAM, {m['os']}, "
        f"Python {m['python']}; load average {summary['load_average']} at the start, "
        f"{summary['load_average_end']} at the end (a shared machine: wall times move with its load)",
        "- Packages: " + ", ".join(f"{k} {v}" for k, v in m["packages"].items()),
        f"- Data: synthetic COCO-WholeBody val, {summary['images']} images (long side {MAX_SIDE}, mean JPEG "
        f"{summary['mean_jpeg_kb']} KB after noise sigma {summary['noise_sigma']}), {summary['crops']} detector boxes "
        f"({summary['crops'] / summary['images']:.1f} per image), seed {summary['seed']}",
        f"- Pipeline: row `{ROW}` (input 256x192), batch size {summary['batch_size']}; "
        f"{summary['repeats']} timed passes per path, one process each, paths alternating (median reported)",
        "- Reference: mmpose's dataset + DataLoader + pseudo_collate (as `zoo.evaluate.infer`), one decode per box. "
        "Fast: `zoo.crops.chunk_loader`, one decode per image. Both under the config's `env_cfg.mp_cfg` "
        "(fork, `cv2.setNumThreads(0)`), as mmengine's Runner sets the process up.",
        "",
        "| path | workers | median s | crops/s | speedup | CPU ms/crop | CPU speedup | main peak RSS MiB "
        "| worker peak RSS MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        worker_rss = "" if r["worker_peak_rss_mib"] == "" else f"{r['worker_peak_rss_mib']:.0f}"
        lines.append(
            f"| {r['path']} | {r['workers']} | {r['median_s']:.2f} | {r['crops_per_s']:.0f} | {r['speedup']:.1f}x "
            f"| {r['cpu_ms_per_crop']:.2f} | {r['cpu_speedup']:.1f}x | {r['main_peak_rss_mib']:.0f} | {worker_rss} |"
        )
    lines += [
        "",
        "CPU = user + system time of the process and its DataLoader workers: the work each path does, which "
        "unlike wall time does not depend on what else the machine runs.",
        "",
        f"- Speedup, each path at its fastest worker count (fast {summary['best_workers']['fast']}, reference "
        f"{summary['best_workers']['reference']}): **{summary['data_speedup']:.1f}x** crops/s; at equal worker counts "
        + ", ".join(f"{w}: {x:.1f}x" for w, x in summary["data_speedups_by_workers"].items())
        + " (CPU: "
        + ", ".join(f"{w}: {x:.1f}x" for w, x in summary["data_cpu_speedups_by_workers"].items())
        + ")",
        f"- Crops and samples byte-identical to the reference, all {summary['crops']} of them in every fast run: "
        f"**{summary['data_crops_identical']}**"
        + ("" if summary["data_crops_identical"] else f" ({summary['mismatched_crops']} differ)"),
        "",
    ]
    return "\n".join(lines)


def run(
    images: int = DEFAULT_IMAGES,
    workers: Sequence[int] = (0, 2),
    batch_size: int = BATCH_SIZE,
    repeats: int = 3,
    seed: int = 0,
    noise: float = NOISE_SIGMA,
    out: Path = _common.RESULTS_DIR,
) -> dict[str, Any]:
    """Measure both paths at each worker count, write data_speed.csv/.md, merge the data keys into summary.json."""
    load_average = " ".join(f"{x:.2f}" for x in os.getloadavg())
    tmp = Path(tempfile.mkdtemp(prefix="zoo-data-speed-"))
    try:
        data = prepare_data(tmp / "coco", images, seed, noise)
        results = _measure(tmp / "coco", workers, batch_size, repeats)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    reference = results[("reference", workers[0])]["digests"]
    mismatched = sum(
        sum(a != b for a, b in zip(reference, res["digests"], strict=False))
        + abs(len(reference) - len(res["digests"]))
        for res in results.values()
    )
    rows = []
    for (path, w), res in results.items():
        median = _common.median(res["seconds"])
        ref_median = _common.median(results[("reference", w)]["seconds"])
        cpu = _common.median(res["cpu_seconds"])
        ref_cpu = _common.median(results[("reference", w)]["cpu_seconds"])
        rows.append(
            {
                "path": path,
                "workers": w,
                "batch_size": batch_size,
                "images": data["images"],
                "crops": res["crops"],
                "repeats": len(res["seconds"]),
                "median_s": round(median, 4),
                "min_s": round(min(res["seconds"]), 4),
                "max_s": round(max(res["seconds"]), 4),
                "crops_per_s": round(res["crops"] / median, 1),
                "speedup": round(ref_median / median, 2),
                "median_cpu_s": round(cpu, 3),
                "cpu_ms_per_crop": round(1000 * cpu / res["crops"], 3),
                "cpu_speedup": round(ref_cpu / cpu, 2),
                "main_peak_rss_mib": round(res["main_peak_rss_mib"], 1),
                "worker_peak_rss_mib": ""
                if res["worker_peak_rss_mib"] is None
                else round(res["worker_peak_rss_mib"], 1),
            }
        )
    speedups = {str(r["workers"]): r["speedup"] for r in rows if r["path"] == "fast"}
    cpu_speedups = {str(r["workers"]): r["cpu_speedup"] for r in rows if r["path"] == "fast"}
    # the headline: each path at its own fastest worker count, as a user would run it on this machine
    best = {
        p: max((r for r in rows if r["path"] == p), key=lambda r: r["crops_per_s"])
        for p in ("reference", "fast")
    }
    summary = {
        "date": _common.now_iso(),
        "machine": _common.machine_info(PACKAGES),
        "load_average": load_average,
        "load_average_end": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "images": data["images"],
        "crops": len(reference),
        "mean_jpeg_kb": data["mean_jpeg_kb"],
        "noise_sigma": noise,
        "seed": seed,
        "batch_size": batch_size,
        "workers": list(workers),
        "repeats": repeats,
        "data_speedup": round(best["fast"]["crops_per_s"] / best["reference"]["crops_per_s"], 2),
        "best_workers": {p: r["workers"] for p, r in best.items()},
        "data_speedups_by_workers": speedups,
        "data_cpu_speedups_by_workers": cpu_speedups,
        "data_crops_identical": mismatched == 0,
        "mismatched_crops": mismatched,
    }
    _common.write_csv(out / CSV_NAME, rows)
    _common.write_text(out / MD_NAME, _markdown(summary, rows))
    _common.update_summary(
        out,
        {
            "data_speedup": summary["data_speedup"],
            "data_crops_identical": summary["data_crops_identical"],
            "runs": {
                "data_speed": {
                    key: summary[key]
                    for key in (
                        "date",
                        "machine",
                        "load_average",
                        "load_average_end",
                        "best_workers",
                        "images",
                        "crops",
                        "mean_jpeg_kb",
                        "batch_size",
                        "workers",
                        "data_speedups_by_workers",
                        "data_cpu_speedups_by_workers",
                    )
                }
            },
        },
    )
    return summary


def _worker_counts(text: str) -> list[int]:
    try:
        counts = sorted({int(x) for x in text.split(",")})
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected comma-separated worker counts, e.g. 0,2"
        ) from None
    if not counts or counts[0] < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: worker counts must be >= 0")
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=DEFAULT_IMAGES, help="synthetic images (default: 200)")
    parser.add_argument(
        "--workers",
        type=_worker_counts,
        default=[0, 2],
        help="DataLoader worker counts, comma-separated (default: 0,2)",
    )
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per path (median reported)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--noise", type=float, default=NOISE_SIGMA, help="JPEG grain sigma (0: plain drawings)"
    )
    parser.add_argument("--out", type=Path, default=_common.RESULTS_DIR, help="results folder")
    parser.add_argument("--worker", choices=("reference", "fast"), help=argparse.SUPPRESS)
    parser.add_argument("--data-root", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--digests", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        (count,) = args.workers
        _common.emit(worker(args.worker, args.data_root, count, args.batch_size, args.repeats, args.digests))
        return 0
    s = run(args.images, args.workers, args.batch_size, args.repeats, args.seed, args.noise, args.out)
    print(
        f"data speedup {s['data_speedup']:.1f}x (each path at its fastest worker count; at equal counts "
        f"{', '.join(f'{w} workers {x:.1f}x' for w, x in s['data_speedups_by_workers'].items())}), "
        f"{s['crops']} crops identical: {s['data_crops_identical']} -> {args.out / MD_NAME}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
