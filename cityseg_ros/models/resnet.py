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

"""ResNet-50 / ResNet-101 in plain PyTorch, with torchvision's state-dict key names.

He et al., "Deep Residual Learning for Image Recognition" (CVPR 2016), in the "v1.5" form that
torchvision and timm ship: the stride of a down-sampling bottleneck sits on its 3x3 convolution.
Attribute names (``conv1``, ``bn1``, ``layer1.0.conv1``, ``layer1.0.downsample.0``, ``fc``)
equal torchvision's ``torchvision.models.resnet``, so its ImageNet files load without renaming
and without importing torchvision. ``replace_stride_with_dilation`` turns the strides of
layer2-4 into dilations for dense prediction, as torchvision's segmentation models do.
"""

from typing import Optional, Sequence

import torch
from torch import nn

__all__ = ['Bottleneck', 'ResNet', 'resnet50', 'resnet101', 'DEPTHS', 'STAGE_CHANNELS']

#: Bottleneck blocks per stage (He et al., Table 1).
DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
#: Output channels of layer1..layer4 (bottleneck width x expansion 4).
STAGE_CHANNELS = (256, 512, 1024, 2048)
_WIDTHS = (64, 128, 256, 512)
_STEM_CHANNELS = 64


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided or dilated), 1x1 expand, plus the shortcut, then ReLU."""

    expansion = 4

    def __init__(self, in_ch: int, width: int, stride: int = 1,
                 downsample: Optional[nn.Module] = None, dilation: int = 1):
        """Build the block.

        Args:
            in_ch: input channels.
            width: channels of the 3x3 convolution; the output has ``4 * width``.
            stride: stride of the 3x3 convolution.
            downsample: projection of the shortcut when shape or width change, else None.
            dilation: dilation (and padding) of the 3x3 convolution.
        """
        super().__init__()
        out_ch = width * self.expansion
        self.conv1 = nn.Conv2d(in_ch, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, padding=dilation, dilation=dilation,
                               bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """Bottleneck ResNet: stem (7x7 s2 conv, BN, ReLU, 3x3 s2 max-pool) and four stages.

    ``forward`` returns the ImageNet logits when the network has a classifier (``fc``), else
    the four stage outputs (strides 4, 8, 16, 32, or less with dilation); :meth:`features`
    always returns the stage outputs.
    """

    def __init__(self, depths: Sequence[int],
                 replace_stride_with_dilation: Sequence[bool] = (False, False, False),
                 num_classes: Optional[int] = 1000):
        """Build the network with torchvision's initialisation.

        Args:
            depths: bottleneck blocks in layer1..layer4, e.g. ``DEPTHS[50]``.
            replace_stride_with_dilation: for layer2..layer4, dilate instead of striding.
            num_classes: classifier outputs; None builds no pooling/``fc`` (a backbone).
        """
        super().__init__()
        if len(depths) != 4 or len(replace_stride_with_dilation) != 3:
            raise ValueError('ResNet needs 4 stage depths and 3 dilation flags')
        self.conv1 = nn.Conv2d(3, _STEM_CHANNELS, 7, 2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(_STEM_CHANNELS)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self._in_ch = _STEM_CHANNELS
        self._dilation = 1
        dilate = (False,) + tuple(replace_stride_with_dilation)
        self.layer1 = self._make_layer(_WIDTHS[0], depths[0], 1, dilate[0])
        self.layer2 = self._make_layer(_WIDTHS[1], depths[1], 2, dilate[1])
        self.layer3 = self._make_layer(_WIDTHS[2], depths[2], 2, dilate[2])
        self.layer4 = self._make_layer(_WIDTHS[3], depths[3], 2, dilate[3])
        self.channels = STAGE_CHANNELS
        #: Input size / size of layer1..layer4's outputs.
        self.strides = tuple(4 * 2 ** sum(not d for d in dilate[1:i + 1]) for i in range(4))
        if num_classes is not None:
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(STAGE_CHANNELS[-1], num_classes)
        else:
            self.avgpool = self.fc = None
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, width: int, blocks: int, stride: int, dilate: bool) -> nn.Sequential:
        # torchvision's rule: a dilated stage keeps the previous dilation in its first block
        # (whose stride becomes 1) and uses the multiplied one in the others.
        previous = self._dilation
        if dilate:
            self._dilation *= stride
            stride = 1
        out_ch = width * Bottleneck.expansion
        downsample = None
        if stride != 1 or self._in_ch != out_ch:
            downsample = nn.Sequential(nn.Conv2d(self._in_ch, out_ch, 1, stride, bias=False),
                                       nn.BatchNorm2d(out_ch))
        layers = [Bottleneck(self._in_ch, width, stride, downsample, previous)]
        self._in_ch = out_ch
        layers += [Bottleneck(out_ch, width, dilation=self._dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """Return the stride-4 stem features (64 channels)."""
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return the outputs of layer1..layer4 for an N x 3 x H x W normalised image."""
        x = self.stem(x)
        feats = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            feats.append(x)
        return feats

    def forward(self, x: torch.Tensor):
        feats = self.features(x)
        if self.fc is None:
            return feats
        return self.fc(torch.flatten(self.avgpool(feats[-1]), 1))


def resnet50(replace_stride_with_dilation: Sequence[bool] = (False, False, False),
             num_classes: Optional[int] = 1000) -> ResNet:
    """Build ResNet-50 (25,557,032 parameters with the 1000-class classifier)."""
    return ResNet(DEPTHS[50], replace_stride_with_dilation, num_classes)


def resnet101(replace_stride_with_dilation: Sequence[bool] = (False, False, False),
              num_classes: Optional[int] = 1000) -> ResNet:
    """Build ResNet-101 (44,549,160 parameters with the 1000-class classifier)."""
    return ResNet(DEPTHS[101], replace_stride_with_dilation, num_classes)
