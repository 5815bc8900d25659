"""zoo.data.boxes: person boxes exactly as mmpose's test-mode datasets pick them, and the mmdet source."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from zoo.data import DataPaths, det_boxes, gt_boxes, load_boxes, mmdet_det_file, parse_box_spec, synthesize
from zoo.data.coco_format import PARTS, detection_problems, write_json
from zoo.errors import InputError


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory):
    return synthesize(tmp_path_factory.mktemp("boxes") / "root", n_images=30, seed=7)


def test_parse_box_spec() -> None:
    assert parse_box_spec("gt").kind == "gt" and parse_box_spec("det").path is None
    assert parse_box_spec("det:/x/y.json").path == Path("/x/y.json")
    spec = parse_box_spec("mmdet:faster_rcnn/a.py:https://download.openmmlab.com/x-12345678_20200101.pth")
    assert spec.config == "faster_rcnn/a.py" and spec.checkpoint.startswith("https://")
    for bad in ("dets", "det:", "mmdet:only-config", "gt:x"):
        with pytest.raises(InputError, match="--boxes"):
            parse_box_spec(bad)


def _ann(i: int, image_id: int, bbox: list, nk: int = 17, crowd: int = 0, kpt: float = 10.0) -> dict:
    parts = {name: [kpt, kpt, 2.0] * k for name, k in PARTS}
    return {"id": i, "image_id": image_id, "bbox": bbox, "num_keypoints": nk, "iscrowd": crowd, **parts}


def test_gt_rules(tmp_path: Path) -> None:
    images = [
        {"id": 9, "file_name": "b.jpg", "width": 100, "height": 50},
        {"id": 2, "file_name": "a.jpg", "width": 100, "height": 50},
    ]
    anns = [
        _ann(1, 2, [10, 10, 20, 20]),  # kept
        _ann(2, 9, [-5, -5, 200, 20]),  # kept, clipped to [0, 99] x [0, 49]
        _ann(3, 9, [10, 10, 20, 20], crowd=1),  # crowd
        _ann(4, 9, [10, 10, 20, 20], nk=0),  # no body keypoints (face/hands do not count)
        _ann(5, 9, [120, 10, 20, 20]),  # entirely right of the image: zero width after clipping
        _ann(6, 9, [10, 10, 20, 20], kpt=0.0),  # every keypoint at 0
        _ann(7, 2, [30, 5, 10.5, 10]),  # kept, after annotation 1 (file order within the image)
    ]
    write_json(tmp_path / "a.json", {"images": images, "annotations": anns, "categories": []})
    boxes = gt_boxes(tmp_path / "a.json")
    assert boxes.image_ids.tolist() == [9, 2, 2]  # images in file order, not id order
    np.testing.assert_array_equal(
        boxes.bboxes, np.array([[0, 0, 99, 15], [10, 10, 30, 30], [30, 5, 40.5, 15]], np.float32)
    )
    assert boxes.scores.tolist() == [1, 1, 1] and boxes.bbox_file is None


def test_det_rules(tmp_path: Path, synth) -> None:  # noqa: ANN001
    data = json.loads(synth.ann_file.read_text())
    img = data["images"][0]["id"]
    dets = [
        {"image_id": img, "category_id": 1, "bbox": [1.5, 2.5, 10.25, 20.0], "score": 0.01},
        {"image_id": img, "category_id": 3, "bbox": [1, 2, 3, 4], "score": 0.9},  # not a person
        {
            "image_id": img,
            "category_id": 1,
            "bbox": [-4, -4, 500, 500, 0.7],
            "score": 0.0,
        },  # no clipping, no threshold
    ]
    write_json(tmp_path / "d.json", dets)
    boxes = det_boxes(tmp_path / "d.json", synth.ann_file)
    np.testing.assert_array_equal(
        boxes.bboxes, np.array([[1.5, 2.5, 11.75, 22.5], [-4, -4, 496, 496]], np.float32)
    )
    assert boxes.scores.tolist() == [np.float32(0.01), 0.0] and boxes.bbox_file == tmp_path / "d.json"
    write_json(tmp_path / "bad.json", [{**dets[0], "image_id": -1}])
    with pytest.raises(InputError, match="not in the annotation file"):
        det_boxes(tmp_path / "bad.json", synth.ann_file)
    no_det = DataPaths(synth.root, synth.ann_file, synth.img_dir, None)
    with pytest.raises(InputError, match="no detection file"):
        load_boxes("det", no_det)


@pytest.mark.slow
def test_gt_and_det_match_mmpose_dataset(synth) -> None:  # noqa: ANN001
    """The reference: mmpose's own CocoWholeBodyDataset in test mode on the same files."""
    from zoo import compat

    compat.apply()
    from mmpose.datasets import CocoWholeBodyDataset

    for spec, bbox_file in (("gt", None), ("det", str(synth.det_file))):
        ds = CocoWholeBodyDataset(ann_file=str(synth.ann_file), data_prefix={"img": f"{synth.img_dir}/"},
                                  test_mode=True, bbox_file=bbox_file, pipeline=[])  # fmt: skip
        ours = load_boxes(spec, synth)
        infos = [ds.get_data_info(i) for i in range(len(ds))]
        assert len(ours) == len(infos) > 20
        assert ours.image_ids.tolist() == [d["img_id"] for d in infos]
        np.testing.assert_array_equal(ours.bboxes, np.concatenate([d["bbox"] for d in infos]))
        np.testing.assert_array_equal(ours.scores, np.concatenate([d["bbox_score"] for d in infos]))
    assert len(load_boxes("gt", synth)) < sum(
        1 for _ in json.loads(synth.ann_file.read_text())["annotations"]
    )


@pytest.mark.slow
def test_mmdet_source_writes_and_caches_a_det_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real mmdet RetinaNet (ResNet-18, random weights, no pretrained init) on 2 tiny images."""
    from zoo import compat

    compat.apply()
    import mmdet
    import torch
    from mmdet.evaluation import get_classes
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config

    data = synthesize(tmp_path / "data", n_images=2, seed=4, spec=None)
    base = Path(mmdet.__file__).parent / ".mim" / "configs" / "retinanet" / "retinanet_r18_fpn_1x_coco.py"
    config = tmp_path / "tiny_retinanet.py"
    config.write_text(
        f"_base_ = {str(base)!r}\n"
        "model = dict(backbone=dict(init_cfg=None), test_cfg=dict(score_thr=0.0, max_per_img=20))\n"
        "test_dataloader = dict(dataset=dict(pipeline=[dict(type='LoadImageFromFile'),\n"
        "    dict(type='Resize', scale=(160, 120), keep_ratio=True),\n"
        "    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))]))\n"
    )
    register_all_modules()
    torch.manual_seed(0)
    model = MODELS.build(Config.fromfile(str(config)).model)
    with torch.no_grad():  # make "person" (class 0 of every anchor) the top class so boxes come out
        model.bbox_head.retina_cls.bias[0::80] = 5.0
    ckpt = tmp_path / "random.pth"
    torch.save(
        {"state_dict": model.state_dict(), "meta": {"dataset_meta": {"classes": get_classes("coco")}}}, ckpt
    )

    spec = f"mmdet:{config}:{ckpt}"
    boxes = load_boxes(spec, data, cache=tmp_path / "cache")
    det_file = boxes.bbox_file
    assert det_file.parent == tmp_path / "cache" / "detections" and boxes.source == spec
    dets = json.loads(det_file.read_text())
    image_ids = {img["id"] for img in json.loads(data.ann_file.read_text())["images"]}
    assert detection_problems(dets, det_file, image_ids) == []
    assert all(d["category_id"] == 1 for d in dets) and len(boxes) == len(dets) > 0
    assert np.allclose(boxes.bboxes[:, 2:] - boxes.bboxes[:, :2], [d["bbox"][2:] for d in dets], atol=1e-3)
    meta = json.loads(det_file.with_suffix(".meta.json").read_text())
    assert meta["n_images"] == 2 and meta["n_boxes"] == len(dets) and len(meta["images_sha256"]) == 64

    import mmdet.apis

    def no_rerun(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("the detector ran again although its output is cached")

    monkeypatch.setattr(mmdet.apis, "inference_detector", no_rerun)
    assert mmdet_det_file(str(config), str(ckpt), data, cache=tmp_path / "cache") == det_file
    torch.manual_seed(1)
    other = tmp_path / "other.pth"
    torch.save({"state_dict": MODELS.build(Config.fromfile(str(config)).model).state_dict()}, other)
    with pytest.raises(AssertionError, match="ran again"):  # new weights: a new cache key, so it must run
        mmdet_det_file(str(config), str(other), data, cache=tmp_path / "cache")
