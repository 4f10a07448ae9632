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


"""segment_node with a backend: configure builds (or loads) it, /diagnostics names it."""

from cityseg_ros.ros.node import default_segmenter_factory, SegmentNode
from cityseg_ros.ros.params import NodeParams
import pytest
import rclpy
from rclpy.parameter import Parameter

pytest.importorskip('openvino')
pytest.importorskip('onnxscript')


@pytest.fixture
def context():
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    yield ctx
    rclpy.try_shutdown(context=ctx)


def test_factory_passes_the_backend_to_the_engine(espnetv2_weights):
    params = NodeParams.from_values({'backend': 'openvino', 'device': 'cpu',
                                     'weights': str(espnetv2_weights)})
    seg = default_segmenter_factory(params)
    assert seg.backend.name == 'openvino'
    seg.close()


def test_configure_builds_the_backend_with_progress_and_diagnostics_name_it(
        context, capfd, espnetv2_weights):
    node = SegmentNode(context=context, parameter_overrides=[
        Parameter('backend', value='openvino'), Parameter('device', value='cpu'),
        Parameter('weights', value=str(espnetv2_weights)),
        Parameter('autostart', value=False)])
    try:
        node.trigger_configure()
        assert node.state == 'inactive'
        values = {kv.key: kv.value for kv in node.diagnostics().values}
        assert values['backend'].startswith('openvino 20') and 'CPU fp32' in values['backend']
        assert 'ONNX graph of espnetv2 512x1024' in capfd.readouterr().err  # the progress log
    finally:
        if node.state == 'inactive':
            node.trigger_cleanup()
        node.destroy_node()
