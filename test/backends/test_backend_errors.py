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


"""Backend choice, missing extras and device/precision checks: the parts that need no GPU."""

import sys

from cityseg_ros.backends import BACKENDS, create_backend, EXTRAS, require
from cityseg_ros.backends import tensorrt_backend
from cityseg_ros.backends.onnxruntime_backend import select_providers
from cityseg_ros.engine import Segmenter
from cityseg_ros.errors import ConfigError
from cityseg_ros.models.zoo import get_spec
import pytest
import torch

CPU = torch.device('cpu')
CUDA = torch.device('cuda')  # only named, never used: no GPU needed


@pytest.fixture(scope='module')
def net():
    return torch.nn.Conv2d(3, 20, 1).eval()


def test_every_optional_backend_names_its_pip_extra():
    assert BACKENDS[0] == 'torch'
    assert set(EXTRAS) == set(BACKENDS) - {'torch'}


def test_unknown_backend_lists_the_choices(net):
    with pytest.raises(ConfigError, match='torch, onnxruntime, openvino, tensorrt'):
        create_backend('tflite', net, get_spec('espnetv2'), CPU, 'fp32')
    with pytest.raises(ConfigError, match='unknown backend'):
        Segmenter('espnetv2', weights=None, device='cpu', input_size=(64, 128), backend='nope')


def test_missing_package_says_which_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, 'onnxruntime', None)  # import now raises ImportError
    with pytest.raises(ConfigError, match=r'backend onnxruntime needs the onnxruntime package.*'
                                          r'pip install \.\[onnx\]'):
        require('onnxruntime', 'onnx', 'backend onnxruntime')


@pytest.mark.parametrize('name, extra', [('onnxruntime', 'onnx'), ('openvino', 'openvino')])
def test_segmenter_without_the_extra_fails_with_one_line(monkeypatch, name, extra):
    monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ConfigError, match=rf'pip install \.\[{extra}\]') as info:
        Segmenter('espnetv2', weights=None, device='cpu', input_size=(64, 128), backend=name)
    assert '\n' not in str(info.value)


def test_tensorrt_needs_cuda_and_its_package(net, monkeypatch):
    spec = get_spec('espnetv2')
    with pytest.raises(ConfigError, match='needs a CUDA device.*use device cuda'):
        create_backend('tensorrt', net, spec, CPU, 'fp16')
    monkeypatch.setitem(sys.modules, 'tensorrt', None)
    with pytest.raises(ConfigError, match=r'pip install \.\[tensorrt\]'):
        create_backend('tensorrt', net, spec, CUDA, 'fp16')


def test_tensorrt_engine_key_changes_with_gpu_version_precision_and_profile():
    args = {'model': 'espnetv2', 'weights_sha256': 'ab' * 32, 'size': (512, 1024), 'batch': 2,
            'precision': 'fp16', 'trt_version': '10.9.0', 'gpu': 'NVIDIA H200 sm90',
            'graph': 'g'}
    base = tensorrt_backend.engine_key(**args)
    assert base.kind == 'tensorrt' and base.batch == '1-2-8'
    for change in ({'gpu': 'NVIDIA L4 sm89'}, {'trt_version': '10.10.0'},
                   {'precision': 'fp32'}, {'batch': 16}, {'graph': 'h'}):
        assert tensorrt_backend.engine_key(**{**args, **change}).digest() != base.digest()
    # batches up to 8 share one engine (stereo pair, N cameras)
    assert tensorrt_backend.engine_key(**{**args, 'batch': 6}).batch == '1-6-8'
    assert tensorrt_backend.profile_for(12) == (1, 12, 12)


def test_onnxruntime_prefers_tensorrt_then_cuda_then_cpu():
    everything = ['TensorrtExecutionProvider', 'CUDAExecutionProvider', 'CPUExecutionProvider']
    assert select_providers(everything, 'cuda') == everything
    assert select_providers(everything[1:], 'cuda') == everything[1:]
    assert select_providers(everything, 'cpu') == ['CPUExecutionProvider']


def test_onnxruntime_refuses_bf16_and_a_gpu_it_cannot_drive(net):
    pytest.importorskip('onnxruntime')
    spec = get_spec('espnetv2')
    with pytest.raises(ConfigError, match='not bf16'):
        create_backend('onnxruntime', net, spec, CPU, 'bf16')
    import onnxruntime
    if 'CUDAExecutionProvider' not in onnxruntime.get_available_providers():
        with pytest.raises(ConfigError, match='pip install onnxruntime-gpu'):
            create_backend('onnxruntime', net, spec, CUDA, 'fp16')


def test_openvino_runs_on_the_cpu_with_the_latency_settings(net):
    pytest.importorskip('openvino')
    from cityseg_ros.backends.openvino_backend import compile_config
    with pytest.raises(ConfigError, match='use device cpu'):
        create_backend('openvino', net, get_spec('espnetv2'), CUDA, 'fp32')
    config = compile_config('fp32', 3)
    assert config == {'PERFORMANCE_HINT': 'LATENCY', 'NUM_STREAMS': '1',
                      'INFERENCE_NUM_THREADS': '3', 'INFERENCE_PRECISION_HINT': 'f32'}
    assert compile_config('bf16', 2)['INFERENCE_PRECISION_HINT'] == 'bf16'


def test_a_closed_backend_frees_the_network_and_refuses_to_run(net):
    pytest.importorskip('openvino')
    backend = create_backend('openvino', net, get_spec('espnetv2'), CPU, 'fp32')
    backend.close()
    assert backend.net is None
    with pytest.raises(RuntimeError, match='closed'):
        backend(torch.zeros(1, 3, 32, 32))
