"""Why two runs differ: their metrics side by side and every recorded fact that is not the same.

A row that fails its tolerance says only that a number moved. The cause is nearly always written
down already, in the two result records: another xtcocotools (mmpose#1280 moved APm/APl by ~3
points), detector instead of GT boxes (~1.7 AP), a config default changed between mmpose 0.x and
1.x, another checkpoint, another data file, a subset. `diff_records` holds two records against
each other field by field, from their JSON exactly as it is on disk:

* metrics: per part and stat, A, B and Δ = B − A (-1, COCO's "undefined", has no Δ);
* differences: every other field whose value differs, dotted (`environment.packages.xtcocotools.
  version`, `config.model.test_cfg.flip_test`), each with both values, grouped by what it is.
  Left out: the metrics and per-keypoint numbers (shown as deltas), the digests of what is compared
  leaf by leaf (`fingerprint_digest`, the config digest), fingerprint fields that only mirror a
  record field with the same change, and, unless `all_fields`, the volatile fields
  (`zoo.results.VOLATILE`: clocks, timings, the shared pass; the command line is kept), where
  things were installed or cached, and the checkpoint's URL when its sha256 is the same (the same
  bytes from a mirror). Timings go to a separate speed line instead.
* per keypoint: when both records carry `per_keypoint`, the per-part OKS/PCK deltas and the
  keypoints whose OKS dropped most.

Lists are values (an input size, a mean), except a list of objects of the same length (a
pipeline), which is followed step by step so the one changed key of one step is named.
"""

from __future__ import annotations

import json
import math
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zoo.errors import InputError
from zoo.results import RECORD, VOLATILE, Record, read_record

PARTS: tuple[str, ...] = ("body", "foot", "face", "lefthand", "righthand", "hand", "wholebody")
STATS: tuple[str, ...] = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")
ALWAYS_SHOWN = ("AP", "AR")  # the published stats: shown even when equal
WORST = 5  # keypoints listed by Δ OKS

# Groups of differences, in the order they are shown; a field belongs to its longest matching prefix.
SECTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("status", ("status", "error", "reason", "missing")),
    ("row", ("row_id", "table", "name", "fingerprint.row")),
    ("checkpoint", ("checkpoint", "fingerprint.checkpoint_sha256", "fingerprint.row.checkpoint")),
    ("data", ("box_source", "use_area", "fingerprint.row.dataset", "fingerprint.subset", "fingerprint.data",
              "counts", "fingerprint.boxes", "fingerprint.row.boxes", "fingerprint.row.use_area")),
    ("config", ("config", "fingerprint.row.config", "fingerprint.row.input_size",
                "fingerprint.config_sha256")),
    ("environment", ("environment.packages", "environment")),
    ("inference", ("inference", "resumed_from_predictions", "fingerprint.numerics", "fingerprint.paths")),
    ("command", ("command", "started", "finished", "timings")),
)  # fmt: skip
OTHER = "other"

# Shown elsewhere or derived from what is compared leaf by leaf.
_NOT_DIFFERENCES = ("metrics", "per_keypoint", "fingerprint_digest")
# fingerprint fields that repeat a record field: left out when the record field changed the same way
_MIRRORS: tuple[tuple[str, str], ...] = (
    ("fingerprint.row.id", "row_id"),
    ("fingerprint.checkpoint_sha256", "checkpoint.sha256"),
    ("fingerprint.row.checkpoint.url", "checkpoint.url"),
    ("fingerprint.boxes", "box_source"),
    ("fingerprint.row.use_area", "use_area"),
    ("fingerprint.numerics", "inference.numerics"),
    ("inference.numerics.device", "inference.device"),
)
# the volatile fields left out by default; the command line is kept: how each run was started explains a lot
_VOLATILE_LEFT_OUT = tuple(".".join(v) for v in VOLATILE if v != ("command",))
# Where things live, not what was measured: different on every machine and in every temp folder.
_LOCATIONS = ("environment.dirs", "environment.packages.*.path")


class _Absent:
    """A field one record does not have (distinct from a JSON null)."""

    def __repr__(self) -> str:
        return "(absent)"


ABSENT: Any = _Absent()


@dataclass(frozen=True)
class Change:
    """One field whose value differs; `a`/`b` is `ABSENT` where that record lacks the field."""

    field: str
    section: str
    a: Any
    b: Any

    def to_json(self) -> dict[str, Any]:
        """A missing `a` or `b` key means the field is absent from that record."""
        out: dict[str, Any] = {"field": self.field, "section": self.section}
        if self.a is not ABSENT:
            out["a"] = self.a
        if self.b is not ABSENT:
            out["b"] = self.b
        return out


@dataclass(frozen=True)
class Cell:
    """One number of both runs (None: no number); `delta` is None when either is missing or is
    COCO's undefined (-1)."""

    a: float | None
    b: float | None

    @property
    def delta(self) -> float | None:
        if self.a is None or self.b is None or self.a < 0 or self.b < 0:
            return None
        return self.b - self.a

    @property
    def differs(self) -> bool:
        return self.a != self.b

    def to_json(self) -> dict[str, float | None]:
        return {"a": self.a, "b": self.b, "delta": self.delta}


@dataclass(frozen=True, eq=False)
class KeypointDiff:
    """The per-keypoint statistics of both runs (zoo.keypoints.KeypointStats)."""

    a: Any
    b: Any

    def parts(self) -> dict[str, dict[str, Cell]]:
        """Per part and whole body: n, oks, pck, dist of both runs (NaN, no value, becomes None)."""
        out: dict[str, dict[str, Cell]] = {}
        for name in self.a.parts:
            pa, pb = self.a.parts[name], self.b.parts.get(name, {})
            out[name] = {m: Cell(_finite(pa.get(m)), _finite(pb.get(m))) for m in ("n", "oks", "pck", "dist")}
        return out

    def worst(self, count: int = WORST) -> list[tuple[int, Cell]]:
        """The `count` keypoints with the lowest Δ OKS among those both runs have a value for."""
        import numpy as np

        delta = self.b.oks - self.a.oks
        valid = np.nonzero(np.isfinite(delta))[0]
        picked = valid[np.argsort(delta[valid], kind="stable")][:count]
        return [(int(k), Cell(float(self.a.oks[k]), float(self.b.oks[k]))) for k in picked]

    def to_json(self) -> dict[str, Any]:
        from zoo.keypoints import keypoint_names, part_of

        names = keypoint_names()
        return {
            "matched": {"a": self.a.matched, "b": self.b.matched},
            "parts": {p: {m: c.to_json() for m, c in cells.items()} for p, cells in self.parts().items()},
            "worst": [
                {"keypoint": k, "name": names[k], "part": part_of(k), **cell.to_json()}
                for k, cell in self.worst()
            ],
        }


@dataclass(frozen=True)
class RowDiff:
    """Two records of (usually) the same row held against each other."""

    a: Record
    b: Record
    metrics: dict[str, dict[str, Cell]]  # part -> stat -> cell; empty unless both records are ok
    changes: list[Change]
    speed: dict[str, Cell]  # total_s, inference_s, crops_per_s where recorded
    keypoints: KeypointDiff | None = None

    @property
    def key(self) -> str:
        return self.a.row_id if self.same_row else f"{self.a.row_id} vs {self.b.row_id}"

    @property
    def same_row(self) -> bool:
        return self.a.row_id == self.b.row_id

    def shown_stats(self) -> list[str]:
        """AP and AR, and every other stat that differs in some part, in COCO order."""
        differ = {s for cells in self.metrics.values() for s, c in cells.items() if c.differs}
        return [s for s in STATS if s in ALWAYS_SHOWN or s in differ]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "a": {"row_id": self.a.row_id, "name": self.a.name, "status": self.a.status},
            "b": {"row_id": self.b.row_id, "name": self.b.name, "status": self.b.status},
            "same_row": self.same_row,
            "metrics": {p: {s: c.to_json() for s, c in cells.items()} for p, cells in self.metrics.items()},
            "differences": [c.to_json() for c in self.changes],
            "speed": {k: c.to_json() for k, c in self.speed.items()},
        }
        if self.keypoints is not None:
            out["per_keypoint"] = self.keypoints.to_json()
        return out


@dataclass(frozen=True)
class Diff:
    """Two runs: the row pairs compared and the rows only one side has."""

    a_label: str
    b_label: str
    rows: list[RowDiff]
    only_a: list[str] = field(default_factory=list)
    only_b: list[str] = field(default_factory=list)
    all_fields: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "a": self.a_label,
            "b": self.b_label,
            "rows": {r.key: r.to_json() for r in self.rows},
            "only_a": self.only_a,
            "only_b": self.only_b,
            "all_fields": self.all_fields,
        }


# --------------------------------------------------------------------------------------------------
# input: a record file, a row folder, or a results folder


@dataclass(frozen=True)
class Side:
    """One side of a diff: its records by row id, where each was read, and whether the user named
    one record (then it is compared with the other side whatever its row)."""

    label: str
    records: dict[str, Record]
    sources: dict[str, str]
    single: bool


def load_side(path: Path) -> Side:
    """`<out>/<row>/result.json`, a row folder holding `result.json`, or a `zoo run --out` folder."""
    path = Path(path)
    if path.is_file():
        files, single = [path], True
    elif (path / RECORD).is_file():
        files, single = [path / RECORD], True
    elif path.is_dir():
        files, single = sorted(path.glob(f"*/{RECORD}")), False
        if not files:
            raise InputError(f"{path}: no result records (<row>/{RECORD}) in this folder")
    else:
        raise InputError(f"{path}: not found (give a {RECORD} or a results folder of `zoo run`)")
    records, sources = {}, {}
    for file in files:
        record = read_record(file)
        records[record.row_id], sources[record.row_id] = record, str(file)
    return Side(str(path), records, sources, single)


def diff_sides(a: Side, b: Side, *, all_fields: bool = False) -> Diff:
    """Rows matched by id (two single records: compared whatever their rows)."""
    if a.single and b.single:
        ((ida, ra),), ((idb, rb),) = a.records.items(), b.records.items()
        rows = [diff_records(ra, rb, all_fields=all_fields, sources=(a.sources[ida], b.sources[idb]))]
        return Diff(a.label, b.label, rows, all_fields=all_fields)
    common = [rid for rid in a.records if rid in b.records]
    rows = [
        diff_records(a.records[rid], b.records[rid], all_fields=all_fields,
                     sources=(a.sources[rid], b.sources[rid]))
        for rid in common
    ]  # fmt: skip
    only_a = [rid for rid in a.records if rid not in b.records]
    only_b = [rid for rid in b.records if rid not in a.records]
    return Diff(a.label, b.label, rows, only_a, only_b, all_fields)


def diff_paths(a: Path, b: Path, *, all_fields: bool = False) -> Diff:
    return diff_sides(load_side(a), load_side(b), all_fields=all_fields)


# --------------------------------------------------------------------------------------------------
# the logic: two records in, their differences out


def diff_records(
    a: Record, b: Record, *, all_fields: bool = False, sources: tuple[str, str] = ("A", "B")
) -> RowDiff:
    """Metrics, differing fields, speed and (when both carry it) per-keypoint deltas of two records.

    `sources` name the records in the one line a malformed `per_keypoint` raises."""
    ja, jb = a.to_json(), b.to_json()
    metrics = _metric_cells(a, b) if a.status == b.status == "ok" else {}
    changes = _changes(ja, jb, all_fields=all_fields)
    return RowDiff(a, b, metrics, changes, _speed(ja, jb), _keypoints(ja, jb, sources))


def _metric_cells(a: Record, b: Record) -> dict[str, dict[str, Cell]]:
    parts = [p for p in PARTS if p in a.metrics or p in b.metrics]
    parts += [p for p in (*a.metrics, *b.metrics) if p not in parts]
    out: dict[str, dict[str, Cell]] = {}
    for part in dict.fromkeys(parts):
        va, vb = a.metrics.get(part, {}), b.metrics.get(part, {})
        stats = [*STATS, *(s for s in (*va, *vb) if s not in STATS)]
        out[part] = {s: Cell(_finite(va.get(s)), _finite(vb.get(s))) for s in dict.fromkeys(stats)}
    return out


def _finite(value: Any) -> float | None:
    """A number of a record, None for no number (absent, null, NaN: nothing to subtract)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _changes(ja: Mapping[str, Any], jb: Mapping[str, Any], *, all_fields: bool) -> list[Change]:
    found: list[tuple[str, Any, Any]] = []
    _walk(ja, jb, "", found)
    both_configs = isinstance(ja.get("config"), dict) and isinstance(jb.get("config"), dict)
    pairs = {path: (x, y) for path, x, y in found}
    kept = []
    for path, x, y in found:
        if path.split(".")[0].split("[")[0] in _NOT_DIFFERENCES:
            continue
        if path == "fingerprint.config_sha256" and both_configs:
            continue  # the config is compared key by key
        if not all_fields and (_is_volatile(path) or _is_location(path)):
            continue
        if not all_fields and path == "checkpoint.url" and _same(*_checkpoint_sha256(ja, jb)):
            continue  # the same bytes from another place (a mirror, a loopback server's port)
        canonical = _mirror_of(path)
        if canonical is not None and _same(pairs.get(canonical), (x, y)):
            continue
        kept.append(Change(path, section_of(path), x, y))
    return sorted(kept, key=lambda c: _place(c.field)[1:])  # stable: record order within a prefix


def _checkpoint_sha256(ja: Mapping[str, Any], jb: Mapping[str, Any]) -> tuple[Any, Any]:
    def sha(j: Mapping[str, Any]) -> Any:
        checkpoint = j.get("checkpoint")
        return checkpoint.get("sha256", ABSENT) if isinstance(checkpoint, dict) else ABSENT

    return sha(ja), sha(jb)


def _walk(a: Any, b: Any, path: str, out: list[tuple[str, Any, Any]]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in dict.fromkeys([*a, *b]):
            _walk(a.get(key, ABSENT), b.get(key, ABSENT), f"{path}.{key}" if path else str(key), out)
    elif _steps(a) and _steps(b) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _walk(x, y, f"{path}[{i}]", out)
    elif not _same(a, b):
        out.append((path, a, b))


def _steps(value: Any) -> bool:
    """A list of objects (a pipeline, hooks): followed element by element."""
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _same(a: Any, b: Any) -> bool:
    """Equal as JSON (true is not 1, 1 is not 1.0)."""
    if a is ABSENT or b is ABSENT:
        return a is b
    return json.dumps(a, sort_keys=True, default=repr) == json.dumps(b, sort_keys=True, default=repr)


def _under(path: str, prefix: str) -> bool:
    """`path` is `prefix` or inside it (by whole keys); `*` in the prefix matches one key."""
    keys, want = _keys(path), _keys(prefix)
    return len(keys) >= len(want) and all(w in ("*", k) for w, k in zip(want, keys, strict=False))


def _keys(path: str) -> list[str]:
    return path.replace("[", ".[").split(".")


def _is_volatile(path: str) -> bool:
    return any(_under(path, prefix) for prefix in _VOLATILE_LEFT_OUT)


def _is_location(path: str) -> bool:
    return any(_under(path, prefix) for prefix in _LOCATIONS)


def _mirror_of(path: str) -> str | None:
    for mirror, canonical in _MIRRORS:
        if _under(path, mirror):
            return canonical + path[len(mirror) :]
    return None


def section_of(path: str) -> str:
    """The group a differing field is shown in: its longest matching prefix in `SECTIONS`."""
    return _place(path)[0]


def _place(path: str) -> tuple[str, int, int]:
    """(section, its position, the matching prefix's position in it): the display order."""
    best, length = (OTHER, len(SECTIONS), 0), 0
    for i, (name, prefixes) in enumerate(SECTIONS):
        for j, prefix in enumerate(prefixes):
            if _under(path, prefix) and len(_keys(prefix)) > length:
                best, length = (name, i, j), len(_keys(prefix))
    return best


def _speed(ja: Mapping[str, Any], jb: Mapping[str, Any]) -> dict[str, Cell]:
    def get(record: Mapping[str, Any], group: str, key: str) -> float | None:
        values = record.get(group)
        return _finite(values.get(key)) if isinstance(values, Mapping) else None

    out = {}
    for group, key in (("timings", "total_s"), ("timings", "inference_s"), ("inference", "crops_per_s")):
        cell = Cell(get(ja, group, key), get(jb, group, key))
        if cell.a is not None or cell.b is not None:
            out[key] = cell
    return out


def _keypoints(ja: Mapping[str, Any], jb: Mapping[str, Any], sources: tuple[str, str]) -> KeypointDiff | None:
    if "per_keypoint" not in ja or "per_keypoint" not in jb:
        return None
    from zoo.keypoints import KeypointStats

    stats = [
        KeypointStats.from_json(record["per_keypoint"], f"{source}: per_keypoint")
        for record, source in ((ja, sources[0]), (jb, sources[1]))
    ]
    return KeypointDiff(*stats)


# --------------------------------------------------------------------------------------------------
# plots


def write_plots(diff: Diff, path: Path) -> list[Path]:
    """`plot_keypoint_delta` of every row pair carrying per-keypoint numbers: `path` for one pair,
    `<stem>-<row><suffix>` beside it for several. None at all is bad input (nothing is written)."""
    from zoo.keypoints import plot_keypoint_delta

    rows = [r for r in diff.rows if r.keypoints is not None]
    if not rows:
        raise InputError(
            f"--plot {path}: no row has per-keypoint numbers (per_keypoint) in both records; nothing to plot"
        )
    path = Path(path)
    written = []
    for row in rows:
        target = (
            path
            if len(rows) == 1
            else path.with_name(f"{path.stem}-{row.key.replace(' ', '_')}{path.suffix}")
        )
        title = row.key if row.same_row else f"{row.a.row_id} → {row.b.row_id}"
        labels = (diff.a_label, diff.b_label)
        written.append(plot_keypoint_delta(row.keypoints.a, row.keypoints.b, target, title, labels=labels))
    return written


# --------------------------------------------------------------------------------------------------
# rendering


def render_json(diff: Diff, plots: Sequence[Path] = ()) -> str:
    out = diff.to_json()
    if plots:
        out["plots"] = [str(p) for p in plots]
    return json.dumps(out, indent=2) + "\n"


def render_markdown(diff: Diff, plots: Sequence[Path] = ()) -> str:
    """One section per row pair: the metrics table, what differs, per-keypoint deltas, speed."""
    lines = [
        "# zoo diff",
        "",
        f"- A: `{_cell_text(diff.a_label)}`",
        f"- B: `{_cell_text(diff.b_label)}`",
        f"- rows compared: {len(diff.rows)}"
        + (f"; only in A: {_ids(diff.only_a)}" if diff.only_a else "")
        + (f"; only in B: {_ids(diff.only_b)}" if diff.only_b else ""),
        "",
        "Δ = B − A. Metric cells read `A → B (Δ)`, one value where both are equal; — is undefined"
        " (-1)." + ("" if diff.all_fields else " Volatile fields (clocks, timings, install and cache"
                    " folders) are not listed as differences (`--all-fields` lists them)."),
    ]  # fmt: skip
    for row in diff.rows:
        lines += ["", *_row_markdown(row)]
    if plots:
        lines += ["", "Per-keypoint Δ plots: " + ", ".join(f"`{p}`" for p in plots)]
    return "\n".join(lines) + "\n"


def _ids(ids: Sequence[str]) -> str:
    return ", ".join(f"`{i}`" for i in ids)


def _row_markdown(row: RowDiff) -> list[str]:
    a, b = row.a, row.b
    if row.same_row:
        lines = [f"## {a.row_id} — {a.name}" if a.name else f"## {a.row_id}"]
    else:
        lines = [
            f"## {a.row_id} vs {b.row_id}",
            "",
            f"**Different rows**: A is `{a.row_id}` ({a.name}), B is `{b.row_id}` ({b.name}).",
        ]
    lines.append("")
    if row.metrics:
        stats = row.shown_stats()
        lines += [
            "| part | " + " | ".join(stats) + " |",
            "|---|" + "---|" * len(stats),
            *(
                f"| {part} | "
                + " | ".join(_metric_text(cells.get(s, Cell(None, None))) for s in stats)
                + " |"
                for part, cells in row.metrics.items()
            ),
        ]
    else:
        lines.append(f"No metrics to compare: A is {a.status}, B is {b.status}.")
    lines.append("")
    if row.changes:
        lines += [f"**What differs** ({len(row.changes)}):", "", "| | field | A | B |", "|---|---|---|---|"]
        previous = None
        for change in row.changes:
            group = change.section if change.section != previous else ""
            previous = change.section
            a_text, b_text = _pair_text(change)
            lines.append(f"| {group} | `{change.field}` | {a_text} | {b_text} |")
    else:
        lines.append("**Nothing else differs.**" if not row.metrics or any(
            c.differs for cells in row.metrics.values() for c in cells.values()
        ) else "**Identical** (metrics and every recorded field).")  # fmt: skip
    if row.keypoints is not None:
        lines += ["", *_keypoint_markdown(row.keypoints)]
    if row.speed:
        lines += [
            "",
            "Speed (not a difference): " + " · ".join(_speed_text(k, c) for k, c in row.speed.items()),
        ]
    return lines


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if value < 0:
        return "—"
    return f"{value:.{digits}f}"


def _signed(value: float, digits: int = 4) -> str:
    return f"{round(value, digits) + 0.0:+.{digits}f}".replace("-", "−")


def _metric_text(cell: Cell, digits: int = 4) -> str:
    if not cell.differs:
        return _fmt(cell.a, digits)
    delta = cell.delta
    text = f"{_fmt(cell.a, digits)} → {_fmt(cell.b, digits)}"
    return f"{text} ({_signed(delta, digits)})" if delta is not None else text


def _speed_text(key: str, cell: Cell) -> str:
    if key == "crops_per_s":
        return f"{_fmt(cell.a, 1)} → {_fmt(cell.b, 1)} crops/s"
    label = key.removesuffix("_s")
    return f"{label} {_fmt(cell.a, 2)} s → {_fmt(cell.b, 2)} s"


def _keypoint_markdown(kd: KeypointDiff) -> list[str]:
    from zoo.keypoints import PART_LABELS, PCK_THRESHOLD, keypoint_names, part_of

    names = keypoint_names()
    lines = [
        f"Per keypoint (matched pairs: A {kd.a.matched}, B {kd.b.matched}):",
        "",
        f"| part | n | OKS | PCK@{PCK_THRESHOLD:g} |",
        "|---|---|---|---|",
    ]
    for part, cells in kd.parts().items():
        n = cells["n"]
        n_text = _fmt(n.a, 0) if not n.differs else f"{_fmt(n.a, 0)} → {_fmt(n.b, 0)}"
        oks, pck = _metric_text(cells["oks"], 3), _metric_text(cells["pck"], 3)
        lines.append(f"| {PART_LABELS.get(part, part)} | {n_text} | {oks} | {pck} |")
    drops = [(k, c) for k, c in kd.worst() if round(c.delta, 3) < 0]  # a drop shows at 3 decimals
    if drops:
        listed = "; ".join(f"{names[k]} ({PART_LABELS[part_of(k)]}) {_metric_text(c, 3)}" for k, c in drops)
        lines += ["", f"Worst {len(drops)} keypoints by Δ OKS: {listed}"]
    else:
        lines += ["", "No keypoint's OKS dropped."]
    return lines


_WIDTH = 160  # a markdown cell shows at most this much of a value (--json has all of it)


def _value_text(value: Any, field_name: str) -> str:
    if value is ABSENT:
        return "(absent)"
    if field_name == "command" and isinstance(value, list) and all(isinstance(v, str) for v in value):
        return shlex.join(value) if value else "(none)"
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, default=repr)


def _pair_text(change: Change) -> tuple[str, str]:
    """Both values as table cells; long ones cut to a window around where they start to differ."""
    ta, tb = _value_text(change.a, change.field), _value_text(change.b, change.field)
    if max(len(ta), len(tb)) > _WIDTH and change.field != "command":  # a command is read whole
        start = next(
            (i for i, (x, y) in enumerate(zip(ta, tb, strict=False)) if x != y), min(len(ta), len(tb))
        )
        ta, tb = (_window(t, max(0, start - 40)) for t in (ta, tb))
    return tuple(
        "*(absent)*" if v is ABSENT else f"`{_cell_text(t)}`" for v, t in ((change.a, ta), (change.b, tb))
    )  # type: ignore[return-value]


def _window(text: str, start: int) -> str:
    end = start + _WIDTH
    return ("…" if start else "") + text[start:end] + ("…" if end < len(text) else "")


def _cell_text(text: str) -> str:
    """Text safe inside a markdown table cell and a code span."""
    return text.replace("|", "\\|").replace("`", "'").replace("\n", " ")
