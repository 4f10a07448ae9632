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

"""The launch file, the parameter file and the RViz layout agree with the code."""

import importlib.util
from pathlib import Path

from cityseg_ros.ros.params import NodeParams, PARAMS
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
LAUNCH_FILE = REPO / 'launch' / 'segment.launch.py'
PARAMS_FILE = REPO / 'config' / 'segment.yaml'
RVIZ_FILE = REPO / 'rviz' / 'segment.rviz'


def _node_parameters() -> dict:
    document = yaml.safe_load(PARAMS_FILE.read_text())
    assert list(document) == ['/**'], 'use the /**: ros__parameters: layout'
    return document['/**']['ros__parameters']


def test_params_file_lists_exactly_the_declared_parameters():
    assert list(_node_parameters()) == [p.name for p in PARAMS]


def test_params_file_values_are_the_defaults_and_valid():
    values = _node_parameters()
    for param in PARAMS:
        assert values[param.name] == param.default, param.name
        assert type(values[param.name]) is type(param.default), param.name  # 0.0 not 0
    NodeParams.from_values(values)  # passes the cross-field checks


def test_rviz_layout_parses_and_shows_inputs_outputs_and_points():
    layout = yaml.safe_load(RVIZ_FILE.read_text())
    displays = layout['Visualization Manager']['Displays']
    topics = {d['Topic']['Value']: d['Class'] for d in displays}
    assert topics['/stereo/left/image_rect_color'] == 'rviz_default_plugins/Image'
    assert topics['/stereo/left/semantic/color'] == 'rviz_default_plugins/Image'
    assert topics['/stereo/left/semantic/overlay'] == 'rviz_default_plugins/Image'
    assert topics['/stereo/semantic/points'] == 'rviz_default_plugins/PointCloud2'
    points = next(d for d in displays if d['Class'].endswith('PointCloud2'))
    assert points['Color Transformer'] == 'RGB8'


def test_launch_file_builds_its_description():
    pytest.importorskip('launch_ros', reason='launch_ros is not installed (no ROS 2 distro; '
                        'the PyPI wheels lack it): the launch file cannot be loaded')
    from launch.actions import DeclareLaunchArgument
    from launch_ros.actions import Node

    spec = importlib.util.spec_from_file_location('segment_launch', LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    arguments = {e.name for e in description.entities if isinstance(e, DeclareLaunchArgument)}
    assert arguments == {'params_file', 'namespace', 'model', 'weights', 'device', 'left_image',
                         'left_camera_info', 'right_image', 'right_camera_info', 'rviz'}
    nodes = [e for e in description.entities if isinstance(e, Node)]
    assert [n.node_executable for n in nodes] == ['segment_node', 'rviz2']
    assert nodes[0].node_package == 'cityseg_ros'
