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
    """Every row's config builds (SyncBN reverted) and runs through zoo's pass: real crops of the
    synthetic set, the forward pass and flip test, the row's decoder."""
    import torch

    from zoo.data import dataset_paths, load_registry
    from zoo.evaluate import build_dataset, build_model, load_config
    from zoo.inference import Decoder, HeatmapModel, RowPass, run_pass
    from zoo.randweights import random_state_dict

    manifests = load_manifests(ROOT / "manifests")
    row = manifests.row(row_id)
    paths = dataset_paths(load_registry(manifests.dir).get(row.dataset), data_roots[row.dataset])
    cfg = load_config(row, paths, workers=0)
    h, w = row.input_size
    assert tuple(cfg.codec.input_size) == (w, h)  # manifest input size == the config's codec
    model = build_model(cfg, "cpu", random_state_dict(cfg, seed=0))  # non-flat heads (UDP needs curvature)
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules())
    dataset = build_dataset(cfg)
    heatmaps = HeatmapModel(model, dataset.metainfo["flip_indices"])
    one = RowPass(row_id, heatmaps, Decoder(heatmaps.codec, row_id), batch_size=2)
    n = min(2, len(dataset))
    out, _ = run_pass(dataset, list(range(n)), [one], device="cpu", workers=0, progress=False)
    assert n and out[row_id].keypoints.shape == (n, 133, 2) and out[row_id].keypoint_scores.shape == (n, 133)
    assert np.isfinite(out[row_id].keypoints).all()
