"""zoo.decode gives bitwise mmpose's own per-instance decode, for every codec of the 12 rows.

Reference: the row's codec instance from its mmpose config (`codec.decode(heatmaps[i])` for each
instance, exactly what `BaseHead.decode` calls) and `TopdownPoseEstimator.add_pred_to_datasample`
for the mapping to image coordinates. Compared with `==` on the bytes (dtype included), NaN where
mmpose gives NaN. Inputs: real model outputs (random-weight checkpoints of the row's architecture,
flip-averaged as mmpose's head does) and heatmaps built to hit the edges of the algorithm: flat and
negative maps, maxima on every border, ties, spikes, peaks beside the band that `modulated_taps`
blurs first, and maps too small for the band.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from zoo import decode
from zoo.manifest import load_manifests

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "manifests"

# One row per distinct codec among the 12 rows: MSRA 64x48, DARK 64x48, DARK 96x72, UDP 64x48.
CODEC_ROWS = {
    "msra": "res50-256x192",
    "dark": "hrnet-w32-dark-256x192",
    "dark-96x72": "hrnet-w48-dark-plus-384x288",
    "udp": "cspnext-m-udp-256x192",
}


def _config(row_id: str):
    from mmengine.config import Config

    from zoo import compat

    compat.apply()
    return Config.fromfile(str(load_manifests(MANIFESTS).row(row_id).config_path))


def _codec(row_id: str):
    from mmpose.registry import KEYPOINT_CODECS

    return KEYPOINT_CODECS.build(_config(row_id).model.head.decoder)


def _reference(codec, heatmaps: np.ndarray) -> tuple[np.ndarray, np.ndarray] | type[Exception]:
    """mmpose's decode instance by instance, or the exception class it raises."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            out = [codec.decode(hm) for hm in heatmaps]
    except Exception as exc:  # noqa: BLE001 - the reference's failure is part of what must match
        return type(exc)
    return np.concatenate([k for k, _ in out]), np.concatenate([s for _, s in out])


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def assert_identical(codec, heatmaps: np.ndarray) -> None:
    ref = _reference(codec, heatmaps)
    dec = decode.BatchDecoder.for_codec(codec)
    if isinstance(ref, type):
        with pytest.raises(ref):
            dec.decode(heatmaps)
        return
    before = heatmaps.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        keypoints, scores = dec.decode(heatmaps)
    assert _same(heatmaps, before), "decode must not modify its input"
    bad = np.argwhere(keypoints != ref[0])
    bad = [tuple(i) for i in bad if not (np.isnan(keypoints[tuple(i)]) and np.isnan(ref[0][tuple(i)]))]
    assert not bad, f"{len(bad)} coordinates differ, first at {bad[:3]}"
    assert _same(keypoints, ref[0])
    assert _same(scores, ref[1])


class BlurPaths:
    """Counts the maps blurred in a band and blurred whole (`height` = the maps' height), so a test
    can show that its data exercises both."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, height: int) -> None:
        self.band = self.whole = 0
        real = decode._blur_stacked

        def spy(padded: np.ndarray, kernel: int, out: np.ndarray | None = None) -> np.ndarray:
            if padded.shape[1] - (kernel - 1) < height:
                self.band += len(padded)
            else:
                self.whole += len(padded)
            return real(padded, kernel, out)

        monkeypatch.setattr(decode, "_blur_stacked", spy)


def _peaks(rng: np.random.Generator, n: int, k: int, h: int, w: int, noise: float) -> np.ndarray:
    """Gaussian peaks of random height and width anywhere (also just outside the map) plus noise:
    the shape of trained heatmaps, with weak and absent peaks among them."""
    yy, xx = np.mgrid[0:h, 0:w]
    cx = rng.uniform(-3, w + 3, (n, k, 1, 1))
    cy = rng.uniform(-3, h + 3, (n, k, 1, 1))
    sigma = rng.uniform(1.0, 4.0, (n, k, 1, 1))
    height = rng.uniform(-0.1, 1.0, (n, k, 1, 1))
    maps = height * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2))
    return (maps + rng.normal(0, noise, (n, k, h, w))).astype(np.float32)


def _edge_cases(h: int, w: int, k: int) -> np.ndarray:
    """One instance per family, K maps each (every map of a family a variant of it)."""
    rng = np.random.default_rng(7)
    base = rng.normal(0, 0.01, (k, h, w)).astype(np.float32)
    cases = []
    flat = np.zeros((k, h, w), np.float32)
    flat[1::3] = -1.0
    flat[2::3] = 0.5
    cases.append(flat)
    border = base.copy()
    spots = [
        (0, 0),
        (0, w - 1),
        (h - 1, 0),
        (h - 1, w - 1),
        (0, w // 2),
        (h - 1, w // 2),
        (h // 2, 0),
        (h // 2, w - 1),
    ]
    spots += [(1, 1), (2, 2), (h - 2, w - 2), (h - 3, w - 3), (1, w // 2), (h // 2, 1)]
    for i in range(k):
        y, x = spots[i % len(spots)]
        border[i, y, x] = 1.0 + i
    cases.append(border)
    ties = base.copy()
    for i in range(k):
        ties[i, 5 + i % 7, 3 + i % 5] = ties[i, h - 6, w - 4 - i % 3] = 2.0
        if i % 4 == 0:
            ties[i] = 3.0  # every pixel the maximum
    cases.append(ties)
    negative = -np.abs(base) - 0.5
    negative[::2, h // 2, w // 2] = -0.1
    cases.append(negative)
    near_band = base.copy()  # a second, slightly lower peak just outside the first peak's band
    for i in range(k):
        y = 10 + i % (h - 20)
        near_band[i, y, w // 2] = 1.0
        near_band[i, min(h - 1, y + 4 + i % 8), w // 3] = 0.999 - 0.05 * (i % 3)  # 4..11 rows below
    cases.append(near_band)
    spike = np.zeros((k, h, w), np.float32)
    spike[:, h // 3, w // 3] = np.linspace(1e-6, 1e6, k, dtype=np.float32)
    cases.append(spike)
    odd = base.copy()  # maps the row-maximum scan must not trust: NaN, infinities, signed zeros
    for i in range(k):
        y, x = 3 + i % (h - 6), 3 + i % (w - 6)
        if i % 5 == 0:
            odd[i, y, x] = np.nan
        elif i % 5 == 1:
            odd[i, y, x] = np.inf
        elif i % 5 == 2:
            odd[i] = -np.abs(odd[i])
            odd[i, y, x] = -0.0
            odd[i, h - 1 - y, x] = 0.0
        elif i % 5 == 3:
            odd[i, y, x] = -np.inf
        else:
            odd[i, :, :] = -0.0
            odd[i, y, x] = 0.0
    cases.append(odd)
    return np.stack(cases)


@pytest.mark.parametrize("case", sorted(CODEC_ROWS))
def test_edge_cases_identical(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    codec = _codec(CODEC_ROWS[case])
    w, h = codec.heatmap_size
    paths = BlurPaths(monkeypatch, h)
    assert_identical(codec, _edge_cases(h, w, k=133))
    if case != "msra":
        assert paths.band and paths.whole, "edge cases must exercise both the band and the whole-map blur"


@pytest.mark.parametrize("case", sorted(CODEC_ROWS))
def test_peaked_maps_identical(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    codec = _codec(CODEC_ROWS[case])
    w, h = codec.heatmap_size
    paths = BlurPaths(monkeypatch, h)
    rng = np.random.default_rng(sorted(CODEC_ROWS).index(case))
    assert_identical(codec, _peaks(rng, n=6, k=133, h=h, w=w, noise=0.02))
    if case != "msra":
        # not too easy: most maps take the band, and weak or absent peaks force whole-map blurs
        assert paths.band > 400 and paths.whole > 20, (paths.band, paths.whole)


def test_small_maps_and_kernels() -> None:
    """Maps no taller than the band, other blur kernels, a single keypoint."""
    from mmpose.codecs import MSRAHeatmap, UDPHeatmap

    rng = np.random.default_rng(11)
    for codec in (
        MSRAHeatmap(input_size=(40, 32), heatmap_size=(10, 8), sigma=2, unbiased=True, blur_kernel_size=11),
        MSRAHeatmap(
            input_size=(192, 256), heatmap_size=(48, 64), sigma=3, unbiased=True, blur_kernel_size=17
        ),
        UDPHeatmap(input_size=(40, 32), heatmap_size=(10, 8), sigma=2, blur_kernel_size=5),
    ):
        w, h = codec.heatmap_size
        assert_identical(codec, _peaks(rng, n=3, k=17, h=h, w=w, noise=0.01))
        assert_identical(codec, _peaks(rng, n=2, k=1, h=h, w=w, noise=0.01))


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CODEC_ROWS))
def test_real_model_outputs_identical(case: str, synth_root: Path) -> None:
    """Flip-averaged heatmaps of the row's architecture (random weights) on real crops of the
    synthetic set, as mmpose's head produces them before decoding."""
    import torch
    from mmengine.dataset import pseudo_collate

    from zoo.data import dataset_paths, load_registry
    from zoo.evaluate import build_dataset, build_model, load_config
    from zoo.randweights import random_state_dict

    row = load_manifests(MANIFESTS).row(CODEC_ROWS[case])
    paths = dataset_paths(load_registry(MANIFESTS).get(row.dataset), synth_root)
    cfg = load_config(row, paths, workers=0)
    model = build_model(cfg, "cpu", random_state_dict(cfg, seed=5))
    dataset = build_dataset(cfg)
    batch = pseudo_collate([dataset[i] for i in range(min(4, len(dataset)))])  # mmpose's own pipeline
    captured = []
    head = model.head
    real_decode = head.decode
    head.decode = lambda hm: captured.append(hm.detach().cpu().numpy()) or real_decode(hm)
    with torch.no_grad():
        model.test_step(batch)
    heatmaps = captured[0]
    assert np.ptp(heatmaps) > 0.1, "random outputs too flat to test anything"
    assert_identical(head.decoder, heatmaps)


def test_to_image_matches_add_pred_to_datasample() -> None:
    """The mapping to image coordinates, against mmpose's own method, for float32 and float64."""
    from mmengine.structures import InstanceData
    from mmpose.models.pose_estimators import TopdownPoseEstimator
    from mmpose.structures import PoseDataSample

    rng = np.random.default_rng(3)
    n, k = 5, 133
    centers = rng.uniform(0, 640, (n, 2)).astype(np.float32)
    scales = rng.uniform(20, 400, (n, 2)).astype(np.float32)
    for dtype in (np.float32, np.float64):
        keypoints = rng.uniform(-5, 260, (n, k, 2)).astype(dtype)
        samples, preds = [], []
        for i in range(n):
            sample = PoseDataSample(
                metainfo={"input_center": centers[i], "input_scale": scales[i], "input_size": (192, 256)}
            )
            sample.gt_instances = InstanceData(bboxes=np.zeros((1, 4)), bbox_scores=np.ones(1))
            samples.append(sample)
            preds.append(
                InstanceData(
                    keypoints=keypoints[i : i + 1].copy(), keypoint_scores=np.ones((1, k), np.float32)
                )
            )
        estimator = TopdownPoseEstimator.__new__(TopdownPoseEstimator)
        estimator.test_cfg = {}
        out = TopdownPoseEstimator.add_pred_to_datasample(estimator, preds, None, samples)
        want = np.concatenate([s.pred_instances.keypoints for s in out])
        assert _same(decode.to_image(keypoints, centers, scales, (192, 256)), want)


def test_scalar_type_probe_matches_numpy() -> None:
    """DARK's arrays are cast to the type numpy gives mmpose's scalar arithmetic."""
    f = np.float32(0.3)
    assert decode._SCALAR is type(0.5 * f) is type(2 * f) is type(0.25 * (f - f))


def test_unsupported_codec_is_named() -> None:
    from mmpose.codecs import UDPHeatmap

    codec = UDPHeatmap(input_size=(192, 256), heatmap_size=(48, 64), heatmap_type="combined")
    with pytest.raises(decode.UnsupportedCodec, match="combined"):
        decode.BatchDecoder.for_codec(codec)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["msra", "udp"])
def test_heatmap_model_equals_mmposes_preprocessing_and_flip(case: str, synth_root: Path) -> None:
    """HeatmapModel (its own preprocessing arithmetic, mmpose's forward and flip) gives bitwise the
    heatmaps that mmpose's `model.test_step` hands its decoder, and its preprocessing equals the
    data preprocessor's output."""
    import torch
    from mmengine.dataset import pseudo_collate

    from zoo.data import dataset_paths, load_registry
    from zoo.evaluate import build_dataset, build_model, load_config
    from zoo.inference import HeatmapModel
    from zoo.randweights import random_state_dict

    row = load_manifests(MANIFESTS).row(CODEC_ROWS[case])
    paths = dataset_paths(load_registry(MANIFESTS).get(row.dataset), synth_root)
    cfg = load_config(row, paths, workers=0)
    model = build_model(cfg, "cpu", random_state_dict(cfg, seed=3))
    dataset = build_dataset(cfg)
    batch = pseudo_collate([dataset[i] for i in range(min(3, len(dataset)))])  # mmpose's own pipeline
    captured = []
    real_decode = model.head.decode
    model.head.decode = lambda hm: captured.append(hm.clone()) or real_decode(hm)
    ours = HeatmapModel(model, dataset.metainfo["flip_indices"])
    stacked = torch.stack(batch["inputs"])
    with torch.no_grad():
        model.test_step(batch)
        assert torch.equal(ours.preprocess(stacked), model.data_preprocessor(batch, False)["inputs"])
        heatmaps = ours(stacked)
    assert heatmaps.dtype == captured[0].dtype and heatmaps.numpy().tobytes() == captured[0].numpy().tobytes()


def test_decode_pool_gives_the_in_process_bytes_and_only_blurring_codecs_use_it() -> None:
    """The pool's workers decode the very bytes the main process would (shared memory, not pickles),
    and plain MSRA, cheaper than the copy into shared memory, stays out of it."""
    from zoo.inference import DecodePool, Decoder

    wants = {case: Decoder(_codec(row), row).wants_processes for case, row in CODEC_ROWS.items()}
    assert wants == {"msra": False, "dark": True, "dark-96x72": True, "udp": True}
    codec = _codec(CODEC_ROWS["dark"])
    w, h = codec.heatmap_size
    heatmaps = _peaks(np.random.default_rng(5), n=4, k=133, h=h, w=w, noise=0.02)
    decoder = Decoder(codec, "dark")
    expected = decoder(heatmaps)  # the first batch: checked against mmpose's decode
    assert decoder.path == "zoo.decode"
    pool = DecodePool(2, heatmaps.nbytes)
    try:
        decoder.pool = pool
        got = [decoder(heatmaps) for _ in range(3)]
    finally:
        pool.close()
    for keypoints, scores in got:
        assert _same(keypoints, expected[0]) and _same(scores, expected[1])


def test_band_rows_are_the_rows_asked_for_with_zeros_outside_the_map() -> None:
    """`_band_rows` gathers blocks from a view across map boundaries; every block, including those
    reaching past a map's edge, past the batch's ends, or longer than the batch, is the plain
    definition: rows `first..first+count-1` of its own map, zero outside it."""
    from zoo.decode import _band_rows

    rng = np.random.default_rng(0)
    for m, h in [(1, 5), (1, 64), (3, 10), (50, 64), (2, 17)]:
        maps = rng.random((m, h, 4)).astype(np.float32) + 1  # no zeros of their own
        for count in (3, 7, 17, 21):
            first = rng.integers(-count, h, m)
            first[0], first[-1] = -2, h - 1  # the batch's ends
            src = first[:, None] + np.arange(count)
            inside = (src >= 0) & (src < h)
            want = np.where(inside[:, :, None], maps[np.arange(m)[:, None], np.clip(src, 0, h - 1)], 0)
            got = _band_rows(maps, first, count)
            assert got.shape == (m, count, 4) and np.array_equal(got, want), (m, h, count)
