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

"""HRNetV2-W48 + OCR: the official key layout loads strictly and the outputs match the golden."""

import copy
import hashlib
import json

from cityseg_ros.bench import hrnet_table
from cityseg_ros.checkpoints import load_checkpoint
from cityseg_ros.errors import CheckpointError, ConfigError
from cityseg_ros.models.hrnet_ocr import (BasicBlock, checkpoint_filter_fn, HighResolutionModule,
                                          hrnet_w48_ocr, HRNetOCR, ObjectAttentionBlock,
                                          StageCfg)
from cityseg_ros.models.synthetic import (read_manifest, state_dict_digest, synthetic_input,
                                          synthetic_state_dict)
from cityseg_ros.models.zoo import build_model, get_spec
import numpy as np
import pytest
import torch

MANIFEST = 'keys_hrnet_ocr_w48.txt'
# GOLDEN.md section 1 (seed 0) and section 2 (seed 1).
MANIFEST_ROWS = 1891
WEIGHTS_SHA256 = 'f7f600be738a9a98304bdbca82c108e789f8b7f09f6df40974f7ae36b8ecd572'
INPUT_SHA256 = {
    (1, 3, 64, 128): '4d0154baa9cca8b2863f1ad14b7e7a5d5bb4dfd8d398f630ab162c9ad5a9a225',
    (2, 3, 72, 136): '762f7674051c9c4ef98edb0368f0d8ae464c07c49b91297d73770f32b231d387',
}
GOLDEN = ('hrnet_w48_ocr_1x3x64x128', 'hrnet_w48_ocr_2x3x72x136')
# GOLDEN.md section 5: a float32 CPU candidate, max|ours - golden| <= K * max(1, max|golden|).
K = 2e-5
# Counted on the official HighResolutionNet with the config above (also in the key manifest).
NUM_PARAMS = 70_372_678
RELEASE = 'hrnet_ocr_cs_trainval_8227_torch11.pth'


@pytest.fixture(scope='module')
def rows(shared):
    return read_manifest(shared('reference', MANIFEST))


@pytest.fixture(scope='module')
def official_sd(rows):
    """Return the synthetic weights in the released file's layout (``model.*`` + ``loss.*``)."""
    return synthetic_state_dict(rows)


@pytest.fixture(scope='module')
def golden_model(official_sd) -> HRNetOCR:
    model = build_model('hrnet_w48_ocr')
    model.load_state_dict(checkpoint_filter_fn(official_sd), strict=True)
    return model


def _max_error(ours: torch.Tensor, golden: np.ndarray) -> float:
    """Return ``max|ours - golden| / max(1, max|golden|)``."""
    diff = np.abs(ours.detach().float().numpy() - golden).max()
    return float(diff / max(1.0, np.abs(golden).max()))


def _check_golden(model: torch.nn.Module, shared, name: str, k: float = K) -> None:
    with np.load(shared('reference', 'golden', f'{name}.npz'), allow_pickle=False) as npz:
        golden = {key: npz[key] for key in npz.files}
    with torch.no_grad():
        aux, cls = model.forward_all(torch.from_numpy(golden['input']))
    for key, ours in (('aux_logits', aux), ('cls_logits', cls)):
        assert ours.shape == golden[key].shape, key
        assert torch.isfinite(ours).all(), key
        error = _max_error(ours, golden[key])
        assert error <= k, f'{name} {key}: normalised max error {error:.3g} > {k:g}'


def test_synthetic_state_dict_digest_matches_golden(rows):
    assert len(rows) == MANIFEST_ROWS
    sd = synthetic_state_dict(rows)
    assert sum(v.dtype == torch.int64 for v in sd.values()) == 314  # num_batches_tracked
    assert state_dict_digest(sd) == WEIGHTS_SHA256


@pytest.mark.parametrize('shape', sorted(INPUT_SHA256))
def test_synthetic_input_matches_golden(shared, shape):
    x = synthetic_input(shape)
    assert hashlib.sha256(x.numpy().tobytes()).hexdigest() == INPUT_SHA256[shape]
    name = f'hrnet_w48_ocr_{"x".join(map(str, shape))}'
    meta = json.loads(shared('reference', 'golden', f'{name}.json').read_text())
    assert meta['input_sha256'] == INPUT_SHA256[shape]
    assert meta['state_dict_sha256'] == WEIGHTS_SHA256


def test_state_dict_keys_and_shapes_equal_official_manifest(rows):
    ours = hrnet_w48_ocr().state_dict()
    official = [(key[len('model.'):], shape) for key, shape, _ in rows
                if key.startswith('model.')]
    # Same keys in the same order, so the model's own state_dict() is the released layout.
    assert [(k, tuple(v.shape)) for k, v in ours.items()] == official


def test_official_layout_loads_strictly_through_zoo_adapter(official_sd, tmp_path):
    path = tmp_path / RELEASE
    torch.save(official_sd, path)
    model = build_model('hrnet_w48_ocr')
    adapted = checkpoint_filter_fn(official_sd)
    assert set(adapted) == set(model.state_dict())  # nothing missing, nothing unexpected
    load_checkpoint(model, path)
    for key, value in model.state_dict().items():
        assert torch.equal(value, official_sd[f'model.{key}']), key


def test_load_checkpoint_names_missing_keys(official_sd, tmp_path):
    path = tmp_path / RELEASE
    torch.save({k: v for k, v in official_sd.items() if 'aux_head' not in k}, path)
    with pytest.raises(CheckpointError, match='missing keys.*aux_head'):
        load_checkpoint(build_model('hrnet_w48_ocr'), path)


def test_checkpoint_filter_fn_strips_prefix_drops_loss_and_unwraps():
    weight = torch.ones(19)
    sd = {'model.cls_head.bias': weight, 'loss.criterion.weight': weight}
    assert checkpoint_filter_fn(sd) == {'cls_head.bias': weight}
    assert checkpoint_filter_fn({'state_dict': sd}) == {'cls_head.bias': weight}
    assert checkpoint_filter_fn(checkpoint_filter_fn(sd)) == {'cls_head.bias': weight}


@pytest.mark.parametrize('name', GOLDEN)
def test_outputs_match_golden(shared, golden_model, name):
    _check_golden(golden_model, shared, name)


def test_fused_channels_last_outputs_match_golden(shared, golden_model):
    """Keep the engine's configuration (BatchNorm folded, NHWC) within the same tolerance."""
    model = copy.deepcopy(golden_model)
    model.fuse_bn()
    model = model.to(memory_format=torch.channels_last)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    for name in GOLDEN:
        _check_golden(model, shared, name)


def test_parameter_count_and_zoo_metadata():
    model = build_model('hrnet_w48_ocr')
    assert isinstance(model, HRNetOCR)
    assert sum(p.numel() for p in model.parameters()) == NUM_PARAMS
    spec = get_spec('hrnet_w48_ocr')
    assert spec.num_params == NUM_PARAMS
    assert model.output_stride == spec.output_stride == 4
    assert model.num_classes == spec.num_classes == 19
    assert spec.weights[0].filename == RELEASE


@pytest.mark.parametrize('size', [(64, 128), (72, 136)])
def test_forward_returns_quarter_resolution_logits(size):
    torch.manual_seed(0)
    model = hrnet_w48_ocr().eval()
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        out = model(x)
        aux, cls = model.forward_all(x)
    # Each stride-2 conv maps n to ceil(n / 2): 72 -> 36 -> 18, 136 -> 68 -> 34.
    expected = (1, 19, -(-size[0] // 4), -(-size[1] // 4))
    assert tuple(out.shape) == tuple(aux.shape) == expected
    assert torch.isfinite(out).all()
    assert torch.equal(out, cls)


def test_fuse_bn_refuses_training_mode():
    with pytest.raises(RuntimeError, match='eval'):
        hrnet_w48_ocr().train().fuse_bn()


def test_constructors_reject_unsupported_configs():
    with pytest.raises(ValueError, match='branch counts differ'):
        HighResolutionModule(BasicBlock, (4, 4), (48,), (48, 96))
    with pytest.raises(ValueError, match='scale 2'):
        ObjectAttentionBlock(512, 256, scale=2)
    stage = StageCfg(num_modules=1, block='basic', num_blocks=(4,), num_channels=(64,))
    with pytest.raises(ValueError, match='4 stages'):
        HRNetOCR(64, [stage], ocr_mid_channels=512, ocr_key_channels=256, ocr_dropout=0.05,
                 num_classes=19)


def test_read_manifest_rejects_malformed_line(tmp_path):
    path = tmp_path / 'keys.txt'
    path.write_text('# comment\nmodel.conv1.weight\t(64, 3, 3, 3)\tfloat16\n')
    with pytest.raises(ValueError, match='keys.txt:2'):
        read_manifest(path)


def test_benchmark_reference_needs_a_checkout(tmp_path):
    with pytest.raises(ConfigError, match='HRNet-OCR'):
        hrnet_table.load_reference(str(tmp_path))


@pytest.mark.slow
def test_benchmark_table_without_reference_says_why(monkeypatch):
    monkeypatch.delenv(hrnet_table.SOURCE_ENV, raising=False)
    table = hrnet_table.run(runs=1, size=(64, 128))
    assert f'not run: set {hrnet_table.SOURCE_ENV}' in table
    assert '| ours | 64x128 |' in table
    assert '| ours, BN folded + channels_last (engine) | 64x128 |' in table
