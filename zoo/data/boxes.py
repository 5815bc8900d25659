"""Person boxes for top-down evaluation, exactly as mmpose's COCO-style datasets select them in test mode.

Box sources (the `--boxes` spec):
- `det` / `det:<file>`: a COCO detection-results file (the dataset's own, or another). As
  BaseCocoStyleDataset._load_detection_results: every category-1 box in file order, no score
  threshold (mmpose 1.x leaves filter_cfg unset), xywh -> xyxy without clipping, score kept.
- `gt`: the annotation boxes. As BaseCocoStyleDataset._load_annotations + _is_valid_instance:
  images in file order, each image's annotations in file order; the box clipped to
  [0, width-1] x [0, height-1]; dropped when iscrowd, num_keypoints == 0 (the *body* count in
  COCO-WholeBody, so a person with only face/hand labels is dropped), a clipped side <= 0, or all
  133 keypoint coordinates <= 0; score 1.
- `mmdet:<config>:<checkpoint>`: runs an mmdet detector once over the annotation file's images,
  keeps the person class, writes a standard detection file into the cache keyed by detector and
  images, then behaves as `det:<that file>`. The config is a path or a path under mmdet's packaged
  configs (mmdet/.mim/configs); the checkpoint a local path or a URL (fetched and verified by the
  8-hex hash in its OpenMMLab file name).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from zoo.data.coco_format import PARTS, detection_problems, load_json, write_json
from zoo.data.paths import DataPaths
from zoo.errors import InputError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PersonBoxes:
    """The instances a top-down model runs on, in mmpose's order (its data_list of the test set)."""

    source: str  # the spec they came from
    image_ids: np.ndarray  # (N,) int64
    bboxes: np.ndarray  # (N, 4) float32, x1 y1 x2 y2 (mmpose's data_info['bbox'])
    scores: np.ndarray  # (N,) float32 (mmpose's bbox_score; 1 for GT boxes)
    bbox_file: Path | None  # what to give mmpose as bbox_file; None means GT boxes

    def __len__(self) -> int:
        return len(self.image_ids)


@dataclass(frozen=True)
class BoxSpec:
    kind: str  # "det" | "gt" | "mmdet"
    path: Path | None = None  # det: explicit detection file
    config: str | None = None  # mmdet
    checkpoint: str | None = None  # mmdet


def parse_box_spec(spec: str) -> BoxSpec:
    """`det`, `det:<file>`, `gt` or `mmdet:<config>:<checkpoint>` (the checkpoint may be a URL with ':')."""
    if spec == "gt":
        return BoxSpec("gt")
    if spec == "det":
        return BoxSpec("det")
    if spec.startswith("det:") and len(spec) > 4:
        return BoxSpec("det", path=Path(spec[4:]))
    if spec.startswith("mmdet:"):
        config, sep, checkpoint = spec[len("mmdet:") :].partition(":")
        if config and sep and checkpoint:
            return BoxSpec("mmdet", config=config, checkpoint=checkpoint)
    raise InputError(f"--boxes {spec!r}: expected det, det:<file>, gt or mmdet:<config>:<checkpoint>")


def gt_boxes(ann_file: Path) -> PersonBoxes:
    """GT person boxes as mmpose's CocoWholeBodyDataset(test_mode=True, no bbox_file) keeps them."""
    data = load_json(ann_file)
    images = {}
    for img in data["images"]:  # COCO.getImgIds(): first position of each id, last record wins
        images[img["id"]] = img
    by_image: dict[int, list[dict]] = {}
    for ann in {a["id"]: a for a in data["annotations"]}.values():
        by_image.setdefault(ann["image_id"], []).append(ann)
    ids, boxes = [], []
    for img_id, img in images.items():
        w, h = img["width"], img["height"]
        for ann in by_image.get(img_id, ()):
            if ann.get("iscrowd") or ann["num_keypoints"] == 0:
                continue
            x, y, bw, bh = ann["bbox"]
            x1, y1 = np.clip(x, 0, w - 1), np.clip(y, 0, h - 1)
            x2, y2 = np.clip(x + bw, 0, w - 1), np.clip(y + bh, 0, h - 1)
            box = np.array([x1, y1, x2, y2], dtype=np.float32)
            if box[2] - box[0] <= 0 or box[3] - box[1] <= 0:
                continue
            kpts = np.array([v for name, _ in PARTS for v in ann[name]], dtype=np.float64).reshape(-1, 3)[
                :, :2
            ]
            if kpts.max() <= 0:
                continue
            ids.append(img_id)
            boxes.append(box)
    return PersonBoxes(
        source="gt",
        image_ids=np.array(ids, dtype=np.int64),
        bboxes=np.array(boxes, dtype=np.float32).reshape(-1, 4),
        scores=np.ones(len(ids), dtype=np.float32),
        bbox_file=None,
    )


def det_boxes(det_file: Path, ann_file: Path, source: str | None = None) -> PersonBoxes:
    """Every category-1 box of a detection file, as mmpose's _load_detection_results reads it."""
    dets = load_json(det_file)
    image_ids = {img["id"] for img in load_json(ann_file)["images"]}
    problems = detection_problems(dets, det_file, image_ids)
    if problems:
        raise InputError(problems[0])
    person = [d for d in dets if d["category_id"] == 1]
    xywh = np.array([d["bbox"][:4] for d in person], dtype=np.float32).reshape(-1, 4)
    xyxy = xywh.copy()
    xyxy[:, 2:] += xyxy[:, :2]  # in float32, as mmpose's bbox_xywh2xyxy
    return PersonBoxes(
        source=source or f"det:{det_file}",
        image_ids=np.array([d["image_id"] for d in person], dtype=np.int64),
        bboxes=xyxy,
        scores=np.array([d["score"] for d in person], dtype=np.float32),
        bbox_file=Path(det_file),
    )


def _sha256(path: Path) -> str:
    from zoo.fetch import sha256_file

    return sha256_file(path)


def _mmdet_config(config: str) -> Path:
    path = Path(config)
    if path.is_file():
        return path
    import mmdet

    packaged = Path(mmdet.__file__).parent / ".mim" / "configs" / config
    if packaged.is_file():
        return packaged
    raise InputError(f"mmdet config {config!r}: neither a file nor under {packaged.parent.parent}")


def _mmdet_checkpoint(checkpoint: str, cache: Path | None) -> Path:
    if "://" not in checkpoint:
        path = Path(checkpoint)
        if not path.is_file():
            raise InputError(f"mmdet checkpoint {checkpoint}: file not found")
        return path
    from zoo.fetch import fetch, resolve_expected

    expected = resolve_expected(checkpoint, source="--boxes mmdet:")
    if expected is None:
        raise InputError(
            f"mmdet checkpoint {checkpoint}: no sha256 prefix in its file name; download it and pass the path"
        )
    return fetch(checkpoint, expected, cache=cache).path


def _images_fingerprint(ann_file: Path, img_dir: Path) -> tuple[str, list[dict]]:
    """sha256 over the ordered (id, file name, content hash) of every image the detector would see."""
    images = load_json(ann_file)["images"]
    h = hashlib.sha256()
    for img in images:
        path = img_dir / img["file_name"]
        if not path.is_file():
            raise InputError(f"{ann_file}: image {img['id']}: {path} not found")
        h.update(f"{img['id']}\0{img['file_name']}\0{_sha256(path)}\n".encode())
    return h.hexdigest(), images


def mmdet_det_file(
    config: str, checkpoint: str, paths: DataPaths, *, cache: Path | None = None, device: str = "cpu"
) -> Path:
    """Run an mmdet detector over the dataset's images once; the cached COCO detection file's path.

    The cache key covers the resolved config, the checkpoint's content, every image's content, the
    device type and the mmdet/torch versions, so any change reruns the detector.
    """
    from zoo import compat

    compat.apply()
    import mmdet
    import torch
    from mmengine.config import Config

    from zoo.fetch import resolve_cache_dir

    cfg_path = _mmdet_config(config)
    ckpt_path = _mmdet_checkpoint(checkpoint, cache)
    cfg = Config.fromfile(str(cfg_path))
    images_key, images = _images_fingerprint(paths.ann_file, paths.img_dir)
    ident = {
        "config": hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True, default=str).encode()).hexdigest(),
        "checkpoint": _sha256(ckpt_path),
        "images_sha256": images_key,
        "device": torch.device(device).type,
        "mmdet": mmdet.__version__,
        "torch": torch.__version__,
    }
    key = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:32]
    out = resolve_cache_dir(cache) / "detections" / f"{key}.json"
    if out.is_file():
        log.info("person boxes: cached detections %s", out)
        return out

    from mmdet.apis import inference_detector, init_detector

    from zoo.compat import checkpoint_safe_globals

    with checkpoint_safe_globals():
        model = init_detector(cfg, str(ckpt_path), device=device)
    classes = [str(c).lower() for c in model.dataset_meta.get("classes", ())]
    if classes and "person" not in classes:
        raise InputError(
            f"mmdet checkpoint {checkpoint}: its classes have no 'person' ({', '.join(classes[:5])}, ...)"
        )
    label = classes.index("person") if classes else 0
    dets = []
    for img in images:
        pred = inference_detector(model, str(paths.img_dir / img["file_name"])).pred_instances
        keep = (pred.labels == label).cpu().numpy()
        for (x1, y1, x2, y2), score in zip(
            pred.bboxes.cpu().numpy()[keep].tolist(), pred.scores.cpu().numpy()[keep].tolist(), strict=True
        ):
            dets.append({"bbox": [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)],
                         "category_id": 1, "image_id": img["id"], "score": round(score, 5)})  # fmt: skip
    write_json(out, dets)
    write_json(out.with_suffix(".meta.json"), {**ident, "config_path": str(cfg_path), "checkpoint_path": str(ckpt_path),
                                               "n_images": len(images), "n_boxes": len(dets)})  # fmt: skip
    log.info("person boxes: %d detections from %s written to %s", len(dets), cfg_path.name, out)
    return out


def load_boxes(spec: str, paths: DataPaths, *, cache: Path | None = None, device: str = "cpu") -> PersonBoxes:
    """The person boxes named by `spec` for the data root `paths` (see the module docstring)."""
    box = parse_box_spec(spec)
    if box.kind == "gt":
        return gt_boxes(paths.ann_file)
    if box.kind == "mmdet":
        det_file = mmdet_det_file(box.config, box.checkpoint, paths, cache=cache, device=device)
        return det_boxes(det_file, paths.ann_file, source=spec)
    det_file = box.path or paths.det_file
    if det_file is None:
        raise InputError(f"--boxes det: dataset at {paths.root} has no detection file; use gt or det:<file>")
    return det_boxes(det_file, paths.ann_file, source=spec)
