"""Per-keypoint accuracy of COCO-WholeBody predictions: where on the body a regression sits.

Why: a row that fails its tolerance only says that an AP moved. AP pools 133 keypoints through OKS
and a ranking, so a model that got worse at the left hand alone, or at the face contour, looks the
same as one that got a little worse everywhere. This module breaks the whole-body result down per
keypoint, on exactly the people the whole-body AP counts as found:

* pairs: `zoo.metrics.wholebody_matches`, xtcocotools' greedy COCOeval matching for
  `keypoints_wholebody` at OKS >= 0.5, area range 'all', maxDets 20 (the metric's own code path).
  Crowds and ground truths without a labelled keypoint are ignored by that metric; predictions
  matched to them are left out here too.
* per keypoint k, over the matched pairs whose ground truth labels k (v > 0):
  `n` how many; `oks` the mean OKS term exp(-d^2 / (2 s^2 (2 sigma_k)^2)), d the distance in
  pixels, s^2 the whole-body OKS scale (the GT `area`, or bbox w*h*0.53 with use_area=False) and
  sigma_k mmpose's sigma, so 1 is exact and the whole-body OKS of a pair is the mean of its terms;
  `pck` PCK@0.1, the fraction with d < 0.1 x the longer side of the GT bbox (mmpose's PCKAccuracy
  normalisation with norm_item='bbox'; a zero-size box counts as a miss); `dist` the mean d in px.
* per part (and `wholebody`): the same, pooled over all labelled keypoints of the part (n-weighted).

Keypoints a set never labels have n = 0 and no value (NaN here, null in JSON).
"""

from __future__ import annotations

import ast
import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from zoo.errors import InputError, StackError
from zoo.metrics import (
    NUM_KEYPOINTS,
    PARTS,
    PoseResults,
    dataset_config_path,
    dataset_sigmas,
    load_ground_truth,
    load_results,
    oks_scale,
    wholebody_matches,
)

PCK_THRESHOLD = 0.1  # fraction of the GT box's longer side
METRICS: tuple[str, ...] = ("oks", "pck", "dist")  # per-keypoint means; `n` is the count behind them
_DIGITS = {"oks": 4, "pck": 4, "dist": 2}  # JSON rounding: 0-1 scores, pixels
METRIC_LABELS = {"oks": "OKS", "pck": f"PCK@{PCK_THRESHOLD:g}", "dist": "dist (px)"}
PART_LABELS = {
    "body": "body",
    "foot": "foot",
    "face": "face",
    "lefthand": "left hand",
    "righthand": "right hand",
    "wholebody": "whole body",
}
_PART_COLOURS = {  # tab10 hues, one per part; rows get their own series colours
    "body": "#1f77b4",
    "foot": "#8c564b",
    "face": "#2ca02c",
    "lefthand": "#d62728",
    "righthand": "#9467bd",
}


@functools.cache
def keypoint_names() -> tuple[str, ...]:
    """The 133 keypoint names of mmpose's packaged `coco_wholebody.py` `keypoint_info`, in id order.

    Read with `ast` (the values are `dict(...)` calls, not literals) so mmpose is not imported.
    """
    path = dataset_config_path("coco_wholebody")
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.keyword) and node.arg == "keypoint_info" and isinstance(node.value, ast.Dict):
            names: dict[int, str] = {}
            for key, value in zip(node.value.keys, node.value.values, strict=True):
                if not (isinstance(key, ast.Constant) and isinstance(value, ast.Call)):
                    break
                fields = {kw.arg: kw.value for kw in value.keywords}
                name = fields.get("name")
                if isinstance(name, ast.Constant) and isinstance(name.value, str):
                    names[key.value] = name.value
            if sorted(names) == list(range(NUM_KEYPOINTS)):
                return tuple(names[i] for i in range(NUM_KEYPOINTS))
    raise StackError(f"{path}: no keypoint_info with {NUM_KEYPOINTS} named keypoints")


def part_of(keypoint: int) -> str:
    """The part (body, foot, face, lefthand, righthand) a keypoint index belongs to."""
    for part in PARTS[:-1]:
        if part.start <= keypoint < part.stop:
            return part.name
    raise IndexError(f"keypoint index {keypoint} is not in 0..{NUM_KEYPOINTS - 1}")


@dataclass(frozen=True, eq=False)
class KeypointStats:
    """Per-keypoint counts and means (133 each, COCO-WholeBody order) and their per-part pooling.

    `parts` is computed from the unrounded sums when the stats are made and stored as is in JSON,
    so a record read back reports the same part values it was written with.
    """

    n: np.ndarray  # (133,) int64: labelled GT keypoints in matched pairs
    oks: np.ndarray  # (133,) float64, NaN where n == 0
    pck: np.ndarray
    dist: np.ndarray
    parts: Mapping[str, Mapping[str, float]]  # part or 'wholebody' -> {'n', 'oks', 'pck', 'dist'}
    matched: int  # matched (prediction, GT) pairs
    use_area: bool

    def values(self, metric: str) -> np.ndarray:
        """The per-keypoint array of `metric` ('oks', 'pck' or 'dist')."""
        if metric not in METRICS:
            raise InputError(f"unknown per-keypoint metric '{metric}' (one of {', '.join(METRICS)})")
        return getattr(self, metric)

    def worst(self, count: int, metric: str = "oks") -> list[int]:
        """Indices of the `count` keypoints with the lowest `metric` (highest for 'dist'), among the
        labelled ones; ties keep keypoint order."""
        values = self.values(metric)
        labelled = np.nonzero(self.n > 0)[0]
        key = -values[labelled] if metric == "dist" else values[labelled]
        return labelled[np.argsort(key, kind="stable")][:count].tolist()

    def to_json(self) -> dict[str, Any]:
        """A compact dict for a result record: lists of 133 rounded numbers (null where n = 0)."""
        out: dict[str, Any] = {
            "matched": self.matched,
            "use_area": self.use_area,
            "pck_threshold": PCK_THRESHOLD,
            "n": self.n.tolist(),
        }
        for metric in METRICS:
            out[metric] = [_rounded(v, _DIGITS[metric]) for v in self.values(metric).tolist()]
        out["parts"] = {
            name: {"n": int(p["n"]), **{m: _rounded(p[m], _DIGITS[m]) for m in METRICS}}
            for name, p in self.parts.items()
        }
        return out

    @classmethod
    def from_json(cls, data: Any, label: str = "per_keypoint") -> KeypointStats:
        """Read back what `to_json` wrote; a malformed value is one InputError naming `label.field`."""
        if not isinstance(data, Mapping):
            raise InputError(f"{label}: expected an object (KeypointStats.to_json)")
        for key in ("matched", "use_area", "pck_threshold", "n", *METRICS, "parts"):
            if key not in data:
                raise InputError(f"{label}: missing field '{key}'")
        if data["pck_threshold"] != PCK_THRESHOLD:
            raise InputError(
                f"{label}.pck_threshold: {data['pck_threshold']!r}, this version computes PCK@{PCK_THRESHOLD}"
            )
        if not _is_count(data["matched"]):
            raise InputError(f"{label}.matched: expected a count, got {data['matched']!r:.40}")
        if not isinstance(data["use_area"], bool):
            raise InputError(f"{label}.use_area: expected true or false, got {data['use_area']!r:.40}")
        n = _count_list(data["n"], f"{label}.n")
        arrays = {m: _value_list(data[m], n, f"{label}.{m}") for m in METRICS}
        parts = data["parts"]
        names = [p.name for p in PARTS]
        if not isinstance(parts, Mapping) or sorted(parts) != sorted(names):  # a JSON writer may sort keys
            raise InputError(f"{label}.parts: expected an object with keys {', '.join(names)}")
        read: dict[str, dict[str, float]] = {}
        for name in names:
            part = parts[name]
            where = f"{label}.parts.{name}"
            if not isinstance(part, Mapping) or not _is_count(part.get("n")):
                raise InputError(f"{where}: expected an object with a count 'n'")
            read[name] = {"n": part["n"]}
            for m in METRICS:
                value = part.get(m)
                if not (value is None if part["n"] == 0 else _is_finite(value)):
                    raise InputError(f"{where}.{m}: expected a number (null when n is 0), got {value!r:.40}")
                read[name][m] = math.nan if value is None else float(value)
        return cls(n=n, **arrays, parts=read, matched=data["matched"], use_area=data["use_area"])


def _rounded(value: float, digits: int) -> float | None:
    return None if math.isnan(value) else round(value, digits) + 0.0  # + 0.0: no -0.0


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _count_list(values: Any, where: str) -> np.ndarray:
    if not isinstance(values, list) or len(values) != NUM_KEYPOINTS:
        raise InputError(f"{where}: expected a list of {NUM_KEYPOINTS} counts")
    for i, v in enumerate(values):
        if not _is_count(v):
            raise InputError(f"{where}[{i}]: expected a count, got {v!r:.40}")
    return np.array(values, dtype=np.int64)


def _value_list(values: Any, n: np.ndarray, where: str) -> np.ndarray:
    if not isinstance(values, list) or len(values) != NUM_KEYPOINTS:
        raise InputError(f"{where}: expected a list of {NUM_KEYPOINTS} numbers (null where n is 0)")
    for i, v in enumerate(values):
        if not (v is None if n[i] == 0 else _is_finite(v)):
            raise InputError(f"{where}[{i}]: expected a number (null when n is 0), got {v!r:.40}")
    return np.array([math.nan if v is None else float(v) for v in values], dtype=np.float64)


def _pooled(n: np.ndarray, sums: Mapping[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Per part and whole body: sum over the part's keypoints / number of labelled keypoints."""
    parts: dict[str, dict[str, float]] = {}
    for part in PARTS:
        count = int(n[part.start : part.stop].sum())
        parts[part.name] = {"n": count}
        for m in METRICS:
            total = float(sums[m][part.start : part.stop].sum())
            parts[part.name][m] = total / count if count else math.nan
    return parts


def keypoint_stats(
    preds: str | Path | Sequence[Mapping[str, Any]] | PoseResults,
    ann: str | Path | Mapping[str, Any],
    *,
    use_area: bool,
    sigmas: np.ndarray | None = None,
) -> KeypointStats:
    """Per-keypoint OKS term, PCK@0.1 and distance over the whole-body metric's matched pairs.

    Takes what `zoo.metrics.evaluate` takes (a predictions path, the parsed records or `PoseResults`;
    an annotation path or dict) and `use_area` as the row evaluates it, since it sets both the OKS
    scale and, through the matching, which pairs count.
    """
    if sigmas is None:
        sigmas = dataset_sigmas()
    gt = load_ground_truth(ann, use_area)
    dt = load_results(preds)
    det, truth = wholebody_matches(gt, dt, use_area, sigmas)
    g = gt.kpts[truth]  # (P, 133, 3)
    d = dt.keypoints[det, :, :2].astype(np.float64)
    labelled = g[:, :, 2] > 0
    dx, dy = d[:, :, 0] - g[:, :, 0], d[:, :, 1] - g[:, :, 1]
    d2 = dx * dx + dy * dy
    variances = ((sigmas * 2) ** 2).astype(np.float64)  # squared in float32, as the metric does
    term = np.exp(-d2 / variances / oks_scale(gt, use_area)[truth, None] / 2)
    dist = np.sqrt(d2)
    side = gt.bbox[truth, 2:].max(axis=1)
    hit = dist < PCK_THRESHOLD * side[:, None]
    n = labelled.sum(axis=0).astype(np.int64)
    sums = {
        m: np.where(labelled, v, 0.0).sum(axis=0) for m, v in (("oks", term), ("pck", hit), ("dist", dist))
    }
    with np.errstate(invalid="ignore", divide="ignore"):  # n = 0: NaN, "no value"
        means = {m: np.where(n > 0, sums[m] / n, np.nan) for m in METRICS}
    return KeypointStats(n=n, **means, parts=_pooled(n, sums), matched=len(det), use_area=use_area)


# --------------------------------------------------------------------------------------------------
# text


def summary_text(stats: KeypointStats, worst: int = 10, metric: str = "oks") -> str:
    """The per-part table and the `worst` keypoints by `metric`, for a terminal or a log."""
    from tabulate import tabulate

    names = keypoint_names()
    heads = [METRIC_LABELS[m] for m in METRICS]

    def cells(values: Sequence[float]) -> list[float | None]:
        return [None if math.isnan(v) else v for v in values]  # tabulate shows None as '-'

    part_rows = [
        [PART_LABELS[name], p["n"], *cells([p[m] for m in METRICS])] for name, p in stats.parts.items()
    ]
    scale = "GT area" if stats.use_area else "GT bbox w*h*0.53"
    lines = [
        f"per-keypoint analysis of {stats.matched} matched (prediction, GT) pairs "
        "(whole-body OKS >= 0.5, area all, maxDets 20)",
        f"OKS: mean per-keypoint OKS term (scale: {scale}); "
        f"PCK@{PCK_THRESHOLD:g}: distance < {PCK_THRESHOLD:g} x GT box longer side",
        "",
        tabulate(
            part_rows, headers=["part", "n", *heads], floatfmt=("", "", ".4f", ".4f", ".2f"), missingval="-"
        ),
    ]
    picked = stats.worst(worst, metric)
    if picked:
        rows = [
            [k, names[k], PART_LABELS[part_of(k)], int(stats.n[k]), *(stats.values(m)[k] for m in METRICS)]
            for k in picked
        ]
        lines += [
            "",
            f"worst {len(picked)} keypoints by {METRIC_LABELS[metric]}:",
            tabulate(
                rows,
                headers=["#", "keypoint", "part", "n", *heads],
                floatfmt=("", "", "", "", ".4f", ".4f", ".2f"),
            ),
        ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# plots


def _axis_range(values: np.ndarray, lo: float, hi: float, step: float = 0.05) -> tuple[float, float]:
    """[lo, hi] shrunk to the finite data with a margin, on a `step` grid ([lo, lo + 1] when hi is
    unbounded and there is no data)."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return lo, hi if math.isfinite(hi) else lo + 1.0
    bottom = max(lo, math.floor((float(finite.min()) - step / 2) / step) * step)
    top = min(hi, math.ceil((float(finite.max()) + step / 2) / step) * step)
    return bottom, top


def _draw_parts(ax: Any, labels: Mapping[str, str]) -> None:
    """Shaded bands per part, part names (coloured) as the x tick labels, boundaries as minor ticks."""
    centres = []
    for i, part in enumerate(PARTS[:-1]):
        ax.axvspan(
            part.start - 0.5, part.stop - 0.5, color=_PART_COLOURS[part.name], alpha=0.06 + 0.04 * (i % 2)
        )
        centres.append((part.start + part.stop - 1) / 2)
    ax.set_xlim(-0.5, NUM_KEYPOINTS - 0.5)
    ax.set_xticks(centres, [labels[p.name] for p in PARTS[:-1]])
    ax.set_xticks([p.start - 0.5 for p in PARTS[1:-1]], minor=True)
    ax.tick_params(axis="x", which="major", length=0)
    ax.tick_params(axis="x", which="minor", length=14, width=0.8)
    for tick, part in zip(ax.get_xticklabels(), PARTS[:-1], strict=True):
        tick.set_color(_PART_COLOURS[part.name])
        tick.set_fontweight("bold")


def _by_part(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x and y with a NaN between parts, so a line never joins two parts."""
    xs, ys = [], []
    for part in PARTS[:-1]:
        xs += [*range(part.start, part.stop), math.nan]
        ys += [*values[part.start : part.stop].tolist(), math.nan]
    return np.array(xs), np.array(ys)


def plot_keypoints(
    stats_by_row: Mapping[str, KeypointStats], path: str | Path, title: str, *, metric: str = "oks"
) -> Path:
    """One figure for a table: `metric` per keypoint, one series per row, parts as coloured bands.

    'oks' and 'pck' are on a 0-1 axis fitted to the data; 'dist' (pixels) starts at 0.
    """
    from matplotlib.figure import Figure

    from zoo.plotting import plot_style, save_png

    for stats in stats_by_row.values():
        stats.values(metric)  # unknown metric: one line before drawing anything
    with plot_style():
        fig = Figure(figsize=(13.0, 4.8), layout="constrained")
        ax = fig.add_subplot()
        _draw_parts(ax, PART_LABELS)
        colours = _series_colours(len(stats_by_row))
        everything = [stats.values(metric) for stats in stats_by_row.values()]
        for (row, stats), colour in zip(stats_by_row.items(), colours, strict=True):
            whole = stats.parts["wholebody"][metric]
            x, y = _by_part(stats.values(metric))
            label = f"{row} ({_fmt(whole, metric)})"
            ax.plot(x, y, color=colour, linewidth=1.0, marker="o", markersize=2.5, label=label)
        values = np.concatenate(everything) if everything else np.zeros(0)
        if metric == "dist":
            ax.set_ylim(*_axis_range(values, 0.0, math.inf, step=1.0))
            ax.set_ylabel("mean distance to GT (px)")
        else:
            ax.set_ylim(*_axis_range(values, 0.0, 1.0))
            ax.set_ylabel(f"per-keypoint {METRIC_LABELS[metric]}")
        ax.set_xlabel("the 133 keypoints in COCO-WholeBody order (matched pairs, labelled keypoints)")
        ax.grid(True, axis="y", linewidth=0.3)
        ax.set_title(title)
        if stats_by_row:
            fig.legend(loc="outside right upper", fontsize=8, title="row (whole body)")
        else:
            ax.text(0.5, 0.5, "no rows", ha="center", va="center", transform=ax.transAxes)
        return save_png(fig, Path(path))


def plot_keypoint_delta(
    before: KeypointStats,
    after: KeypointStats,
    path: str | Path,
    title: str,
    *,
    metric: str = "oks",
    labels: tuple[str, str] = ("A", "B"),
) -> Path:
    """Δ = after - before per keypoint as bars coloured by part, with each part's pooled Δ as a
    black segment and in the part label, and the biggest drops named: a regression confined to one
    part stands out as one block of bars."""
    from matplotlib.figure import Figure

    from zoo.plotting import plot_style, save_png

    delta = after.values(metric) - before.values(metric)
    part_delta = {p.name: after.parts[p.name][metric] - before.parts[p.name][metric] for p in PARTS}
    worse = 1 if metric == "dist" else -1  # the direction of a regression
    names = keypoint_names()
    with plot_style():
        fig = Figure(figsize=(13.0, 4.8), layout="constrained")
        ax = fig.add_subplot()
        tick_labels = {
            p.name: f"{PART_LABELS[p.name]}\n{_fmt(part_delta[p.name], metric, sign=True)}" for p in PARTS
        }
        _draw_parts(ax, tick_labels)
        colours = [_PART_COLOURS[part_of(k)] for k in range(NUM_KEYPOINTS)]
        ax.bar(range(NUM_KEYPOINTS), np.nan_to_num(delta), width=0.8, color=colours)
        for p in PARTS[:-1]:
            if math.isfinite(part_delta[p.name]):
                ax.hlines(part_delta[p.name], p.start - 0.5, p.stop - 0.5, color="black", linewidth=1.6)
        ax.axhline(0, color="#555555", linewidth=0.6)
        ax.set_ylim(*_delta_range(delta, 1.0 if metric == "dist" else 0.01))
        ax.set_ylabel(f"Δ {METRIC_LABELS[metric]} = {labels[1]} − {labels[0]}")
        digits = 2 if metric == "dist" else 3  # a drop must show at the labels' precision
        order = np.argsort(-worse * np.nan_to_num(delta), kind="stable")[:5]
        drops = [k for k in order.tolist() if round(worse * float(delta[k]), digits) > 0]
        if drops:
            listed = ", ".join(f"{names[k]} {_fmt(delta[k], metric, sign=True)}" for k in drops)
            ax.set_xlabel(f"largest regressions: {listed}")
        else:
            ax.set_xlabel("no keypoint regressed")
        ax.grid(True, axis="y", linewidth=0.3)
        whole = _fmt(part_delta["wholebody"], metric, sign=True)
        ax.set_title(
            f"{title}\nper-keypoint Δ {METRIC_LABELS[metric]} (whole body {whole}; black: part mean)"
        )
        return save_png(fig, Path(path))


def _delta_range(delta: np.ndarray, floor: float) -> tuple[float, float]:
    """The data's range with 0 inside and a margin; the side without data keeps a sliver (a fifth
    of the other) so a one-sided change fills the plot instead of half of it."""
    finite = delta[np.isfinite(delta)]
    low = min(float(finite.min()), 0.0) if finite.size else 0.0
    high = max(float(finite.max()), 0.0) if finite.size else 0.0
    span = max(high - low, floor)
    return min(low, -span / 5) - span * 0.08, max(high, span / 5) + span * 0.08


def _fmt(value: float, metric: str, sign: bool = False) -> str:
    """A plot label: 3 decimals for 0-1 scores, 2 for pixels, a true minus sign."""
    if not math.isfinite(value):
        return "n/a"
    digits = 2 if metric == "dist" else 3
    value = round(value, digits) + 0.0
    text = f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"
    return text.replace("-", "\N{MINUS SIGN}") + (" px" if metric == "dist" else "")


def _series_colours(count: int) -> list[Any]:
    """Distinct colours for up to 20 rows (tab10, then tab20's light shades), cycling beyond."""
    import matplotlib

    tab10 = list(matplotlib.colormaps["tab10"].colors)
    light = list(matplotlib.colormaps["tab20"].colors)[1::2]
    palette = tab10 + light
    return [palette[i % len(palette)] for i in range(count)]
