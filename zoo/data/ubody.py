"""UBody2D val: frames of the intra-scene test videos plus their annotations in COCO-WholeBody format.

The published UBody number was measured on the file mmpose's
`tools/dataset_converters/ubody_kpts_to_coco.py` writes; this module reproduces its semantics
(not its code), because the set of frames and annotations *is* the benchmark:

- frames: `ffmpeg -i <video> -f image2 -r 30 <images>/<scene>/<video stem>/%06d.png` (the output
  rate 30 duplicates or drops frames of other-rate videos, so frame numbers match the annotations);
- a video is a test video when its name, cut at `_Trim` if it contains `Trim`, is listed in
  splits/intra_scene_test_list.npy; annotations are split the same way by their frame's folder name;
- an annotation is dropped when its frame image does not exist;
- the converter rewrites each image record's file_name to `<scene>/<file_name>` in place the first
  time it keeps an annotation of that image; a later annotation of the same image then looks for
  `images/<scene>/<scene>/...`, which does not exist, so it is dropped. Effectively only the first
  kept annotation of each image survives; this is reproduced literally;
- every kept annotation gets its own image record: image id = annotation id = running index.

Differences that do not change the val file: only test videos are extracted (mmpose extracts all),
scenes are visited in sorted order (mmpose: os.listdir order, which only permutes ids), and the
train and per-scene files are not written. The `-b:v 5626k` flag of mmpose's ffmpeg call is
dropped: it sets a video bitrate, which PNG frames do not have.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from copy import deepcopy
from pathlib import Path

import numpy as np

from zoo.data.coco_format import load_json, write_json
from zoo.errors import InputError, ZooError

log = logging.getLogger(__name__)

SPLIT_FILE = "splits/intra_scene_test_list.npy"
VAL_FILE = "annotations/val_annotations.json"
_CATEGORIES = [{"supercategory": "person", "id": 1, "name": "person"}]
FFMPEG_HINT = (
    "install it (pip install imageio-ffmpeg, which carries a static ffmpeg; or Debian/Ubuntu: apt-get install "
    "ffmpeg; conda: conda install -c conda-forge ffmpeg; macOS: brew install ffmpeg)"
)


def find_ffmpeg() -> str:
    """The ffmpeg to extract frames with: the one on PATH, else the static binary of the
    `imageio-ffmpeg` package (installed with the test extra), else a one-line ZooError."""
    found = shutil.which("ffmpeg")
    if found is not None:
        return found
    try:
        import imageio_ffmpeg
    except ImportError:
        raise ZooError(
            f"ffmpeg not found on PATH; the UBody frames are extracted with it: {FFMPEG_HINT}"
        ) from None
    return imageio_ffmpeg.get_ffmpeg_exe()


def _video_key(name: str) -> str:
    """The split-list name of a video folder or file stem: cut at `_Trim` when the name contains `Trim`."""
    return name.split("_Trim")[0] if "Trim" in name else name


def split_test_videos(root: Path) -> set[str]:
    """Names listed in splits/intra_scene_test_list.npy (a plain string array; never unpickled)."""
    path = root / SPLIT_FILE
    try:
        arr = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise InputError(f"{path}: split file not found") from None
    except ValueError as exc:
        raise InputError(f"{path}: not a plain numpy string array ({exc})") from None
    if arr.dtype.kind not in "US":
        raise InputError(f"{path}: expected an array of video names, got dtype {arr.dtype}")
    return {v.decode() if isinstance(v, bytes) else str(v) for v in arr.reshape(-1).tolist()}


def _extract_frames(ffmpeg: str, video: Path, out_dir: Path) -> int:
    """Frames of one video into `out_dir`, via a temporary folder so a broken run leaves nothing behind."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.frames-"))
    try:
        cmd = [
            ffmpeg,
            "-nostdin",
            "-loglevel",
            "error",
            "-i",
            str(video),
            "-f",
            "image2",
            "-r",
            "30",
            str(tmp / "%06d.png"),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            msg = " ".join(proc.stderr.split())[:300]
            raise ZooError(f"{video}: ffmpeg failed with exit code {proc.returncode}: {msg}")
        n = sum(1 for _ in tmp.glob("*.png"))
        if n == 0:
            raise ZooError(f"{video}: ffmpeg wrote no frames")
        tmp.rename(out_dir)
        return n
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def extract_test_frames(root: Path, names: set[str], jobs: int = 2) -> tuple[int, int]:
    """Extract every test video under videos/ not extracted yet; returns (videos extracted, frames)."""
    ffmpeg = find_ffmpeg()
    videos_root = root / "videos"
    todo = []
    for video in sorted(p for p in videos_root.rglob("*") if p.is_file() and not p.name.startswith(".")):
        stem = video.name.split(".")[0]
        if _video_key(stem) not in names:
            continue
        out_dir = root / "images" / video.parent.relative_to(videos_root) / stem
        if not out_dir.is_dir():
            todo.append((video, out_dir))
    log.info("extracting the frames of %d test videos with ffmpeg (%d at a time)", len(todo), max(1, jobs))
    frames = 0
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        for n in pool.map(lambda vo: _extract_frames(ffmpeg, *vo), todo):
            frames += n
    return len(todo), frames


def _scene_annotations(
    root: Path, scene: Path, names: set[str], start_id: int
) -> tuple[list[dict], list[dict]]:
    """The kept val (images, annotations) of one scene, ids from `start_id` (see the module docstring)."""
    ann_path = scene / "keypoint_annotation.json"
    data = load_json(ann_path)
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("images"), list)
        or not isinstance(data.get("annotations"), list)
    ):
        raise InputError(f"{ann_path}: expected a COCO file with 'images' and 'annotations' lists")
    images = {img["id"]: img for img in deepcopy(data["images"])}  # mutable copies, like COCO's index
    anns = {ann["id"]: ann for ann in data["annotations"]}  # COCO.anns: by id, in file order
    out_imgs, out_anns = [], []
    for ann in anns.values():
        try:
            img = images[ann["image_id"]]
        except KeyError:
            raise InputError(
                f"{ann_path}: annotation {ann.get('id')}: image_id {ann.get('image_id')} has no image record"
            ) from None
        file_name = img["file_name"][1:] if img["file_name"].startswith("/") else img["file_name"]
        parts = file_name.split("/")
        if len(parts) < 2:
            raise InputError(
                f"{ann_path}: image {img['id']}: file_name {img['file_name']!r} has no video folder"
            )
        if not (root / "images" / scene.name / file_name).exists():
            continue
        img["file_name"] = f"{scene.name}/{file_name}"  # in place: see the module docstring
        if _video_key(parts[-2]) in names:
            new_id = start_id + len(out_anns)
            out_anns.append({**deepcopy(ann), "id": new_id, "image_id": new_id})
            out_imgs.append({**deepcopy(img), "id": new_id})
    return out_imgs, out_anns


def convert_ubody(root: Path, jobs: int = 2) -> str:
    """Build images/ and annotations/val_annotations.json under a UBody root; returns a summary line."""
    root = Path(root)
    names = split_test_videos(root)
    n_videos, n_frames = extract_test_frames(root, names, jobs)
    scenes = sorted(p for p in (root / "annotations").iterdir() if (p / "keypoint_annotation.json").is_file())
    if not scenes:
        raise InputError(f"{root / 'annotations'}: no <scene>/keypoint_annotation.json found")
    images, annotations = [], []
    for scene in scenes:
        imgs, anns = _scene_annotations(root, scene, names, len(annotations))
        images += imgs
        annotations += anns
    if not annotations:
        raise ZooError(f"{root}: no annotation of a test video has its frame on disk; val set would be empty")
    write_json(root / VAL_FILE, {"images": images, "annotations": annotations, "categories": _CATEGORIES})
    return (f"{len(annotations)} val annotations from {len(scenes)} scenes in {root / VAL_FILE}; "
            f"{n_videos} test videos extracted now ({n_frames} frames)")  # fmt: skip
