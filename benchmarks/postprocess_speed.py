"""Post-processing speed: heatmaps -> per-box predictions, the harness vs mmpose's per-instance decode.

What is compared, on the same recorded heatmaps (every path in its own process):
  reference  what mmpose's `model.test_step` does after the forward pass: `BaseHead.decode` (the
             codec's `decode` instance by instance), `add_pred_to_datasample` (input -> image
             coordinates), and the per-box values its metric keeps (`zoo.evaluate.instances_of`).
  fast       what `zoo run` does: `zoo.inference.Decoder` (`zoo.decode`, vectorised, checked against
             mmpose's decode on the first batch, a check done before timing) + `zoo.decode.to_image`
             into `Instances`, on as many decode workers as the machine has cores, as the pipeline
             runs them (a process pool for the codecs that blur, `Decoder.wants_processes`, from
             `POOL_MIN_WORKERS` workers on, below it one batch at a time in the threads; threads for
             MSRA); also timed on one thread.
The heatmaps are recorded from the real architectures of the 12 rows (one row per codec: MSRA 64x48,
DARK 64x48, DARK 96x72, UDP 64x48) on crops of a synthetic COCO-sized set, with two kinds of weights:
  fitted  the final layer fitted to draw the mean pose (`zoo.demo_model`): peaked maps, like a trained
          model's (the headline numbers);
  random  seeded random weights: nearly flat maps, the worst case for `zoo.decode`'s banded blur.
Both paths' keypoints and scores are hashed byte for byte and compared. `postprocess_speedup` is the
fitted-weights speedup over the table's codec mix (8 MSRA rows, 2 DARK 64x48, 1 DARK 96x72, 1 UDP,
the same boxes each), with as many decode workers as the machine has cores (the stage alone).

    python -m benchmarks.postprocess_speed                 # 6 batches of 32 per codec
    python -m benchmarks.postprocess_speed --batches 2 --repeats 1
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import _common

MODULE = "benchmarks.postprocess_speed"
CSV_NAME = "postprocess_speed.csv"
MD_NAME = "postprocess_speed.md"
PACKAGES = ("numpy", "opencv-python", "torch", "mmpose")
MANIFESTS = _common.ROOT / "manifests"
BATCH = 32
# codec case -> (the row whose architecture is recorded, how many of the 12 rows decode this way)
CASES = {
    "msra-64x48": ("res50-256x192", 8),
    "dark-64x48": ("hrnet-w32-dark-256x192", 2),
    "dark-96x72": ("hrnet-w48-dark-plus-384x288", 1),
    "udp-64x48": ("cspnext-m-udp-256x192", 1),
}
WEIGHTS = ("fitted", "random")


# --------------------------------------------------------------------------------------------------
# recording (its own process): the models' flip-averaged heatmaps on real crops


def record(folder: Path, seed: int) -> dict[str, Any]:
    """One batch of heatmaps per case and weights, with the boxes' centers and scales, into npz files."""
    import torch

    from zoo.crops import chunk_loader
    from zoo.data import SynthSpec, dataset_paths, gt_boxes, load_registry, synthesize
    from zoo.demo_model import mean_pose_state_dict
    from zoo.evaluate import build_dataset, build_model, load_config
    from zoo.inference import HeatmapModel
    from zoo.manifest import load_manifests
    from zoo.randweights import random_state_dict

    manifests = load_manifests(MANIFESTS)
    registry = load_registry(MANIFESTS)
    data = synthesize(
        folder / "data", n_images=24, seed=seed, spec=SynthSpec(max_side=640, fp_per_image=8)
    ).root
    train = synthesize(folder / "train", n_images=40, seed=seed + 1, write_images=False).root
    made = {}
    for case, (row_id, _) in CASES.items():
        row = manifests.row(row_id)
        paths = dataset_paths(registry.get(row.dataset), data)
        cfg = load_config(row, paths, workers=0)
        dataset = build_dataset(cfg)
        chunks = list(chunk_loader(dataset, list(range(min(BATCH, len(dataset))))))
        crops = torch.cat([c["crops"] for c in chunks])
        for weights in WEIGHTS:
            if weights == "fitted":
                train_paths = dataset_paths(registry.get(row.dataset), train)
                train_cfg = load_config(row, train_paths, gt_boxes(train_paths.ann_file), workers=0)
                state = mean_pose_state_dict(cfg, train_cfg, seed=seed)
            else:
                state = random_state_dict(cfg, seed=seed)
            model = HeatmapModel(build_model(cfg, "cpu", state), dataset.metainfo["flip_indices"])
            with torch.no_grad():
                heatmaps = model(crops).numpy()
            np.savez(
                folder / f"{case}-{weights}.npz",
                heatmaps=heatmaps,
                center=np.concatenate([c["center"] for c in chunks]),
                scale=np.concatenate([c["scale"] for c in chunks]),
                bbox_score=np.concatenate([c["bbox_score"] for c in chunks]),
                sample_id=np.concatenate([c["sample_id"] for c in chunks]),
                image_id=np.concatenate([c["image_id"] for c in chunks]),
            )
            made[f"{case}-{weights}"] = list(heatmaps.shape)
    return {"recorded": made}


# --------------------------------------------------------------------------------------------------
# the two paths (each in its own process)


def _batches(folder: Path, name: str, batches: int) -> tuple[list[dict[str, np.ndarray]], Any]:
    """`batches` batches cycling over the recorded one (each a fresh copy), and the row's codec."""
    from mmengine.config import Config
    from mmpose.registry import KEYPOINT_CODECS

    from zoo import compat
    from zoo.manifest import load_manifests

    compat.apply()
    recorded = dict(np.load(folder / f"{name}.npz"))
    row = load_manifests(MANIFESTS).row(CASES[name.rsplit("-", 1)[0]][0])
    codec = KEYPOINT_CODECS.build(Config.fromfile(str(row.config_path)).model.head.decoder)
    return [{k: v.copy() for k, v in recorded.items()} for _ in range(batches)], codec


def _digest(parts: Sequence[Any]) -> str:
    h = hashlib.sha256()
    for inst in parts:
        for array in (inst.keypoints, inst.keypoint_scores, inst.area, inst.bbox_score):
            h.update(str(array.dtype).encode() + array.tobytes())
    return h.hexdigest()


def reference_stage(batch: dict[str, np.ndarray], codec: Any, input_size: tuple[int, int]) -> Any:
    """mmpose after the forward pass: BaseHead.decode, add_pred_to_datasample, the metric's values."""
    import types

    import torch
    from mmengine.structures import InstanceData
    from mmpose.models.heads.base_head import BaseHead
    from mmpose.models.pose_estimators import TopdownPoseEstimator
    from mmpose.structures import PoseDataSample

    from zoo.evaluate import instances_of

    samples = []
    for i in range(len(batch["heatmaps"])):
        sample = PoseDataSample(metainfo={
            "id": int(batch["sample_id"][i]), "img_id": int(batch["image_id"][i]),
            "input_center": batch["center"][i], "input_scale": batch["scale"][i], "input_size": input_size,
        })  # fmt: skip
        sample.gt_instances = InstanceData(
            bboxes=np.zeros((1, 4), np.float32), bbox_scores=batch["bbox_score"][i : i + 1],
            bbox_scales=batch["scale"][i : i + 1],
        )  # fmt: skip
        samples.append(sample)
    preds = BaseHead.decode(types.SimpleNamespace(decoder=codec), torch.from_numpy(batch["heatmaps"]))
    estimator = TopdownPoseEstimator.__new__(TopdownPoseEstimator)
    estimator.test_cfg = {}
    return instances_of(TopdownPoseEstimator.add_pred_to_datasample(estimator, preds, None, samples))


def worker(path: str, folder: Path, batches: int, repeats: int, threads: int) -> dict[str, Any]:
    import warnings
    from concurrent.futures import ThreadPoolExecutor

    from zoo.inference import POOL_MIN_WORKERS, DecodePool, Decoder, _decode_job

    warnings.simplefilter("ignore", RuntimeWarning)  # mmpose's own 0/0 on flat maps
    out: dict[str, Any] = {}
    for case in CASES:
        for weights in WEIGHTS:
            name = f"{case}-{weights}"
            data, codec = _batches(folder, name, batches)
            size = tuple(codec.input_size)
            times: dict[str, list[float]] = {}
            digest = None
            for _ in range(repeats):
                if path == "reference":
                    t = time.perf_counter()
                    parts = [reference_stage(b, codec, size) for b in data]
                    times.setdefault("one_thread", []).append(time.perf_counter() - t)
                else:
                    meta = [
                        {k: b[k] for k in ("sample_id", "image_id", "center", "scale", "bbox_score")}
                        for b in data
                    ]
                    import torch

                    for label, n in (("one_thread", 1), ("threads", threads)):
                        # as run_pass: the decode processes when there is more than one core to give
                        decoder = Decoder(codec, name)  # a fresh decoder checks its first batch again
                        slot = max(b["heatmaps"].nbytes for b in data)
                        decode_pool = (
                            DecodePool(n, slot)
                            if label == "threads"
                            and DecodePool.available()
                            and decoder.wants_processes
                            and n >= POOL_MIN_WORKERS
                            else None
                        )
                        decoder.pool = decode_pool
                        # its one-time check against mmpose's decode (the first batch of a row's run;
                        # 1 batch in ~3,250 at full scale) is done before the clock starts
                        decoder(data[0]["heatmaps"])
                        try:
                            with ThreadPoolExecutor(n) as pool:
                                t = time.perf_counter()
                                futures = [
                                    pool.submit(
                                        _decode_job, decoder, torch.from_numpy(b["heatmaps"]), None, m, size
                                    )
                                    for b, m in zip(data, meta, strict=True)
                                ]
                                parts = [f.result() for f in futures]
                                times.setdefault(label, []).append(time.perf_counter() - t)
                        finally:
                            if decode_pool is not None:
                                decode_pool.close()
                        if decoder.path != "zoo.decode":
                            raise RuntimeError(
                                f"{name}: the fast decoder fell back to mmpose ({decoder.note})"
                            )
                digest = _digest(parts)
            out[name] = {
                "times": times,
                "instances": sum(len(p) for p in parts),
                "digest": digest,
            }
    return {"path": path, "cases": out, "peak_rss_mib": _common.peak_rss_mib()}


# --------------------------------------------------------------------------------------------------
# driver


def _markdown(summary: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    m = summary["machine"]
    lines = [
        "# Post-processing speed: zoo.decode vs mmpose's per-instance decode",
        "",
        f"Generated by `python -m {MODULE}` on {summary['date']}. Do not edit by hand.",
        "",
        f"- Machine: {m['cpu']}, {m['cpus_usable']} usable CPUs, {m['memory_gib']} GiB RAM, {m['os']}, "
        f"Python {m['python']}",
        "- Packages: " + ", ".join(f"{k} {v}" for k, v in m["packages"].items()),
        f"- Heatmaps: recorded from the real architectures (one row per codec) on crops of a synthetic set, "
        f"{summary['batches']} batches of {BATCH} per case; medians of {summary['repeats']} repeats",
        f"- Decode workers (fast path, as `zoo run`: threads for MSRA; for DARK and UDP a process pool from "
        f"{summary['pool_min_workers']} workers on, below it one batch at a time): "
        f"{summary['threads']}; load average before / after: "
        f"{summary['load_average'][0]} / {summary['load_average'][1]} (the machine may be shared)",
        "- Stage: heatmaps -> keypoints and scores in image coordinates -> the per-box values the metric keeps.",
        "  Reference: `BaseHead.decode` + `add_pred_to_datasample` + the metric's per-box values (one thread, as",
        "  mmpose runs it). Fast: `zoo.inference.Decoder` + `to_image`, on one thread and on the decode workers",
        "  as `zoo run` runs them (processes fed through shared memory, or threads); the decoder's one-time check",
        "  against mmpose's decode (its first batch of a run: 1 in ~3,250 at full scale) is done before timing.",
        "",
        "| codec (row) | weights | rows | ms/box mmpose | ms/box zoo, 1 thread | ms/box zoo, decode workers | "
        "speedup 1 thread | speedup | identical |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} ({r['row']}) | {r['weights']} | {r['rows']} | {r['reference_ms_per_box']:.3f} | "
            f"{r['fast_one_thread_ms_per_box']:.3f} | {r['fast_threads_ms_per_box']:.3f} | "
            f"{r['speedup_one_thread']:.1f}x | {r['speedup']:.1f}x | {r['identical']} |"
        )
    lines += [
        "",
        f"- Over the table's codec mix (each row the same boxes), fitted weights: **{summary['postprocess_speedup']:.1f}x**"
        f" ({summary['postprocess_speedup_one_thread']:.1f}x on one thread); random weights (flat maps, the worst"
        f" case): {summary['postprocess_speedup_random_weights']:.1f}x",
        f"- Keypoints and scores byte-identical in every case: **{summary['postprocess_identical']}**",
        "",
    ]
    return "\n".join(lines)


def run(
    batches: int = 6,
    repeats: int = 3,
    threads: int | None = None,
    seed: int = 0,
    out: Path = _common.RESULTS_DIR,
) -> dict[str, Any]:
    from zoo.inference import POOL_MIN_WORKERS

    threads = threads or len(os.sched_getaffinity(0))  # the stage alone: every core decodes
    load_before = os.getloadavg()[0]
    folder = Path(tempfile.mkdtemp(prefix="zoo-bench-post-"))
    try:
        _common.run_worker(MODULE, ["--record", str(folder), "--seed", str(seed)])
        common = [
            "--folder",
            str(folder),
            "--batches",
            str(batches),
            "--repeats",
            str(repeats),
            "--threads",
            str(threads),
        ]
        results = {
            path: _common.run_worker(MODULE, ["--worker", path, *common]) for path in ("reference", "fast")
        }
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    rows = []
    for case, (row_id, count) in CASES.items():
        for weights in WEIGHTS:
            name = f"{case}-{weights}"
            ref, fast = results["reference"]["cases"][name], results["fast"]["cases"][name]
            n = ref["instances"]
            per_box = {
                "reference": _common.median(ref["times"]["one_thread"]) / n * 1e3,
                "one": _common.median(fast["times"]["one_thread"]) / n * 1e3,
                "threads": _common.median(fast["times"]["threads"]) / n * 1e3,
            }
            rows.append({
                "case": case, "row": row_id, "weights": weights, "rows": count, "boxes": n,
                "reference_ms_per_box": round(per_box["reference"], 4),
                "fast_one_thread_ms_per_box": round(per_box["one"], 4),
                "fast_threads_ms_per_box": round(per_box["threads"], 4),
                "speedup_one_thread": round(per_box["reference"] / per_box["one"], 2),
                "speedup": round(per_box["reference"] / per_box["threads"], 2),
                "identical": ref["digest"] == fast["digest"] and ref["instances"] == fast["instances"],
            })  # fmt: skip

    def mix(weights: str, column: str) -> float:
        chosen = [r for r in rows if r["weights"] == weights]
        return sum(r["rows"] * r["reference_ms_per_box"] for r in chosen) / sum(
            r["rows"] * r[column] for r in chosen
        )

    summary = {
        "date": _common.now_iso(),
        "machine": _common.machine_info(PACKAGES),
        "batches": batches,
        "repeats": repeats,
        "threads": threads,
        "pool_min_workers": POOL_MIN_WORKERS,
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "postprocess_speedup": mix("fitted", "fast_threads_ms_per_box"),
        "postprocess_speedup_one_thread": mix("fitted", "fast_one_thread_ms_per_box"),
        "postprocess_speedup_random_weights": mix("random", "fast_threads_ms_per_box"),
        "postprocess_identical": all(r["identical"] for r in rows),
    }
    _common.write_csv(out / CSV_NAME, rows)
    _common.write_text(out / MD_NAME, _markdown(summary, rows))
    _common.update_summary(out, {
        "postprocess_speedup": round(summary["postprocess_speedup"], 2),
        "postprocess_identical": summary["postprocess_identical"],
        "runs": {"postprocess_speed": {k: summary[k] for k in (
            "date", "machine", "batches", "repeats", "threads", "pool_min_workers", "load_average",
            "postprocess_speedup_one_thread", "postprocess_speedup_random_weights",
        )} | {"cases": rows}},
    })  # fmt: skip
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=6, help=f"batches of {BATCH} boxes per case")
    parser.add_argument("--repeats", type=int, default=3, help="repeats (medians reported)")
    parser.add_argument("--threads", type=int, default=None, help="decode processes (default: one per core)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=_common.RESULTS_DIR, help="results folder")
    parser.add_argument("--record", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--worker", choices=("reference", "fast"), help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.record:
        _common.emit(record(args.record, args.seed))
        return 0
    if args.worker:
        _common.emit(worker(args.worker, args.folder, args.batches, args.repeats, args.threads))
        return 0
    s = run(args.batches, args.repeats, args.threads, args.seed, args.out)
    print(
        f"post-processing speedup {s['postprocess_speedup']:.1f}x over the table's codecs "
        f"({s['postprocess_speedup_one_thread']:.1f}x on one thread; random weights "
        f"{s['postprocess_speedup_random_weights']:.1f}x), identical: {s['postprocess_identical']} -> {args.out / MD_NAME}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
