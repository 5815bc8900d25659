"""Random-weight checkpoints of the real architectures, saved exactly like OpenMMLab publishes them.

Real checkpoints cannot be downloaded here, so tests, the demo and the benchmarks exercise the real
fetch -> verify -> load -> inference path on these instead: same config, same parameter names,
`{'meta': ..., 'state_dict': ...}` layout with numpy objects in `meta` (what makes torch's
weights_only loader need an allow-list), and the `<name>-<sha256[:8]>_<date>.pth` file name that
OpenMMLab's publish_model.py writes.
"""

from __future__ import annotations

import hashlib
import io
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from zoo.fileio import write_atomic


def random_state_dict(cfg: Any, seed: int, head_std: float = 1.0) -> OrderedDict:
    """A seeded model's state_dict. The final heatmap layer gets std `head_std`: mmpose's default
    init (std 0.001) gives nearly flat heatmaps, on which UDP's refinement hits a singular Hessian."""
    import torch

    from zoo.evaluate import build_model

    torch.manual_seed(seed)
    model = build_model(cfg, "cpu", state_dict=None)
    head = model.head
    final = getattr(head, "final_layer", None)
    if isinstance(final, torch.nn.Conv2d):
        torch.nn.init.normal_(final.weight, std=head_std)
    return OrderedDict((k, v.detach().clone()) for k, v in model.state_dict().items())


def save_checkpoint(state_dict: OrderedDict, out_dir: Path, stem: str, date: str = "20260101") -> Path:
    """Write `<stem>-<sha8>_<date>.pth` (publish_model naming) atomically; return its path."""
    import torch

    meta = {
        "epoch": np.int64(210),
        "iter": np.int64(1),
        "lr": np.array([5e-4], dtype=np.float64),
        "best_score": np.float32(0.5),
        "mmpose_version": "1.3.2",
    }
    buffer = io.BytesIO()
    torch.save({"meta": meta, "state_dict": state_dict}, buffer)
    data = buffer.getvalue()
    path = out_dir / f"{stem}-{hashlib.sha256(data).hexdigest()[:8]}_{date}.pth"
    write_atomic(path, data)
    return path


def local_manifests(src: Path, dst: Path, checkpoints: dict[str, tuple[str, Path]]) -> Path:
    """Copy the manifests to `dst`, keeping only the rows in `checkpoints` (row id -> (url, file)),
    each pointing at its local random-weight checkpoint. The copy is what tests and the demo run."""
    import shutil

    import yaml

    dst.mkdir(parents=True, exist_ok=True)
    for path in sorted(src.glob("*.yaml")):
        data = yaml.safe_load(path.read_text())
        if not isinstance(data, dict) or "rows" not in data:
            shutil.copyfile(path, dst / path.name)  # datasets.yaml and other non-table files
            continue
        rows = [r for r in data["rows"] if r["id"] in checkpoints]
        if not rows:
            continue
        for row in rows:
            url, file = checkpoints[row["id"]]
            row["checkpoint"] = {"url": url, "sha256_prefix": file.name.rsplit("-", 1)[1][:8]}
            row.pop("acknowledged_drift", None)
        data["rows"] = rows
        (dst / path.name).write_text(yaml.safe_dump(data, sort_keys=False, width=200))
    return dst
