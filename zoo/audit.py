"""Audit: compare every manifest row with the metafiles mmpose itself ships.

mmpose publishes each number three times (README, per-model .md, metafile .yml) and the copies
disagree. The wheel only carries the metafiles (`mmpose/.mim/configs/**/*.yml`), which is what
tools reading mmpose's model index see, so the manifests are audited against them: checkpoint URL,
config and every metric. A difference passes only if the row records it in `acknowledged_drift`
with the exact metafile value, so an upstream change (or a fix) resurfaces instead of hiding.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from zoo.errors import ZooError
from zoo.manifest import METRICS, Manifests, Row, Table, mmpose_configs_root

Status = Literal["agree", "acknowledged", "DRIFT", "STALE"]
Value = float | str | None
# Metafile metric names ("Hand AR") -> manifest metric keys ("hand.ar").
_METAFILE_METRICS = {f"{key.split('.')[0].capitalize()} {key.split('.')[1].upper()}": key for key in METRICS}


@dataclass(frozen=True)
class MetafileEntry:
    """One `Models:` entry of a metafile, reduced to what the audit compares."""

    file: str  # relative to mmpose's configs root
    name: str
    config: str  # as written in the metafile: "configs/<path>.py"
    weights: str | None
    results: dict[str, dict[str, float]]  # dataset name -> metric key -> value


@dataclass(frozen=True)
class Finding:
    """One compared field of one row."""

    row: str
    field: str
    manifest: Value
    metafile: Value
    status: Status
    why: str = ""
    source: str = ""  # metafile path relative to mmpose's configs root


@dataclass(frozen=True)
class AuditReport:
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every difference is acknowledged and every acknowledgement still applies."""
        return all(f.status in ("agree", "acknowledged") for f in self.findings)

    def count(self, status: Status) -> int:
        return sum(f.status == status for f in self.findings)


def same_value(a: Value, b: Value) -> bool:
    """Numbers equal within float noise (0.46 == 0.460); strings and None exactly."""
    if isinstance(a, float | int) and isinstance(b, float | int):
        return math.isclose(a, b, rel_tol=0.0, abs_tol=1e-9)
    return a == b


def _parse_metafile(path: Path, root: Path) -> list[MetafileEntry]:
    rel = path.relative_to(root).as_posix()
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ZooError(f"{path}: unreadable mmpose metafile: {str(exc).splitlines()[0]}") from exc
    models = doc.get("Models") if isinstance(doc, dict) else None
    if not isinstance(models, list):
        return []  # not a model metafile (e.g. a dataset/collection file)
    entries = []
    for model in models:
        if not isinstance(model, dict) or not isinstance(model.get("Config"), str):
            raise ZooError(f"{path}: unexpected metafile layout: a Models entry without Config")
        results: dict[str, dict[str, float]] = {}
        for result in model.get("Results") or []:
            metrics = result.get("Metrics") or {}
            mapped = {_METAFILE_METRICS[k]: float(v) for k, v in metrics.items() if k in _METAFILE_METRICS}
            results.setdefault(str(result.get("Dataset")), {}).update(mapped)
        entries.append(
            MetafileEntry(rel, str(model.get("Name", "")), model["Config"], model.get("Weights"), results)
        )
    return entries


def load_metafile_entries(root: Path, needles: Iterable[str]) -> list[MetafileEntry]:
    """Entries of every metafile under `root` that mentions one of `needles` (URLs, config paths).

    The text pre-filter keeps this to a handful of YAML parses out of ~150 metafiles.
    """
    needles = [n for n in needles if n]
    entries: list[MetafileEntry] = []
    for path in sorted(root.rglob("*.yml")):
        text = path.read_text(encoding="utf-8", errors="replace")
        if any(n in text for n in needles):
            entries.extend(_parse_metafile(path, root))
    return entries


def _metafile_config(row: Row) -> str | None:
    """How the metafile would write this row's config, if it is one of mmpose's own."""
    return "configs/" + row.config.removeprefix("mmpose::") if row.config.startswith("mmpose::") else None


def _match(row: Row, entries: list[MetafileEntry]) -> MetafileEntry | None:
    """The metafile entry describing this row: same weights (preferring the same config), else same config."""
    config = _metafile_config(row)
    by_url = [e for e in entries if e.weights == row.checkpoint.url]
    for entry in by_url:
        if entry.config == config:
            return entry
    if by_url:
        return by_url[0]
    return next((e for e in entries if config is not None and e.config == config), None)


def _compare(row: Row, table: Table, entry: MetafileEntry | None) -> list[tuple[str, Value, Value, bool]]:
    """(field, manifest value, metafile value, equal) for every field the audit checks."""
    if entry is None:
        return [("entry", row.checkpoint.url, None, False)]
    out: list[tuple[str, Value, Value, bool]] = [
        ("checkpoint.url", row.checkpoint.url, entry.weights, row.checkpoint.url == entry.weights),
        ("config", row.config, entry.config, entry.config == _metafile_config(row)),
    ]
    results = entry.results.get(table.metafile_dataset)
    if results is None:
        out.append(("results", table.metafile_dataset, ", ".join(sorted(entry.results)) or None, False))
        return out
    published = row.published_metrics
    for key in METRICS:
        mine, theirs = published.get(key), results.get(key)
        if mine is not None or theirs is not None:
            out.append((key, mine, theirs, same_value(mine, theirs)))
    return out


def audit_row(row: Row, table: Table, entries: list[MetafileEntry]) -> list[Finding]:
    """Findings for one row, including acknowledgements that no longer match anything (STALE)."""
    entry = _match(row, entries)
    source = entry.file if entry is not None else ""
    unused = list(row.acknowledged_drift)
    findings = []
    for name, mine, theirs, equal in _compare(row, table, entry):
        if equal:
            findings.append(Finding(row.id, name, mine, theirs, "agree", source=source))
            continue
        ack = next((a for a in unused if a.field == name and same_value(a.value, theirs)), None)
        if ack is not None:
            unused.remove(ack)
            findings.append(Finding(row.id, name, mine, theirs, "acknowledged", ack.why, source))
            continue
        other = next((a for a in unused if a.field == name), None)
        why = (
            f"acknowledged value is {other.value!r}"
            if other is not None
            else "not acknowledged in the manifest"
        )
        findings.append(Finding(row.id, name, mine, theirs, "DRIFT", why, source))
    for ack in unused:
        findings.append(
            Finding(
                row.id,
                ack.field,
                None,
                ack.value,
                "STALE",
                "acknowledged drift not found in the metafile",
                source,
            )
        )
    return findings


def audit(manifests: Manifests, configs_root: Path | None = None) -> AuditReport:
    """Audit every row; `configs_root` defaults to the installed mmpose's `.mim/configs`."""
    root = configs_root if configs_root is not None else mmpose_configs_root()
    needles = {row.checkpoint.url for row in manifests.rows} | {
        c for row in manifests.rows if (c := _metafile_config(row)) is not None
    }
    entries = load_metafile_entries(root, sorted(needles))
    findings = [f for table in manifests.tables for row in table.rows for f in audit_row(row, table, entries)]
    return AuditReport(findings)
