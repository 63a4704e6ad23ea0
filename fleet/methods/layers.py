"""Building blocks the image networks of several methods share (torch only, no method named).

Levine's g(I, v) and QT-Opt's Q(s, a) have the same skeleton: a strided conv trunk over the
image computed once per decision, pooled to a fixed merge size so a larger camera does not make
the per-candidate head dearer, then a conv head and a small fully connected layer run once per
candidate. The layers keep their names and order (`trunk.<i>.0`, `head.<i>.0`, `fc.<i>`), which
is what the weights in a policy bundle are keyed by.
"""
from __future__ import annotations

import math

from torch import nn


def conv_relu(cin: int, cout: int, kernel: int, stride: int) -> nn.Module:
    """A same-padded convolution followed by ReLU."""
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2),
                         nn.ReLU(inplace=True))


def image_trunk(cin: int, channels: tuple[int, ...], first_kernel: int, height: int, width: int,
                merge_size: int) -> tuple[nn.Sequential, nn.Module]:
    """(trunk, pool): stride-2 convolutions (the first with `first_kernel`, the rest 3 x 3),
    then an average pool to merge_size x merge_size, or nothing where the trunk lands there."""
    layers: list[nn.Module] = []
    for i, cout in enumerate(channels):
        layers.append(conv_relu(cin, cout, first_kernel if i == 0 else 3, 2))
        cin = cout
    h, w = height, width
    for _ in channels:
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    pool = nn.Identity() if (h, w) == (merge_size, merge_size) else nn.AdaptiveAvgPool2d(merge_size)
    return nn.Sequential(*layers), pool


def scoring_head(merge_channels: int, channels: tuple[int, ...], merge_size: int,
                 fc_width: int) -> tuple[nn.Sequential, nn.Sequential]:
    """(head, fc): 3 x 3 convolutions over the merged map (the first with stride 2), then
    flatten -> fc_width -> one logit."""
    head: list[nn.Module] = []
    side = merge_size
    for i, cout in enumerate(channels):
        stride = 2 if i == 0 else 1
        head.append(conv_relu(merge_channels if i == 0 else channels[i - 1], cout, 3, stride))
        side = math.ceil(side / stride)
    fc = nn.Sequential(nn.Flatten(), nn.Linear(channels[-1] * side * side, fc_width), nn.ReLU(),
                       nn.Linear(fc_width, 1))
    return nn.Sequential(*head), fc


def patch_convs(cin: int, channels: tuple[int, ...], side: int,
                first_stride: int = 1) -> tuple[list[nn.Module], int, int]:
    """The patch networks' trunk (grasp-point, QT-Opt's gripper view): per entry of `channels`
    a same-padded 3 x 3 convolution, ReLU and 2 x 2 max pooling, as a flat list (the bundles'
    weights are keyed `trunk.<i>`). `first_stride` 2 makes the first convolution strided: a
    patch of twice the side for about the cost of the smaller one, the first layer learning
    how to downsample. Returns (layers, output channels, output side)."""
    layers: list[nn.Module] = []
    for i, cout in enumerate(channels):
        stride = first_stride if i == 0 else 1
        layers += [nn.Conv2d(cin, cout, 3, stride, padding=1), nn.ReLU(inplace=True),
                   nn.MaxPool2d(2)]
        cin, side = cout, -(-side // stride) // 2
    return layers, cin, side
