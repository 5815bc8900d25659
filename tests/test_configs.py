"""Every config the seed rows need builds on CPU and produces 133 keypoints (issue 3 smoke test).

Random weights, one synthetic image and box, mmpose's own test pipeline and flip-test decoding.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from zoo.manifest import load_manifests

ROOT = Path(__file__).resolve().parents[1]
ROWS = [row.id for row in load_manifests(ROOT / "manifests").rows]


def test_seed_has_twelve_rows() -> None:
    assert len(ROWS) == 12


@pytest.mark.slow
@pytest.mark.parametrize("row_id", ROWS)
def test_config_builds_and_forwards(row_id: str, data_roots: dict[str, Path]) -> None:
    from zoo import compat

    compat.apply()
    import cv2
    import torch
    from mmpose.apis import inference_topdown

    from zoo.data import dataset_paths, load_registry
    from zoo.evaluate import build_model, load_config

    manifests = load_manifests(ROOT / "manifests")
    row = manifests.row(row_id)
    paths = dataset_paths(load_registry(manifests.dir).get(row.dataset), data_roots[row.dataset])
    cfg = load_config(row, paths)
    h, w = row.input_size
    assert tuple(cfg.codec.input_size) == (w, h)  # manifest input size == the config's codec
    torch.manual_seed(0)
    model = build_model(cfg, "cpu", state_dict=None)
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules())
    img = cv2.imread(str(next(iter(sorted(paths.img_dir.glob("*.jpg"))))))
    samples = inference_topdown(model, img, np.array([[10, 20, 110, 220]], dtype=np.float32))
    pred = samples[0].pred_instances
    assert pred.keypoints.shape == (1, 133, 2)
    assert pred.keypoint_scores.shape == (1, 133)
    assert np.isfinite(pred.keypoints).all()
