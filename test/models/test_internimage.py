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

"""UperNet + InternImage-L/-XL: official key layout, golden outputs, fp16 checkpoints.

The golden fixtures (``../shared/reference/GOLDEN.md``) hold the official code's outputs under
synthetic weights; each full-size model is built once per module and freed before the next.
"""

from dataclasses import dataclass
import gc
import json

from cityseg_ros.checkpoints import load_checkpoint
from cityseg_ros.labels import CLASS_NAMES, PALETTE
from cityseg_ros.models import build_model
from cityseg_ros.models.internimage import checkpoint_filter_fn, UperNetInternImage
from cityseg_ros.models.synthetic import (read_manifest, state_dict_digest, synthetic_input,
                                          synthetic_state_dict)
import numpy as np
import pytest
import torch


@dataclass(frozen=True)
class Variant:
    zoo: str
    manifest: str
    digest: str  # GOLDEN.md section 1
    num_params: int  # the manifest's header: "params all=..."
    widths: tuple


VARIANTS = {
    'l': Variant('upernet_internimage_l', 'keys_upernet_internimage_l_cityscapes.txt',
                 '5d1c439d289c01b5c192e8007e91d59946a4c21c6ccf51656c636920057e548c',
                 255_600_606, (160, 320, 640, 1280)),
    'xl': Variant('upernet_internimage_xl', 'keys_upernet_internimage_xl_mapillary2cityscapes.txt',
                  '3d3f7076502807e6651d063f4ce4bbcc3605f7f9891402758eb9a7dad5395b08',
                  367_733_000, (192, 384, 768, 1536)),
}
INPUTS = ('1x3x128x256', '2x3x72x136')
OUTPUTS = ('stage0', 'stage1', 'stage2', 'stage3', 'decode_logits', 'aux_head_logits')
# GOLDEN.md section 5: float32 on CPU.
TOLERANCE = 2e-5
# What mmcv's save_checkpoint and mmseg 0.27's train script put in 'meta': plain Python types.
MMCV_META = {
    'mmcv_version': '1.5.0',
    'time': 'Thu Nov 17 09:30:00 2022',
    'mmseg_version': '0.27.0+31c962d',
    'config': "norm_cfg = dict(type='SyncBN', requires_grad=True)\nmodel = dict(...)\n",
    'CLASSES': tuple(CLASS_NAMES),
    'PALETTE': [[int(v) for v in PALETTE[i]] for i in range(len(CLASS_NAMES))],
    'env_info': 'sys.platform: linux\nPython: 3.7.13\nCUDA available: True',
    'seed': 1234,
    'exp_name': 'upernet_internimage_l_512x1024_160k_cityscapes.py',
    'hook_msgs': {'last_ckpt': 'work_dirs/iter_160000.pth'},
    'epoch': 1,
    'iter': 160000,
}


@dataclass
class Case:
    variant: Variant
    rows: list
    state: dict
    model: UperNetInternImage


@pytest.fixture(scope='module', params=sorted(VARIANTS))
def case(request, shared):
    """Build one full-size model and its synthetic state dict; free both afterwards."""
    variant = VARIANTS[request.param]
    rows = read_manifest(shared('reference', variant.manifest))
    state = synthetic_state_dict(rows)
    model = build_model(variant.zoo)
    model.load_state_dict(state, strict=True)
    yield Case(variant, rows, state, model)
    del model, state
    gc.collect()


def _golden(shared, case: Case, size: str) -> dict:
    name = case.variant.zoo
    with np.load(shared('reference', 'golden', f'{name}_{size}.npz'), allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def _normalised_errors(outs: dict, golden: dict) -> dict:
    errors = {}
    for key in OUTPUTS:
        ref = torch.from_numpy(golden[key])
        assert outs[key].shape == ref.shape, key
        assert torch.isfinite(outs[key]).all(), key
        errors[key] = float((outs[key] - ref).abs().max()) / max(1.0, float(ref.abs().max()))
    return errors


def _reset(case: Case) -> None:
    case.model.load_state_dict(case.state, strict=True)
    case.model.backbone.set_dcn_core('auto')


def test_synthetic_state_dict_digest_matches_golden(case):
    assert state_dict_digest(case.state) == case.variant.digest


def test_golden_json_records_the_same_digest(shared, case):
    for size in INPUTS:
        path = shared('reference', 'golden', f'{case.variant.zoo}_{size}.json')
        assert json.loads(path.read_text())['state_dict_sha256'] == case.variant.digest


def test_state_dict_has_the_official_keys_shapes_and_order(case):
    ours = [(k, tuple(v.shape), str(v.dtype).replace('torch.', ''))
            for k, v in case.model.state_dict().items()]
    names = {row[0] for row in ours}
    official = {row[0] for row in case.rows}
    assert sorted(official - names) == []
    assert sorted(names - official) == []
    # Same order too: synthetic weights drawn from our own key list equal the fixtures'.
    assert ours == case.rows


def test_parameter_count_and_widths(case):
    assert sum(p.numel() for p in case.model.parameters()) == case.variant.num_params
    assert case.model.backbone.channels == case.variant.widths
    assert case.model.output_stride == 4


@pytest.mark.slow
@pytest.mark.parametrize('size', INPUTS)
def test_outputs_match_the_official_code(shared, case, size):
    golden = _golden(shared, case, size)
    x = synthetic_input(golden['input'].shape)
    assert torch.equal(x, torch.from_numpy(golden['input']))
    _reset(case)
    with torch.inference_mode():
        outs = case.model.forward_all(x)
    errors = _normalised_errors(outs, golden)
    assert max(errors.values()) <= TOLERANCE, errors


@pytest.mark.slow
def test_grid_sample_core_matches_the_official_code(shared, case):
    golden = _golden(shared, case, '2x3x72x136')
    _reset(case)
    case.model.backbone.set_dcn_core('grid_sample')
    try:
        with torch.inference_mode():
            outs = case.model.forward_all(torch.from_numpy(golden['input']))
    finally:
        case.model.backbone.set_dcn_core('auto')
    errors = _normalised_errors(outs, golden)
    assert max(errors.values()) <= TOLERANCE, errors


def test_forward_returns_decode_logits_at_stride_4(case):
    # 40x72 is no multiple of 32: the levels are 10x18, 5x9, 3x5, 2x3 (ceil at each stride 2).
    _reset(case)
    x = synthetic_input((1, 3, 40, 72))
    with torch.inference_mode():
        logits = case.model(x)
        outs = case.model.forward_all(x)
    assert logits.shape == (1, 150, 10, 18)
    assert torch.equal(logits, outs['decode_logits'])
    sizes = [tuple(outs[f'stage{i}'].shape[-2:]) for i in range(4)]
    assert sizes == [(10, 18), (5, 9), (3, 5), (2, 3)]


def test_adapter_unwraps_mmcv_checkpoints_and_keeps_flat_ones():
    tensor = torch.zeros(1)
    assert checkpoint_filter_fn({'state_dict': {'a': tensor}, 'meta': {}}) == {'a': tensor}
    assert checkpoint_filter_fn({'a': tensor}) == {'a': tensor}


@pytest.mark.slow
def test_official_layout_loads_strictly(case, tmp_path):
    path = tmp_path / 'official_layout.pth'
    torch.save({'meta': MMCV_META, 'state_dict': case.state}, path)
    with torch.no_grad():
        for p in case.model.parameters():
            p.zero_()
    load_checkpoint(case.model, path)
    loaded = case.model.state_dict()
    assert [k for k, v in case.state.items() if not torch.equal(loaded[k], v)] == []


@pytest.mark.slow
def test_fp16_checkpoint_loads_into_fp32_model(shared, case, tmp_path):
    # The released files are half precision: loading casts them in the copy, the model stays
    # float32 and holds exactly the fp16-rounded values.
    half = {k: v.half() if v.is_floating_point() else v for k, v in case.state.items()}
    path = tmp_path / 'official_layout_fp16.pth'
    torch.save({'meta': MMCV_META, 'state_dict': half}, path)
    load_checkpoint(case.model, path)
    loaded = case.model.state_dict()
    assert {v.dtype for v in loaded.values()} == {torch.float32, torch.int64}
    assert [k for k, v in half.items() if not torch.equal(loaded[k], v.to(loaded[k].dtype))] == []

    golden = _golden(shared, case, '2x3x72x136')
    with torch.inference_mode():
        outs = case.model.forward_all(torch.from_numpy(golden['input']))
    # Rounding every weight to 11 significant bits moves the outputs by about 1e-3 (normalised):
    # far above float32 noise, far below the mistakes of GOLDEN.md (offset_scale: 0.2-0.4).
    errors = _normalised_errors(outs, golden)
    assert 1e-5 < max(errors.values()) < 1e-2, errors
    _reset(case)


@pytest.mark.parametrize('dtype, atol', [(torch.float16, 2e-3), (torch.bfloat16, 2e-2)])
def test_half_precision_weights_run_close_to_float32(dtype, atol):
    # model.half() (e.g. to keep an fp16 release in fp16 on a GPU): DCNv3 still samples in
    # float32. A narrow build is enough to exercise every layer type.
    torch.manual_seed(0)
    model = UperNetInternImage(32, (1, 1, 2, 1), (2, 4, 8, 16), decode_channels=64,
                               aux_channels=32, num_classes=19).eval()
    x = synthetic_input((1, 3, 64, 96))
    with torch.inference_mode():
        expected = model(x)
        out = model.to(dtype)(x.to(dtype))
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), expected, rtol=0, atol=atol)
