"""zoo.data.synth: the synthetic COCO-WholeBody set is deterministic, well formed and has every case."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from zoo.cli import main
from zoo.data import SynthSpec, load_registry, synthesize
from zoo.data.coco_format import PARTS, annotation_problems, detection_problems
from zoo.data.paths import ANN_FILE, DET_FILE, IMG_DIR, SYNTH_MARKER
from zoo.errors import InputError, ZooError

REPO = Path(__file__).resolve().parents[1]


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory):
    return synthesize(tmp_path_factory.mktemp("synth") / "root", n_images=12, seed=5)


def test_same_seed_gives_byte_identical_files(tmp_path: Path) -> None:
    a = synthesize(tmp_path / "a", n_images=6, seed=11)
    b = synthesize(tmp_path / "b", n_images=6, seed=11)
    c = synthesize(tmp_path / "c", n_images=6, seed=12)
    da, db, dc = _digests(a.root), _digests(b.root), _digests(c.root)
    assert len([k for k in da if k.startswith(IMG_DIR)]) == 6
    assert da == db
    assert da[ANN_FILE] != dc[ANN_FILE]


def test_annotations_do_not_depend_on_writing_images(tmp_path: Path) -> None:
    with_images = synthesize(tmp_path / "a", n_images=10, seed=3)
    without = synthesize(tmp_path / "b", n_images=10, seed=3, write_images=False)
    assert not without.img_dir.exists() and not without.images_written
    for rel in (ANN_FILE, DET_FILE):
        assert (with_images.root / rel).read_bytes() == (without.root / rel).read_bytes()
    marker = json.loads((without.root / SYNTH_MARKER).read_text())
    assert marker["images_written"] is False and marker["images"] == 10


def test_layout_matches_the_registry(synth) -> None:
    layout = load_registry(REPO / "manifests").get("coco-wholebody").layout
    assert (layout.ann_file, layout.img_dir, layout.det_file) == (ANN_FILE, IMG_DIR, DET_FILE)
    assert synth.ann_file == synth.root / ANN_FILE and synth.det_file == synth.root / DET_FILE


def test_format_and_every_case_present(synth) -> None:
    data = json.loads(synth.ann_file.read_text())
    assert annotation_problems(data, synth.ann_file) == []
    assert data["categories"][0]["keypoints"][0] == "nose" and len(data["categories"][0]["skeleton"]) == 19
    anns = data["annotations"]
    assert len({a["id"] for a in anns}) == len(anns)
    per_image = {img["id"]: 0 for img in data["images"]}
    for a in anns:
        per_image[a["image_id"]] += 1
        for name, k in PARTS:
            assert len(a[name]) == 3 * k
        body = np.array(a["keypoints"]).reshape(17, 3)
        assert a["num_keypoints"] == int((body[:, 2] > 0).sum())
        assert (body[body[:, 2] == 0, :2] == 0).all()  # v=0: x=y=0, as in COCO
        for part in ("face", "lefthand", "righthand"):
            if not a[f"{part}_valid"]:
                assert a[f"{part}_box"] == [0.0] * 4 and not any(a[f"{part}_kpts"])
    crowds = [a for a in anns if a["iscrowd"]]
    assert crowds and all(
        a["num_keypoints"] == 0 and set(a["segmentation"]) == {"counts", "size"} for a in crowds
    )
    assert 0 in per_image.values()  # an image with nobody
    vis = np.concatenate([np.array(a["keypoints"][2::3]) for a in anns if not a["iscrowd"]])
    assert {0, 1, 2} <= set(vis.tolist())  # unlabelled, occluded and visible joints
    assert any(not a["face_valid"] for a in anns if not a["iscrowd"])
    assert any(a["lefthand_valid"] for a in anns) and any(a["face_valid"] for a in anns)
    dets = json.loads(synth.det_file.read_text())
    assert detection_problems(dets, synth.det_file, set(per_image)) == []
    assert all(d["category_id"] == 1 for d in dets)
    # misses and false positives exist: some images' box counts differ from their person counts
    det_per_image = {i: sum(d["image_id"] == i for d in dets) for i in per_image}
    assert det_per_image != {i: sum(a["image_id"] == i and not a["iscrowd"] for a in anns) for i in per_image}


def test_crowd_rle_and_areas_load_in_xtcocotools(synth) -> None:
    from xtcocotools.coco import COCO

    coco = COCO(str(synth.ann_file))
    for ann in coco.loadAnns(coco.getAnnIds()):
        mask = coco.annToMask(ann)
        if ann["iscrowd"]:
            assert mask.sum() == ann["area"]
        else:
            x, y, w, h = ann["bbox"]
            assert 0 < ann["area"] <= (w + 1) * (h + 1)


def test_drawn_joints_are_the_annotated_keypoints(synth) -> None:
    """The last-drawn (largest) person of an image is on top: its visible limb joints are white dots."""
    data = json.loads(synth.ann_file.read_text())
    checked = 0
    for img in data["images"]:
        people = [a for a in data["annotations"] if a["image_id"] == img["id"] and not a["iscrowd"]]
        if not people:
            continue
        top = max(people, key=lambda a: a["bbox"][3])
        pixels = cv2.imread(str(synth.img_dir / img["file_name"]))
        assert pixels.shape[:2] == (img["height"], img["width"])
        body = np.array(top["keypoints"]).reshape(17, 3)
        for x, y, v in body[5:]:
            if v == 2:
                assert pixels[int(y), int(x)].min() > 170, (img["file_name"], x, y)
                checked += 1
    assert checked > 10


def test_small_set_is_fast_and_full_size_scales(tmp_path: Path) -> None:
    t = time.perf_counter()
    synthesize(tmp_path / "small", n_images=8, seed=0)
    assert time.perf_counter() - t < 2.0
    big = synthesize(
        tmp_path / "big", n_images=200, seed=0, write_images=False, spec=SynthSpec(fp_per_image=19)
    )
    assert 15 < big.n_detections / 200 < 30  # ~104k boxes at 5000 images, like the real file


def test_refuses_foreign_folder_and_replaces_own(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("x")
    with pytest.raises(InputError, match="not a synthetic data root"):
        synthesize(foreign, n_images=2)
    root = tmp_path / "own"
    synthesize(root, n_images=8)
    synthesize(root, n_images=3)
    assert len(list((root / IMG_DIR).glob("*.jpg"))) == 3


def test_cli_synth(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(
            [
                "data",
                "synth",
                "--out",
                str(tmp_path / "s"),
                "--images",
                "3",
                "--seed",
                "2",
                "--max-side",
                "320",
            ]
        )
        == 0
    )
    assert "3 images" in capsys.readouterr().out
    data = json.loads((tmp_path / "s" / ANN_FILE).read_text())
    assert max(max(i["width"], i["height"]) for i in data["images"]) == 320


def test_failure_leaves_nothing_half_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cv2, "imencode", lambda *a, **k: (False, None))
    with pytest.raises(ZooError, match="could not encode"):
        synthesize(tmp_path / "out", n_images=3)
    assert list(tmp_path.iterdir()) == []
