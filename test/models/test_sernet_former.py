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

"""SERNet-Former: every variant builds and trains at 64x128; ImageNet ResNets load."""

from cityseg_ros.checkpoints import load_state_dict
from cityseg_ros.engine import Segmenter
from cityseg_ros.models import build_model, get_spec
from cityseg_ros.models.resnet import resnet101, resnet50
from cityseg_ros.models.sernet_former import check_backbone_file, SERNetFormer
import numpy as np
import pytest
import torch

# Counted on our builders (19 classes); the zoo records the same numbers.
NUM_PARAMS = {
    'sernet_former_r50': 38_316_595,
    'sernet_former_r101': 57_308_723,
    'sernet_former': 57_308_723,
}
ENCODER_STRIDE = {'sernet_former_r50': 16, 'sernet_former_r101': 16, 'sernet_former': 8}
# torchvision's ResNets: parameter counts from its model docs, state-dict sizes and names from
# torchvision.models.resnet50().state_dict() (BatchNorm buffers included).
TORCHVISION = {
    50: (25_557_032, 320, 'layer4.2.bn3.num_batches_tracked'),
    101: (44_549_160, 626, 'layer4.2.bn3.num_batches_tracked'),
}
TORCHVISION_NAMES = ('conv1.weight', 'bn1.weight', 'bn1.running_var', 'layer1.0.conv1.weight',
                     'layer1.0.downsample.0.weight', 'layer1.0.downsample.1.running_mean',
                     'layer2.0.conv2.weight', 'layer3.5.bn3.bias', 'fc.weight', 'fc.bias')


# Training steps on a shared 2-core machine: one OpenMP thread avoids barrier stalls.
pytestmark = pytest.mark.usefixtures('one_torch_thread')


@pytest.mark.parametrize('name', sorted(NUM_PARAMS))
def test_variant_builds_trains_and_matches_the_zoo(name):
    torch.manual_seed(0)
    spec = get_spec(name)
    model = build_model(name)
    assert isinstance(model, SERNetFormer)
    assert not model.training  # build_model returns eval mode
    n = sum(p.numel() for p in model.parameters())
    assert n == NUM_PARAMS[name] == spec.num_params
    assert model.output_stride == spec.output_stride == 4
    assert model.encoder_stride == ENCODER_STRIDE[name]
    assert spec.weights == ()  # nothing was ever released
    assert spec.backbone_weights.url.startswith('https://download.pytorch.org/models/resnet')

    model.train()
    x = torch.randn(2, 3, 64, 128)
    logits = model(x)
    assert logits.shape == (2, 19, 16, 32)
    assert torch.isfinite(logits).all()
    logits.logsumexp(1).mean().backward()
    no_grad = [k for k, p in model.named_parameters() if p.grad is None]
    assert not no_grad, f'parameters outside the graph: {no_grad[:5]}'


def test_any_input_size_gives_a_quarter_size_output():
    model = build_model('sernet_former_r50')
    with torch.no_grad():
        assert model(torch.randn(1, 3, 72, 100)).shape == (1, 19, 18, 25)


def _torchvision_layout_file(tmp_path, depth: int):
    """Save a random state dict of our ResNet, which must be torchvision's layout exactly."""
    torch.manual_seed(depth)
    net = resnet50() if depth == 50 else resnet101()
    for buf_name, buf in net.named_buffers():
        if buf_name.endswith('running_mean'):
            buf.normal_()
        elif buf_name.endswith('running_var'):
            buf.uniform_(0.5, 1.5)
    state = net.state_dict()
    params, count, last = TORCHVISION[depth]
    assert sum(p.numel() for p in net.parameters()) == params
    assert len(state) == count and list(state)[-3] == last
    assert set(TORCHVISION_NAMES) <= set(state)
    path = tmp_path / f'resnet{depth}-random.pth'
    torch.save(state, path)
    return path, state


def test_torchvision_imagenet_layout_loads_into_the_encoder(tmp_path):
    path, state = _torchvision_layout_file(tmp_path, 50)
    model = build_model('sernet_former_r50')
    gates_before = {k: v.clone() for k, v in model.encoder.gates.state_dict().items()}
    model.load_backbone(load_state_dict(path))
    encoder = model.encoder.state_dict()
    for key, value in state.items():
        if key.startswith('fc.'):
            assert key not in encoder
        else:
            assert torch.equal(encoder[key], value), key
    for key, value in model.encoder.gates.state_dict().items():
        assert torch.equal(value, gates_before[key])


def test_gates_start_closed_so_imagenet_features_pass_unchanged(tmp_path):
    path, state = _torchvision_layout_file(tmp_path, 50)
    model = build_model('sernet_former_r50')
    model.load_backbone(load_state_dict(path))
    plain = resnet50((False, False, True), num_classes=None).eval()
    plain.load_state_dict({k: v for k, v in state.items() if not k.startswith('fc.')})
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        for ours, theirs in zip(model.encoder.features(x), plain.features(x)):
            assert torch.equal(ours, theirs)


def test_backbone_of_the_wrong_depth_is_rejected_with_the_keys(tmp_path):
    path, _ = _torchvision_layout_file(tmp_path, 101)
    model = build_model('sernet_former_r50')
    with pytest.raises(ValueError, match=r'unexpected keys \(layer3\.6\..*resnet50 layout'):
        model.load_backbone(load_state_dict(path))


def test_released_backbone_file_is_checked_against_the_hash_in_its_name(tmp_path):
    wf = get_spec('sernet_former_r50').backbone_weights
    bad = tmp_path / wf.filename
    bad.write_bytes(b'not the weights')
    assert 'does not start with 11ad3fa6' in check_backbone_file(bad, wf.filename)
    renamed = tmp_path / 'my_resnet50.pth'
    renamed.write_bytes(b'not the weights')
    assert check_backbone_file(renamed, wf.filename) is None


def test_a_trained_state_dict_runs_in_the_engine_by_path(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / 'model.pth'
    torch.save(build_model('sernet_former_r50').state_dict(), path)
    seg = Segmenter('sernet_former_r50', weights=str(path), device='cpu', input_size=(64, 128))
    labels = seg([np.zeros((96, 160, 3), np.uint8)])[0]
    assert labels.shape == (96, 160) and labels.max() < 19
