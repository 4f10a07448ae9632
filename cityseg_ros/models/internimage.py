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

"""UperNet + InternImage-L / -XL (Cityscapes), laid out so the official mmseg checkpoints load.

Our own implementation of OpenGVLab/InternImage (MIT) ``segmentation/mmseg_custom/models/
backbones/intern_image.py`` with the configs ``configs/cityscapes/upernet_internimage_l_512x1024_
160k_cityscapes.py`` and ``..._xl_512x1024_160k_mapillary2cityscapes.py``, and of mmseg 0.27's
``EncoderDecoder`` around it. No mmcv, no compiled operator: DCNv3 runs on
:mod:`cityseg_ros.models.dcnv3`. Attribute names give the released state dict's keys
(``backbone.*``, ``decode_head.*``, ``auxiliary_head.*``).

The backbone works channel-last (N,H,W,C) like upstream. Only the configurations these two
checkpoints use are built: post-norm blocks with layer scale, LayerNorm, 3x3 depth-wise conv
in DCNv3, no center-feature-scale and no per-level norm (those belong to InternImage-H/G).
Stochastic depth (``drop_path_rate`` 0.4) and the heads' dropout act only in training and are
left out or inert. Both heads keep mmseg's 150 ADE20K-sized classes, as the released files do:
channels 0..18 are the Cityscapes trainIds.

The released files hold fp16 tensors: loading casts them to the model's dtype, so the model runs
in float32 by default; ``model.half()`` works as well (DCNv3 still computes its sampling
positions in float32). ``forward_all`` returns the internal outputs the golden fixtures record.
"""

from collections.abc import Mapping
from typing import Sequence

from cityseg_ros.models import dcnv3
from cityseg_ros.models.upernet import FCNHead, UPerHead
import torch
from torch import nn

__all__ = ['InternImage', 'UperNetInternImage', 'checkpoint_filter_fn', 'upernet_internimage_l',
           'upernet_internimage_xl']

# intern_image.py build_norm_layer: every LayerNorm of the backbone uses eps 1e-6.
LAYER_NORM_EPS = 1e-6
# Both configs: channels, depths and DCNv3 groups per level (the group width is always 16).
L_CHANNELS, L_DEPTHS, L_GROUPS = 160, (5, 5, 22, 5), (10, 20, 40, 80)
XL_CHANNELS, XL_DEPTHS, XL_GROUPS = 192, (5, 5, 24, 5), (12, 24, 48, 96)
# Both configs: mlp_ratio 4, offset_scale 2.0, layer_scale 1.0 (gamma init), post_norm True.
MLP_RATIO = 4.0
OFFSET_SCALE = 2.0
# configs/_base_/models/upernet_r50.py with the configs' num_classes=150.
NUM_CLASSES = 150
DECODE_CHANNELS = 512
POOL_SCALES = (1, 2, 3, 6)
AUX_CHANNELS = 256
AUX_LEVEL = 2
DROPOUT_RATIO = 0.1


def _layer_norm(channels: int) -> nn.LayerNorm:
    return nn.LayerNorm(channels, eps=LAYER_NORM_EPS)


class ToChannelsFirst(nn.Module):
    """Permute N,H,W,C to N,C,H,W (upstream ``to_channels_first``; keeps Sequential indices)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 3, 1, 2)


class StemLayer(nn.Module):
    """Two 3x3 stride-2 convs: 3 -> C/2 (LN, GELU) -> C (LN); NCHW in, NHWC out."""

    def __init__(self, out_ch: int, in_ch: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch // 2, 3, stride=2, padding=1)
        # Sequential(permute, LN, permute) as upstream, hence the keys norm1.1 / norm2.1.
        self.norm1 = nn.Sequential(dcnv3.ToChannelsLast(), _layer_norm(out_ch // 2),
                                   ToChannelsFirst())
        self.act = nn.GELU()
        self.conv2 = nn.Conv2d(out_ch // 2, out_ch, 3, stride=2, padding=1)
        self.norm2 = nn.Sequential(dcnv3.ToChannelsLast(), _layer_norm(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm2(self.conv2(self.act(self.norm1(self.conv1(x)))))


class DownsampleLayer(nn.Module):
    """3x3 stride-2 conv (no bias) C -> 2C, LayerNorm; NHWC in and out."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, 2 * channels, 3, stride=2, padding=1, bias=False)
        self.norm = nn.Sequential(dcnv3.ToChannelsLast(), _layer_norm(2 * channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x.permute(0, 3, 1, 2)))


class MLPLayer(nn.Module):
    """Linear, GELU, Linear on the channel axis."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(channels, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class InternImageLayer(nn.Module):
    """One block, post-norm with layer scale (upstream ``InternImageLayer``).

    ``x = x + gamma1 * norm1(dcn(x)); x = x + gamma2 * norm2(mlp(x))``.
    """

    def __init__(self, channels: int, groups: int, mlp_ratio: float, offset_scale: float,
                 layer_scale: float = 1.0):
        super().__init__()
        # Parameters registered first, as upstream: gamma1/gamma2 lead the block's keys.
        self.gamma1 = nn.Parameter(torch.full((channels,), layer_scale))
        self.gamma2 = nn.Parameter(torch.full((channels,), layer_scale))
        self.norm1 = nn.Sequential(_layer_norm(channels))
        self.dcn = dcnv3.DCNv3(channels, kernel_size=3, stride=1, pad=1, dilation=1,
                               group=groups, offset_scale=offset_scale, dw_kernel_size=3)
        self.norm2 = nn.Sequential(_layer_norm(channels))
        self.mlp = MLPLayer(channels, int(channels * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.gamma1 * self.norm1(self.dcn(x))
        return x + self.gamma2 * self.norm2(self.mlp(x))


class InternImageLevel(nn.Module):
    """The blocks of one resolution, then the downsampling (upstream ``InternImageBlock``)."""

    def __init__(self, channels: int, depth: int, groups: int, mlp_ratio: float,
                 offset_scale: float, downsample: bool):
        super().__init__()
        self.blocks = nn.ModuleList(InternImageLayer(channels, groups, mlp_ratio, offset_scale)
                                    for _ in range(depth))
        self.downsample = DownsampleLayer(channels) if downsample else None

    def forward(self, x: torch.Tensor) -> tuple:
        """Return (input of the next level, this level's output before downsampling)."""
        for block in self.blocks:
            x = block(x)
        return (self.downsample(x) if self.downsample is not None else x), x


class InternImage(nn.Module):
    """InternImage backbone: N,3,H,W -> four N,C*2^i,H/2^(i+2),W/2^(i+2) maps (NCHW)."""

    def __init__(self, channels: int, depths: Sequence[int], groups: Sequence[int],
                 mlp_ratio: float, offset_scale: float):
        """Build the backbone with PyTorch's default initialisation.

        Args:
            channels: width C of the first level; level i has C * 2**i.
            depths: blocks per level.
            groups: DCNv3 groups per level.
            mlp_ratio: hidden width of the MLPs over the level's width.
            offset_scale: DCNv3's offset (and kernel grid) scale.
        """
        super().__init__()
        self.patch_embed = StemLayer(channels)
        self.levels = nn.ModuleList(
            InternImageLevel(channels * 2 ** i, depth, group, mlp_ratio, offset_scale,
                             downsample=i < len(depths) - 1)
            for i, (depth, group) in enumerate(zip(depths, groups)))
        self.channels = tuple(channels * 2 ** i for i in range(len(depths)))

    def forward(self, x: torch.Tensor) -> list:
        x = self.patch_embed(x)
        outs = []
        for level in self.levels:
            x, out = level(x)
            outs.append(out.permute(0, 3, 1, 2))
        return outs

    def set_dcn_core(self, core: str) -> None:
        """Select the DCNv3 sampling core of every block (a key of ``dcnv3.CORES`` or 'auto')."""
        if core != 'auto' and core not in dcnv3.CORES:
            raise ValueError(f'unknown DCNv3 core {core!r}; choose auto or one of '
                             f'{", ".join(sorted(dcnv3.CORES))}')
        for module in self.modules():
            if isinstance(module, dcnv3.DCNv3):
                module.core = core


class UperNetInternImage(nn.Module):
    """mmseg ``EncoderDecoder``: InternImage backbone, UPerHead, FCN auxiliary head.

    ``forward`` returns the decode head's logits at 1/4 of the input size, before the resize
    to the image (bilinear, align_corners=False) and before softmax. The auxiliary head is
    built so that the checkpoints load strictly, and runs only in :meth:`forward_all`.
    """

    output_stride = 4

    def __init__(self, channels: int, depths: Sequence[int], groups: Sequence[int],
                 mlp_ratio: float = MLP_RATIO, offset_scale: float = OFFSET_SCALE,
                 num_classes: int = NUM_CLASSES, decode_channels: int = DECODE_CHANNELS,
                 pool_scales: Sequence[int] = POOL_SCALES, aux_channels: int = AUX_CHANNELS,
                 aux_level: int = AUX_LEVEL, dropout_ratio: float = DROPOUT_RATIO):
        """Build the network with PyTorch's default initialisation.

        Args:
            channels, depths, groups, mlp_ratio, offset_scale: the backbone's, see
                :class:`InternImage`.
            num_classes: output channels of both heads.
            decode_channels: UPerHead width.
            pool_scales: UPerHead pyramid pooling sides.
            aux_channels: FCN auxiliary head width.
            aux_level: backbone level the auxiliary head reads.
            dropout_ratio: both heads' Dropout2d (training only).
        """
        super().__init__()
        self.backbone = InternImage(channels, depths, groups, mlp_ratio, offset_scale)
        widths = self.backbone.channels
        self.decode_head = UPerHead(widths, decode_channels, num_classes, pool_scales,
                                    dropout_ratio, align_corners=False)
        self.auxiliary_head = FCNHead(widths[aux_level], aux_channels, num_classes,
                                      num_convs=1, dropout_ratio=dropout_ratio)
        self.aux_level = aux_level
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode_head(self.backbone(x))

    def forward_all(self, x: torch.Tensor) -> dict:
        """Return every output the golden fixtures record, NCHW float tensors.

        Keys: ``stage0``..``stage3`` (backbone levels, strides 4..32, before downsampling),
        ``decode_logits`` (stride 4) and ``aux_head_logits`` (auxiliary head on stage 2).
        """
        stages = self.backbone(x)
        outs = {f'stage{i}': s for i, s in enumerate(stages)}
        outs['decode_logits'] = self.decode_head(stages)
        outs['aux_head_logits'] = self.auxiliary_head(stages[self.aux_level])
        return outs


def checkpoint_filter_fn(state_dict: Mapping) -> dict:
    """Unwrap an mmcv checkpoint (``{'state_dict': ..., 'meta': ...}``) into its tensors.

    The keys need no renaming: DCNv3's CUDA and PyTorch versions name their parameters alike.
    A bare state dict is accepted as is; fp16 tensors are left for the loader to cast.
    """
    if 'state_dict' in state_dict and isinstance(state_dict['state_dict'], Mapping):
        state_dict = state_dict['state_dict']
    return dict(state_dict)


def _create(channels: int, depths: Sequence[int], groups: Sequence[int]) -> UperNetInternImage:
    return UperNetInternImage(channels, depths, groups, mlp_ratio=MLP_RATIO,
                              offset_scale=OFFSET_SCALE, num_classes=NUM_CLASSES,
                              decode_channels=DECODE_CHANNELS, pool_scales=POOL_SCALES,
                              aux_channels=AUX_CHANNELS, aux_level=AUX_LEVEL,
                              dropout_ratio=DROPOUT_RATIO)


def upernet_internimage_l() -> UperNetInternImage:
    """Build UperNet + InternImage-L for Cityscapes (84.41 val, 6 scales + flip), 255.6M params."""
    return _create(L_CHANNELS, L_DEPTHS, L_GROUPS)


def upernet_internimage_xl() -> UperNetInternImage:
    """Build UperNet + InternImage-XL, Mapillary -> Cityscapes (86.42 val, 6 scales + flip)."""
    return _create(XL_CHANNELS, XL_DEPTHS, XL_GROUPS)
