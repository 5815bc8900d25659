"""P1: evaluation speed, fast path vs mmpose's, on a full-scale synthetic COCO-WholeBody val set.

What is compared (each path in its own process, same seeded data, same per-box predictions):
  reference  mmpose `CocoWholeBodyMetric.compute_metrics` (rescoring + per-image OKS-NMS, then
             `results2json`, whose `dump` is captured instead of writing), then xtcocotools
             `COCOeval` six times, as mmpose's `_do_python_keypoint_eval` calls it.
  fast       `zoo.metrics.postprocess`, then `zoo.metrics.evaluate` on its arrays.
Stages are timed separately: postprocess, evaluate, and building the results-file records (mmpose's
`results2json`; our `PoseResults.to_records`). The headline speedup is postprocess + evaluate, the
metric itself; the records only exist to be written to a file, whose I/O neither path is timed for.
The fast path is also timed evaluating from records (what `zoo eval` does after parsing a file).
The results records of both paths and all 60 stats must be identical; the benchmark measures
max |diff| and the records' digests rather than assuming it.

    python -m benchmarks.eval_speed                 # full scale: 5,000 images, ~104k boxes
    python -m benchmarks.eval_speed --images 200    # quick
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import _common

MODULE = "benchmarks.eval_speed"
CSV_NAME = "eval_speed.csv"
MD_NAME = "eval_speed.md"
PACKAGES = ("numpy", "xtcocotools", "mmpose", "mmengine")

# Scale of COCO val2017 person detections used by the published rows: 104,125 boxes on 5,000 images.
FULL_IMAGES = 5000
BOXES_PER_IMAGE = 104125 / 5000
# Share of people whose body, foot, face, left hand, right hand are labelled (COCO-WholeBody-like).
PART_LABELLED_RATE = (0.7, 0.5, 0.45, 0.35, 0.35)


# --------------------------------------------------------------------------------------------------
# synthetic data: ground truth like COCO-WholeBody val, top-down predictions like a detector + model


def synthesize(
    n_images: int, boxes_per_image: float, seed: int
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(annotation dict, per-box predictions) with COCO-like statistics, without any image.

    About half the images hold people (1-30, skewed small), some people are crowds or have no labelled
    keypoints, parts are unlabelled at realistic rates. Boxes are Poisson per image: most near a
    person with noise from tiny to large relative to its size (so OKS spans every threshold), some
    near-duplicates (for NMS to remove), some false positives, some with no confident part.
    """
    from zoo.metrics import FIELDS, NUM_KEYPOINTS

    rng = np.random.default_rng(seed)
    bounds = np.cumsum([0] + [n for _, n in FIELDS])
    images, annotations, people = [], [], []
    for image_id in range(1, n_images + 1):
        images.append({"id": image_id, "width": 640, "height": 480, "file_name": f"{image_id:012d}.jpg"})
        n_people = 0 if rng.random() < 0.46 else min(30, 1 + int(rng.geometric(0.25)) - 1)
        for _ in range(n_people):
            w, h = np.exp(rng.uniform(np.log(8), np.log(400), 2))
            x, y = rng.uniform(0, 640 - min(w, 600)), rng.uniform(0, 480 - min(h, 440))
            kp = np.zeros((NUM_KEYPOINTS, 3))
            kp[:, 0] = x + rng.random(NUM_KEYPOINTS) * w
            kp[:, 1] = y + rng.random(NUM_KEYPOINTS) * h
            kp[:, 2] = np.where(rng.random(NUM_KEYPOINTS) < 0.75, 2, 0)
            for lo, hi, p_valid in zip(bounds[:-1], bounds[1:], PART_LABELLED_RATE, strict=True):
                if rng.random() > p_valid or w * h < 32 * 32:
                    kp[lo:hi, 2] = 0
            kp[kp[:, 2] == 0, :2] = 0
            crowd = int(rng.random() < 0.01)
            ann = {
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": 1,
                "bbox": [float(x), float(y), float(w), float(h)],
                "area": float(w * h * rng.uniform(0.4, 0.8)),
                "iscrowd": crowd,
                "num_keypoints": int((kp[:17, 2] > 0).sum()),
            }
            for (field, _), lo, hi in zip(FIELDS, bounds[:-1], bounds[1:], strict=True):
                ann[field] = kp[lo:hi].reshape(-1).tolist()
            annotations.append(ann)
            people.append((image_id, kp, (x, y, w, h)))
    dataset = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": "person", "supercategory": "person"}],
    }

    by_image: dict[int, list[tuple[np.ndarray, tuple[float, float, float, float]]]] = {}
    for image_id, kp, box in people:
        by_image.setdefault(image_id, []).append((kp, box))
    boxes = []
    for image_id in range(1, n_images + 1):
        mine = by_image.get(image_id, [])
        previous: list[tuple[np.ndarray, np.ndarray]] = []
        for _ in range(int(rng.poisson(boxes_per_image))):
            if previous and rng.random() < 0.1:  # near-duplicate of an earlier box: NMS food
                xy0, box = previous[int(rng.integers(len(previous)))]
                xy = xy0 + rng.normal(0, 0.3, xy0.shape)
            elif mine and rng.random() < 0.75:
                kp, (x, y, w, h) = mine[int(rng.integers(len(mine)))]
                target = np.where(kp[:, 2:] > 0, kp[:, :2], [x + w / 2, y + h / 2])
                xy = target + rng.normal(0, np.sqrt(w * h) * rng.uniform(0.005, 0.2), target.shape)
                box = np.array([w, h]) * rng.uniform(0.9, 1.1, 2)
            else:
                w, h = np.exp(rng.uniform(np.log(8), np.log(400), 2))
                xy = rng.random((NUM_KEYPOINTS, 2)) * [w, h] + rng.uniform(0, 300, 2)
                box = np.array([w, h])
            scores = rng.random(NUM_KEYPOINTS) ** rng.uniform(0.3, 3)
            if rng.random() < 0.03:
                scores[:] = rng.uniform(0, 0.2)  # nothing above keypoint_score_thr: score 0
            boxes.append(
                {
                    "id": len(boxes),
                    "image_id": image_id,
                    "keypoints": xy.astype(np.float32),
                    "keypoint_scores": scores.astype(np.float32),
                    "bbox_score": np.float32(rng.uniform(0.05, 1.0)),
                    "bbox_scale": (box * 1.25).astype(np.float32),
                }
            )
            previous.append((xy, box))
    return dataset, boxes


# --------------------------------------------------------------------------------------------------
# the two paths


def _reference_postprocess(boxes: Sequence[dict[str, Any]]) -> Any:
    """mmpose's CocoWholeBodyMetric fed as its test loop feeds it. Returns a callable that runs
    `compute_metrics` and returns (records, seconds in results2json), the records being what
    `results2json` would write (its `dump` is captured instead of writing the file)."""
    from zoo import compat

    compat.apply()
    from mmpose.datasets.datasets.utils import parse_pose_metainfo
    from mmpose.evaluation.metrics import coco_wholebody_metric as cwm

    from zoo import metrics

    captured: list[Any] = []
    cwm.dump = lambda obj, *args, **kwargs: captured.append(obj)
    metric = cwm.CocoWholeBodyMetric(format_only=True, outfile_prefix="captured")
    config = Path(metrics.dataset_config_path())
    metric.dataset_meta = parse_pose_metainfo({"from_file": str(config)})
    metric.coco = object()  # format_only never reads it; not None so no GT conversion is attempted
    for start in range(0, len(boxes), 32):  # mmpose's test batch size
        metric.process(
            [],
            [
                {
                    "id": b["id"],
                    "img_id": b["image_id"],
                    "pred_instances": {
                        "keypoints": b["keypoints"][None],
                        "keypoint_scores": b["keypoint_scores"][None],
                    },
                    "gt_instances": {
                        "bbox_scores": b["bbox_score"][None],
                        "bbox_scales": b["bbox_scale"][None],
                    },
                }
                for b in boxes[start : start + 32]
            ],
        )
    to_json = metric.results2json
    spent: list[float] = []

    def timed_results2json(*args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        out = to_json(*args, **kwargs)
        spent.append(time.perf_counter() - t)
        return out

    metric.results2json = timed_results2json

    def run() -> tuple[list[dict[str, Any]], float]:
        captured.clear()
        spent.clear()
        metric.compute_metrics(metric.results)
        return captured[-1], spent[-1]

    return run


def _instances(boxes: Sequence[dict[str, Any]]) -> Any:
    from zoo.metrics import Instances

    return Instances.stack(
        [b["image_id"] for b in boxes],
        [b["keypoints"] for b in boxes],
        [b["keypoint_scores"] for b in boxes],
        [b["bbox_score"] for b in boxes],
        [np.prod(b["bbox_scale"]) for b in boxes],
    )


def _digest(records: Sequence[dict[str, Any]]) -> str:
    return hashlib.sha256(json.dumps(records, sort_keys=True).encode()).hexdigest()


def worker(path: str, images: int, boxes_per_image: float, seed: int, repeats: int) -> dict[str, Any]:
    """Generate the data, then time each stage of one path; runs in its own process.

    Stages: postprocess (rescoring + NMS), results_records (building the results-file records),
    evaluate (the 60 stats from the path's own in-memory results), and for the fast path also
    evaluate_from_records (from the records, as `zoo eval` does after parsing the file).
    """
    from zoo import metrics

    dataset, boxes = synthesize(images, boxes_per_image, seed)
    sigmas = metrics.dataset_sigmas()
    times: dict[str, list[float]] = {}

    def add(stage: str, seconds: float) -> None:
        times.setdefault(stage, []).append(seconds)

    if path == "reference":
        post = _reference_postprocess(boxes)
        inputs_rss = _common.peak_rss_mib()
        for _ in range(repeats):
            t = time.perf_counter()
            records, in_results2json = post()
            add("postprocess", time.perf_counter() - t - in_results2json)
            add("results_records", in_results2json)
        for _ in range(repeats):
            t = time.perf_counter()
            stats = metrics.evaluate_reference(records, dataset, True, sigmas)
            add("evaluate", time.perf_counter() - t)
        metric_rss = _common.peak_rss_mib()
    else:
        instances = _instances(boxes)
        inputs_rss = _common.peak_rss_mib()
        times["postprocess"], results = _common.timed(
            lambda: metrics.postprocess(instances, sigmas=sigmas), repeats
        )
        times["evaluate"], stats = _common.timed(
            lambda: metrics.evaluate(results, dataset, sigmas=sigmas), repeats
        )
        metric_rss = _common.peak_rss_mib()  # before the records, which the stats do not need
        times["results_records"], records = _common.timed(results.to_records, repeats)
        times["evaluate_from_records"], from_records = _common.timed(
            lambda: metrics.evaluate(records, dataset, sigmas=sigmas), repeats
        )
        if from_records != stats:
            raise RuntimeError("fast path: evaluating records and arrays gave different stats")
    return {
        "path": path,
        "times": times,
        "inputs_rss_mib": inputs_rss,
        "metric_peak_rss_mib": metric_rss,
        "peak_rss_mib": _common.peak_rss_mib(),
        "boxes": len(boxes),
        "records": len(records),
        "annotations": len(dataset["annotations"]),
        "records_sha256": _digest(records),
        "stats": {part.name: stats[part.name] for part in metrics.PARTS},
    }


# --------------------------------------------------------------------------------------------------
# driver


def _max_abs_diff(a: dict[str, dict[str, float]], b: dict[str, dict[str, float]]) -> float:
    return max(abs(a[part][stat] - b[part][stat]) for part in a for stat in a[part])


def _markdown(summary: dict[str, Any], med: dict[tuple[str, str], float], results: dict[str, Any]) -> str:
    m = summary["machine"]
    ref, fast = results["reference"], results["fast"]
    lines = [
        "# P1 evaluation speed: zoo fast path vs mmpose CocoWholeBodyMetric + xtcocotools",
        "",
        f"Generated by `python -m {MODULE}` on {summary['date']}. Do not edit by hand.",
        "",
        f"- Machine: {m['cpu']}, {m['cpus_usable']} usable CPUs, {m['memory_gib']} GiB RAM, {m['os']}, "
        f"Python {m['python']}",
        "- Packages: " + ", ".join(f"{k} {v}" for k, v in m["packages"].items()),
        f"- Data: synthetic COCO-WholeBody val, {summary['images']} images, {summary['annotations']} annotations, "
        f"{summary['boxes']} boxes before NMS, {summary['records']} after (seed {summary['seed']})",
        f"- Load average (1 min) before / after: {summary['load_average_1min'][0]} / "
        f"{summary['load_average_1min'][1]} on {m['cpus_usable']} CPUs (the machine may be shared)",
        f"- Repeats: reference {summary['reference_repeats']}, fast {summary['fast_repeats']}; medians"
        + (" (the reference is slow, so it ran once)" if summary["reference_repeats"] == 1 else ""),
        "- Each path in its own process; generating the data and reading/writing the results JSON file are",
        "  not timed for either. The reference's `evaluate` starts from records (that is how xtcocotools",
        "  works); the fast path's from its own arrays, and also from records, as `zoo eval` does.",
        "",
        "| stage | reference s | fast s | speedup |",
        "|---|---:|---:|---:|",
    ]
    for stage, label in (
        ("postprocess", "rescoring + OKS-NMS"),
        ("evaluate", "60 stats (6 parts x 10)"),
        ("total", "**metric: postprocess + evaluate**"),
        ("results_records", "building the results-file records"),
        ("evaluate_from_records", "60 stats from records (`zoo eval`)"),
    ):
        r = med.get(("reference", stage), med[("reference", "evaluate")])
        f = med[("fast", stage)]
        lines.append(f"| {stage}: {label} | {r:.2f} | {f:.2f} | {r / f:.1f}x |")
    lines += [
        "",
        "| path | peak RSS MiB after inputs | ... after the metric (postprocess + evaluate) | ... at the end |",
        "|---|---:|---:|---:|",
        *(
            f"| {name} | {r['inputs_rss_mib']:.0f} | {r['metric_peak_rss_mib']:.0f} | {r['peak_rss_mib']:.0f} |"
            for name, r in (("reference", ref), ("fast", fast))
        ),
        "",
        "(Peak resident memory of each worker process, which also holds its inputs and imports - the",
        "reference imports mmpose, hence torch; the fast path's end",
        "includes building the results records and evaluating from them.)",
        "",
        f"- Speedup of the metric (postprocess + evaluate): **{summary['eval_speedup']:.1f}x**; "
        f"counting the results records too (records + evaluate from records): "
        f"{summary['eval_speedup_with_records']:.1f}x",
        f"- Max |diff| over the 60 stats: **{summary['eval_max_abs_diff']:.3g}**",
        f"- Results records identical (sha256 of their JSON): **{summary['eval_records_identical']}**",
        "",
    ]
    return "\n".join(lines)


def run(
    images: int = FULL_IMAGES,
    boxes_per_image: float = BOXES_PER_IMAGE,
    seed: int = 0,
    repeats: int = 5,
    reference_repeats: int = 1,
    out: Path = _common.RESULTS_DIR,
) -> dict[str, Any]:
    """Measure both paths, write eval_speed.csv/.md and merge the eval keys into summary.json."""
    common = ["--images", str(images), "--boxes-per-image", repr(boxes_per_image), "--seed", str(seed)]
    load_before = os.getloadavg()[0]  # the machine may be shared: say how busy it was
    results = {
        "reference": _common.run_worker(
            MODULE, ["--worker", "reference", "--repeats", str(reference_repeats), *common]
        ),
        "fast": _common.run_worker(MODULE, ["--worker", "fast", "--repeats", str(repeats), *common]),
    }
    rows = []
    for path, res in results.items():
        stages = dict(res["times"])
        stages["total"] = [a + b for a, b in zip(stages["postprocess"], stages["evaluate"], strict=True)]
        for stage, times in stages.items():
            rows.append(
                {
                    "path": path,
                    "stage": stage,
                    "repeats": len(times),
                    "median_s": round(_common.median(times), 4),
                    "min_s": round(min(times), 4),
                    "max_s": round(max(times), 4),
                    "inputs_rss_mib": round(res["inputs_rss_mib"], 1),
                    "metric_peak_rss_mib": round(res["metric_peak_rss_mib"], 1),
                    "peak_rss_mib": round(res["peak_rss_mib"], 1),
                }
            )
    ref, fast = results["reference"], results["fast"]
    med = {(r["path"], r["stage"]): r["median_s"] for r in rows}
    with_records = (
        med[("reference", "postprocess")]
        + med[("reference", "results_records")]
        + med[("reference", "evaluate")]
    ) / (
        med[("fast", "postprocess")]
        + med[("fast", "results_records")]
        + med[("fast", "evaluate_from_records")]
    )
    summary = {
        "date": _common.now_iso(),
        "machine": _common.machine_info(PACKAGES),
        "images": images,
        "seed": seed,
        "boxes": fast["boxes"],
        "records": fast["records"],
        "annotations": fast["annotations"],
        "reference_repeats": reference_repeats,
        "fast_repeats": repeats,
        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "eval_speedup": med[("reference", "total")] / med[("fast", "total")],
        "eval_speedup_with_records": with_records,
        "eval_stage_speedups": {
            stage: med[("reference", stage)] / med[("fast", stage)] for stage in ("postprocess", "evaluate")
        },
        "eval_max_abs_diff": _max_abs_diff(ref["stats"], fast["stats"]),
        "eval_records_identical": ref["records_sha256"] == fast["records_sha256"],
    }
    _common.write_csv(out / CSV_NAME, rows)
    _common.write_text(out / MD_NAME, _markdown(summary, med, results))
    run_info = (
        "date",
        "machine",
        "load_average_1min",
        "images",
        "boxes",
        "records",
        "eval_speedup_with_records",
        "eval_stage_speedups",
    )
    _common.update_summary(
        out,
        {
            "eval_speedup": round(summary["eval_speedup"], 2),
            "eval_max_abs_diff": summary["eval_max_abs_diff"],
            "eval_records_identical": summary["eval_records_identical"],
            "runs": {"eval_speed": {key: summary[key] for key in run_info}},
        },
    )
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--images", type=int, default=FULL_IMAGES, help="synthetic images (default: 5000, full scale)"
    )
    parser.add_argument(
        "--boxes-per-image", type=float, default=BOXES_PER_IMAGE, help="mean boxes per image before NMS"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=5, help="repeats of the fast path (median reported)")
    parser.add_argument(
        "--reference-repeats", type=int, default=1, help="repeats of the (slow) reference path"
    )
    parser.add_argument("--out", type=Path, default=_common.RESULTS_DIR, help="results folder")
    parser.add_argument("--worker", choices=("reference", "fast"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _common.emit(worker(args.worker, args.images, args.boxes_per_image, args.seed, args.repeats))
        return 0
    s = run(args.images, args.boxes_per_image, args.seed, args.repeats, args.reference_repeats, args.out)
    print(
        f"eval speedup {s['eval_speedup']:.1f}x (postprocess {s['eval_stage_speedups']['postprocess']:.1f}x, "
        f"evaluate {s['eval_stage_speedups']['evaluate']:.1f}x), max |diff| {s['eval_max_abs_diff']:.3g}, "
        f"records identical: {s['eval_records_identical']} -> {args.out / MD_NAME}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
