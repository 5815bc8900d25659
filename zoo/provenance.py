"""What a result record must have measured to count for a manifest row, and where a record differs.

A CI gate that can be fed a record of another checkpoint, another data set or a subset is not a
gate: accepting such a record as a baseline would write its numbers into the manifest. So the gate,
the reports and `zoo baseline accept` hold each record against what the manifest row requires now:

- the checkpoint: its sha256 must match the manifest's (its full hash, the lock's, or the 8-hex
  prefix of the OpenMMLab file name);
- the effective config (`zoo.evaluate.measured_config`: the row's config with its overrides, where
  the data lives left out): model, codec, pipeline, flip test, batch size, whether detector boxes are
  used;
- the input size, the box source, the OKS area rule (`use_area`) and the dataset id;
- the data files' checksums, where the dataset registry gives them (a checksum marked unverified
  is reported, not enforced: it is a third party's and may itself be wrong);
- all of the data: no `--subset`.

`required` computes what rows require (it reads the rows' configs: seconds); `differences` lists a
record's differing fields with both values; `zoo.compare` turns blocking ones into STALE.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from zoo.manifest import Manifests, Row
from zoo.results import Record


@dataclass(frozen=True)
class Required:
    """What one row requires of a record now."""

    row_id: str
    checkpoint_sha256: str | None  # the full hash, when the manifest or the lock knows it
    checkpoint_prefix: str  # else the file name's 8-hex prefix
    config_sha256: str
    input_size: str
    boxes: str
    use_area: bool
    dataset: str
    data: Mapping[str, tuple[str, bool]]  # fingerprint key (ann_sha256, det_sha256) -> (sha256, verified)
    accepted: Mapping[tuple[str, str, str], str] = field(default_factory=dict)  # forced accepts -> reason


@dataclass(frozen=True)
class Difference:
    """One field where a record did not measure what its row requires."""

    field: str
    measured: Any
    required: Any
    blocking: bool = True  # False: reported only (an unverified checksum, a difference accepted with --force)
    why_not_blocking: str = ""

    def key(self) -> tuple[str, str, str]:
        """How a forced accept names this difference in the manifest (field, record, manifest)."""
        return (self.field, _text(self.measured), _text(self.required))

    def describe(self) -> str:
        def show(value: Any) -> str:
            if isinstance(value, str) and len(value) == 64:
                return value[:12]  # a sha256: its prefix is enough to tell them apart
            return "all images" if self.field == "subset" and value is None else str(value)

        note = f" ({self.why_not_blocking})" if self.why_not_blocking else ""
        return f"{self.field}: record {show(self.measured)}, manifest {show(self.required)}{note}"


def _text(value: Any) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def required(rows: Sequence[Row], manifests: Manifests) -> dict[str, Required]:
    """What each row requires now (loads each row's mmpose config, without its data)."""
    from zoo import fetch
    from zoo.data import DataPaths, load_registry
    from zoo.evaluate import config_digest, load_config

    registry = load_registry(manifests.dir)
    lock = fetch.ChecksumLock(manifests.dir / "checkpoints.lock")
    out: dict[str, Required] = {}
    for row in rows:
        dataset = registry.get(row.dataset)
        expected = fetch.row_expected(row, lock)
        nowhere = Path("/nonexistent-zoo-data-root")  # where the data lives is not part of the digest
        paths = DataPaths(
            root=nowhere, ann_file=nowhere / dataset.layout.ann_file, img_dir=nowhere / dataset.layout.img_dir,
            det_file=nowhere / dataset.layout.det_file if dataset.layout.det_file else None,
        )  # fmt: skip
        uses_det = row.boxes.split(":", 1)[0] in ("det", "mmdet")
        cfg = load_config(row, paths, _Boxes(paths.det_file if uses_det else None))
        declared = {}
        for data_file in dataset.files:
            key = {dataset.layout.ann_file: "ann_sha256", dataset.layout.det_file: "det_sha256"}.get(
                data_file.path
            )
            if key and data_file.checksum is not None and (key == "ann_sha256" or uses_det):
                declared[key] = (data_file.checksum.sha256, data_file.checksum.verified)
        accepted = {}
        if row.forced_accept is not None:
            for d in row.forced_accept.differences:
                accepted[(d.field, _text(d.record), _text(d.manifest))] = row.forced_accept.reason
        out[row.id] = Required(
            row_id=row.id, checkpoint_sha256=expected.sha256, checkpoint_prefix=expected.prefix,
            config_sha256=config_digest(cfg), input_size=row.input_size_text, boxes=row.boxes,
            use_area=row.use_area, dataset=row.dataset, data=declared, accepted=accepted,
        )  # fmt: skip
    return out


@dataclass(frozen=True)
class _Boxes:
    """The one thing `load_config` reads of a box source: its detection file (None: GT boxes)."""

    bbox_file: Path | None


def differences(record: Record, req: Required) -> list[Difference]:
    """Every field where an ok record did not measure what its row requires (empty: it did)."""
    if record.status != "ok":
        return []
    fp = record.fingerprint
    row = fp.get("row") or {}
    out: list[Difference] = []
    sha = record.checkpoint_sha256
    wanted = req.checkpoint_sha256 or f"{req.checkpoint_prefix}..."
    if not sha or not (
        sha == req.checkpoint_sha256 if req.checkpoint_sha256 else sha.startswith(req.checkpoint_prefix)
    ):
        out.append(Difference("checkpoint sha256", sha, wanted))
    if fp.get("config_sha256") != req.config_sha256:
        out.append(Difference("effective config", fp.get("config_sha256"), req.config_sha256))
    checks = (
        ("input size", _size_text(row.get("input_size")), req.input_size),
        ("box source", record.box_source, req.boxes),
        ("use_area", record.details.get("use_area", row.get("use_area")), req.use_area),
        ("dataset", row.get("dataset"), req.dataset),
        ("subset", record.subset, None),
    )
    out += [Difference(name, got, want) for name, got, want in checks if got != want]
    data = fp.get("data") or {}
    for key, (sha256, verified) in sorted(req.data.items()):
        if data.get(key) != sha256:
            label = "annotation file" if key == "ann_sha256" else "detection file"
            out.append(Difference(f"{label} sha256", data.get(key), sha256, blocking=verified,
                                  why_not_blocking="" if verified else "the manifest's checksum is unverified"))  # fmt: skip
    return [
        replace(d, blocking=False, why_not_blocking=f"accepted with --force: {req.accepted[d.key()]}")
        if d.blocking and d.key() in req.accepted else d
        for d in out
    ]  # fmt: skip


def _size_text(value: Any) -> Any:
    """A fingerprint's input size ([w, h] or 'WxH' as dumped) in the manifest's 'HxW' text."""
    if isinstance(value, list | tuple) and len(value) == 2:
        return f"{value[0]}x{value[1]}"
    return value


def all_differences(
    rows: Sequence[Row], records: Mapping[str, Record], manifests: Manifests
) -> dict[str, list[Difference]]:
    """`differences` of every row's ok record (rows without one are left out)."""
    reqs = required([row for row in rows if row.id in records and records[row.id].status == "ok"], manifests)
    return {row_id: differences(records[row_id], req) for row_id, req in reqs.items()}
