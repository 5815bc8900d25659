"""`zoo report`: one markdown reproduction report per table, generated from result records only.

Each report holds (a) the table regenerated in mmpose's exact published layout with the measured
values in place of the expected ones, (b) a reproduction table with expected, measured, Δ, tolerance
and status for every published metric, plus box source and throughput per row, (c) the software and
hardware the numbers came from (from the records), and (d) two PNG plots (Δ per row and metric, Whole
AP against crops/s) linked relatively, so the folder can be committed or uploaded as it is.

Reports are deterministic: the same records give byte-identical markdown and PNGs (fixed row and
metric order, fixed number formats, no dates or paths, matplotlib's bundled font and no 'Software'
stamp in the PNG), so a committed report changes only when a number does.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from tabulate import tabulate

from zoo.compare import Comparison, compare, render_summary
from zoo.manifest import METRICS, Manifests, Row, Table
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
# Plots: matplotlib's own defaults (not the user's matplotlibrc) with its bundled DejaVu font, so
# every machine with the same matplotlib draws the same pixels.
_RC = {
    "font.family": "DejaVu Sans",
    "font.size": 9,
    "axes.titlesize": 10,
    "figure.dpi": 100,
    "savefig.dpi": 100,
}


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


def _throughput(record: Record | None) -> float | None:
    value = record.inference.get("crops_per_s") if record is not None else None
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


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
                "n/a" if speed is None else f"{speed:.2f}",
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


@contextlib.contextmanager
def _plot_style() -> Iterator[None]:
    import matplotlib

    with matplotlib.rc_context():
        matplotlib.rcdefaults()
        matplotlib.rcParams.update(_RC)
        yield


def _save_png(fig: Any, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    write_atomic(path, buffer.getvalue())


def plot_deltas(frame: pd.DataFrame, rows: Sequence[Row], path: Path) -> None:
    """Δ (measured - expected) per row and metric as an annotated grid, coloured in units of the
    tolerance (red below, blue above); unpublished or unmeasured cells stay grey."""
    import matplotlib
    import numpy as np
    from matplotlib.figure import Figure

    order = [row.id for row in rows]

    def grid_of(column: str) -> pd.DataFrame:
        if frame.empty:
            return pd.DataFrame(math.nan, index=order, columns=list(METRICS))
        values = pd.to_numeric(frame.set_index(["row", "metric"])[column], errors="coerce")
        return values.unstack().reindex(index=order, columns=list(METRICS)).astype(float)

    grid = grid_of("delta")
    scaled = (grid / grid_of("tolerance")).clip(-2, 2)
    with _plot_style():
        fig = Figure(figsize=(9.0, 1.2 + 0.42 * max(len(order), 1)))
        ax = fig.add_subplot()
        cmap = matplotlib.colormaps["RdBu"].with_extremes(bad="#dddddd")
        image = ax.imshow(
            np.ma.masked_invalid(scaled.to_numpy(dtype=float)), cmap=cmap, vmin=-2, vmax=2, aspect="auto"
        )
        strong = (scaled.abs() > 1.2).to_numpy()  # dark cells get white text
        for (i, j), value in np.ndenumerate(grid.to_numpy(dtype=float)):
            text = "–" if math.isnan(value) else _fmt(value, 3, sign=True)
            colour = "white" if strong[i, j] else "black"
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color=colour)
        ax.set_xticks(range(len(METRICS)), [_LABELS[k] for k in METRICS], rotation=30, ha="right")
        ax.set_yticks(range(len(order)), [f"{row.name} ({row.id})" for row in rows])
        ax.set_title("Δ = measured − expected (colour: Δ / tolerance, clipped at ±2)")
        fig.colorbar(image, ax=ax, label="Δ / tolerance")
        fig.tight_layout()
        _save_png(fig, path)


def plot_speed(rows: Sequence[Row], records: Mapping[str, Record], path: Path) -> None:
    """Measured Whole AP (dots) against inference throughput, with the expected value (x) above or below."""
    from matplotlib.figure import Figure

    points = []
    for row in rows:
        rec = records.get(row.id)
        speed = _throughput(rec)
        ap = rec.metric("whole.ap") if rec is not None and rec.status == "ok" else None
        if speed is not None and ap is not None and math.isfinite(ap):
            points.append((row, speed, ap, row.expected.get("whole.ap")))
    with _plot_style():
        fig = Figure(figsize=(7.0, 4.5))
        ax = fig.add_subplot()
        for i, (row, speed, ap, expected) in enumerate(points):
            if expected is not None:
                ax.plot([speed, speed], [expected, ap], color="#999999", linewidth=1)
                ax.scatter([speed], [expected], marker="x", color="#555555")
            ax.scatter([speed], [ap], color="#1f77b4")
            ax.annotate(
                row.name, (speed, ap), textcoords="offset points", xytext=(5, 4 - 12 * (i % 2)), fontsize=8
            )
        if not points:
            ax.text(
                0.5,
                0.5,
                "no row has both a Whole AP and a throughput",
                ha="center",
                va="center",
                transform=ax.transAxes,
            )
        ax.set_xlabel("inference throughput (crops/s, as recorded)")
        ax.set_ylabel("Whole AP")
        ax.set_title("Whole AP (dot: measured, x: expected) against throughput")
        ax.grid(True, linewidth=0.3)
        fig.tight_layout()
        _save_png(fig, path)


def render_report(
    table: Table,
    rows: Sequence[Row],
    records: Mapping[str, Record],
    figures: Mapping[str, str],
    differences: Mapping[str, Sequence[Difference]] | None = None,
) -> str:
    """The markdown of one table's report; `figures` maps 'delta'/'speed' to the PNGs' relative links;
    `differences` (`zoo.provenance.all_differences`) make records that measured something else STALE."""
    comparison = compare(rows, records, differences=differences)
    frame = metric_frame(comparison)
    with_records = sum(row.id in records for row in rows)
    parts = [
        f"# Reproduction report: {table.title}\n",
        f"Generated by `zoo report` from {with_records} result record(s) for {len(rows)} row(s) of the manifest "
        f"table `{table.id}`; expected values and tolerances come from the manifest.\n",
        f"{render_summary(comparison)}\n",
        "## Measured values in the published layout\n",
        "The published table regenerated with the measured values in place of the expected ones "
        "(`n/a`: no successful run).\n",
        render_section(table, measured_values(rows, records)),
        "## Reproduction\n",
        _rows_table(rows, comparison, records) + "\n",
        "What each record measured (checkpoint sha256, box source, data, subset); STALE rows measured "
        "something other than the row requires now:\n",
        _provenance_table(rows, comparison, records) + "\n",
        "Every published metric (Δ = measured − expected; the tolerance is absolute, `±` two-sided, "
        "`-` only a drop counts):\n",
        (_metrics_table(frame, rows) if len(frame) else "No metric could be compared.") + "\n",
        "## Plots\n",
        f"![Δ per row and metric]({figures['delta']})\n",
        f"![Whole AP against throughput]({figures['speed']})\n",
        "## Environment\n",
        _environment_table(rows, records) + "\n",
    ]
    return "\n".join(parts)


def write_report(
    manifests: Manifests,
    records: Mapping[str, Record],
    out: Path,
    rows: Sequence[Row] | None = None,
    differences: Mapping[str, Sequence[Difference]] | None = None,
) -> list[Path]:
    """Write `<out>/<table>.md` and its two PNGs for every table with a selected row; returns the paths.

    The published-layout table always lists every row of the table (unselected or unrun ones as n/a),
    as the published table does; the reproduction table and the plots cover the selected rows."""
    selected = list(rows) if rows is not None else manifests.rows
    written: list[Path] = []
    for table in manifests.tables:
        mine = [row for row in selected if row.table == table.id]
        if not mine:
            continue
        figures = {"delta": f"{table.id}-delta.png", "speed": f"{table.id}-speed.png"}
        comparison = compare(mine, records, differences=differences)
        plot_deltas(metric_frame(comparison), mine, out / figures["delta"])
        plot_speed(mine, records, out / figures["speed"])
        page = out / f"{table.id}.md"
        write_atomic(page, render_report(table, mine, records, figures, differences).encode("utf-8"))
        written += [page, out / figures["delta"], out / figures["speed"]]
    return written
