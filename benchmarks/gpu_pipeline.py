"""The inference pass alone, long enough for its steady pace, in one process: how close each setting
of the pipeline comes to the model-bound pace, and whether its predictions stay bitwise the same.

For one row (default the heaviest, HRNet-w48+DARK 384x288): synthetic COCO-sized data, a
random-weight checkpoint, the dataset and model built once; then `zoo.inference.run_pass` over every
box with each setting (decode threads; eager or CUDA graphs), its steady boxes/s, and the model-bound
boxes/s (forward + flip on a batch already on the GPU, eager and graphs) at the same batch size. Every
setting's per-box predictions are compared byte for byte with the first's. `benchmarks/gpu_speed.py`
compares whole `zoo run` processes with mmpose's Runner; this isolates the pipeline.

    python -m benchmarks.gpu_pipeline --images 150
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import _common

MODULE = "benchmarks.gpu_pipeline"
MD_NAME = "gpu_pipeline.md"
PACKAGES = ("torch", "numpy", "opencv-python-headless", "opencv-python", "mmpose")
ROW = "hrnet-w48-dark-plus-384x288"


def run(
    row_id: str = ROW, images: int = 150, device: str = "cuda", workers: int = 8,
    threads: Sequence[int] = (7, 14), seconds: float = 3.0, out: Path = _common.RESULTS_DIR, log: Any = print,
) -> dict[str, Any]:  # fmt: skip
    import torch

    from benchmarks.data_speed import prepare_data
    from zoo import fetch
    from zoo.data import dataset_paths, load_boxes, load_registry
    from zoo.evaluate import build_dataset, build_model, load_config
    from zoo.inference import Decoder, HeatmapModel, Numerics, RowPass, inference_mode, run_pass
    from zoo.manifest import load_manifests

    work = Path(tempfile.mkdtemp(prefix="zoo-bench-pipeline-"))
    try:
        data = prepare_data(work / "data", images, 0, noise=24.0)
        mdir = _common.local_zoo(work, [row_id], work / "data")
        row = load_manifests(mdir).row(row_id)
        paths = dataset_paths(load_registry(mdir).get(row.dataset), work / "data")
        cfg = load_config(row, paths, load_boxes(row.boxes, paths), workers=workers)
        state = fetch.load_checkpoint(
            fetch.fetch_row(row, lock=fetch.ChecksumLock(mdir / "checkpoints.lock"), offline=True)
        )
        model = build_model(cfg, device, state)
        dataset = build_dataset(cfg)
        indices = list(range(len(dataset)))
        batch = cfg.test_dataloader.batch_size
        settings = [("eager", t, False) for t in threads] + [("graphs", threads[0], True)]
        results, first = [], None
        for name, n_threads, graphs in settings:
            heatmaps = HeatmapModel(model, dataset.metainfo["flip_indices"], cuda_graphs=graphs)
            row_pass = RowPass(row_id, heatmaps, Decoder(heatmaps.codec, row_id), batch)
            with inference_mode(Numerics.for_config(cfg, device, cuda_graphs=graphs)):
                decoded, stats = run_pass(dataset, indices, [row_pass], device=device, workers=workers,
                                      decode_workers=n_threads, progress=False)  # fmt: skip
            inst = decoded[row_id]
            digest = b"".join(
                getattr(inst, f).tobytes() for f in ("sample_id", "keypoints", "keypoint_scores")
            )
            first = first or digest
            results.append({
                "setting": f"{name}, {n_threads} decode threads", "boxes_per_s": stats.samples_per_s,
                "seconds": stats.seconds, "first_chunk_s": stats.first_chunk_s, "identical_to_first": digest == first,
                "decode": row_pass.decoder.path, "graph_error": heatmaps.graph_error,
            })  # fmt: skip
            log(f"{results[-1]['setting']}: {stats.samples_per_s:.0f} boxes/s, identical {digest == first}")
        x = next(iter(_crops(dataset, batch))).to(device)
        sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
        bound = {}
        for graphs in (False, True):
            heatmaps = HeatmapModel(model, dataset.metainfo["flip_indices"], cuda_graphs=graphs)
            with inference_mode(Numerics.for_config(cfg, device, cuda_graphs=graphs)), torch.no_grad():
                for _ in range(3):
                    heatmaps(x)
                sync()
                n, t = 0, time.perf_counter()
                while time.perf_counter() - t < seconds:
                    heatmaps(x)
                    n += 1
                sync()
                bound["graphs" if graphs else "eager"] = n * len(x) / (time.perf_counter() - t)
        log(f"model-bound: eager {bound['eager']:.0f}, graphs {bound['graphs']:.0f} boxes/s")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary = {
        "date": _common.now_iso(), "machine": _common.machine_info(PACKAGES) | {"device": torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu"},
        "row": row_id, "images": images, "boxes": len(indices), "batch": batch, "workers": workers,
        "settings": results, "model_bound": bound, "mean_jpeg_kb": data["mean_jpeg_kb"],
    }  # fmt: skip
    _common.write_text(out / MD_NAME, _markdown(summary))
    _common.update_summary(out, {"runs": {"gpu_pipeline": summary}})
    return summary


def _crops(dataset: Any, n: int) -> Any:
    import torch

    from zoo.crops import chunk_loader

    got = []
    for chunk in chunk_loader(dataset, list(range(len(dataset)))):
        got.append(chunk["crops"])
        if sum(len(c) for c in got) >= n:
            break
    yield torch.cat(got)[:n]


def _markdown(s: dict[str, Any]) -> str:
    m = s["machine"]
    lines = [
        f"# The inference pass alone: {s['row']}", "",
        f"Generated by `python -m {MODULE}` on {s['date']}. Do not edit by hand.", "",
        f"- Device: {m['device']}; host {m['cpu']}, {m['cpus_usable']} CPUs; Python {m['python']}",
        "- Packages: " + ", ".join(f"{k} {v}" for k, v in m["packages"].items() if v),
        f"- {s['images']} synthetic 640 px images ({s['mean_jpeg_kb']:.0f} KB JPEGs), {s['boxes']} detector boxes, "
        f"batch {s['batch']}, {s['workers']} data workers; random-weight checkpoint (flat heatmaps: DARK blurs every map whole)",
        f"- Model-bound (forward + flip, batch on the GPU): eager {s['model_bound']['eager']:.0f} boxes/s, CUDA graphs "
        f"{s['model_bound']['graphs']:.0f} boxes/s", "",
        "| setting | steady boxes/s | of model-bound (same mode) | pass s | workers' start s | predictions identical | graph error |",
        "|---|---:|---:|---:|---:|---|---|",
        *(
            f"| {r['setting']} | {r['boxes_per_s']:.0f} | "
            f"{r['boxes_per_s'] / s['model_bound']['graphs' if r['setting'].startswith('graphs') else 'eager']:.0%} | "
            f"{r['seconds']:.1f} | {r['first_chunk_s']:.1f} | {r['identical_to_first']} | {r['graph_error']} |"
            for r in s["settings"]
        ),
        "",
    ]  # fmt: skip
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.split("\n\n")[0])
    parser.add_argument("--row", default=ROW)
    parser.add_argument("--images", type=int, default=150)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--threads", type=int, nargs="+", default=[7, 14], help="decode threads to try")
    parser.add_argument("--out", type=Path, default=_common.RESULTS_DIR)
    args = parser.parse_args(argv)
    s = run(args.row, args.images, args.device, args.workers, args.threads, out=args.out)
    print(f"{s['row']}: " + ", ".join(f"{r['setting']} {r['boxes_per_s']:.0f}" for r in s["settings"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
