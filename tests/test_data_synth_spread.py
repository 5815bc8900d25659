"""zoo.data.synth's pose_variation and det_jitter (used by the demo): they draw figures around one pose and
near-exact detector boxes, and leave the generator's default output byte for byte as it was."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from zoo.data import SynthSpec, synthesize
from zoo.data.paths import ANN_FILE, DET_FILE, SYNTH_MARKER

# sha256 of annotations + detections + marker of synthesize(n_images=40, seed=7, write_images=False),
# computed with the generator as it was before these options existed (commit 33e5ca3)
DEFAULT_DIGEST = "ab9f36ef6c540648f18127b20a847e42812d35dc73e8491edd9f3f215c209dab"


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for name in (ANN_FILE, DET_FILE, SYNTH_MARKER):
        h.update((root / name).read_bytes())
    return h.hexdigest()


def _normalized_parts(root: Path, part: str) -> np.ndarray:
    """Every valid `part` (face_kpts, lefthand_kpts) of the set, centered and scaled to unit spread."""
    shapes = []
    for ann in json.loads((root / ANN_FILE).read_text())["annotations"]:
        if ann.get(part.replace("_kpts", "_valid")):
            points = np.asarray(ann[part], np.float64).reshape(-1, 3)[:, :2]
            points = points - points.mean(0)
            shapes.append(points / np.sqrt((points**2).sum(1).mean()))
    assert len(shapes) >= 5, part
    return np.stack(shapes)


def _spread(shapes: np.ndarray) -> float:
    """The largest distance of a normalized point from its mean over the figures."""
    return float(np.abs(shapes - shapes.mean(0)).max())


def test_default_output_is_unchanged(tmp_path: Path) -> None:
    root = synthesize(tmp_path / "default", n_images=40, seed=7, write_images=False).root
    assert _digest(root) == DEFAULT_DIGEST
    marker = json.loads((root / SYNTH_MARKER).read_text())
    assert "pose_variation" not in marker["spec"] and "det_jitter" not in marker["spec"]


def test_pose_variation_draws_figures_around_one_pose(tmp_path: Path) -> None:
    spread = {}
    for variation in (1.0, 0.1, 0.0):
        root = synthesize(
            tmp_path / str(variation), n_images=40, seed=7, write_images=False,
            spec=SynthSpec(pose_variation=variation),
        ).root  # fmt: skip
        spread[variation] = {
            part: _spread(_normalized_parts(root, part)) for part in ("face_kpts", "lefthand_kpts")
        }
    for part in ("face_kpts", "lefthand_kpts"):
        # at 0 every face and hand has the same shape (stored to 0.01 px), whatever its size and position
        assert spread[0.0][part] < 0.01, (part, spread)
        assert spread[0.0][part] < spread[0.1][part] < spread[1.0][part], (part, spread)
        assert spread[1.0][part] > 0.1, (part, spread)


def test_spread_options_change_only_poses_and_boxes(tmp_path: Path) -> None:
    default = synthesize(tmp_path / "default", n_images=20, seed=3, write_images=False).root
    spec = SynthSpec(pose_variation=0.1, det_jitter=0.1)
    narrow = synthesize(tmp_path / "narrow", n_images=20, seed=3, write_images=False, spec=spec).root
    a, b = (json.loads((root / ANN_FILE).read_text()) for root in (default, narrow))
    assert a["images"] == b["images"]  # the same random draws: same images, sizes and ids
    assert [x["image_id"] for x in a["annotations"]] == [x["image_id"] for x in b["annotations"]]
    assert a["annotations"] != b["annotations"]
    marker = json.loads((narrow / SYNTH_MARKER).read_text())
    assert marker["spec"]["pose_variation"] == 0.1 and marker["spec"]["det_jitter"] == 0.1


def test_det_jitter_zero_gives_true_boxes(tmp_path: Path) -> None:
    exact = {}
    for jitter in (1.0, 0.0):
        root = synthesize(
            tmp_path / str(jitter), n_images=30, seed=5, write_images=False, spec=SynthSpec(det_jitter=jitter)
        ).root
        persons = [
            (a["image_id"], tuple(a["bbox"]))
            for a in json.loads((root / ANN_FILE).read_text())["annotations"]
            if not a["iscrowd"]
        ]
        boxes = {(d["image_id"], tuple(d["bbox"])) for d in json.loads((root / DET_FILE).read_text())}
        exact[jitter] = sum(p in boxes for p in persons) / len(persons)
    assert exact[1.0] < 0.1 and exact[0.0] > 0.85, exact  # misses and off-image clipping aside
