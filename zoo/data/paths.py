"""Where a dataset's files sit under its data root, as one value the other modules pass around."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# The layout mmpose's COCO-WholeBody configs expect under data_root (data/coco/). The synthetic
# generator writes it; tests check that manifests/datasets.yaml declares the same paths.
ANN_FILE = "annotations/coco_wholebody_val_v1.0.json"
IMG_DIR = "val2017"
DET_FILE = "person_detection_results/COCO_val2017_detections_AP_H_56_person.json"
SYNTH_MARKER = "zoo-synth.json"


@dataclass(frozen=True)
class DataPaths:
    """A prepared data root: annotation file, image folder and (when the dataset has one) detection file."""

    root: Path
    ann_file: Path
    img_dir: Path
    det_file: Path | None
