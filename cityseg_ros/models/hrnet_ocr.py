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

"""HRNetV2-W48 + OCR, laid out so that the official Cityscapes checkpoints load strictly.

HRNetV2 (Wang et al., TPAMI 2020) keeps a 1/4-resolution branch through the whole network and
adds 1/8, 1/16 and 1/32 branches stage by stage, exchanging information between them after every
module. OCR (Yuan et al., ECCV 2020) then refines each pixel with 19 "object" vectors pooled
under a first, auxiliary prediction. This is our own implementation of
HRNet/HRNet-Semantic-Segmentation (MIT), branch ``HRNet-OCR``, ``lib/models/seg_hrnet_ocr.py``,
with the Cityscapes config
``experiments/cityscapes/seg_hrnet_ocr_w48_trainval_512x1024_sgd_lr1e-2_wd5e-4_bs_12_epoch484``.
Attribute names follow the official ``FullModel`` state dict once :func:`checkpoint_filter_fn`
has stripped ``model.`` and dropped ``loss.*``. It differs from upstream only in ways that move
the logits by float rounding (3e-7 of their range on the golden fixtures):

* ``forward`` returns only the OCR logits (``cls_head``) at 1/4 resolution, the tensor the test
  script uses (``TEST.OUTPUT_INDEX = -1``); :meth:`HRNetOCR.forward_all` also returns the
  auxiliary logits. Neither is upsampled to the input size: the engine does that.
* The OCR attention is computed channels-first (``V softmax(K^T Q)``), which skips two
  transposed copies of a 1/4-resolution map, and the 1x1 convolution after the OCR
  concatenation is split by input, so that 1024-channel map is never built.
* ReLUs run in place and the branch fusions accumulate in place. :meth:`HRNetOCR.fuse_bn`
  optionally folds every BatchNorm into the convolution before it, for inference.
"""

from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import torch
from torch import nn
import torch.nn.functional as F
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = ['BasicBlock', 'Bottleneck', 'HighResolutionModule', 'HRNetOCR', 'StageCfg',
           'SpatialGather', 'ObjectAttentionBlock', 'SpatialOCR', 'checkpoint_filter_fn',
           'hrnet_w48_ocr']

# lib/models/seg_hrnet_ocr.py: BN_MOMENTUM for the backbone; the head's BatchNorms use PyTorch's
# default, also 0.1. eps is PyTorch's default 1e-5 (tools/test.py swaps SyncBN for BatchNorm2d).
BN_MOMENTUM = 0.1
# lib/config/default.py MODEL.ALIGN_CORNERS = True: every bilinear resize in the network (and the
# test script's upsampling of the logits) uses align_corners=True.
ALIGN_CORNERS = True
# lib/models/seg_hrnet_ocr.py builds SpatialGather_Module and SpatialOCR_Module with these
# hard-coded values (not read from the config): softmax temperature of the gather step, the
# down-sampling of the attention (1 = none) and the dropout after the OCR fusion.
OCR_GATHER_SCALE = 1.0
OCR_ATTENTION_SCALE = 1
OCR_DROPOUT = 0.05


@dataclass(frozen=True)
class StageCfg:
    """One HRNet stage, as in the config's ``MODEL.EXTRA.STAGE<n>``.

    Attributes:
        num_modules: HighResolutionModules in the stage.
        block: ``'basic'`` (two 3x3 convs) or ``'bottleneck'`` (1x1, 3x3, 1x1, expansion 4).
        num_blocks: residual blocks per branch.
        num_channels: width of each branch (before the block's expansion).
    """

    num_modules: int
    block: str
    num_blocks: tuple[int, ...]
    num_channels: tuple[int, ...]


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, momentum=BN_MOMENTUM)


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode='bilinear', align_corners=ALIGN_CORNERS)


def _conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, stride, padding=1, bias=False)


def _conv1x1(in_ch: int, out_ch: int, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 1, bias=bias)


def _conv_bn(in_ch: int, out_ch: int, kernel_size: int, stride: int = 1,
             relu: bool = False) -> nn.Sequential:
    """Conv (no bias), BN[, ReLU] as one Sequential: keys ``0.weight``, ``1.*``."""
    layers = [nn.Conv2d(in_ch, out_ch, kernel_size, stride, padding=kernel_size // 2,
                        bias=False), _bn(out_ch)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def _conv_bnrelu(in_ch: int, out_ch: int) -> list:
    """1x1 conv then upstream's ``ModuleHelper.BNReLU`` (a nested Sequential: keys ``1.0.*``)."""
    return [_conv1x1(in_ch, out_ch),
            nn.Sequential(nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))]


# Blocks (upstream BasicBlock / Bottleneck).


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection."""

    expansion = 1

    def __init__(self, in_ch: int, planes: int, stride: int = 1,
                 downsample: Optional[nn.Module] = None):
        super().__init__()
        self.conv1 = _conv3x3(in_ch, planes, stride)
        self.bn1 = _bn(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = _bn(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out.add_(shortcut))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4) with a residual connection."""

    expansion = 4

    def __init__(self, in_ch: int, planes: int, stride: int = 1,
                 downsample: Optional[nn.Module] = None):
        super().__init__()
        self.conv1 = _conv1x1(in_ch, planes)
        self.bn1 = _bn(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = _bn(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = _bn(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out.add_(shortcut))


BLOCKS = {'basic': BasicBlock, 'bottleneck': Bottleneck}


def _make_layer(block: type, in_ch: int, planes: int, num_blocks: int) -> nn.Sequential:
    """Stack residual blocks; the first gets a 1x1 conv + BN shortcut if the width changes."""
    out_ch = planes * block.expansion
    downsample = _conv_bn(in_ch, out_ch, 1) if in_ch != out_ch else None
    layers = [block(in_ch, planes, downsample=downsample)]
    layers += [block(out_ch, planes) for _ in range(1, num_blocks)]
    return nn.Sequential(*layers)


# Stages.


class HighResolutionModule(nn.Module):
    """Parallel branches of residual blocks, then every branch receives every other (SUM fuse).

    Branch ``j`` reaches a higher-resolution branch ``i < j`` through a 1x1 conv + BN and a
    bilinear upsampling, and a lower-resolution one ``i > j`` through ``i - j`` stride-2 3x3
    conv + BN (+ ReLU between them). Each output is ReLU(sum over j).

    Args:
        block: residual block class.
        num_blocks: blocks per branch.
        in_channels: input width per branch.
        num_channels: block width per branch (output = ``num_channels * block.expansion``).
    """

    def __init__(self, block: type, num_blocks: Sequence[int], in_channels: Sequence[int],
                 num_channels: Sequence[int]):
        super().__init__()
        if not len(num_blocks) == len(in_channels) == len(num_channels):
            raise ValueError(f'branch counts differ: num_blocks {tuple(num_blocks)}, in_channels '
                             f'{tuple(in_channels)}, num_channels {tuple(num_channels)}')
        self.num_branches = len(num_blocks)
        self.branches = nn.ModuleList(
            _make_layer(block, c_in, c, n)
            for c_in, c, n in zip(in_channels, num_channels, num_blocks))
        self.out_channels = [c * block.expansion for c in num_channels]
        self.fuse_layers = self._make_fuse_layers() if self.num_branches > 1 else None
        self.relu = nn.ReLU(inplace=True)

    def _make_fuse_layers(self) -> nn.ModuleList:
        ch = self.out_channels
        fuse_layers = []
        for i in range(self.num_branches):
            row = []
            for j in range(self.num_branches):
                if j > i:
                    row.append(_conv_bn(ch[j], ch[i], 1))
                elif j == i:
                    row.append(None)
                else:
                    steps = i - j
                    row.append(nn.Sequential(*(
                        _conv_bn(ch[j], ch[i] if k == steps - 1 else ch[j], 3, stride=2,
                                 relu=k < steps - 1)
                        for k in range(steps))))
            fuse_layers.append(nn.ModuleList(row))
        return nn.ModuleList(fuse_layers)

    def forward(self, xs: Sequence[torch.Tensor]) -> list:
        xs = [branch(x) for branch, x in zip(self.branches, xs)]
        if self.fuse_layers is None:
            return xs
        out = []
        for i, row in enumerate(self.fuse_layers):
            size = xs[i].shape[-2:]
            # Summed in upstream's order (j = 0, 1, ...) so the rounding matches closely;
            # in place once y is a new tensor (never into the branch output xs[i]).
            y, owned = None, False
            for j, layer in enumerate(row):
                if j == i:
                    term = xs[j]
                elif j > i:
                    term = _resize(layer(xs[j]), size)
                else:
                    term = layer(xs[j])
                if y is None:
                    y, owned = term, j != i
                elif owned:
                    y.add_(term)
                else:
                    y, owned = y + term, True
            out.append(self.relu(y))
        return out


def _make_transition(pre: Sequence[int], cur: Sequence[int]) -> nn.ModuleList:
    """Adapt the previous stage's branches to the next stage's and add one lower branch.

    Entries are None where a branch passes through unchanged (upstream keeps those Nones, so
    the new branch's index, and its keys, are ``transitionN.<i>.0.*``).
    """
    layers = []
    for i, c_out in enumerate(cur):
        if i < len(pre):
            layers.append(_conv_bn(pre[i], c_out, 3, relu=True) if pre[i] != c_out else None)
        else:
            steps = i + 1 - len(pre)
            layers.append(nn.Sequential(*(
                _conv_bn(pre[-1], c_out if k == steps - 1 else pre[-1], 3, stride=2, relu=True)
                for k in range(steps))))
    return nn.ModuleList(layers)


def _transition(layers: nn.ModuleList, ys: Sequence[torch.Tensor]) -> list:
    # A new branch grows from the lowest-resolution branch of the previous stage.
    return [ys[min(i, len(ys) - 1)] if layer is None else layer(ys[min(i, len(ys) - 1)])
            for i, layer in enumerate(layers)]


# OCR head (upstream SpatialGather_Module, _ObjectAttentionBlock, SpatialOCR_Module).


class SpatialGather(nn.Module):
    """Pool one feature vector per class, weighted by the softmax over pixels of its logits.

    Returns ``N, C, K, 1`` object features: feature channels by classes.
    """

    def __init__(self, scale: float = OCR_GATHER_SCALE):
        super().__init__()
        self.scale = scale

    def forward(self, feats: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        n, k = logits.shape[:2]
        probs = F.softmax(self.scale * logits.reshape(n, k, -1), dim=2)  # N, K, HW
        feats = feats.reshape(n, feats.shape[1], -1)  # N, C, HW
        return torch.matmul(feats, probs.transpose(1, 2)).unsqueeze(3)  # N, C, K, 1


class ObjectAttentionBlock(nn.Module):
    """Pixel-to-object attention: each pixel mixes the object vectors by similarity.

    Queries come from the pixels (``f_pixel``), keys (``f_object``) and values (``f_down``)
    from the object vectors; the softmax over objects uses the usual ``key_channels ** -0.5``
    scale, and ``f_up`` maps the result back to ``in_channels``.
    """

    def __init__(self, in_channels: int, key_channels: int, scale: int = OCR_ATTENTION_SCALE):
        super().__init__()
        if scale != 1:
            raise ValueError(f'OCR attention scale {scale} is not supported; the released '
                             'models use 1 (no pooling)')
        self.key_channels = key_channels
        self.f_pixel = nn.Sequential(*_conv_bnrelu(in_channels, key_channels),
                                     *_conv_bnrelu(key_channels, key_channels))
        self.f_object = nn.Sequential(*_conv_bnrelu(in_channels, key_channels),
                                      *_conv_bnrelu(key_channels, key_channels))
        self.f_down = nn.Sequential(*_conv_bnrelu(in_channels, key_channels))
        self.f_up = nn.Sequential(*_conv_bnrelu(key_channels, in_channels))

    def forward(self, x: torch.Tensor, proxy: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        query = self.f_pixel(x).reshape(n, self.key_channels, -1)  # N, Ck, HW
        key = self.f_object(proxy).reshape(n, self.key_channels, -1)  # N, Ck, K
        value = self.f_down(proxy).reshape(n, self.key_channels, -1)  # N, Ck, K
        # Upstream: softmax(Q^T K * s, dim=-1) V, then transposed back; here in channels-first
        # order, which is the same product without the two HW-sized transposes.
        sim = torch.matmul(key.transpose(1, 2), query)  # N, K, HW
        sim = F.softmax(sim.mul_(self.key_channels ** -0.5), dim=1)
        context = torch.matmul(value, sim).reshape(n, self.key_channels, h, w)
        return self.f_up(context)


class SpatialOCR(nn.Module):
    """Object-contextual representation: attention context, concatenated with the pixels.

    ``conv_bn_dropout`` is a 1x1 conv on ``cat(context, feats)``, BN + ReLU, then dropout.
    """

    def __init__(self, in_channels: int, key_channels: int, out_channels: int,
                 dropout: float = OCR_DROPOUT):
        super().__init__()
        self.object_context_block = ObjectAttentionBlock(in_channels, key_channels)
        self.conv_bn_dropout = nn.Sequential(*_conv_bnrelu(2 * in_channels, out_channels),
                                             nn.Dropout2d(dropout))

    def forward(self, feats: torch.Tensor, proxy: torch.Tensor) -> torch.Tensor:
        context = self.object_context_block(feats, proxy)
        conv, bn_relu, dropout = self.conv_bn_dropout
        # conv(cat(context, feats)), split by input channels: no 1024-channel copy.
        weight = conv.weight
        c = context.shape[1]
        out = F.conv2d(context, weight[:, :c], conv.bias)
        out.add_(F.conv2d(feats, weight[:, c:]))
        return dropout(bn_relu(out))


# Model.


class HRNetOCR(nn.Module):
    """HRNetV2 backbone with the OCR segmentation head.

    Args:
        stem_channels: width of the two stride-2 3x3 stem convolutions.
        stages: the four stages; the first is a single branch of residual blocks (``layer1``).
        ocr_mid_channels: width of the pixel features the OCR head works on.
        ocr_key_channels: width of the attention's queries, keys and values.
        ocr_dropout: channel dropout after the OCR fusion (inactive in eval mode).
        num_classes: output channels of both heads.
    """

    output_stride = 4

    def __init__(self, stem_channels: int, stages: Sequence[StageCfg], ocr_mid_channels: int,
                 ocr_key_channels: int, ocr_dropout: float, num_classes: int):
        super().__init__()
        if len(stages) != 4 or len(stages[0].num_channels) != 1:
            raise ValueError('HRNetOCR needs 4 stages, the first with a single branch')
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(3, stem_channels, 3, 2, padding=1, bias=False)
        self.bn1 = _bn(stem_channels)
        self.conv2 = nn.Conv2d(stem_channels, stem_channels, 3, 2, padding=1, bias=False)
        self.bn2 = _bn(stem_channels)
        self.relu = nn.ReLU(inplace=True)

        s1 = stages[0]
        block = BLOCKS[s1.block]
        self.layer1 = _make_layer(block, stem_channels, s1.num_channels[0], s1.num_blocks[0])
        channels = [s1.num_channels[0] * block.expansion]
        for n, cfg in enumerate(stages[1:], start=1):
            block = BLOCKS[cfg.block]
            widths = [c * block.expansion for c in cfg.num_channels]
            setattr(self, f'transition{n}', _make_transition(channels, widths))
            modules = []
            for _ in range(cfg.num_modules):
                modules.append(HighResolutionModule(block, cfg.num_blocks, widths,
                                                    cfg.num_channels))
                widths = modules[-1].out_channels
            setattr(self, f'stage{n + 1}', nn.Sequential(*modules))
            channels = widths
        last_channels = sum(channels)

        self.conv3x3_ocr = nn.Sequential(
            nn.Conv2d(last_channels, ocr_mid_channels, 3, padding=1),
            nn.BatchNorm2d(ocr_mid_channels), nn.ReLU(inplace=True))
        self.ocr_gather_head = SpatialGather()
        self.ocr_distri_head = SpatialOCR(ocr_mid_channels, ocr_key_channels, ocr_mid_channels,
                                          dropout=ocr_dropout)
        self.cls_head = _conv1x1(ocr_mid_channels, num_classes, bias=True)
        self.aux_head = nn.Sequential(
            _conv1x1(last_channels, last_channels, bias=True), nn.BatchNorm2d(last_channels),
            nn.ReLU(inplace=True), _conv1x1(last_channels, num_classes, bias=True))

    def forward_features(self, x: torch.Tensor) -> list:
        """Return the four stage-4 branches, at strides 4, 8, 16 and 32 (48/96/192/384 ch)."""
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        ys = [self.layer1(x)]
        ys = self.stage2(_transition(self.transition1, ys))
        ys = self.stage3(_transition(self.transition2, ys))
        return self.stage4(_transition(self.transition3, ys))

    def forward_all(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(aux_logits, cls_logits)``, both ``N, num_classes, H/4, W/4``.

        ``aux_logits`` (the soft object regions) come from ``aux_head`` on the concatenated
        branches; ``cls_logits`` from ``cls_head`` after OCR. Upstream's forward returns the
        same two tensors as a list.
        """
        xs = self.forward_features(x)
        size = xs[0].shape[-2:]
        feats = torch.cat([xs[0]] + [_resize(t, size) for t in xs[1:]], 1)
        del xs
        aux = self.aux_head(feats)
        feats = self.conv3x3_ocr(feats)
        objects = self.ocr_gather_head(feats, aux)
        feats = self.ocr_distri_head(feats, objects)
        return aux, self.cls_head(feats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the OCR logits, ``N, num_classes, H/4, W/4`` (not upsampled).

        Args:
            x: ``N, 3, H, W`` RGB normalised with the ImageNet mean and std; any H and W (each
                stride-2 convolution maps a side n to ceil(n / 2)).
        """
        return self.forward_all(x)[1]

    @torch.no_grad()
    def fuse_bn(self) -> None:
        """Fold every BatchNorm into the convolution before it (inference only).

        The model's state dict no longer matches the checkpoint afterwards: load first.
        """
        if self.training:
            raise RuntimeError('fuse_bn() is for inference: call eval() first')
        for module in list(self.modules()):
            if isinstance(module, (BasicBlock, Bottleneck)):
                for n in (1, 2, 3):
                    conv, bn = getattr(module, f'conv{n}', None), getattr(module, f'bn{n}', None)
                    if isinstance(bn, nn.BatchNorm2d):
                        setattr(module, f'conv{n}', fuse_conv_bn_eval(conv, bn))
                        setattr(module, f'bn{n}', nn.Identity())
            elif isinstance(module, nn.Sequential):
                _fuse_sequential(module)
        for n in (1, 2):
            setattr(self, f'conv{n}', fuse_conv_bn_eval(getattr(self, f'conv{n}'),
                                                        getattr(self, f'bn{n}')))
            setattr(self, f'bn{n}', nn.Identity())


def _fuse_sequential(seq: nn.Sequential) -> None:
    """Fold ``Conv2d, BatchNorm2d`` and ``Conv2d, Sequential(BatchNorm2d, ReLU)`` pairs."""
    for i in range(len(seq) - 1):
        conv, nxt = seq[i], seq[i + 1]
        if not isinstance(conv, nn.Conv2d):
            continue
        if isinstance(nxt, nn.BatchNorm2d):
            seq[i], seq[i + 1] = fuse_conv_bn_eval(conv, nxt), nn.Identity()
        elif isinstance(nxt, nn.Sequential) and len(nxt) and isinstance(nxt[0], nn.BatchNorm2d):
            seq[i], nxt[0] = fuse_conv_bn_eval(conv, nxt[0]), nn.Identity()


# Checkpoint keys.


def checkpoint_filter_fn(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """Map an official checkpoint to this model's keys.

    The released files are ``FullModel.state_dict()``: the network under ``model.`` plus the
    loss's class weights (``loss.criterion.weight``). As upstream's ``tools/test.py`` does, the
    ``model.`` prefix is stripped and the loss dropped; a ``{'state_dict': ...}`` wrapper (the
    training script's ``checkpoint.pth.tar``) is unwrapped. Keys already without the prefix are
    kept, so the adapter is idempotent.
    """
    if 'state_dict' in state_dict and isinstance(state_dict['state_dict'], Mapping):
        state_dict = state_dict['state_dict']
    out = {}
    for key, value in state_dict.items():
        if key.startswith('loss.'):
            continue
        out[key[len('model.'):] if key.startswith('model.') else key] = value
    return out


# Factory.


def hrnet_w48_ocr() -> HRNetOCR:
    """Build HRNetV2-W48 + OCR for Cityscapes (19 classes), 70,372,678 parameters.

    Values from ``experiments/cityscapes/seg_hrnet_ocr_w48_trainval_512x1024_sgd_lr1e-2_wd5e-4
    _bs_12_epoch484.yaml`` (``MODEL.EXTRA``, ``MODEL.OCR`` defaults of ``lib/config/default.py``)
    and the constants hard-coded in ``seg_hrnet_ocr.py``.
    """
    return HRNetOCR(
        stem_channels=64,
        stages=(
            StageCfg(num_modules=1, block='bottleneck', num_blocks=(4,), num_channels=(64,)),
            StageCfg(num_modules=1, block='basic', num_blocks=(4, 4), num_channels=(48, 96)),
            StageCfg(num_modules=4, block='basic', num_blocks=(4, 4, 4),
                     num_channels=(48, 96, 192)),
            StageCfg(num_modules=3, block='basic', num_blocks=(4, 4, 4, 4),
                     num_channels=(48, 96, 192, 384)),
        ),
        ocr_mid_channels=512,  # MODEL.OCR.MID_CHANNELS
        ocr_key_channels=256,  # MODEL.OCR.KEY_CHANNELS
        ocr_dropout=OCR_DROPOUT,
        num_classes=19,  # DATASET.NUM_CLASSES
    )
