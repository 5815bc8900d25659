"""zoo.crops: the fast data path hands `model.test_step` exactly what mmpose's per-box pipeline does.

Identity is checked box by box against mmpose's own dataset (`dataset[i]`, i.e. LoadImage ->
GetBBoxCenterScale -> TopdownAffine -> PackPoseInputs): the crop bytes, dtype and shape, and every
value of the PoseDataSample that the model and the metric read. Configs: a plain 256x192 detector-box row (res50), the CSPNeXt "UDP"
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


def _same(a: Any, b: Any) -> bool:
    """Equal bytes, dtype and shape (tensors compared as arrays)."""
    a, b = (np.asarray(x.numpy() if isinstance(x, torch.Tensor) else x) for x in (a, b))
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _assert_box_like_mmpose(ref: dict[str, Any], chunk: dict[str, Any], n: int, where: str) -> None:
    """Box n of a chunk against mmpose's `dataset[i]`: the crop's bytes, and every value of its
    PoseDataSample the model and the metric read (ids, the center and scale after the affine, the bbox
    score and scale)."""
    sample = ref["data_samples"]
    assert _same(chunk["crops"][n], ref["inputs"]), f"{where}: crop"
    assert int(chunk["sample_id"][n]) == sample.id and int(chunk["image_id"][n]) == sample.img_id, where
    assert chunk["sample_id"].dtype == chunk["image_id"].dtype == np.int64, where
    assert _same(chunk["center"][n], sample.input_center), f"{where}: input_center"
    assert _same(chunk["scale"][n], sample.input_scale), f"{where}: input_scale"
    assert _same(chunk["scale"][n : n + 1], sample.gt_instances.bbox_scales), f"{where}: bbox_scales"
    assert _same(chunk["bbox_score"][n : n + 1], sample.gt_instances.bbox_scores), f"{where}: bbox_scores"
    assert tuple(sample.input_size) == (chunk["crops"].shape[3], chunk["crops"].shape[2]), where


def _boxes(chunks: list[dict[str, Any]]) -> list[tuple[dict[str, Any], int]]:
    return [(chunk, n) for chunk in chunks for n in range(len(chunk["sample_id"]))]


@pytest.mark.parametrize(("case", "row_id", "use_udp"), CASES, ids=[c[0] for c in CASES])
def test_crops_and_boxes_identical_to_mmpose_pipeline(
    case: str, row_id: str, use_udp: bool, roots: dict[str, Path]
) -> None:
    from zoo.crops import chunk_loader

    ds = _dataset(row_id, use_udp, roots[load_manifests(MANIFESTS).row(row_id).dataset])
    assert ds.pipeline.transforms[2].use_udp is use_udp  # the case tests what it says
    indices = list(range(len(ds)))
    assert len(indices) >= 5
    boxes = _boxes(list(chunk_loader(ds, indices)))
    assert len(boxes) == len(indices)
    for i, (chunk, n) in zip(indices, boxes, strict=True):
        _assert_box_like_mmpose(ds[i], chunk, n, f"{case} sample {i}")


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
    from zoo.crops import chunk_loader

    ds = _dataset("res50-256x192", False, crowded_root)
    indices = list(range(len(ds)))[1::2]
    loader = chunk_loader(ds, indices, workers=2, max_crops=2)
    assert max(len(c) for c in loader.dataset.chunks) == 2
    assert len({ds.get_data_info(i)["img_path"] for i in indices}) < len(
        loader.dataset.chunks
    )  # images split
    boxes = _boxes(list(loader))
    assert [int(chunk["sample_id"][n]) for chunk, n in boxes] == [ds.get_data_info(i)["id"] for i in indices]
    for i, (chunk, n) in zip(indices, boxes, strict=True):
        _assert_box_like_mmpose(ds[i], chunk, n, f"sample {i}")


def test_dataset_with_its_own_get_data_info_is_asked_per_sample(roots: dict[str, Path]) -> None:
    """A dataset class that changes get_data_info is asked per sample. Here it rotates the boxes,
    which TopdownAffine honours (mmpose's matrices are used then)."""
    from zoo.crops import chunk_loader

    ds = _dataset("res50-256x192", False, roots["coco-wholebody-v1.0-val"])

    class Rotated(type(ds)):
        def get_data_info(self, idx: int) -> dict:
            return {**super().get_data_info(idx), "bbox_rotation": np.array([7.5 * idx], np.float32)}

    ds.__class__ = Rotated
    indices = list(range(len(ds)))
    for i, (chunk, n) in zip(indices, _boxes(list(chunk_loader(ds, indices))), strict=True):
        _assert_box_like_mmpose(ds[i], chunk, n, f"sample {i}")


def test_empty_indices_give_no_chunks(crowded_root: Path) -> None:
    from zoo.crops import chunk_loader

    assert list(chunk_loader(_dataset("res50-256x192", False, crowded_root), [])) == []


def test_unreadable_image_is_one_line_naming_it(crowded_root: Path, tmp_path: Path) -> None:
    """A truncated or missing image comes back as an error naming the file, not a worker traceback."""
    import shutil

    from zoo.crops import chunk_loader

    root = tmp_path / "root"
    shutil.copytree(crowded_root, root)
    ds = _dataset("res50-256x192", False, root)
    first = Path(ds.get_data_info(0)["img_path"])
    first.write_bytes(first.read_bytes()[:100])
    chunks = list(chunk_loader(ds, list(range(len(ds))), workers=1))
    assert chunks[0]["error"] == f"{first}: does not decode as an image (AssertionError)"
    assert all("error" not in c for c in chunks[1:])


def test_pipeline_it_cannot_reproduce_is_refused(crowded_root: Path) -> None:
    from zoo.crops import UnsupportedPipeline, chunk_loader
    from zoo.evaluate import build_dataset

    cfg = _config("res50-256x192", False, crowded_root)
    extra = copy.deepcopy(cfg)
    extra.test_dataloader.dataset.pipeline.insert(1, {"type": "RandomFlip", "prob": 0.0})
    with pytest.raises(UnsupportedPipeline, match="LoadImage -> RandomFlip -> GetBBoxCenterScale"):
        chunk_loader(build_dataset(extra), [0])


@pytest.mark.slow
@pytest.mark.parametrize("row_id", ["res50-256x192", "cspnext-m-udp-256x192"])
def test_model_predictions_identical(row_id: str, crowded_root: Path) -> None:
    """zoo's pass (chunks, HeatmapModel, zoo.decode) == model.test_step on mmpose's DataLoader
    batches, bitwise (seeded random weights with a non-flat heatmap layer, so UDP has something to
    refine)."""
    from mmengine.dataset import pseudo_collate
    from torch.utils.data import DataLoader, Subset

    from zoo.evaluate import build_dataset, build_model, instances_of
    from zoo.inference import Decoder, HeatmapModel, RowPass, run_pass
    from zoo.metrics import Instances
    from zoo.randweights import random_state_dict

    cfg = _config(row_id, False, crowded_root)
    ds = build_dataset(cfg)
    model = build_model(cfg, "cpu", random_state_dict(cfg, seed=0))
    indices = list(range(min(len(ds), 6)))
    reference = DataLoader(Subset(ds, indices), batch_size=2, collate_fn=pseudo_collate)
    with torch.no_grad():
        want = Instances.concat([instances_of(model.test_step(batch)) for batch in reference])
    heatmap_model = HeatmapModel(model, ds.metainfo["flip_indices"])
    row = RowPass("row", heatmap_model, Decoder(heatmap_model.codec, "row"), batch_size=2)
    got, _ = run_pass(ds, indices, [row], device="cpu", workers=0, progress=False)
    for name in ("sample_id", "image_id", "keypoints", "keypoint_scores", "bbox_score", "area"):
        assert _same(getattr(got["row"], name), getattr(want, name)), name
