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

"""DCNv3: both pure-PyTorch sampling cores against a per-point loop and closed-form cases."""

import math

from cityseg_ros.models import dcnv3
from cityseg_ros.models.dcnv3 import DCNv3
import pytest
import torch
import torch.nn.functional as F

CORE_NAMES = ('gather', 'grid_sample')


def _reference_loop(x, offset, mask, k, stride, pad, dilation, group, offset_scale):
    """Evaluate DCNv3 point by point in float64, as the CUDA kernel does it.

    Output pixel (i, j), group g, point p = ix * k + iy samples x bilinearly (zero outside) at
    row ``i * stride + c + (iy * dilation - c0 + off_y) * s`` and the matching column, with
    ``c0 = dilation * (k - 1) // 2`` and ``c = c0 - pad``.
    """
    x = x.double()
    offset = offset.double()
    mask = mask.double()
    n, h, w, c = x.shape
    _, h_out, w_out, _ = offset.shape
    cg = c // group
    c0 = dilation * (k - 1) // 2
    out = torch.zeros(n, h_out, w_out, c, dtype=torch.float64)

    def pixel(b, row, col, g):
        if 0 <= row < h and 0 <= col < w:
            return x[b, row, col, g * cg:(g + 1) * cg]
        return torch.zeros(cg, dtype=torch.float64)

    for b in range(n):
        for i in range(h_out):
            for j in range(w_out):
                for g in range(group):
                    acc = torch.zeros(cg, dtype=torch.float64)
                    for ix in range(k):
                        for iy in range(k):
                            p = ix * k + iy
                            ox, oy = offset[b, i, j, (g * k * k + p) * 2:(g * k * k + p) * 2 + 2]
                            py = i * stride + c0 - pad + (iy * dilation - c0 + oy) * offset_scale
                            px = j * stride + c0 - pad + (ix * dilation - c0 + ox) * offset_scale
                            y0, x0 = math.floor(py), math.floor(px)
                            fy, fx = py - y0, px - x0
                            value = ((1 - fy) * (1 - fx) * pixel(b, y0, x0, g)
                                     + (1 - fy) * fx * pixel(b, y0, x0 + 1, g)
                                     + fy * (1 - fx) * pixel(b, y0 + 1, x0, g)
                                     + fy * fx * pixel(b, y0 + 1, x0 + 1, g))
                            acc += mask[b, i, j, g * k * k + p] * value
                    out[b, i, j, g * cg:(g + 1) * cg] = acc
    return out


def _inputs(n, h, w, c, group, k, stride, pad, dilation, offset_std, seed=0):
    gen = torch.Generator().manual_seed(seed)
    h_out = dcnv3.output_size(h, k, stride, pad, dilation)
    w_out = dcnv3.output_size(w, k, stride, pad, dilation)
    x = torch.randn(n, h, w, c, generator=gen)
    offset = torch.randn(n, h_out, w_out, group * k * k * 2, generator=gen) * offset_std
    mask = torch.randn(n, h_out, w_out, group, k * k, generator=gen).softmax(-1)
    return x, offset, mask.reshape(n, h_out, w_out, -1)


@pytest.mark.parametrize('core', CORE_NAMES)
@pytest.mark.parametrize('k, stride, pad, dilation, scale, offset_std', [
    (3, 1, 1, 1, 2.0, 1.0),  # InternImage's configuration
    (3, 1, 1, 1, 1.0, 4.0),  # offsets far outside the map
    (3, 2, 1, 2, 1.5, 0.7),  # strided and dilated
    (5, 1, 2, 1, 1.0, 0.5),  # bigger kernel
    (3, 1, 0, 1, 2.0, 0.5),  # no padding: smaller output
])
def test_core_matches_reference_loop(core, k, stride, pad, dilation, scale, offset_std):
    x, offset, mask = _inputs(2, 5, 7, 8, 2, k, stride, pad, dilation, offset_std)
    expected = _reference_loop(x, offset, mask, k, stride, pad, dilation, 2, scale)
    out = dcnv3.CORES[core](x, offset, mask, k, stride, pad, dilation, 2, scale)
    assert out.shape == expected.shape and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=2e-6)


@pytest.mark.parametrize('core', CORE_NAMES)
def test_integer_offsets_sample_pixels_exactly(core):
    # Offsets on pixel centres, at and beyond the border: each term is one pixel or zero.
    x, _, mask = _inputs(1, 4, 6, 4, 1, 3, 1, 1, 1, 0.0)
    offset = torch.randint(-3, 4, (1, 4, 6, 18), generator=torch.Generator().manual_seed(1))
    offset = offset.float()
    expected = _reference_loop(x, offset, mask, 3, 1, 1, 1, 1, 1.0)
    out = dcnv3.CORES[core](x, offset, mask, 3, 1, 1, 1, 1, 1.0)
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize('core', CORE_NAMES)
@pytest.mark.parametrize('scale', [1.0, 2.0])
def test_zero_offsets_and_uniform_mask_give_a_box_filter(core, scale):
    # The kernel grid is scaled by offset_scale too: at 2.0 the taps are 2 pixels apart, so
    # the operator is a dilated 3x3 mean with zero padding.
    n, h, w, c, group = 2, 6, 9, 12, 3
    x = torch.randn(n, h, w, c, generator=torch.Generator().manual_seed(2))
    offset = torch.zeros(n, h, w, group * 18)
    mask = torch.full((n, h, w, group * 9), 1 / 9)
    out = dcnv3.CORES[core](x, offset, mask, 3, 1, 1, 1, group, scale)
    d = int(scale)
    box = torch.full((c, 1, 3, 3), 1 / 9)
    expected = F.conv2d(x.permute(0, 3, 1, 2), box, padding=d, dilation=d, groups=c)
    torch.testing.assert_close(out, expected.permute(0, 2, 3, 1), rtol=0, atol=1e-6)


@pytest.mark.parametrize('core', CORE_NAMES)
def test_one_hot_mask_and_unit_offset_shift_the_map(core):
    # All weight on the centre point, moved one pixel right: out[.., j] = x[.., j + 1].
    x = torch.randn(1, 3, 5, 2, generator=torch.Generator().manual_seed(3))
    offset = torch.zeros(1, 3, 5, 9, 2)
    offset[..., 0] = 1.0
    mask = F.one_hot(torch.full((1, 3, 5), 4), 9).float()
    out = dcnv3.CORES[core](x, offset.view(1, 3, 5, 18), mask, 3, 1, 1, 1, 1, 1.0)
    expected = F.pad(x[:, :, 1:], (0, 0, 0, 1))
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize('core', CORE_NAMES)
@pytest.mark.parametrize('dtype, atol', [(torch.float16, 1e-3), (torch.bfloat16, 8e-3)])
def test_core_keeps_low_precision_dtype_and_samples_in_float32(core, dtype, atol):
    # Positions are computed in float32: at x ~ 60 a half-precision position is off by up to
    # 1/32 pixel, a bfloat16 one by 1/4; what remains is the rounding of the output.
    x, offset, mask = _inputs(1, 4, 64, 16, 2, 3, 1, 1, 1, 1.0)
    x, offset, mask = x.to(dtype), offset.to(dtype), mask.to(dtype)
    out = dcnv3.CORES[core](x, offset, mask, 3, 1, 1, 1, 2, 2.0)
    expected = _reference_loop(x.float(), offset.float(), mask.float(), 3, 1, 1, 1, 2, 2.0)
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=atol)


def test_cores_have_the_same_gradients():
    # Training needs the gather core to be differentiable too (no in-place updates then).
    x, offset, mask = _inputs(1, 5, 6, 8, 2, 3, 1, 1, 1, 0.7, seed=5)
    grads = []
    for core in CORE_NAMES:
        inputs = [t.clone().requires_grad_() for t in (x, offset, mask)]
        out = dcnv3.CORES[core](*inputs, 3, 1, 1, 1, 2, 2.0)
        grads.append(torch.autograd.grad(out.square().sum(), inputs))
    for ours, upstream in zip(*grads):
        torch.testing.assert_close(ours, upstream, rtol=1e-4, atol=1e-4)


def test_gather_core_survives_nan_offsets():
    # A NaN position must not become an out-of-range row index.
    x, offset, mask = _inputs(1, 4, 5, 8, 2, 3, 1, 1, 1, 1.0)
    offset[0, 1, 2, :] = float('nan')
    out = dcnv3.dcnv3_core_gather(x, offset, mask, 3, 1, 1, 1, 2, 2.0)
    assert out.shape == x.shape


@pytest.fixture(scope='module')
def module() -> DCNv3:
    torch.manual_seed(0)
    dcn = DCNv3(32, group=2, offset_scale=2.0).eval()
    with torch.no_grad():
        # Offsets of a few pixels and a non-uniform mask, so that sampling really deforms.
        dcn.offset.weight.normal_(0, 0.3)
        dcn.offset.bias.normal_(0, 1.0)
        dcn.mask.weight.normal_(0, 0.3)
    return dcn


def test_module_keys_are_upstream_names(module):
    keys = set(module.state_dict())
    assert keys == {'dw_conv.0.weight', 'dw_conv.0.bias', 'dw_conv.1.1.weight', 'dw_conv.1.1.bias',
                    'offset.weight', 'offset.bias', 'mask.weight', 'mask.bias',
                    'input_proj.weight', 'input_proj.bias', 'output_proj.weight',
                    'output_proj.bias'}
    assert module.offset.out_features == 2 * 9 * 2 and module.mask.out_features == 2 * 9


def test_module_cores_agree(module):
    x = torch.randn(2, 7, 11, 32, generator=torch.Generator().manual_seed(4))
    outs = {}
    with torch.inference_mode():
        for core in ('auto', *CORE_NAMES):
            module.core = core
            outs[core] = module(x)
    module.core = 'auto'
    assert outs['auto'].shape == x.shape
    torch.testing.assert_close(outs['gather'], outs['grid_sample'], rtol=0, atol=1e-5)
    assert torch.equal(outs['auto'], outs[dcnv3.DEFAULT_CORE])


def test_registered_core_is_used_by_the_module(module, monkeypatch):
    calls = []

    def traced(*args):
        calls.append(args[3:])
        return dcnv3.dcnv3_core_grid_sample(*args)

    monkeypatch.setitem(dcnv3.CORES, 'traced', None)
    dcnv3.register_core('traced', traced)
    module.core = 'traced'
    try:
        with torch.inference_mode():
            module(torch.randn(1, 3, 4, 32))
    finally:
        module.core = 'auto'
    assert calls == [(3, 1, 1, 1, 2, 2.0)]


def test_register_core_refuses_auto():
    with pytest.raises(ValueError, match='reserved'):
        dcnv3.register_core('auto', dcnv3.dcnv3_core_gather)


def test_channels_must_divide_into_groups():
    with pytest.raises(ValueError, match='multiple of group'):
        DCNv3(30, group=4)
