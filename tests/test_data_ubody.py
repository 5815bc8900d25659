"""zoo.data.ubody on a tiny UBody layout with real videos (cv2-written, ffmpeg-extracted), checked
against the module's stated rules and against mmpose's own converter run on a copy of the layout."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from zoo.cli import main
from zoo.data import convert_ubody, datasets_lock, load_registry, prepare, verify
from zoo.data.coco_format import PARTS
from zoo.data.ubody import find_ffmpeg
from zoo.errors import InputError, ZooError

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(
    shutil.which("ffmpeg") is None and importlib.util.find_spec("imageio_ffmpeg") is None,
    reason="needs an ffmpeg (the test extra installs imageio-ffmpeg, which carries one)",
)


def _video(path: Path, frames: int = 5) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (64, 48))
    for i in range(frames):
        writer.write(np.full((48, 64, 3), 40 * i, np.uint8))
    writer.release()
    assert path.stat().st_size > 0


def _ann(aid: int, image_id: int) -> dict:
    parts = {name: [5.0, 6.0, 1.0] * k for name, k in PARTS}
    return {"id": aid, "image_id": image_id, "category_id": 1, "bbox": [1.0, 2.0, 30.0, 40.0], "area": 1200.0, "iscrowd": 0,
            "num_keypoints": 17, "segmentation": [], "valid_label": 1, "face_box": [0.0] * 4,
            "lefthand_box": [0.0] * 4, "righthand_box": [0.0] * 4, "face_valid": True, "lefthand_valid": False,
            "righthand_valid": False, "foot_valid": True, **parts}  # fmt: skip


def _img(iid: int, name: str) -> dict:
    return {"id": iid, "file_name": name, "width": 64, "height": 48}


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


@pytest.fixture
def ubody(tmp_path: Path) -> Path:
    """Two scenes: test videos vidA_Trim1 (split name vidA) and talk1, train video vidB."""
    root = tmp_path / "UBody"
    _video(root / "videos" / "Magic_show" / "vidA_Trim1.mp4")
    _video(root / "videos" / "Magic_show" / "vidB.mp4", frames=3)
    _video(root / "videos" / "Speech" / "talk1.mp4", frames=4)
    images = [_img(1, "/vidA_Trim1/000001.png"), _img(2, "vidA_Trim1/000002.png"), _img(3, "/vidA_Trim1/000003.png"),
              _img(4, "/vidB/000001.png"), _img(5, "/vidA_Trim1/000099.png")]  # fmt: skip
    anns = [_ann(10, 1), _ann(11, 3), _ann(12, 3), _ann(13, 4), _ann(14, 5), _ann(15, 2)]
    _write_json(
        root / "annotations" / "Magic_show" / "keypoint_annotation.json",
        {"images": images, "annotations": anns},
    )
    _write_json(root / "annotations" / "Speech" / "keypoint_annotation.json",
                {"images": [_img(1, "/talk1/000002.png")], "annotations": [_ann(1, 1)]})  # fmt: skip
    (root / "splits").mkdir()
    np.save(root / "splits" / "intra_scene_test_list.npy", np.array(["vidA", "talk1", "elsewhere"]))
    return root


def test_convert_follows_mmpose_semantics(ubody: Path) -> None:
    summary = convert_ubody(ubody)
    assert "4 val annotations from 2 scenes" in summary and "2 test videos" in summary
    assert sorted(p.name for p in (ubody / "images" / "Magic_show" / "vidA_Trim1").iterdir()) == [
        f"{i:06d}.png" for i in range(1, 6)
    ]
    assert not (ubody / "images" / "Magic_show" / "vidB").exists()  # train video: not extracted
    val = json.loads((ubody / "annotations" / "val_annotations.json").read_text())
    # kept: 10 (frame 1), 11 (frame 3), 15 (frame 2), then Speech's 1. Dropped: 12 (second annotation of
    # frame 3, the in-place rewrite), 13 (train video), 14 (frame 99 does not exist).
    assert [i["file_name"] for i in val["images"]] == ["Magic_show/vidA_Trim1/000001.png", "Magic_show/vidA_Trim1/000003.png",
                                                        "Magic_show/vidA_Trim1/000002.png", "Speech/talk1/000002.png"]  # fmt: skip
    assert [(a["id"], a["image_id"]) for a in val["annotations"]] == [(0, 0), (1, 1), (2, 2), (3, 3)]
    assert [i["id"] for i in val["images"]] == [0, 1, 2, 3]
    assert val["annotations"][0]["valid_label"] == 1 and len(val["annotations"][0]["face_kpts"]) == 204
    assert val["categories"] == [{"supercategory": "person", "id": 1, "name": "person"}]


@pytest.mark.slow
def test_same_val_set_as_mmpose_converter(ubody: Path, tmp_path: Path) -> None:
    """mmpose's tools/dataset_converters/ubody_kpts_to_coco.py on a copy gives the same records (its
    ids follow os.listdir order, so records are compared without ids)."""
    import mmpose

    theirs_root = tmp_path / "theirs" / "UBody"
    shutil.copytree(ubody, theirs_root)
    tool = Path(mmpose.__file__).parent / ".mim" / "tools" / "dataset_converters" / "ubody_kpts_to_coco.py"
    # Their tool shells out to a bare `ffmpeg`: give it the one zoo uses, under that name, on PATH.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ffmpeg").symlink_to(find_ffmpeg())
    subprocess.run(
        [sys.executable, str(tool), "--data-root", str(theirs_root)],
        check=True,
        capture_output=True,
        cwd=tmp_path,
        env={**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"},
    )
    convert_ubody(ubody)

    def records(root: Path) -> list[str]:
        val = json.loads((root / "annotations" / "val_annotations.json").read_text())
        images = {i["id"]: i for i in val["images"]}
        out = []
        for a in val["annotations"]:
            img = {k: v for k, v in images[a["image_id"]].items() if k != "id"}
            out.append(
                json.dumps([img, {k: v for k, v in a.items() if k not in ("id", "image_id")}], sort_keys=True)
            )
        return sorted(out)

    assert records(ubody) == records(theirs_root) and len(records(ubody)) == 4


def test_prepare_and_verify_through_the_registry(
    ubody: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dataset = load_registry(REPO / "manifests").get("ubody")
    lock = datasets_lock(tmp_path)  # UBody has no downloads: nothing is pinned
    empty = prepare(dataset, tmp_path / "empty", lock=lock)
    assert not empty.complete and {s.status for s in empty.steps} == {"manual", "pending"}
    assert {s.path for s in empty.steps if s.status == "manual"} >= {
        "videos",
        "splits/intra_scene_test_list.npy",
    }
    assert main(["data", "prepare", "ubody", "--root", str(ubody)]) == 0
    assert "val annotations" in capsys.readouterr().out
    assert verify(dataset, ubody).ok
    again = prepare(dataset, ubody, lock=lock)  # idempotent: nothing rebuilt
    assert {s.status for s in again.steps} == {"present"}
    victim = ubody / "images" / "Speech" / "talk1" / "000002.png"
    victim.unlink()
    report = verify(dataset, ubody)
    assert not report.ok and any(
        f.message.startswith(f"{victim}: annotated image missing") for f in report.findings
    )
    assert not lock.path.exists()


def test_missing_ffmpeg_and_bad_split(ubody: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    np.save(ubody / "splits" / "intra_scene_test_list.npy", np.array([{"a": 1}], dtype=object))
    with pytest.raises(InputError, match="intra_scene_test_list.npy: not a plain numpy string array"):
        convert_ubody(ubody)
    np.save(ubody / "splits" / "intra_scene_test_list.npy", np.array(["vidA"]))
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # not installed either
    with pytest.raises(ZooError, match="ffmpeg not found on PATH.*pip install imageio-ffmpeg"):
        convert_ubody(ubody)
