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

"""ESPNetv2 for Cityscapes, laid out so that EdgeNets' released checkpoints load as they are.

ESPNetv2 (Mehta et al., CVPR 2019) is the package's CPU / real-time default. This is our own
implementation of sacmehta/EdgeNets (MIT) ``model/segmentation/espnetv2.py`` and the
``nn_layers`` it uses. Attribute names follow the official state dict, so the zoo needs no key
adapter. It differs from upstream in four ways; only the last changes the numbers, and only by
float rounding (about 1e-5 on the logits):

* ``forward`` stops before upstream's last bilinear upsampling (``align_corners=True``) to the
  input size: the engine does it, so the logits have half the input's size (``output_stride``).
* Each decoder upsampling targets the skip connection's size instead of doubling, so any input
  size works; upstream raises on a size mismatch unless H and W are 0 or 15 modulo 16.
* The average-pooled image pyramid feeding the down-samplers' input shortcuts is computed once
  per forward instead of once per down-sampler.
* In eval mode, the pyramid pooling's concatenate / shuffle / grouped 3x3 convolution is
  computed as a sum of depth-wise convolutions, which avoids two copies of the decoder's
  largest tensor. Training mode keeps upstream's path, so the merge BatchNorm trains.

``ESPNetv2.fuse_bn`` optionally folds BatchNorm into the convolutions for faster inference;
after it, CPU inference runs the same operations through a flat plan (``_Plan``) that gives the
same logits bit for bit with less overhead, whatever the number of threads.
"""

from dataclasses import dataclass
import math
import threading
from typing import Optional, Sequence

import torch
from torch import nn
import torch.nn.functional as F
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_conv_bn_weights

__all__ = ['ESPNetv2', 'EESPNet', 'EESP', 'DownSampler', 'EfficientPyrPool', 'EfficientPWConv',
           'espnetv2_city']

# EdgeNets model/classification/espnetv2_config.py (sc_ch_dict): output channels of level1 to
# level5 and of the classifier's expansion, per width multiplier s. Segmentation uses level1-4.
CHANNELS = {
    0.5: (16, 32, 64, 128, 256, 1024),
    1.0: (32, 64, 128, 256, 512, 1024),
    1.25: (32, 80, 160, 320, 640, 1024),
    1.5: (32, 96, 192, 384, 768, 1024),
    2.0: (32, 128, 256, 512, 1024, 1280),
}
# Same file, rep_layers: EESP blocks after the down-samplers of level3 and level4.
LEVEL3_BLOCKS = 3
LEVEL4_BLOCKS = 7
# Same file, recept_limit: the widest effective kernel an EESP branch may have, per level.
RECEPTIVE_LIMITS = (13, 11, 9, 7, 5)
# Same file, branches: parallel dilated branches (and groups of the 1x1 convs) per EESP block.
BRANCHES = 4
# Same file, config_inp_reinf: channels of the image the input shortcuts start from.
IMAGE_CHANNELS = 3
# model/segmentation/espnetv2.py, dec_feat_dict['city']: the decoder's base width.
DECODER_WIDTH = 16
# nn_layers/efficient_pyramid_pool.py: pyramid scales (largest first, the order of the weights)
# and the smallest side a pooled map may have.
PYRAMID_SCALES = (2.0, 1.5, 1.0, 0.5, 0.1)
PYRAMID_MIN_SIZE = 5
# Guards the lazily built CPU inference plan (several engine threads may run one model).
_PLAN_LOCK = threading.Lock()


def _pool_half(x: torch.Tensor) -> torch.Tensor:
    # Every down-sampling in the network (stride-2 3x3, padding 1) maps a side n to ceil(n / 2).
    return F.avg_pool2d(x, kernel_size=3, stride=2, padding=1)


def _upsample_to(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    # With align_corners=True the sampling grid depends only on the two sizes, so this equals
    # upstream's scale_factor=2 whenever ref is twice as large, and also works when it is not.
    return F.interpolate(x, size=ref.shape[-2:], mode='bilinear', align_corners=True)


# Blocks of EdgeNets nn_layers/espnet_utils.py (encoder): submodules named conv / bn / act.


class ConvBnAct(nn.Module):
    """Convolution, BatchNorm, PReLU (upstream ``espnet_utils.CBR``)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1,
                 groups: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, stride, padding=kernel_size // 2,
                              groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)
        self.act = nn.PReLU(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))

    def fuse_bn(self) -> None:
        """Fold ``bn`` into ``conv`` (inference only)."""
        self.conv, self.bn = fuse_conv_bn_eval(self.conv, self.bn), nn.Identity()


class ConvBn(nn.Module):
    """Convolution, BatchNorm (upstream ``espnet_utils.CB``)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, groups: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2,
                              groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))

    def fuse_bn(self) -> None:
        """Fold ``bn`` into ``conv`` (inference only)."""
        self.conv, self.bn = fuse_conv_bn_eval(self.conv, self.bn), nn.Identity()


class BnAct(nn.Module):
    """BatchNorm, PReLU (upstream ``espnet_utils.BR``)."""

    def __init__(self, channels: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels)
        self.act = nn.PReLU(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(x))


class DilatedDwConv(nn.Module):
    """Depth-wise dilated 3x3 convolution (upstream ``espnet_utils.CDilated``)."""

    def __init__(self, channels: int, stride: int, dilation: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride, padding=dilation, dilation=dilation,
                              groups=channels, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


# Blocks of EdgeNets nn_layers/cnn_utils.py (decoder): the same layers, wrapped in a Sequential
# named cbr / br, which is how the decoder's keys are spelled in the checkpoints.


def _bn_act(channels: int) -> nn.Sequential:
    return nn.Sequential(nn.BatchNorm2d(channels), nn.PReLU(channels))


class SeqConvBnAct(nn.Module):
    """Convolution, BatchNorm, PReLU as ``cbr.0``, ``cbr.1``, ``cbr.2`` (``cnn_utils.CBR``)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, groups: int = 1):
        super().__init__()
        self.cbr = nn.Sequential(
            nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2, groups=groups,
                      bias=False),
            nn.BatchNorm2d(out_ch),
            nn.PReLU(out_ch),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cbr(x)

    def fuse_bn(self) -> None:
        """Fold ``cbr.1`` into ``cbr.0`` (inference only)."""
        self.cbr[0], self.cbr[1] = fuse_conv_bn_eval(self.cbr[0], self.cbr[1]), nn.Identity()


class SeqBnAct(nn.Module):
    """BatchNorm, PReLU as ``br.0``, ``br.1`` (upstream ``cnn_utils.BR``)."""

    def __init__(self, channels: int):
        super().__init__()
        self.br = _bn_act(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.br(x)


# Encoder (EdgeNets nn_layers/eesp.py, model/classification/espnetv2.py).


class EESP(nn.Module):
    """Extremely efficient spatial pyramid unit: reduce, split, transform, merge.

    A grouped 1x1 convolution reduces the input to ``out_ch / branches`` channels; ``branches``
    depth-wise 3x3 convolutions of growing dilation see it at growing receptive fields; each
    branch adds the previous branch's output (hierarchical feature fusion, against the gridding
    of dilated convolutions); a grouped 1x1 convolution merges the concatenation.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, branches: int = BRANCHES,
                 receptive_limit: int = 7):
        """Build the unit.

        Args:
            in_ch: input channels.
            out_ch: output channels, a multiple of ``branches``.
            stride: 2 inside a :class:`DownSampler`, which then adds its own shortcut and
                activation to the output; 1 for a residual unit.
            branches: parallel dilated branches.
            receptive_limit: widest effective kernel of a branch; wider ones fall back to 3x3.
        """
        super().__init__()
        width = out_ch // branches
        if width * branches != out_ch:
            raise ValueError(f'EESP: out_ch={out_ch} must be a multiple of branches={branches}')
        self.stride = stride
        self.proj_1x1 = ConvBnAct(in_ch, width, 1, groups=branches)
        # Branch i would see a (3 + 2 i)-wide field, i.e. dilation i + 1. Upstream sorts the
        # clipped sizes, so the 3x3 fall-backs come first; the checkpoints follow that order.
        sizes = sorted(k if k <= receptive_limit else 3 for k in range(3, 3 + 2 * branches, 2))
        self.spp_dw = nn.ModuleList(DilatedDwConv(width, stride, (k - 1) // 2) for k in sizes)
        self.conv_1x1_exp = ConvBn(out_ch, out_ch, 1, groups=branches)
        self.br_after_cat = BnAct(out_ch)
        # Upstream creates the activation in down-sampling units too, where it goes unused; the
        # checkpoints hold its weight.
        self.module_act = nn.PReLU(out_ch)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        reduced = self.proj_1x1(x)
        fused = [self.spp_dw[0](reduced)]
        for conv in self.spp_dw[1:]:
            fused.append(conv(reduced) + fused[-1])
        out = self.conv_1x1_exp(self.br_after_cat(torch.cat(fused, 1)))
        if self.stride == 2:
            return out
        if self.residual:
            out = out + x
        return self.module_act(out)


class DownSampler(nn.Module):
    """Halve the resolution: [avg-pool, stride-2 EESP] concatenated, plus an image shortcut."""

    def __init__(self, in_ch: int, out_ch: int, receptive_limit: int,
                 branches: int = BRANCHES):
        """Build the down-sampler.

        Args:
            in_ch: input channels; the pooled input supplies that many output channels.
            out_ch: output channels; the stride-2 EESP supplies ``out_ch - in_ch``.
            receptive_limit: the EESP unit's widest effective kernel.
            branches: the EESP unit's parallel branches.
        """
        super().__init__()
        self.eesp = EESP(in_ch, out_ch - in_ch, stride=2, branches=branches,
                         receptive_limit=receptive_limit)
        self.avg = nn.AvgPool2d(kernel_size=3, stride=2, padding=1)
        # "Input reinforcement": the RGB image, pooled to this level's size, re-enters here.
        self.inp_reinf = nn.Sequential(
            ConvBnAct(IMAGE_CHANNELS, IMAGE_CHANNELS, 3),
            ConvBn(IMAGE_CHANNELS, out_ch, 1),
        )
        self.act = nn.PReLU(out_ch)

    def forward(self, x: torch.Tensor, image: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Down-sample ``x``; ``image`` is the input image average-pooled to the output size."""
        out = torch.cat([self.avg(x), self.eesp(x)], 1)
        if image is not None:
            out = out + self.inp_reinf(image)
        return self.act(out)


class EESPNet(nn.Module):
    """ESPNetv2's encoder: the ImageNet backbone up to level4 (strides 2, 4, 8, 16)."""

    def __init__(self, s: float = 2.0):
        """Build the encoder; ``s`` is the width multiplier, one of :data:`CHANNELS`."""
        super().__init__()
        if s not in CHANNELS:
            raise ValueError(f'ESPNetv2 width s={s} is not defined; choose one of '
                             f'{", ".join(str(k) for k in CHANNELS)}')
        ch = CHANNELS[s]
        lim = RECEPTIVE_LIMITS
        self.level1 = ConvBnAct(IMAGE_CHANNELS, ch[0], 3, stride=2)
        self.level2_0 = DownSampler(ch[0], ch[1], lim[0])
        self.level3_0 = DownSampler(ch[1], ch[2], lim[1])
        self.level3 = nn.ModuleList(EESP(ch[2], ch[2], receptive_limit=lim[2])
                                    for _ in range(LEVEL3_BLOCKS))
        self.level4_0 = DownSampler(ch[2], ch[3], lim[2])
        self.level4 = nn.ModuleList(EESP(ch[3], ch[3], receptive_limit=lim[3])
                                    for _ in range(LEVEL4_BLOCKS))
        self.channels = ch[:4]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Features at strides 2, 4, 8 and 16 (after level1, level2_0, level3 and level4)."""
        image4 = _pool_half(_pool_half(x))
        image8 = _pool_half(image4)
        image16 = _pool_half(image8)
        l1 = self.level1(x)
        l2 = self.level2_0(l1, image4)
        l3 = self.level3_0(l2, image8)
        for block in self.level3:
            l3 = block(l3)
        l4 = self.level4_0(l3, image16)
        for block in self.level4:
            l4 = block(l4)
        return [l1, l2, l3, l4]


# Decoder (EdgeNets nn_layers/efficient_pyramid_pool.py, nn_layers/efficient_pt.py).


class EfficientPyrPool(nn.Module):
    """Efficient pyramid pooling: depth-wise 3x3 convolutions at five scales, merged.

    In eval mode the merge is computed level by level (``_merge``, no concatenation; the merge
    BatchNorm uses its running statistics, as eval mode does anyway). In training mode it is
    upstream's concatenate / BatchNorm / shuffle / grouped convolution, so that BatchNorm
    trains on batch statistics.
    """

    def __init__(self, in_ch: int, proj_ch: int, out_ch: int, last_layer_br: bool = True,
                 scales: Sequence[float] = PYRAMID_SCALES):
        """Build the module.

        Args:
            in_ch: input channels.
            proj_ch: channels of each pyramid level.
            out_ch: output channels.
            last_layer_br: end with BatchNorm + PReLU; False for the classifier, whose final
                convolution has a bias instead.
            scales: pyramid scales, largest first.
        """
        super().__init__()
        n = len(scales)
        self.scales = tuple(scales)
        self.projection_layer = SeqConvBnAct(in_ch, proj_ch, 1)
        self.stages = nn.ModuleList(
            nn.Conv2d(proj_ch, proj_ch, 3, padding=1, groups=proj_ch, bias=False)
            for _ in range(n))
        self.merge_layer = nn.Sequential(
            SeqBnAct(proj_ch * n),
            nn.Identity(),  # upstream's channel shuffle, which _merge makes unnecessary
            SeqConvBnAct(proj_ch * n, proj_ch, 3, groups=proj_ch),
            nn.Conv2d(proj_ch, out_ch, 1, bias=not last_layer_br),
        )
        self.br = SeqBnAct(out_ch) if last_layer_br else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.projection_layer(x)
        height, width = x.shape[-2:]
        levels = []
        for scale, stage in zip(self.scales, self.stages):
            # Upstream's arithmetic exactly (float product, ceil, floor at 5): e.g. 30 * 0.1 is
            # 3.0000000000000004, so ceil gives 4, and the weights were trained with that.
            size = (max(math.ceil(height * scale), PYRAMID_MIN_SIZE),
                    max(math.ceil(width * scale), PYRAMID_MIN_SIZE))
            if scale < 1.0:
                y = stage(F.adaptive_avg_pool2d(x, size))
                y = F.interpolate(y, (height, width), mode='bilinear', align_corners=True)
            elif scale > 1.0:
                y = stage(F.interpolate(x, size, mode='bilinear', align_corners=True))
                y = F.adaptive_avg_pool2d(y, (height, width))
            else:
                y = stage(x)
            levels.append(y)
        return self._merge(levels)

    def _merge(self, levels: list[torch.Tensor]) -> torch.Tensor:
        if self.training:
            return self._merge_concat(levels)
        # Upstream: concatenate, BatchNorm + PReLU, shuffle channels, then a 3x3 convolution
        # whose group i reads channel i of every level. The same sum, taken level by level as
        # depth-wise convolutions, skips the concatenation and the shuffle (two copies of the
        # largest tensor) and the slow 5-inputs-per-group convolution.
        bn, act = self.merge_layer[0].br
        conv, conv_bn, conv_act = self.merge_layer[2].cbr
        width = conv.out_channels
        out = None
        for j, y in enumerate(levels):
            part = slice(j * width, (j + 1) * width)
            if isinstance(bn, nn.BatchNorm2d):  # else folded into the stages by fuse_bn
                y = F.batch_norm(y, bn.running_mean[part], bn.running_var[part],
                                 bn.weight[part], bn.bias[part], training=False, eps=bn.eps)
            y = F.prelu(y, act.weight[part])
            y = F.conv2d(y, conv.weight[:, j:j + 1], conv.bias if j == 0 else None, padding=1,
                         groups=width)
            out = y if out is None else out + y
        out = self.merge_layer[3](conv_act(conv_bn(out)))
        return out if self.br is None else self.br(out)

    def _merge_concat(self, levels: list[torch.Tensor]) -> torch.Tensor:
        # Upstream's path, for training: the merge BatchNorm sees the concatenated levels, so
        # it normalises with batch statistics and updates its running ones. Channel c of
        # level j moves to position c * levels + j (upstream's Shuffle), so that group c of the
        # grouped convolution reads channel c of every level.
        y = self.merge_layer[0](torch.cat(levels, 1))
        n, channels, height, width = y.shape
        y = y.reshape(n, len(levels), channels // len(levels), height, width).transpose(1, 2)
        y = self.merge_layer[2](y.reshape(n, channels, height, width))
        out = self.merge_layer[3](y)
        return out if self.br is None else self.br(out)

    @torch.no_grad()
    def fuse_bn(self) -> None:
        """Fold the merge BatchNorm into the stages and the last one into the 1x1 conv.

        The merge BatchNorm acts on the concatenated stage outputs channel by channel, and the
        pooling and bilinear resizing after each stage keep a constant offset constant, so its
        affine map can move into the stage convolutions (which gain a bias).
        """
        bn = self.merge_layer[0].br[0]
        width = self.stages[0].out_channels
        for i, stage in enumerate(self.stages):
            part = slice(i * width, (i + 1) * width)
            stage.weight, stage.bias = fuse_conv_bn_weights(
                stage.weight, None, bn.running_mean[part], bn.running_var[part], bn.eps,
                bn.weight[part], bn.bias[part])
        self.merge_layer[0].br[0] = nn.Identity()
        if self.br is not None:
            self.merge_layer[3] = fuse_conv_bn_eval(self.merge_layer[3], self.br.br[0])
            self.br.br[0] = nn.Identity()


class EfficientPWConv(nn.Module):
    """Project an encoder skip to decoder width, gated by global channel attention."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.wt_layer = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(in_ch, out_ch, 1, bias=False),
            nn.Sigmoid(),
        )
        self.expansion_layer = SeqConvBnAct(in_ch, out_ch, 3, groups=math.gcd(in_ch, out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.expansion_layer(x) * self.wt_layer(x)


# The model.


class ESPNetv2(nn.Module):
    """ESPNetv2 segmentation network (EdgeNets ``ESPNetv2Segmentation``).

    ``forward`` maps an N x 3 x H x W RGB image, scaled to 0..1 and normalised with the ImageNet
    mean and std, to N x ``num_classes`` x ceil(H / 2) x ceil(W / 2) logits. Upstream then
    resizes them bilinearly with ``align_corners=True`` to H x W; the engine does that here.

    On CPU, run it channels_last (model and input): oneDNN's depth-wise convolutions, most of
    this network, are several times faster in NHWC. With ``fuse_bn`` it then takes about half
    upstream's time at 1024x512.
    """

    output_stride = 2
    #: After ``fuse_bn``, run single-process CPU inference through :class:`_Plan` (the same
    #: operations, bit for bit, with less overhead); False runs the modules (the reference).
    use_cpu_plan = True

    def __init__(self, s: float = 2.0, num_classes: int = 20, decoder_width: int = DECODER_WIDTH):
        """Build the network with PyTorch's default initialisation.

        Args:
            s: encoder width multiplier, a key of :data:`CHANNELS`.
            num_classes: output channels (EdgeNets' Cityscapes files: 19 trainIds + background).
            decoder_width: base width of the decoder (EdgeNets: 16 for Cityscapes and VOC).
        """
        super().__init__()
        self.base_net = EESPNet(s)
        enc = self.base_net.channels
        dec = (4 * decoder_width, 3 * decoder_width, 2 * decoder_width)
        proj = min(num_classes // 2, decoder_width)
        self.bu_dec_l1 = EfficientPyrPool(enc[3], proj, dec[0])
        self.bu_dec_l2 = EfficientPyrPool(dec[0], proj, dec[1])
        self.bu_dec_l3 = EfficientPyrPool(dec[1], proj, dec[2])
        self.bu_dec_l4 = EfficientPyrPool(dec[2], proj, num_classes, last_layer_br=False)
        self.merge_enc_dec_l2 = EfficientPWConv(enc[2], dec[0])
        self.merge_enc_dec_l3 = EfficientPWConv(enc[1], dec[1])
        self.merge_enc_dec_l4 = EfficientPWConv(enc[0], dec[2])
        self.bu_br_l2 = _bn_act(dec[0])
        self.bu_br_l3 = _bn_act(dec[1])
        self.bu_br_l4 = _bn_act(dec[2])
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        plan = self._plan_for(x)
        if plan is not None:
            return plan(x)
        l1, l2, l3, l4 = self.base_net(x)
        y = self.bu_dec_l1(l4)
        y = self.bu_dec_l2(self.bu_br_l2(self.merge_enc_dec_l2(l3) + _upsample_to(y, l3)))
        y = self.bu_dec_l3(self.bu_br_l3(self.merge_enc_dec_l3(l2) + _upsample_to(y, l2)))
        return self.bu_dec_l4(self.bu_br_l4(self.merge_enc_dec_l4(l1) + _upsample_to(y, l1)))

    @torch.no_grad()
    def fuse_bn(self) -> 'ESPNetv2':
        """Fold BatchNorm layers into the convolutions before them, for faster inference.

        Call after loading weights and only for inference: the model is put in eval mode, and
        its state dict no longer matches the official checkpoints. Outputs agree with the
        unfused model up to float rounding. Returns ``self``.
        """
        self.eval()
        for module in list(self.modules()):
            if module is not self and hasattr(module, 'fuse_bn'):
                module.fuse_bn()
        self._fused = True
        return self

    def _plan_for(self, x: torch.Tensor) -> Optional['_Plan']:
        """Return the CPU inference plan when it applies (fused, eval, no grad, float32)."""
        if (not self.use_cpu_plan or not getattr(self, '_fused', False) or self.training
                or x.device.type != 'cpu'
                or x.dtype != torch.float32 or torch.is_grad_enabled()
                or torch.is_autocast_enabled('cpu') or not torch.backends.mkldnn.is_available()):
            return None
        # Rebuilt when a tensor changes (in-place edits bump its version counter).
        key = tuple((id(t), _version(t)) for t in (*self.parameters(), *self.buffers()))
        with _PLAN_LOCK:
            if getattr(self, '_plan_key', None) != key:
                self._plan = _Plan(self)
                self._plan_key = key
            return self._plan


# Inference on CPU: the same operations as the modules above after ``fuse_bn``, called directly.


@dataclass(frozen=True)
class _Conv:
    """A convolution's tensors and geometry, as the inference path calls it."""

    weight: torch.Tensor
    bias: Optional[torch.Tensor]
    stride: list
    padding: list
    dilation: list
    groups: int

    @staticmethod
    def of(conv: nn.Conv2d, weight: Optional[torch.Tensor] = None,
           groups: Optional[int] = None) -> '_Conv':
        w = conv.weight if weight is None else weight
        return _Conv(w.detach().contiguous(),
                     None if conv.bias is None else conv.bias.detach().contiguous(),
                     list(conv.stride), list(conv.padding), list(conv.dilation),
                     conv.groups if groups is None else groups)


def _version(t: torch.Tensor) -> int:
    try:
        return t._version
    except RuntimeError:  # an inference tensor (made under inference_mode) has no counter
        return -1


def _mkldnn_rule(x: torch.Tensor, c: _Conv) -> bool:
    # ATen's ConvParams::use_mkldnn with more than one intra-op thread (Convolution.cpp), so
    # that a worker running on one thread picks the same kernel, and the same bits, as two.
    return (c.groups > 1 or (c.weight.shape[-1] > 3 and c.weight.shape[-2] > 3)
            or x.shape[0] > 1 or x.numel() > 20480)


def _conv(x: torch.Tensor, c: _Conv) -> torch.Tensor:
    if _mkldnn_rule(x, c):
        return torch.mkldnn_convolution(x, c.weight, c.bias, c.padding, c.stride, c.dilation,
                                        c.groups)
    return F.conv2d(x, c.weight, c.bias, c.stride, c.padding, c.dilation, c.groups)


def _regrouped(conv: nn.Conv2d, groups: int) -> _Conv:
    """Return the grouped convolution as fewer, larger groups (zero weights between them).

    oneDNN runs a 16-group 3x3 convolution of 8 -> 3 channels per group with a generic kernel
    that is slower than the same one as 4 groups of 32 -> 12 channels, zeros included; the
    result is bit-identical (the zeros add exact zeros, in the same order).
    """
    out_ch, in_per = conv.weight.shape[:2]
    ratio = conv.groups // groups
    out_per = out_ch // conv.groups
    weight = conv.weight.new_zeros(out_ch, in_per * ratio, *conv.weight.shape[2:])
    for g in range(conv.groups):
        k = g % ratio
        weight[g * out_per:(g + 1) * out_per, k * in_per:(k + 1) * in_per] = \
            conv.weight[g * out_per:(g + 1) * out_per]
    return _Conv.of(conv, weight=weight, groups=groups)


def _prelu(act: nn.PReLU) -> torch.Tensor:
    return act.weight.detach().contiguous()


def _bn(bn: nn.BatchNorm2d) -> tuple:
    return (bn.running_mean, bn.running_var, bn.weight.detach(), bn.bias.detach(), bn.eps)


def _batch_norm(x: torch.Tensor, bn: tuple) -> torch.Tensor:
    mean, var, weight, bias, eps = bn
    return F.batch_norm(x, mean, var, weight, bias, False, 0.0, eps)


def _avg_pool(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    # adaptive_avg_pool2d to an exact divisor is avg_pool2d, bit for bit, and faster.
    h, w = x.shape[-2:]
    if h % size[0] == 0 and w % size[1] == 0:
        return F.avg_pool2d(x, (h // size[0], w // size[1]))
    return F.adaptive_avg_pool2d(x, size)


class _EespPlan:
    def __init__(self, m: EESP) -> None:
        self.proj = _Conv.of(m.proj_1x1.conv)
        self.proj_act = _prelu(m.proj_1x1.act)
        self.dw = [_Conv.of(c.conv) for c in m.spp_dw]
        self.bn = _bn(m.br_after_cat.bn)
        self.act = _prelu(m.br_after_cat.act)
        self.exp = _Conv.of(m.conv_1x1_exp.conv)
        self.module_act = _prelu(m.module_act)
        self.stride, self.residual = m.stride, m.residual

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        reduced = F.prelu(_conv(x, self.proj), self.proj_act)
        # Hierarchical fusion written straight into the concatenation's slices.
        first = _conv(reduced, self.dw[0])
        width = first.shape[1]
        cat = torch.empty((first.shape[0], width * len(self.dw), *first.shape[2:]),
                          dtype=first.dtype, device=first.device,
                          memory_format=torch.channels_last)
        prev = cat[:, :width]
        prev.copy_(first)
        for k, dw in enumerate(self.dw[1:], 1):
            part = cat[:, k * width:(k + 1) * width]
            torch.add(_conv(reduced, dw), prev, out=part)
            prev = part
        out = _conv(F.prelu(_batch_norm(cat, self.bn), self.act), self.exp)
        if self.stride == 2:
            return out
        if self.residual:
            out.add_(x)
        return F.prelu(out, self.module_act)


class _DownPlan:
    def __init__(self, m: DownSampler) -> None:
        self.eesp = _EespPlan(m.eesp)
        self.reinf_conv = _Conv.of(m.inp_reinf[0].conv)
        self.reinf_act = _prelu(m.inp_reinf[0].act)
        self.reinf_proj = _Conv.of(m.inp_reinf[1].conv)
        self.act = _prelu(m.act)

    def __call__(self, x: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        out = _conv(F.prelu(_conv(image, self.reinf_conv), self.reinf_act), self.reinf_proj)
        # out = cat([avg(x), eesp(x)]) + reinf(image), without the concatenation.
        n = x.shape[1]
        out[:, :n].add_(F.avg_pool2d(x, 3, 2, 1))
        out[:, n:].add_(self.eesp(x))
        return F.prelu(out, self.act)


class _PyrPlan:
    def __init__(self, m: EfficientPyrPool) -> None:
        self.proj = _Conv.of(m.projection_layer.cbr[0])
        self.proj_act = _prelu(m.projection_layer.cbr[2])
        self.scales = m.scales
        self.stages = [_Conv.of(s) for s in m.stages]
        act = m.merge_layer[0].br[1]
        conv, conv_act = m.merge_layer[2].cbr[0], m.merge_layer[2].cbr[2]
        width = conv.out_channels
        self.level_acts = [act.weight[j * width:(j + 1) * width].detach().contiguous()
                           for j in range(len(self.stages))]
        # EfficientPyrPool._merge: level j meets input j of each group; the bias once.
        self.merge = []
        for j in range(len(self.stages)):
            c = _Conv.of(conv, weight=conv.weight[:, j:j + 1])
            self.merge.append(c if j == 0 else _Conv(c.weight, None, c.stride, c.padding,
                                                     c.dilation, c.groups))
        self.merge_act = _prelu(conv_act)
        self.out = _Conv.of(m.merge_layer[3])
        self.out_act = None if m.br is None else _prelu(m.br.br[1])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = F.prelu(_conv(x, self.proj), self.proj_act)
        height, width = x.shape[-2:]
        out = None
        for j, (scale, stage) in enumerate(zip(self.scales, self.stages)):
            size = (max(math.ceil(height * scale), PYRAMID_MIN_SIZE),
                    max(math.ceil(width * scale), PYRAMID_MIN_SIZE))
            if scale < 1.0:
                y = _conv(_avg_pool(x, size), stage)
                y = F.interpolate(y, (height, width), mode='bilinear', align_corners=True)
            elif scale > 1.0:
                y = _conv(F.interpolate(x, size, mode='bilinear', align_corners=True), stage)
                y = _avg_pool(y, (height, width))
            else:
                y = _conv(x, stage)
            y = _conv(F.prelu(y, self.level_acts[j]), self.merge[j])
            out = y if out is None else out.add_(y)
        out = _conv(F.prelu(out, self.merge_act), self.out)
        return out if self.out_act is None else F.prelu(out, self.out_act)


class _PwPlan:
    def __init__(self, m: EfficientPWConv, groups: Optional[int] = None) -> None:
        conv = m.expansion_layer.cbr[0]
        self.exp = _regrouped(conv, groups) if groups else _Conv.of(conv)
        self.exp_act = _prelu(m.expansion_layer.cbr[2])
        self.gate = _Conv.of(m.wt_layer[1])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(_conv(F.adaptive_avg_pool2d(x, 1), self.gate))
        return F.prelu(_conv(x, self.exp), self.exp_act).mul_(gate)


class _Plan:
    """ESPNetv2 after ``fuse_bn`` as plain function calls, for CPU inference.

    The operations and their order are the modules' (see ``test_espnetv2.py``: the logits are
    bit-identical), minus what costs time without changing a bit: module-call overhead, the
    concatenations (results are written into slices of one tensor), out-of-place sums, the
    adaptive poolings that are plain 2x2 poolings, and a slow grouped-convolution layout. Every
    convolution takes the kernel ATen picks with several threads, so one thread or two give the
    same logits.
    """

    def __init__(self, model: 'ESPNetv2') -> None:
        base = model.base_net
        self.level1 = _Conv.of(base.level1.conv)
        self.level1_act = _prelu(base.level1.act)
        self.level2_0 = _DownPlan(base.level2_0)
        self.level3_0 = _DownPlan(base.level3_0)
        self.level3 = [_EespPlan(b) for b in base.level3]
        self.level4_0 = _DownPlan(base.level4_0)
        self.level4 = [_EespPlan(b) for b in base.level4]
        self.dec = [_PyrPlan(m) for m in (model.bu_dec_l1, model.bu_dec_l2, model.bu_dec_l3,
                                          model.bu_dec_l4)]
        pw3 = model.merge_enc_dec_l3.expansion_layer.cbr[0]
        self.merge = [_PwPlan(model.merge_enc_dec_l2),
                      _PwPlan(model.merge_enc_dec_l3,
                              4 if pw3.groups > 4 and pw3.groups % 4 == 0 else None),
                      _PwPlan(model.merge_enc_dec_l4)]
        self.br = [(_bn(m[0]), _prelu(m[1]))
                   for m in (model.bu_br_l2, model.bu_br_l3, model.bu_br_l4)]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # The image pyramid: pooling 3 channels is faster planar, with the same result.
        fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) \
            else torch.contiguous_format
        image4 = _pool_half(_pool_half(x.contiguous()))
        image8 = _pool_half(image4)
        image16 = _pool_half(image8)
        image4, image8, image16 = (t.contiguous(memory_format=fmt)
                                   for t in (image4, image8, image16))
        l1 = F.prelu(_conv(x, self.level1), self.level1_act)
        l2 = self.level2_0(l1, image4)
        l3 = self.level3_0(l2, image8)
        for block in self.level3:
            l3 = block(l3)
        l4 = self.level4_0(l3, image16)
        for block in self.level4:
            l4 = block(l4)
        y = self.dec[0](l4)
        for skip, merge, (bn, act), dec in zip((l3, l2, l1), self.merge, self.br, self.dec[1:]):
            z = merge(skip).add_(_upsample_to(y, skip))
            y = dec(F.prelu(_batch_norm(z, bn), act))
        return y


def espnetv2_city(s: float = 2.0, num_classes: int = 20) -> ESPNetv2:
    """ESPNetv2 as trained by EdgeNets on Cityscapes: ``s`` in {2.0, 0.5}, 20 classes.

    Channel 19 is EdgeNets' "background" class, which Cityscapes training never used.
    """
    return ESPNetv2(s=s, num_classes=num_classes, decoder_width=DECODER_WIDTH)
