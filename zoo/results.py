"""Result records and predictions on disk: atomic, fingerprinted, resumable.

A results folder holds one sub-folder per row:
    <out>/<row-id>/predictions.json.gz   COCO-WholeBody results (after mmpose's rescoring + OKS-NMS)
    <out>/<row-id>/predictions.done.json fingerprint + sha256 of the predictions: written last, so
                                         predictions without it are incomplete and never reused
    <out>/<row-id>/result.json           the record: metrics, fingerprint, timings, environment
    <out>/<row-id>/partial/              checkpointed chunks of a row still running (`PartialPredictions`)
    <out>/<row-id>/.lock                 held by the process running the row (`row_lock`)
Every file is written to a temporary name and renamed, so a killed run never leaves half a file.
A row is skipped when its record has the current fingerprint; it restarts from its predictions
when only those are complete, and from its last checkpointed chunk when it was killed mid-run.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from zoo.errors import InputError
from zoo.fileio import sha256_file, write_atomic

log = logging.getLogger(__name__)

SCHEMA = 2  # 2: the measured config, numerics and steady boxes/s; Record's closed statuses
RECORD = "result.json"
PREDICTIONS = "predictions.json.gz"
PREDICTIONS_DONE = "predictions.done.json"


def canonical_digest(obj: Any) -> str:
    """sha256 of sorted, compact JSON: the same inputs give the same digest on every machine."""
    return hashlib.sha256(
        json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    ).hexdigest()


def data_fingerprint(
    ann_file: Path, img_dir: Path, det_file: Path | None, root: Path | None = None
) -> dict[str, Any]:
    """What identifies the evaluation data without reading every image: annotation and box files by
    content, the image folder by its listing (names and sizes), and whether the root is a synthetic
    set of `zoo data synth` (its marker file)."""
    from zoo.data.paths import SYNTH_MARKER

    listing = sorted((p.name, p.stat().st_size) for p in img_dir.iterdir()) if img_dir.is_dir() else []
    return {
        "ann_sha256": sha256_file(ann_file),
        "det_sha256": sha256_file(det_file) if det_file is not None else None,
        "images_digest": canonical_digest(listing),
        "images": len(listing),
        "synthetic": root is not None and (Path(root) / SYNTH_MARKER).is_file(),
    }


# What differs between two runs of the same row on the same machine even when every number is the same:
# clocks, the command line, and which rows shared its data pass. Everything else of a record is the
# measurement; `comparable` drops these, so a row run in a table and run alone can be compared whole.
VOLATILE = (
    ("started",),
    ("finished",),
    ("command",),
    ("timings",),
    ("inference", "crops_per_s"),
    ("inference", "warm_crops_per_s"),
    ("inference", "data_s"),
    ("inference", "shared_pass"),
)


def comparable(record: Record | Mapping[str, Any]) -> dict[str, Any]:
    """The record's JSON without its `VOLATILE` fields."""
    out = _plain(record.to_json() if isinstance(record, Record) else record)
    for path in VOLATILE:
        parent = out
        for key in path[:-1]:
            parent = parent.get(key) if isinstance(parent, dict) else None
        if isinstance(parent, dict):
            parent.pop(path[-1], None)
    return out


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


Status = Literal["ok", "error", "skipped"]
_STATUSES = ("ok", "error", "skipped")
_PART_KEYS = {"body": "body", "foot": "foot", "face": "face", "hand": "hand", "whole": "wholebody"}
_STAT_KEYS = {"ap": "AP", "ar": "AR"}


@dataclass(frozen=True)
class Record:
    """One row's result: what `zoo run` writes as `<out>/<row>/result.json` and what the gate, the
    reports, `zoo baseline accept`, `zoo diff` and the demo read.

    The status is a closed set: `ok` (measured: `metrics`, `fingerprint`), `error` (the run failed:
    `reason` says why) or `skipped` (not run, its data missing: `reason` and `missing`). Everything
    else a run records (environment, timings, inference facts, counts, config, command, clocks) is in
    `details`, read through the properties below. `to_json`/`from_json` are the file format (schema
    `SCHEMA`); `from_json` checks every field it relies on and names the file and field when one is
    wrong.
    """

    row_id: str
    table: str
    name: str
    status: Status
    metrics: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    fingerprint: Mapping[str, Any] = field(default_factory=dict)
    fingerprint_digest: str = ""
    reason: str = ""
    missing: tuple[str, ...] = ()
    details: Mapping[str, Any] = field(default_factory=dict)

    # constructors --------------------------------------------------------------------------------

    @classmethod
    def ok(
        cls, row: Any, metrics: Mapping[str, Mapping[str, float]], fingerprint: Mapping[str, Any], digest: str,
        **details: Any,
    ) -> Record:  # fmt: skip
        return cls(row.id, row.table, row.name, "ok", _plain(metrics), _plain(fingerprint), digest,
                   details=_plain(details))  # fmt: skip

    @classmethod
    def error(cls, row: Any, reason: str, **details: Any) -> Record:
        return cls(row.id, row.table, row.name, "error", reason=reason, details=_plain(details))

    @classmethod
    def skipped(cls, row: Any, reason: str, missing: Sequence[str], **details: Any) -> Record:
        return cls(row.id, row.table, row.name, "skipped", reason=reason, missing=tuple(missing),
                   details=_plain(details))  # fmt: skip

    # reading -------------------------------------------------------------------------------------

    def metric(self, key: str) -> float | None:
        """A manifest metric key (`whole.ap`, `hand.ar`, ...) of an ok record; None when absent."""
        part, _, stat = key.partition(".")
        values = self.metrics.get(_PART_KEYS.get(part, part), {})
        value = values.get(_STAT_KEYS.get(stat, stat)) if isinstance(values, Mapping) else None
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        return float(value)

    @property
    def checkpoint_sha256(self) -> str | None:
        return (self.details.get("checkpoint") or {}).get("sha256") or self.fingerprint.get(
            "checkpoint_sha256"
        )

    @property
    def box_source(self) -> str | None:
        return self.details.get("box_source") or self.fingerprint.get("boxes")

    @property
    def subset(self) -> int | None:
        return self.fingerprint.get("subset")

    @property
    def timings(self) -> Mapping[str, float]:
        return self.details.get("timings") or {}

    @property
    def inference(self) -> Mapping[str, Any]:
        return self.details.get("inference") or {}

    @property
    def environment(self) -> Mapping[str, Any]:
        return self.details.get("environment") or {}

    @property
    def synthetic(self) -> bool:
        """Whether the record measured the harness's own synthetic data (`zoo data synth`)."""
        return bool((self.fingerprint.get("data") or {}).get("synthetic"))

    # the file format -----------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"schema": SCHEMA, "row_id": self.row_id, "table": self.table, "name": self.name,
                               "status": self.status}  # fmt: skip
        if self.status == "ok":
            out.update(metrics=_plain(self.metrics), fingerprint=_plain(self.fingerprint),
                       fingerprint_digest=self.fingerprint_digest)  # fmt: skip
        elif self.status == "error":
            out["error"] = self.reason
        else:
            out.update(reason=self.reason, missing=list(self.missing))
        out.update(_plain(self.details))
        return out

    @classmethod
    def from_json(cls, data: Any, source: str = "<record>") -> Record:
        """A record from its JSON; InputError naming `source` and the field for anything malformed."""
        if not isinstance(data, dict):
            raise InputError(f"{source}: a result record must be a JSON object")
        for key in ("schema", "row_id", "status"):
            if key not in data:
                raise InputError(f"{source}: result record lacks field '{key}'")
        if data["schema"] != SCHEMA:
            raise InputError(
                f"{source}: field 'schema' is {data['schema']!r}, this zoo reads {SCHEMA} (rerun the row to refresh it)"
            )
        status = data["status"]
        if status not in _STATUSES:
            raise InputError(f"{source}: field 'status' is {status!r} (ok, error or skipped)")
        for key in ("row_id", "table", "name"):
            if not isinstance(data.get(key, ""), str):
                raise InputError(f"{source}: field '{key}' must be a string")
        core = {"schema", "row_id", "table", "name", "status", "metrics", "fingerprint", "fingerprint_digest",
                "error", "reason", "missing"}  # fmt: skip
        details = {k: v for k, v in data.items() if k not in core}
        base = {"row_id": data["row_id"], "table": data.get("table", ""), "name": data.get("name", "")}
        if status == "ok":
            metrics, fingerprint = data.get("metrics"), data.get("fingerprint")
            if not isinstance(metrics, dict) or not all(isinstance(v, dict) for v in metrics.values()):
                raise InputError(f"{source}: field 'metrics' must map parts to their stats")
            if not isinstance(fingerprint, dict):
                raise InputError(f"{source}: field 'fingerprint' must be an object")
            digest = data.get("fingerprint_digest")
            if not isinstance(digest, str):
                raise InputError(f"{source}: field 'fingerprint_digest' must be a string")
            return cls(**base, status="ok", metrics=metrics, fingerprint=fingerprint, fingerprint_digest=digest,
                       details=details)  # fmt: skip
        reason = data.get("error" if status == "error" else "reason") or ""
        if not isinstance(reason, str):
            raise InputError(
                f"{source}: field '{'error' if status == 'error' else 'reason'}' must be a string"
            )
        missing = data.get("missing") or []
        if not isinstance(missing, list):
            raise InputError(f"{source}: field 'missing' must be a list")
        return cls(**base, status=status, reason=reason, missing=tuple(map(str, missing)), details=details)


def _plain(obj: Any) -> Any:
    """JSON's own types (numpy scalars, paths, tuples become numbers, strings, lists)."""
    return json.loads(json.dumps(obj, default=str))


def read_record(path: Path) -> Record:
    """One record; a malformed one is bad input naming the file and field."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise InputError(f"{path}: cannot read result record ({exc.strerror})") from exc
    except ValueError as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from exc
    return Record.from_json(data, str(path))


def finished_record(out: Path, row_id: str, fingerprint: str) -> Record | None:
    """The row's successful record for exactly this fingerprint (resume), else None."""
    path = row_dir(out, row_id) / RECORD
    if not path.is_file():
        return None
    try:
        record = read_record(path)
    except InputError:
        return None
    if record.status == "ok" and record.fingerprint_digest == fingerprint:
        return record
    return None


def write_record(out: Path, record: Record) -> Path:
    path = row_dir(out, record.row_id) / RECORD
    write_json(path, record.to_json())
    return path


BOX_VARIANTS = "boxes"  # <out>/boxes/<source>/<row>/: a row run with another box source than its own


def box_variant_dir(out: Path, source: str) -> Path:
    """Where records of rows run with `source` instead of their own box source go (`zoo run --boxes
    det,gt`): beside the row's own record, never in its place, so the gate judges the row's own."""
    import re

    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", source).strip("-")
    if len(slug) > 40 or slug != source:
        slug = f"{slug[:32]}-{hashlib.sha256(source.encode()).hexdigest()[:8]}"
    return Path(out) / BOX_VARIANTS / slug


def load_box_variants(results: Path) -> dict[str, dict[str, Record]]:
    """Row id -> box source -> record, of every row run with other box sources (`box_variant_dir`)."""
    out: dict[str, dict[str, Record]] = {}
    for path in sorted(Path(results).glob(f"{BOX_VARIANTS}/*/*/{RECORD}")):
        record = read_record(path)
        out.setdefault(record.row_id, {})[record.box_source or path.parent.parent.name] = record
    return out


def load_records(results: Path) -> dict[str, Record]:
    """Every row record under a results folder, keyed by row id."""
    if not results.is_dir():
        raise InputError(f"{results}: results folder not found")
    records: dict[str, Record] = {}
    for path in sorted(results.glob(f"*/{RECORD}")):
        record = read_record(path)
        records[record.row_id] = record
    return records


# --------------------------------------------------------------------------------------------------
# a row still running: checkpointed chunks, and the lock that keeps a second process out


class PartialPredictions:
    """The instances a running row has decoded so far, in chunks on disk, so that a killed run
    resumes at its last chunk instead of from zero.

    Chunks end on the row's batch boundaries, so the resumed run cuts the same batches an
    uninterrupted one would and its predictions are byte-identical. `key` names what the chunks
    were made for (the row's fingerprint and the sample stream); chunks of another key are removed.
    """

    def __init__(self, out: Path, row_id: str, key: str, part: str = "partial") -> None:
        self.dir = row_dir(out, row_id) / part
        self.key = key
        self.index_path = self.dir / "index.json"

    def _index(self) -> dict[str, Any] | None:
        try:
            index = json.loads(self.index_path.read_text())
        except (OSError, ValueError):
            return None
        return index if isinstance(index, dict) and index.get("key") == self.key else None

    def load(self) -> tuple[int, list[Any]]:
        """(samples done, the chunks' Instances in order) for this key; (0, []) after clearing
        anything stale or damaged."""
        from zoo.metrics import Instances

        index = self._index()
        if index is None:
            self.clear()
            return 0, []
        parts, done = [], 0
        for entry in index["chunks"]:
            path = self.dir / entry["file"]
            try:
                data = path.read_bytes()
            except OSError:
                break
            if hashlib.sha256(data).hexdigest() != entry["sha256"]:
                break
            with np.load(io.BytesIO(data)) as arrays:
                parts.append(Instances(**{name: arrays[name] for name in arrays.files}))
            done = entry["done"]
        if len(parts) != len(index["chunks"]):
            log.warning("%s: damaged checkpoint chunk; resuming from sample %d", self.dir, done)
            self._write_index(index["chunks"][: len(parts)])
        return done, parts

    def add(self, done: int, instances: Any) -> None:
        """Append a chunk holding `instances`, after which `done` samples are covered."""
        from dataclasses import asdict

        index = self._index() or {"key": self.key, "chunks": []}
        buffer = io.BytesIO()
        np.savez(buffer, **asdict(instances))
        data = buffer.getvalue()
        name = f"chunk-{len(index['chunks']):06d}.npz"
        write_atomic(self.dir / name, data)
        self._write_index(
            [*index["chunks"], {"file": name, "done": done, "sha256": hashlib.sha256(data).hexdigest()}]
        )

    def _write_index(self, chunks: list[dict[str, Any]]) -> None:
        write_json(self.index_path, {"key": self.key, "chunks": chunks})

    def clear(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


class CheckpointSink:
    """Collects a row's decoded batches and writes a chunk every `every_s` seconds, at the end of a
    full batch of the row's configured size (so chunks end where an uninterrupted run cuts batches)."""

    def __init__(self, partial: PartialPredictions, batch_size: int, every_s: float) -> None:
        self.partial, self.batch_size, self.every_s = partial, batch_size, every_s
        self.pending: list[Any] = []
        self.done = 0
        self.last = time.monotonic()

    def __call__(self, done: int, instances: Any) -> None:
        self.pending.append(instances)
        self.done = done
        if done % self.batch_size == 0 and time.monotonic() - self.last >= self.every_s:
            self.flush()

    def flush(self) -> None:
        """Write what is pending now, if it ends on one of the row's batch boundaries (an interrupted
        run keeps its last decoded batches)."""
        from zoo.metrics import Instances

        if self.pending and self.done % self.batch_size == 0:
            self.partial.add(self.done, Instances.concat(self.pending))
            self.pending, self.last = [], time.monotonic()


@contextlib.contextmanager
def row_lock(
    out: Path, row_id: str, command: Sequence[str], say: Callable[[str], None] = log.info
) -> Iterator[None]:
    """Hold the row's output for this process. A second process running the same row into the same
    folder waits for the first, saying which process holds it, then finds its work done."""
    from filelock import FileLock, Timeout

    folder = row_dir(out, row_id)
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder / ".lock"))
    owner = folder / ".lock.owner"
    try:
        lock.acquire(timeout=0)
    except Timeout:
        try:
            holder = json.loads(owner.read_text())
            who = f"pid {holder['pid']} on {holder['host']} ({holder['command']}, since {holder['since']})"
        except (OSError, ValueError, KeyError):
            who = "another process"
        say(f"{row_id}: {folder} is being written by {who}; waiting for it")
        lock.acquire()
    try:
        write_json(owner, {
            "pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(command),
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        })  # fmt: skip
        yield
    finally:
        with contextlib.suppress(OSError):
            owner.unlink()
        lock.release()
