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

"""ESPNetv2: the official EdgeNets checkpoints load strictly and the network runs at any size."""

import copy
import math

from cityseg_ros.models.espnetv2 import ESPNetv2, espnetv2_city
import numpy as np
import pytest
import torch
import torch.nn.functional as F

# Counted on EdgeNets' own ESPNetv2Segmentation(s, classes=20, dataset='city').
NUM_PARAMS = {2.0: 789_242, 0.5: 80_342}
OFFICIAL_FILES = {
    'espnetv2_s_2.0_city_1024x512.pth': 2.0,
    'espnetv2_s_2.0_city_512x256.pth': 2.0,
    'espnetv2_s_0.5_city_512x256.pth': 0.5,
}
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


@pytest.fixture(scope='module')
def model_s2() -> ESPNetv2:
    torch.manual_seed(0)
    return espnetv2_city().eval()


def _read_manifest(path) -> dict:
    """Parse ``key<TAB>shape<TAB>dtype`` lines (``#`` starts a comment) into {key: shape}."""
    shapes = {}
    for line in path.read_text().splitlines():
        if not line or line.startswith('#'):
            continue
        key, shape, _ = line.split('\t')
        shapes[key] = tuple(int(v) for v in shape.strip('()').split(',') if v.strip())
    return shapes


def _load_official(shared, name: str) -> dict:
    path = shared('data', 'weights', 'espnetv2', name)
    return torch.load(path, weights_only=True, map_location='cpu')


def _randomize_batchnorm(model: torch.nn.Module, seed: int = 0) -> None:
    """Give every BatchNorm non-trivial statistics, so that folding them is really tested."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(c, generator=gen) * 0.1)


def test_state_dict_keys_and_shapes_equal_official_manifest(shared, model_s2):
    expected = _read_manifest(shared('reference', 'keys_espnetv2_s2.0_city.txt'))
    ours = {k: tuple(v.shape) for k, v in model_s2.state_dict().items()}
    assert sorted(set(expected) - set(ours)) == []
    assert sorted(set(ours) - set(expected)) == []
    assert {k: s for k, s in ours.items() if expected[k] != s} == {}


@pytest.mark.parametrize('name', sorted(OFFICIAL_FILES))
def test_official_checkpoint_loads_strictly(shared, name):
    state = _load_official(shared, name)
    model = espnetv2_city(s=OFFICIAL_FILES[name])
    result = model.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    key = 'bu_dec_l4.merge_layer.3.bias'
    assert torch.equal(model.state_dict()[key], state[key])


def test_forward_gives_half_resolution_logits(model_s2):
    with torch.inference_mode():
        out = model_s2(torch.randn(2, 3, 64, 128))
    assert out.shape == (2, 20, 32, 64)
    assert torch.isfinite(out).all()
    assert model_s2.output_stride == 2


@pytest.mark.parametrize('height, width', [(60, 100), (65, 129), (17, 33)])
def test_forward_accepts_sizes_upstream_rejects(model_s2, height, width):
    # Upstream adds 2x-upsampled decoder maps to encoder skips, which fails unless both sides
    # are 0 or 15 modulo 16; ours upsamples to the skip's size instead.
    with torch.inference_mode():
        out = model_s2(torch.randn(1, 3, height, width))
    assert out.shape == (1, 20, math.ceil(height / 2), math.ceil(width / 2))
    assert torch.isfinite(out).all()


def test_parameter_count_of_s2_is_pinned(model_s2):
    assert sum(p.numel() for p in model_s2.parameters()) == NUM_PARAMS[2.0]


def test_s05_builds_and_runs():
    model = espnetv2_city(s=0.5).eval()
    assert sum(p.numel() for p in model.parameters()) == NUM_PARAMS[0.5]
    with torch.inference_mode():
        assert model(torch.randn(1, 3, 64, 128)).shape == (1, 20, 32, 64)


def test_unknown_width_raises_with_valid_choices():
    with pytest.raises(ValueError, match='s=3.0 .*2.0'):
        espnetv2_city(s=3.0)


def test_fuse_bn_keeps_outputs():
    torch.manual_seed(0)
    model = espnetv2_city().eval()
    _randomize_batchnorm(model)
    x = torch.randn(1, 3, 64, 128)
    with torch.inference_mode():
        before = model(x)
        after = model.fuse_bn()(x)
    # Only the BatchNorms that follow a sum, not a convolution, are left.
    left = {name for name, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert left and all(n.endswith('br_after_cat.bn') or n.startswith('bu_br_l') for n in left)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-4)


def test_channels_last_gives_the_same_logits(model_s2):
    x = torch.randn(1, 3, 64, 128)
    model = espnetv2_city().eval()
    model.load_state_dict(model_s2.state_dict())
    with torch.inference_mode():
        plain = model(x)
        model.to(memory_format=torch.channels_last)
        cl = model(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(cl, plain, rtol=0, atol=1e-4)


def test_official_weights_segment_a_real_frame(shared, cityscapes_root):
    cv2 = pytest.importorskip('cv2')
    stem = 'train/aachen/aachen_000000_000019'
    bgr = cv2.imread(str(cityscapes_root / 'leftImg8bit' / f'{stem}_leftImg8bit.png'))
    gt = cv2.imread(str(cityscapes_root / 'gtFine' / f'{stem}_gtFine_labelTrainIds.png'),
                    cv2.IMREAD_UNCHANGED)
    # EdgeNets test_segmentation.py: RGB, bilinear resize to the trained size, /255, ImageNet.
    rgb = cv2.resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), (512, 256),
                     interpolation=cv2.INTER_LINEAR)
    x = (rgb.astype(np.float32) / 255 - IMAGENET_MEAN) / IMAGENET_STD
    x = torch.from_numpy(x.transpose(2, 0, 1).copy())[None]
    model = espnetv2_city(s=2.0).eval()
    model.load_state_dict(_load_official(shared, 'espnetv2_s_2.0_city_512x256.pth'))
    with torch.inference_mode():
        logits = F.interpolate(model(x), size=(256, 512), mode='bilinear', align_corners=True)
    labels = logits.argmax(1)[0].numpy()
    gt = cv2.resize(gt, (512, 256), interpolation=cv2.INTER_NEAREST)
    valid = gt != 255
    # 0.906 measured (a training frame); random weights score about 0.05.
    assert (labels[valid] == gt[valid]).mean() > 0.85
    assert not (labels == 19).any()  # EdgeNets' untrained "background" channel never wins


def _fused_pair(seed: int = 0, s: float = 2.0):
    """Return a fused model with non-trivial BatchNorms, and a copy that runs its modules."""
    torch.manual_seed(seed)
    model = espnetv2_city(s=s).eval()
    _randomize_batchnorm(model, seed)
    model.fuse_bn().to(memory_format=torch.channels_last)
    reference = copy.deepcopy(model)
    reference.use_cpu_plan = False
    return model, reference


@pytest.mark.parametrize('height, width, s', [(64, 128, 2.0), (65, 129, 2.0), (96, 160, 2.0),
                                              (64, 128, 0.5)])
@pytest.mark.parametrize('threads', [1, 2])
def test_cpu_plan_logits_are_bit_identical_to_the_modules(height, width, s, threads):
    model, reference = _fused_pair(s=s)
    x = torch.randn(1, 3, height, width).contiguous(memory_format=torch.channels_last)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with torch.inference_mode():
            expected = reference(x)  # the modules with two threads: ATen's kernel choice
            torch.set_num_threads(threads)
            plan = model(x)
    finally:
        torch.set_num_threads(before)
    assert model._plan is not None  # the plan ran
    assert torch.equal(plan, expected)


def test_cpu_plan_is_bit_identical_on_a_real_frame(shared, cityscapes_root):
    cv2 = pytest.importorskip('cv2')
    stem = 'train/aachen/aachen_000000_000019'
    bgr = cv2.imread(str(cityscapes_root / 'leftImg8bit' / f'{stem}_leftImg8bit.png'))
    rgb = cv2.resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), (1024, 512),
                     interpolation=cv2.INTER_AREA)
    x = (rgb.astype(np.float32) / 255 - IMAGENET_MEAN) / IMAGENET_STD
    x = torch.from_numpy(x.transpose(2, 0, 1).copy())[None]
    x = x.contiguous(memory_format=torch.channels_last)
    model = espnetv2_city(s=2.0).eval()
    model.load_state_dict(_load_official(shared, 'espnetv2_s_2.0_city_1024x512.pth'))
    model.fuse_bn().to(memory_format=torch.channels_last)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with torch.inference_mode():
            model.use_cpu_plan = False
            expected = model(x)
            model.use_cpu_plan = True
            torch.set_num_threads(1)
            plan = model(x)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(plan, expected)


def test_cpu_plan_follows_in_place_weight_changes():
    model, _ = _fused_pair()
    x = torch.randn(1, 3, 64, 128).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        before = model(x)
    with torch.no_grad():
        model.bu_dec_l4.merge_layer[3].bias[3] += 5.0
    with torch.inference_mode():
        after = model(x)
    torch.testing.assert_close(after[:, 3] - before[:, 3], torch.full_like(after[:, 3], 5.0))


def test_cpu_plan_is_not_used_for_training_grad_or_unfused_models():
    model, _ = _fused_pair()
    x = torch.randn(1, 3, 64, 128)
    with torch.no_grad():
        assert model._plan_for(x) is not None
    assert model._plan_for(x) is None  # gradients enabled
    with torch.no_grad():
        assert espnetv2_city().eval()._plan_for(x) is None  # not fused
        assert model._plan_for(x.double()) is None
        with torch.autocast('cpu', dtype=torch.bfloat16):
            assert model._plan_for(x) is None
        model.train()
        assert model._plan_for(x) is None


def test_regrouped_convolution_is_bit_identical():
    from cityseg_ros.models.espnetv2 import _conv, _Conv, _regrouped

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(128, 48, 3, padding=1, groups=16).eval()
    x = torch.randn(1, 128, 40, 72).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert torch.equal(_conv(x, _regrouped(conv, 4)), _conv(x, _Conv.of(conv)))
