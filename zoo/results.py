"""Result records and predictions on disk: atomic, fingerprinted, resumable.

A results folder holds one sub-folder per row:
    <out>/<row-id>/predictions.json.gz   COCO-WholeBody results (after mmpose's rescoring + OKS-NMS)
    <out>/<row-id>/predictions.done.json fingerprint + sha256 of the predictions: written last, so
                                         predictions without it are incomplete and never reused
    <out>/<row-id>/result.json           the record: metrics, fingerprint, timings, environment
Every file is written to a temporary name and renamed, so a killed run never leaves half a file.
A row is skipped when its record has the current fingerprint; it restarts from its predictions
when only those are complete.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from zoo.errors import InputError
from zoo.fileio import sha256_file, write_atomic

SCHEMA = 1
RECORD = "result.json"
PREDICTIONS = "predictions.json.gz"
PREDICTIONS_DONE = "predictions.done.json"


def canonical_digest(obj: Any) -> str:
    """sha256 of sorted, compact JSON: the same inputs give the same digest on every machine."""
    return hashlib.sha256(
        json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    ).hexdigest()


def data_fingerprint(ann_file: Path, img_dir: Path, det_file: Path | None) -> dict[str, Any]:
    """What identifies the evaluation data without reading every image: annotation and box files by
    content, the image folder by its listing (names and sizes)."""
    listing = sorted((p.name, p.stat().st_size) for p in img_dir.iterdir()) if img_dir.is_dir() else []
    return {
        "ann_sha256": sha256_file(ann_file),
        "det_sha256": sha256_file(det_file) if det_file is not None else None,
        "images_digest": canonical_digest(listing),
        "images": len(listing),
    }


def write_json(path: Path, obj: Any) -> None:
    write_atomic(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def row_dir(out: Path, row_id: str) -> Path:
    return out / row_id


def write_predictions(out: Path, row_id: str, records: list[dict[str, Any]], fingerprint: str) -> Path:
    """Predictions first, then the marker naming their fingerprint and hash (the commit point)."""
    folder = row_dir(out, row_id)
    path = folder / PREDICTIONS
    payload = gzip.compress(json.dumps(records, separators=(",", ":")).encode(), mtime=0)
    write_atomic(path, payload)
    write_json(
        folder / PREDICTIONS_DONE,
        {"fingerprint": fingerprint, "sha256": hashlib.sha256(payload).hexdigest(), "count": len(records)},
    )
    return path


def complete_predictions(out: Path, row_id: str, fingerprint: str) -> Path | None:
    """The row's predictions if they are complete and were made for `fingerprint`, else None."""
    folder = row_dir(out, row_id)
    path, done = folder / PREDICTIONS, folder / PREDICTIONS_DONE
    if not (path.is_file() and done.is_file()):
        return None
    try:
        marker = json.loads(done.read_text())
    except (OSError, ValueError):
        return None
    if marker.get("fingerprint") != fingerprint or marker.get("sha256") != sha256_file(path):
        return None
    return path


def read_record(path: Path) -> dict[str, Any]:
    """One record; a malformed one is bad input naming the file and field."""
    try:
        record = json.loads(path.read_text())
    except OSError as exc:
        raise InputError(f"{path}: cannot read result record ({exc.strerror})") from exc
    except ValueError as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(record, dict):
        raise InputError(f"{path}: a result record must be a JSON object")
    for key in ("schema", "row_id", "status"):
        if key not in record:
            raise InputError(f"{path}: result record lacks field '{key}'")
    if record["schema"] != SCHEMA:
        raise InputError(f"{path}: field 'schema' is {record['schema']!r}, this zoo reads {SCHEMA}")
    if record["status"] not in ("ok", "error", "skipped"):
        raise InputError(f"{path}: field 'status' is {record['status']!r} (ok, error or skipped)")
    return record


def finished_record(out: Path, row_id: str, fingerprint: str) -> dict[str, Any] | None:
    """The row's successful record for exactly this fingerprint (resume), else None."""
    path = row_dir(out, row_id) / RECORD
    if not path.is_file():
        return None
    try:
        record = read_record(path)
    except InputError:
        return None
    if record["status"] == "ok" and record.get("fingerprint_digest") == fingerprint:
        return record
    return None


def write_record(out: Path, record: Mapping[str, Any]) -> Path:
    path = row_dir(out, record["row_id"]) / RECORD
    write_json(path, {"schema": SCHEMA, **record})
    return path


def load_records(results: Path) -> dict[str, dict[str, Any]]:
    """Every row record under a results folder, keyed by row id."""
    if not results.is_dir():
        raise InputError(f"{results}: results folder not found")
    records: dict[str, dict[str, Any]] = {}
    for path in sorted(results.glob(f"*/{RECORD}")):
        record = read_record(path)
        records[record["row_id"]] = record
    return records
