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
- the crop and a PoseDataSample are packed with the config's PackPoseInputs meta keys and instance
  table, so `inputs` is the CHW tensor of the same dtype and every metainfo/gt field is equal;
- the items are re-cut in the main process into batches of exactly `batch_size` samples in the
  caller's order, so each batch holds the same samples as mmpose's DataLoader batch would.

tests/test_crops.py proves byte identity against mmpose's pipeline on the synthetic set, and that
`model.test_step` gives identical predictions; benchmarks/data_speed.py measures the gain. A
pipeline this module cannot reproduce exactly raises `UnsupportedPipeline` rather than guessing.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from zoo.errors import ZooError

# Transforms of the top-down test pipeline, in order; anything else is not reproduced here.
_PIPELINE = ("LoadImage", "GetBBoxCenterScale", "TopdownAffine", "PackPoseInputs")
# Keys that would change what the pipeline does or packs, beyond the boxes of a test set.
_CHANGING_KEYS = frozenset(
    {
        "img",
        "bbox_center",
        "bbox_scale",
        "instance_mapping_table",
        "label_mapping_table",
        "field_mapping_table",
    }
)
# In mmpose's results dict but not built here, so a PackPoseInputs that packs them is not reproduced.
_NOT_BUILT = frozenset({"img", "transformed_keypoints", "dataset"})


class UnsupportedPipeline(ZooError):
    """The config's test pipeline differs from the top-down one this module reproduces exactly."""


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
    meta_keys: tuple[str, ...]  # PackPoseInputs
    instance_keys: tuple[tuple[str, str], ...]  # (results key, gt_instances field)
    unsupported_keys: frozenset[str]  # data-info keys that would make PackPoseInputs pack more

    @classmethod
    def from_pipeline(cls, transforms: Sequence[Any]) -> CropRecipe:
        names = tuple(type(t).__name__ for t in transforms)
        if names != _PIPELINE:
            raise UnsupportedPipeline(
                f"test pipeline {' -> '.join(names)}: the fast data path reproduces only "
                f"{' -> '.join(_PIPELINE)} (use the reference path)"
            )
        load, center_scale, affine, pack = transforms
        if pack.pack_transformed:
            raise UnsupportedPipeline("test pipeline PackPoseInputs(pack_transformed=True) is not reproduced")
        packed = _NOT_BUILT.intersection([*pack.meta_keys, *pack.instance_mapping_table])
        if packed:
            raise UnsupportedPipeline(
                f"test pipeline PackPoseInputs packs {sorted(packed)[0]}, which is not reproduced"
            )
        w, h = affine.input_size
        return cls(
            load=load,
            padding=center_scale.padding,
            input_size=(w, h),
            use_udp=bool(affine.use_udp),
            meta_keys=tuple(pack.meta_keys),
            instance_keys=tuple(pack.instance_mapping_table.items()),
            unsupported_keys=_CHANGING_KEYS | set(pack.label_mapping_table) | set(pack.field_mapping_table),
        )


def _detached(value: Any) -> Any:
    """A deep copy of a metainfo value, as PoseDataSample.set_metainfo makes, without deepcopy's cost
    for the values a top-down sample carries: immutables as they are, plain arrays copied."""
    if isinstance(value, (str, int, float, type(None))):
        return value
    if isinstance(value, tuple) and all(isinstance(v, (str, int, float)) for v in value):
        return value
    if isinstance(value, np.ndarray) and value.dtype != object:
        return value.copy()
    return copy.deepcopy(value)


def _copier(value: Any) -> Callable[[Any], Any]:
    """How to detach a value shared by every sample: decided once, since flip_indices (a list of 133
    ints) is copied for every box."""
    if isinstance(value, list) and all(type(v) is int for v in value):
        return list
    return _detached


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
    `max_crops` long; each item decodes its image once and returns all of its crops."""

    def __init__(self, dataset: Any, indices: Sequence[int], max_crops: int = 64) -> None:
        _stack()
        from mmengine.dataset import BaseDataset
        from mmpose.datasets.datasets.base import BaseCocoStyleDataset

        if max_crops < 1:
            raise ValueError(f"max_crops must be positive, got {max_crops}")
        self.dataset = dataset
        self.recipe = CropRecipe.from_pipeline(dataset.pipeline.transforms)
        # mmpose's get_data_info = the stored sample + deep copies of the dataset metainfo. The
        # metainfo is the same for every sample, so it is read once and detached per packed field
        # (as set_metainfo's deep copy would); a dataset that adds anything else is asked per sample.
        plain = type(dataset).get_data_info is BaseCocoStyleDataset.get_data_info
        self._raw = BaseDataset.get_data_info if plain else None
        self._shared: dict[str, Any] = {}
        if self._raw is not None and len(indices):
            full, raw = dataset.get_data_info(indices[0]), self._raw(dataset, indices[0])
            self._shared = {k: v for k, v in full.items() if k not in raw}
        self._copiers = {k: _copier(v) for k, v in self._shared.items()}
        self.chunks: list[list[int]] = []
        last_path = None
        for i in indices:
            path = (self._raw or type(dataset).get_data_info)(dataset, i)["img_path"]
            if path != last_path or len(self.chunks[-1]) == max_crops:
                self.chunks.append([])
            self.chunks[-1].append(int(i))
            last_path = path

    def _info(self, i: int) -> dict[str, Any]:
        if self._raw is None:
            return self.dataset.get_data_info(i)
        info = self._raw(self.dataset, i)
        info.update(self._shared)
        return info

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, k: int) -> dict[str, Any]:
        """{'inputs': (n, C, H, W) tensor, 'data_samples': n PoseDataSamples} for chunk k."""
        r = self.recipe
        infos = [self._info(i) for i in self.chunks[k]]
        image = r.load({"img_path": infos[0]["img_path"]})  # LoadImage: img, img_shape, ori_shape
        img = image["img"]
        w, h = r.input_size
        for info in infos:
            clash = r.unsupported_keys.intersection(info)
            if clash:
                raise UnsupportedPipeline(
                    f"sample {info.get('id')} ({info['img_path']}): field {sorted(clash)[0]} is not reproduced"
                )
        centers, scales, matrices = self._geometry(infos)
        crops = _warp_all(img, matrices, (int(w), int(h)))
        samples = []
        for n, info in enumerate(infos):
            center, scale = centers[n : n + 1].copy(), scales[n : n + 1].copy()
            info.update(
                img_shape=image["img_shape"], ori_shape=image["ori_shape"], bbox_center=center, bbox_scale=scale,
                input_size=(w, h), input_center=center[0], input_scale=scale[0],
            )  # fmt: skip
            if info.get("keypoints") is None:  # TopdownAffine marks a keypoint-less sample this way
                info["keypoints_visible"] = np.ones((1, 1, 1))
            samples.append(self._pack(info))
        return {"inputs": torch.from_numpy(crops), "data_samples": samples}

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

    def _pack(self, fields: dict[str, Any]) -> Any:
        """The PoseDataSample PackPoseInputs makes from `fields`: same gt_instances, an empty
        gt_instance_labels, the same metainfo (detached, as set_metainfo's deep copy leaves it)."""
        from mmengine.structures import InstanceData
        from mmpose.structures import PoseDataSample

        r = self.recipe
        gt = InstanceData()
        for key, name in r.instance_keys:
            if key in fields:  # set_field: InstanceData's per-field length re-check is skipped (all length 1)
                gt.set_field(fields[key], name)
        sample = PoseDataSample()
        sample.gt_instances = gt
        sample.gt_instance_labels = InstanceData()
        for key in r.meta_keys:
            if key in fields:
                sample.set_field(self._copiers.get(key, _detached)(fields[key]), key, field_type="metainfo")
        return sample


def _no_collate(item: dict[str, Any]) -> dict[str, Any]:
    return item


class CropLoader:
    """Batches of `model.test_step`'s input, dict(inputs=[CHW tensors], data_samples=[...]), of
    exactly `batch_size` samples (the last may be smaller), in the order of `indices`."""

    def __init__(
        self,
        dataset: Any,
        indices: Sequence[int],
        batch_size: int,
        workers: int = 0,
        pin_memory: bool = False,
        max_crops: int = 64,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.crops = CropDataset(dataset, indices, max_crops)
        self.samples = len(indices)
        self.batch_size = batch_size
        self.workers = workers
        self.pin_memory = pin_memory

    def __len__(self) -> int:
        return math.ceil(self.samples / self.batch_size)

    def __iter__(self) -> Iterator[dict[str, list[Any]]]:
        loader = DataLoader(
            self.crops,
            batch_size=None,
            num_workers=self.workers,
            collate_fn=_no_collate,
            pin_memory=self.pin_memory,
        )
        inputs: list[torch.Tensor] = []
        samples: list[Any] = []
        for item in loader:
            inputs.extend(item["inputs"].unbind(0))
            samples.extend(item["data_samples"])
            while len(samples) >= self.batch_size:
                yield {"inputs": inputs[: self.batch_size], "data_samples": samples[: self.batch_size]}
                del inputs[: self.batch_size], samples[: self.batch_size]
        if samples:
            yield {"inputs": inputs, "data_samples": samples}


def fast_loader(
    dataset: Any, indices: Sequence[int], batch_size: int, workers: int = 0, pin_memory: bool = False
) -> CropLoader:
    """The drop-in for `DataLoader(Subset(dataset, indices), batch_size, collate_fn=pseudo_collate)`
    in `zoo.evaluate.infer`: same batches, same tensors and samples, each image decoded once."""
    return CropLoader(dataset, indices, batch_size, workers=workers, pin_memory=pin_memory)
