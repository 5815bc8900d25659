"""The fast top-down data path: decode each image once and warp all of its person boxes from it.

Why: mmpose's test pipeline (LoadImage -> GetBBoxCenterScale -> TopdownAffine -> PackPoseInputs)
runs once per box, so an image with 20 detector boxes is read and JPEG-decoded 20 times, and the
decode is most of the data time. This module keeps every number of that pipeline and changes only
the schedule:

- a DataLoader item is one image (or a run of at most `max_crops` of its boxes, to bound memory),
  decoded once by the config's own LoadImage transform (same file backend, decoder, flags, dtype);
- each box gets its center/scale from mmpose's `bbox_xyxy2cs` with the config's padding and the
  TopdownAffine aspect-ratio fix, its warp matrix bit for bit as mmpose's `get_warp_matrix` makes it
  (computed for the whole run at once; UDP and rotated boxes call mmpose's own functions), and its
  crop from `cv2.warpAffine(..., INTER_LINEAR)` with cv2's default constant-zero border, as
  TopdownAffine does;
- instead of a PoseDataSample per box (whose metainfo the model's data preprocessor deep-copies,
  thousands of copies per box), an item carries what the model and mmpose's metric read from one:
  the (n, C, H, W) crops laid out as PackPoseInputs lays them out, and per box the sample and image
  ids, the box center and scale after TopdownAffine, and the bbox score, in the dtypes mmpose has.

tests/test_crops.py proves byte identity against mmpose's pipeline (`dataset[i]`) on the synthetic
set; benchmarks/data_speed.py measures the gain. A pipeline this module cannot reproduce exactly
raises `UnsupportedPipeline` rather than guessing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from zoo.errors import ZooError

# Transforms of the top-down test pipeline, in order; anything else is not reproduced here.
_PIPELINE = ("LoadImage", "GetBBoxCenterScale", "TopdownAffine", "PackPoseInputs")
# Data-info keys that would change the crop or the box geometry (a pre-loaded image, a given center/scale).
_CHANGING_KEYS = frozenset({"img", "bbox_center", "bbox_scale"})


class UnsupportedPipeline(ZooError):
    """The config's test pipeline differs from the top-down one this module reproduces exactly."""


class ImageError(ZooError):
    """An image of the data set is missing or does not decode; the message names the file."""


def unreadable(path: str, exc: BaseException, missing: bool | None = None) -> str:
    """The one line naming an image the pipeline could not read (the fast and reference paths alike);
    `missing` defaults to what the exception says."""
    missing = isinstance(exc, FileNotFoundError) if missing is None else missing
    return f"{path}: {'no such file' if missing else 'does not decode as an image'} ({type(exc).__name__})"


def _stack() -> None:
    from zoo import compat

    compat.apply()


@dataclass(frozen=True)
class CropRecipe:
    """What the config's test pipeline asks for, read from its transform instances."""

    load: Any  # the pipeline's LoadImage instance: decoding exactly as the config says
    padding: float  # GetBBoxCenterScale
    input_size: tuple[int, int]  # TopdownAffine (w, h)
    use_udp: bool

    @classmethod
    def from_pipeline(cls, transforms: Sequence[Any]) -> CropRecipe:
        names = tuple(type(t).__name__ for t in transforms)
        if names != _PIPELINE:
            raise UnsupportedPipeline(
                f"test pipeline {' -> '.join(names)}: the fast data path reproduces only "
                f"{' -> '.join(_PIPELINE)} (use the reference path)"
            )
        load, center_scale, affine, _ = transforms
        w, h = affine.input_size
        return cls(load=load, padding=center_scale.padding, input_size=(w, h), use_udp=bool(affine.use_udp))

    def key(self) -> tuple[Any, ...]:
        """What decides the crops: rows whose datasets and recipes agree share one data pass."""
        return (repr(self.load), self.padding, self.input_size, self.use_udp)


def _fix_aspect_ratio(scale: np.ndarray, aspect_ratio: float) -> np.ndarray:
    """TopdownAffine's reshaping of (n, 2) box scales to the input's w/h, in the same dtype arithmetic."""
    w, h = scale[:, :1], scale[:, 1:]
    return np.where(w > h * aspect_ratio, np.hstack([w, w / aspect_ratio]), np.hstack([h * aspect_ratio, h]))


def _third_points(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """mmpose's `_get_3rd_point` for (n, 2) rows: b plus (a - b) turned 90 degrees anticlockwise."""
    d = a - b
    return b + np.stack([-d[:, 1], d[:, 0]], axis=1)


def _warp_matrices(center: np.ndarray, scale: np.ndarray, input_size: tuple[int, int]) -> list[np.ndarray]:
    """mmpose's `get_warp_matrix(center, scale, rot=0, output_size)` for n boxes at once, bit for bit.

    The three point pairs are built with the same float32/float64 steps as mmpose builds them one box
    at a time, and cv2.getAffineTransform solves each box as there; only the numpy overhead of n
    small calls goes (25 us a box). tests/test_crops.py compares the matrices bytewise with mmpose's.
    """
    w, h = input_size
    shift = np.zeros(2)
    src_dir = np.zeros(center.shape)
    src_dir[:, 0] = scale[:, 0] * -0.5  # (-w/2, 0) turned by 0 degrees
    src = np.empty((len(center), 3, 2), dtype=np.float32)
    src[:, 0] = center + scale * shift
    src[:, 1] = center + src_dir + scale * shift
    src[:, 2] = _third_points(src[:, 0], src[:, 1])
    dst = np.empty((1, 3, 2), dtype=np.float32)
    dst[:, 0] = [w * 0.5, h * 0.5]
    dst[:, 1] = np.array([w * 0.5, h * 0.5]) + np.array([w * -0.5, 0.0])
    dst[:, 2] = _third_points(dst[:, 0], dst[:, 1])
    return [cv2.getAffineTransform(points, dst[0]) for points in src]


def _warp_all(img: np.ndarray, matrices: list[np.ndarray], size: tuple[int, int]) -> np.ndarray:
    """TopdownAffine's `cv2.warpAffine(img, matrix, size, flags=cv2.INTER_LINEAR)` (constant 0 border)
    for each matrix, laid out as PackPoseInputs' image_to_tensor lays a crop out: (n, C, H, W).

    cv2.split fills the CHW planes without a strided copy (cheaper than torch's permute().contiguous()).
    A uint8 BGR image is warped as BGRA: OpenCV's bilinear warp of 8-bit images is the same integer
    arithmetic for each channel whatever their number, and its 4-channel loop is vectorised (about
    20% faster); the extra channel is dropped. The tests and the benchmark compare every crop's bytes.
    """
    w, h = size
    channels = img.shape[2] if img.ndim == 3 else 1
    crops = np.empty((len(matrices), channels, h, w), dtype=img.dtype)
    as_bgra = img.dtype == np.uint8 and channels == 3
    src = cv2.cvtColor(img, cv2.COLOR_BGR2BGRA) if as_bgra else img
    alpha = np.empty((h, w), dtype=img.dtype)
    for n, matrix in enumerate(matrices):
        crop = cv2.warpAffine(src, matrix, (w, h), flags=cv2.INTER_LINEAR)
        if crop.ndim == 2:
            crops[n, 0] = crop
        else:
            cv2.split(crop, [*crops[n], alpha] if as_bgra else list(crops[n]))
    return crops


class CropDataset(Dataset):
    """Items are runs of consecutive samples (of `indices`) that share one image, at most
    `max_crops` long; each item decodes its image once and returns all of its crops (`__getitem__`)."""

    def __init__(self, dataset: Any, indices: Sequence[int], max_crops: int = 64) -> None:
        _stack()
        from mmengine.dataset import BaseDataset
        from mmpose.datasets.datasets.base import BaseCocoStyleDataset

        if max_crops < 1:
            raise ValueError(f"max_crops must be positive, got {max_crops}")
        self.dataset = dataset
        self.recipe = CropRecipe.from_pipeline(dataset.pipeline.transforms)
        # mmpose's get_data_info = the stored sample + deep copies of the dataset metainfo, which no
        # crop or box field reads: the stored sample alone is read unless the class adds to it.
        plain = type(dataset).get_data_info is BaseCocoStyleDataset.get_data_info
        self._info = (lambda i: BaseDataset.get_data_info(dataset, i)) if plain else dataset.get_data_info
        self.chunks: list[list[int]] = []
        last_path = None
        for i in indices:
            path = self._info(i)["img_path"]
            if path != last_path or len(self.chunks[-1]) == max_crops:
                self.chunks.append([])
            self.chunks[-1].append(int(i))
            last_path = path

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, k: int) -> dict[str, Any]:
        """Chunk k: `crops` (n, C, H, W) tensor (PackPoseInputs' layout and dtype) and per box
        `sample_id`, `image_id`, `center`, `scale` (TopdownAffine's input_center/input_scale, also
        bbox_center/bbox_scale) and `bbox_score`, as numpy arrays in mmpose's dtypes; or `error`
        naming the image when it cannot be read (a worker's exception would arrive as a traceback)."""
        r = self.recipe
        infos = [self._info(i) for i in self.chunks[k]]
        for info in infos:
            clash = _CHANGING_KEYS.intersection(info)
            if clash:
                raise UnsupportedPipeline(
                    f"sample {info.get('id')} ({info['img_path']}): field {sorted(clash)[0]} is not reproduced"
                )
        path = infos[0]["img_path"]
        try:
            img = r.load({"img_path": path})["img"]  # LoadImage, as the pipeline decodes
        except Exception as exc:  # noqa: BLE001 - reported (in the main process) as one line naming the file
            return {"error": unreadable(path, exc)}
        centers, scales, matrices = self._geometry(infos)
        crops = _warp_all(img, matrices, (int(r.input_size[0]), int(r.input_size[1])))
        return {
            "crops": torch.from_numpy(crops),
            "sample_id": np.array([info["id"] for info in infos], dtype=np.int64),
            "image_id": np.array([info["img_id"] for info in infos], dtype=np.int64),
            "center": centers,
            "scale": scales,
            # PackPoseInputs packs bbox_score as gt_instances.bbox_scores; a sample without one scores 1
            "bbox_score": np.concatenate([info.get("bbox_score", np.ones(1)) for info in infos]),
        }

    def _geometry(self, infos: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        """GetBBoxCenterScale + TopdownAffine's box arithmetic for a run of samples, elementwise as
        mmpose does it per sample: (n, 2) centers, (n, 2) aspect-fixed scales, n 2x3 warp matrices."""
        from mmpose.structures.bbox import bbox_xyxy2cs, get_udp_warp_matrix, get_warp_matrix

        r = self.recipe
        w, h = r.input_size
        for info in infos:
            if np.shape(info["bbox"]) != (1, 4):
                raise UnsupportedPipeline(
                    f"sample {info.get('id')}: bbox of shape {np.shape(info['bbox'])}, top-down needs one box"
                )
        center, scale = bbox_xyxy2cs(np.concatenate([info["bbox"] for info in infos]), padding=r.padding)
        scale = _fix_aspect_ratio(scale, aspect_ratio=w / h)
        if not r.use_udp and not any("bbox_rotation" in info for info in infos):
            return center, scale, _warp_matrices(center, scale, (w, h))
        warp_matrix = get_udp_warp_matrix if r.use_udp else get_warp_matrix
        rots = [info["bbox_rotation"][0] if "bbox_rotation" in info else 0.0 for info in infos]
        return (
            center,
            scale,
            [
                warp_matrix(c, s, rot, output_size=(w, h))
                for c, s, rot in zip(center, scale, rots, strict=True)
            ],
        )


def _no_collate(item: dict[str, Any]) -> dict[str, Any]:
    return item


def chunk_loader(
    dataset: Any, indices: Sequence[int], workers: int = 0, pin_memory: bool = False, max_crops: int = 64
) -> DataLoader:
    """The chunks of `CropDataset(dataset, indices)` in order, decoded by `workers` processes."""
    return DataLoader(
        CropDataset(dataset, indices, max_crops),
        batch_size=None,
        num_workers=workers,
        collate_fn=_no_collate,
        pin_memory=pin_memory,
    )
