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

"""SERNet-Former: an independent implementation from the paper's public description.

S. Erisen, "SERNet-Former: Semantic Segmentation by Efficient Residual Network with
Attention-Boosting Gates and Attention-Fusion Networks", arXiv 2401.15741 (CVPR 2024
Workshops). **No code and no weights were released** (serdarch/SERNet-Former holds README
tables and placeholders; the author says the network is developed in MATLAB and cannot be
shared), so this file follows the published description only, every zoo entry has
``weights=()`` and a model must be trained with ``train`` (see the README). Expect neither the
paper's numbers nor its exact layer counts.

What the paper fixes, and how it is built here:

* **Efficient-ResNet encoder**: a ResNet-50 / ResNet-101 (:mod:`cityseg_ros.models.resnet`,
  torchvision's key names, so ImageNet weights load: :meth:`SERNetFormer.load_backbone`) with
  **Attention-boosting Gates** fused into it. AbG(x) = sigmoid(BN(conv(x))) * BN(conv(x)),
  i.e. SiLU of a convolved, normalised copy, which lets through the negative responses a ReLU
  removes.
* **Attention-boosting Module** (AbM) at the end of the encoder: fuses the equally-sized outputs
  of the last stages with the global context of the last one.
* **Dilation-based network** (DbN): a bridge of dilated convolutions between encoder and decoder.
* **Attention-fusion Networks** (AfN) in the decoder, "inspired by AbM": they fuse encoder skips
  with the upsampled decoder path using additional convolutions.

What the paper leaves open, and what we chose (each a documented guess):

1. *Where the AbGs sit.* One AbG per encoder stage, on the stage output, added to it:
   ``x = x + AbG(x)``, and the boosted map feeds the next stage ("fused into the encoder").
   Each gate's BatchNorm starts with weight 0, so an ImageNet ResNet is unchanged at step 0.
2. *AbG convolution.* 1x1, ``C -> C`` inside the encoder; 1x1 channel projections elsewhere.
3. *AbM.* The outputs of layer2..layer4 are average-pooled to layer4's size (they already have
   it at output stride 8), each passes an AbG to 256 channels, the concatenation is fused by a
   1x1 conv-BN-ReLU to 512 channels and scaled by ``1 + sigmoid(W * GAP(layer4) + b)`` (the
   global context; no BatchNorm after pooling, so a batch of one trains).
4. *Output stride.* 16 for the R50 / R101 variants (layer4 dilated), 8 for ``sernet_former``
   (layer3 and layer4 dilated), as DeepLabv3's two settings.
5. *DbN.* Parallel 1x1 and three 3x3 conv-BN-ReLU branches (512 -> 256 each) with dilations
   6, 12, 18 at output stride 16 (12, 24, 36 at 8), concatenated and fused by 1x1 to 256.
6. *AfN.* Two of them: AfN1 at stride 8 (skip: layer2), AfN2 at stride 4 (skip: layer1). Each
   upsamples the decoder path bilinearly to the skip's size, projects the skip with an AbG
   (to 64 / 48 channels), fuses both with two 3x3 conv-BN-ReLU (256 channels), scales the result
   by a channel attention from the decoder path's global average, and adds an AbG boost.
7. *Head and stride of the logits.* Dropout 0.1 and a 1x1 convolution to 19 classes at stride 4;
   the engine upsamples bilinearly (``align_corners=False``). The paper's decoder returns full
   resolution; upsampling logits is cheaper and standard (DeepLabv3+, mmseg).
8. *The "final" model* (``sernet_former``): ResNet-101, all modules, output stride 8 (the
   paper's best rows use Efficient-ResNet with every module; the stride is our choice).
   The author mentions transformer layers in the decoder in an issue reply (serdarch/
   SERNet-Former#10) but the paper describes none, so there are none here.

Sizes (ours, 19 classes; FLOPs = 2 x multiply-accumulates of the convolutions, counted with
``torch.utils.flop_counter.FlopCounterMode`` at 256x512 and scaled by 16 to 1024x2048; a direct
count at 1024x2048 gives the same for R50 to 0.01 %):

=====================  ===========  ================  ==================================
zoo name               parameters   GFLOPs 1024x2048  paper's figure (no protocol given)
=====================  ===========  ================  ==================================
``sernet_former_r50``  38,316,595   1,178             73.31 mIoU (ResNet-50 row)
``sernet_former_r101`` 57,308,723   1,489             77.04 mIoU (Efficient-ResNet R101)
``sernet_former``      57,308,723   4,011             84.83 test server, 87.35 val
=====================  ===========  ================  ==================================

Most of the FLOPs are the decoder's 3x3 convolutions at stride 4 (as in DeepLabv3+); the
encoder adds 5.6 M parameters of AbGs to the ResNet (23.5 M / 42.5 M without ``fc``).
"""

import logging
from pathlib import Path
import re
from typing import Mapping, Optional, Sequence, Union

from cityseg_ros.models.resnet import DEPTHS, ResNet, STAGE_CHANNELS
import torch
from torch import nn
import torch.nn.functional as F

__all__ = ['AttentionBoostingGate', 'AttentionBoostingModule', 'AttentionFusionNetwork',
           'DilationBasedNetwork', 'EfficientResNet', 'SERNetFormer', 'backbone_filter_fn',
           'sernet_former_r50', 'sernet_former_r101', 'sernet_former']

log = logging.getLogger(__name__)

NUM_CLASSES = 19
# Widths (our choices, see the module docstring): AbM branches and output, DbN branches and
# output, the decoder, and the skip projections of AfN1 (layer2) and AfN2 (layer1).
ABM_BRANCH = 256
ABM_CHANNELS = 512
DBN_BRANCH = 256
DBN_CHANNELS = 256
DECODER_CHANNELS = 256
SKIP_CHANNELS = (64, 48)
# DeepLabv3's atrous rates at output stride 16; doubled at 8.
DBN_RATES_OS16 = (6, 12, 18)
DROPOUT = 0.1
# torch.hub's rule: a released file name ends in -<first hex digits of its sha256>.<ext>.
_HASH_IN_NAME = re.compile(r'-([a-f0-9]{8,})\.')


def _conv_bn_relu(in_ch: int, out_ch: int, kernel_size: int = 1,
                  dilation: int = 1) -> nn.Sequential:
    pad = dilation * (kernel_size // 2)
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel_size, padding=pad, dilation=dilation, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True))


class AttentionBoostingGate(nn.Module):
    """AbG: ``y = BN(conv(x))``, output ``sigmoid(y) * y`` (the paper's gate)."""

    def __init__(self, in_ch: int, out_ch: int, zero_init: bool = False):
        """Build the gate.

        Args:
            in_ch: input channels.
            out_ch: output channels of the 1x1 convolution.
            zero_init: start the BatchNorm weight at 0, so the gate outputs 0 until it learns;
                used where the gate is added to a pretrained path.
        """
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)
        if zero_init:
            nn.init.zeros_(self.bn.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # sigmoid(y) * y is SiLU(y): one fused kernel instead of three.
        return F.silu(self.bn(self.conv(x)))


class EfficientResNet(ResNet):
    """Efficient-ResNet: a ResNet whose stage outputs are boosted by AbGs, ``x + AbG(x)``.

    The ResNet's own parameters keep torchvision's names (``conv1``, ``layer1.0.conv1``, ...);
    the gates are ``gates.0`` .. ``gates.3``.
    """

    def __init__(self, depth: int, dilate: Sequence[bool]):
        """Build the encoder: ``depth`` 50 or 101; ``dilate`` for layer2..layer4."""
        if depth not in DEPTHS:
            raise ValueError(f'Efficient-ResNet depth {depth} is not defined; choose one of '
                             f'{", ".join(map(str, DEPTHS))}')
        super().__init__(DEPTHS[depth], dilate, num_classes=None)
        self.depth = depth
        self.gates = nn.ModuleList(AttentionBoostingGate(c, c, zero_init=True)
                                   for c in STAGE_CHANNELS)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return the boosted outputs of layer1..layer4."""
        x = self.stem(x)
        feats = []
        for layer, gate in zip((self.layer1, self.layer2, self.layer3, self.layer4), self.gates):
            x = layer(x)
            x = x + gate(x)
            feats.append(x)
        return feats

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.features(x)


class AttentionBoostingModule(nn.Module):
    """AbM: fuse equally-sized encoder stages, gated by AbGs, with the global context."""

    def __init__(self, in_chs: Sequence[int], branch_ch: int = ABM_BRANCH,
                 out_ch: int = ABM_CHANNELS):
        """Build the module.

        Args:
            in_chs: channels of the fused stages, the last one (the global context) last.
            branch_ch: channels of each stage after its AbG.
            out_ch: output channels.
        """
        super().__init__()
        self.gates = nn.ModuleList(AttentionBoostingGate(c, branch_ch) for c in in_chs)
        self.fuse = _conv_bn_relu(branch_ch * len(in_chs), out_ch)
        self.context = nn.Conv2d(in_chs[-1], out_ch, 1)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """Fuse ``feats`` (e.g. layer2..layer4) at the size of the last one."""
        size = feats[-1].shape[-2:]
        parts = []
        for gate, f in zip(self.gates, feats):
            if f.shape[-2:] != size:
                f = F.adaptive_avg_pool2d(f, size)
            parts.append(gate(f))
        y = self.fuse(torch.cat(parts, 1))
        context = torch.sigmoid(self.context(F.adaptive_avg_pool2d(feats[-1], 1)))
        return y + y * context


class DilationBasedNetwork(nn.Module):
    """DbN: parallel dilated 3x3 branches and a 1x1 branch, concatenated and fused."""

    def __init__(self, in_ch: int, rates: Sequence[int], branch_ch: int = DBN_BRANCH,
                 out_ch: int = DBN_CHANNELS):
        """Build the bridge.

        Args:
            in_ch: input channels.
            rates: dilations of the 3x3 branches.
            branch_ch: channels of each branch.
            out_ch: output channels.
        """
        super().__init__()
        self.branches = nn.ModuleList(
            [_conv_bn_relu(in_ch, branch_ch)]
            + [_conv_bn_relu(in_ch, branch_ch, 3, dilation=r) for r in rates])
        self.fuse = _conv_bn_relu(branch_ch * (len(rates) + 1), out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat([branch(x) for branch in self.branches], 1))


class AttentionFusionNetwork(nn.Module):
    """AfN: fuse an encoder skip into the decoder path with convolutions and attention."""

    def __init__(self, in_ch: int, skip_ch: int, skip_proj: int, out_ch: int):
        """Build the fusion block.

        Args:
            in_ch: channels of the decoder path (the coarser input).
            skip_ch: channels of the encoder skip.
            skip_proj: channels of the skip after its AbG.
            out_ch: output channels.
        """
        super().__init__()
        self.skip_gate = AttentionBoostingGate(skip_ch, skip_proj)
        self.fuse = nn.Sequential(_conv_bn_relu(in_ch + skip_proj, out_ch, 3),
                                  _conv_bn_relu(out_ch, out_ch, 3))
        self.context = nn.Conv2d(in_ch, out_ch, 1)
        self.boost = AttentionBoostingGate(out_ch, out_ch, zero_init=True)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """Fuse the decoder path ``x`` with ``skip``; the output has the skip's size."""
        up = F.interpolate(x, size=skip.shape[-2:], mode='bilinear', align_corners=False)
        y = self.fuse(torch.cat([up, self.skip_gate(skip)], 1))
        attention = torch.sigmoid(self.context(F.adaptive_avg_pool2d(x, 1)))
        return y * attention + self.boost(y)


class SERNetFormer(nn.Module):
    """SERNet-Former: Efficient-ResNet + AbM, DbN bridge, AfN decoder, 1x1 classifier.

    ``forward`` maps an N x 3 x H x W image (RGB, /255, ImageNet mean/std) to N x 19 x
    ceil(H / 4) x ceil(W / 4) logits; the engine upsamples them bilinearly.
    """

    output_stride = 4

    def __init__(self, depth: int = 101, encoder_stride: int = 16,
                 num_classes: int = NUM_CLASSES, dropout: float = DROPOUT):
        """Build the network with random weights.

        Args:
            depth: ResNet depth of the encoder, 50 or 101.
            encoder_stride: output stride of the encoder, 16 (layer4 dilated) or 8 (layer3
                and layer4 dilated); the DbN's dilations scale with it.
            num_classes: classifier outputs.
            dropout: Dropout2d probability before the classifier.
        """
        super().__init__()
        if encoder_stride not in (8, 16):
            raise ValueError(f'encoder_stride must be 8 or 16, not {encoder_stride}')
        dilate = (False, True, True) if encoder_stride == 8 else (False, False, True)
        rates = tuple(r * 16 // encoder_stride for r in DBN_RATES_OS16)
        self.encoder = EfficientResNet(depth, dilate)
        self.abm = AttentionBoostingModule(STAGE_CHANNELS[1:])
        self.dbn = DilationBasedNetwork(ABM_CHANNELS, rates)
        self.afn1 = AttentionFusionNetwork(DBN_CHANNELS, STAGE_CHANNELS[1], SKIP_CHANNELS[0],
                                           DECODER_CHANNELS)
        self.afn2 = AttentionFusionNetwork(DECODER_CHANNELS, STAGE_CHANNELS[0],
                                           SKIP_CHANNELS[1], DECODER_CHANNELS)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(DECODER_CHANNELS, num_classes, 1)
        self.num_classes = num_classes
        self.encoder_stride = encoder_stride
        for name, m in self.named_modules():
            if name.startswith('encoder.') and not name.startswith('encoder.gates'):
                continue  # the ResNet keeps torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        l1, l2, l3, l4 = self.encoder.features(x)
        y = self.dbn(self.abm((l2, l3, l4)))
        y = self.afn1(y, l2)
        y = self.afn2(y, l1)
        return self.classifier(self.dropout(y))

    def load_backbone(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Load ImageNet ResNet weights in torchvision's layout into the encoder.

        ``fc.*`` is dropped; every other key must exist in the encoder with the same shape, and
        every ResNet parameter must be given (the AbGs and the rest keep their initialisation).

        Raises:
            ValueError: missing, unexpected or wrongly shaped keys (the first ones are named).
        """
        state = backbone_filter_fn(state_dict)
        own = self.encoder.state_dict()
        resnet_keys = [k for k in own if not k.startswith('gates.')]
        missing = [k for k in resnet_keys if k not in state
                   and not k.endswith('num_batches_tracked')]
        unexpected = [k for k in state if k not in own]
        shapes = [f'{k}: file {list(v.shape)} vs model {list(own[k].shape)}'
                  for k, v in state.items() if k in own and v.shape != own[k].shape]
        if missing or unexpected or shapes:
            parts = [f'{len(v)} {what} ({", ".join(v[:5])})' for what, v in
                     (('missing keys', missing), ('unexpected keys', unexpected),
                      ('wrongly shaped', shapes)) if v]
            raise ValueError('; '.join(parts) + "; expected torchvision's "
                             f'resnet{self.encoder.depth} layout')
        self.encoder.load_state_dict(state, strict=False)
        log.debug('loaded %d ImageNet tensors into the Efficient-ResNet encoder', len(state))


def backbone_filter_fn(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """Map a torchvision/timm ImageNet ResNet state dict to :class:`EfficientResNet` keys.

    The names already match (``conv1.weight``, ``layer1.0.conv1.weight``, ...); the classifier
    (``fc.*``) is dropped, and a ``module.`` prefix (DataParallel) is stripped.
    """
    out = {}
    for key, value in state_dict.items():
        key = key[len('module.'):] if key.startswith('module.') else key
        if not key.startswith('fc.'):
            out[key] = value
    return out


def check_backbone_file(path: Union[str, Path], expected_name: Optional[str]) -> Optional[str]:
    """Say what is wrong with a torchvision release file, or None when it passes.

    torchvision's file names carry the first hex digits of their sha256 (torch.hub checks the
    same prefix). Only a file named exactly ``expected_name`` is checked: a renamed or
    converted file has nothing to compare with.
    """
    import hashlib

    path = Path(path)
    match = _HASH_IN_NAME.search(path.name)
    if expected_name is None or path.name != expected_name or not match:
        return None
    digest = hashlib.sha256()
    with open(path, 'rb') as fh:
        for block in iter(lambda: fh.read(1 << 20), b''):
            digest.update(block)
    if not digest.hexdigest().startswith(match.group(1)):
        return (f'sha256 {digest.hexdigest()} does not start with {match.group(1)} as its '
                'name says: the download is corrupt or incomplete')
    return None


def sernet_former_r50() -> SERNetFormer:
    """Build SERNet-Former with an Efficient-ResNet-50 encoder at output stride 16."""
    return SERNetFormer(depth=50, encoder_stride=16, num_classes=NUM_CLASSES, dropout=DROPOUT)


def sernet_former_r101() -> SERNetFormer:
    """Build SERNet-Former with an Efficient-ResNet-101 encoder at output stride 16."""
    return SERNetFormer(depth=101, encoder_stride=16, num_classes=NUM_CLASSES, dropout=DROPOUT)


def sernet_former() -> SERNetFormer:
    """Build the "final" SERNet-Former: Efficient-ResNet-101, all modules, output stride 8."""
    return SERNetFormer(depth=101, encoder_stride=8, num_classes=NUM_CLASSES, dropout=DROPOUT)
