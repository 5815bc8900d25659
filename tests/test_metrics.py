"""Fidelity of zoo.metrics: the fast evaluator and the post-processing must give mmpose's numbers
exactly (==, not approximately) on randomized COCO-WholeBody sets full of edge cases."""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from zoo import metrics
from zoo.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
MMPOSE_NAMES = ("AP", "AP .5", "AP .75", "AP (M)", "AP (L)", "AR", "AR .5", "AR .75", "AR (M)", "AR (L)")


# --------------------------------------------------------------------------------------------------
# random COCO-WholeBody v1.0 ground truth and predictions with the edge cases the metric has rules for


def _split(kp: np.ndarray) -> dict[str, list[float]]:
    out, start = {}, 0
    for field, n in metrics.FIELDS:
        out[field] = kp[start : start + n].reshape(-1).tolist()
        start += n
    return out


def make_ground_truth(
    rng: np.random.Generator, n_images: int = 24, two_categories: bool = False
) -> dict[str, Any]:
    """Annotations with crowds, unlabelled parts, people with no labelled keypoint at all, tiny,
    medium and large areas, duplicate people, images without people, shuffled ids and order."""
    image_ids = rng.permutation(np.arange(1, n_images + 1) * 7 + 3).tolist()
    images = [{"id": int(i), "width": 640, "height": 480, "file_name": f"{i}.jpg"} for i in image_ids]
    annotations = []
    for image_id in image_ids:
        for _ in range(int(rng.choice([0, 0, 1, 2, 3, 6]))):
            w, h = np.exp(rng.uniform(np.log(6), np.log(350), 2))
            x, y = rng.uniform(0, 300, 2)
            kp = np.zeros((metrics.NUM_KEYPOINTS, 3))
            kp[:, 0] = x + rng.random(metrics.NUM_KEYPOINTS) * w
            kp[:, 1] = y + rng.random(metrics.NUM_KEYPOINTS) * h
            kp[:, 2] = rng.choice([0, 1, 2], metrics.NUM_KEYPOINTS, p=[0.3, 0.2, 0.5])
            for part in metrics.PARTS[:5]:
                if rng.random() < 0.3:  # part not labelled at all: ignored for that part
                    kp[part.start : part.stop, 2] = 0
            if rng.random() < 0.07:  # nothing labelled: ignored everywhere, scored by the bbox distance
                kp[:, 2] = 0
            kp[kp[:, 2] == 0, :2] = 0
            ann = {
                "id": len(annotations) + 1000,
                "image_id": int(image_id),
                "category_id": int(rng.choice([1, 2])) if two_categories else 1,
                "bbox": [float(x), float(y), float(w), float(h)],
                "area": float(w * h * rng.uniform(0.3, 0.9)),
                "iscrowd": int(rng.random() < 0.08),
                "num_keypoints": int((kp[:17, 2] > 0).sum()),
                **_split(kp),
            }
            annotations.append(ann)
            if rng.random() < 0.05:  # an exact duplicate person: OKS ties between ground truths
                annotations.append({**ann, "id": len(annotations) + 1000})
    rng.shuffle(annotations)
    categories = [{"id": 1, "name": "person"}] + ([{"id": 2, "name": "other"}] if two_categories else [])
    return {"images": images, "annotations": annotations, "categories": categories}


def make_predictions(
    rng: np.random.Generator, gt: dict[str, Any], per_image: int = 8, extras: bool = False
) -> list[dict[str, Any]]:
    """Results with noise from none to huge (OKS across every threshold), false positives, score ties
    and zeros, parts or all keypoints with zero score (dropped), more than 20 per image (maxDets),
    images left without detections; `extras` adds some per-part score keys."""
    by_image: dict[int, list[dict[str, Any]]] = {}
    for ann in gt["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    records = []
    for img in gt["images"]:
        people = by_image.get(img["id"], [])
        for _ in range(int(rng.integers(0, 2 * per_image + 1)) if rng.random() > 0.1 else 0):
            if people and rng.random() < 0.8:
                ann = people[int(rng.integers(len(people)))]
                x, y, w, h = ann["bbox"]
                kp = np.concatenate([np.array(ann[f]).reshape(-1, 3) for f, _ in metrics.FIELDS])
                xy = np.where(kp[:, 2:] > 0, kp[:, :2], [x + w / 2, y + h / 2])
                xy = xy + rng.normal(0, np.sqrt(w * h) * rng.choice([0.0, 0.01, 0.05, 0.1, 0.3]), xy.shape)
            else:
                xy = rng.random((metrics.NUM_KEYPOINTS, 2)) * 400
            scores = rng.random(metrics.NUM_KEYPOINTS)
            roll = rng.random()
            if roll < 0.1:
                scores[:17] = 0  # no positive body score: dropped from body (and kept elsewhere)
            elif roll < 0.15:
                scores[:] = 0  # dropped from every part
            elif roll < 0.25:
                scores[91:] = 0
            rec = {
                "image_id": img["id"],
                "category_id": int(rng.choice([c["id"] for c in gt["categories"]])),
                **_split(np.concatenate([xy, scores[:, None]], axis=1)),
                "score": float(
                    rng.choice([0.0, 0.5, 1.0, round(float(rng.random()), 2), float(rng.random())])
                ),
            }
            if extras and rng.random() < 0.3:
                rec["face_score"] = float(rng.random())
            records.append(rec)
    return records


def xtcocotools_stats(
    records: list[dict[str, Any]], gt: dict[str, Any], use_area: bool
) -> dict[str, dict[str, float]]:
    """COCOeval run directly, per part, with mmpose's float32 sigmas: the ground truth of the tests."""
    from xtcocotools.coco import COCO
    from xtcocotools.cocoeval import COCOeval

    sigmas = metrics.dataset_sigmas()
    out = {}
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        coco = COCO("gt", ann_data=json.loads(json.dumps(gt)))
        det = coco.loadRes(json.loads(json.dumps(records)))
        for part in metrics.PARTS:
            ev = COCOeval(coco, det, part.iou_type, sigmas[part.start : part.stop], use_area=use_area)
            ev.params.useSegm = None
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
            out[part.name] = dict(zip(metrics.STATS, map(float, ev.stats), strict=True))
    return out


def _parts_only(m: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    return {p.name: m[p.name] for p in metrics.PARTS}


# --------------------------------------------------------------------------------------------------
# fast evaluator == xtcocotools


CASES = [
    # seed, images, detections per image, use_area, two categories, per-part scores
    *[(seed, 24, 8, seed % 2 == 0, False, False) for seed in range(6)],
    (100, 12, 24, True, False, False),  # many images over maxDets=20
    (101, 30, 3, False, False, False),
    (102, 20, 8, True, True, False),  # two categories: per-category accumulation and mean
    (103, 20, 8, True, False, True),  # '<part>_score' keys on some records
]


@pytest.mark.parametrize(("seed", "n_images", "per_image", "use_area", "two_cats", "extras"), CASES)
def test_fast_path_equals_xtcocotools_exactly(seed, n_images, per_image, use_area, two_cats, extras):
    rng = np.random.default_rng(seed)
    gt = make_ground_truth(rng, n_images, two_categories=two_cats)
    if not use_area:  # mmpose's use_area=False path must not need 'area' at all
        for ann in gt["annotations"][::2]:
            del ann["area"]
    records = make_predictions(rng, gt, per_image, extras=extras)
    if per_image > 20:
        counts = np.unique([r["image_id"] for r in records], return_counts=True)[1]
        assert (counts > 20).sum() >= 3  # the case really exercises maxDets
    expected = xtcocotools_stats(records, gt, use_area)
    fast = metrics.evaluate(records, gt, use_area)
    reference = metrics.evaluate(records, gt, use_area, reference=True)
    assert _parts_only(fast) == expected
    assert _parts_only(reference) == expected
    assert fast["hand"] == reference["hand"]
    assert any(0 < v < 1 for part in expected.values() for v in part.values())  # not a degenerate set


def test_results_with_bbox_take_the_area_from_it():
    rng = np.random.default_rng(7)
    gt = make_ground_truth(rng)
    records = make_predictions(rng, gt)
    for rec in records:
        rec["bbox"] = [1.0, 2.0, float(rng.uniform(5, 200)), float(rng.uniform(5, 200))]
    assert _parts_only(metrics.evaluate(records, gt)) == xtcocotools_stats(records, gt, True)


@pytest.mark.parametrize("what", ["no predictions", "no ground truth"])
def test_empty_sides(what):
    rng = np.random.default_rng(8)
    gt = make_ground_truth(rng)
    records = make_predictions(rng, gt)
    if what == "no predictions":
        records = []
    else:
        gt["annotations"] = []
    expected = xtcocotools_stats(records, gt, True)
    result = metrics.evaluate(records, gt)
    assert _parts_only(result) == expected
    assert result["hand"]["AP"] == (-1.0 if what == "no ground truth" else 0.0)
    if what == "no predictions":  # nothing to post-process either
        assert metrics.rescore_and_nms(metrics.Instances.empty()) == []
        assert metrics.evaluate(metrics.postprocess(metrics.Instances.empty()), gt) == result


def test_files_gzip_and_arrays_give_the_same_numbers(tmp_path):
    rng = np.random.default_rng(9)
    gt = make_ground_truth(rng)
    records = make_predictions(rng, gt)
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(gt))
    plain, packed = tmp_path / "p.json", tmp_path / "p.json.gz"
    plain.write_text(json.dumps(records))
    packed.write_bytes(gzip.compress(json.dumps(records).encode()))
    base = metrics.evaluate(records, gt)
    assert metrics.evaluate(plain, ann) == base
    assert metrics.evaluate(str(packed), str(ann)) == base
    assert metrics.load_results(records).to_records() == records


def test_hand_is_the_mean_of_left_and_right():
    m = {
        "lefthand": dict.fromkeys(metrics.STATS, 0.5),
        "righthand": {**dict.fromkeys(metrics.STATS, 0.25), "APm": -1.0},
    }
    hand = metrics.hand_stats(m)
    assert hand["AP"] == 0.375
    assert hand["APm"] == -1.0  # undefined when either hand is


def _mmpose_meta() -> dict[str, Any]:
    import zoo.compat

    zoo.compat.apply()
    from mmpose.datasets.datasets.utils import parse_pose_metainfo

    return parse_pose_metainfo({"from_file": str(metrics.dataset_config_path())})


def test_sigmas_are_mmposes_float32():
    meta = _mmpose_meta()
    sigmas = metrics.dataset_sigmas()
    assert sigmas.dtype == meta["sigmas"].dtype == np.float32
    assert np.array_equal(sigmas, meta["sigmas"])
    assert np.array_equal(metrics.dataset_sigmas("ubody2d"), sigmas)


def _pairs_of_one_image(gt: dict[str, Any], records: list[dict[str, Any]]):
    """All (detection, ground truth) pairs of a one-image set, as the fast path indexes them."""
    truth = metrics.load_ground_truth(gt)
    results = metrics.load_results(records)
    pd, pg = (
        a.ravel() for a in np.meshgrid(np.arange(len(records)), np.arange(len(truth.kpts)), indexing="ij")
    )
    return truth, results, pd, pg


def _busiest_image(gt: dict) -> tuple[dict, dict]:
    """The ground truth cut down to its image with the most annotations (and that image)."""
    image = max(gt["images"], key=lambda im: sum(a["image_id"] == im["id"] for a in gt["annotations"]))
    anns = [a for a in gt["annotations"] if a["image_id"] == image["id"]]
    return {**gt, "images": [image], "annotations": anns}, image


def test_oks_is_bitwise_xtcocotools():
    """Not just the stats: every OKS value is the one xtcocotools computes (ulps included)."""
    from xtcocotools.coco import COCO
    from xtcocotools.cocoeval import COCOeval

    rng = np.random.default_rng(12)
    gt = make_ground_truth(rng, 40)
    gt, image = _busiest_image(gt)
    records = [r for r in make_predictions(rng, gt, 10) if r["image_id"] == image["id"]][:20]
    for rec in records:
        rec["category_id"] = 1
        rec["keypoints"][2::3] = [max(v, 0.5) for v in rec["keypoints"][2::3]]  # no part dropped
    records.sort(key=lambda r: -r["score"])  # xtcocotools' row order (stable sort by score)
    truth, results, pd, pg = _pairs_of_one_image(gt, records)
    geo = metrics._gt_geometry(truth, True)
    sigmas = metrics.dataset_sigmas()
    ours = metrics._oks_all_parts(
        metrics._coords(results.keypoints, np.arange(len(results))), geo, (sigmas * 2) ** 2, pd, pg
    )
    for part in metrics.PARTS:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            coco = COCO("gt", ann_data=json.loads(json.dumps(gt)))
            ev = COCOeval(
                coco,
                coco.loadRes(json.loads(json.dumps(records))),
                part.iou_type,
                sigmas[part.start : part.stop],
            )
            ev.evaluate()
        theirs = ev.ious[(image["id"], 1)]
        # rows: detections by score (stable); columns: ground truths in file order, in both
        assert ours[part.name].reshape(len(records), -1).tolist() == theirs.tolist(), part.name


def test_oks_bounds_are_sound_and_tight():
    """The bound that lets the fast path skip pairs is never below the exact OKS, is reached by a
    constructed worst case, and skipping needs it below every IoU threshold."""
    rng = np.random.default_rng(13)
    gt = make_ground_truth(rng, 40)
    gt, image = _busiest_image(gt)
    records = [r for r in make_predictions(rng, gt, 20) if r["image_id"] == image["id"]]
    for rec in records:
        rec["category_id"] = 1
    # worst case: one labelled hand keypoint (the part's largest sigma) and the detection's hand
    # keypoints all at one point, at the distance that makes OKS 0.55
    ann = next(a for a in gt["annotations"] if not a["iscrowd"])
    part = next(p for p in metrics.PARTS if p.name == "lefthand")
    sigmas = metrics.dataset_sigmas()
    k = int(np.argmax(sigmas[part.start : part.stop]))
    hand = [0.0] * 63
    hand[3 * k : 3 * k + 3] = [100.0, 100.0, 2.0]
    ann["lefthand_kpts"] = hand
    var = float((sigmas[part.start + k] * 2) ** 2)
    offset = float(np.sqrt(-np.log(0.55) * 2 * var * (ann["area"] + np.spacing(1))))
    worst = json.loads(json.dumps(records[0]))
    worst["lefthand_kpts"] = [100.0 + offset, 100.0, 0.9] * 21
    records.append(worst)
    truth, results, pd, pg = _pairs_of_one_image(gt, records)
    geo = metrics._gt_geometry(truth, True)
    variances = (sigmas * 2) ** 2
    exact = metrics._oks_all_parts(
        metrics._coords(results.keypoints, np.arange(len(results))), geo, variances, pd, pg
    )
    bounds = metrics._oks_upper_bounds(
        metrics._coords(results.keypoints, np.arange(len(results))), geo, variances, pd, pg
    )
    for p in metrics.PARTS:
        assert (exact[p.name] <= bounds[p.name] * (1 + 1e-12)).all(), p.name
    target = (pd == len(records) - 1) & (pg == gt["annotations"].index(ann))  # one image: file order
    assert abs(exact["lefthand"][target][0] - 0.55) < 1e-6
    assert abs(bounds["lefthand"][target][0] - exact["lefthand"][target][0]) < 1e-9
    assert min(metrics._coco_params().iouThrs) > metrics._OKS_FLOOR
    low = metrics._cannot_match(
        metrics._coords(results.keypoints, np.arange(len(results))), geo, variances, pd, pg
    )
    assert low.any() and not low.all()  # it does skip pairs here, and only unmatchable ones
    assert all((exact[p.name][low] < 0.5).all() for p in metrics.PARTS)


# --------------------------------------------------------------------------------------------------
# post-processing and whole-body stats == mmpose's CocoWholeBodyMetric


def _samples(rng: np.random.Generator, gt: dict[str, Any]) -> list[dict[str, Any]]:
    """mmpose top-down data samples: float32 keypoints and scores, bbox score and scale per box;
    near-duplicate boxes (for NMS), score ties, boxes with no keypoint score above 0.2."""
    by_image: dict[int, list[dict[str, Any]]] = {}
    for ann in gt["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    samples = []
    for img in gt["images"]:
        people = by_image.get(img["id"], [])
        previous: list[np.ndarray] = []
        for _ in range(int(rng.integers(0, 12))):
            if previous and rng.random() < 0.25:
                xy = previous[int(rng.integers(len(previous)))] + rng.normal(
                    0, 0.2, (metrics.NUM_KEYPOINTS, 2)
                )
            elif people and rng.random() < 0.8:
                ann = people[int(rng.integers(len(people)))]
                kp = np.concatenate([np.array(ann[f]).reshape(-1, 3) for f, _ in metrics.FIELDS])
                x, y, w, h = ann["bbox"]
                xy = np.where(kp[:, 2:] > 0, kp[:, :2], [x + w / 2, y + h / 2])
                xy = xy + rng.normal(0, np.sqrt(w * h) * rng.choice([0.01, 0.05, 0.2]), xy.shape)
            else:
                xy = rng.random((metrics.NUM_KEYPOINTS, 2)) * 400
            previous.append(xy)
            scores = rng.random(metrics.NUM_KEYPOINTS).astype(np.float32)
            if rng.random() < 0.1:
                scores[:] = np.float32(0.2)  # exactly the threshold: float64 comparison keeps them
            elif rng.random() < 0.1:
                scores[:] = 0.1
            bbox_score = np.float32(rng.choice([0.5, rng.random()]))
            samples.append(
                {
                    "id": len(samples),
                    "img_id": img["id"],
                    "pred_instances": {
                        "keypoints": xy[None].astype(np.float32),
                        "keypoint_scores": scores[None],
                    },
                    "gt_instances": {
                        "bbox_scores": np.array([bbox_score], dtype=np.float32),
                        "bbox_scales": (rng.uniform(10, 300, (1, 2))).astype(np.float32),
                    },
                }
            )
    return samples


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_postprocess_and_wholebody_equal_mmpose_metric(tmp_path, seed):
    meta = _mmpose_meta()
    from mmpose.evaluation.metrics import CocoWholeBodyMetric

    rng = np.random.default_rng(seed)
    gt = make_ground_truth(rng, 20)
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(gt))
    samples = _samples(rng, gt)

    metric = CocoWholeBodyMetric(ann_file=str(ann), outfile_prefix=str(tmp_path / "mm"))
    metric.dataset_meta = meta
    for start in range(0, len(samples), 32):  # as mmpose's test loop feeds it
        metric.process([], samples[start : start + 32])
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mm = metric.evaluate(len(samples))
    mm_records = json.loads((tmp_path / "mm.keypoints.json").read_text())

    instances = metrics.Instances.stack(
        [s["img_id"] for s in samples],
        [s["pred_instances"]["keypoints"][0] for s in samples],
        [s["pred_instances"]["keypoint_scores"][0] for s in samples],
        [s["gt_instances"]["bbox_scores"][0] for s in samples],
        [np.prod(s["gt_instances"]["bbox_scales"], axis=1)[0] for s in samples],
    )
    records = metrics.rescore_and_nms(instances)
    assert records == mm_records  # same records, same order, same floats
    assert len(records) < len(samples)  # NMS did remove something

    ours = metrics.evaluate(records, ann)
    assert [ours["wholebody"][s] for s in metrics.STATS] == [mm[f"coco-wholebody/{n}"] for n in MMPOSE_NAMES]
    assert metrics.evaluate(metrics.postprocess(instances), ann) == ours  # arrays skip the JSON floats
    assert _parts_only(ours) == xtcocotools_stats(records, gt, True)


def test_nms_oks_is_bitwise_mmposes():
    import zoo.compat

    zoo.compat.apply()
    from mmpose.evaluation.functional.nms import oks_iou

    sigmas = metrics.dataset_sigmas()
    rng = np.random.default_rng(3)
    for coord_dtype, area_dtype in [
        (np.float32, np.float32),
        (np.float64, np.float32),
        (np.float32, np.float64),
    ]:
        n = 12
        coords = (rng.random((n, metrics.NUM_KEYPOINTS, 2)) * 100).astype(coord_dtype)
        coords[1] = coords[0] + 0.25  # a near duplicate
        scores = rng.random((n, metrics.NUM_KEYPOINTS)).astype(np.float32)
        areas = (rng.random(n) * 2000).astype(area_dtype)
        areas[2] = 0  # the eps in mmpose's area term
        full = np.concatenate([coords, scores[..., None]], axis=-1)
        a, b = np.triu_indices(n, 1)
        ours = metrics._nms_pair_oks(coords, full.dtype, areas, a, b, sigmas)
        flat = full.reshape(n, -1)
        theirs = [
            oks_iou(flat[i], flat[j][None], areas[i], areas[j][None], sigmas)[0]
            for i, j in zip(a, b, strict=True)
        ]
        assert ours.tolist() == theirs


def test_nms_body_bound_never_skips_a_suppression():
    """Pairs whose body keypoints disagree but whose other 116 keypoints coincide have OKS just above
    0.9, with the body-only bound equal to it: the bound must not excuse them from the exact OKS."""
    import zoo.compat

    zoo.compat.apply()
    from mmpose.evaluation.functional import oks_nms

    sigmas = metrics.dataset_sigmas()
    base = (np.random.default_rng(5).random((metrics.NUM_KEYPOINTS, 2)) * 100).astype(np.float32)
    area = np.float32(5000.0)
    rows, db = [], []
    for i, shift in enumerate([0.0, 6.0, 10.0, 400.0]):  # OKS to the first: 1, 0.945, 0.915, 0.87
        xy = base.copy()
        xy[:17] += shift  # only the body moves
        scores = np.full(metrics.NUM_KEYPOINTS, 0.9, dtype=np.float32)
        bbox = np.float32(1.0 - 0.1 * i)
        rows.append((1, xy, scores, bbox, area))
        db.append({"keypoints": np.concatenate([xy, scores[:, None]], -1), "score": bbox * 0.9, "area": area})
    full = np.stack([d["keypoints"] for d in db])
    oks = metrics._nms_pair_oks(
        full[..., :2], np.float32, np.full(4, area), np.zeros(3, int), np.arange(1, 4), sigmas
    )
    assert 0.9 < oks[1] < oks[0] < 0.95 and oks[2] < 0.9
    kept = metrics.postprocess(metrics.Instances.stack(*zip(*rows, strict=True)))
    expected = [int(k) for k in oks_nms(db, 0.9, sigmas=sigmas)]
    assert (
        [int(np.nonzero((full == kp).all(axis=(1, 2)))[0][0]) for kp in kept.keypoints] == expected == [0, 3]
    )


def test_instance_scores_are_mmposes():
    rng = np.random.default_rng(4)
    scores = rng.random((50, metrics.NUM_KEYPOINTS)).astype(np.float32)
    scores[0] = np.float32(0.2)
    scores[1] = 0.05
    bbox = [np.float32(v) for v in rng.random(50)]
    ours = metrics._instance_scores(scores, bbox, 0.2)
    for row, box, got in zip(scores, bbox, ours, strict=True):
        total, valid = 0, 0
        for s in row:  # mmpose's CocoMetric.compute_metrics loop
            if s > 0.2:
                total += s
                valid += 1
        if valid != 0:
            total /= valid
        want = box * total
        assert type(got) is type(want) and got == want


# --------------------------------------------------------------------------------------------------
# bad input: one InputError naming the file and the field


@pytest.fixture
def small_set(tmp_path):
    rng = np.random.default_rng(11)
    gt = make_ground_truth(rng, 6)
    records = make_predictions(rng, gt, 3)
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(gt))
    return tmp_path, gt, records, ann


def _write(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda recs: recs[2].update(foot_kpts=recs[2]["foot_kpts"][:-1]), "predictions[2].foot_kpts"),
        (lambda recs: recs[1].update(image_id=999999), "predictions[1].image_id: 999999"),
        (lambda recs: recs[0].update(category_id=7), "predictions[0].category_id: 7"),
        (lambda recs: recs[3].pop("score"), "predictions[3]: missing field 'score'"),
        (lambda recs: recs[1]["keypoints"].__setitem__(4, "x"), "predictions[1].keypoints"),
        (lambda recs: recs[0].update(score=float("nan")), "predictions[0].score"),
    ],
)
def test_bad_predictions_name_file_and_field(small_set, mutate, needle):
    tmp, _, records, ann = small_set
    mutate(records)
    preds = _write(tmp / "preds.json", records)
    with pytest.raises(InputError, match="preds.json") as err:
        metrics.evaluate(preds, ann)
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (None, "no such predictions file"),
        (b'[{"image_id": 1,', "malformed JSON"),
        (b"\x1f\x8b\x08 truncated", "corrupt gzip"),
        (b'{"image_id": 1}', "expected a JSON list"),
    ],
)
def test_unreadable_predictions(small_set, content, needle):
    tmp, _, _, ann = small_set
    preds = tmp / "preds.json"
    if content is not None:
        preds.write_bytes(content)
    with pytest.raises(InputError, match=needle):
        metrics.evaluate(preds, ann)


def test_bad_annotations_name_file_and_field(small_set):
    tmp, gt, records, _ = small_set
    no_area = json.loads(json.dumps(gt))
    del no_area["annotations"][1]["area"]
    ann = _write(tmp / "no_area.json", no_area)
    with pytest.raises(
        InputError, match=r"no_area\.json: annotations\[1\]: missing field 'area'.*--no-use-area"
    ):
        metrics.evaluate(records, ann)
    assert metrics.evaluate(records, ann, use_area=False)["wholebody"]["AP"] >= 0
    dup = json.loads(json.dumps(gt))
    dup["annotations"][2]["id"] = dup["annotations"][0]["id"]
    with pytest.raises(InputError, match=r"dup\.json: annotations\[2\]\.id: .* not unique"):
        metrics.evaluate(records, _write(tmp / "dup.json", dup))


# --------------------------------------------------------------------------------------------------
# the `zoo eval` command


def test_zoo_eval_json_and_table(small_set, capsys):
    from zoo.cli import main

    tmp, gt, records, ann = small_set
    preds = _write(tmp / "preds.json", records)
    assert main(["eval", "--preds", str(preds), "--ann", str(ann), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out) == ["body", "foot", "face", "lefthand", "righthand", "wholebody", "hand"]
    assert all(list(v) == list(metrics.STATS) for v in out.values())
    assert out == metrics.evaluate(records, gt)
    assert main(["eval", "--preds", str(preds), "--ann", str(ann), "--reference", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == out
    assert main(["eval", "--preds", str(preds), "--ann", str(ann), "--no-use-area"]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split() == ["part", *metrics.STATS] and "wholebody" in table


def test_zoo_eval_bad_input_exits_2(small_set, capsys):
    from zoo.cli import main

    tmp, _, _, ann = small_set
    assert main(["eval", "--preds", str(tmp / "missing.json"), "--ann", str(ann)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("zoo: error:") and "missing.json" in err and len(err.splitlines()) == 1


# --------------------------------------------------------------------------------------------------
# the P1 benchmark runs end to end at tiny scale


def test_eval_benchmark_tiny(tmp_path):
    out = tmp_path / "results"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.eval_speed",
            "--images",
            "25",
            "--repeats",
            "1",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["eval_max_abs_diff"] == 0.0
    assert summary["eval_records_identical"] is True
    assert summary["eval_speedup"] > 0
    assert summary["runs"]["eval_speed"]["images"] == 25
    csv_lines = (out / "eval_speed.csv").read_text().splitlines()
    assert csv_lines[0].startswith("path,stage,") and len(csv_lines) > 4
    assert "Max |diff|" in (out / "eval_speed.md").read_text()
