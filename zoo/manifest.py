"""Manifests: the published tables as validated data, the single source of truth of the harness.

mmpose keeps three copies of these numbers (README, per-model .md, metafile .yml) and they disagree;
everything here (fetch, run, compare, report, audit) reads the manifests instead, so there is one copy.
One YAML file per published table (`manifests/<table id>.yaml`): the table's title, caption and columns,
per-table `defaults:` deep-merged into every row, and the rows in published order. Validation is strict
(pydantic, unknown keys rejected) and every error is one line naming the file, line, row id and field,
because a silently wrong expected value would make every later comparison meaningless.
"""

from __future__ import annotations

import difflib
import importlib.util
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_args
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from zoo.errors import InputError, StackError

__all__ = [
    "AUDIT_FIELDS",
    "METRICS",
    "PARTS",
    "AcknowledgedDrift",
    "Band",
    "Checkpoint",
    "Column",
    "Details",
    "Manifests",
    "MetricTolerance",
    "Metrics",
    "PartMetrics",
    "Row",
    "Table",
    "Tolerance",
    "load_manifests",
    "mmpose_configs_root",
    "resolve_config",
    "zoo_configs_root",
]

PARTS = ("body", "foot", "face", "hand", "whole")
MetricKey = Literal[
    "body.ap", "body.ar", "foot.ap", "foot.ar", "face.ap", "face.ar",
    "hand.ap", "hand.ar", "whole.ap", "whole.ar",
]  # fmt: skip
METRICS: tuple[str, ...] = get_args(MetricKey)
# What `zoo audit` compares with mmpose's metafiles; an acknowledged drift names one of these.
AuditField = Literal["entry", "config", "checkpoint.url", "results", MetricKey]
AUDIT_FIELDS: tuple[str, ...] = ("entry", "config", "checkpoint.url", "results", *METRICS)
ColumnValue = Literal["name", "input_size", "details", MetricKey]

DATASETS_FILE = "datasets.yaml"  # the dataset registry (owned by zoo.data), not a table
CONFIG_SCHEMES = ("mmpose::", "zoo::")
_ID = r"^[a-z0-9]+(?:[-.][a-z0-9]+)*$"
# tools/misc/publish_model.py names checkpoints `<name>-<sha256[:8]>_<yyyymmdd>.pth`.
_CKPT_NAME = re.compile(r"^.+-(?P<hash>[0-9a-f]{8})_\d{8}\.pth$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_INPUT_SIZE = re.compile(r"^(?P<h>[1-9][0-9]*)x(?P<w>[1-9][0-9]*)$")
# Metrics and tolerances are on the 0-1 scale, never percent.
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]


class _Model(BaseModel):
    # strict: YAML "yes"/"0.5" strings must not be coerced into bools/floats behind the user's back.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def _check_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or any(c.isspace() for c in url):
        raise ValueError(f"not an http(s) URL: {url!r}")
    return url


class PartMetrics(_Model):
    """AP and AR of one body part (0-1 scale)."""

    ap: Fraction
    ar: Fraction


class Metrics(_Model):
    """Per-part metrics as published; a part is None where the table publishes only Whole."""

    body: PartMetrics | None = None
    foot: PartMetrics | None = None
    face: PartMetrics | None = None
    hand: PartMetrics | None = None
    whole: PartMetrics

    def get(self, key: str) -> float | None:
        """Value of a metric key such as `hand.ar` (None when the part is unpublished)."""
        part, stat = key.split(".")
        values = getattr(self, part)
        return None if values is None else getattr(values, stat)

    def flat(self) -> dict[str, float | None]:
        """All ten metric keys (`body.ap` ... `whole.ar`) in table order."""
        return {key: self.get(key) for key in METRICS}


class MetricTolerance(_Model):
    """A per-metric override; unset fields fall back to the row/table-wide values."""

    abs: Fraction | None = None
    direction: Literal["both", "lower"] | None = None


@dataclass(frozen=True)
class Band:
    """The resolved tolerance of one metric.

    `both`: |measured - expected| <= abs. `lower`: only a drop beyond abs counts (one-sided).
    """

    abs: float
    direction: Literal["both", "lower"]


class Tolerance(_Model):
    """Absolute tolerance on the 0-1 scale; table defaults deep-merged with the row's own."""

    abs: Fraction
    direction: Literal["both", "lower"]
    metrics: dict[MetricKey, MetricTolerance] = {}

    def for_metric(self, key: str) -> Band:
        """Per-metric value if set, else the row/table-wide one."""
        if key not in METRICS:
            raise KeyError(key)
        own = self.metrics.get(key)
        return Band(
            abs=own.abs if own is not None and own.abs is not None else self.abs,
            direction=own.direction if own is not None and own.direction is not None else self.direction,
        )


class Checkpoint(_Model):
    """Where the weights come from; the 8 hex in the file name are sha256(file)[:8]."""

    url: str
    sha256_prefix: str
    sha256: str | None = None

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @field_validator("sha256_prefix", "sha256", mode="before")
    @classmethod
    def _quoted(cls, value: Any) -> Any:
        if isinstance(value, int | float) and not isinstance(value, bool):  # e.g. 12345678, 1234e567
            raise ValueError("YAML read this digest as a number: quote it")
        return value

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        _check_url(url)
        name = url.rsplit("/", 1)[-1]
        if not _CKPT_NAME.match(name):
            raise ValueError(f"file name {name!r} does not end in '-<8 hex>_<yyyymmdd>.pth'")
        return url

    @field_validator("sha256_prefix")
    @classmethod
    def _prefix(cls, prefix: str, info: ValidationInfo) -> str:
        if not re.fullmatch(r"[0-9a-f]{8}", prefix):
            raise ValueError(f"{prefix!r} is not 8 lowercase hex digits")
        url = info.data.get("url")
        if url is not None:  # the url itself was valid
            in_name = _CKPT_NAME.match(url.rsplit("/", 1)[-1])["hash"]
            if prefix != in_name:
                raise ValueError(f"{prefix!r} does not match {in_name!r} in the URL's file name")
        return prefix

    @field_validator("sha256")
    @classmethod
    def _sha256(cls, digest: str | None, info: ValidationInfo) -> str | None:
        if digest is None:
            return None
        if not _SHA256.match(digest):
            raise ValueError("not 64 lowercase hex digits")
        prefix = info.data.get("sha256_prefix")
        if prefix is not None and not digest.startswith(prefix):
            raise ValueError(f"does not start with sha256_prefix {prefix!r}")
        return digest


class Details(_Model):
    """The table's 'Details and Download' link, text and target exactly as published."""

    text: str = Field(min_length=1)
    target: str = Field(min_length=1)


class AcknowledgedDrift(_Model):
    """A known disagreement between this row and mmpose's own metadata, so `zoo audit` can pass.

    It matches only the exact (source, field, value) seen, so a later change upstream shows up again.
    """

    source: Literal["metafile"]
    field: AuditField
    value: float | str | None  # what the metafile says; required, null when it says nothing
    why: str = Field(min_length=1)


class AcceptedDifference(_Model):
    """A field where the record a baseline was forced from measured something else (both values)."""

    field: str = Field(min_length=1)
    record: str | float | bool | None
    manifest: str | float | bool | None


class ForcedAccept(_Model):
    """Why `expected` came from a record that did not measure exactly this row (`zoo baseline accept
    --force REASON`): the gate then accepts records with exactly these differences, and no others."""

    reason: str = Field(min_length=1)
    differences: list[AcceptedDifference] = Field(min_length=1)


class Row(_Model):
    """One line of a published table: what to run, where to get it, and what it should score."""

    id: str = Field(pattern=_ID)
    table: str
    name: str = Field(min_length=1)
    arch: str = Field(min_length=1)
    input_size: tuple[int, int]  # (h, w), written "HxW" like the table
    config: str
    overrides: dict[str, Any] = {}  # mmengine cfg-options style dotted keys
    checkpoint: Checkpoint
    log_url: str
    details: Details
    dataset: str
    boxes: Literal["det", "gt"]  # what the published number used; the config already implies it
    use_area: bool
    expected: Metrics
    published: Metrics | None = None  # set when `expected` was re-baselined; the published values
    forced_accept: ForcedAccept | None = None  # set by `zoo baseline accept --force`
    tolerance: Tolerance
    notes: list[str] = []
    acknowledged_drift: list[AcknowledgedDrift] = []

    @field_validator("input_size", mode="before")
    @classmethod
    def _input_size(cls, value: Any) -> tuple[int, int]:
        match = _INPUT_SIZE.match(value) if isinstance(value, str) else None
        if match is None:
            raise ValueError(f"must be 'HxW' such as '256x192', got {value!r}")
        return int(match["h"]), int(match["w"])

    @field_validator("config")
    @classmethod
    def _config(cls, ref: str) -> str:
        scheme = next((s for s in CONFIG_SCHEMES if ref.startswith(s)), None)
        rel = ref[len(scheme) :] if scheme else ""
        if scheme is None or not rel.endswith(".py") or rel.startswith("/") or ".." in rel.split("/"):
            raise ValueError(f"must be 'mmpose::<path>.py' or 'zoo::<path>.py' (relative), got {ref!r}")
        return ref

    @field_validator("log_url")
    @classmethod
    def _log_url(cls, url: str) -> str:
        return _check_url(url)

    @property
    def input_size_text(self) -> str:
        return f"{self.input_size[0]}x{self.input_size[1]}"

    @property
    def published_metrics(self) -> Metrics:
        """The numbers of the published table (what `zoo table --expected` and `zoo audit` use)."""
        return self.published if self.published is not None else self.expected

    @property
    def config_path(self) -> Path:
        return resolve_config(self.config)


class Column(_Model):
    header: str = Field(min_length=1)
    value: ColumnValue


class Table(_Model):
    """One published table; `id` is the manifest's file name without `.yaml`."""

    id: str = Field(pattern=_ID)
    title: str = Field(min_length=1)
    caption: str = Field(min_length=1)
    dataset: str  # id in manifests/datasets.yaml; every row inherits it
    metafile_dataset: str = Field(min_length=1)  # this dataset's name in mmpose metafiles' Results
    decimals: int = Field(ge=0, le=6)  # metric display precision of the published table
    # The published page the table comes from: its relative 'Details and Download' targets resolve
    # against it in reports (the published text itself keeps them relative); without it they stay as
    # published.
    source_url: str | None = Field(default=None, pattern=r"^https://\S+$")
    columns: list[Column] = Field(min_length=1)
    rows: list[Row] = Field(min_length=1)


@dataclass(frozen=True)
class Manifests:
    """All tables of a manifest folder, rows in published order."""

    dir: Path
    tables: list[Table]

    @property
    def rows(self) -> list[Row]:
        return [row for table in self.tables for row in table.rows]

    def row(self, row_id: str) -> Row:
        for row in self.rows:
            if row.id == row_id:
                return row
        raise InputError(
            f"{self.dir}: unknown row id {row_id!r}{_suggest(row_id, [r.id for r in self.rows])}"
        )

    def table(self, table_id: str) -> Table:
        for table in self.tables:
            if table.id == table_id:
                return table
        ids = [t.id for t in self.tables]
        raise InputError(f"{self.dir}: unknown table {table_id!r}{_suggest(table_id, ids)}")


def _suggest(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    return f" (did you mean: {', '.join(close)}?)" if close else f" (known: {', '.join(known)})"


def mmpose_configs_root() -> Path:
    """mmpose's packaged configs (`mmpose/.mim/configs`), located without importing mmpose (slow)."""
    spec = importlib.util.find_spec("mmpose")
    if spec is None or not spec.submodule_search_locations:
        raise StackError("mmpose is not installed: 'mmpose::' configs cannot be resolved")
    root = Path(next(iter(spec.submodule_search_locations))) / ".mim" / "configs"
    if not root.is_dir():
        raise StackError(f"mmpose at {root.parents[1]} has no packaged configs ({root} missing)")
    return root


def zoo_configs_root() -> Path:
    """Configs shipped by this project, for rows mmpose has no config for."""
    return Path(__file__).resolve().parent / "configs"


def resolve_config(ref: str) -> Path:
    """Path of a `mmpose::...` or `zoo::...` config reference (existence is checked by the loader)."""
    if ref.startswith("mmpose::"):
        return mmpose_configs_root() / ref[len("mmpose::") :]
    if ref.startswith("zoo::"):
        return zoo_configs_root() / ref[len("zoo::") :]
    raise InputError(f"config {ref!r}: must start with 'mmpose::' or 'zoo::'")


# --- loading ----------------------------------------------------------------------------------------

KeyPath = tuple[Any, ...]  # a location inside a YAML document: keys and list indices


def _yaml_with_lines(path: Path) -> tuple[Any, dict[KeyPath, int]]:
    """Parse one YAML file and map every key path to its 1-based line (for error messages)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read: {exc}") from exc
    loader = yaml.SafeLoader(text)
    lines: dict[KeyPath, int] = {}
    try:
        node = loader.get_single_node()
        if node is None:
            return None, lines
        _index_lines(path, node, (), lines)  # before construction, which rewrites `<<` merges in place
        return loader.construct_document(node), lines
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise InputError(f"{where}: invalid YAML: {problem}") from exc
    finally:
        loader.dispose()


def _index_lines(
    file: Path, node: yaml.Node, at: KeyPath, lines: dict[KeyPath, int], within: frozenset[int] = frozenset()
) -> None:
    """Record the line of every key path (the first recorded wins: explicit keys before `<<` merges)."""
    if id(node) in within:
        raise InputError(f"{file}:{node.start_mark.line + 1}: recursive YAML alias")
    within = within | {id(node)}
    lines.setdefault(at, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        merged: list[yaml.Node] = []
        seen: set[str] = set()
        for key, value in node.value:
            if key.tag == "tag:yaml.org,2002:merge":
                merged.extend(value.value if isinstance(value, yaml.SequenceNode) else [value])
                continue
            if key.value in seen:
                raise InputError(f"{file}:{key.start_mark.line + 1}: duplicate key {key.value!r}")
            seen.add(key.value)
            lines.setdefault((*at, key.value), key.start_mark.line + 1)
            _index_lines(file, value, (*at, key.value), lines, within)
        for source in merged:
            _index_lines(file, source, at, lines, within)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _index_lines(file, item, (*at, i), lines, within)


def _deep_merge(base: Any, over: Any) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for key, value in over.items():
            out[key] = _deep_merge(base[key], value) if key in base else value
        return out
    return over


def _data_path(data: Any, loc: tuple[Any, ...], missing: bool) -> KeyPath:
    """The part of a pydantic `loc` that walks real data (drops union tags such as 'float')."""
    out: list[Any] = []
    for i, part in enumerate(loc):
        in_dict = isinstance(data, dict) and part in data
        in_list = isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data)
        if in_dict or in_list:
            data = data[part]
        else:
            if missing and i == len(loc) - 1:
                out.append(part)
            break
        out.append(part)
    return tuple(out)


def _line_of(lines: dict[KeyPath, int], *candidates: KeyPath) -> int | None:
    for path in candidates:  # exact location first: the row itself, then the table defaults
        if path in lines:
            return lines[path]
    first = candidates[0]
    for n in range(len(first) - 1, -1, -1):  # else the nearest enclosing key (or the document)
        if first[:n] in lines:
            return lines[first[:n]]
    return None


def _message(error: dict[str, Any]) -> str:
    if error["type"] == "missing":
        return "required field is missing"
    if error["type"] == "extra_forbidden":
        return "unknown key"
    msg = str(error["msg"])
    return msg.removeprefix("Value error, ")


def _where(file: Path, line: int | None) -> str:
    return f"{file}:{line}" if line is not None else str(file)


def _row_label(raw: Any, index: int) -> str:
    rid = raw.get("id") if isinstance(raw, dict) else None
    return f"row {rid!r}" if isinstance(rid, str) else f"row #{index + 1}"


def _validation_error(
    file: Path,
    exc: ValidationError,
    doc: dict[str, Any],
    rows: list[dict[str, Any]],
    lines: dict[KeyPath, int],
) -> InputError:
    """One line for the first pydantic error; `rows` are the rows merged with the defaults."""
    errors = exc.errors()
    first = errors[0]
    loc = tuple(first["loc"])
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    missing = first["type"] == "missing"
    if len(loc) >= 2 and loc[0] == "rows" and isinstance(loc[1], int):
        field = _data_path(rows[loc[1]], loc[2:], missing)
        line = _line_of(lines, ("rows", loc[1], *field), ("defaults", *field))
        label = f"{_row_label(doc['rows'][loc[1]], loc[1])}: {'.'.join(map(str, field)) or '(row)'}"
    else:
        field = _data_path(doc, loc, missing)
        line = _line_of(lines, field)
        label = ".".join(map(str, field)) or "(top level)"
    return InputError(f"{_where(file, line)}: {label}: {_message(first)}{more}")


_INJECTED = ("table", "dataset")  # row fields the loader fills from the table


def _load_table(file: Path) -> tuple[Table, dict[KeyPath, int]]:
    doc, lines = _yaml_with_lines(file)
    if not isinstance(doc, dict):
        raise InputError(f"{_where(file, 1)}: top level must be a mapping of table fields")
    defaults = doc.get("defaults", {})
    raw_rows = doc.get("rows")
    if not isinstance(defaults, dict):
        raise InputError(f"{_where(file, lines.get(('defaults',)))}: defaults: must be a mapping")
    if not isinstance(raw_rows, list):
        raise InputError(f"{_where(file, lines.get(('rows',)))}: rows: must be a list of rows")
    rows = []
    for i, raw in enumerate(raw_rows):
        if not isinstance(raw, dict):
            raise InputError(f"{_where(file, lines.get(('rows', i)))}: row #{i + 1}: must be a mapping")
        for key in _INJECTED:
            for where, source in ((("rows", i, key), raw), (("defaults", key), defaults)):
                if key in source:
                    raise InputError(
                        f"{_where(file, lines.get(where))}: {_row_label(raw, i)}: {key}: "
                        f"set by the table, not per row"
                    )
        row = _deep_merge(defaults, raw)
        row["table"] = doc.get("id")
        row["dataset"] = doc.get("dataset")
        rows.append(row)
    body = {k: v for k, v in doc.items() if k != "defaults"}
    try:
        table = Table.model_validate({**body, "rows": rows})
    except ValidationError as exc:
        raise _validation_error(file, exc, doc, rows, lines) from None
    if table.id != file.stem:
        raise InputError(f"{_where(file, lines.get(('id',)))}: id: {table.id!r} must equal the file name")
    return table, lines


def _dataset_ids(folder: Path) -> set[str] | None:
    """Top-level dataset ids of the registry, or None when there is none (its schema is zoo.data's)."""
    file = folder / DATASETS_FILE
    if not file.exists():
        return None
    doc, lines = _yaml_with_lines(file)
    datasets = doc.get("datasets") if isinstance(doc, dict) else None
    if not isinstance(datasets, dict):
        raise InputError(f"{_where(file, 1)}: datasets: must be a mapping of dataset ids")
    return set(datasets)


def _check_references(file: Path, table: Table, lines: dict[KeyPath, int], datasets: set[str] | None) -> None:
    if datasets is not None and table.dataset not in datasets:
        raise InputError(
            f"{_where(file, lines.get(('dataset',)))}: dataset: {table.dataset!r} is not in "
            f"{DATASETS_FILE}{_suggest(table.dataset, sorted(datasets))}"
        )
    for i, row in enumerate(table.rows):
        path = resolve_config(row.config)
        if not path.is_file():
            line = _line_of(lines, ("rows", i, "config"), ("defaults", "config"))
            raise InputError(
                f"{_where(file, line)}: row {row.id!r}: config: {row.config!r} does not exist ({path})"
            )


def _table_files(folder: Path) -> Iterator[Path]:
    for file in sorted(folder.glob("*.yaml")):
        if file.name != DATASETS_FILE:
            yield file


def load_manifests(folder: Path) -> Manifests:
    """Load and validate every table of a manifest folder; InputError (exit 2) on any problem."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: manifest folder does not exist")
    files = list(_table_files(folder))
    if not files:
        raise InputError(f"{folder}: no table manifests (*.yaml other than {DATASETS_FILE})")
    datasets = _dataset_ids(folder)
    tables: list[Table] = []
    first_seen: dict[str, str] = {}
    for file in files:
        table, lines = _load_table(file)
        for i, row in enumerate(table.rows):
            where = _where(file, lines.get(("rows", i, "id")))
            if row.id in first_seen:
                raise InputError(
                    f"{where}: row {row.id!r}: id: duplicate row id (first in {first_seen[row.id]})"
                )
            first_seen[row.id] = f"{file.name}:{lines.get(('rows', i, 'id'))}"
        _check_references(file, table, lines, datasets)
        tables.append(table)
    return Manifests(dir=folder, tables=tables)
