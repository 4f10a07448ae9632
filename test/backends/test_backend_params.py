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


"""The node's ``backend`` parameter: same choices as the engine, device rules with reasons."""

from cityseg_ros.backends import BACKENDS
from cityseg_ros.errors import ConfigError
from cityseg_ros.ros.params import NodeParams, PARAMS
import pytest


def test_backend_parameter_offers_every_backend_and_defaults_to_torch():
    param, = [p for p in PARAMS if p.name == 'backend']
    assert param.choices == BACKENDS and param.default == 'torch' and not param.read_only
    assert NodeParams.from_values({}).backend == 'torch'
    assert NodeParams.from_values({'backend': 'openvino', 'device': 'cpu'}).backend == 'openvino'


@pytest.mark.parametrize('values, reason', [
    ({'backend': 'tensorrt', 'device': 'cpu'}, 'backend tensorrt needs a CUDA device'),
    ({'backend': 'openvino', 'device': 'cuda:0'}, 'backend openvino runs on the CPU'),
    ({'backend': 'tflite'}, "backend 'tflite' is not one of torch, onnxruntime"),
])
def test_backend_that_cannot_serve_the_device_is_refused_with_a_reason(values, reason):
    with pytest.raises(ConfigError, match=reason):
        NodeParams.from_values(values)
