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

"""The model zoo: one table that maps each model name to everything needed to run it.

Normalisation, test size, protocol, output stride, checkpoint URL/sha256/size and key adapter all
live here, so the engine, the CLIs and the node never hard-code a model's quirks.
"""

from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional

from cityseg_ros.errors import ZooError
import torch
from torch import nn

__all__ = ['WeightsFile', 'ModelSpec', 'ZOO', 'get_spec', 'build_model', 'model_names']

# ImageNet statistics on the 0..255 scale (torchvision / timm defaults, times 255).
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)

StateDict = Mapping[str, torch.Tensor]
KeyAdapter = Callable[[StateDict], dict]


def identity_adapter(state_dict: StateDict) -> dict:
    """Keep a flat checkpoint as it is."""
    return dict(state_dict)


@dataclass(frozen=True)
class WeightsFile:
    """One released checkpoint of a zoo model.

    Attributes:
        filename: name of the released file; also how a local path is recognised.
        url: where ``fetch_weights`` downloads it from.
        sha256: hex digest, or None when not yet known (recorded on first download).
        size: bytes, or None when unknown.
        model_kwargs: builder arguments this file needs (e.g. ESPNetv2's width ``s``).
        test_size: (H, W) the file was trained for, when it differs from the spec's.
        score: published mIoU of this file, in percent, and its protocol.
    """

    filename: str
    url: str
    sha256: Optional[str] = None
    size: Optional[int] = None
    model_kwargs: Mapping[str, object] = field(default_factory=dict)
    test_size: Optional[tuple[int, int]] = None
    score: Optional[str] = None


@dataclass(frozen=True)
class ModelSpec:
    """Everything the package knows about one model name.

    Attributes:
        name: zoo name (a contract, see DESIGN.md).
        builder: ``builder(**kwargs) -> nn.Module`` returning the network with random weights.
        num_classes: channels the head outputs; only the first 19 are Cityscapes trainIds.
        mean, std: per-channel normalisation on the 0..255 RGB scale.
        test_size: (H, W) the image is resized to before the forward pass.
        resize: how an image is brought to the network: 'fixed' (exactly ``test_size``,
            EdgeNets), 'fit' (keep the aspect ratio, fit inside ``test_size``: mmcv's
            ``imrescale``) or 'long_side' (keep the ratio, long side = the larger of
            ``test_size``: HRNet's ``base_size``). TTA scales multiply ``test_size``.
        antialias: resize the image with a filter that widens when downscaling (PIL, as in
            EdgeNets' test script) instead of plain bilinear (cv2 INTER_LINEAR, as HRNet and
            mmcv do).
        align_corners: how logits are upsampled.
        logits_at_image_size: True: logits are upsampled to the camera image's size before
            argmax (mmseg, HRNet); False: to the network input size, and the label map is
            resized to the image with nearest neighbour (EdgeNets' test script).
        output_stride: input size / logit size of ``model(x)``.
        tta_scales: the multi-scale test-time augmentation scales of the published protocol.
        tta_merge: how augmented passes are combined: 'logits' (mean of logits), 'exp'
            (HRNet's test code: flips averaged as logits, exp, crops averaged, scales summed)
            or 'softmax' (mmseg's aug_test: mean of the probabilities of every pass).
        size_divisor: network input sides are rounded to a multiple of this (the stride the
            architecture needs so encoder and decoder feature maps line up).
        crop_size: (H, W) window for scales > 1 whose image is larger: those are run in
            crops of this size at a stride of one crop, the last one shifted back inside the
            image, and averaged where they overlap (HRNet's multi_scale_inference).
        weights: released checkpoints; the first is the default.
        adapter: maps an official checkpoint to this package's state-dict keys.
        num_params: parameter count of the default build (checked by the tests).
        paper: published score and its protocol, for the README and benchmark tables.
        backbone_weights: ImageNet weights of the encoder that training may start from
            (``train --backbone-weights``; its ``url`` is the backbone URL), not a checkpoint
            of this model; None when the model has no separately released backbone.
    """

    name: str
    builder: Callable[..., nn.Module]
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    test_size: tuple[int, int]
    resize: str
    align_corners: bool
    output_stride: int
    logits_at_image_size: bool = True
    antialias: bool = False
    tta_scales: tuple[float, ...] = (1.0,)
    tta_merge: str = 'logits'
    size_divisor: int = 1
    crop_size: Optional[tuple[int, int]] = None
    weights: tuple[WeightsFile, ...] = ()
    adapter: KeyAdapter = identity_adapter
    num_params: Optional[int] = None
    paper: str = ''
    backbone_weights: Optional[WeightsFile] = None

    def weights_for(self, path_or_name: Optional[str]) -> Optional[WeightsFile]:
        """Return the released file a local path refers to (by file name); None: the default."""
        if path_or_name is None:
            return self.weights[0] if self.weights else None
        base = str(path_or_name).replace('\\', '/').rsplit('/', 1)[-1]
        for wf in self.weights:
            if wf.filename == base:
                return wf
        return None


def _lazy(module: str, attr: str) -> Callable:
    """Refer to ``cityseg_ros.models.<module>.<attr>`` without importing it until called.

    Keeps ``import cityseg_ros.models`` cheap: a node running ESPNetv2 never imports the
    InternImage code.
    """
    def call(*args, **kwargs):
        import importlib
        return getattr(importlib.import_module(f'cityseg_ros.models.{module}'), attr)(*args,
                                                                                      **kwargs)
    call.__name__ = call.__qualname__ = f'{module}.{attr}'
    return call


_ESPNET_URL = ('https://github.com/sacmehta/EdgeNets/raw/master/model/segmentation/model_zoo/'
               'espnetv2/')
# HRNet-OCR's README links its PyTorch >= 1.1 checkpoints to this release.
_HRNET_URL = 'https://github.com/hsfzxjy/models.storage/releases/download/HRNet-OCR/'
_INTERNIMAGE_URL = 'https://huggingface.co/OpenGVLab/InternImage/resolve/main/'
# The published multi-scale protocol of HRNet-OCR and InternImage (+ flip).
_SIX_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
# torchvision's ImageNet ResNets (IMAGENET1K_V2, the files serdarch/Efficient-ResNet links);
# the hex in each name is the start of its sha256.
_TORCHVISION_URL = 'https://download.pytorch.org/models/'
_RESNET50_IMAGENET = WeightsFile('resnet50-11ad3fa6.pth',
                                 _TORCHVISION_URL + 'resnet50-11ad3fa6.pth',
                                 score='ImageNet-1k top-1 80.86 (torchvision IMAGENET1K_V2)')
_RESNET101_IMAGENET = WeightsFile('resnet101-cd907fc2.pth',
                                  _TORCHVISION_URL + 'resnet101-cd907fc2.pth',
                                  score='ImageNet-1k top-1 81.89 (torchvision IMAGENET1K_V2)')
_SERNET_NO_WEIGHTS = ('No code or weights were released (arXiv 2401.15741, serdarch/'
                      'SERNet-Former): this is an independent implementation; train it. ')


def _sernet_former(name: str, builder: str, num_params: int, backbone: WeightsFile,
                   paper: str) -> ModelSpec:
    # Everything but the test protocol is our choice (the paper gives none): mmseg's
    # Cityscapes defaults, whole 1024x2048 image, logits at 1/4 upsampled bilinearly.
    return ModelSpec(
        name=name,
        builder=_lazy('sernet_former', builder),
        num_classes=19,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        test_size=(1024, 2048),
        resize='fit',
        align_corners=False,
        output_stride=4,
        tta_scales=_SIX_SCALES,
        tta_merge='softmax',
        size_divisor=32,
        weights=(),
        num_params=num_params,
        paper=_SERNET_NO_WEIGHTS + paper,
        backbone_weights=backbone,
    )


ZOO: dict[str, ModelSpec] = {
    'espnetv2': ModelSpec(
        name='espnetv2',
        builder=_lazy('espnetv2', 'espnetv2_city'),
        # Channel 19 is EdgeNets' "background" class, never trained on Cityscapes.
        num_classes=20,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        test_size=(512, 1024),
        resize='fixed',
        antialias=True,
        align_corners=True,
        output_stride=2,
        logits_at_image_size=False,
        # EdgeNets publishes no multi-scale protocol: these scales are ours.
        tta_scales=(0.75, 1.0, 1.25),
        size_divisor=32,
        weights=(
            WeightsFile(
                'espnetv2_s_2.0_city_1024x512.pth',
                _ESPNET_URL + 'espnetv2_s_2.0_city_1024x512.pth',
                sha256='a72d59699801c7ce8e8b89a53af9097eaaa60dc12180ecde86fd700ba1222fe8',
                size=3376094, model_kwargs={'s': 2.0}, score='66.4 val, single scale 1024x512'),
            WeightsFile(
                'espnetv2_s_2.0_city_512x256.pth', _ESPNET_URL + 'espnetv2_s_2.0_city_512x256.pth',
                sha256='6b6f26b567c82bb4d6624387f24ed505613edafad19222e1707993fbe0d1d8f6',
                size=3376094, model_kwargs={'s': 2.0}, test_size=(256, 512)),
            WeightsFile(
                'espnetv2_s_0.5_city_512x256.pth', _ESPNET_URL + 'espnetv2_s_0.5_city_512x256.pth',
                sha256='63e398dec148f63c8ad117497864f99f021926b347fd4ee608036c36041e7f36',
                size=469319, model_kwargs={'s': 0.5}, test_size=(256, 512)),
        ),
        paper='ESPNetv2 (Mehta et al., CVPR 2019): 66.4 val mIoU at 1024x512, s=2.0',
    ),
    'hrnet_w48_ocr': ModelSpec(
        name='hrnet_w48_ocr',
        builder=_lazy('hrnet_ocr', 'hrnet_w48_ocr'),
        num_classes=19,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        test_size=(1024, 2048),
        resize='long_side',
        align_corners=True,
        output_stride=4,
        tta_scales=_SIX_SCALES,
        tta_merge='exp',
        crop_size=(1024, 2048),
        weights=(
            WeightsFile('hrnet_ocr_cs_trainval_8227_torch11.pth',
                        _HRNET_URL + 'hrnet_ocr_cs_trainval_8227_torch11.pth',
                        score='82.27 test server, train+val, 6 scales + flip'),
        ),
        adapter=_lazy('hrnet_ocr', 'checkpoint_filter_fn'),
        num_params=70_372_678,
        paper='HRNetV2-W48 + OCR (Yuan et al., ECCV 2020): 82.27 Cityscapes test (train+val '
              'model, 6 scales + flip); the train-only checkpoint gives 81.6 val single scale',
    ),
    'upernet_internimage_l': ModelSpec(
        name='upernet_internimage_l',
        builder=_lazy('internimage', 'upernet_internimage_l'),
        # Both official configs keep mmseg's 150-class head: channels 0..18 are trained.
        num_classes=150,
        mean=IMAGENET_MEAN,  # mmseg's img_norm_cfg: the same statistics, RGB
        std=IMAGENET_STD,
        test_size=(1024, 2048),
        resize='fit',
        align_corners=False,
        output_stride=4,
        tta_scales=_SIX_SCALES,
        tta_merge='softmax',
        weights=(
            WeightsFile('upernet_internimage_l_512x1024_160k_cityscapes.pth',
                        _INTERNIMAGE_URL + 'upernet_internimage_l_512x1024_160k_cityscapes.pth',
                        sha256='59808301f09cbd09796127a1d0ab7a294be4c961fd726c4716d931016e3ed7a0',
                        score='84.41 val 6 scales + flip; 83.68 single scale'),
        ),
        adapter=_lazy('internimage', 'checkpoint_filter_fn'),
        paper='UperNet + InternImage-L (Wang et al., CVPR 2023): 84.41 val (6 scales + flip), '
              '83.68 single scale',
    ),
    'upernet_internimage_xl': ModelSpec(
        name='upernet_internimage_xl',
        builder=_lazy('internimage', 'upernet_internimage_xl'),
        num_classes=150,
        mean=IMAGENET_MEAN,  # mmseg's img_norm_cfg: the same statistics, RGB
        std=IMAGENET_STD,
        test_size=(1024, 2048),
        resize='fit',
        align_corners=False,
        output_stride=4,
        tta_scales=_SIX_SCALES,
        tta_merge='softmax',
        weights=(
            WeightsFile('upernet_internimage_xl_512x1024_160k_mapillary2cityscapes.pth',
                        _INTERNIMAGE_URL
                        + 'upernet_internimage_xl_512x1024_160k_mapillary2cityscapes.pth',
                        sha256='9fd1e8e24d776c34a601eade5b47a6e3751ea5c9eec15bf7fcbbabdf036f7c95',
                        score='86.42 val 6 scales + flip; 86.20 single scale'),
        ),
        adapter=_lazy('internimage', 'checkpoint_filter_fn'),
        paper='UperNet + InternImage-XL, Mapillary pre-training (Wang et al., CVPR 2023): '
              '86.42 val (6 scales + flip), 86.20 single scale',
    ),
    'sernet_former_r50': _sernet_former(
        'sernet_former_r50', 'sernet_former_r50', 38_316_595, _RESNET50_IMAGENET,
        'Paper (Erisen, CVPRW 2024): 73.31 mIoU for its ResNet-50 row, protocol not given'),
    'sernet_former_r101': _sernet_former(
        'sernet_former_r101', 'sernet_former_r101', 57_308_723, _RESNET101_IMAGENET,
        'Paper (Erisen, CVPRW 2024): 77.04 mIoU for Efficient-ResNet (R101), protocol not '
        'given'),
    'sernet_former': _sernet_former(
        'sernet_former', 'sernet_former', 57_308_723, _RESNET101_IMAGENET,
        'Paper (Erisen, CVPRW 2024): 84.83 Cityscapes test server, 87.35 val (protocol not '
        'given); ours: Efficient-ResNet-101, all modules, output stride 8'),
}


def model_names() -> list[str]:
    """Return the zoo's model names, sorted."""
    return sorted(ZOO)


def get_spec(name: str) -> ModelSpec:
    """Look up a zoo entry; raises ZooError listing the valid names."""
    try:
        return ZOO[name]
    except KeyError:
        valid = ', '.join(model_names())
        raise ZooError(f'unknown model {name!r}; choose one of: {valid}') from None


def build_model(name: str, weights_file: Optional[WeightsFile] = None) -> nn.Module:
    """Build a zoo model with random weights, in eval mode.

    Args:
        name: zoo name.
        weights_file: a released file whose ``model_kwargs`` select the variant (e.g. width);
            the spec's default file when None.
    """
    spec = get_spec(name)
    wf = weights_file or spec.weights_for(None)
    model = spec.builder(**(dict(wf.model_kwargs) if wf else {}))
    model.output_stride = spec.output_stride
    model.zoo_name = name
    return model.eval()
