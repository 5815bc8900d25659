"""zoo.crops: the fast data path hands `model.test_step` exactly what mmpose's per-box pipeline does.

Identity is checked sample by sample against mmpose's own dataset (`dataset[i]`, i.e. LoadImage ->
GetBBoxCenterScale -> TopdownAffine -> PackPoseInputs): the crop bytes, dtype and shape, and every
field of the PoseDataSample. Configs: a plain 256x192 detector-box row (res50), the CSPNeXt "UDP"
row as shipped (GT boxes, TopdownAffine without use_udp), the same row with use_udp=True (the UDP
warp matrix), a 384x288 row and the UBody2D row (its own dataset class and config).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from zoo.manifest import load_manifests

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "manifests"

# (case id, row id, force TopdownAffine use_udp)
CASES = [
    ("res50", "res50-256x192", False),
    ("cspnext-as-shipped", "cspnext-m-udp-256x192", False),
    ("cspnext-use-udp", "cspnext-m-udp-256x192", True),
    ("384x288", "hrnet-w48-dark-plus-384x288", False),
    ("ubody2d", "hrnet-w32-ubody2d-256x192", False),
]


@pytest.fixture(scope="module")
def crowded_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """5 images with ~7 detector boxes each (many near or over the image border), so images have
    several crops, padded boxes leave the image, and runs can be split."""
    from zoo.data import SynthSpec, synthesize

    return synthesize(
        tmp_path_factory.mktemp("crowd"), n_images=5, seed=3, spec=SynthSpec(fp_per_image=6)
    ).root


@pytest.fixture(scope="module")
def roots(crowded_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The crowded set as each dataset's data root (UBody2D: its own layout, same files)."""
    import shutil

    from zoo.data import dataset_paths, load_registry

    registry = load_registry(MANIFESTS)
    coco = dataset_paths(registry.get("coco-wholebody-v1.0-val"), crowded_root)
    ubody = dataset_paths(registry.get("ubody2d-val"), tmp_path_factory.mktemp("ubody"))
    ubody.ann_file.parent.mkdir(parents=True)
    shutil.copytree(coco.img_dir, ubody.img_dir)
    shutil.copyfile(coco.ann_file, ubody.ann_file)
    return {"coco-wholebody-v1.0-val": coco.root, "ubody2d-val": ubody.root}


def _config(row_id: str, use_udp: bool, root: Path) -> Any:
    from zoo.data import dataset_paths, load_registry
    from zoo.evaluate import load_config

    row = load_manifests(MANIFESTS).row(row_id)
    cfg = load_config(row, dataset_paths(load_registry(MANIFESTS).get(row.dataset), root), workers=0)
    if use_udp:
        for step in cfg.test_dataloader.dataset.pipeline:
            if step["type"] == "TopdownAffine":
                step["use_udp"] = True
    return cfg


def _dataset(row_id: str, use_udp: bool, root: Path) -> Any:
    from zoo.evaluate import build_dataset

    return build_dataset(_config(row_id, use_udp, root))


def _assert_same(a: Any, b: Any, where: str) -> None:
    """Equal values of equal types; arrays and tensors also in dtype and shape."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert a.numpy().tobytes() == b.numpy().tobytes(), f"{where}: bytes differ"
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert a.tobytes() == b.tobytes(), f"{where}: values differ"
    elif isinstance(a, dict):
        assert sorted(a) == sorted(b), f"{where}: keys {sorted(a)} != {sorted(b)}"
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for n, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{where}[{n}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _assert_same_sample(ref: dict[str, Any], inputs: torch.Tensor, sample: Any, where: str) -> None:
    _assert_same(ref["inputs"], inputs, f"{where} inputs")
    want = ref["data_samples"]
    assert type(sample) is type(want)
    assert sorted(sample.keys()) == sorted(want.keys()), where
    _assert_same(want.metainfo, sample.metainfo, f"{where} metainfo")
    fields = sorted(want.keys())
    for field in fields:
        _assert_same(want.get(field).to_dict(), sample.get(field).to_dict(), f"{where} {field}")
        _assert_same(want.get(field).metainfo, sample.get(field).metainfo, f"{where} {field}.metainfo")


def _flatten(batches: list[dict[str, list[Any]]]) -> list[tuple[torch.Tensor, Any]]:
    return [pair for b in batches for pair in zip(b["inputs"], b["data_samples"], strict=True)]


@pytest.mark.parametrize(("case", "row_id", "use_udp"), CASES, ids=[c[0] for c in CASES])
def test_crops_and_samples_identical_to_mmpose_pipeline(
    case: str, row_id: str, use_udp: bool, roots: dict[str, Path]
) -> None:
    from zoo.crops import fast_loader

    ds = _dataset(row_id, use_udp, roots[load_manifests(MANIFESTS).row(row_id).dataset])
    assert ds.pipeline.transforms[2].use_udp is use_udp  # the case tests what it says
    indices = list(range(len(ds)))
    assert len(indices) >= 5
    batches = list(fast_loader(ds, indices, batch_size=4))
    assert [len(b["inputs"]) for b in batches] == [
        min(4, len(indices) - s) for s in range(0, len(indices), 4)
    ]
    pairs = _flatten(batches)
    assert len(pairs) == len(indices)
    for i, (inputs, sample) in zip(indices, pairs, strict=True):
        _assert_same_sample(ds[i], inputs, sample, f"{case} sample {i}")


@pytest.mark.parametrize("input_size", [(192, 256), (288, 384)])
def test_warp_matrices_equal_mmpose_bytewise(input_size: tuple[int, int]) -> None:
    """The batched warp matrices are mmpose's get_warp_matrix, bit for bit, on boxes of every size
    (zero-size and sub-pixel ones too) anywhere in and around an image."""
    from mmpose.structures.bbox import bbox_xyxy2cs, get_warp_matrix

    from zoo.crops import _fix_aspect_ratio, _warp_matrices

    rng = np.random.default_rng(0)
    xy = rng.uniform(-300.0, 1000.0, (3000, 2))
    wh = np.exp(rng.uniform(np.log(0.01), np.log(3000.0), (3000, 2)))
    wh[:20] = 0.0
    center, scale = bbox_xyxy2cs(np.concatenate([xy, xy + wh], axis=1).astype(np.float32), padding=1.25)
    scale = _fix_aspect_ratio(scale, aspect_ratio=input_size[0] / input_size[1])
    got = _warp_matrices(center, scale, input_size)
    for k, matrix in enumerate(got):
        want = get_warp_matrix(center[k], scale[k], 0.0, output_size=input_size)
        assert matrix.dtype == want.dtype and matrix.tobytes() == want.tobytes(), f"box {k}"


def test_order_kept_with_workers_split_images_and_strided_indices(crowded_root: Path) -> None:
    """A rank's share (every 2nd sample), images split into runs of 2 crops, 2 worker processes."""
    from zoo.crops import CropLoader

    ds = _dataset("res50-256x192", False, crowded_root)
    indices = list(range(len(ds)))[1::2]
    loader = CropLoader(ds, indices, batch_size=3, workers=2, max_crops=2)
    assert max(len(c) for c in loader.crops.chunks) == 2
    assert len({ds.get_data_info(i)["img_path"] for i in indices}) < len(
        loader.crops.chunks
    )  # images were split
    batches = list(loader)
    assert len(batches) == len(loader) == -(-len(indices) // 3)
    pairs = _flatten(batches)
    assert [s.id for _, s in pairs] == [ds.get_data_info(i)["id"] for i in indices]
    for i, (inputs, sample) in zip(indices, pairs, strict=True):
        _assert_same_sample(ds[i], inputs, sample, f"sample {i}")


def test_dataset_with_its_own_get_data_info_is_asked_per_sample(roots: dict[str, Path]) -> None:
    """A dataset class that changes get_data_info may add per-sample fields: nothing is shared then.
    Here it also rotates the boxes, which TopdownAffine honours (mmpose's matrices are used then)."""
    from zoo.crops import fast_loader

    ds = _dataset("res50-256x192", False, roots["coco-wholebody-v1.0-val"])

    class Tagged(type(ds)):
        def get_data_info(self, idx: int) -> dict:
            info = super().get_data_info(idx)
            return {
                **info,
                "dataset_name": f"tagged-{idx}",
                "bbox_rotation": np.array([7.5 * idx], np.float32),
            }

    ds.__class__ = Tagged
    indices = list(range(len(ds)))
    pairs = _flatten(list(fast_loader(ds, indices, batch_size=4)))
    assert [s.dataset_name for _, s in pairs] == [f"tagged-{i}" for i in indices]
    for i, (inputs, sample) in zip(indices, pairs, strict=True):
        _assert_same_sample(ds[i], inputs, sample, f"sample {i}")


def test_empty_indices_give_no_batches(crowded_root: Path) -> None:
    from zoo.crops import fast_loader

    loader = fast_loader(_dataset("res50-256x192", False, crowded_root), [], batch_size=4)
    assert len(loader) == 0 and list(loader) == []


def test_pipeline_it_cannot_reproduce_is_refused(crowded_root: Path) -> None:
    from zoo.crops import UnsupportedPipeline, fast_loader
    from zoo.evaluate import build_dataset

    cfg = _config("res50-256x192", False, crowded_root)
    extra = copy.deepcopy(cfg)
    extra.test_dataloader.dataset.pipeline.insert(1, {"type": "RandomFlip", "prob": 0.0})
    with pytest.raises(UnsupportedPipeline, match="LoadImage -> RandomFlip -> GetBBoxCenterScale"):
        fast_loader(build_dataset(extra), [0], batch_size=1)
    packs_more = copy.deepcopy(cfg)
    packs_more.test_dataloader.dataset.pipeline[-1]["pack_transformed"] = True
    with pytest.raises(UnsupportedPipeline, match="pack_transformed"):
        fast_loader(build_dataset(packs_more), [0], batch_size=1)


@pytest.mark.slow
@pytest.mark.parametrize("row_id", ["res50-256x192", "cspnext-m-udp-256x192"])
def test_model_predictions_identical(row_id: str, crowded_root: Path) -> None:
    """model.test_step on the fast batches == on mmpose's DataLoader batches (seeded random weights
    with a non-flat heatmap layer, so UDP's refinement has something to refine)."""
    from mmengine.dataset import pseudo_collate
    from torch.utils.data import DataLoader, Subset

    from zoo.crops import fast_loader
    from zoo.evaluate import build_dataset, build_model
    from zoo.randweights import random_state_dict

    cfg = _config(row_id, False, crowded_root)
    ds = build_dataset(cfg)
    model = build_model(cfg, "cpu", random_state_dict(cfg, seed=0))
    indices = list(range(min(len(ds), 4)))
    reference = DataLoader(Subset(ds, indices), batch_size=2, collate_fn=pseudo_collate)
    compared = 0
    with torch.no_grad():
        for ref_batch, fast_batch in zip(reference, fast_loader(ds, indices, batch_size=2), strict=True):
            for want, got in zip(model.test_step(ref_batch), model.test_step(fast_batch), strict=True):
                assert got.id == want.id
                for field in ("keypoints", "keypoint_scores", "bboxes", "bbox_scores"):
                    _assert_same(
                        want.pred_instances.get(field), got.pred_instances.get(field), f"{got.id} {field}"
                    )
                compared += 1
    assert compared == len(indices)
