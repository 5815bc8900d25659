"""zoo.keypoints: per-keypoint OKS/PCK/distance over the whole-body metric's matches.

Checked against a straightforward computation (a Python loop over the pairs xtcocotools' own
COCOeval matches), on hand-made sets with one known defect each and on the randomised sets of
tests/test_metrics.py."""

from __future__ import annotations

import contextlib
import io
import json
import math
import warnings
from typing import Any

import numpy as np
import pytest
from test_metrics import _split, make_ground_truth, make_predictions

from zoo import keypoints, metrics
from zoo.cli import main
from zoo.errors import InputError

K = metrics.NUM_KEYPOINTS
PART = {p.name: p for p in metrics.PARTS}
LEFT = PART["lefthand"]

# --------------------------------------------------------------------------------------------------
# the independent computation: xtcocotools' matches, then a loop per pair and keypoint


def xtcocotools_pairs(
    records: list[dict[str, Any]], gt: dict[str, Any], use_area: bool
) -> list[tuple[int, int]]:
    """(result index, annotation id) of every match COCOeval makes for keypoints_wholebody at the
    lowest threshold, area range 'all', maxDets 20, leaving out matches to ignored ground truths."""
    from xtcocotools.coco import COCO
    from xtcocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        coco = COCO("gt", ann_data=json.loads(json.dumps(gt)))
        det = coco.loadRes(json.loads(json.dumps(records)))  # result ids are 1 + file position
        ev = COCOeval(coco, det, "keypoints_wholebody", metrics.dataset_sigmas(), use_area=use_area)
        ev.params.useSegm = None
        ev.evaluate()
    assert ev.params.iouThrs[0] == 0.5 and ev.params.maxDets[-1] == 20
    pairs = []
    for entry in ev.evalImgs:
        if entry is None or list(entry["aRng"]) != list(ev.params.areaRng[0]):
            continue
        for dt_id, gt_id, ignored in zip(
            entry["dtIds"], entry["dtMatches"][0], entry["dtIgnore"][0], strict=True
        ):
            if gt_id > 0 and not ignored:
                pairs.append((int(dt_id) - 1, int(gt_id)))
    return sorted(pairs)


def expected_stats(records: list[dict[str, Any]], gt: dict[str, Any], use_area: bool) -> dict[str, Any]:
    """n and mean OKS term / PCK@0.1 / distance per keypoint, one pair and keypoint at a time."""
    variances = ((metrics.dataset_sigmas() * 2) ** 2).tolist()  # float32, as xtcocotools' `vars`
    anns = {a["id"]: a for a in gt["annotations"]}
    n = [0] * K
    sums: dict[str, list[float]] = {m: [0.0] * K for m in keypoints.METRICS}
    for row, ann_id in xtcocotools_pairs(records, gt, use_area):
        pred = np.concatenate([np.reshape(records[row][f], (-1, 3)) for f, _ in metrics.FIELDS])
        truth = np.concatenate([np.reshape(anns[ann_id][f], (-1, 3)) for f, _ in metrics.FIELDS])
        x, y, w, h = anns[ann_id]["bbox"]
        s2 = anns[ann_id]["area"] if use_area else w * h * 0.53
        for k in range(K):
            if truth[k, 2] <= 0:
                continue
            d = math.hypot(pred[k, 0] - truth[k, 0], pred[k, 1] - truth[k, 1])
            n[k] += 1
            sums["oks"][k] += math.exp(-(d**2) / (2 * s2 * variances[k]))
            sums["pck"][k] += d < 0.1 * max(w, h)
            sums["dist"][k] += d
    means = {m: [v / c if c else math.nan for v, c in zip(sums[m], n, strict=True)] for m in sums}
    return {"n": n, **means}


def assert_matches(stats: keypoints.KeypointStats, expected: dict[str, Any]) -> None:
    assert stats.n.tolist() == expected["n"]
    for m in keypoints.METRICS:
        np.testing.assert_allclose(stats.values(m), expected[m], rtol=1e-9, atol=1e-9, equal_nan=True)


# --------------------------------------------------------------------------------------------------
# hand-made sets: people far apart, predictions copied from the ground truth


def person(
    rng: np.random.Generator,
    ann_id: int,
    image_id: int,
    box: tuple[float, float, float, float],
    *,
    crowd: bool = False,
    unlabelled: tuple[int, ...] = (),
) -> dict[str, Any]:
    x, y, w, h = box
    kp = np.zeros((K, 3))
    kp[:, 0] = x + rng.random(K) * w
    kp[:, 1] = y + rng.random(K) * h
    kp[:, 2] = 2
    kp[list(unlabelled)] = 0
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": 1,
        "bbox": [x, y, w, h],
        "area": w * h * 0.6,
        "iscrowd": int(crowd),
        "num_keypoints": int((kp[:17, 2] > 0).sum()),
        **_split(kp),
    }


NEVER_LABELLED = 130  # a right-hand keypoint no ground truth labels


@pytest.fixture
def people() -> dict[str, Any]:
    """Three images: five people (two with unlabelled keypoints), one crowd, one empty image."""
    rng = np.random.default_rng(0)
    anns = [
        person(rng, 1, 1, (10, 20, 120, 260), unlabelled=(0, 1, 2, NEVER_LABELLED)),
        person(rng, 2, 1, (400, 30, 100, 240), unlabelled=(NEVER_LABELLED,)),
        person(rng, 3, 2, (50, 50, 200, 380), unlabelled=(NEVER_LABELLED, 40, 41)),
        person(rng, 4, 2, (700, 40, 90, 200), crowd=True, unlabelled=(NEVER_LABELLED,)),
        person(rng, 5, 2, (350, 60, 150, 330), unlabelled=(NEVER_LABELLED,)),
        person(rng, 6, 3, (20, 10, 60, 150), unlabelled=(NEVER_LABELLED,)),
    ]
    images = [{"id": i, "width": 900, "height": 500, "file_name": f"{i}.jpg"} for i in (1, 2, 3, 4)]
    return {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "person"}]}


def copy_predictions(gt: dict[str, Any], shift: tuple[int, int, float] | None = None) -> list[dict[str, Any]]:
    """One result per annotation (crowds included), keypoints exactly the ground truth's, unlabelled
    ones placed far away; `shift` = (start, stop, fraction) moves keypoints start..stop right by
    fraction x the box's longer side."""
    records = []
    for ann in gt["annotations"]:
        kp = np.concatenate([np.reshape(ann[f], (-1, 3)) for f, _ in metrics.FIELDS])
        kp[kp[:, 2] == 0, :2] = [5000.0, 5000.0]  # garbage where nothing is labelled
        if shift is not None:
            start, stop, fraction = shift
            kp[start:stop, 0] += fraction * max(ann["bbox"][2:])
        kp[:, 2] = 0.9
        records.append({"image_id": ann["image_id"], "category_id": 1, "score": 0.8, **_split(kp)})
    return records


def labelled_counts(gt: dict[str, Any]) -> list[int]:
    counts = np.zeros(K, dtype=int)
    for ann in gt["annotations"]:
        if not ann["iscrowd"]:
            kp = np.concatenate([np.reshape(ann[f], (-1, 3)) for f, _ in metrics.FIELDS])
            counts += kp[:, 2] > 0
    return counts.tolist()


def test_perfect_predictions_score_one(people):
    stats = keypoints.keypoint_stats(copy_predictions(people), people, use_area=True)
    assert stats.matched == 5  # every person but the crowd
    assert stats.n.tolist() == labelled_counts(people)
    labelled = stats.n > 0
    assert (stats.oks[labelled] == 1).all() and (stats.pck[labelled] == 1).all()
    assert (stats.dist[labelled] == 0).all()
    assert all(p["oks"] == 1 and p["pck"] == 1 and p["dist"] == 0 for p in stats.parts.values())
    assert_matches(stats, expected_stats(copy_predictions(people), people, True))


def test_only_the_shifted_part_drops(people):
    records = copy_predictions(people, shift=(LEFT.start, LEFT.stop, 0.15))
    stats = keypoints.keypoint_stats(records, people, use_area=True)
    assert stats.matched == 5  # a whole-body OKS of ~0.84: every person is still found
    left = np.zeros(K, dtype=bool)
    left[LEFT.start : LEFT.stop] = True
    others = ~left & (stats.n > 0)
    assert (stats.oks[left] < 0.5).all() and (stats.pck[left] == 0).all() and (stats.dist[left] > 0).all()
    assert (stats.oks[others] == 1).all() and (stats.pck[others] == 1).all()
    assert stats.parts["lefthand"]["oks"] < 0.5
    assert all(stats.parts[name]["oks"] == 1 for name in ("body", "foot", "face", "righthand"))
    assert set(stats.worst(21)) == set(range(LEFT.start, LEFT.stop))
    assert_matches(stats, expected_stats(records, people, True))


@pytest.mark.parametrize(("fraction", "pck"), [(0.09, 1.0), (0.11, 0.0)])
def test_pck_is_a_tenth_of_the_box_longer_side(people, fraction, pck):
    body = PART["body"]
    records = copy_predictions(people, shift=(body.start, body.stop, fraction))
    stats = keypoints.keypoint_stats(records, people, use_area=True)
    assert stats.matched == 5
    assert stats.parts["body"]["pck"] == pck and stats.parts["face"]["pck"] == 1.0
    assert stats.parts["body"]["oks"] < 1 and stats.parts["face"]["oks"] == 1.0


def test_unlabelled_keypoints_and_crowds_are_excluded(people):
    stats = keypoints.keypoint_stats(copy_predictions(people), people, use_area=True)
    # keypoints 0-2 are unlabelled in person 1 (its prediction is 5000 px off there), 40-41 in person
    # 3, NEVER_LABELLED everywhere; the crowd (person 4) is labelled everywhere but never counted
    assert stats.n[:3].tolist() == [4, 4, 4] and stats.n[40:42].tolist() == [4, 4] and stats.n[3] == 5
    assert stats.n[NEVER_LABELLED] == 0 and math.isnan(stats.oks[NEVER_LABELLED])
    assert NEVER_LABELLED not in stats.worst(K)
    assert stats.parts["righthand"]["n"] == 5 * 20
    without_crowd = {**people, "annotations": [a for a in people["annotations"] if not a["iscrowd"]]}
    alone = keypoints.keypoint_stats(copy_predictions(without_crowd), without_crowd, use_area=True)
    assert alone.n.tolist() == stats.n.tolist() and alone.matched == stats.matched
    # the crowd does absorb a detection: a prediction lying on it is not counted as a miss or a match
    crowd_only = [
        r for r, a in zip(copy_predictions(people), people["annotations"], strict=True) if a["iscrowd"]
    ]
    assert keypoints.keypoint_stats(crowd_only, people, use_area=True).matched == 0


def test_use_area_off_scales_by_the_box(people):
    records = copy_predictions(people, shift=(0, K, 0.01))
    with_area = keypoints.keypoint_stats(records, people, use_area=True)
    with_box = keypoints.keypoint_stats(records, people, use_area=False)
    assert with_box.use_area is False and not np.allclose(with_box.oks, with_area.oks, equal_nan=True)
    assert_matches(with_box, expected_stats(records, people, False))


# --------------------------------------------------------------------------------------------------
# randomised sets: the matching is the whole-body metric's, pair for pair


def _gt_rows(gt: dict[str, Any]) -> dict[int, int]:
    """annotation id -> row of `load_ground_truth` (listed annotations by category, image; file order)."""
    cats = sorted(c["id"] for c in gt["categories"])
    images = sorted(i["id"] for i in gt["images"])
    anns = gt["annotations"]
    order = sorted(
        range(len(anns)),
        key=lambda i: (cats.index(anns[i]["category_id"]), images.index(anns[i]["image_id"])),
    )
    return {anns[i]["id"]: row for row, i in enumerate(order)}


RANDOM = [
    # seed, images, detections per image, use_area, two categories
    (0, 24, 8, True, False),
    (1, 24, 8, False, False),
    (2, 12, 24, True, False),  # over maxDets=20
    (3, 20, 8, True, True),
    (4, 30, 5, False, False),
]


@pytest.mark.parametrize(("seed", "n_images", "per_image", "use_area", "two_cats"), RANDOM)
def test_matches_and_stats_equal_xtcocotools(seed, n_images, per_image, use_area, two_cats):
    rng = np.random.default_rng(seed)
    gt = make_ground_truth(rng, n_images, two_categories=two_cats)
    if not use_area:
        for ann in gt["annotations"][::2]:
            del ann["area"]
    records = make_predictions(rng, gt, per_image)
    for rec in records:  # some results rank by their own whole-body score
        if rng.random() < 0.3:
            rec["wholebody_score"] = float(rng.random())
    pairs = xtcocotools_pairs(records, gt, use_area)
    assert len(pairs) > 10  # not a degenerate set
    truth, results = metrics.load_ground_truth(gt, use_area), metrics.load_results(records)
    det, rows = metrics.wholebody_matches(truth, results, use_area)
    to_row = _gt_rows(gt)
    assert list(zip(det.tolist(), rows.tolist(), strict=True)) == [(d, to_row[g]) for d, g in pairs]
    stats = keypoints.keypoint_stats(records, gt, use_area=use_area)
    assert stats.matched == len(pairs)
    assert_matches(stats, expected_stats(records, gt, use_area))
    assert 0 < stats.parts["wholebody"]["oks"] < 1
    for part in metrics.PARTS:
        sl = slice(part.start, part.stop)
        pooled = np.nansum(stats.oks[sl] * stats.n[sl]) / stats.n[sl].sum()
        assert stats.parts[part.name]["oks"] == pytest.approx(pooled, rel=1e-12)


def test_no_predictions_and_no_ground_truth(people):
    empty = keypoints.keypoint_stats([], people, use_area=True)
    assert empty.matched == 0 and (empty.n == 0).all() and np.isnan(empty.oks).all()
    assert all(p["n"] == 0 and math.isnan(p["oks"]) for p in empty.parts.values())
    assert empty.worst(5) == []
    assert keypoints.KeypointStats.from_json(empty.to_json()).to_json() == empty.to_json()


# --------------------------------------------------------------------------------------------------
# names, JSON


def test_keypoint_names_are_mmposes():
    from test_metrics import _mmpose_meta

    names = keypoints.keypoint_names()
    meta = _mmpose_meta()
    assert list(names) == [meta["keypoint_id2name"][i] for i in range(K)]
    assert names[0] == "nose" and names[LEFT.start] == "left_hand_root"
    assert [keypoints.part_of(k) for k in (0, 17, 23, 91, 112, 132)] == [
        "body", "foot", "face", "lefthand", "righthand", "righthand"
    ]  # fmt: skip


def test_json_round_trip(people):
    stats = keypoints.keypoint_stats(copy_predictions(people, shift=(0, 17, 0.05)), people, use_area=True)
    data = stats.to_json()
    text = json.dumps(data, allow_nan=False)  # null, never NaN, where n = 0
    assert len(text) < 6000
    assert data["oks"][NEVER_LABELLED] is None and data["n"][NEVER_LABELLED] == 0
    assert list(data["parts"]) == [p.name for p in metrics.PARTS]
    assert all(len(data[key]) == K for key in ("n", "oks", "pck", "dist"))
    back = keypoints.KeypointStats.from_json(json.loads(text))
    assert back.to_json() == data
    assert back.parts["body"]["oks"] == data["parts"]["body"]["oks"]
    np.testing.assert_allclose(back.oks, stats.oks, atol=5e-5, equal_nan=True)


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda d: d.pop("pck"), "record.kp: missing field 'pck'"),
        (lambda d: d["oks"].pop(), "record.kp.oks: expected a list of 133"),
        (lambda d: d["oks"].__setitem__(3, "x"), "record.kp.oks[3]"),
        (lambda d: d["dist"].__setitem__(0, None), "record.kp.dist[0]"),
        (lambda d: d["n"].__setitem__(5, -1), "record.kp.n[5]"),
        (lambda d: d["parts"].pop("face"), "record.kp.parts: expected an object with keys"),
        (lambda d: d["parts"]["foot"].__setitem__("pck", None), "record.kp.parts.foot.pck"),
        (lambda d: d.__setitem__("pck_threshold", 0.2), "record.kp.pck_threshold"),
        (lambda d: d.__setitem__("matched", -2), "record.kp.matched"),
        (lambda d: d.__setitem__("use_area", 1), "record.kp.use_area"),
    ],
)
def test_from_json_names_the_bad_field(people, mutate, needle):
    data = keypoints.keypoint_stats(copy_predictions(people), people, use_area=True).to_json()
    mutate(data)
    with pytest.raises(InputError) as err:
        keypoints.KeypointStats.from_json(data, "record.kp")
    assert needle in str(err.value) and "\n" not in str(err.value)


# --------------------------------------------------------------------------------------------------
# the CLI


def _files(tmp_path, gt, records):
    ann, preds = tmp_path / "ann.json", tmp_path / "preds.json"
    ann.write_text(json.dumps(gt))
    preds.write_text(json.dumps(records))
    return str(preds), str(ann)


def test_zoo_eval_per_keypoint(tmp_path, people, capsys):
    records = copy_predictions(people, shift=(LEFT.start, LEFT.stop, 0.15))
    preds, ann = _files(tmp_path, people, records)
    assert main(["eval", "--preds", preds, "--ann", ann, "--per-keypoint", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == keypoints.keypoint_stats(records, people, use_area=True).to_json()
    assert main(["eval", "--preds", preds, "--ann", ann, "--per-keypoint", "--worst", "3"]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert "5 matched (prediction, GT) pairs" in lines[0]
    part_lines = {
        line.split()[0]: line for line in lines if line.startswith(("body", "face", "left", "whole"))
    }
    left_oks = f"{out['parts']['lefthand']['oks']:.4f}"
    assert part_lines["left"].split()[:4] == ["left", "hand", str(5 * 21), left_oks]
    assert part_lines["face"].split()[2] == "1.0000"
    worst = lines[lines.index("worst 3 keypoints by OKS:") + 3 :]
    assert len(worst) == 3 and all("left hand" in line for line in worst)
    assert main(["eval", "--preds", preds, "--ann", ann, "--no-use-area", "--per-keypoint", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["use_area"] is False


def test_zoo_eval_per_keypoint_bad_input(tmp_path, people, capsys):
    preds, ann = _files(tmp_path, people, copy_predictions(people))
    assert main(["eval", "--preds", preds, "--ann", ann, "--per-keypoint", "--reference"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("zoo: error:") and "--reference" in err and len(err.splitlines()) == 1
    assert main(["eval", "--preds", str(tmp_path / "none.json"), "--ann", ann, "--per-keypoint"]) == 2
    err = capsys.readouterr().err.strip()
    assert "none.json" in err and len(err.splitlines()) == 1
    assert main(["eval", "--preds", preds, "--ann", ann, "--worst", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--worst" in err and "--per-keypoint" in err and len(err.splitlines()) == 1


# --------------------------------------------------------------------------------------------------
# plots


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_plots_are_valid_deterministic_pngs(tmp_path, people):
    import matplotlib.image

    clean = keypoints.keypoint_stats(copy_predictions(people), people, use_area=True)
    shifted = keypoints.keypoint_stats(
        copy_predictions(people, shift=(LEFT.start, LEFT.stop, 0.15)), people, use_area=True
    )
    rows = {"clean": clean, "left hand shifted": shifted}
    for metric in keypoints.METRICS:
        path = keypoints.plot_keypoints(rows, tmp_path / f"rows-{metric}.png", "two rows", metric=metric)
        width, height = _png_size(path)
        assert width > 1000 and height > 400
        assert matplotlib.image.imread(path).shape[:2] == (height, width)
    again = keypoints.plot_keypoints(rows, tmp_path / "again.png", "two rows", metric="dist")
    assert again.read_bytes() == (tmp_path / "rows-dist.png").read_bytes()
    delta = keypoints.plot_keypoint_delta(clean, shifted, tmp_path / "delta.png", "A vs B", labels=("A", "B"))
    assert _png_size(delta)[0] > 1000
    # a plot that shows the data differs from one that does not
    flat = keypoints.plot_keypoint_delta(clean, clean, tmp_path / "d0.png", "A vs B")
    assert delta.read_bytes() != flat.read_bytes()
    empty = keypoints.plot_keypoints({}, tmp_path / "empty.png", "no rows")
    assert _png_size(empty)[0] > 0
    nothing = keypoints.keypoint_stats([], people, use_area=True)  # no value anywhere
    for metric in keypoints.METRICS:
        path = keypoints.plot_keypoints({"none": nothing}, tmp_path / f"n-{metric}.png", "t", metric=metric)
        assert _png_size(path)[0] > 1000
    assert _png_size(keypoints.plot_keypoint_delta(nothing, clean, tmp_path / "nd.png", "t"))[0] > 1000


def test_plot_errors_are_one_line(tmp_path, people):
    stats = keypoints.keypoint_stats(copy_predictions(people), people, use_area=True)
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(InputError, match=r"file/plot\.png: cannot write the plot"):
        keypoints.plot_keypoints({"a": stats}, blocker / "plot.png", "t")
    with pytest.raises(InputError, match="unknown per-keypoint metric 'ap'"):
        keypoints.plot_keypoints({"a": stats}, tmp_path / "p.png", "t", metric="ap")
    assert not (tmp_path / "p.png").exists()
