"""Run manifest rows through mmpose: config -> model with verified weights -> predictions -> record.

The numbers must be the ones mmpose's own `tools/test.py` would produce, so the model, the dataset,
the test pipeline and the flip-test decoding are mmpose's, built from the row's packaged config.
What this module adds is what a harness needs around them: the data root and box source swapped in
without editing the config, weights loaded only from the verified cache (weights_only=True), one
pass over the data for every row whose crops are the same (`zoo.inference`), checkpointed chunks
and a lock per row, process-level sharding (torchrun/Slurm through mmengine), and the record.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from zoo.data import DataPaths, PersonBoxes
from zoo.errors import InputError, ZooError
from zoo.inference import Numerics, duration_text
from zoo.manifest import Row
from zoo.metrics import Instances
from zoo.results import Record

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


# Where the data lives and how it is loaded: they change no number, so the config a record is judged
# by leaves them out (a moved data folder or another worker count does not make a record stale).
_DATA_LOCATION = {
    ("test_dataloader", "num_workers"), ("test_dataloader", "persistent_workers"),
    ("test_dataloader", "dataset", "data_root"), ("test_dataloader", "dataset", "ann_file"),
    ("test_dataloader", "dataset", "data_prefix"), ("test_dataloader", "dataset", "bbox_file"),
    ("test_evaluator", "ann_file"),
}  # fmt: skip


def measured_config(cfg: Any) -> dict[str, Any]:
    """The effective config as JSON, without where the data lives (`_DATA_LOCATION`; the box source
    stays: whether a detection file is used) or the val copies of the test settings. What a
    record's numbers depend on, and what `zoo check` compares with the manifest row's config now."""
    import json

    data = json.loads(json.dumps(cfg.to_dict(), sort_keys=True, default=str))
    for key in ("val_dataloader", "val_evaluator", "work_dir", "launcher"):
        data.pop(key, None)
    dataset = data.get("test_dataloader", {}).get("dataset", {})
    dataset["detector_boxes"] = dataset.get("bbox_file") is not None
    for path in _DATA_LOCATION:
        node = data
        for key in path[:-1]:
            node = node.get(key, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(path[-1], None)
    return data


def config_digest(cfg: Any) -> str:
    """sha256 of `measured_config`: the fingerprint's config digest."""
    from zoo.results import canonical_digest

    return canonical_digest(measured_config(cfg))


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


def _scopes(cfg: Any) -> list[str]:
    """The registry scopes a config builds from: its default scope and every `_scope_` inside."""
    found = [cfg.get("default_scope", "mmpose")]

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("_scope_"), str):
                found.append(node["_scope_"])
            for value in node.values():
                walk(value)
        elif isinstance(node, (list, tuple)):
            for value in node:
                walk(value)

    walk(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg)
    return found


def build_model(cfg: Any, device: str, state_dict: dict[str, Any] | None) -> Any:
    """The model mmpose's `init_model` and mmengine's Runner build (the config's `model` through the
    registry, SyncBN reverted) with our verified weights.

    Built from the registry directly rather than through `mmpose.apis`, whose import pulls in
    inferencers, visualisers and mmdet's APIs that a test run never uses (seconds of start-up).
    Weights are applied with torch's `load_state_dict`, which runs mmpose's pre-hook that maps 0.x
    names (keypoint_head.* -> head.*). A missing parameter is an error: evaluating a partly random
    model would produce a plausible-looking but meaningless number.
    """
    from zoo import compat

    compat.import_models(_scopes(cfg))
    from mmengine.model.utils import revert_sync_batchnorm
    from mmengine.registry import init_default_scope
    from mmpose.registry import MODELS

    init_default_scope(cfg.get("default_scope", "mmpose"))
    model = revert_sync_batchnorm(MODELS.build(copy.deepcopy(cfg.model)))
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


def instances_of(samples: Sequence[Any]) -> Instances:
    """The Instances of `model.test_step` outputs (PoseDataSamples or DumpResults' dicts), with the
    dtypes mmpose's CocoMetric.process keeps."""
    rows = []
    for s in samples:
        pred, gt = s.pred_instances, s.gt_instances
        keypoints = np.asarray(pred.keypoints)
        if "bbox_scores" in pred:
            bbox_scores = np.asarray(pred.bbox_scores)
        elif "bbox_scores" in gt and len(gt.bbox_scores) == len(keypoints):
            bbox_scores = np.asarray(gt.bbox_scores)
        else:
            bbox_scores = np.ones(len(keypoints))
        areas = np.prod(np.asarray(gt.bbox_scales), axis=1)
        scores = np.asarray(pred.keypoint_scores)
        rows += [
            (int(s.id), int(s.img_id), keypoints[k], scores[k], bbox_scores[k], areas[k])
            for k in range(len(keypoints))
        ]
    if not rows:
        return Instances.empty()
    ids, images, keypoints, scores, bbox, area = zip(*rows, strict=True)
    return Instances.stack(images, keypoints, scores, bbox, area, sample_ids=ids)


@dataclass(frozen=True)
class _Unreadable:
    """What the reference path's DataLoader hands back for a sample whose image cannot be read,
    instead of raising: a worker's exception reaches the main process as a multi-line traceback."""

    message: str


class _Samples:
    """The samples `indices` of an mmpose dataset through its own pipeline, an image that cannot be
    read becoming an `_Unreadable` that names the file (any other failure is raised as it is)."""

    def __init__(self, dataset: Any, indices: Sequence[int]) -> None:
        self.dataset, self.indices = dataset, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> Any:
        from zoo.crops import unreadable
        from zoo.data.decode import image_problem

        index = self.indices[k]
        try:
            return self.dataset[index]
        except Exception as exc:
            path = self.dataset.get_data_info(index).get("img_path")
            if not path or image_problem(Path(path)) is None:  # the image is fine: another failure
                raise
            return _Unreadable(unreadable(path, exc, missing=not Path(path).exists()))


def _collate(items: list[Any]) -> Any:
    """mmengine's `pseudo_collate`, or the batch's first `_Unreadable`."""
    from mmengine.dataset import pseudo_collate

    return next((item for item in items if isinstance(item, _Unreadable)), None) or pseudo_collate(items)


def reference_infer(
    model: Any, dataset: Any, indices: Sequence[int], *, batch_size: int, workers: int, device: str
) -> Instances:
    """mmpose's own test path for `--reference`: its per-box pipeline through a DataLoader with
    `pseudo_collate`, `model.test_step` (preprocessing, forward, flip test, decoding) per batch. An
    image that cannot be read stops the row with one line naming it (`ImageError`), as in the fast path."""
    import torch
    from torch.utils.data import DataLoader

    from zoo.crops import ImageError

    loader = DataLoader(
        _Samples(dataset, indices), batch_size=batch_size, num_workers=workers, collate_fn=_collate,
        pin_memory=device.startswith("cuda"),
    )  # fmt: skip
    parts = []
    with torch.no_grad():
        for batch in loader:
            if isinstance(batch, _Unreadable):
                raise ImageError(batch.message)
            parts.append(instances_of(model.test_step(batch)))
    return Instances.concat(parts)


@contextlib.contextmanager
def distributed(launcher: str, device: str) -> Iterator[tuple[int, int]]:
    """(rank, world size) under mmengine's launcher; ('none' or a single process) -> (0, 1).
    NCCL only for a CUDA run; a CPU run uses gloo even on a machine with GPUs."""
    if launcher == "auto":
        launcher = "pytorch" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else "none"
    if launcher == "none":
        yield 0, 1
        return
    import torch
    from mmengine.dist import get_dist_info, init_dist

    if device.startswith("cuda"):
        init_dist(launcher, backend="nccl")
    elif launcher == "pytorch":  # mmengine's launcher pins a CUDA device; on CPU use gloo directly
        torch.distributed.init_process_group(backend="gloo")
    else:
        raise InputError(f"--launcher {launcher}: needs CUDA (CPU runs support the pytorch launcher)")
    try:
        yield get_dist_info()
    finally:
        torch.distributed.destroy_process_group()


def gather(instances: Instances, world: int) -> Instances | None:
    """All ranks' instances on rank 0 (None elsewhere), via a pickling all-gather (gloo or NCCL)."""
    if world == 1:
        return instances
    from mmengine.dist import all_gather_object, get_rank

    parts = all_gather_object(instances)
    return Instances.concat(parts) if get_rank() == 0 else None


# --------------------------------------------------------------------------------------------------
# rows end to end: fetch -> data -> inference (one pass per group of rows) -> predictions -> metrics


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
    reference: bool = False  # mmpose's data pipeline, test_step and xtcocotools (the slower reference paths)
    cuda_graphs: bool = False  # replay the forward pass as a CUDA graph (the same kernels)
    decode_workers: int | None = None  # decode processes; default: the cores the data workers leave
    checkpoint_every: float = 60.0  # seconds between checkpointed chunks of a running row
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


@dataclass
class _Prepared:
    """A row ready to run: its data, checkpoint, effective config and fingerprint."""

    row: Row
    paths: DataPaths
    boxes: PersonBoxes
    checkpoint: Any  # zoo.fetch.Fetched
    cfg: Any
    numerics: Numerics
    fingerprint: dict[str, Any]
    digest: str
    started: str
    t0: float
    timings: dict[str, float] = field(default_factory=dict)

    def group_key(self, opts: RunOptions) -> str:
        """Rows with the same key see the same crops: one pass over the data serves them all."""
        from zoo.results import canonical_digest

        if opts.reference:
            return self.row.id  # mmpose's own path runs row by row
        return canonical_digest([self.cfg.test_dataloader.dataset.to_dict(), self.numerics.device])


def _prepare(row: Row, manifests: Any, opts: RunOptions, device: str) -> _Prepared:
    from datetime import datetime, timezone

    from zoo import fetch, results
    from zoo.data import load_boxes, load_registry

    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    dataset_meta = load_registry(manifests.dir).get(row.dataset)
    paths = locate_data(dataset_meta, opts.data_root)
    if not paths.ann_file.is_file():
        raise InputError(
            f"{paths.ann_file}: annotation file of dataset {row.dataset} not found (run `zoo data verify`)"
        )
    boxes = load_boxes(opts.boxes or row.boxes, paths, cache=opts.cache, device=device)
    lock = fetch.ChecksumLock(manifests.dir / "checkpoints.lock")
    ckpt = fetch.fetch_row(row, lock=lock, cache=opts.cache, offline=opts.offline)
    cfg = load_config(row, paths, boxes, batch_size=opts.batch_size, workers=opts.workers)
    numerics = Numerics.for_config(cfg, device, cuda_graphs=opts.cuda_graphs)
    data_fp = results.data_fingerprint(paths.ann_file, paths.img_dir, boxes.bbox_file, paths.root)
    fp = {
        "row": row.model_dump(mode="json", include=_FINGERPRINT_FIELDS),
        "config_sha256": config_digest(cfg),
        "checkpoint_sha256": ckpt.sha256 or "",
        "boxes": boxes.source,
        "data": data_fp,
        "subset": opts.subset,
        "paths": "reference" if opts.reference else "fast",
        "numerics": numerics.numbers_key(),
    }  # only what can change a measured number: accepting a baseline does not invalidate records
    return _Prepared(row, paths, boxes, ckpt, cfg, numerics, fp, results.canonical_digest(fp), started, t0)


def run_rows(
    rows: Sequence[Row], manifests: Any, opts: RunOptions, say: Callable[[str], None] = log.info
) -> list[Record | None]:
    """Evaluate `rows`, one record per row (None on non-zero ranks of a distributed run), in order.

    One rule for failures: anything wrong with one row (its checkpoint, data, model, an image that
    does not decode) becomes that row's error record and the other rows go on; what is wrong with
    the invocation itself was refused before (`zoo.preflight`). Rows whose record has the current
    fingerprint are skipped; rows whose crops are identical share one pass over the data.
    """
    from zoo import results

    sources = [s for s in (opts.boxes or "").split(",") if s]
    if len(sources) > 1:  # the rows' own box sources, then each listed other source beside them
        own = run_rows(rows, manifests, replace(opts, boxes=None), say)
        for source in dict.fromkeys(sources):
            others = [row for row in rows if row.boxes != source]
            if others:
                say(
                    f"box source {source}: {len(others)} rows, records in {results.box_variant_dir(opts.out, source)}"
                )
                run_rows(
                    others,
                    manifests,
                    replace(opts, boxes=source, out=results.box_variant_dir(opts.out, source)),
                    say,
                )
        return own
    device = resolve_device(opts.device)
    out: dict[str, Record | None] = {}
    ready: list[_Prepared] = []
    for row in rows:
        try:
            prepared = _prepare(row, manifests, opts, device)
        except ZooError as exc:
            out[row.id] = _failed(opts, row, exc, say)
            continue
        done = None if opts.force else results.finished_record(opts.out, row.id, prepared.digest)
        if done is not None:
            say(f"{row.id}: up to date (fingerprint {prepared.digest[:12]}), skipping")
            out[row.id] = done
        else:
            ready.append(prepared)
    groups: dict[str, list[_Prepared]] = {}
    for prepared in ready:
        groups.setdefault(prepared.group_key(opts), []).append(prepared)
    for group in groups.values():
        try:
            out.update(_run_group(group, opts, say))
        except ZooError as exc:
            for prepared in group:
                if prepared.row.id not in out:
                    out[prepared.row.id] = _failed(opts, prepared.row, exc, say)
    return [out.get(row.id) for row in rows]


def run_row(row: Row, manifests: Any, opts: RunOptions) -> Record | None:
    """One row (see `run_rows`); a failure raises instead of becoming a record."""
    record = run_rows([row], manifests, opts)[0]
    if record is not None and record.status == "error":
        raise ZooError(record.reason)
    return record


def _failed(opts: RunOptions, row: Row, exc: ZooError, say: Callable[[str], None]) -> Record:
    say(f"{row.id}: ERROR: {exc}")
    return write_error_record(opts, row, str(exc))


def _run_group(
    group: list[_Prepared], opts: RunOptions, say: Callable[[str], None]
) -> dict[str, dict | None]:
    """One pass over the data for every row of the group (same crops), then each row's results."""
    from zoo import results

    lead = group[0]
    with distributed(opts.launcher, lead.numerics.device) as (rank, world), contextlib.ExitStack() as locks:
        if rank == 0:
            for prepared in sorted(group, key=lambda p: p.row.id):
                locks.enter_context(results.row_lock(opts.out, prepared.row.id, opts.argv, say))
        # another process may have finished a row while this one waited for its lock
        records: dict[str, Record | None] = {}
        todo = []
        for prepared in group:
            done = None if opts.force else results.finished_record(opts.out, prepared.row.id, prepared.digest)
            if done is not None:
                records[prepared.row.id] = done
            else:
                todo.append(prepared)
        if not todo:
            return records
        inferred, subset_images = _infer_group(todo, opts, say, rank, world)
        for prepared in todo:
            instances, facts = inferred[prepared.row.id]
            everything = gather(instances, world)
            records[prepared.row.id] = (
                _finish(prepared, everything, facts, subset_images, opts) if rank == 0 else None
            )
    return records


def _infer_group(
    group: list[_Prepared], opts: RunOptions, say: Callable[[str], None], rank: int, world: int
) -> tuple[dict[str, tuple[Instances | None, dict[str, Any]]], set[int] | None]:
    """Each row's instances (None: its complete predictions file is on disk) and inference facts,
    and with --subset the evaluated images (the GT is restricted to them)."""
    from mmengine.utils.dl_utils import set_multi_processing

    from zoo import fetch, results
    from zoo.inference import Decoder, HeatmapModel, RowPass, UnsupportedModel, inference_mode, run_pass

    lead = group[0]
    out: dict[str, tuple[Instances | None, dict[str, Any]]] = {}
    dataset = build_dataset(lead.cfg)
    indices = subset_indices(dataset, opts.subset)
    mine = indices[rank::world]
    subset_images = (
        None if opts.subset is None else {int(dataset.get_data_info(i)["img_id"]) for i in indices}
    )
    # as mmengine's Runner sets up workers (cv2 threads off): no effect on numbers, ~2x on speed
    set_multi_processing(**lead.cfg.env_cfg.get("mp_cfg", {}), distributed=world > 1)
    passes: list[tuple[_Prepared, RowPass]] = []
    partials: dict[str, tuple[Any, list[Instances]]] = {}
    device = lead.numerics.device
    for prepared in group:
        preds_path = (
            None if opts.force else results.complete_predictions(opts.out, prepared.row.id, prepared.digest)
        )
        if preds_path is not None:  # killed after writing its predictions: evaluate them
            out[prepared.row.id] = (None, {})
            continue
        t = time.perf_counter()
        state = fetch.load_checkpoint(prepared.checkpoint, cache=opts.cache)
        model = build_model(prepared.cfg, device, state)
        del state
        prepared.timings["model_build_s"] = time.perf_counter() - t
        batch_size = prepared.cfg.test_dataloader.batch_size
        if opts.reference:
            say(_start_line(prepared, len(mine), batch_size, f"{device} (mmpose's reference path)", opts.out))
            t = time.perf_counter()
            with inference_mode(prepared.numerics):
                inst = reference_infer(
                    model, dataset, mine, batch_size=batch_size, workers=prepared.cfg.test_dataloader.num_workers,
                    device=device,
                )  # fmt: skip
            facts = _inference_facts(
                prepared, boxes=len(mine), seconds=time.perf_counter() - t, batch_size=batch_size,
                data_path="reference", decode="mmpose", world=world,
            )  # fmt: skip
            out[prepared.row.id] = (inst, facts)
            continue
        try:
            heatmap_model = HeatmapModel(
                model, dataset.metainfo["flip_indices"], cuda_graphs=prepared.numerics.cuda_graphs
            )
        except UnsupportedModel as exc:
            raise ZooError(f"{prepared.row.id}: {exc}; run it with --reference") from None
        stream_key = results.canonical_digest([prepared.digest, rank, world])
        partial = results.PartialPredictions(
            opts.out, prepared.row.id, stream_key, part=f"partial-{rank}-of-{world}"
        )
        if opts.force:
            partial.clear()
        start, parts = partial.load()
        if start:
            say(f"{prepared.row.id}: resuming at box {start} of {len(mine)} (checkpointed chunks)")
        partials[prepared.row.id] = (partial, parts)
        passes.append((prepared, RowPass(
            row_id=prepared.row.id, model=heatmap_model, decoder=Decoder(heatmap_model.codec, prepared.row.id),
            batch_size=batch_size, start=start,
            sink=results.CheckpointSink(partial, batch_size, opts.checkpoint_every),
        )))  # fmt: skip
    if passes:
        for prepared, row_pass in passes:
            say(_start_line(prepared, len(mine) - row_pass.start, row_pass.batch_size, device, opts.out))
        with inference_mode(lead.numerics):
            decoded, stats = run_pass(
                dataset, mine, [p for _, p in passes], device=device,
                workers=lead.cfg.test_dataloader.num_workers, decode_workers=opts.decode_workers,
                progress=opts.progress and rank == 0,
            )  # fmt: skip
        for prepared, row_pass in passes:
            partial, parts = partials[prepared.row.id]
            facts = _inference_facts(
                prepared, boxes=len(mine), seconds=stats.seconds, rate=stats.samples_per_s,
                warm_rate=stats.warm_samples_per_s,
                batch_size=row_pass.batch_size, data_path="fast",
                decode=row_pass.decoder.path, world=world, decode_note=row_pass.decoder.note,
                oom_retries=row_pass.oom_retries, shared=stats.rows, resumed_at=row_pass.start,
                decode_workers=stats.decode_workers, data_s=stats.data_s,
                decode_processes=stats.decode_processes and row_pass.decoder.wants_processes,
                cuda_graphs=_graphs_state(prepared.numerics, row_pass.model),
            )  # fmt: skip
            out[prepared.row.id] = (Instances.concat([*parts, decoded[prepared.row.id]]), facts)
    return out, subset_images


def _graphs_state(numerics: Numerics, model: Any) -> str:
    """What became of --cuda-graphs: off, on, or why capture failed (the row then ran eagerly)."""
    if not numerics.cuda_graphs:
        return "off"
    return f"failed, ran eagerly: {model.graph_error}" if model.graph_error else "on"


def _start_line(prepared: _Prepared, boxes: int, batch_size: int, where: str, out: Path) -> str:
    """`row: N boxes on cuda, batch 32, flip test, det boxes, expected ~3m10s` (the expected time from
    the row's last run on this kind of device in `out`, when there is one)."""
    from zoo import results

    expected = "expected time shown once it runs"
    try:
        last = results.read_record(results.row_dir(out, prepared.row.id) / results.RECORD)
    except ZooError:
        last = None
    rate = last.inference.get("crops_per_s") if last is not None and last.status == "ok" else None
    same_device = (
        last is not None and str(last.inference.get("device", "")).split(":")[0] == where.split(":")[0]
    )
    if isinstance(rate, int | float) and rate > 0 and same_device:
        expected = f"expected ~{duration_text(boxes / rate)} (its last run here)"
    return (
        f"{prepared.row.id}: {boxes} boxes on {where}, batch {batch_size}, "
        f"{'flip test, ' if prepared.cfg.model.test_cfg.get('flip_test') else ''}"
        f"{prepared.boxes.source} boxes, {expected}"
    )


def _inference_facts(
    prepared: _Prepared, *, boxes: int, seconds: float, batch_size: int, data_path: str, decode: str,
    rate: float | None = None, warm_rate: float | None = None,
    world: int, decode_note: str = "", oom_retries: Sequence[str] = (), shared: Sequence[str] = (),
    resumed_at: int = 0, decode_workers: int = 0, decode_processes: bool = False, data_s: float | None = None,
    cuda_graphs: str = "off",
) -> dict[str, Any]:  # fmt: skip
    """The record's `inference` section."""
    prepared.timings["inference_s"] = seconds
    return {
        "crops": boxes,
        # the pass's steady pace, from its first crops on (data workers take a moment to start)
        "crops_per_s": rate if rate is not None else boxes / seconds if seconds > 0 else math.nan,
        "warm_crops_per_s": warm_rate,  # once the one-time costs are paid (`PassStats.warm_samples_per_s`)
        "batch_size": batch_size,
        "data_path": data_path,
        "data_s": data_s,
        "decode": decode,
        "decode_note": decode_note,
        "decode_workers": decode_workers,
        "decode_processes": decode_processes,
        "oom_retries": list(oom_retries),
        "world_size": world,
        "device": prepared.numerics.device,
        "numerics": prepared.numerics.to_json(),
        "cuda_graphs": cuda_graphs,
        "shared_pass": [r for r in shared if r != prepared.row.id],
        "resumed_at": resumed_at,
    }


def _finish(
    prepared: _Prepared,
    instances: Instances | None,
    facts: dict[str, Any],
    subset_images: set[int] | None,
    opts: RunOptions,
) -> Record:
    """Predictions (written first), metrics and the record of one row, on rank 0."""
    from datetime import datetime, timezone

    from zoo import metrics, results
    from zoo.env import collect_env
    from zoo.keypoints import keypoint_stats

    row, resumed = prepared.row, instances is None
    if resumed:
        preds = metrics.load_results(results.complete_predictions(opts.out, row.id, prepared.digest))
    else:
        t = time.perf_counter()
        preds = metrics.postprocess(instances.in_mmpose_order())
        results.write_predictions(opts.out, row.id, preds.to_records(), prepared.digest)
        for part in (opts.out / row.id).glob("partial-*"):
            results.PartialPredictions(opts.out, row.id, "", part=part.name).clear()
        prepared.timings["postprocess_s"] = time.perf_counter() - t
    t = time.perf_counter()
    ann: Any = (
        prepared.paths.ann_file
        if subset_images is None
        else _subset_annotations(prepared.paths.ann_file, subset_images)
    )
    scores = metrics.evaluate(preds, ann, use_area=row.use_area, reference=opts.reference)
    prepared.timings["evaluation_s"] = time.perf_counter() - t
    t = time.perf_counter()
    per_keypoint = keypoint_stats(preds, ann, use_area=row.use_area).to_json()  # a regression's where
    prepared.timings["per_keypoint_s"] = time.perf_counter() - t
    prepared.timings["total_s"] = time.perf_counter() - prepared.t0
    record = Record.ok(
        row, scores, prepared.fingerprint, prepared.digest,
        config=measured_config(prepared.cfg),
        checkpoint={"url": row.checkpoint.url, "sha256": prepared.checkpoint.sha256},
        box_source=prepared.boxes.source,
        use_area=row.use_area,
        counts={
            "instances": facts.get("crops"),
            "predictions": len(preds),
            "images_with_predictions": len(set(preds.image_id.tolist())),
        },
        inference=None if resumed else facts,
        per_keypoint=per_keypoint,
        resumed_from_predictions=resumed,
        timings=prepared.timings,
        environment=collect_env(cache=opts.cache),
        command=opts.argv,
        started=prepared.started,
        finished=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )  # fmt: skip
    results.write_record(opts.out, record)
    return record


def write_error_record(opts: RunOptions, row: Row, message: str) -> Record:
    """A failed row leaves a record that says why, so the gate reports ERROR instead of MISSING."""
    from datetime import datetime, timezone

    from zoo import results

    record = Record.error(
        row, message, command=opts.argv, finished=datetime.now(timezone.utc).isoformat(timespec="seconds")
    )
    results.write_record(opts.out, record)
    return record


def reference_run(cfg: Any, state_dict: dict[str, Any], work_dir: Path) -> tuple[Instances, dict]:
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

    class _Sample:  # the attribute view instances_of reads, over DumpResults' plain dicts
        def __init__(self, d: dict) -> None:
            self.id, self.img_id = d["id"], d["img_id"]
            self.pred_instances = InstanceData(**d["pred_instances"])
            self.gt_instances = InstanceData(**d["gt_instances"])

    return instances_of([_Sample(s) for s in samples]), dict(scores)
