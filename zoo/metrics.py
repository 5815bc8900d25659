"""COCO-WholeBody keypoint metrics exactly as mmpose reports them, computed fast.

Why this module exists: mmpose's `CocoWholeBodyMetric` returns only the whole-body stats (the other
parts are printed by xtcocotools and lost), and xtcocotools scores every (detection, ground truth)
pair in a Python loop, six times. A harness that re-measures a whole model zoo needs all parts, and
needs them quickly, and must still give the numbers mmpose would give to the last bit. So:

* `postprocess` / `rescore_and_nms` is mmpose's post-processing (score = bbox score x mean keypoint
  score above `keypoint_score_thr`; per-image OKS-NMS over all 133 keypoints with area =
  prod(bbox_scale)) with mmpose's dtypes and operation order, so its records are the ones mmpose's
  `results2json` writes. `zoo run` applies it before writing predictions.
* `evaluate` computes the ten COCO keypoint stats for body, foot, face, lefthand, righthand and
  wholebody from results as given (no rescoring, no NMS). The default path re-implements
  xtcocotools' `COCOeval` with arrays: one OKS pass over all 133 keypoints of every (detection,
  ground truth) pair shared by the six parts, pairs that provably cannot reach OKS 0.5 skipped,
  greedy matching for all images, thresholds and area ranges at once. Every float operation whose
  result decides a comparison or ends up in a stat is done in xtcocotools' order and dtype, so the
  stats are identical, not merely close (the tests compare with `==`, OKS values included).
  `reference=True` runs xtcocotools itself, six times, as `CocoWholeBodyMetric` does.
* `hand` is the published tables' Hand column: the mean of lefthand and righthand, stat by stat
  (the dataset author, jin-s13/COCO-WholeBody#38: "we simply calculate their mean").

Quirks kept on purpose, because the reference has them: a ground truth is ignored when it is a crowd
or has no labelled keypoint in the part being scored (it can still absorb detections, scored by
their distance outside its doubled bbox); a detection is dropped from a part when none of its part
scores is > 0; a part score falls back to `score` (`<part>_score` keys are honoured when present);
at most 20 detections per image, ranked by a stable sort (ties keep file order); a detection's area
(for the medium/large ranges) is the extent of its body keypoints, or w*h of its `bbox` when the
first record carries one; with `use_area=False` the OKS scale and the area ranges use bbox
w*h*0.53; mmpose's sigmas are float32, so are the OKS variances.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import gzip
import importlib.util
import io
import json
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from zoo.errors import InputError, StackError

STATS: tuple[str, ...] = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")

# Result/annotation fields in the order mmpose concatenates them into the 133 keypoints.
FIELDS: tuple[tuple[str, int], ...] = (
    ("keypoints", 17),
    ("foot_kpts", 6),
    ("face_kpts", 68),
    ("lefthand_kpts", 21),
    ("righthand_kpts", 21),
)
NUM_KEYPOINTS = sum(n for _, n in FIELDS)


class Part(NamedTuple):
    """One scored part: its name in `evaluate`'s result, xtcocotools' iouType and score key, and
    its slice of the 133 keypoints."""

    name: str
    iou_type: str
    score_key: str
    start: int
    stop: int


def _parts() -> tuple[Part, ...]:
    bounds = np.cumsum([0] + [n for _, n in FIELDS]).tolist()
    names = ("body", "foot", "face", "lefthand", "righthand")
    parts = [
        # xtcocotools scores the body with the plain 'score' key; the other parts with '<part>_score'.
        Part(name, f"keypoints_{name}", "score" if name == "body" else f"{name}_score", lo, hi)
        for name, lo, hi in zip(names, bounds[:-1], bounds[1:], strict=True)
    ]
    parts.append(Part("wholebody", "keypoints_wholebody", "wholebody_score", 0, NUM_KEYPOINTS))
    return tuple(parts)


PARTS: tuple[Part, ...] = _parts()
RESULT_KEYS: tuple[str, ...] = tuple(p.name for p in PARTS) + ("hand",)

Metrics = dict[str, dict[str, float]]


# --------------------------------------------------------------------------------------------------
# dataset constants


def dataset_config_path(dataset: str = "coco_wholebody") -> Path:
    """mmpose's packaged dataset config (`.mim/configs/_base_/datasets/<dataset>.py`), located
    without importing mmpose."""
    spec = importlib.util.find_spec("mmpose")
    if spec is None or not spec.submodule_search_locations:
        raise StackError("mmpose is not installed: it provides the dataset sigmas (pip install mmpose)")
    path = (
        Path(spec.submodule_search_locations[0])
        / ".mim"
        / "configs"
        / "_base_"
        / "datasets"
        / f"{dataset}.py"
    )
    if not path.is_file():
        raise InputError(f"{path}: no such mmpose dataset config (dataset '{dataset}')")
    return path


@functools.cache
def dataset_sigmas(dataset: str = "coco_wholebody") -> np.ndarray:
    """The per-keypoint OKS sigmas of an mmpose dataset, read from mmpose's packaged config.

    Read (not copied) so the numbers are exactly mmpose's, and returned as float32 because that is
    what mmpose's `parse_pose_metainfo` hands to the metric: the OKS variances are then computed in
    float32 by both mmpose and xtcocotools, and so here. UBody2D uses the same 133 sigmas.
    """
    path = dataset_config_path(dataset)
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.keyword) and node.arg == "sigmas":
            sigmas = np.array(ast.literal_eval(node.value), dtype=np.float32)
            sigmas.flags.writeable = False
            return sigmas
    raise StackError(f"{path}: no 'sigmas' in the dataset config")


def _coco_params() -> Any:
    """xtcocotools' keypoint parameters (IoU/recall thresholds, maxDets, area ranges), used as is."""
    from xtcocotools.cocoeval import Params

    return Params(iouType="keypoints")


# --------------------------------------------------------------------------------------------------
# results as arrays: the form both the post-processing output and a loaded results file take


@dataclass
class PoseResults:
    """COCO-WholeBody results as arrays, one row per record, in file order.

    Evaluation starts from this form whether the results come from a file (`load_results`) or
    straight from `postprocess`, which then never goes through 40 million Python floats.
    """

    image_id: np.ndarray  # (M,) int64
    category_id: np.ndarray  # (M,) int64
    keypoints: np.ndarray  # (M, 133, 3) x, y, score; float32 from postprocess, float64 from a file
    score: np.ndarray  # (M,) float64
    part_scores: dict[str, np.ndarray]  # '<part>_score' -> (M,), only for keys some record carries
    area: np.ndarray  # (M,) detection area as xtcocotools' loadRes sets it
    label: str = "<predictions>"
    records: list[dict[str, Any]] | None = None  # the parsed records, when made from records

    def __len__(self) -> int:
        return len(self.image_id)

    def to_records(self) -> list[dict[str, Any]]:
        """The records of a results file (what mmpose's `results2json` writes, for our own output)."""
        if self.records is not None:
            return self.records
        bounds = np.cumsum([0] + [n for _, n in FIELDS]).tolist()
        names = [field for field, _ in FIELDS]
        columns = [  # one list per field: no per-record row list to slice and throw away
            self.keypoints[:, lo:hi, :].reshape(len(self), 3 * (hi - lo)).tolist()
            for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)
        ]
        records = []
        for image_id, cat_id, score, *parts in zip(
            self.image_id.tolist(), self.category_id.tolist(), self.score.tolist(), *columns, strict=True
        ):
            record: dict[str, Any] = {"image_id": image_id, "category_id": cat_id}
            record.update(zip(names, parts, strict=True))
            record["score"] = score
            records.append(record)
        return records


def _body_extent_area(keypoints: np.ndarray) -> np.ndarray:
    """loadRes' detection area without a bbox: extent of the 17 body keypoints (visible or not),
    in float64 as loadRes computes it from the file's numbers."""
    body = keypoints[:, : FIELDS[0][1], :2]
    lo, hi = body.min(axis=1).astype(np.float64), body.max(axis=1).astype(np.float64)
    return (hi[:, 0] - lo[:, 0]) * (hi[:, 1] - lo[:, 1])


# --------------------------------------------------------------------------------------------------
# mmpose post-processing: rescoring and OKS-NMS


@dataclass(frozen=True)
class Instances:
    """Top-down predictions before mmpose's rescoring and NMS, one row per person box.

    The arrays carry the dtypes mmpose carries (float32 scores, bbox scores and areas; float32
    keypoints for MSRA/DARK and float64 for UDP), which decide the bits of the written records.
    `area` is prod(bbox_scale): the padded, aspect-fixed box. `sample_id` is the dataset's sample id.
    """

    sample_id: np.ndarray  # (N,) int64
    image_id: np.ndarray  # (N,) int64
    keypoints: np.ndarray  # (N, K, 2)
    keypoint_scores: np.ndarray  # (N, K)
    bbox_score: np.ndarray  # (N,)
    area: np.ndarray  # (N,)

    def __len__(self) -> int:
        return len(self.sample_id)

    @classmethod
    def concat(cls, parts: Sequence[Instances]) -> Instances:
        if not parts:
            return cls.empty()
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in _INSTANCE_FIELDS))

    @classmethod
    def empty(cls) -> Instances:
        return cls(
            np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, NUM_KEYPOINTS, 2), np.float32),
            np.zeros((0, NUM_KEYPOINTS), np.float32), np.zeros(0, np.float32), np.zeros(0, np.float32),
        )  # fmt: skip

    @classmethod
    def stack(
        cls,
        image_ids: Sequence[int],
        keypoints: Sequence[np.ndarray],
        keypoint_scores: Sequence[np.ndarray],
        bbox_scores: Sequence[Any],
        areas: Sequence[Any],
        sample_ids: Sequence[int] | None = None,
    ) -> Instances:
        """From per-box values (numpy scalars and arrays keep their dtypes); sample ids default to the
        order given."""
        if not len(image_ids):
            return cls.empty()
        return cls(
            np.asarray(range(len(image_ids)) if sample_ids is None else sample_ids, dtype=np.int64),
            np.asarray(image_ids, dtype=np.int64), np.stack(keypoints), np.stack(keypoint_scores),
            np.array(bbox_scores), np.array(areas),
        )  # fmt: skip

    def take(self, rows: np.ndarray) -> Instances:
        return Instances(*(getattr(self, f)[rows] for f in _INSTANCE_FIELDS))

    def in_mmpose_order(self) -> Instances:
        """The order mmpose's metric evaluates instances in: images by first appearance, then by sample
        id within an image, duplicate samples (distributed padding) dropped."""
        _, first = np.unique(self.sample_id, return_index=True)
        unique = self.take(np.sort(first))
        _, appearance, image_rank = np.unique(unique.image_id, return_index=True, return_inverse=True)
        rank_of_image = np.argsort(np.argsort(appearance))
        return unique.take(np.lexsort((unique.sample_id, rank_of_image[image_rank])))


_INSTANCE_FIELDS = ("sample_id", "image_id", "keypoints", "keypoint_scores", "bbox_score", "area")


_SCORE_CHUNK_ROWS = 1 << 13  # rows per step when scoring: keeps temporaries small


def _instance_scores(scores: np.ndarray, bbox_scores: Sequence[Any], thr: float) -> list[Any]:
    """mmpose's 'bbox_keypoint' score: bbox_score * mean of the keypoint scores > thr (0 if none).

    mmpose loops over numpy scalars (`total = 0; total += s` for each s > thr; `total /= n`), so the
    comparison, the running sum and the division happen in whatever dtype numpy's scalar promotion
    gives (float64 for float32 scores under numpy 1.x). The dtypes are probed with the same scalar
    operations, then the sum is a sequential cumsum, which adds in the same order.
    """
    one = scores.dtype.type(1)
    compare, acc = type(one + thr), type(0 + one)  # acc: mmpose's running sum after `0 + score`
    sums = np.empty(len(scores), dtype=acc)
    counts = np.empty(len(scores), dtype=np.int64)
    for lo in range(0, len(scores), _SCORE_CHUNK_ROWS):  # chunks keep the temporaries small
        chunk = scores[lo : lo + _SCORE_CHUNK_ROWS]
        passing = chunk.astype(compare) > thr
        sums[lo : lo + len(chunk)] = np.cumsum(np.where(passing, chunk.astype(acc), acc(0)), axis=1)[:, -1]
        counts[lo : lo + len(chunk)] = passing.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):  # rows without a passing score: unused
        means = sums / counts.astype(type(acc(1) / 1))
    return [
        bbox_score * (mean if count else 0)  # mmpose: the mean stays the int 0
        for bbox_score, mean, count in zip(bbox_scores, means, counts.tolist(), strict=True)
    ]


_NMS_CHUNK_PAIRS = 1 << 13  # pairs per step: keeps the temporaries small
_NMS_BOUND_MARGIN = 1e-3  # far above the float32 rounding of an OKS mean (~1e-6)


def _nms_pair_oks(
    coords: np.ndarray,
    dtype: Any,
    areas: np.ndarray,
    first: np.ndarray,
    second: np.ndarray,
    sigmas: np.ndarray,
) -> np.ndarray:
    """OKS of instance pairs, bitwise as mmpose's `oks_iou` computes each (it is symmetric).

    coords: (N, K, 2); dtype: that of mmpose's concatenated (x, y, score) array. mmpose mixes arrays with numpy scalars (the pair's area term,
    the final division), so each scalar step is done in the dtype numpy's promotion gives it;
    `* -0.5` is exactly `-(e / 2)`; row sums of contiguous rows are numpy's pairwise sums, as for
    mmpose's 1-D rows. The result is float32, as mmpose stores it.
    """
    variances = (sigmas * 2) ** 2
    out = np.empty(len(first), dtype=np.float32)
    for lo in range(0, len(first), _NMS_CHUNK_PAIRS):
        i, j = first[lo : lo + _NMS_CHUNK_PAIRS], second[lo : lo + _NMS_CHUNK_PAIRS]
        g, d = coords[i].astype(dtype, copy=False), coords[j].astype(dtype, copy=False)
        dx = d[:, :, 0] - g[:, :, 0]
        dy = d[:, :, 1] - g[:, :, 1]
        dist = (dx**2 + dy**2) / variances
        pair_sum = areas[i] + areas[j]
        half = pair_sum.astype(type(pair_sum.dtype.type(1) / 2)) / 2
        scale = half.astype(type(half.dtype.type(1) + np.spacing(1))) + np.spacing(1)
        scale = scale.astype(np.result_type(dist, scale.dtype.type(1)))  # array / scalar promotion
        sums = np.exp(dist / scale[:, None] * -0.5).sum(axis=1)
        out[lo : lo + len(i)] = sums.astype(type(sums.dtype.type(1) / 1)) / dist.shape[1]
    return out


def _nms_suppresses(
    coords: np.ndarray,
    dtype: Any,
    areas: np.ndarray,
    first: np.ndarray,
    second: np.ndarray,
    sigmas: np.ndarray,
    thr: float,
) -> np.ndarray:
    """For each pair, whether mmpose's OKS-NMS would find OKS > thr (`not oks <= thr`: NaN suppresses).

    The exact OKS is computed only where it can matter. Every exp(-e) is at most 1, so the body
    keypoints alone bound the mean from above: (sum of their exp(-e) + the other K - 17) / K. Each
    body term is in turn at most exp(-gap^2 / (2 var_max scale)), gap being the distance between the
    two body keypoint boxes. A pair whose bound is below thr (with a margin far above float32
    rounding) cannot be suppressed; most pairs are different people and end at the cheap test.
    """
    k, body = coords.shape[1], FIELDS[0][1]
    var64 = ((sigmas[:body] * 2) ** 2).astype(np.float64)
    bx = coords[:, :body, 0].astype(np.float64)  # contiguous: cheap row gathers
    by = coords[:, :body, 1].astype(np.float64)
    area64 = areas.astype(np.float64)
    limit = thr - _NMS_BOUND_MARGIN

    def cannot(body_sum: np.ndarray, scale: np.ndarray) -> np.ndarray:
        return ((body_sum + (k - body)) / k < limit) & (scale > 0)  # NaN is never "cannot"

    scale = (area64[first] + area64[second]) / 2 + np.spacing(1)
    boxes = np.stack([bx.min(axis=1), bx.max(axis=1), by.min(axis=1), by.max(axis=1)], axis=1)
    gi, gj = boxes[first], boxes[second]
    gap_x = np.maximum(0.0, np.maximum(gi[:, 0] - gj[:, 1], gj[:, 0] - gi[:, 1]))
    gap_y = np.maximum(0.0, np.maximum(gi[:, 2] - gj[:, 3], gj[:, 2] - gi[:, 3]))
    term = np.exp(-(gap_x * gap_x + gap_y * gap_y) / var64.max() / scale / 2)
    candidates = np.nonzero(~cannot(body * term, scale))[0]

    maybe = np.zeros(len(first), dtype=bool)
    for lo in range(0, len(candidates), _NMS_CHUNK_PAIRS):
        c = candidates[lo : lo + _NMS_CHUNK_PAIRS]
        i, j = first[c], second[c]
        dx = bx[j] - bx[i]
        dy = by[j] - by[i]
        body_sum = np.exp((dx * dx + dy * dy) / var64 / scale[c, None] * -0.5).sum(axis=1)
        maybe[c] = ~cannot(body_sum, scale[c])
    suppress = np.zeros(len(first), dtype=bool)
    exact = np.nonzero(maybe)[0]
    suppress[exact] = ~(_nms_pair_oks(coords, dtype, areas, first[exact], second[exact], sigmas) <= thr)
    return suppress


def _triu_pairs(groups: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """All (a, b) index pairs a before b within each group (global indices)."""
    firsts, seconds, cache = [], [], {}
    for idx in groups:
        n = len(idx)
        if n < 2:
            continue
        if n not in cache:
            cache[n] = np.triu_indices(n, 1)
        a, b = cache[n]
        firsts.append(idx[a])
        seconds.append(idx[b])
    if not firsts:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(firsts), np.concatenate(seconds)


def postprocess(
    instances: Instances,
    keypoint_score_thr: float = 0.2,
    nms_thr: float = 0.9,
    sigmas: np.ndarray | None = None,
) -> PoseResults:
    """mmpose's CocoWholeBodyMetric post-processing (rescoring, per-image OKS-NMS) as arrays.

    `instances` must be in mmpose's order (`Instances.in_mmpose_order`). Output order is mmpose's:
    images in order of first appearance, within an image the NMS keep order (mmpose's unstable
    argsort of the scores, reversed). Order matters: COCOeval breaks score ties by file order.
    """
    if sigmas is None:
        sigmas = dataset_sigmas()
    if not len(instances):
        empty = np.zeros(0, dtype=np.int64)
        kp = np.zeros((0, NUM_KEYPOINTS, 3))
        return PoseResults(empty, empty, kp, np.zeros(0), {}, np.zeros(0))
    groups: dict[Any, list[int]] = {}
    for i, image_id in enumerate(instances.image_id.tolist()):
        groups.setdefault(image_id, []).append(i)
    kpt_scores = instances.keypoint_scores
    scores = _instance_scores(kpt_scores, instances.bbox_score, keypoint_score_thr)
    coords = instances.keypoints
    dtype = np.result_type(coords, kpt_scores)  # mmpose concatenates (x, y) and score per instance
    areas = instances.area
    index = [np.array(idx) for idx in groups.values()]
    first, second = _triu_pairs(index)
    suppress = _nms_suppresses(coords, dtype, areas, first, second, sigmas, nms_thr)
    neighbours: dict[int, set[int]] = {}
    for a, b in zip(first[suppress].tolist(), second[suppress].tolist(), strict=True):
        neighbours.setdefault(a, set()).add(b)
        neighbours.setdefault(b, set()).add(a)

    kept: list[int] = []
    for idx in index:
        order = idx[np.array([scores[i] for i in idx]).argsort()[::-1]].tolist()
        removed: set[int] = set()
        for i in order:  # mmpose's loop: keep the best left, drop what it suppresses
            if i not in removed:
                kept.append(i)
                removed |= neighbours.get(i, set())
    kept_arr = np.array(kept, dtype=np.int64)
    keypoints = np.empty((len(kept), coords.shape[1], 3), dtype=dtype)
    area = np.empty(len(kept))
    for lo in range(0, len(kept), _SCORE_CHUNK_ROWS):  # chunks keep the temporaries small
        rows = kept_arr[lo : lo + _SCORE_CHUNK_ROWS]
        keypoints[lo : lo + len(rows), :, :2] = coords[rows]
        keypoints[lo : lo + len(rows), :, 2] = kpt_scores[rows]
        area[lo : lo + len(rows)] = _body_extent_area(keypoints[lo : lo + len(rows)])
    return PoseResults(
        image_id=instances.image_id[kept_arr].astype(np.int64),
        category_id=np.ones(len(kept), dtype=np.int64),
        keypoints=keypoints,
        score=np.array([float(scores[i]) for i in kept], dtype=np.float64),
        part_scores={},
        area=area,
    )


def rescore_and_nms(
    instances: Instances,
    keypoint_score_thr: float = 0.2,
    nms_thr: float = 0.9,
    sigmas: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """mmpose's CocoWholeBodyMetric post-processing; returns the records its `results2json` writes."""
    return postprocess(instances, keypoint_score_thr, nms_thr, sigmas).to_records()


# --------------------------------------------------------------------------------------------------
# input loading and validation (shared by both evaluation paths, so bad input fails the same way)


def read_json(path: str | Path, what: str) -> Any:
    """Load a JSON or gzipped JSON file; every failure is one InputError naming the file."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        raise InputError(f"{path}: no such {what} file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read {what} file: {exc.strerror or exc}") from None
    try:
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        return json.loads(raw)
    except (OSError, EOFError) as exc:
        raise InputError(f"{path}: corrupt gzip {what} file: {exc}") from None
    except json.JSONDecodeError as exc:
        raise InputError(
            f"{path}: malformed JSON {what} (line {exc.lineno} column {exc.colno}: {exc.msg})"
        ) from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: {what} file is not UTF-8 JSON ({exc.reason})") from None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _first_bad(
    records: Sequence[Any], label: str, where: str, field: str, ok: Any, expected: str
) -> InputError:
    """The InputError for the first record whose `field` fails `ok` (slow path, errors only)."""
    for i, rec in enumerate(records):
        if not isinstance(rec, Mapping):
            return InputError(f"{label}: {where}[{i}]: must be an object")
        if field not in rec:
            return InputError(f"{label}: {where}[{i}]: missing field '{field}'")
        if not ok(rec[field]):
            return InputError(f"{label}: {where}[{i}].{field}: {expected}, got {rec[field]!r:.60}")
    return InputError(f"{label}: {where}: field '{field}': {expected}")


def _column(records: Sequence[Any], label: str, where: str, field: str, kind: str) -> np.ndarray:
    """One scalar field of every record as an array; kind 'int' or 'number' (finite)."""
    ok, expected = (
        (_is_int, "expected an integer") if kind == "int" else (_is_number, "expected a finite number")
    )
    if not records:
        return np.zeros(0, dtype=np.int64 if kind == "int" else np.float64)
    try:
        arr = np.array([rec[field] for rec in records])
        good = (
            arr.dtype.kind == "i"
            if kind == "int"
            else arr.dtype.kind in "fi" and bool(np.isfinite(arr).all())
        )
        if good and arr.shape == (len(records),):
            return arr.astype(np.int64 if kind == "int" else np.float64)
    except (KeyError, TypeError, ValueError, IndexError, OverflowError):
        pass
    raise _first_bad(records, label, where, field, ok, expected)


def _keypoint_lists(records: Sequence[Mapping[str, Any]], label: str, where: str) -> np.ndarray:
    """(N, 133, 3) float64 keypoints of result or annotation records, checked field by field."""
    out = np.empty((len(records), NUM_KEYPOINTS, 3), dtype=np.float64)
    start = 0
    for field, n in FIELDS:
        width = 3 * n

        def ok(value: Any, width: int = width) -> bool:
            return isinstance(value, list) and len(value) == width and all(_is_number(v) for v in value)

        try:
            arr = np.array([rec[field] for rec in records]) if records else np.zeros((0, width))
            good = (
                arr.dtype.kind in "fi" and arr.shape == (len(records), width) and bool(np.isfinite(arr).all())
            )
        except (KeyError, TypeError, ValueError):
            good = False
        if not good:
            expected = f"expected a list of {width} finite numbers ({n} keypoints x (x, y, v))"
            raise _first_bad(records, label, where, field, ok, expected)
        out[:, start : start + n, :] = arr.reshape(-1, n, 3)
        start += n
    return out


def load_results(preds: str | Path | Sequence[Mapping[str, Any]] | PoseResults) -> PoseResults:
    """Parse and check a COCO-WholeBody results file (path, parsed list, or already arrays)."""
    if isinstance(preds, PoseResults):
        return preds
    if isinstance(preds, (str, Path)):
        label, records = str(preds), read_json(preds, "predictions")
    else:
        label, records = "<predictions>", preds
    if not isinstance(records, list):
        raise InputError(f"{label}: expected a JSON list of COCO-WholeBody result records")
    where = "predictions"
    image_id = _column(records, label, where, "image_id", "int")
    category_id = _column(records, label, where, "category_id", "int")
    score = _column(records, label, where, "score", "number")
    keypoints = _keypoint_lists(records, label, where)
    part_scores = {}
    for part in PARTS:
        key = part.score_key
        if key != "score" and any(key in rec for rec in records):
            present = [i for i, rec in enumerate(records) if key in rec]
            values = score.copy()
            values[present] = _column([records[i] for i in present], label, where, key, "number")
            part_scores[key] = values
    first_bbox = records[0].get("bbox") if records else None
    if first_bbox is not None and first_bbox != []:  # loadRes then takes every area from the bbox
        boxes = np.zeros((len(records), 4))
        for i, rec in enumerate(records):
            bbox = rec.get("bbox")
            if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
                raise InputError(
                    f"{label}: predictions[{i}].bbox: expected [x, y, w, h] (the first record has a bbox, "
                    "so every record needs one)"
                )
            boxes[i] = bbox
        area = boxes[:, 2] * boxes[:, 3]
    else:
        area = _body_extent_area(keypoints)
    return PoseResults(image_id, category_id, keypoints, score, part_scores, area, label, records)


@dataclass
class GroundTruth:
    """The annotation file as arrays, in xtcocotools' evaluation order.

    Annotations are sorted by (category, image) with file order kept inside each group, which is the
    order `COCO.getAnnIds(imgIds=sorted ids)` yields and hence the tie-break order of the matching.
    """

    label: str
    image_ids: np.ndarray  # sorted unique image ids
    cat_ids: np.ndarray  # sorted category ids
    group: np.ndarray  # (G,) cat_index * len(image_ids) + image_index
    cat: np.ndarray  # (G,) category index
    kpts: np.ndarray  # (G, 133, 3)
    bbox: np.ndarray  # (G, 4) x, y, w, h
    area: np.ndarray  # (G,) 'area' (NaN when absent)
    crowd: np.ndarray  # (G,) bool
    raw: Mapping[str, Any]  # the parsed file, for the reference path


def load_ground_truth(ann: str | Path | Mapping[str, Any], use_area: bool = True) -> GroundTruth:
    """Parse and check a COCO-WholeBody annotation file (path or already-parsed dict)."""
    if isinstance(ann, Mapping):
        label, data = "<annotations>", ann
    else:
        label, data = str(ann), read_json(ann, "annotation")
    if not isinstance(data, Mapping):
        raise InputError(f"{label}: expected a JSON object with images, annotations and categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise InputError(f"{label}: field '{key}' must be a list")
    images = np.unique(_column(data["images"], label, "images", "id", "int"))
    cats = np.unique(_column(data["categories"], label, "categories", "id", "int"))
    anns = data["annotations"]
    ids = _column(anns, label, "annotations", "id", "int")
    if len(np.unique(ids)) != len(ids) or (ids < 0).any():
        # xtcocotools looks annotations up by id and marks "unmatched" with -1
        values, counts = np.unique(ids, return_counts=True)
        bad = int(ids[ids < 0][0]) if (ids < 0).any() else int(values[counts > 1][0])
        raise InputError(
            f"{label}: annotations[{int(np.nonzero(ids == bad)[0][-1])}].id: {bad} is negative or not unique"
        )
    image_of = _column(anns, label, "annotations", "image_id", "int")
    cat_of = _column(anns, label, "annotations", "category_id", "int")
    bbox = _fixed_lists(anns, label, "bbox", 4, "[x, y, w, h] of finite numbers")
    if use_area:
        try:
            area = _column(anns, label, "annotations", "area", "number")
        except InputError as exc:
            raise InputError(
                f"{exc} (needed with use_area; --no-use-area scales OKS by bbox w*h*0.53)"
            ) from None
    else:
        area = np.array(
            [a.get("area") if _is_number(a.get("area")) else np.nan for a in anns], dtype=np.float64
        )
    crowd_flags = [a.get("iscrowd", 0) for a in anns]
    if not all(flag in (0, 1) for flag in crowd_flags):  # xtcocotools reads it both as bool and int
        raise _first_bad(anns, label, "annotations", "iscrowd", lambda v: v in (0, 1), "expected 0 or 1")
    crowd = np.array(crowd_flags, dtype=bool)
    # xtcocotools evaluates only annotations of listed images and categories
    img = np.searchsorted(images, image_of)
    cat = np.searchsorted(cats, cat_of)
    listed = (
        (images[np.minimum(img, len(images) - 1)] == image_of) if len(images) else np.zeros(len(anns), bool)
    )
    listed &= (cats[np.minimum(cat, len(cats) - 1)] == cat_of) if len(cats) else False
    keep = np.nonzero(listed)[0]
    group = cat[keep] * len(images) + img[keep]
    keep = keep[np.argsort(group, kind="stable")]
    kpts = _keypoint_lists([anns[i] for i in keep], label, "annotations")
    return GroundTruth(
        label=label,
        image_ids=images,
        cat_ids=cats,
        group=cat[keep] * len(images) + img[keep],
        cat=cat[keep],
        kpts=kpts,
        bbox=bbox[keep],
        area=area[keep],
        crowd=crowd[keep],
        raw=data,
    )


def _fixed_lists(records: Sequence[Any], label: str, field: str, width: int, expected: str) -> np.ndarray:
    """A fixed-length numeric list field (e.g. bbox) of every annotation as an (N, width) array."""
    try:
        arr = np.array([rec[field] for rec in records]) if records else np.zeros((0, width))
        if arr.dtype.kind in "fi" and arr.shape == (len(records), width) and np.isfinite(arr).all():
            return arr.astype(np.float64)
    except (KeyError, TypeError, ValueError):
        pass

    def ok(value: Any) -> bool:
        return isinstance(value, list) and len(value) == width and all(_is_number(v) for v in value)

    raise _first_bad(records, label, "annotations", field, ok, f"expected {expected}")


def _groups(results: PoseResults, gt: GroundTruth) -> np.ndarray:
    """Each result's (category, image) group in the ground truth's encoding; unknown ids are errors."""
    img = np.searchsorted(gt.image_ids, results.image_id)
    cat = np.searchsorted(gt.cat_ids, results.category_id)
    for values, pos, known, field, what in (
        (results.image_id, img, gt.image_ids, "image_id", "an image"),
        (results.category_id, cat, gt.cat_ids, "category_id", "a category"),
    ):
        ok = (known[np.minimum(pos, len(known) - 1)] == values) if len(known) else np.zeros(len(values), bool)
        if not ok.all():
            i = int(np.nonzero(~ok)[0][0])
            raise InputError(
                f"{results.label}: predictions[{i}].{field}: {int(values[i])} is not {what} of {gt.label}"
            )
    return cat * len(gt.image_ids) + img


# --------------------------------------------------------------------------------------------------
# fast COCOeval


_OKS_CHUNK_PAIRS = 1 << 12  # pairs per step: temporaries of ~4 MiB stay in cache and get reused


def _pairs(gt_group: np.ndarray, dgroup: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (detection, ground truth) pair of the same group: (pd, pg, first pair of each detection)."""
    g_lo = np.searchsorted(gt_group, dgroup, side="left")
    counts = np.searchsorted(gt_group, dgroup, side="right") - g_lo
    start = np.cumsum(counts) - counts
    pd = np.repeat(np.arange(len(dgroup)), counts)
    pg = g_lo[pd] + (np.arange(len(pd)) - start[pd])
    return pd, pg, start


@dataclass
class _GtGeometry:
    """Per ground truth: the OKS scale, the doubled-bbox bounds, and labelled-keypoint bookkeeping."""

    x: np.ndarray  # (G, 133)
    y: np.ndarray  # (G, 133)
    scale: np.ndarray  # (G,) area + eps (or bbox h*w*0.53 + eps without use_area)
    bounds: np.ndarray  # (G, 4) x0, x1, y0, y1 of the doubled bbox
    labelled: dict[str, np.ndarray]  # part -> (G,) labelled keypoint count
    labelled_first: dict[str, np.ndarray]  # part -> (G, k) part keypoint indices, labelled first
    unlabelled_part: np.ndarray  # (G,) some part has no labelled keypoint
    reach: dict[str, np.ndarray]  # part -> (G, 4) x/y ranges OKS distances are measured to


def oks_scale(gt: GroundTruth, use_area: bool) -> np.ndarray:
    """Each ground truth's OKS scale s^2 exactly as xtcocotools uses it: its `area`, or bbox w*h*0.53
    with use_area=False (the UBody2D row), plus eps. Public so per-keypoint analyses use the same."""
    bw, bh = gt.bbox[:, 2], gt.bbox[:, 3]
    return (gt.area if use_area else bh * bw * 0.53) + np.spacing(1)


def _range_area(gt: GroundTruth, use_area: bool) -> np.ndarray:
    """The area xtcocotools compares with the area ranges: `area`, or bbox w*h*0.53 when it is absent
    or use_area is off."""
    bw, bh = gt.bbox[:, 2], gt.bbox[:, 3]
    return np.where(np.isnan(gt.area) | (not use_area), bw * bh * 0.53, gt.area)


def _gt_geometry(gt: GroundTruth, use_area: bool) -> _GtGeometry:
    bx, by, bw, bh = gt.bbox.T
    vis = gt.kpts[:, :, 2] > 0
    labelled = {p.name: vis[:, p.start : p.stop].sum(axis=1) for p in PARTS}
    bounds = np.stack([bx - bw, bx + bw * 2, by - bh, by + bh * 2], axis=1)
    reach = {}
    for p in PARTS:  # labelled keypoints' x/y ranges, or the doubled bbox when there are none
        v = vis[:, p.start : p.stop]
        x, y = gt.kpts[:, p.start : p.stop, 0], gt.kpts[:, p.start : p.stop, 1]
        ranges = np.stack(
            [
                np.where(v, x, np.inf).min(axis=1),
                np.where(v, x, -np.inf).max(axis=1),
                np.where(v, y, np.inf).min(axis=1),
                np.where(v, y, -np.inf).max(axis=1),
            ],
            axis=1,
        )
        reach[p.name] = np.where((labelled[p.name] > 0)[:, None], ranges, bounds)
    return _GtGeometry(
        x=np.ascontiguousarray(gt.kpts[:, :, 0]),
        y=np.ascontiguousarray(gt.kpts[:, :, 1]),
        scale=oks_scale(gt, use_area),
        bounds=bounds,
        labelled=labelled,
        labelled_first={p.name: np.argsort(~vis[:, p.start : p.stop], axis=1, kind="stable") for p in PARTS},
        unlabelled_part=np.any([n == 0 for n in labelled.values()], axis=0),
        reach=reach,
    )


def _coords(keypoints: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x and y of the given detections as contiguous (N, 133) arrays: row gathers from them are cheap."""
    return keypoints[rows, :, 0], keypoints[rows, :, 1]


def _part_ranges(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(N, parts, 4) x min, x max, y min, y max of each detection's keypoints per part (float64)."""
    starts = [p.start for p in PARTS[:-1]]
    out = np.empty((len(x), len(PARTS), 4))
    for c, coord in enumerate((x, y)):
        for j, reduce in enumerate((np.minimum, np.maximum)):
            per_part = reduce.reduceat(coord, starts, axis=1)
            out[:, :-1, 2 * c + j] = per_part
            out[:, -1, 2 * c + j] = reduce.reduce(per_part, axis=1)
    return out


_OKS_FLOOR = 0.49  # below the lowest IoU threshold (0.5) with a margin far above float rounding


def _oks_upper_bounds(
    xy: tuple[np.ndarray, np.ndarray], geo: _GtGeometry, variances: np.ndarray, pd: np.ndarray, pg: np.ndarray
) -> dict[str, np.ndarray]:
    """Per part, an upper bound of each pair's OKS that costs a few operations per pair.

    OKS is a mean of exp(-e_k) <= exp(-min e_k), and every keypoint distance is at least the gap
    between the detection's part keypoints' x/y ranges and the ground truth's (labelled keypoints',
    or the doubled bbox when scored by distance outside it); with the part's largest variance that
    bounds min e_k from below. (Only valid for a positive scale; callers check it.)
    """
    var64 = variances.astype(np.float64)
    ranges = _part_ranges(*xy)
    scale = geo.scale[pg]
    bounds = {}
    for i, part in enumerate(PARTS):
        d = ranges[pd, i]
        g = geo.reach[part.name][pg]
        gap_x = np.maximum(0.0, np.maximum(g[:, 0] - d[:, 1], d[:, 0] - g[:, 1]))
        gap_y = np.maximum(0.0, np.maximum(g[:, 2] - d[:, 3], d[:, 2] - g[:, 3]))
        bounds[part.name] = np.exp(
            -(gap_x * gap_x + gap_y * gap_y) / var64[part.start : part.stop].max() / scale / 2
        )
    return bounds


def _cannot_match(
    xy: tuple[np.ndarray, np.ndarray], geo: _GtGeometry, variances: np.ndarray, pd: np.ndarray, pg: np.ndarray
) -> np.ndarray:
    """Pairs whose OKS is certainly below every IoU threshold, in every part, without computing it.

    Such pairs can never be a match candidate, so their OKS value is irrelevant to the stats; most
    pairs in an image are different people and end here.
    """
    low = geo.scale[pg] > 0
    for bound in _oks_upper_bounds(xy, geo, variances, pd, pg).values():
        low &= bound < _OKS_FLOOR
    return low


def _oks_all_parts(
    xy: tuple[np.ndarray, np.ndarray], geo: _GtGeometry, variances: np.ndarray, pd: np.ndarray, pg: np.ndarray
) -> dict[str, np.ndarray]:
    """Per part, the OKS of the pairs (detection pd[i], ground truth pg[i]), bitwise as xtcocotools.

    xtcocotools computes e = d^2 / var / (area + eps) / 2 per part and averages exp(-e) over the
    ground truth's labelled part keypoints with numpy's pairwise sum of exactly those values. e is
    elementwise, so it is computed once for all 133 keypoints of a pair and shared by the parts (and
    `* -0.5` is exactly `-(x / 2)`); for each part the labelled values are then gathered into
    contiguous rows, bucketed by count, whose row sums are the same pairwise sums. A ground truth
    with no labelled keypoint in a part is scored on all of that part's keypoints by their distance
    outside its doubled bbox (also elementwise, also computed once for all 133).
    xy: detection x and y (`_coords`), any float dtype (converted to float64 exactly, per chunk).
    """
    out = {p.name: np.empty(len(pd)) for p in PARTS}
    var64 = variances.astype(np.float64)  # exact; avoids a mixed-dtype (buffered) division
    for lo in range(0, len(pd), _OKS_CHUNK_PAIRS):
        d, g = pd[lo : lo + _OKS_CHUNK_PAIRS], pg[lo : lo + _OKS_CHUNK_PAIRS]
        xd = xy[0][d].astype(np.float64)
        yd = xy[1][d].astype(np.float64)
        scale = geo.scale[g, None]
        dx = xd - geo.x[g]
        dy = yd - geo.y[g]
        ex = np.exp((dx * dx + dy * dy) / var64 / scale * -0.5)
        boxed = np.nonzero(geo.unlabelled_part[g])[0]  # rows needing the doubled-bbox distance
        if len(boxed):
            xb, yb = xd[boxed], yd[boxed]
            x0, x1, y0, y1 = (geo.bounds[g[boxed], i, None] for i in range(4))
            bx = np.maximum(0.0, x0 - xb) + np.maximum(0.0, xb - x1)
            by = np.maximum(0.0, y0 - yb) + np.maximum(0.0, yb - y1)
            ex_box = np.exp((bx * bx + by * by) / var64 / scale[boxed] * -0.5)
            box_row = np.full(len(d), -1)
            box_row[boxed] = np.arange(len(boxed))
        for part in PARTS:
            k = part.stop - part.start
            counts = geo.labelled[part.name][g]
            order = np.argsort(counts, kind="stable")
            cuts = np.nonzero(np.diff(counts[order]))[0] + 1
            target = out[part.name][lo : lo + len(d)]
            for rows in np.split(order, cuts):
                m = int(counts[rows[0]])
                if m == 0:
                    vals = ex_box[box_row[rows], part.start : part.stop]
                elif m == k:
                    vals = ex[rows, part.start : part.stop]
                else:
                    vals = ex[rows[:, None], part.start + geo.labelled_first[part.name][g[rows], :m]]
                target[rows] = vals.sum(axis=1) / (m or k)
    return out


def _any_last(flags: np.ndarray) -> np.ndarray:
    """`flags.any(axis=-1)` for a C-contiguous bool array whose last axis is 1, 2, 4 or a multiple
    of 8: the flags of a row are read as one integer (numpy reduces short axes slowly)."""
    width = flags.shape[-1]
    if width in (1, 2, 4, 8):
        return flags.view(f"u{width}")[..., 0] != 0
    return flags.view("u8").any(axis=-1)


def _greedy_match(
    oks: np.ndarray, ignore: np.ndarray, crowd: np.ndarray, thresholds: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """xtcocotools' greedy matching for many images and all IoU thresholds at once.

    oks: (I, D, G) with -inf padding, detections in score order, ground truths in file order;
    G is 1, 2, 4 or a multiple of 8 (see `_any_last`).
    For each detection in turn, xtcocotools walks the ground truths sorted non-ignored first and
    keeps the last one with the highest OKS >= t among those still free (crowds never get used up),
    and looks at ignored ground truths only if no non-ignored one qualified.
    Returns matched and matched-to-ignored flags, both (I, T, D), and the matched ground truth's
    position on the G axis (-1 where unmatched), (I, T, D).
    """
    n_img, n_dt, n_gt = oks.shape
    n_thr = len(thresholds)
    used = np.zeros((n_img, n_thr, n_gt), dtype=bool)
    matched = np.zeros((n_img, n_thr, n_dt), dtype=bool)
    matched_ignored = np.zeros((n_img, n_thr, n_dt), dtype=bool)
    matched_gt = np.full((n_img, n_thr, n_dt), -1, dtype=np.int32)
    ign = ignore[:, None, :]
    free_always = crowd[:, None, :]
    reachable = _any_last(oks >= thresholds[0])  # (I, D): can this detection match at all?
    for r in range(n_dt):
        live = np.nonzero(reachable[:, r])[0]
        if len(live) == 0:
            continue
        o = oks[live, r, :][:, None, :]
        cand = (o >= thresholds[None, :, None]) & (~used[live] | free_always[live])
        regular = cand & ~ign[live]
        # no regular candidate: all candidates are ignored ones, so `cand` is that set
        cand = np.where(_any_last(regular)[:, :, None], regular, cand)
        found = _any_last(cand)
        # argmax returns the first maximum; on the reversed axis that is the last one
        best = n_gt - 1 - np.where(cand, o, -np.inf)[:, :, ::-1].argmax(axis=2)
        hit, hit_thr = np.nonzero(found)
        used[live[hit], hit_thr, best[hit, hit_thr]] = True
        matched[live, :, r] = found
        matched_ignored[live, :, r] = found & np.take_along_axis(ignore[live], best, axis=1)
        matched_gt[live[hit], hit_thr, r] = best[hit, hit_thr]
    return matched, matched_ignored, matched_gt


def _match_all(
    gt: GroundTruth,
    g_ignore: list[np.ndarray],
    dgroup: np.ndarray,
    rank: np.ndarray,
    pd: np.ndarray,
    pg: np.ndarray,
    oks: np.ndarray,
    thresholds: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Matched and matched-to-ignored flags, (A, N, T), for every kept detection and area range, and
    the matched ground truth's row in `gt` (-1 where unmatched), (A, N, T).

    Images holding both detections and ground truths are packed into (image, rank, gt) cubes,
    bucketed by ground-truth count (powers of two) so that one crowded image does not pad them all;
    the area ranges differ only in the ignore flags and are stacked along the image axis.
    """
    n_area, n_det, n_thr = len(g_ignore), len(dgroup), len(thresholds)
    matched = np.zeros((n_area, n_det, n_thr), dtype=bool)
    matched_ignored = np.zeros((n_area, n_det, n_thr), dtype=bool)
    matched_gt = np.full((n_area, n_det, n_thr), -1, dtype=np.int64)
    if len(pd) == 0:
        return matched, matched_ignored, matched_gt
    active, pair_img = np.unique(dgroup[pd], return_inverse=True)
    a_lo = np.searchsorted(gt.group, active, side="left")
    a_n = np.searchsorted(gt.group, active, side="right") - a_lo
    dt_img = np.searchsorted(active, dgroup)
    has_gt = np.zeros(n_det, dtype=bool)
    inside = dt_img < len(active)
    has_gt[inside] = active[dt_img[inside]] == dgroup[inside]
    bucket = np.ceil(np.log2(a_n)).astype(np.int64)
    for b in np.unique(bucket).tolist():
        imgs = np.nonzero(bucket == b)[0]
        local = np.full(len(active), -1)
        local[imgs] = np.arange(len(imgs))
        p = np.nonzero(local[pair_img] >= 0)[0]
        d = np.nonzero(has_gt & (local[np.where(has_gt, dt_img, 0)] >= 0))[0]
        width = 1 << b  # a power of two, as `_greedy_match` wants
        cube = np.full((len(imgs), int(rank[d].max()) + 1, width), -np.inf)
        cube[local[pair_img[p]], rank[pd[p]], pg[p] - a_lo[pair_img[p]]] = oks[p]
        valid = np.arange(width)[None, :] < a_n[imgs][:, None]
        slot = np.where(valid, a_lo[imgs][:, None] + np.arange(width)[None, :], 0)
        crowd = gt.crowd[slot] & valid
        where_img, where_rank = local[dt_img[d]], rank[d]
        if width == 1:
            # one ground truth: the first candidate takes it (every candidate, if it is a crowd),
            # whatever the area range; only the ignore flag it passes on differs
            cand = cube[:, :, 0, None] >= thresholds  # (I, D, T)
            first = cand & (np.cumsum(cand, axis=1) == 1)
            hit = np.where(crowd[:, :, None], cand, first)[where_img, where_rank]
            for a, ign in enumerate(g_ignore):
                matched[a, d] = hit
                matched_ignored[a, d] = hit & ign[slot[:, 0]][where_img, None]
                matched_gt[a, d] = np.where(hit, slot[where_img, 0, None], -1)
            continue
        m, m_ign, m_gt = _greedy_match(
            np.concatenate([cube] * n_area),
            np.concatenate([ign[slot] | ~valid for ign in g_ignore]),
            np.concatenate([crowd] * n_area),
            thresholds,
        )
        base = a_lo[imgs][where_img, None]  # each detection's image's first ground-truth row
        for a in range(n_area):
            matched[a, d] = m[a * len(imgs) + where_img, :, where_rank]
            matched_ignored[a, d] = m_ign[a * len(imgs) + where_img, :, where_rank]
            position = m_gt[a * len(imgs) + where_img, :, where_rank]
            matched_gt[a, d] = np.where(position >= 0, base + position, -1)
    return matched, matched_ignored, matched_gt


@dataclass
class _PartEval:
    precision: np.ndarray  # (T, R, K, A, M) as xtcocotools' accumulate fills it
    recall: np.ndarray  # (T, K, A, M)


def _top_detections(
    part: Part,
    dt: PoseResults,
    positive: np.ndarray,
    group: np.ndarray,
    max_det: int,
    ranked: dict[str, np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """xtcocotools' detections of a part: those with a positive part score, ranked by score within
    their image (stable: ties keep file order), at most max_det per image. Returns (ids, rank).

    positive: (N, 133) keypoint score > 0. `ranked` caches the full ranking per score key;
    dropping detections from a ranking keeps their order.
    """
    key = part.score_key if part.score_key in dt.part_scores else "score"
    if key not in ranked:
        score = dt.part_scores.get(key, dt.score)
        ranked[key] = np.lexsort((-score, group))
    order = ranked[key]
    idx = order[positive[order, part.start : part.stop].any(axis=1)]
    dgroup = group[idx]
    rank = np.arange(len(idx)) - np.searchsorted(dgroup, dgroup, side="left")
    top = rank < max_det
    return idx[top], rank[top]


def _accumulate(
    gt: GroundTruth,
    g_ignore: list[np.ndarray],
    dcat: np.ndarray,
    dscore: np.ndarray,
    darea: np.ndarray,
    matched: np.ndarray,
    matched_ignored: np.ndarray,
) -> _PartEval:
    """xtcocotools' `accumulate`: per category and area range, detections in (image, rank) order,
    a stable sort by score, then the same cumulative sums, interpolation and recall sampling."""
    p = _coco_params()
    n_thr, n_rec, n_cat = len(p.iouThrs), len(p.recThrs), len(gt.cat_ids)
    precision = -np.ones((n_thr, n_rec, n_cat, len(p.areaRng), len(p.maxDets)))
    recall = -np.ones((n_thr, n_cat, len(p.areaRng), len(p.maxDets)))
    by_score = []
    for k in range(n_cat):
        sel = np.nonzero(dcat == k)[0]
        by_score.append(sel[np.argsort(-dscore[sel], kind="mergesort")])
    for a, (lo, hi) in enumerate(p.areaRng):
        outside = ((darea < lo) | (darea > hi))[:, None]
        ignored = np.where(matched[a], matched_ignored[a], outside)
        for k, sel in enumerate(by_score):
            npig = int(np.count_nonzero(~g_ignore[a][gt.cat == k]))
            if npig == 0:
                continue
            # (detections, thresholds) layout; integer counts are exact in float64 either way
            hit, counted = matched[a][sel], ~ignored[sel]
            tp = np.cumsum(hit & counted, axis=0, dtype=np.float64)
            tp_fp = np.cumsum(counted, axis=0, dtype=np.float64)  # = fp + tp: integers, exact
            n_det = len(tp)
            rc = tp / npig
            pr = tp / (tp_fp + np.spacing(1))
            recall[:, k, a, 0] = rc[-1] if n_det else 0
            if n_det:
                pr = np.maximum.accumulate(pr[::-1], axis=0)[::-1]  # xtcocotools' right-to-left max
            rc_rows = np.ascontiguousarray(rc.T)
            for t in range(n_thr):
                pos = np.searchsorted(rc_rows[t], p.recThrs, side="left")
                q = np.zeros(n_rec)
                q[pos < n_det] = pr[pos[pos < n_det], t]
                precision[t, :, k, a, 0] = q
    return _PartEval(precision, recall)


def _summarize(ev: _PartEval) -> dict[str, float]:
    """xtcocotools' `_summarizeKps`: the same selections and the same mean over entries > -1."""
    p = _coco_params()
    max_det = p.maxDets[-1]

    def stat(ap: bool, thr: float | None = None, area: str = "all") -> float:
        s = ev.precision if ap else ev.recall
        if thr is not None:
            s = s[np.where(thr == p.iouThrs)[0]]
        a = [i for i, lbl in enumerate(p.areaRngLbl) if lbl == area]
        m = [i for i, d in enumerate(p.maxDets) if d == max_det]
        s = s[:, :, :, a, m] if ap else s[:, :, a, m]
        valid = s[s > -1]
        return float(np.mean(valid)) if valid.size else -1.0

    values = [
        stat(True),
        stat(True, 0.5),
        stat(True, 0.75),
        stat(True, area="medium"),
        stat(True, area="large"),
        stat(False),
        stat(False, 0.5),
        stat(False, 0.75),
        stat(False, area="medium"),
        stat(False, area="large"),
    ]
    return dict(zip(STATS, values, strict=True))


def _evaluate_fast(gt: GroundTruth, dt: PoseResults, use_area: bool, sigmas: np.ndarray) -> Metrics:
    """All six parts: per-part detection sets, one shared OKS pass over their union, then per part
    matching and accumulation."""
    p = _coco_params()
    thresholds = np.asarray(p.iouThrs)
    group = _groups(dt, gt)
    geo = _gt_geometry(gt, use_area)
    ranked: dict[str, np.ndarray] = {}
    positive = dt.keypoints[:, :, 2] > 0
    tops = {part.name: _top_detections(part, dt, positive, group, p.maxDets[-1], ranked) for part in PARTS}
    union = np.unique(np.concatenate([idx for idx, _ in tops.values()]))
    u_pd, u_pg, u_start = _pairs(gt.group, group[union])
    variances = (sigmas * 2) ** 2  # float32, as xtcocotools gets mmpose's float32 sigmas
    # pairs that cannot match get an OKS below every threshold instead of their exact value
    xy = _coords(dt.keypoints, union)
    oks_union = {part.name: np.full(len(u_pd), -1.0) for part in PARTS}
    exact = np.nonzero(~_cannot_match(xy, geo, variances, u_pd, u_pg))[0]
    for name, values in _oks_all_parts(xy, geo, variances, u_pd[exact], u_pg[exact]).items():
        oks_union[name][exact] = values
    range_area = _range_area(gt, use_area)

    metrics: Metrics = {}
    for part in PARTS:
        idx, rank = tops[part.name]
        dgroup = group[idx]
        pd, pg, _ = _pairs(gt.group, dgroup)
        # the same pairs inside the union's pair list: a detection's pairs are contiguous there
        u_first = u_start[np.searchsorted(union, idx)]
        oks = oks_union[part.name][u_first[pd] + (pg - pg[np.searchsorted(pd, pd, side="left")])]
        base_ignore = gt.crowd | (geo.labelled[part.name] == 0)
        g_ignore = [base_ignore | (range_area < lo) | (range_area > hi) for lo, hi in p.areaRng]
        matched, matched_ignored, _ = _match_all(gt, g_ignore, dgroup, rank, pd, pg, oks, thresholds)
        score = dt.part_scores.get(part.score_key, dt.score)
        dcat = dgroup // max(len(gt.image_ids), 1)
        ev = _accumulate(gt, g_ignore, dcat, score[idx], dt.area[idx], matched, matched_ignored)
        metrics[part.name] = _summarize(ev)
    return metrics


def wholebody_matches(
    gt: GroundTruth, dt: PoseResults, use_area: bool, sigmas: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The (prediction row, ground-truth row) pairs the whole-body metric matches at OKS >= 0.5.

    The same machinery as `evaluate`, so the pairs are xtcocotools' `evaluateImg` matches for
    `keypoints_wholebody`, area range 'all', maxDets 20, lowest IoU threshold: per-keypoint analyses
    then look at exactly the people the whole-body AP counts. Matches to an ignored ground truth (a
    crowd, or no labelled keypoint) are left out, as they count neither way in the metric.
    Rows index `dt` and `gt` (`load_results` / `load_ground_truth` order), pairs in prediction order.
    """
    if sigmas is None:
        sigmas = dataset_sigmas()
    p = _coco_params()
    part = PARTS[-1]
    group = _groups(dt, gt)
    geo = _gt_geometry(gt, use_area)
    idx, rank = _top_detections(part, dt, dt.keypoints[:, :, 2] > 0, group, p.maxDets[-1], {})
    dgroup = group[idx]
    pd, pg, _ = _pairs(gt.group, dgroup)
    variances = (sigmas * 2) ** 2
    xy = _coords(dt.keypoints, idx)
    bound = _oks_upper_bounds(xy, geo, variances, pd, pg)[part.name]
    exact = np.nonzero(~((geo.scale[pg] > 0) & (bound < _OKS_FLOOR)))[0]
    oks = np.full(len(pd), -1.0)  # below every threshold: pairs that provably cannot match
    oks[exact] = _oks_all_parts(xy, geo, variances, pd[exact], pg[exact])[part.name]
    lo, hi = p.areaRng[p.areaRngLbl.index("all")]
    range_area = _range_area(gt, use_area)
    ignore = gt.crowd | (geo.labelled[part.name] == 0) | (range_area < lo) | (range_area > hi)
    lowest = np.asarray(p.iouThrs)[:1]
    matched, matched_ignored, matched_gt = _match_all(gt, [ignore], dgroup, rank, pd, pg, oks, lowest)
    keep = np.nonzero(matched[0, :, 0] & ~matched_ignored[0, :, 0])[0]
    order = np.argsort(idx[keep], kind="stable")
    return idx[keep][order], matched_gt[0, keep, 0][order]


# --------------------------------------------------------------------------------------------------
# reference: xtcocotools, six times, as CocoWholeBodyMetric runs it


def evaluate_reference(
    records: Sequence[Mapping[str, Any]], dataset: Mapping[str, Any], use_area: bool, sigmas: np.ndarray
) -> Metrics:
    """xtcocotools COCOeval per part, called as mmpose's `_do_python_keypoint_eval` calls it.

    Works on shallow copies (xtcocotools writes ids, areas and flags into the dicts it is given).
    Its progress prints and the "'<part>_score' not found" warnings are silenced.
    """
    from xtcocotools.coco import COCO
    from xtcocotools.cocoeval import COCOeval

    data = dict(dataset)
    data["annotations"] = [dict(a) for a in dataset["annotations"]]
    results: Metrics = {}
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        coco = COCO("<annotations>", ann_data=data)
        coco_det = coco.loadRes([dict(r) for r in records])
        for part in PARTS:
            ev = COCOeval(coco, coco_det, part.iou_type, sigmas[part.start : part.stop], use_area=use_area)
            ev.params.useSegm = None
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
            results[part.name] = dict(zip(STATS, (float(s) for s in ev.stats), strict=True))
    return results


# --------------------------------------------------------------------------------------------------
# public entry point


def hand_stats(metrics: Metrics) -> dict[str, float]:
    """The tables' Hand column: mean of lefthand and righthand per stat (-1 if either is undefined).

    Rule from the dataset author (jin-s13/COCO-WholeBody#38); neither mmpose nor xtcocotools computes it.
    """
    left, right = metrics["lefthand"], metrics["righthand"]
    return {s: (left[s] + right[s]) / 2 if left[s] >= 0 and right[s] >= 0 else -1.0 for s in STATS}


def evaluate(
    preds: str | Path | Sequence[Mapping[str, Any]] | PoseResults,
    ann: str | Path | Mapping[str, Any],
    use_area: bool = True,
    *,
    reference: bool = False,
    sigmas: np.ndarray | None = None,
) -> Metrics:
    """The ten COCO keypoint stats per part (+ 'hand') of COCO-WholeBody results, as given.

    preds: results path (.json or gzipped), the parsed list, or `PoseResults`; ann: annotation path
    or parsed dict. No rescoring or NMS happens here: those belong before the results are written
    (`postprocess` / `rescore_and_nms`). `reference=True` runs xtcocotools itself; the default fast
    path gives identical numbers.
    """
    if sigmas is None:
        sigmas = dataset_sigmas()
    gt = load_ground_truth(ann, use_area)
    dt = load_results(preds)
    if reference:
        _groups(dt, gt)  # same id checks as the fast path; xtcocotools would only assert
        metrics = evaluate_reference(dt.to_records(), gt.raw, use_area, sigmas)
    else:
        metrics = _evaluate_fast(gt, dt, use_area, sigmas)
    metrics["hand"] = hand_stats(metrics)
    return metrics
