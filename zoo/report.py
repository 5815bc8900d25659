"""`zoo report`: one markdown reproduction report per table, generated from result records only.

Each report holds (a) the table regenerated in mmpose's exact published layout with the measured
values in place of the expected ones, (b) a reproduction table with expected, measured, Δ, tolerance
and status for every published metric, plus box source and throughput per row, (c) the software and
hardware the numbers came from (from the records), (d) PNG plots linked relatively (Δ per row and
metric, throughput per row in boxes/s, and the per-keypoint OKS of every row that carries it), and (e)
where rows were also run with another box source (`zoo run --boxes det,gt`), per part the AP each box
source gives: the detector's share of a gap beside the pose model's. The folder can be committed or
uploaded as it is; 'Details and Download' links point at mmpose's published pages.

Reports are deterministic: the same records give byte-identical markdown and PNGs (fixed row and
metric order, fixed number formats, no dates or paths, matplotlib's bundled font and no 'Software'
stamp in the PNG), so a committed report changes only when a number does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tabulate import tabulate

from zoo.compare import Comparison, compare, render_summary
from zoo.manifest import METRICS, Manifests, Row, Table
from zoo.plotting import plot_style, save_png
from zoo.provenance import Difference
from zoo.results import Record, write_atomic
from zoo.tables import render_section

_LABELS = {
    f"{p}.{s}": f"{p.capitalize()} {s.upper()}"
    for p in ("body", "foot", "face", "hand", "whole")
    for s in ("ap", "ar")
}
_ENV_PACKAGES = (
    "torch",
    "torchvision",
    "mmcv",
    "mmengine",
    "mmdet",
    "mmpose",
    "numpy",
    "xtcocotools",
    "pycocotools",
    "cv2",
)


def _fmt(value: float | None, digits: int = 4, sign: bool = False) -> str:
    if value is None:
        return "n/a"
    if not math.isfinite(value):
        return str(value)
    value = round(value, digits) + 0.0  # no "-0.0000" for a difference that rounds to zero
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def measured_values(rows: Sequence[Row], records: Mapping[str, Record]) -> dict[str, dict[str, float | None]]:
    """Measured values in `render_table`'s shape; rows without an ok record are left out (shown n/a)."""
    return {
        row.id: {key: rec.metric(key) for key in METRICS}
        for row in rows
        if (rec := records.get(row.id)) is not None and rec.status == "ok"
    }


def metric_frame(comparison: Comparison) -> pd.DataFrame:
    """One line per compared (row, metric): the long table behind the reproduction table and the Δ plot."""
    lines = [
        {
            "row": check.row_id,
            "metric": m.key,
            "expected": m.expected,
            "measured": m.measured,
            "delta": m.delta,
            "tolerance": m.band.abs,
            "direction": m.band.direction,
            "status": m.status,
            "note": m.note,
        }
        for check in comparison.rows
        for m in check.metrics
    ]
    columns = ["row", "metric", "expected", "measured", "delta", "tolerance", "direction", "status", "note"]
    return pd.DataFrame(lines, columns=columns)


def _provenance_table(rows: Sequence[Row], comparison: Comparison, records: Mapping[str, Record]) -> str:
    """Per row: the checkpoint's sha256 prefix, box source, data fingerprint and subset its record
    measured, whether the data was synthetic, and what differs from the manifest row."""
    checks = {c.row_id: c for c in comparison.rows}
    lines = []
    for row in rows:
        rec = records.get(row.id)
        if rec is None or rec.status != "ok":
            continue
        data = rec.fingerprint.get("data") or {}
        sha = rec.checkpoint_sha256 or ""
        marks = [
            m
            for m, on in (("synthetic data", rec.synthetic), (f"subset of {rec.subset} images", rec.subset))
            if on
        ]
        differs = "; ".join(d.describe() for d in checks[row.id].differences) or "—"
        lines.append([
            row.id, sha[:12] or "n/a", rec.box_source or "n/a",
            f"ann {str(data.get('ann_sha256') or '')[:12]}, {data.get('images', '?')} images"
            + (f", det {str(data.get('det_sha256'))[:12]}" if data.get("det_sha256") else ""),
            ", ".join(marks) or "full set", differs.replace("|", "\\|"),
        ])  # fmt: skip
    headers = ["Row", "Checkpoint sha256", "Boxes", "Data", "Run", "Differs from the manifest row"]
    if not lines:
        return "No successful run to describe."
    return tabulate(lines, headers=headers, tablefmt="github", disable_numparse=True)


def row_labels(rows: Sequence[Row], with_size: bool = False) -> dict[str, str]:
    """Row id -> its label in a plot or table: the model's name (and input size), or, where two rows
    would read the same (the table has two "HRNet-w32" at 256x192), the name and the row id."""
    from collections import Counter

    base = {row.id: f"{row.name} ({row.input_size_text})" if with_size else row.name for row in rows}
    counts = Counter(base.values())
    return {row.id: base[row.id] if counts[base[row.id]] == 1 else f"{row.name} ({row.id})" for row in rows}


def _throughput(record: Record | None) -> float | None:
    value = record.inference.get("crops_per_s") if record is not None else None
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def _speed_cell(speed: float | None, record: Record | None, digits: int = 2) -> str:
    """The pass's pace; a pass shared by several rows runs every one of their models on each crop,
    so its pace is theirs together and says so (it reads as a slowdown otherwise)."""
    if speed is None:
        return "n/a"
    shared = record.inference.get("shared_pass") if record is not None else None
    return (
        f"{speed:.{digits}f} (pass of {len(shared) + 1} rows)"
        if isinstance(shared, list) and shared
        else f"{speed:.{digits}f}"
    )


def _rows_table(rows: Sequence[Row], comparison: Comparison, records: Mapping[str, Record]) -> str:
    checks = {c.row_id: c for c in comparison.rows}
    lines = []
    for row in rows:
        check, rec = checks[row.id], records.get(row.id)
        speed = _throughput(rec)
        device = (rec.inference.get("device") if rec is not None else "") or ""
        if speed is None and rec is not None and rec.details.get("resumed_from_predictions"):
            device = "resumed from saved predictions"
        lines.append(
            [
                row.id,
                row.name,
                row.input_size_text,
                (rec.box_source if rec is not None else None) or row.boxes,
                check.status,
                _speed_cell(speed, rec),
                device,
                check.detail().replace("|", "\\|"),
            ]
        )
    headers = ["Row", "Model", "Input", "Boxes", "Status", "crops/s", "Device", "Detail"]
    return tabulate(lines, headers=headers, tablefmt="github", disable_numparse=True)


def _metrics_table(frame: pd.DataFrame, rows: Sequence[Row]) -> str:
    names = {row.id: row.name for row in rows}
    lines = [
        [
            r.row,
            names[r.row],
            _LABELS[r.metric],
            _fmt(r.expected),
            _fmt(r.measured),
            _fmt(r.delta, sign=True),
            f"{'±' if r.direction == 'both' else '-'}{r.tolerance:.3f}",
            r.status + (f" ({r.note})" if r.note else ""),
        ]
        for r in frame.itertuples(index=False)
    ]
    headers = ["Row", "Model", "Metric", "Expected", "Measured", "Δ", "Tolerance", "Status"]
    return tabulate(lines, headers=headers, tablefmt="github", disable_numparse=True)


def _flat_env(env: Mapping[str, Any]) -> dict[str, str]:
    """The environment fields that can change a number, without machine-specific paths."""
    out = {
        "zoo": str(env.get("zoo")),
        "git commit": str(env.get("git_commit")),
        "python": str(env.get("python")),
    }
    out["platform"] = str(env.get("platform"))
    packages = env.get("packages") or {}
    for name in _ENV_PACKAGES:
        info = packages.get(name) or {}
        out[name] = str(info.get("version") or info.get("error") or "not recorded")
    device = env.get("device") or {}
    for key in sorted(device):
        out[f"device.{key}"] = str(device[key])
    out["mmcv ops loaded"] = str((env.get("mmcv_ops") or {}).get("loaded"))
    return out


def _environment_table(rows: Sequence[Row], records: Mapping[str, Record]) -> str:
    """One column per distinct environment, headed by the rows measured in it."""
    envs: dict[tuple[tuple[str, str], ...], list[str]] = {}
    for row in rows:
        env = records[row.id].environment if row.id in records else None
        if env:
            envs.setdefault(tuple(_flat_env(env).items()), []).append(row.id)
    if not envs:
        return "No result record carries an environment."
    columns = [dict(key) for key in envs]
    keys = list(dict.fromkeys(k for column in columns for k in column))
    headers = ["", *(", ".join(ids) for ids in envs.values())] if len(envs) > 1 else ["", "value"]
    lines = [[k, *(column.get(k, "not recorded") for column in columns)] for k in keys]
    return tabulate(lines, headers=headers, tablefmt="github", disable_numparse=True)


def plot_deltas(frame: pd.DataFrame, rows: Sequence[Row], path: Path) -> None:
    """Δ (measured - expected) per row and metric as an annotated grid, coloured in units of the
    tolerance (red below, blue above); unpublished or unmeasured cells stay grey."""
    import matplotlib
    from matplotlib.figure import Figure

    order = [row.id for row in rows]

    def grid_of(column: str) -> pd.DataFrame:
        if frame.empty:
            return pd.DataFrame(math.nan, index=order, columns=list(METRICS))
        values = pd.to_numeric(frame.set_index(["row", "metric"])[column], errors="coerce")
        return values.unstack().reindex(index=order, columns=list(METRICS)).astype(float)

    grid = grid_of("delta")
    scaled = (grid / grid_of("tolerance")).clip(-2, 2)
    with plot_style():
        fig = Figure(figsize=(12.0, 1.4 + 0.42 * max(len(order), 1)), layout="constrained")
        ax = fig.add_subplot()
        cmap = matplotlib.colormaps["RdBu"].with_extremes(bad="#dddddd")
        image = ax.imshow(
            np.ma.masked_invalid(scaled.to_numpy(dtype=float)), cmap=cmap, vmin=-2, vmax=2, aspect="auto"
        )
        strong = (scaled.abs() > 1.2).to_numpy()  # dark cells get white text
        for (i, j), value in np.ndenumerate(grid.to_numpy(dtype=float)):
            text = "–" if math.isnan(value) else _fmt(value, 3, sign=True)
            colour = "white" if strong[i, j] else "black"
            ax.text(j, i, text, ha="center", va="center", fontsize=7.5, color=colour)
        ax.set_xticks(range(len(METRICS)), [_LABELS[k] for k in METRICS], rotation=30, ha="right")
        ax.set_yticks(range(len(order)), [f"{row.name} ({row.id})" for row in rows])
        ax.set_title("Δ = measured − expected (colour: Δ / tolerance, clipped at ±2)")
        fig.colorbar(image, ax=ax, label="Δ / tolerance")
        save_png(fig, path)


def plot_speed(rows: Sequence[Row], records: Mapping[str, Record], path: Path) -> None:
    """Boxes per second of each row's inference (data, model and decoding, as its record measured),
    one bar per row in table order, labelled with the value and the device; rows without a measured
    throughput (failed, skipped, resumed from saved predictions) are named as such."""
    from matplotlib.figure import Figure

    labels, speeds, notes = [], [], []
    names = row_labels(rows, with_size=True)
    for row in rows:
        rec = records.get(row.id)
        speed = _throughput(rec)
        labels.append(names[row.id])
        speeds.append(speed or 0.0)
        if speed is not None:  # a shared pass's pace is its rows' together, and says so
            notes.append(
                f"{_speed_cell(speed, rec, 1)} on {(rec.inference.get('device') if rec else None) or '?'}"
            )
        else:
            notes.append("not measured" if rec is None else f"no throughput ({rec.status})")
    top = max(speeds, default=0.0) or 1.0
    with plot_style():
        fig = Figure(figsize=(8.0, 1.3 + 0.36 * max(len(rows), 1)), layout="constrained")
        ax = fig.add_subplot()
        y = list(range(len(rows)))
        ax.barh(y, speeds, color="#4c78a8", height=0.6)
        for i, (speed, note) in enumerate(zip(speeds, notes, strict=True)):
            ax.text(speed + top * 0.01, i, note, va="center", fontsize=8)
        ax.set_yticks(y, labels)
        ax.invert_yaxis()  # table order, top to bottom
        ax.set_xlim(0, top * 1.6)  # room for the labels ("12.3 (pass of 9 rows) on cuda:0")
        ax.set_xlabel("boxes/s (pose model's inference incl. crops and decoding, as recorded)")
        ax.set_title("Inference throughput per row")
        ax.grid(True, axis="x", linewidth=0.3)
        save_png(fig, path)


def _keypoint_stats(rows: Sequence[Row], records: Mapping[str, Record]) -> dict[str, Any]:
    """Row label (`row_labels`: unique) -> KeypointStats, for the ok records that carry
    `details.per_keypoint`."""
    from zoo.keypoints import KeypointStats

    out = {}
    names = row_labels(rows)
    for row in rows:
        rec = records.get(row.id)
        data = rec.details.get("per_keypoint") if rec is not None and rec.status == "ok" else None
        if data is not None:
            out[names[row.id]] = KeypointStats.from_json(data, f"{row.id}: per_keypoint")
    return out


def _keypoint_section(stats: Mapping[str, Any], figure: str | None) -> str:
    """The per-keypoint plot and, per row, the part with the lowest mean OKS and its worst keypoints."""
    from zoo.keypoints import PARTS, keypoint_names

    if not stats or figure is None:
        return "No record carries per-keypoint numbers (`details.per_keypoint`).\n"
    names = keypoint_names()
    lines = []
    for row, s in stats.items():
        oks = s.values("oks")
        parts = {p.name: s.parts[p.name]["oks"] for p in PARTS[:-1] if math.isfinite(s.parts[p.name]["oks"])}
        weakest = min(parts, key=parts.__getitem__) if parts else None
        lines.append([
            row, _fmt(s.parts["wholebody"]["oks"], 3),
            f"{weakest} {_fmt(parts[weakest], 3)}" if weakest else "n/a",
            ", ".join(f"{names[k]} {_fmt(float(oks[k]), 3)}" for k in s.worst(3)) or "n/a",
        ])  # fmt: skip
    headers = ["Model", "Mean OKS (whole body)", "Weakest part", "Weakest keypoints"]
    return (
        "Mean OKS contribution of each of the 133 keypoints over matched prediction/GT pairs, per row "
        "(`zoo eval --per-keypoint` prints the full list; `zoo diff` plots Δ between two runs):\n\n"
        f"![Per-keypoint OKS]({figure})\n\n"
        + tabulate(lines, headers=headers, tablefmt="github", disable_numparse=True)
        + "\n"
    )


def _box_source_section(
    rows: Sequence[Row], records: Mapping[str, Record], variants: Mapping[str, Mapping[str, Record]]
) -> str:
    """Per row run with more than one box source: per part, the AP of each source, Δ between them
    (what the boxes alone change) and the row's own gap to the published value."""
    lines = []
    for row in rows:
        own, others = records.get(row.id), variants.get(row.id) or {}
        if own is None or own.status != "ok" or not others:
            continue
        for source, other in sorted(others.items()):
            if other.status != "ok":
                lines.append([row.name, f"{own.box_source} → {source}", "", "", "", "", "", other.status])
                continue
            for part in ("body", "foot", "face", "hand", "whole"):
                key = f"{part}.ap"
                mine, theirs, expected = own.metric(key), other.metric(key), row.expected.get(key)
                box_delta = None if mine is None or theirs is None else theirs - mine
                gap = None if mine is None or expected is None else mine - expected
                lines.append([
                    row.name, f"{own.box_source} → {source}", _LABELS[key], _fmt(mine), _fmt(theirs),
                    _fmt(box_delta, sign=True), _fmt(gap, sign=True), "ok",
                ])  # fmt: skip
    if not lines:
        return ""
    headers = [
        "Model",
        "Boxes",
        "Metric",
        "Own boxes",
        "Other boxes",
        "Δ boxes",
        "Own − expected",
        "Other run",
    ]
    return "\n".join([
        "## Box source\n",
        "Rows also run with another box source (`zoo run --boxes det,gt`; those records are kept in "
        "`boxes/<source>/` and never gated). Δ boxes = AP with the other boxes − AP with the row's own: "
        "the share of a gap that the boxes decide; what remains of `Own − expected` after it is the pose "
        "model's (and the evaluation's).\n",
        tabulate(lines, headers=headers, tablefmt="github", disable_numparse=True) + "\n",
    ])  # fmt: skip


def _caveat(rows: Sequence[Row], records: Mapping[str, Record]) -> str:
    """A warning above everything when some records did not measure the real, whole data set."""
    synthetic = [row.id for row in rows if (rec := records.get(row.id)) is not None and rec.synthetic]
    subset = [row.id for row in rows if (rec := records.get(row.id)) is not None and rec.subset]
    notes = []
    if synthetic:
        notes.append(
            f"{len(synthetic)} row(s) measured the harness's synthetic data ({', '.join(synthetic)})"
        )
    if subset:
        notes.append(f"{len(subset)} row(s) measured a subset of the images ({', '.join(subset)})")
    if not notes:
        return ""
    return f"> **Not a reproduction of the published numbers:** {'; '.join(notes)}.\n"


def render_report(
    table: Table,
    rows: Sequence[Row],
    records: Mapping[str, Record],
    figures: Mapping[str, str | None],
    differences: Mapping[str, Sequence[Difference]] | None = None,
    variants: Mapping[str, Mapping[str, Record]] | None = None,
) -> str:
    """The markdown of one table's report; `figures` maps 'delta'/'speed'/'keypoints' to the PNGs'
    relative links (keypoints None: no row carries per-keypoint numbers); `differences`
    (`zoo.provenance.all_differences`) make records that measured something else STALE; `variants`
    (`zoo.results.load_box_variants`) are the same rows run with other box sources."""
    comparison = compare(rows, records, differences=differences)
    frame = metric_frame(comparison)
    with_records = sum(row.id in records for row in rows)
    parts = [
        f"# Reproduction report: {table.title}\n",
        f"Generated by `zoo report` from {with_records} result record(s) for {len(rows)} row(s) of the manifest "
        f"table `{table.id}`; expected values and tolerances come from the manifest.\n",
        f"{render_summary(comparison)}\n",
        _caveat(rows, records),
        "## Measured values in the published layout\n",
        "The published table regenerated with the measured values in place of the expected ones "
        "(`n/a`: no successful run).\n",
        render_section(table, measured_values(rows, records), absolute_links=True),
        "## Reproduction\n",
        _rows_table(rows, comparison, records) + "\n",
        "crops/s: the steady pace of the row's pass over the crops; rows that share a pass (same data "
        "pipeline, run together) run all their models on each crop, so that pace is theirs together.\n",
        "What each record measured (checkpoint sha256, box source, data, subset); STALE rows measured "
        "something other than the row requires now:\n",
        _provenance_table(rows, comparison, records) + "\n",
        "Every published metric (Δ = measured − expected; the tolerance is absolute, `±` two-sided, "
        "`-` only a drop counts):\n",
        (_metrics_table(frame, rows) if len(frame) else "No metric could be compared.") + "\n",
        _box_source_section(rows, records, variants or {}),
        "## Per keypoint\n",
        _keypoint_section(_keypoint_stats(rows, records), figures.get("keypoints")),
        "## Plots\n",
        f"![Δ per row and metric]({figures['delta']})\n",
        f"![Throughput per row (boxes/s)]({figures['speed']})\n",
        "## Environment\n",
        _environment_table(rows, records) + "\n",
    ]
    return "\n".join(part for part in parts if part)


def write_report(
    manifests: Manifests,
    records: Mapping[str, Record],
    out: Path,
    rows: Sequence[Row] | None = None,
    differences: Mapping[str, Sequence[Difference]] | None = None,
    variants: Mapping[str, Mapping[str, Record]] | None = None,
) -> list[Path]:
    """Write `<out>/<table>.md` and its PNGs for every table with a selected row; returns the paths.

    The published-layout table always lists every row of the table (unselected or unrun ones as n/a),
    as the published table does; the reproduction table and the plots cover the selected rows."""
    from zoo.keypoints import plot_keypoints

    selected = list(rows) if rows is not None else manifests.rows
    written: list[Path] = []
    for table in manifests.tables:
        mine = [row for row in selected if row.table == table.id]
        if not mine:
            continue
        stats = _keypoint_stats(mine, records)
        figures: dict[str, str | None] = {
            "delta": f"{table.id}-delta.png",
            "speed": f"{table.id}-speed.png",
            "keypoints": f"{table.id}-keypoints.png" if stats else None,
        }
        comparison = compare(mine, records, differences=differences)
        plot_deltas(metric_frame(comparison), mine, out / figures["delta"])
        plot_speed(mine, records, out / figures["speed"])
        page = out / f"{table.id}.md"
        pngs = [out / figures["delta"], out / figures["speed"]]
        if figures["keypoints"]:
            title = f"{table.title}: mean OKS per keypoint (matched pairs)"
            pngs.append(plot_keypoints(stats, out / figures["keypoints"], title))
        text = render_report(table, mine, records, figures, differences, variants)
        write_atomic(page, text.encode("utf-8"))
        written += [page, *pngs]
    return written
