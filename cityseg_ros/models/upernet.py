# Copyright 2026 The cityseg_ros Authors
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.

"""UPerNet's decode head and the FCN auxiliary head, as mmsegmentation 0.27 computes them.

Our own implementation of open-mmlab/mmsegmentation v0.27 (Apache-2.0)
``mmseg/models/decode_heads/{uper_head,psp_head,fcn_head,decode_head}.py`` and mmcv's
``ConvModule``, without registries or config dicts. Attribute names follow mmseg's state dict
(``psp_modules.i.1.conv``, ``lateral_convs.i.bn``, ``conv_seg``, ...), so UperNet checkpoints
load as they are. Only inference is covered: dropout is the identity in eval mode, losses and
sampling are left out.
"""

from typing import Sequence

import torch
from torch import nn
import torch.nn.functional as F

__all__ = ['ConvModule', 'FCNHead', 'PPM', 'UPerHead']

# mmcv's ConvModule with norm_cfg SyncBN/BN: nn.BatchNorm2d defaults (eps 1e-5); SyncBN becomes
# BatchNorm2d at inference.
BN_EPS = 1e-5


def _resize(x: torch.Tensor, size: Sequence[int], align_corners: bool) -> torch.Tensor:
    # mmseg.ops.resize: bilinear, align_corners from the head config (False for UperNet).
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode='bilinear', align_corners=align_corners)


class ConvModule(nn.Module):
    """Conv (no bias: a norm follows), BatchNorm, ReLU: mmcv's ``ConvModule`` order."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, padding: int = 0):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_ch, eps=BN_EPS)
        self.activate = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(self.bn(self.conv(x)))


class PPM(nn.ModuleList):
    """Pyramid pooling (PSPNet): adaptive average pool, 1x1 ConvModule, upsample back."""

    def __init__(self, pool_scales: Sequence[int], in_ch: int, channels: int,
                 align_corners: bool):
        super().__init__(nn.Sequential(nn.AdaptiveAvgPool2d(scale),
                                       ConvModule(in_ch, channels, 1))
                         for scale in pool_scales)
        self.align_corners = align_corners

    def forward(self, x: torch.Tensor) -> list:
        return [_resize(branch(x), x.shape[-2:], self.align_corners) for branch in self]


class UPerHead(nn.Module):
    """UPerNet head: PPM on the last level, FPN top-down path, fused 3x3 conv, 1x1 classifier.

    Input: the backbone's levels, finest first (N,C_i,H_i,W_i); output: logits at the finest
    level's resolution, before any resize to the image.
    """

    def __init__(self, in_channels: Sequence[int], channels: int, num_classes: int,
                 pool_scales: Sequence[int] = (1, 2, 3, 6), dropout_ratio: float = 0.1,
                 align_corners: bool = False):
        """Build the head with PyTorch's default initialisation.

        Args:
            in_channels: channels of each backbone level, finest first.
            channels: width of the FPN and of the fused features (mmseg ``channels``).
            num_classes: output channels of ``conv_seg``.
            pool_scales: output sides of the pyramid pooling branches.
            dropout_ratio: Dropout2d before ``conv_seg`` (training only).
            align_corners: of every bilinear resize inside the head.
        """
        super().__init__()
        # mmseg's BaseDecodeHead registers these first, so the state dict's order is upstream's.
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        self.dropout = nn.Dropout2d(dropout_ratio)
        self.align_corners = align_corners
        self.psp_modules = PPM(pool_scales, in_channels[-1], channels, align_corners)
        self.bottleneck = ConvModule(in_channels[-1] + len(pool_scales) * channels, channels, 3,
                                     padding=1)
        self.lateral_convs = nn.ModuleList(ConvModule(c, channels, 1) for c in in_channels[:-1])
        self.fpn_convs = nn.ModuleList(ConvModule(channels, channels, 3, padding=1)
                                       for _ in in_channels[:-1])
        self.fpn_bottleneck = ConvModule(len(in_channels) * channels, channels, 3, padding=1)

    def forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        top = inputs[-1]
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, inputs)]
        laterals.append(self.bottleneck(torch.cat([top, *self.psp_modules(top)], dim=1)))
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + _resize(laterals[i], laterals[i - 1].shape[-2:],
                                                        self.align_corners)
        outs = [conv(x) for conv, x in zip(self.fpn_convs, laterals)]
        outs.append(laterals[-1])
        size = outs[0].shape[-2:]
        fused = torch.cat([_resize(x, size, self.align_corners) for x in outs], dim=1)
        return self.conv_seg(self.dropout(self.fpn_bottleneck(fused)))


class FCNHead(nn.Module):
    """FCN head (mmseg ``FCNHead``, ``concat_input=False``): 3x3 ConvModules, 1x1 classifier."""

    def __init__(self, in_ch: int, channels: int, num_classes: int, num_convs: int = 1,
                 dropout_ratio: float = 0.1):
        """Build the head with PyTorch's default initialisation.

        Args:
            in_ch: channels of the backbone level it reads.
            channels: width of its convolutions.
            num_classes: output channels of ``conv_seg``.
            num_convs: 3x3 ConvModules before the classifier.
            dropout_ratio: Dropout2d before ``conv_seg`` (training only).
        """
        super().__init__()
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        self.dropout = nn.Dropout2d(dropout_ratio)
        self.convs = nn.Sequential(*(ConvModule(in_ch if i == 0 else channels, channels, 3,
                                                padding=1) for i in range(num_convs)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_seg(self.dropout(self.convs(x)))
