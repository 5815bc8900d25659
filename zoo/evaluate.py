"""Run one manifest row through mmpose: config -> model with verified weights -> predictions.

The numbers must be the ones mmpose's own `tools/test.py` would produce, so the model, the dataset,
the test pipeline and the flip-test decoding are mmpose's, built from the row's packaged config.
What this module adds is what a harness needs around them: the data root and box source swapped in
without editing the config, weights loaded only from the verified cache (weights_only=True),
batching that backs off on CUDA OOM, process-level sharding (torchrun/Slurm through mmengine), and
the per-instance outputs mmpose's metric consumes (`zoo.metrics.PoseInstance`).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from zoo.data import DataPaths, PersonBoxes
from zoo.errors import InputError, ZooError
from zoo.manifest import Row
from zoo.metrics import PoseInstance

log = logging.getLogger(__name__)

# Row fields that determine the numbers a run produces (see _fingerprint).
_FINGERPRINT_FIELDS = {
    "id",
    "config",
    "overrides",
    "checkpoint",
    "input_size",
    "dataset",
    "boxes",
    "use_area",
}

# Parameters a random-weight or fine-tuned model may legitimately lack in an old checkpoint.
_OPTIONAL_KEYS = ("num_batches_tracked",)


def _stack() -> None:
    from zoo import compat

    compat.apply()


def load_config(
    row: Row,
    paths: DataPaths,
    boxes: PersonBoxes | None = None,
    *,
    batch_size: int | None = None,
    workers: int | None = None,
) -> Any:
    """The row's mmpose config with the data root, annotation, box source and loader settings swapped in.

    Only the test dataloader/evaluator and the backbone's pretrained init change; model, codec,
    pipeline and test_cfg stay exactly as mmpose ships them. `boxes=None` keeps the config's own
    choice (its bbox_file or GT boxes) but re-rooted under `paths`.
    """
    _stack()
    from mmengine.config import Config

    path = row.config_path
    if not path.is_file():
        raise InputError(f"{path}: config of row {row.id} not found (field: config)")
    cfg = Config.fromfile(str(path))
    if row.overrides:
        cfg.merge_from_dict(dict(row.overrides))
    cfg.model.setdefault("backbone", {})
    if "init_cfg" in cfg.model.backbone:
        cfg.model.backbone.init_cfg = None  # pretrained ImageNet weights: replaced by the checkpoint anyway
    cfg.model.train_cfg = None

    loader = cfg.test_dataloader
    dataset = loader.dataset
    uses_det = dataset.get("bbox_file") is not None if boxes is None else boxes.bbox_file is not None
    dataset.data_root = str(paths.root)
    dataset.ann_file = str(paths.ann_file.relative_to(paths.root))
    dataset.data_prefix = {"img": str(paths.img_dir.relative_to(paths.root)) + "/"}
    dataset.pop("bbox_file", None)
    if uses_det:
        det_file = boxes.bbox_file if boxes is not None else paths.det_file
        if det_file is None:
            raise InputError(
                f"{paths.root}: row {row.id} uses detector boxes but the dataset has no det file"
            )
        dataset.bbox_file = str(det_file)
    dataset.test_mode = True
    if batch_size is not None:
        loader.batch_size = batch_size
    if workers is not None:
        loader.num_workers = workers
        loader.persistent_workers = workers > 0
    cfg.test_evaluator.ann_file = str(paths.ann_file)
    cfg.test_evaluator.use_area = row.use_area
    cfg.val_dataloader = cfg.test_dataloader
    cfg.val_evaluator = cfg.test_evaluator
    return cfg


def config_digest(cfg: Any) -> str:
    """A stable digest of the effective config (sorted JSON of its dict), for result fingerprints."""
    import hashlib
    import json

    text = json.dumps(cfg.to_dict(), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def resolve_device(spec: str = "auto") -> str:
    """`auto` -> `cuda` when one is visible, else `cpu`; anything else is validated against torch."""
    import torch

    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cpu":
        return spec
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError(f"--device {spec}: CUDA is not available on this machine")
        index = spec.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise InputError(f"--device {spec}: no such GPU ({torch.cuda.device_count()} visible)")
        return spec
    raise InputError(f"--device {spec}: expected auto, cpu, cuda or cuda:N")


def build_model(cfg: Any, device: str, state_dict: dict[str, Any] | None) -> Any:
    """mmpose's `init_model` (SyncBN reverted, dataset meta from the config) + our verified weights.

    Weights are applied with torch's `load_state_dict`, which runs mmpose's pre-hook that maps 0.x
    names (keypoint_head.* -> head.*). A missing parameter is an error: evaluating a partly random
    model would produce a plausible-looking but meaningless number.
    """
    _stack()
    from mmpose.apis import init_model

    model = init_model(copy.deepcopy(cfg), checkpoint=None, device="cpu")
    if state_dict is not None:
        load_weights(model, state_dict, cfg.filename)
    return model.to(device).eval()


def load_weights(model: Any, checkpoint: dict[str, Any], config_name: str) -> None:
    """Apply an already-verified, already-unpickled checkpoint; refuse one that leaves parameters unset."""
    state = checkpoint.get("state_dict", checkpoint)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith(_OPTIONAL_KEYS)]
    if missing:
        raise ZooError(
            f"checkpoint does not fit {config_name}: {len(missing)} missing parameters (first: {', '.join(missing[:3])})"
        )
    if unexpected:
        log.warning("checkpoint has %d unused keys (first: %s)", len(unexpected), ", ".join(unexpected[:3]))


@dataclass
class InferenceStats:
    """What the record reports about the inference itself."""

    crops: int = 0
    seconds: float = 0.0
    batch_size: int = 0
    data_path: str = "fast"  # "fast" (zoo.crops) or "reference" (mmpose's per-box pipeline)
    oom_retries: list[str] = field(default_factory=list)

    @property
    def crops_per_s(self) -> float:
        return self.crops / self.seconds if self.seconds > 0 else math.nan


def build_dataset(cfg: Any) -> Any:
    """mmpose's test dataset exactly as the config describes it (one sample per person box)."""
    _stack()
    from mmengine.registry import init_default_scope
    from mmpose.registry import DATASETS

    init_default_scope(cfg.get("default_scope", "mmpose"))
    with contextlib.redirect_stdout(sys.stderr):  # xtcocotools prints progress; stdout carries results
        return DATASETS.build(cfg.test_dataloader.dataset)


def subset_indices(dataset: Any, images: int | None) -> list[int]:
    """Sample indices of the first `images` images (in dataset order), or all samples."""
    if images is None:
        return list(range(len(dataset)))
    if images < 1:
        raise InputError(f"--subset {images}: must be a positive number of images")
    keep: list[int] = []
    seen: set[int] = set()
    for i in range(len(dataset)):
        img_id = dataset.get_data_info(i)["img_id"]
        if img_id not in seen:
            if len(seen) == images:
                break
            seen.add(img_id)
        keep.append(i)
    return keep


def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _to_instances(samples: Sequence[Any]) -> Iterator[tuple[int, PoseInstance]]:
    """(sample id, PoseInstance) with the dtypes mmpose's CocoMetric.process keeps."""
    for s in samples:
        pred, gt = s.pred_instances, s.gt_instances
        keypoints = np.asarray(pred.keypoints)
        scores = np.asarray(pred.keypoint_scores)
        if "bbox_scores" in pred:
            bbox_scores = np.asarray(pred.bbox_scores)
        elif "bbox_scores" in gt and len(gt.bbox_scores) == len(keypoints):
            bbox_scores = np.asarray(gt.bbox_scores)
        else:
            bbox_scores = np.ones(len(keypoints))
        areas = np.prod(np.asarray(gt.bbox_scales), axis=1)
        for k in range(len(keypoints)):
            yield int(s.id), PoseInstance(int(s.img_id), keypoints[k], scores[k], bbox_scores[k], areas[k])


def infer(
    model: Any,
    dataset: Any,
    indices: Sequence[int],
    *,
    batch_size: int,
    workers: int,
    device: str,
    progress: bool = True,
    reference: bool = False,
) -> tuple[list[tuple[int, PoseInstance]], InferenceStats]:
    """Run mmpose's test_step over `indices`; on CUDA OOM halve the batch and redo that batch.

    Batches come from `zoo.crops` (each image decoded once, byte-identical crops and samples) or,
    with `reference`, from mmpose's per-box pipeline through a plain DataLoader.
    """
    import torch
    from mmengine.dataset import pseudo_collate
    from torch.utils.data import DataLoader, Subset
    from tqdm import tqdm

    from zoo.crops import UnsupportedPipeline, fast_loader

    stats = InferenceStats(batch_size=batch_size, data_path="reference" if reference else "fast")
    out: list[tuple[int, PoseInstance]] = []
    done = 0
    bar = tqdm(total=len(indices), unit="crop", disable=not progress, dynamic_ncols=True, mininterval=1.0)
    start = time.perf_counter()
    while done < len(indices):
        pin, rest = device.startswith("cuda"), list(indices[done:])
        loader = None
        if stats.data_path == "fast":
            try:
                loader = fast_loader(dataset, rest, stats.batch_size, workers=workers, pin_memory=pin)
            except UnsupportedPipeline as exc:
                log.warning("%s; using mmpose's per-box data path", exc)
                stats.data_path = "reference"
        if loader is None:
            loader = DataLoader(
                Subset(dataset, rest),
                batch_size=stats.batch_size,
                num_workers=workers,
                collate_fn=pseudo_collate,
                pin_memory=pin,
            )
        try:
            with torch.no_grad():
                for batch in loader:
                    samples = model.test_step(batch)
                    out.extend(_to_instances(samples))
                    done += len(samples)
                    bar.update(len(samples))
        except RuntimeError as exc:
            if not _is_oom(exc) or stats.batch_size == 1:
                raise
            torch.cuda.empty_cache()
            stats.oom_retries.append(
                f"CUDA OOM at batch size {stats.batch_size}; retrying with {stats.batch_size // 2}"
            )
            log.warning(stats.oom_retries[-1])
            stats.batch_size //= 2
    bar.close()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    stats.seconds = time.perf_counter() - start
    stats.crops = len(indices)
    return out, stats


def order_like_mmpose(pairs: Sequence[tuple[int, PoseInstance]]) -> list[PoseInstance]:
    """Instances in the order mmpose's metric evaluates them: images by first appearance, then by
    sample id within an image, duplicates (distributed padding) dropped."""
    first_seen: dict[int, int] = {}
    unique: dict[int, PoseInstance] = {}
    for sample_id, inst in pairs:
        first_seen.setdefault(inst.image_id, len(first_seen))
        unique.setdefault(sample_id, inst)
    ordered = sorted(unique.items(), key=lambda kv: (first_seen[kv[1].image_id], kv[0]))
    return [inst for _, inst in ordered]


@contextlib.contextmanager
def distributed(launcher: str) -> Iterator[tuple[int, int]]:
    """(rank, world size) under mmengine's launcher; ('none' or a single process) -> (0, 1)."""
    if launcher == "auto":
        launcher = "pytorch" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else "none"
    if launcher == "none":
        yield 0, 1
        return
    import torch
    from mmengine.dist import get_dist_info, init_dist

    if torch.cuda.is_available():
        init_dist(launcher, backend="nccl")
    elif launcher == "pytorch":  # mmengine's launcher pins a CUDA device; on CPU use gloo directly
        torch.distributed.init_process_group(backend="gloo")
    else:
        raise InputError(f"--launcher {launcher}: needs CUDA (CPU runs support the pytorch launcher)")
    try:
        yield get_dist_info()
    finally:
        torch.distributed.destroy_process_group()


def gather(pairs: list[tuple[int, PoseInstance]], world: int) -> list[tuple[int, PoseInstance]] | None:
    """All ranks' predictions on rank 0 (None elsewhere), via a pickling all-gather (gloo or NCCL)."""
    if world == 1:
        return pairs
    from mmengine.dist import all_gather_object, get_rank

    parts = all_gather_object(pairs)
    return [p for part in parts for p in part] if get_rank() == 0 else None


# --------------------------------------------------------------------------------------------------
# one row end to end: fetch -> data -> inference -> predictions -> metrics -> record


@dataclass
class RunOptions:
    """Everything `zoo run` lets a user choose; the ones that change numbers enter the fingerprint."""

    data_root: Path | None = None
    boxes: str | None = None  # None: the row's own box source
    device: str = "auto"
    batch_size: int | None = None
    workers: int | None = None
    subset: int | None = None
    out: Path = Path("runs")
    force: bool = False
    cache: Path | None = None
    offline: bool | None = None
    launcher: str = "auto"
    progress: bool = True
    reference: bool = False  # mmpose's data pipeline + xtcocotools metrics (the slower reference paths)
    argv: list[str] = field(default_factory=list)


def locate_data(dataset: Any, data_root: Path | None) -> DataPaths:
    """`--data-root` may be the dataset's own root (with annotations/ inside) or a parent holding
    one folder per dataset (`coco/`, `UBody/`), like $ZOO_DATA_ROOT."""
    from zoo.data import dataset_paths

    if data_root is None:
        return dataset_paths(dataset)
    if not Path(data_root).is_dir():
        raise InputError(f"--data-root {data_root}: no such folder")
    nested = Path(data_root) / dataset.root
    direct = dataset_paths(dataset, Path(data_root))
    if not direct.ann_file.is_file() and nested.is_dir():
        return dataset_paths(dataset, nested)
    return direct


def _subset_annotations(ann_file: Path, image_ids: set[int]) -> dict[str, Any]:
    """The GT restricted to the evaluated images, so --subset measures those images only."""
    import json

    data = json.loads(ann_file.read_text())
    data["images"] = [im for im in data["images"] if im["id"] in image_ids]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in image_ids]
    return data


def _fingerprint(row: Row, cfg: Any, ckpt_sha256: str, box_source: str, data: dict, opts: RunOptions) -> dict:
    # only what can change a measured number: expected values, tolerances and notes are left out,
    # so accepting a new baseline does not invalidate the results it was accepted from
    measured = row.model_dump(mode="json", include=_FINGERPRINT_FIELDS)
    return {
        "row": measured,
        "config_sha256": config_digest(cfg),
        "checkpoint_sha256": ckpt_sha256,
        "boxes": box_source,
        "data": data,
        "subset": opts.subset,
        "paths": "reference" if opts.reference else "fast",
    }


def run_row(row: Row, manifests: Any, opts: RunOptions) -> dict[str, Any] | None:
    """Evaluate one row; returns its record on rank 0 (None on other ranks). Resumable (module doc)."""
    import json
    from datetime import datetime, timezone

    from zoo import fetch, metrics, results
    from zoo.data import load_boxes, load_registry
    from zoo.env import collect_env

    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    dataset_meta = load_registry(manifests.dir).get(row.dataset)
    paths = locate_data(dataset_meta, opts.data_root)
    if not paths.ann_file.is_file():
        raise InputError(
            f"{paths.ann_file}: annotation file of dataset {row.dataset} not found (run `zoo data verify`)"
        )
    device = resolve_device(opts.device)
    box_spec = opts.boxes or row.boxes
    boxes = load_boxes(box_spec, paths, cache=opts.cache, device=device)
    lock = fetch.ChecksumLock(manifests.dir / "checkpoints.lock")
    ckpt = fetch.fetch_row(row, lock=lock, cache=opts.cache, offline=opts.offline)
    cfg = load_config(row, paths, boxes, batch_size=opts.batch_size, workers=opts.workers)
    data_fp = results.data_fingerprint(paths.ann_file, paths.img_dir, boxes.bbox_file)
    fp = _fingerprint(row, cfg, ckpt.sha256 or "", boxes.source, data_fp, opts)
    digest = results.canonical_digest(fp)
    if not opts.force and (done := results.finished_record(opts.out, row.id, digest)) is not None:
        log.info("%s: up to date (fingerprint %s), skipping", row.id, digest[:12])
        return done

    timings: dict[str, float] = {}
    infer_stats: InferenceStats | None = None
    subset_images: set[int] | None = None  # with --subset, the GT is restricted to these images
    preds_path = None if opts.force else results.complete_predictions(opts.out, row.id, digest)
    with distributed(opts.launcher) as (rank, world):
        if preds_path is None:
            t = time.perf_counter()
            state = fetch.load_checkpoint(ckpt, cache=opts.cache)
            model = build_model(cfg, device, state)
            del state
            timings["model_build_s"] = time.perf_counter() - t
            ds = build_dataset(cfg)
            # as mmengine's Runner sets up workers (cv2 threads off): no effect on numbers, ~2x on speed
            from mmengine.utils.dl_utils import set_multi_processing

            set_multi_processing(**cfg.env_cfg.get("mp_cfg", {}), distributed=world > 1)
            indices = subset_indices(ds, opts.subset)
            if opts.subset is not None:
                subset_images = _images_of(ds, indices)
            mine = indices[rank::world]
            pairs, infer_stats = infer(
                model,
                ds,
                mine,
                batch_size=cfg.test_dataloader.batch_size,
                workers=cfg.test_dataloader.num_workers,
                device=device,
                progress=opts.progress and rank == 0,
                reference=opts.reference,
            )
            timings["inference_s"] = infer_stats.seconds
            pairs = gather(pairs, world)
            if rank != 0:
                return None
            t = time.perf_counter()
            preds = metrics.postprocess(order_like_mmpose(pairs))
            results.write_predictions(opts.out, row.id, preds.to_records(), digest)
            timings["postprocess_s"] = time.perf_counter() - t
        elif rank != 0:
            return None
        else:  # resumed: evaluate the complete predictions file written before the interruption
            preds = metrics.load_results(preds_path)
            if opts.subset is not None:
                ds = build_dataset(cfg)
                subset_images = _images_of(ds, subset_indices(ds, opts.subset))

    t = time.perf_counter()
    ann: Any = paths.ann_file if subset_images is None else _subset_annotations(paths.ann_file, subset_images)
    scores = metrics.evaluate(preds, ann, use_area=row.use_area, reference=opts.reference)
    timings["evaluation_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t0
    record = {
        "row_id": row.id,
        "table": row.table,
        "name": row.name,
        "status": "ok",
        "fingerprint": fp,
        "fingerprint_digest": digest,
        "checkpoint": {"url": row.checkpoint.url, "sha256": ckpt.sha256},
        "box_source": boxes.source,
        "use_area": row.use_area,
        "metrics": scores,
        "counts": {
            "instances": infer_stats.crops if infer_stats else None,
            "predictions": len(preds),
            "images_with_predictions": len(set(preds.image_id.tolist())),
        },
        "inference": None
        if infer_stats is None
        else {
            "crops": infer_stats.crops,
            "crops_per_s": infer_stats.crops_per_s,
            "batch_size": infer_stats.batch_size,
            "data_path": infer_stats.data_path,
            "oom_retries": infer_stats.oom_retries,
            "world_size": world,
            "device": device,
        },
        "resumed_from_predictions": infer_stats is None,
        "timings": timings,
        "environment": collect_env(),
        "command": opts.argv,
        "started": started,
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    results.write_record(opts.out, json.loads(json.dumps(record, default=str)))
    return record


def _images_of(dataset: Any, indices: Sequence[int]) -> set[int]:
    return {int(dataset.get_data_info(i)["img_id"]) for i in indices}


def write_error_record(opts: RunOptions, row: Row, message: str) -> None:
    """A failed row leaves a record that says why, so the gate reports ERROR instead of MISSING."""
    from datetime import datetime, timezone

    from zoo import results

    results.write_record(
        opts.out,
        {
            "row_id": row.id,
            "table": row.table,
            "name": row.name,
            "status": "error",
            "error": message,
            "command": opts.argv,
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        },
    )


def reference_run(
    cfg: Any, state_dict: dict[str, Any], work_dir: Path
) -> tuple[list[tuple[int, PoseInstance]], dict]:
    """mmpose's own test path, `Runner.from_cfg(cfg).test()`, on the same config and weights.

    Returns its per-instance predictions (through mmengine's DumpResults) and its metrics, so the
    harness's path can be checked against it. Weights are loaded into the runner's model directly
    (verified file, weights_only=True) instead of through `load_from`, which unpickles unchecked.
    """
    import pickle

    _stack()
    from mmengine.runner import Runner
    from mmengine.structures import InstanceData

    cfg = copy.deepcopy(cfg)
    work_dir.mkdir(parents=True, exist_ok=True)
    dump = work_dir / "reference_predictions.pkl"
    cfg.work_dir = str(work_dir)
    cfg.load_from = None
    cfg.launcher = "none"
    cfg.test_evaluator = [cfg.test_evaluator, {"type": "DumpResults", "out_file_path": str(dump)}]
    with contextlib.redirect_stdout(sys.stderr):
        runner = Runner.from_cfg(cfg)
        load_weights(runner.model, state_dict, cfg.filename)
        scores = runner.test()
    with open(dump, "rb") as f:
        samples = pickle.load(f)

    class _Sample:  # the attribute view _to_instances reads, over DumpResults' plain dicts
        def __init__(self, d: dict) -> None:
            self.id, self.img_id = d["id"], d["img_id"]
            self.pred_instances = InstanceData(**d["pred_instances"])
            self.gt_instances = InstanceData(**d["gt_instances"])

    return list(_to_instances([_Sample(s) for s in samples])), dict(scores)
