"""mmpose's heatmap decoding for a whole batch at once, bitwise equal to its per-instance decode.

Why: mmpose decodes flip-averaged heatmaps one instance at a time (`BaseHead.decode` loops over the
batch and calls the codec's `decode`), and inside each instance loops over the 133 keypoints in
Python: one `cv2.GaussianBlur` per keypoint map for DARK and UDP, then a handful of numpy scalar
operations and a 2x2 `np.linalg.inv` per keypoint. That is 1-14 ms per box on one core, more than a
GPU needs to run the model. This module computes the same numbers with one blur call per chunk of maps
and array operations over every keypoint of the batch:

- MSRA (`MSRAHeatmap`, `unbiased=False`): argmax, then a quarter-pixel step towards the higher
  neighbour (`refine_keypoints`), with mmpose's bounds (`1 < x < W - 1`, `0 < y < H`);
- DARK (`MSRAHeatmap`, `unbiased=True`): `gaussian_blur` + log + one Newton step from a 2x2 Hessian
  (`refine_keypoints_dark`);
- UDP (`UDPHeatmap`, `heatmap_type='gaussian'`): `gaussian_blur` + clip + log + the edge-padded
  Newton step (`refine_keypoints_dark_udp`), and the `(W - 1, H - 1)` rescaling.

How the bits stay the same:
- the maximum: a maximum rounds nothing, so the first row holding a map's maximum (from cv2's row
  maxima) and that row's first pixel holding it are `np.argmax`'s; the value is read there, which
  is `np.amax`'s but for zeros (signed) and NaN, where numpy's own calls decide as in mmpose;
- the blur: each keypoint map is padded with zeros exactly as mmpose pads it and the padded maps are
  stacked vertically into one tall image for `cv2.GaussianBlur`. The kept pixels of a map read only its
  own padded rows (the border rule touches only the padding mmpose discards), and the filter's
  arithmetic depends on a pixel's column (SIMD body or scalar tail), never on its row, so every kept
  pixel is computed by the same operations on the same values;
- mmpose's DARK step works on numpy scalars: `0.5 * np.float32(v)` is float64 under numpy 1 and
  float32 under numpy 2 (NEP 50). The arrays here are cast to whatever type numpy's scalar promotion
  gives (probed at import, `_SCALAR`), so each operation rounds as mmpose's does;
- the 2x2 inverses and products go through the same numpy/LAPACK/BLAS calls, stacked (numpy's linalg
  and matmul gufuncs run one matrix at a time);
- the mapping back to the image (`TopdownPoseEstimator.add_pred_to_datasample`) is the same
  expression on stacked arrays with the same dtypes.

`tests/test_decode.py` compares every codec of the 12 rows with mmpose's own `decode` on real model
outputs and on edge cases (flat maps, maxima on the border, ties, negative maps), and `zoo.evaluate`
checks the first batch of every run against mmpose's decode before trusting this module (a
platform where it ever differs falls back to mmpose's decode, with a warning, and says so in the
record). Codecs this module does not reproduce raise `UnsupportedCodec`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from zoo.errors import ZooError


class UnsupportedCodec(ZooError):
    """The head's codec is not one this module reproduces bit for bit (use mmpose's decode)."""


def _probe_scalar_type() -> type | None:
    """The type numpy gives mmpose's scalar DARK arithmetic on float32 values, when it is one type."""
    f = np.float32(1.5)
    kinds = {type(0.5 * f), type(2 * f), type(0.25 * f), type(f - 2 * f)}
    return kinds.pop() if len(kinds) == 1 else None


_SCALAR = _probe_scalar_type()  # np.float64 under numpy 1, np.float32 under numpy 2
_CHUNK_PIXELS = 1 << 21  # padded pixels per blur call: a few MiB, cache-sized
# Rows either side of a map's maximum blurred in its band (`modulated_taps`). DARK reads 2 rows either
# side; the rows beyond the band must be ruled out by their bound, which is loose (the row's maximum
# times the kernel's whole width). For a peak like the codecs' targets (sigma 2 at 64x48) a row 2 away
# is not ruled out and the map is blurred whole; from 3 away it is. Measured on recorded maps of the
# fitted models (ms/box, one thread): half-height 2: DARK 3.70 (fallbacks), 3: 1.78, 4: 1.85, 5 (the
# kernel's radius, before): 2.19. The bytes do not depend on it: a map not ruled out is blurred whole.
_BAND_HALF = 3


_SCRATCH = threading.local()


def _scratch(name: str, shape: tuple[int, ...]) -> np.ndarray:
    """A float32 buffer of `shape` kept by this thread (its contents are whatever was last written).

    Why: a batch's band buffers are tens of MB; allocated afresh, every call pays the kernel's
    first-touch page faults on them, about a quarter of the banded blur's time. Kept per thread
    (decoding threads run at once) and grown to the largest batch seen; a smaller one is a prefix.
    """
    held = getattr(_SCRATCH, name, None)
    if held is None or held.shape[1:] != shape[1:] or len(held) < shape[0]:
        held = np.zeros(shape, dtype=np.float32)
        setattr(_SCRATCH, name, held)
    return held[: shape[0]]


def _blur_stacked(padded: np.ndarray, kernel: int, out: np.ndarray | None = None) -> np.ndarray:
    """cv2.GaussianBlur of (n, h, w) zero-padded maps stacked into tall images, a chunk at a time
    (into `out` when given)."""
    n, h, w = padded.shape
    out = np.empty_like(padded) if out is None else out
    per_chunk = max(1, _CHUNK_PIXELS // (h * w))
    for lo in range(0, n, per_chunk):
        part = padded[lo : lo + per_chunk]
        cv2.GaussianBlur(
            part.reshape(-1, w), (kernel, kernel), 0, dst=out[lo : lo + len(part)].reshape(-1, w)
        )
    return out


def scan(maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each map's row maxima (M, H) and minimum (M,), both exact (a maximum rounds nothing).

    Both are torch reductions (`amax` over rows of a few dozen pixels, `amin` over each map): one
    vectorised pass each, on torch's threads (row maxima on one core 2.6x faster than cv2's row
    reduction, 3x numpy's). Both propagate NaN, so a map holding NaN has a NaN minimum, which is how
    it is known.
    Runs where torch's thread pool is usable: in `zoo run` it is called in the main process, before
    a batch goes to a `DecodePool` worker (a forked child must not start torch's threads).
    """
    import torch

    m, h, w = maps.shape
    tensor = torch.from_numpy(maps)
    return tensor.view(m * h, w).amax(dim=1).numpy().reshape(m, h), tensor.view(m, h * w).amin(dim=1).numpy()


def _row_bounds(row_max: np.ndarray, size: np.ndarray, kernel: int) -> np.ndarray:
    """Per map and row, an upper bound of every blurred pixel of that row (before mmpose's factor).

    A blurred pixel is sum_dy wy[dy] * sum_dx wx[dx] * P[y + dy, x + dx] over the zero-padded map P,
    with non-negative weights, so it is at most sum_dy wy[dy] * sum(wx) * R[y + dy], R being the row's
    maximum with the padding's zeros (every row has pixels whose window reaches the padding). The
    weights are cv2's float32 kernel; cv2's float32 rounding is covered by a margin of 1e-4 times the
    kernel's total weight squared times the map's largest magnitude `size` (the rounding is below
    1e-5 of it).
    """
    weights = cv2.getGaussianKernel(kernel, 0, cv2.CV_32F).astype(np.float64).ravel() * (1 + 1e-5)
    high = np.maximum(row_max, 0)
    # a correlation along each map's rows, zeros beyond them, in float32: its rounding (a sum of
    # `kernel` non-negative terms, relative error below kernel * 2**-24) is inside the weights' 1e-5
    bound = cv2.filter2D(
        high, cv2.CV_32F, weights.astype(np.float32)[None, :], borderType=cv2.BORDER_CONSTANT
    ).astype(np.float64)
    total = weights.sum()
    return (bound + 1e-4 * total * size[:, None]) * total


def _band_rows(maps: np.ndarray, first: np.ndarray, count: int) -> np.ndarray:
    """(M, count, W): rows first..first+count-1 of each map, zero where a row is outside its map.

    One gather of `count` consecutive rows per map from a view of all maps' rows as one sequence (a
    block copy each, 3.6x numpy's row-wise take); a block reaching into a neighbouring map has those
    rows zeroed after, and only a block beyond the batch's first or last row is gathered row by row.
    """
    m, h, w = maps.shape
    rows = maps.reshape(m * h, w)
    src = first[:, None] + np.arange(count)
    if m * h < count:  # not one whole block in the batch
        picked = rows[np.arange(m)[:, None] * h + np.clip(src, 0, h - 1)]
        picked[(src < 0) | (src >= h)] = 0
        return picked
    blocks = np.lib.stride_tricks.as_strided(
        rows, shape=(m * h - count + 1, count, w), strides=(rows.strides[0], *rows.strides), writeable=False
    )
    at = np.arange(m) * h + first
    clipped = np.clip(at, 0, m * h - count)
    picked = blocks[clipped]
    for i in np.nonzero(at != clipped)[0]:
        picked[i] = rows[i * h + np.clip(src[i], 0, h - 1)]
    picked[(src < 0) | (src >= h)] = 0
    return picked


def _whole_blur_taps(
    maps: np.ndarray, kernel: int, full: np.ndarray, blurred_max: np.ndarray, taps: Any
) -> np.ndarray:
    """Blur the maps `full` whole, as mmpose does, write their maxima into `blurred_max` and return
    the blurred pixels `taps` = (map, y, x) of those maps.

    A cache-sized chunk of maps at a time, in buffers kept per thread: with flat heatmaps nearly
    every map lands here, and blurring them all at once allocated (and page-faulted) hundreds of MB.
    """
    _, h, w = maps.shape
    b = (kernel - 1) // 2
    tap_map, tap_y, tap_x = taps
    slot = np.full(len(maps), -1)
    slot[full] = np.arange(len(full))
    tap_slot = slot[tap_map]
    order = np.argsort(tap_slot, kind="stable")
    per = max(1, _CHUNK_PIXELS // ((h + 2 * b) * (w + 2 * b)))
    edges = np.searchsorted(tap_slot[order], np.arange(0, len(full) + per, per))
    out = np.empty(len(tap_map), dtype=np.float32)
    for i, lo in enumerate(range(0, len(full), per)):
        chosen = full[lo : lo + per]
        padded = _scratch("whole_padded", (len(chosen), h + 2 * b, w + 2 * b))  # borders stay zero
        padded[:, b:-b, b:-b] = maps[chosen]
        blurred = _blur_stacked(padded, kernel, _scratch("whole_blurred", padded.shape))[:, b:-b, b:-b]
        blurred_max[chosen] = blurred.max(axis=(1, 2))
        mine = order[edges[i] : edges[i + 1]]
        out[mine] = blurred[tap_slot[mine] - lo, tap_y[mine], tap_x[mine]]
    return out


def modulated_taps(
    maps: np.ndarray,
    kernel: int,
    maxima: np.ndarray,
    rows: np.ndarray,
    taps: tuple[np.ndarray, ...],
    scanned: tuple[np.ndarray, np.ndarray],
) -> np.ndarray:
    """The pixels `taps` = (map, y, x) index arrays of mmpose's `gaussian_blur(maps, kernel)`: blurred
    and multiplied by each map's `origin_max / blurred max`, in float32, exactly.

    `maxima` are the maps' maxima (mmpose's `origin_max`), `rows` the row of each map's maximum and
    `scanned` the maps' `scan`. Blurring a whole map is only needed for its maximum, and the maximum
    of a peaked map lies near its peak. So each map is first blurred in a band of 2 * `_BAND_HALF` + 1
    rows around `rows` (a band is blurred exactly as inside the whole map: the kept rows read only real
    padded rows, and cv2's arithmetic depends on the column, not the row). A row outside the band can only
    hold the maximum if its upper bound, the kernel's total weight times the largest value within b
    rows (zero padding included), plus a margin far above float32 rounding, reaches the band's
    maximum. Maps where that is possible, or that are not finite, or whose taps leave the band, are
    blurred whole, as mmpose does.
    """
    m, h, w = maps.shape
    b = (kernel - 1) // 2
    half = min(_BAND_HALF, b)
    band = min(2 * half + 1, h)
    start = np.clip(rows - half, 0, h - band)
    # band: input rows start-b .. start+band+b-1 of each map, zero outside it, zero columns either side
    picked = _band_rows(maps, start - b, band + 2 * b)
    padded = cv2.copyMakeBorder(
        picked.reshape(-1, w), 0, 0, b, b, cv2.BORDER_CONSTANT,
        dst=_scratch("padded", (m * (band + 2 * b), w + 2 * b)), value=0,
    ).reshape(m, band + 2 * b, w + 2 * b)  # fmt: skip
    banded = _blur_stacked(padded, kernel, _scratch("blurred", padded.shape))[:, b : b + band, b:-b]
    band_max = banded.max(axis=(1, 2))

    row_max, low = scanned
    bound = _row_bounds(row_max, np.maximum(np.abs(maxima), np.abs(low)), kernel)
    outside = (np.arange(h) < start[:, None]) | (np.arange(h) >= (start + band)[:, None])
    whole = (
        np.any(outside & (bound >= band_max[:, None]), axis=1)
        | ~(band_max > 0)
        | ~np.isfinite(maxima)
        | ~np.isfinite(bound).all(axis=1)
    )
    tap_map, tap_y, tap_x = taps
    in_band = (tap_y >= start[tap_map]) & (tap_y < start[tap_map] + band)
    np.logical_or.at(whole, tap_map[~in_band], True)

    blurred_max = band_max.copy()
    values = np.empty(tap_map.shape, dtype=np.float32)
    ok = ~whole[tap_map]
    values[ok] = banded[tap_map[ok], tap_y[ok] - start[tap_map[ok]], tap_x[ok]]
    full = np.nonzero(whole)[0]
    if len(full):
        values[~ok] = _whole_blur_taps(maps, kernel, full, blurred_max, (t[~ok] for t in taps))
    with np.errstate(divide="ignore", invalid="ignore"):  # a map that blurs to 0 gives NaN, as in mmpose
        factor = maxima / blurred_max
    values *= factor[tap_map]
    return values


def heatmap_maximum(
    heatmaps: np.ndarray, scanned: tuple[np.ndarray, np.ndarray] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """mmpose's `get_heatmap_maximum` for (M, H, W): (M, 2) float32 locations (x, y), (M,) values.

    The first maximum in row-major order, as `np.argmax`, found from the maps' `scan` when given
    (its first row holding the maximum, then that row's first pixel), else by `np.argmax`; its
    value read at that pixel. A finite non-zero maximum has one bit pattern, so the read value is
    `np.amax`'s; maps whose maximum is zero (whose sign `np.amax` decides), not finite, or that hold
    NaN are redone with `np.argmax` and `np.amax`, as mmpose calls them.
    """
    m, h, w = heatmaps.shape
    flat = heatmaps.reshape(m, -1)
    maps = np.arange(m)
    if scanned is None:
        index = np.argmax(flat, axis=1)
    else:
        row_max, low = scanned
        top = row_max.max(axis=1, keepdims=True)
        y = np.argmax(row_max == top, axis=1)
        index = y * w + np.argmax(heatmaps[maps, y] == top, axis=1)
    vals = flat[maps, index]
    odd = ~np.isfinite(vals) | (vals == 0)
    if scanned is not None:
        odd |= np.isnan(low)
    odd = np.nonzero(odd)[0]
    if len(odd):
        index[odd] = np.argmax(flat[odd], axis=1)
        vals[odd] = np.amax(flat[odd], axis=1)
    y, x = np.divmod(index, w)
    locs = np.stack((x, y), axis=-1).astype(np.float32)
    locs[vals <= 0.0] = -1
    return locs, vals


def _refine_msra(locs: np.ndarray, heatmaps: np.ndarray) -> np.ndarray:
    """`refine_keypoints`: a quarter pixel towards the higher neighbour, with mmpose's bounds."""
    _, h, w = heatmaps.shape
    x, y = locs[:, 0].astype(int), locs[:, 1].astype(int)
    rows = np.arange(len(locs))
    steps = np.zeros((len(locs), 2), dtype=np.float32)
    ok = (x > 1) & (x < w - 1) & (y > 0) & (y < h)
    r, xs, ys = rows[ok], x[ok], y[ok]
    steps[ok, 0] = heatmaps[r, ys, xs + 1] - heatmaps[r, ys, xs - 1]
    ok = (y > 1) & (y < h - 1) & (x > 0) & (x < w)
    r, xs, ys = rows[ok], x[ok], y[ok]
    steps[ok, 1] = heatmaps[r, ys + 1, xs] - heatmaps[r, ys - 1, xs]
    locs += np.sign(steps) * 0.25
    return locs


def _nonzero_determinant(dxx: np.ndarray, dyy: np.ndarray, dxy: np.ndarray) -> np.ndarray:
    """mmpose's test `dxx * dyy - dxy**2 != 0`, per element as it evaluates it on numpy scalars.

    A scalar `dxy**2` is C's pow(), which may round differently from the array square, so where the
    determinant is within a few ulps of zero the test is redone with the very scalar expression.
    """
    prod, square = dxx * dyy, dxy * dxy
    det = prod - square
    close = np.abs(det) <= 8 * np.finfo(det.dtype).eps * np.maximum(np.abs(prod), square)
    out = det != 0
    for i in np.nonzero(close)[0]:
        a, b, c = dxx[i], dyy[i], dxy[i]  # numpy scalars of mmpose's type
        out[i] = a * b - c**2 != 0
    return out


# The 13 pixels (dy, dx) around the maximum that DARK's derivatives read.
_DARK_TAPS = np.array(
    [
        (0, 0),
        (0, 1),
        (0, -1),
        (1, 0),
        (-1, 0),
        (0, 2),
        (0, -2),
        (1, 1),
        (-1, 1),
        (1, -1),
        (-1, -1),
        (2, 0),
        (-2, 0),
    ]
)


def _refine_dark(
    locs: np.ndarray,
    heatmaps: np.ndarray,
    maxima: np.ndarray,
    kernel: int,
    scanned: tuple[np.ndarray, np.ndarray],
) -> np.ndarray:
    """`refine_keypoints_dark`: blur, log, then one Newton step where the 5x5 neighbourhood fits.

    mmpose takes the log of every blurred pixel and reads 13 of them per keypoint; here the 13 are
    read first and then scaled, clamped and logged (all elementwise, so the values are the same).
    """
    if _SCALAR is None:
        raise UnsupportedCodec("this numpy's scalar promotion is not uniform; DARK is decoded by mmpose")
    _, h, w = heatmaps.shape
    x, y = locs[:, 0].astype(int), locs[:, 1].astype(int)
    r = np.nonzero((x > 1) & (x < w - 2) & (y > 1) & (y < h - 2))[0]
    if not len(r):
        return locs
    shape = (len(r), len(_DARK_TAPS))
    taps = modulated_taps(
        heatmaps, kernel, maxima, np.maximum(y, 0),
        (np.broadcast_to(r[:, None], shape), y[r, None] + _DARK_TAPS[:, 0], x[r, None] + _DARK_TAPS[:, 1]),
        scanned,
    )  # fmt: skip
    np.maximum(taps, 1e-10, taps)
    np.log(taps, taps)
    c, e, wst, s, n, e2, w2, se, ne, sw, nw, s2, n2 = taps.T

    t = _SCALAR
    centre2 = 2 * c.astype(t)
    dx = 0.5 * (e - wst).astype(t)
    dy = 0.5 * (s - n).astype(t)
    dxx = 0.25 * (e2.astype(t) - centre2 + w2.astype(t))
    dxy = 0.25 * (se - ne - sw + nw).astype(t)
    dyy = 0.25 * (s2.astype(t) - centre2 + n2.astype(t))
    solvable = _nonzero_determinant(dxx, dyy, dxy)
    r, dx, dy, dxx, dxy, dyy = (a[solvable] for a in (r, dx, dy, dxx, dxy, dyy))
    if len(r):
        hessian = np.stack([np.stack([dxx, dxy], axis=1), np.stack([dxy, dyy], axis=1)], axis=1)
        derivative = np.stack([dx, dy], axis=1)[:, :, None]
        offset = -np.linalg.inv(hessian) @ derivative
        locs[r] = locs[r] + offset[:, :, 0]
    return locs


def _refine_udp(
    locs: np.ndarray,
    heatmaps: np.ndarray,
    maxima: np.ndarray,
    kernel: int,
    per_instance: int,
    scanned: tuple[np.ndarray, np.ndarray],
) -> np.ndarray:
    """`refine_keypoints_dark_udp`: blur, clip, log, edge-pad, one Newton step for every keypoint.

    mmpose flattens each instance's edge-padded log maps and reads 7 pixels per keypoint at float32
    flat indices (`x + 1 + (y + 1) * (W + 2) + k * (W + 2) * (H + 2)` plus fixed offsets; a negative
    one wraps to the end of the instance's array, as Python indexing does). The same indices are
    computed here, mapped back to (map, row, column) with the edge padding as a clamp, and only those
    pixels are scaled, clipped and logged.
    """
    m, h, w = heatmaps.shape
    k = per_instance
    size = (w + 2) * (h + 2)
    index = locs[:, 0] + 1 + (locs[:, 1] + 1) * (w + 2)
    index = index.reshape(-1, k)
    index += (w + 2) * (h + 2) * np.arange(0, k)
    index = index.astype(int)
    offsets = np.array([0, 1, w + 2, w + 3, -w - 3, -1, -2 - w])
    flat = index[:, :, None] + offsets  # (instances, K, 7) indices into one instance's padded maps
    flat = np.where(flat < 0, flat + k * size, flat)
    if flat.max(initial=0) >= k * size:
        raise IndexError("UDP refinement index out of bounds (as in mmpose)")
    local, rem = np.divmod(flat, size)
    rows = (local + (np.arange(m // k) * k)[:, None, None]).reshape(m, 7)
    py, px = np.divmod(rem.reshape(m, 7), w + 2)
    taps = modulated_taps(
        heatmaps, kernel, maxima, np.maximum(locs[:, 1].astype(int), 0),
        (rows, np.clip(py - 1, 0, h - 1), np.clip(px - 1, 0, w - 1)), scanned,
    )  # fmt: skip
    np.clip(taps, 1e-3, 50.0, taps)
    np.log(taps, taps)
    i_, ix1, iy1, ix1y1, ix1_y1_, ix1_, iy1_ = (taps[:, j : j + 1] for j in range(7))

    derivative = np.concatenate([0.5 * (ix1 - ix1_), 0.5 * (iy1 - iy1_)], axis=1).reshape(m, 2, 1)
    dxx = ix1 - 2 * i_ + ix1_
    dyy = iy1 - 2 * i_ + iy1_
    dxy = 0.5 * (ix1y1 - ix1 - iy1 + i_ + i_ - ix1_ - iy1_ + ix1_y1_)
    hessian = np.concatenate([dxx, dxy, dxy, dyy], axis=1).reshape(m, 2, 2)
    hessian = np.linalg.inv(hessian + np.finfo(np.float32).eps * np.eye(2))
    locs -= np.einsum("imn,ink->imk", hessian, derivative).squeeze(-1)
    return locs


@dataclass(frozen=True)
class BatchDecoder:
    """The decode of one head's codec, for (N, K, H, W) flip-averaged heatmaps at once."""

    kind: str  # "msra", "dark" or "udp"
    heatmap_size: tuple[int, int]  # (W, H)
    input_size: tuple[int, int]  # (W, H)
    blur_kernel_size: int
    scale_factor: np.ndarray | None  # MSRA: the codec's float32 (input / heatmap) factor

    @classmethod
    def for_codec(cls, codec: Any) -> BatchDecoder:
        """The decoder reproducing `codec.decode`; UnsupportedCodec for anything else."""
        name = type(codec).__name__
        if name == "MSRAHeatmap":
            return cls(
                kind="dark" if codec.unbiased else "msra",
                heatmap_size=tuple(codec.heatmap_size),
                input_size=tuple(codec.input_size),
                blur_kernel_size=int(codec.blur_kernel_size),
                scale_factor=codec.scale_factor,
            )
        if name == "UDPHeatmap" and codec.heatmap_type == "gaussian":
            return cls(
                kind="udp",
                heatmap_size=tuple(codec.heatmap_size),
                input_size=tuple(codec.input_size),
                blur_kernel_size=int(codec.blur_kernel_size),
                scale_factor=None,
            )
        detail = f" (heatmap_type={codec.heatmap_type!r})" if name == "UDPHeatmap" else ""
        raise UnsupportedCodec(f"codec {name}{detail} is not reproduced by zoo.decode; mmpose decodes it")

    @property
    def scans(self) -> bool:
        """Whether `decode` needs the maps' `scan` (the blurring codecs: their bounds need each map's
        row maxima, which also give the maximum)."""
        return self.kind != "msra"

    def decode(
        self, heatmaps: np.ndarray, scanned: tuple[np.ndarray, np.ndarray] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(N, K, 2) keypoints in the model's input space and (N, K) scores, as the codec gives them
        instance by instance (float32 for MSRA/DARK, float64 for UDP). `heatmaps` is left untouched.
        `scanned`: the (N*K, H, W) maps' `scan`, when the caller has made it (else made here)."""
        n, k, h, w = heatmaps.shape
        maps = np.ascontiguousarray(heatmaps, dtype=np.float32).reshape(n * k, h, w)
        if not self.scans:
            locs, scores = heatmap_maximum(maps)
            locs = _refine_msra(locs, maps)
        else:
            scanned = scan(maps) if scanned is None else scanned
            locs, scores = heatmap_maximum(maps, scanned)
            if self.kind == "dark":
                locs = _refine_dark(locs, maps, scores, self.blur_kernel_size, scanned)
            else:
                locs = _refine_udp(locs, maps, scores, self.blur_kernel_size, k, scanned)
        locs = locs.reshape(n, k, 2)
        if self.kind == "udp":
            width, height = self.heatmap_size
            return locs / [width - 1, height - 1] * self.input_size, scores.reshape(n, k)
        return locs * self.scale_factor, scores.reshape(n, k)


def to_image(keypoints: np.ndarray, centers: np.ndarray, scales: np.ndarray, input_size: Any) -> np.ndarray:
    """`add_pred_to_datasample`'s mapping from input to image coordinates for (N, K, 2) keypoints,
    with (N, 2) box centers and (N, 2) scales; the result keeps the keypoints' dtype."""
    out = keypoints.copy()
    out[..., :2] = (
        keypoints[..., :2] / input_size * scales[:, None, :] + centers[:, None, :] - 0.5 * scales[:, None, :]
    )
    return out
