"""Demo checkpoints: real mmpose architectures whose weights draw the mean pose in every box.

Why not plain random weights: a random model scores exactly 0 AP and 0 AR on every part (its
keypoints land nowhere near an OKS of 0.5), so a gate over them could never show a regression.
Training is out of the question on a CPU in a demo, so the weights are constructed instead, and
the construction has to be precise: face and hand keypoints only score when they land within about
a pixel of the truth. A final layer fitted on random position features lands them several pixels
off: body and foot score, face, hand and Whole AP stay at 0.

- Position, not image: the backbone keeps its seeded random convolutions, but its first convolution
  is zeroed and every BatchNorm shift is drawn at random. The features no longer depend on the image,
  and the shifts, carried through zero padding, make them depend on the position in the crop: at the
  coarsest grid (8x6 cells for a 256x192 input) every cell gets its own feature vector.
- Exact coordinates: a least-squares fit of those vectors gives "which column / which row" codes of
  the coarse cells, and the layers between the backbone and the final 1x1 convolution are set to
  carry them, exactly, to the heatmap resolution. Deconvolution heads (ResNet, CSPNeXt) turn them into
  one 0/1 channel per heatmap column and per row (a thresholded first deconvolution, then each 4x4
  stride-2 deconvolution copies a column into its two sub-columns). HRNet has no head layers and only
  32 channels at the end, so its last stage does it: the coarse branch hands column and row staircases
  to the 1/8 branch, whose residual blocks turn them into exact coordinates X, Y and X^2 + Y^2 of the
  1/8 grid (the phase inside each staircase step comes from differences of neighbours, and products
  from ReLU gates); the last fusion upsamples them into the output.
- The mean pose: the final 1x1 convolution is set in closed form so that each keypoint's heatmap is
  a paraboloid, 1 at the keypoint's mean position in a training set's crops and falling off around
  it. Argmax, DARK and UDP decoding and the flip test then find that position to a fraction of a
  pixel, through the real mmpose forward pass and decoder.

The numbers say nothing about the architectures themselves. A perturbed backbone convolution shifts
the fitted codes: HRNet's coordinates drift with it (what `zoo demo --perturb` does), a deconvolution
head's thresholded codes ignore a small change and scramble under a large one.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, NamedTuple

import numpy as np

_GAIN = 10.0  # thresholding of the coarse column/row codes: a code off by up to 0.5 - 1/_GAIN still reads 0/1
_CURVATURE = 0.02  # heatmap = 1 - _CURVATURE * distance^2 (heatmap pixels): positive over about 7 pixels
_RIDGE = 1e-12  # relative ridge of the coarse-code fit (the fit must be near exact, see _fit_codes)
_TAPS = {"c": (1, 1), "l": (1, 0), "r": (1, 2), "u": (0, 1), "d": (2, 1)}  # 3x3 taps: x, x-1, x+1, y-1, y+1


def _first_conv(module: Any) -> Any:
    import torch

    return next(m for m in module.modules() if isinstance(m, torch.nn.Conv2d))


def _position_only_backbone(model: Any, generator: Any) -> None:
    """Zero the image input and give every backbone BatchNorm a random shift (see module doc)."""
    import torch
    from torch.nn.modules.batchnorm import _BatchNorm

    with torch.no_grad():
        _first_conv(model.backbone).weight.zero_()
        for m in model.backbone.modules():
            if isinstance(m, _BatchNorm) and m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=generator))


def _fit_codes(features: Any, targets: np.ndarray, max_error: float, offset: bool = True) -> tuple[Any, Any]:
    """Weights (T, C) and offsets (T,) with weights @ features[:, cell] + offset = targets[:, cell]
    (offsets 0 with `offset=False`: where a layer can add a constant only to every pixel alike).

    The position features of some backbones (ResNet's) are nearly degenerate, so this is ridge
    regression in float64 with a tiny ridge, solved in its dual form (a cells x cells system: there
    are far fewer cells than channels); `max_error` refuses weights that would not draw the pose.
    """
    import torch

    x = features.reshape(features.shape[0], -1).T.double().numpy()  # (cells, C)
    t = targets.reshape(len(targets), -1).T  # (cells, T)
    x_mean, t_mean = (x.mean(0), t.mean(0)) if offset else (np.zeros(x.shape[1]), np.zeros(t.shape[1]))
    xc = x - x_mean
    kernel = xc @ xc.T
    ridge = _RIDGE * np.trace(kernel) / x.shape[1] * np.eye(len(kernel))
    try:
        weight = xc.T @ np.linalg.solve(kernel + ridge, t - t_mean)
    except np.linalg.LinAlgError:  # every cell has the same features
        weight = np.zeros((x.shape[1], t.shape[1]))
    bias = t_mean - x_mean @ weight
    error = float(np.abs(x @ weight + bias - t).max())
    if error > max_error:
        raise ValueError(f"the backbone's position features cannot code the grid (error {error:.3f})")
    return torch.from_numpy(weight.T).float(), torch.from_numpy(bias).float()


def _identity_bn(bn: Any, rows: Any = slice(None), bias: Any = 0.0) -> None:
    """BatchNorm rows that pass their input through (eval mode), plus `bias`."""
    bn.weight[rows] = 1.0
    bn.bias[rows] = bias
    bn.running_mean[rows] = 0.0
    bn.running_var[rows] = 1.0 - bn.eps


# -- deconvolution heads (ResNet, CSPNeXt): one 0/1 channel per heatmap column and row -------------------


def _indicator_deconvs(model: Any, input_hw: tuple[int, int]) -> tuple[int, int]:
    """Set the head's deconvolutions so that channel j < W is 1 on heatmap column j and channel W + i
    is 1 on row i (0 elsewhere); returns the heatmap's (W, H)."""
    import torch

    head = model.head
    if not isinstance(head.conv_layers, torch.nn.Identity):
        raise ValueError("demo weights expect a heatmap head without extra conv layers")
    convs = [m for m in head.deconv_layers if isinstance(m, torch.nn.ConvTranspose2d)]
    bns = [m for m in head.deconv_layers if isinstance(m, torch.nn.BatchNorm2d)]
    for m in convs:
        if tuple(m.kernel_size) != (4, 4) or tuple(m.stride) != (2, 2) or tuple(m.padding) != (1, 1):
            raise ValueError(f"demo weights expect 4x4 stride-2 deconvolutions, got {m}")
    with torch.no_grad():
        features = model.extract_feat(torch.zeros(1, 3, *input_hw))[-1][0]
    _, h, w = features.shape
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    codes = np.stack([cols == j for j in range(w)] + [rows == i for i in range(h)]).astype(np.float64)
    # no offset: the deconvolution adds its input only at the taps' sub-cells, a BatchNorm shift everywhere
    weight, _ = _fit_codes(features, codes, max_error=0.25, offset=False)
    # terms[axis][k]: the (channel, sign) sum that is 1 on column/row k of the current level
    terms: list[list[list[tuple[int, float]]]] = [
        [[(j, 1.0)] for j in range(w)],
        [[(w + i, 1.0)] for i in range(h)],
    ]
    with torch.no_grad():
        for level, (conv, bn) in enumerate(zip(convs, bns, strict=True)):
            conv.weight.zero_()
            _identity_bn(bn)
            sizes = (2 * len(terms[0]), 2 * len(terms[1]))
            pairs = level == 0  # the first level thresholds the fitted codes: min(relu(g(v - 1/2)), 1)
            need = (2 if pairs else 1) * sum(sizes)
            if need > conv.out_channels:
                raise ValueError(f"demo weights need {need} channels after deconvolution {level}")
            new_terms: list[list[list[tuple[int, float]]]] = [[], []]
            out = 0
            for axis in (0, 1):
                for k in range(sizes[axis]):
                    phase = k % 2 + 1  # the kernel tap that maps source cell k // 2 to sub-cell k
                    taps = (slice(1, 3), phase) if axis == 0 else (phase, slice(1, 3))
                    if pairs:
                        code = k // 2 + (0 if axis == 0 else w)
                        for extra in (0.0, 1.0):
                            conv.weight[(slice(None), out, *taps)] = _GAIN * weight[code][:, None]
                            bn.bias[out] = -_GAIN * 0.5 - extra
                            out += 1
                        new_terms[axis].append([(out - 2, 1.0), (out - 1, -1.0)])
                    else:
                        for channel, sign in terms[axis][k // 2]:
                            conv.weight[(channel, out, *taps)] = sign
                        new_terms[axis].append([(out, 1.0)])
                        out += 1
            terms = new_terms
    if any(len(t) != 1 for axis in terms for t in axis):
        raise ValueError("demo weights need at least two deconvolutions")
    return len(terms[0]), len(terms[1])


# -- HRNet: exact coordinates of the 1/8 grid, built in the last stage ----------------------------------


def _zero_rows(path: Any, rows: Any = slice(None)) -> None:
    """A fusion path (convs, BatchNorms, upsampling) that adds nothing to output channels `rows`."""
    import torch

    conv = [m for m in path.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    bn = [m for m in path.modules() if isinstance(m, torch.nn.BatchNorm2d)][-1]
    conv.weight[rows] = 0.0
    _identity_bn(bn, rows)


def _set_block(block: Any, hidden: dict[int, tuple[list, float]], out: dict[int, tuple[list, float]]) -> None:
    """A BasicBlock computing relu(x + conv2(relu(conv1(x)))) with only the given taps: `hidden` and
    `out` map a channel to ([(source channel, tap, weight), ...], bias). Other output channels pass x."""
    for conv in (block.conv1, block.conv2):
        conv.weight.zero_()
    _identity_bn(block.norm1)
    _identity_bn(block.norm2)
    for conv, bn, spec in ((block.conv1, block.norm1, hidden), (block.conv2, block.norm2, out)):
        for channel, (taps, bias) in spec.items():
            for source, tap, value in taps:
                conv.weight[(channel, source, *_TAPS[tap])] = value
            bn.bias[channel] = bias


class _Axis(NamedTuple):
    """Branch-1 channels of one axis (x: columns, y: rows) in HRNet's coordinate construction."""

    low: int  # staircase 1, 2, ... (coarse cell + 1): 0 just before the first step, like the padding
    high: int  # staircase ..., 2, 1: 0 just after the last step
    square: int  # staircase of (coarse cell + 1)^2
    start: int  # 1 on the first of the 4 fine cells of each step
    end: int  # 1 on the last one
    phase1: int  # 1 on the second one
    phase2: int  # 1 on the third one
    back: str  # 3x3 taps towards the previous / next cell on this axis
    forward: str
    cells: int  # coarse cells along the axis


def _hrnet_coordinates(model: Any, input_hw: tuple[int, int]) -> None:
    """Final-feature channels 0, 1, 2 become X, Y and X^2 + Y^2 of the 1/8 grid (1-based column and
    row, constant on 2x2 heatmap pixels). See the module doc; stage 4's modules, in order:

    1. its fusion into branch 1 carries staircases of the coarsest grid (fitted from branch 4's
       position features, upsampled x4) and nothing else;
    2. branch 1's blocks find where each step starts and ends (a difference of neighbours), then the
       phase of every fine cell in its step, then X = 4 b + phase + 1 and X^2 from the coarse cell b
       (b * [phase p] is a ReLU gate); the fusion leaves branch 1 as it is;
    3. (last) branch 1 passes them on, and the fusion into the output copies them into channels 0-2.
    """
    import torch

    stage = getattr(model.backbone, "stage4", None)
    if stage is None or len(stage) < 3 or len(stage[0].branches) != 4:
        raise ValueError("demo weights expect HRNet's four-branch stage 4 with at least three modules")
    first, second, last = stage[0], stage[1], stage[-1]
    if float(first.fuse_layers[1][3][-1].scale_factor) != 4.0:
        raise ValueError("demo weights expect the coarsest HRNet branch at 1/4 of branch 1's resolution")
    grabbed: dict[str, Any] = {}
    hook = first.branches[3].register_forward_hook(lambda _m, _i, out: grabbed.update(features=out[0]))
    try:
        with torch.no_grad():
            model.extract_feat(torch.zeros(1, 3, *input_hw))
    finally:
        hook.remove()
    features = grabbed["features"]
    _, h, w = features.shape
    rows, cols = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    stairs = np.stack([cols + 1, w - cols, (cols + 1) ** 2, rows + 1, h - rows, (rows + 1) ** 2])
    weight, offset = _fit_codes(features, stairs, max_error=1e-2)
    axes = (_Axis(0, 1, 2, 6, 7, 10, 11, "l", "r", w), _Axis(3, 4, 5, 8, 9, 12, 13, "u", "d", h))
    x_coord, y_coord, square = 14, 15, 16
    with torch.no_grad():
        # 1. branch 1 := the staircases (channels 0-5)
        first.branches[1][-1].norm2.bias.fill_(-1e4)  # relu(... - 1e4) = 0: branch 1's own features dropped
        for j in (0, 2, 3):
            _zero_rows(first.fuse_layers[1][j])
        coarse = first.fuse_layers[1][3]
        coarse[0].weight[: len(stairs)] = weight[:, :, None, None]
        _identity_bn(coarse[1], slice(0, len(stairs)), offset)
        # 2. branch 1's blocks: step ends, phases, coordinates
        blocks = second.branches[1]
        hidden: dict[int, tuple[list, float]] = {}
        out: dict[int, tuple[list, float]] = {}
        for n, a in enumerate(axes):
            hidden[2 * n] = ([(a.low, "c", 1.0), (a.low, a.back, -1.0)], 0.0)
            hidden[2 * n + 1] = ([(a.high, "c", 1.0), (a.high, a.forward, -1.0)], 0.0)
            out[a.start], out[a.end] = ([(2 * n, "c", 1.0)], 0.0), ([(2 * n + 1, "c", 1.0)], 0.0)
        _set_block(blocks[0], hidden, out)
        hidden, out = {}, {}
        for n, a in enumerate(axes):
            hidden[2 * n] = ([(a.start, a.back, 1.0)], 0.0)  # the cell after a step's first one
            hidden[2 * n + 1] = ([(a.end, a.forward, 1.0)], 0.0)  # the cell before its last one
            out[a.phase1], out[a.phase2] = ([(2 * n, "c", 1.0)], 0.0), ([(2 * n + 1, "c", 1.0)], 0.0)
        _set_block(blocks[1], hidden, out)
        hidden, out = {}, {}
        squares: list[tuple[int, str, float]] = []
        for n, a in enumerate(axes):
            o = 8 * n  # hidden o: b (0-based coarse cell), o+1..3: b * [phase p], o+4: b^2, o+5..7: [phase p]
            hidden[o] = ([(a.low, "c", 1.0)], -1.0)
            hidden[o + 4] = ([(a.square, "c", 1.0), (a.low, "c", -2.0)], 1.0)
            for p, phase in enumerate((a.phase1, a.phase2, a.end), start=1):
                hidden[o + p] = ([(a.low, "c", 1.0), (phase, "c", float(a.cells))], -1.0 - a.cells)
                hidden[o + 4 + p] = ([(phase, "c", 1.0)], 0.0)
            # coordinate = 4 b + p + 1; its square = 16 b^2 + 8 b p + 8 b + (p + 1)^2
            coordinate = [(o, "c", 4.0)] + [(o + 4 + p, "c", float(p)) for p in (1, 2, 3)]
            out[(x_coord, y_coord)[n]] = (coordinate, 1.0)
            squares += [(o + 4, "c", 16.0), (o, "c", 8.0)]
            squares += [(o + p, "c", 8.0 * p) for p in (1, 2, 3)]
            squares += [(o + 4 + p, "c", float((p + 1) ** 2 - 1)) for p in (1, 2, 3)]
        out[square] = (squares, 2.0)
        _set_block(blocks[2], hidden, out)
        for module in stage[1:]:  # from here on branch 1 passes through unchanged
            for block in module.branches[1][3 if module is second else 0 :]:
                _set_block(block, {}, {})
            if len(module.fuse_layers) > 1:
                for j in (0, 2, 3):
                    _zero_rows(module.fuse_layers[1][j])
        # 3. output channels 0-2 := branch 1's coordinates, upsampled x2
        last.branches[0][-1].norm2.bias[:3] = -1e4
        for j in (2, 3):
            _zero_rows(last.fuse_layers[0][j], slice(0, 3))
        up = last.fuse_layers[0][1]
        up[0].weight[:3] = 0.0
        for channel, source in enumerate((x_coord, y_coord, square)):
            up[0].weight[channel, source] = 1.0
        _identity_bn(up[1], slice(0, 3))


# -- the mean pose ---------------------------------------------------------------------------------------


def mean_keypoints(train_cfg: Any, codec: Any) -> np.ndarray:
    """(K, 2) mean position of each keypoint in heatmap pixels, over the labelled keypoints of every GT
    person crop of `train_cfg`'s test set (the crop center for a keypoint never labelled). Needs only
    the annotations: the crop geometry ignores the pixels."""
    from zoo.evaluate import build_dataset

    dataset = build_dataset(train_cfg)
    geometry = [
        t for t in dataset.pipeline.transforms if type(t).__name__ in ("GetBBoxCenterScale", "TopdownAffine")
    ]
    total: np.ndarray | None = None
    count: np.ndarray | None = None
    for i in range(len(dataset)):
        results = dict(dataset.get_data_info(i))
        results["img"] = np.zeros((1, 1, 3), np.uint8)  # the affine warp must not read the image
        for transform in geometry:
            results = transform(results)
        visible = np.asarray(results["keypoints_visible"][0]) > 0
        points = np.asarray(results["transformed_keypoints"][0], np.float64)
        if total is None or count is None:
            total, count = np.zeros_like(points), np.zeros(len(points))
        total[visible] += points[visible]
        count[visible] += 1
    if total is None or count is None or not count.any():
        raise ValueError("the training set has no person with keypoints")
    width, height = train_cfg.codec.input_size
    center = np.array([(width - 1) / 2, (height - 1) / 2])
    mean = np.where(count[:, None] > 0, total / np.maximum(count, 1)[:, None], center)
    return mean / np.asarray(codec.scale_factor, np.float64)


def _separable_final_layer(peaks: np.ndarray, size: tuple[int, int], channels: int) -> tuple[Any, Any]:
    """Final 1x1 conv over column/row indicator channels: heatmap k = 1 - a * |pixel - peak_k|^2."""
    import torch

    width, height = size
    weight = torch.zeros(len(peaks), channels, dtype=torch.float64)
    x, y = torch.arange(width, dtype=torch.float64), torch.arange(height, dtype=torch.float64)
    for k, (px, py) in enumerate(peaks):
        weight[k, :width] = 1.0 - _CURVATURE * (x - px) ** 2  # every pixel has exactly one column channel
        weight[k, width : width + height] = -_CURVATURE * (y - py) ** 2
    return weight.float()[:, :, None, None], torch.zeros(len(peaks))


def _quadratic_final_layer(peaks: np.ndarray, channels: int) -> tuple[Any, Any]:
    """Final 1x1 conv over HRNet's X, Y, X^2 + Y^2 (1/8 grid, 2 heatmap pixels per cell, 1-based):
    the same paraboloid as `_separable_final_layer`, sampled on 2x2 pixel cells."""
    import torch

    cells = (np.asarray(peaks, np.float64) + 1.5) / 2  # pixel u lies in cell u // 2 + 1, centered at 2c - 1.5
    a = _CURVATURE * 4.0
    weight = torch.zeros(len(peaks), channels, dtype=torch.float64)
    weight[:, 0] = torch.from_numpy(2 * a * cells[:, 0])
    weight[:, 1] = torch.from_numpy(2 * a * cells[:, 1])
    weight[:, 2] = -a
    bias = torch.from_numpy(1.0 - a * (cells**2).sum(axis=1))
    return weight.float()[:, :, None, None], bias.float()


def mean_pose_state_dict(cfg: Any, train_cfg: Any, seed: int) -> OrderedDict:
    """A state_dict for `cfg`'s model that draws the mean pose of `train_cfg`'s GT persons (module doc).

    `train_cfg` is the same config pointed at a training set (GT boxes); `seed` fixes every random
    choice. Built on one thread: a float sum split across threads rounds differently, and the same
    weights (hash) should come out whatever the number of cores.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _build(cfg, train_cfg, seed)
    finally:
        torch.set_num_threads(threads)


def _build(cfg: Any, train_cfg: Any, seed: int) -> OrderedDict:
    import torch

    from zoo.evaluate import build_model
    from zoo.randweights import random_state_dict

    state = random_state_dict(cfg, seed=seed)
    model = build_model(cfg, "cpu", {"state_dict": state})
    _position_only_backbone(model, torch.Generator().manual_seed(seed))
    input_hw = (cfg.codec.input_size[1], cfg.codec.input_size[0])
    final = model.head.final_layer
    peaks = mean_keypoints(train_cfg, model.head.decoder)
    if isinstance(model.head.deconv_layers, torch.nn.Identity):
        _hrnet_coordinates(model, input_hw)
        weight, bias = _quadratic_final_layer(peaks, final.in_channels)
    else:
        size = _indicator_deconvs(model, input_hw)
        weight, bias = _separable_final_layer(peaks, size, final.in_channels)
    with torch.no_grad():
        final.weight.copy_(weight)
        final.bias.copy_(bias)
    return OrderedDict((k, v.detach().clone()) for k, v in model.state_dict().items())
