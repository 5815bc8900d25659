"""zoo.demo_model: the constructed weights of each architecture family draw the training set's mean pose
through the real mmpose forward pass and decoder, to a fraction of a pixel, and any image gives the same."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

MANIFESTS = Path(__file__).resolve().parents[1] / "manifests"
ROWS = (
    "res50-256x192",  # deconvolution head, MSRA decoding
    "hrnet-w32-dark-256x192",  # HRNet's last stage, DARK decoding
    "cspnext-m-udp-256x192",  # mmdet backbone, deconvolution head, UDP decoding
)


@pytest.fixture(scope="module")
def train_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from zoo.data import SynthSpec, synthesize

    spec = SynthSpec(pose_variation=0.1)
    return synthesize(
        tmp_path_factory.mktemp("train"), n_images=30, seed=11, write_images=False, spec=spec
    ).root


@pytest.mark.slow
@pytest.mark.parametrize("row_id", ROWS)
def test_weights_draw_the_mean_pose(row_id: str, train_root: Path) -> None:
    import torch

    from zoo.data import dataset_paths, gt_boxes, load_registry
    from zoo.demo_model import mean_keypoints, mean_pose_state_dict
    from zoo.evaluate import build_model, load_config
    from zoo.manifest import load_manifests

    row = load_manifests(MANIFESTS).row(row_id)
    paths = dataset_paths(load_registry(MANIFESTS).get(row.dataset), train_root)
    cfg = load_config(row, paths, gt_boxes(paths.ann_file), workers=0)
    model = build_model(cfg, "cpu", {"state_dict": mean_pose_state_dict(cfg, cfg, seed=4)})
    codec = model.head.decoder
    want = mean_keypoints(cfg, codec) * np.asarray(codec.scale_factor)  # input pixels
    width, height = cfg.codec.input_size
    images = torch.rand(2, 3, height, width, generator=torch.Generator().manual_seed(0)) * 255
    with torch.no_grad():
        heatmaps = model.head.forward(model.extract_feat(images))
    assert torch.equal(heatmaps[0], heatmaps[1])  # the pose does not depend on the image
    got = codec.decode(heatmaps[0].numpy())[0][0]
    error = np.linalg.norm(got - want, axis=1)
    # a person is ~200 input pixels tall in the crop; face OKS 0.5 allows ~2 pixels at the tightest points
    assert np.median(error) < 1.0 and np.percentile(error, 95) < 2.0, (np.median(error), np.sort(error)[-5:])


@pytest.mark.slow
def test_a_backbone_that_cannot_code_the_grid_is_refused(train_root: Path) -> None:
    import torch

    from zoo.data import dataset_paths, gt_boxes, load_registry
    from zoo.demo_model import _indicator_deconvs
    from zoo.evaluate import build_model, load_config
    from zoo.manifest import load_manifests

    row = load_manifests(MANIFESTS).row("res50-256x192")
    paths = dataset_paths(load_registry(MANIFESTS).get(row.dataset), train_root)
    cfg = load_config(row, paths, gt_boxes(paths.ann_file), workers=0)
    model = build_model(cfg, "cpu", None)
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.zero_()  # every cell of the grid gets the same features
    with pytest.raises(ValueError, match="cannot code the grid"):
        _indicator_deconvs(model, (256, 192))
