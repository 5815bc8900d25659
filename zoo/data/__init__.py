"""Evaluation data: the dataset registry, prepare/verify, person-box sources, UBody conversion and
a synthetic COCO-WholeBody generator. One module per concern; this package only re-exports them.
"""

from zoo.data.boxes import PersonBoxes, det_boxes, gt_boxes, load_boxes, mmdet_det_file, parse_box_spec
from zoo.data.paths import DataPaths
from zoo.data.prepare import PrepareResult, Step, extract_zip, prepare
from zoo.data.registry import Dataset, Registry, dataset_paths, datasets_lock, default_root, load_registry
from zoo.data.synth import SynthPaths, SynthSpec, synthesize
from zoo.data.ubody import convert_ubody
from zoo.data.verify import Finding, VerifyReport, verify

__all__ = [
    "DataPaths",
    "Dataset",
    "Finding",
    "PersonBoxes",
    "PrepareResult",
    "Registry",
    "Step",
    "SynthPaths",
    "SynthSpec",
    "VerifyReport",
    "convert_ubody",
    "dataset_paths",
    "datasets_lock",
    "default_root",
    "det_boxes",
    "extract_zip",
    "gt_boxes",
    "load_boxes",
    "load_registry",
    "mmdet_det_file",
    "parse_box_spec",
    "prepare",
    "synthesize",
    "verify",
]
