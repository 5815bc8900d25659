"""A deterministic synthetic dataset in exactly the COCO-WholeBody v1.0 val format.

Why: the real annotations need a manual download (research-only licence), so tests, the demo and
the performance work need data with the same files, fields and quirks that the real code paths
read. Images show stick figures whose drawn joints are the annotated keypoints (a model could learn
them), with crowds, empty images, occluders, truncation, unlabelled parts and invalid faces/hands.
The detection file has jittered true boxes, misses, duplicates and false positives.

Every image gets its own random stream (seed, image index), so annotations are the same with or
without images and the same seed always gives byte-identical files.
"""

from __future__ import annotations

import cmath
import itertools
import math
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from zoo.data.coco_format import PART_SLICES, PARTS, PERSON_CATEGORY, write_json
from zoo.data.paths import ANN_FILE, DET_FILE, IMG_DIR, SYNTH_MARKER, DataPaths
from zoo.errors import InputError, ZooError

# COCO image shapes (w, h) at long side 640; scaled to SynthSpec.max_side.
MIN_SIDE = 64  # below it the smallest shape leaves no room for the background clutter and figures
_SHAPES = ((640, 480), (640, 427), (480, 640), (640, 426), (500, 375), (640, 360), (427, 640))


@dataclass(frozen=True)
class SynthSpec:
    """Knobs of the generator; defaults give small, fast sets with every kind of case present."""

    max_side: int = 640  # long image side in pixels
    empty_fraction: float = 0.3  # images with nobody
    persons_p: float = 0.45  # persons per non-empty image ~ Geometric(p), mean 1/p
    max_persons: int = 8
    crowd_fraction: float = 0.08  # images with one iscrowd region full of tiny unannotated figures
    occluder_prob: float = 0.15  # a grey box in front of a person; covered points get v=1
    unlabelled_legs_prob: float = 0.1  # annotator left knees/ankles/feet unlabelled (v=0)
    unlabelled_person_prob: float = 0.05  # person with box but no body keypoints (as COCO's small/far ones)
    min_labelled_area: float = 300.0  # persons with a smaller silhouette get no body keypoints either
    face_valid_prob: float = 0.85  # among faces large enough to label
    hand_valid_prob: float = 0.7  # among hands large enough to label
    det_miss_prob: float = 0.05  # a true person without a detection (x3 for small persons)
    det_dup_prob: float = 0.1  # a second, lower-scored box on the same person
    fp_per_image: float = 1.0  # Poisson mean of false positives; ~19 gives the real file's 104k boxes
    jpeg_quality: int = 90
    # Added later: the marker lists them only when changed (_marker_spec): default sets stay as they were.
    pose_variation: float = 1.0  # spread of every pose choice around the canonical pose (0: all alike)
    det_jitter: float = 1.0  # scales the detections' box jitter (0: true persons' boxes exactly)


_LATER_FIELDS = ("pose_variation", "det_jitter")
_POSE_DRAWS = np.arange(14) != 11  # _figure's draws that shape the pose (11 is the colour)


@dataclass(frozen=True)
class SynthPaths(DataPaths):
    """Where `synthesize` wrote the set (same layout as a real data root) and what it holds."""

    marker: Path = Path()
    n_images: int = 0
    n_annotations: int = 0
    n_detections: int = 0
    images_written: bool = True


@dataclass
class _Figure:
    """One drawn person: 133 keypoints (x, y) in image pixels plus drawing sizes."""

    kpts: np.ndarray  # (133, 2) float64, in PARTS order
    unit: float  # body unit length (height / 7.5); decides which parts are big enough to label
    head_center: np.ndarray
    head_r: float
    thick: int  # limb thickness
    hand_thick: int
    side_colors: tuple[tuple[int, int, int], tuple[int, int, int]]  # BGR for person-left, person-right


_LIMBS_LEFT = ((5, 7), (7, 9), (11, 13), (13, 15))
_LIMBS_RIGHT = ((6, 8), (8, 10), (12, 14), (14, 16))
_TORSO = ((5, 6), (11, 12), (5, 11), (6, 12))
# face contour groups (iBUG 68, 0-based): jaw, brows, nose bridge, nostrils, eyes, lips
_FACE_LINES = (
    (range(0, 17), False), (range(17, 22), False), (range(22, 27), False), (range(27, 31), False),
    (range(31, 36), False), (range(36, 42), True), (range(42, 48), True), (range(48, 60), True),
    (range(60, 68), True),
)  # fmt: skip


def _face_template() -> np.ndarray:
    """68 iBUG landmarks in a unit face box ([-1, 1]^2, y down), subject's right jaw first (image left)."""
    pts = []
    for j in range(17):  # jaw: from image-left temple, round the chin, to image-right temple
        t = math.radians(190 - 200 * j / 16)
        pts.append((math.cos(t), math.sin(t)))
    for x0, x1 in ((-0.8, -0.15), (0.15, 0.8)):  # eyebrows
        for x in np.linspace(x0, x1, 5):
            pts.append((x, -0.55 - 0.12 * math.cos((x - (x0 + x1) / 2) * 4)))
    for y in np.linspace(-0.35, 0.15, 4):  # nose bridge
        pts.append((0.0, y))
    for x in np.linspace(-0.25, 0.25, 5):  # nostrils
        pts.append((x, 0.25 + 0.05 * (1 - abs(x) * 4)))
    for cx in (-0.4, 0.4):  # eyes: corner, 2 upper, corner, 2 lower
        for t in (180, 240, 300, 0, 60, 120):
            pts.append((cx + 0.18 * math.cos(math.radians(t)), -0.3 + 0.07 * math.sin(math.radians(t))))
    for k in range(12):  # outer lip
        t = math.radians(180 + 30 * k)
        pts.append((0.4 * math.cos(t), 0.6 + 0.15 * math.sin(t)))
    for k in range(8):  # inner lip
        t = math.radians(180 + 45 * k)
        pts.append((0.28 * math.cos(t), 0.6 + 0.07 * math.sin(t)))
    return np.array(pts)


_FACE = _face_template()


def _hand(wrist: np.ndarray, elbow: np.ndarray, length: float, side: int, curl: float) -> np.ndarray:
    """21 hand points: wrist, then thumb/index/middle/ring/pinky, 4 joints each, fanned along the forearm.

    Points are complex numbers here (x + iy): a rotation is one multiplication.
    """
    w = complex(wrist[0], wrist[1])
    d = w - complex(elbow[0], elbow[1])
    d = d / (abs(d) + 1e-9)
    p = d * 1j * -side
    pts = [w]
    bend = cmath.exp(1j * curl * 0.3 * side)
    # (base along d, base along p, fan angle, segment lengths) per finger
    fingers = (
        (0.12, 0.15, 0.9, (0.16, 0.14, 0.12)),
        (0.42, 0.16, 0.2, (0.2, 0.15, 0.12)),
        (0.44, 0.05, 0.05, (0.22, 0.16, 0.13)),
        (0.42, -0.06, -0.1, (0.2, 0.15, 0.12)),
        (0.38, -0.16, -0.25, (0.16, 0.12, 0.1)),
    )
    for along, across, fan, segs in fingers:
        q = w + d * along * length + p * across * length
        pts.append(q)
        direction = d * cmath.exp(-1j * fan * side)
        for i, seg in enumerate(segs):
            direction *= bend ** (i + 1)
            q = q + direction * seg * length
            pts.append(q)
    arr = np.array(pts)
    return np.stack([arr.real, arr.imag], axis=1)


def _figure(rng: np.random.Generator, height: float, hip: np.ndarray, variation: float = 1.0) -> _Figure:
    """A random person of about `height` pixels (head top to ankles) with mid-hip at `hip`.

    `variation` shrinks every pose choice towards the middle of its range (the canonical pose: arms
    out, legs straight, upright); the same random draws are made whatever its value.
    """
    u = rng.random(14)  # one draw for all shape choices: thousands of figures per full-size set
    if variation != 1.0:
        u[_POSE_DRAWS] = 0.5 + (u[_POSE_DRAWS] - 0.5) * variation

    def pick(i: int, lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(u[i])

    s = height / 7.5
    wide = pick(0, 0.85, 1.1)
    body = np.zeros((17, 2))
    head_c = np.array([pick(1, -0.1, 0.1) * s, -3.6 * s])
    head_r = 0.55 * s
    body[0] = head_c + (0, 0.15 * s)
    body[1], body[2] = head_c + (0.22 * s, -0.05 * s), head_c + (-0.22 * s, -0.05 * s)
    body[3], body[4] = head_c + (0.52 * s, 0.05 * s), head_c + (-0.52 * s, 0.05 * s)
    for side, i, (sh, el, wr, hp, kn, an) in ((1, 2, (5, 7, 9, 11, 13, 15)), (-1, 6, (6, 8, 10, 12, 14, 16))):
        body[sh] = (0.9 * s * wide * side, -2.6 * s)
        body[hp] = (0.5 * s * wide * side, 0.0)
        a1 = pick(i, -0.3, 1.7)  # arm angles from hanging down, outwards positive
        a2 = a1 + pick(i + 1, -1.6, 1.6)
        b1 = pick(i + 2, -0.15, 0.5)  # leg angles
        b2 = b1 + pick(i + 3, -0.45, 0.15)
        body[el] = body[sh] + 1.35 * s * np.array([math.sin(a1) * side, math.cos(a1)])
        body[wr] = body[el] + 1.2 * s * np.array([math.sin(a2) * side, math.cos(a2)])
        body[kn] = body[hp] + 1.9 * s * np.array([math.sin(b1) * side, math.cos(b1)])
        body[an] = body[kn] + 1.8 * s * np.array([math.sin(b2) * side, math.cos(b2)])
    feet = []
    for side, an in ((1, 15), (-1, 16)):  # big toe, small toe, heel
        feet += [body[an] + (0.15 * s * side, 0.45 * s), body[an] + (0.45 * s * side, 0.38 * s),
                 body[an] + (-0.05 * s * side, 0.2 * s)]  # fmt: skip
    face = head_c + (0, 0.1 * head_r) + _FACE * (0.75 * head_r, 0.9 * head_r)
    hands = [_hand(body[9], body[7], 0.75 * s, 1, pick(12, -0.3, 0.6)),
             _hand(body[10], body[8], 0.75 * s, -1, pick(13, -0.3, 0.6))]  # fmt: skip
    kpts = np.concatenate([body, np.array(feet), face, *hands])
    lean = pick(10, -0.2, 0.2)
    c, sn = math.cos(lean), math.sin(lean)
    rot = np.array([[c, sn], [-sn, c]])
    kpts = kpts @ rot + hip
    head = head_c @ rot + hip
    hue = int(u[11] * 180)
    left = tuple(int(v) for v in cv2.cvtColor(np.uint8([[[hue, 200, 220]]]), cv2.COLOR_HSV2BGR)[0, 0])
    right = tuple(
        int(v) for v in cv2.cvtColor(np.uint8([[[(hue + 90) % 180, 200, 220]]]), cv2.COLOR_HSV2BGR)[0, 0]
    )
    return _Figure(kpts, s, head, head_r, max(1, round(0.28 * s)), max(1, round(0.05 * s)), (left, right))


def _fixed(p: np.ndarray, off: tuple[int, int]) -> np.ndarray:
    """cv2 fixed-point coordinates (shift=4) so drawn joints sit on the sub-pixel keypoints."""
    return np.round((np.asarray(p, dtype=np.float64) - off) * 16).astype(np.int64)


def _draw(canvas: np.ndarray, fig: _Figure, off: tuple[int, int] = (0, 0), mask: bool = False) -> None:
    """Draw a figure; with mask=True, in 255 only (its silhouette, for segmentation and area)."""
    k = [tuple(p) for p in _fixed(fig.kpts, off).tolist()]
    white, torso, skin = (255, 255, 255), (180, 120, 60), (150, 180, 230)
    col = (lambda c: 255) if mask else (lambda c: c)  # noqa: E731 - one switch for every colour below
    aa = cv2.LINE_8 if mask else cv2.LINE_AA  # the silhouette needs no anti-aliasing (and is 2x faster)

    def line(a: int, b: int, c: tuple, t: int) -> None:
        cv2.line(canvas, k[a], k[b], col(c), t, aa, 4)

    for a, b in _TORSO:
        line(a, b, torso, fig.thick)
    for limbs, c in ((_LIMBS_LEFT, fig.side_colors[0]), (_LIMBS_RIGHT, fig.side_colors[1])):
        for a, b in limbs:
            line(a, b, c, fig.thick)
    foot0 = PART_SLICES["foot_kpts"].start
    for ankle, first, c in ((15, foot0, fig.side_colors[0]), (16, foot0 + 3, fig.side_colors[1])):
        for p in range(first, first + 3):
            line(ankle, p, c, max(1, fig.thick // 2))
    for part, c in (("lefthand_kpts", fig.side_colors[0]), ("righthand_kpts", fig.side_colors[1])):
        w0 = PART_SLICES[part].start
        for f in range(5):
            chain = [w0, *range(w0 + 1 + 4 * f, w0 + 5 + 4 * f)]
            for a, b in itertools.pairwise(chain):
                line(a, b, c, fig.hand_thick)
    head = tuple(_fixed(fig.head_center, off).tolist())
    cv2.circle(canvas, head, int(round(fig.head_r * 16)), col(skin), -1, aa, 4)
    if mask:
        return
    f0 = PART_SLICES["face_kpts"].start
    for idx, closed in _FACE_LINES:
        poly = np.array([k[f0 + i] for i in idx], dtype=np.int32)
        cv2.polylines(canvas, [poly], closed, (40, 40, 90), 1, cv2.LINE_AA, 4)
    r = max(1, int(round(fig.thick * 0.6 * 16)))
    for i in range(5, 17):  # body joints as dots on the limb ends
        cv2.circle(canvas, k[i], r, white, -1, cv2.LINE_AA, 4)
    for i in range(5):
        cv2.circle(canvas, k[i], max(16, r // 2), (0, 0, 255) if i == 0 else (20, 20, 20), -1, cv2.LINE_AA, 4)


def _box_of(pts: np.ndarray) -> list[float]:
    """[x, y, w, h] of the points' extent, rounded to 0.01 px like the real file."""
    mn, mx = pts.min(0), pts.max(0)
    return [
        round(float(mn[0]), 2),
        round(float(mn[1]), 2),
        round(float(mx[0] - mn[0]), 2),
        round(float(mx[1] - mn[1]), 2),
    ]


def _silhouette(fig: _Figure, w: int, h: int) -> tuple[list[list[float]], float, list[float]] | None:
    """(segmentation polygons, area in pixels, bbox xywh) of the figure's visible part, or None if off-image."""
    lo = np.floor(np.minimum(fig.kpts.min(0), fig.head_center - fig.head_r) - fig.thick).astype(int)
    hi = np.ceil(np.maximum(fig.kpts.max(0), fig.head_center + fig.head_r) + fig.thick).astype(int)
    x0, y0 = max(lo[0], 0), max(lo[1], 0)
    x1, y1 = min(hi[0], w), min(hi[1], h)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    canvas = np.zeros((y1 - y0, x1 - x0), np.uint8)
    _draw(canvas, fig, (x0, y0), mask=True)
    area = float(np.count_nonzero(canvas > 127))
    contours, _ = cv2.findContours(
        (canvas > 127).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
    )
    polys = []
    for c in contours:
        c = cv2.approxPolyDP(c, 1.0, True).reshape(-1, 2)
        if len(c) >= 3:
            polys.append((c + (x0, y0)).reshape(-1).astype(float).tolist())
    if not polys or area < 4:
        return None
    return polys, area, _box_of(np.concatenate([np.array(p).reshape(-1, 2) for p in polys]))


def _rect_rle(x0: int, y0: int, x1: int, y1: int, w: int, h: int) -> dict:
    """Uncompressed COCO RLE (column-major run lengths, starting with zeros) of a filled rectangle."""
    counts, zeros = [], x0 * h + y0
    for _ in range(x0, x1):
        counts += [zeros, y1 - y0]
        zeros = h - (y1 - y0)
    counts.append((w - x1) * h + (h - y1))
    return {"counts": counts, "size": [h, w]}


def _zero_parts() -> dict:
    return {name: [0.0 if name != "keypoints" else 0] * (3 * k) for name, k in PARTS}


def _annotate(
    fig: _Figure,
    rng: np.random.Generator,
    spec: SynthSpec,
    w: int,
    h: int,
    occluder: tuple | None,
    area: float,
) -> dict:
    """The COCO-WholeBody fields of one figure: labels with v flags, validity and part boxes.

    An unlabelled person (tiny, or by chance) has no body keypoints; a third of them keep a face
    label, the real-data case that mmpose's GT-box loader drops (num_keypoints counts the body only)
    while the face evaluation still counts it.
    """
    k = fig.kpts
    inside = (k[:, 0] >= 0) & (k[:, 0] < w) & (k[:, 1] >= 0) & (k[:, 1] < h)
    labelled = inside.copy()
    if rng.random() < spec.unlabelled_person_prob or area < spec.min_labelled_area:
        keep_face = rng.random() < 1 / 3
        face = labelled[PART_SLICES["face_kpts"]].copy()
        labelled[:] = False
        if keep_face:
            labelled[PART_SLICES["face_kpts"]] = face
    if rng.random() < spec.unlabelled_legs_prob:
        labelled[[13, 14, 15, 16]] = False
        labelled[PART_SLICES["foot_kpts"]] = False
    covered = np.zeros(len(k), bool)
    if occluder is not None:
        ox0, oy0, ox1, oy1 = occluder
        covered = (k[:, 0] >= ox0) & (k[:, 0] < ox1) & (k[:, 1] >= oy0) & (k[:, 1] < oy1)
    out = {}
    body = np.zeros((17, 3))
    body[:, :2] = np.round(k[:17])
    body[:, 2] = np.where(labelled[:17], np.where(covered[:17], 1, 2), 0)
    body[body[:, 2] == 0, :2] = 0
    out["keypoints"] = body.astype(np.int64).reshape(-1).tolist()
    out["num_keypoints"] = int(np.count_nonzero(body[:, 2]))
    for name, min_s, prob in (("foot_kpts", 8.0, 1.0), ("face_kpts", 6.0, spec.face_valid_prob),
                              ("lefthand_kpts", 7.0, spec.hand_valid_prob), ("righthand_kpts", 7.0, spec.hand_valid_prob)):  # fmt: skip
        sl = PART_SLICES[name]
        pts = k[sl]
        valid = bool(labelled[sl].all()) and fig.unit >= min_s and rng.random() < prob
        if valid and covered[sl].mean() > 0.5:
            valid = False  # mostly hidden: annotators mark it unclear
        part = np.zeros((len(pts), 3))
        if valid:
            part[:, :2] = pts
            if name == "face_kpts":
                part[:, 2] = 1.0
            elif name == "foot_kpts":
                part[:, 2] = np.where(covered[sl], 1.0, 2.0)
            else:  # hand labels carry a float confidence in the real file
                part[:, 2] = np.round(rng.uniform(0.05, 1.0, len(pts)), 4)
        out[name] = np.round(part, 2).reshape(-1).tolist()
        key = name.replace("_kpts", "")
        out[f"{key}_valid"] = valid
        if key != "foot":
            out[f"{key}_box"] = _box_of(pts) if valid else [0.0, 0.0, 0.0, 0.0]
    return out


def _jitter(bbox: list[float], rng: np.random.Generator, amount: float, w: int, h: int) -> list[float]:
    x, y, bw, bh = bbox
    x += rng.normal(0, amount) * bw
    y += rng.normal(0, amount) * bh
    bw *= math.exp(rng.normal(0, amount))
    bh *= math.exp(rng.normal(0, amount))
    x, y = min(max(x, 0.0), w - 2.0), min(max(y, 0.0), h - 2.0)
    return [round(x, 2), round(y, 2), round(max(min(bw, w - x), 1.0), 2), round(max(min(bh, h - y), 1.0), 2)]


def _background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    c0, c1 = rng.integers(30, 220, 3), rng.integers(30, 220, 3)
    ramp = np.linspace(0, 1, h)[:, None, None]
    img = np.broadcast_to(c0 + (c1 - c0) * ramp, (h, w, 3)).astype(np.uint8).copy()
    for _ in range(int(rng.integers(2, 7))):  # non-person clutter for the detector's false positives
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        color = tuple(int(v) for v in rng.integers(0, 255, 3))
        if rng.random() < 0.5:
            cv2.rectangle(
                img,
                (x0, y0),
                (x0 + int(rng.integers(10, w // 3)), y0 + int(rng.integers(10, h // 3))),
                color,
                -1,
            )
        else:
            cv2.ellipse(
                img,
                (x0, y0),
                (int(rng.integers(5, w // 6)), int(rng.integers(5, h // 6))),
                0,
                0,
                360,
                color,
                -1,
            )
    return img


def _image(
    seed: int, index: int, image_id: int, spec: SynthSpec, draw: bool
) -> tuple[dict, list[dict], list[dict], np.ndarray | None]:
    """One image's record, annotations (ids filled later), detections, and pixels when `draw`."""
    rng = np.random.default_rng([seed, index])
    w0, h0 = _SHAPES[int(rng.integers(0, len(_SHAPES)))]
    scale = spec.max_side / 640
    w, h = max(32, round(w0 * scale)), max(32, round(h0 * scale))
    img_rec = {"file_name": f"{image_id:012d}.jpg", "height": h, "width": w, "id": image_id}
    # pixels-only randomness has its own stream, so annotations do not depend on `draw`
    canvas = _background(np.random.default_rng([seed, index, 1]), w, h) if draw else None
    anns: list[dict] = []
    dets: list[dict] = []

    # image 1 always has a crowd and image 2 nobody, so even a tiny set has every case
    if rng.random() < spec.crowd_fraction or index == 1:
        cw, ch = int(w * rng.uniform(0.3, 0.6)), int(h * rng.uniform(0.12, 0.25))
        cx0, cy0 = int(rng.integers(0, w - cw)), int(rng.integers(0, h - ch))
        for _ in range(int(rng.integers(6, 16))):
            tiny = _figure(
                rng,
                ch * rng.uniform(0.6, 0.9),
                np.array([cx0 + rng.uniform(0.05, 0.95) * cw, cy0 + ch * 0.62]),
                spec.pose_variation,
            )
            if canvas is not None:
                _draw(canvas, tiny)
            if rng.random() < 0.4:  # detectors do fire on some crowd members
                lo, hi = tiny.kpts.min(0), tiny.kpts.max(0)
                box = [float(lo[0]), float(lo[1]), float(hi[0] - lo[0]), float(hi[1] - lo[1])]
                dets.append(
                    {
                        "bbox": _jitter(box, rng, 0.08 * spec.det_jitter, w, h),
                        "score": round(float(rng.uniform(0.1, 0.7)), 5),
                    }
                )
        crowd = {"segmentation": _rect_rle(cx0, cy0, cx0 + cw, cy0 + ch, w, h), "num_keypoints": 0,
                 "area": float(cw * ch), "iscrowd": 1, **_zero_parts(), "image_id": image_id,
                 "bbox": [float(cx0), float(cy0), float(cw), float(ch)], "category_id": 1,
                 "face_box": [0.0] * 4, "lefthand_box": [0.0] * 4, "righthand_box": [0.0] * 4,
                 "face_valid": False, "lefthand_valid": False, "righthand_valid": False, "foot_valid": False}  # fmt: skip
        anns.append(crowd)

    n = (
        0
        if rng.random() < spec.empty_fraction or index == 2
        else min(int(rng.geometric(spec.persons_p)), spec.max_persons)
    )
    heights = np.sort(np.exp(rng.uniform(math.log(0.15 * h), math.log(1.0 * h), n)))  # small (far) first
    for height in heights:
        hip = np.array([rng.uniform(0.05, 0.95) * w, rng.uniform(-0.05, 0.45) * h + height * 0.55])
        fig = _figure(rng, float(height), hip, spec.pose_variation)
        occluder = None
        if rng.random() < spec.occluder_prob:
            lo, hi = fig.kpts.min(0), fig.kpts.max(0)
            oy0 = lo[1] + (hi[1] - lo[1]) * rng.uniform(0.35, 0.7)
            occluder = (lo[0] - 5, oy0, hi[0] + 5, oy0 + (hi[1] - lo[1]) * rng.uniform(0.2, 0.5))
        sil = _silhouette(fig, w, h)
        ann = _annotate(fig, rng, spec, w, h, occluder, sil[1] if sil else 0.0)
        if canvas is not None:
            _draw(canvas, fig)
            if occluder is not None:
                ox0, oy0, ox1, oy1 = (int(round(v)) for v in occluder)
                cv2.rectangle(canvas, (ox0, oy0), (ox1, oy1), (128, 128, 128), -1)
        if sil is None:
            continue
        polys, area, bbox = sil
        anns.append({"segmentation": polys, "num_keypoints": ann.pop("num_keypoints"), "area": area,
                     "iscrowd": 0, "keypoints": ann.pop("keypoints"), "image_id": image_id, "bbox": bbox,
                     "category_id": 1, **ann})  # fmt: skip
        small = bbox[2] * bbox[3] < 32 * 32
        if rng.random() >= spec.det_miss_prob * (3 if small else 1):
            dets.append(
                {
                    "bbox": _jitter(bbox, rng, 0.04 * spec.det_jitter, w, h),
                    "score": round(float(rng.beta(8, 2)), 5),
                }
            )
            if rng.random() < spec.det_dup_prob:
                dets.append(
                    {
                        "bbox": _jitter(bbox, rng, 0.12 * spec.det_jitter, w, h),
                        "score": round(float(rng.beta(3, 5)), 5),
                    }
                )
    for _ in range(int(rng.poisson(spec.fp_per_image))):
        bw, bh = w * rng.uniform(0.03, 0.5), h * rng.uniform(0.05, 0.7)
        box = [float(rng.uniform(0, w - bw)), float(rng.uniform(0, h - bh)), float(bw), float(bh)]
        dets.append({"bbox": _jitter(box, rng, 0.0, w, h), "score": round(float(rng.beta(1, 6)), 5)})
    dets.sort(key=lambda d: -d["score"])
    return (
        img_rec,
        anns,
        [{"bbox": d["bbox"], "category_id": 1, "image_id": image_id, "score": d["score"]} for d in dets],
        canvas,
    )


def _check_out(out: Path) -> None:
    """Refuse to replace a folder that holds something other than an earlier synthetic set, and an
    output that cannot be written (checked before generating anything)."""
    from zoo.fetch import dir_write_problem

    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: is a file, not a folder")
    if out.exists() and not (out / SYNTH_MARKER).exists() and any(out.iterdir()):
        raise InputError(
            f"{out}: not empty and not a synthetic data root (no {SYNTH_MARKER}); choose an empty folder"
        )
    problem = dir_write_problem(out.parent, create=True)  # the set is built beside `out`, then renamed
    if problem:
        raise InputError(f"--out {out}: cannot write there ({problem})")


def synthesize(
    out: Path, n_images: int = 8, seed: int = 0, write_images: bool = True, spec: SynthSpec | None = None
) -> SynthPaths:
    """Write a synthetic COCO-WholeBody val set under `out`, laid out like a real data root.

    Files: annotations/coco_wholebody_val_v1.0.json, val2017/<12-digit id>.jpg (unless
    write_images=False), person_detection_results/COCO_val2017_detections_AP_H_56_person.json and
    zoo-synth.json (the marker `verify` reads: seed, counts, whether images exist). The set is
    built in a temporary sibling folder and renamed into place, replacing an earlier synthetic set.
    """
    if n_images < 1:
        raise InputError(f"--images must be at least 1, got {n_images}")
    if seed < 0:
        raise InputError(f"--seed must be at least 0, got {seed}")
    spec = spec or SynthSpec()
    if spec.max_side < MIN_SIDE:
        raise InputError(f"--max-side must be at least {MIN_SIDE}, got {spec.max_side}")
    if not 0 <= spec.fp_per_image < float("inf"):
        raise InputError(f"--fp-per-image must be a number >= 0, got {spec.fp_per_image}")
    out = Path(out)
    _check_out(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.synth-"))
    tmp.chmod(0o755)  # mkdtemp makes it private; the data root is meant to be shared
    try:
        counts = _write(tmp, n_images, seed, write_images, spec)
        if out.exists():  # an earlier synthetic set (checked above) or an empty folder
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return SynthPaths(root=out, ann_file=out / ANN_FILE, img_dir=out / IMG_DIR, det_file=out / DET_FILE,
                      marker=out / SYNTH_MARKER, n_images=n_images, n_annotations=counts[0],
                      n_detections=counts[1], images_written=write_images)  # fmt: skip


def _marker_spec(spec: SynthSpec) -> dict:
    """The spec as the marker records it: the later fields only where they differ from their default."""
    defaults = SynthSpec()
    return {k: v for k, v in asdict(spec).items() if k not in _LATER_FIELDS or v != getattr(defaults, k)}


def _write(out: Path, n_images: int, seed: int, write_images: bool, spec: SynthSpec) -> tuple[int, int]:
    """Generate the set into `out`; returns (annotations, detections)."""
    id_rng = np.random.default_rng([seed, 2**31])
    image_ids = np.sort(
        id_rng.choice(np.arange(1, max(600_000, 4 * n_images)), n_images, replace=False)
    ).tolist()
    order = id_rng.permutation(n_images).tolist()  # the real file does not list images by id
    images, annotations, detections = [], [], []
    ann_id = 100_000
    if write_images:
        (out / IMG_DIR).mkdir(parents=True, exist_ok=True)
    for index in order:
        image_id = int(image_ids[index])
        rec, anns, dets, pixels = _image(seed, index, image_id, spec, write_images)
        images.append(rec)
        for a in anns:
            ann_id += int(id_rng.integers(1, 50))
            a["id"] = ann_id
        annotations += anns
        detections += dets
        if pixels is not None:
            ok, buf = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, spec.jpeg_quality])
            if not ok:
                raise ZooError(f"cv2 could not encode synthetic image {image_id}")
            (out / IMG_DIR / rec["file_name"]).write_bytes(buf.tobytes())
    detections.sort(key=lambda d: d["image_id"])  # stable: keeps each image's score order
    ann = {"info": {"description": "zoo synthetic COCO-WholeBody", "version": "1.0", "seed": seed},
           "licenses": [], "images": images, "annotations": annotations, "categories": [PERSON_CATEGORY]}  # fmt: skip
    write_json(out / ANN_FILE, ann)
    write_json(out / DET_FILE, detections)
    marker = {"generator": "zoo.data.synth", "format_version": 1, "seed": seed, "images": n_images,
              "annotations": len(annotations), "detections": len(detections), "images_written": write_images,
              "spec": _marker_spec(spec)}  # fmt: skip
    write_json(out / SYNTH_MARKER, marker)
    return len(annotations), len(detections)
