"""Demo checkpoints: real mmpose architectures whose weights draw the average pose in every box.

Why not plain random weights: a random model scores exactly 0 AP and 0 AR on every part (its
keypoints land nowhere near an OKS of 0.5), so a gate over them could never show a regression.
Training is out of the question on a CPU in a demo, so the weights are built instead:

- the backbone keeps its seeded random convolutions, but its first convolution is zeroed and every
  BatchNorm shift is drawn at random: the features no longer depend on the image, and the shifts,
  carried through zero padding, make them depend on the position in the crop;
- heads with deconvolutions get bilinear-upsampling kernels, so that coarse positional features
  reach the heatmap resolution smoothly instead of being scrambled;
- the final 1x1 convolution is fitted (softmax cross-entropy, L-BFGS, a second on a CPU) so that
  each keypoint's heatmap peaks where that keypoint sits on average in a training set's crops.

The result is the classic "mean pose" baseline expressed in each architecture's own layers: non-zero,
deterministic AP/AR on the synthetic set, computed by the real mmpose forward pass, decoder (MSRA,
DARK or UDP) and flip test, and sensitive to any change of the weights. The numbers say nothing about
the architectures themselves.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np

_TARGET_SIGMA = 1.5  # heatmap pixels: the per-crop target before averaging over the training crops


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


def _bilinear_deconvs(head: Any, generator: Any) -> None:
    """ConvTranspose2d(k=4, s=2, p=1) layers become per-channel bilinear 2x upsampling; a layer that
    changes the channel count mixes channels with a random projection first."""
    import torch

    kernel_1d = torch.tensor([0.25, 0.75, 0.75, 0.25])
    kernel = torch.outer(kernel_1d, kernel_1d)
    with torch.no_grad():
        for m in head.modules():
            if not isinstance(m, torch.nn.ConvTranspose2d):
                continue
            if tuple(m.kernel_size) != (4, 4) or tuple(m.stride) != (2, 2):
                raise ValueError(f"demo weights expect 4x4 stride-2 deconvolutions, got {m}")
            c_in, c_out = m.weight.shape[:2]
            if c_in == c_out:
                mix = torch.eye(c_in)
            else:
                mix = torch.randn(c_in, c_out, generator=generator) / c_in**0.5
            m.weight.copy_(mix[:, :, None, None] * kernel)


def _head_features(model: Any, input_hw: tuple[int, int]) -> Any:
    """(C, H, W) features entering the head's final layer, for an all-zero crop."""
    import torch

    head = model.head
    with torch.no_grad():
        x = model.extract_feat(torch.zeros(1, 3, *input_hw))[-1]
        x = head.conv_layers(head.deconv_layers(x))
    return x[0]


def mean_heatmaps(cfg: Any, codec: Any) -> np.ndarray:
    """(K, H, W) average of the codec's target heatmaps over every GT person crop of `cfg`'s test set,
    mirrored under the flip pairs (the flip test averages a heatmap with its mirror), each a
    distribution (sums to 1). Needs only the annotations: the crop geometry ignores the pixels."""
    from zoo.evaluate import build_dataset

    dataset = build_dataset(cfg)
    geometry = [
        t for t in dataset.pipeline.transforms if type(t).__name__ in ("GetBBoxCenterScale", "TopdownAffine")
    ]
    total: np.ndarray | None = None
    for i in range(len(dataset)):
        results = dict(dataset.get_data_info(i))
        results["img"] = np.zeros((1, 1, 3), np.uint8)  # the affine warp must not read the image
        for transform in geometry:
            results = transform(results)
        encoded = codec.encode(results["transformed_keypoints"], results["keypoints_visible"])
        heatmaps = np.asarray(encoded["heatmaps"], np.float64)
        total = heatmaps if total is None else total + heatmaps
    if total is None:
        raise ValueError("the training set has no person with keypoints")
    flip = dataset.metainfo["flip_indices"]
    total = (total + total[flip, :, ::-1]) / 2
    sums = total.sum(axis=(1, 2), keepdims=True)
    uniform = np.full_like(total, 1.0 / total[0].size)
    return np.where(sums > 0, total / np.where(sums > 0, sums, 1.0), uniform)


def _fit_final_layer(features: Any, targets: np.ndarray, l2: float = 1e-4) -> tuple[Any, Any]:
    """Weights (K, C, 1, 1) and bias (K,) whose heatmaps' softmax matches `targets`; peaks scaled to 1."""
    import torch

    c, h, w = features.shape
    x = features.reshape(c, h * w).T.float()
    mean, std = x.mean(0), x.std(0) + 1e-6
    x = torch.cat([(x - mean) / std, torch.ones(h * w, 1)], 1)
    t = torch.from_numpy(targets.reshape(len(targets), h * w).T).float()  # (S, K)
    coef = torch.zeros(c + 1, len(targets), requires_grad=True)
    opt = torch.optim.LBFGS([coef], max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> Any:
        opt.zero_grad()
        logp = torch.log_softmax(x @ coef, dim=0)
        loss = -(t * logp).sum(0).mean() + l2 * (coef[:-1] ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        logits = x @ coef  # (S, K)
        peak, floor = logits.max(0).values, logits.median(0).values
        scale = 1.0 / (peak - floor).clamp_min(1e-6)  # heatmap = 1 at the peak, 0 at the median pixel
        coef = coef * scale
        coef[-1] += 1.0 - peak * scale
        weight = (coef[:-1] / std[:, None]).T
        bias = coef[-1] - (coef[:-1] * (mean / std)[:, None]).sum(0)
    return weight.reshape(len(targets), c, 1, 1).contiguous(), bias.contiguous()


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
    generator = torch.Generator().manual_seed(seed)
    _position_only_backbone(model, generator)
    _bilinear_deconvs(model.head, generator)
    h, w = cfg.codec.input_size[1], cfg.codec.input_size[0]
    features = _head_features(model, (h, w))
    weight, bias = _fit_final_layer(features, mean_heatmaps(train_cfg, model.head.decoder))
    final = model.head.final_layer
    with torch.no_grad():
        final.weight.copy_(weight)
        final.bias.copy_(bias)
    return OrderedDict((k, v.detach().clone()) for k, v in model.state_dict().items())
