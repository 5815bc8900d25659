"""The COCO-WholeBody v1.0 file formats, written down once.

The synthetic generator writes these shapes, `verify` checks real files against them and the box
sources read them, so all three agree on one definition instead of three private ones.
Sources: jin-s13/COCO-WholeBody data_format.md and mmpose's CocoWholeBodyDataset.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from zoo.errors import InputError
from zoo.fileio import write_atomic

# (annotation field, number of keypoints), in the order mmpose concatenates them into 133 points.
PARTS: tuple[tuple[str, int], ...] = (
    ("keypoints", 17),
    ("foot_kpts", 6),
    ("face_kpts", 68),
    ("lefthand_kpts", 21),
    ("righthand_kpts", 21),
)


def _part_slices() -> dict[str, slice]:
    out, start = {}, 0
    for name, k in PARTS:
        out[name] = slice(start, start + k)
        start += k
    return out


# where each part sits in mmpose's 133-point array (body 0-16, foot 17-22, face 23-90, hands 91-132)
PART_SLICES: dict[str, slice] = _part_slices()
BOXES = ("face_box", "lefthand_box", "righthand_box")
VALID_FLAGS = ("face_valid", "lefthand_valid", "righthand_valid", "foot_valid")

BODY_NAMES = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
    "right_knee", "left_ankle", "right_ankle",
)  # fmt: skip
# COCO person skeleton, 1-based as in the annotation file's category.
SKELETON = (
    (16, 14), (14, 12), (17, 15), (15, 13), (12, 13), (6, 12), (7, 13), (6, 7), (6, 8), (7, 9),
    (8, 10), (9, 11), (2, 3), (1, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7),
)  # fmt: skip
PERSON_CATEGORY: dict[str, Any] = {
    "supercategory": "person",
    "id": 1,
    "name": "person",
    "keypoints": list(BODY_NAMES),
    "skeleton": [list(p) for p in SKELETON],
}

# What the evaluation path reads of each annotation: mmpose's CocoWholeBodyDataset (KeyError without
# them) and xtcocotools' COCOeval. The face/hand boxes and *_valid flags are part of the format but
# read by neither, so their absence is not a problem here; 'area' is optional with use_area=False.
_ANN_REQUIRED = (
    "id", "image_id", "category_id", "bbox", "iscrowd", "num_keypoints", "segmentation",
    *(name for name, _ in PARTS),
)  # fmt: skip


def load_json(path: Path) -> Any:
    """Read a JSON file; a missing or malformed file is an InputError naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError as exc:
        raise InputError(f"{path}: file not found") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from exc


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically, compact and key-order-stable for byte-identical reruns."""
    # dumps, not dump: only the one-shot encoder is the fast C one (matters for 100k boxes)
    write_atomic(path, json.dumps(data, separators=(",", ":"), allow_nan=False))


def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def annotation_problems(data: Any, path: Path) -> list[str]:
    """One line per structural problem of a COCO-WholeBody annotation file (empty list: well formed)."""
    if not isinstance(data, dict):
        return [f"{path}: top level must be an object with images/annotations/categories"]
    out = []
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            out.append(f"{path}: field '{key}' missing or not a list")
    if out:
        return out
    for i, img in enumerate(data["images"]):
        missing = [k for k in ("id", "file_name", "width", "height") if k not in img]
        if missing:
            out.append(f"{path}: images[{i}] lacks {', '.join(missing)}")
    for i, ann in enumerate(data["annotations"]):
        missing = [k for k in _ANN_REQUIRED if k not in ann]
        if missing:
            out.append(f"{path}: annotations[{i}] (id {ann.get('id')}) lacks {', '.join(missing)}")
            continue
        for name, k in PARTS:
            if not isinstance(ann[name], list) or len(ann[name]) != 3 * k:
                out.append(
                    f"{path}: annotations[{i}] (id {ann['id']}) field '{name}' must hold {3 * k} numbers"
                )
        if not (isinstance(ann["bbox"], list) and len(ann["bbox"]) == 4 and all(map(_is_num, ann["bbox"]))):
            out.append(f"{path}: annotations[{i}] (id {ann['id']}) field 'bbox' must be [x, y, w, h]")
    return out


def detection_problems(data: Any, path: Path, image_ids: set[int] | None = None) -> list[str]:
    """One line per problem of a COCO detection-results file: a list of {image_id, category_id, bbox, score}.

    At most one line per kind of problem (a 100k-box file with one systematic fault gives one line,
    with the first offending index and the count).
    """
    if not isinstance(data, list):
        return [f"{path}: must be a JSON list of detections, got {type(data).__name__}"]
    faults: dict[str, tuple[int, int]] = {}  # message -> (first index, count)

    def fault(msg: str, i: int) -> None:
        first, n = faults.get(msg, (i, 0))
        faults[msg] = (first, n + 1)

    for i, det in enumerate(data):
        if not isinstance(det, dict):
            fault("entry is not an object", i)
            continue
        missing = [k for k in ("image_id", "category_id", "bbox", "score") if k not in det]
        if missing:
            fault(f"lacks {', '.join(missing)}", i)
            continue
        bbox = det["bbox"]
        if not (isinstance(bbox, list) and len(bbox) >= 4 and all(map(_is_num, bbox[:4]))):
            fault("field 'bbox' must be [x, y, w, h] numbers", i)
        if not _is_num(det["score"]):
            fault("field 'score' must be a finite number", i)
        if not isinstance(det["category_id"], int):
            fault("field 'category_id' must be an integer", i)
        if image_ids is not None and det["image_id"] not in image_ids:
            fault("field 'image_id' names an image that is not in the annotation file", i)
    return [f"{path}: detection [{first}] {msg} ({n} entries)" for msg, (first, n) in faults.items()]
