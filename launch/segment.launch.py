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

"""Start segment_node (configured and activated by its ``autostart``), optionally with RViz.

Examples::

    ros2 launch cityseg_ros segment.launch.py
    ros2 launch cityseg_ros segment.launch.py device:=cuda model:=hrnet_w48_ocr rviz:=true
    ros2 launch cityseg_ros segment.launch.py left_image:=/zed/left/image_rect_color

The default namespace ``stereo`` matches the topics of bags written by ``make_bag``.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

PACKAGE = 'cityseg_ros'

#: (name, default, description) of every launch argument.
ARGUMENTS = (
    ('params_file', PathJoinSubstitution([FindPackageShare(PACKAGE), 'config', 'segment.yaml']),
     'YAML file with the node parameters (config/segment.yaml lists them all)'),
    ('namespace', 'stereo', 'namespace of the node and its relative topics'),
    ('model', 'espnetv2', 'zoo model name'),
    ('weights', 'auto', "checkpoint file, 'auto' (cache) or '' (random weights)"),
    ('device', 'auto', "'auto', 'cpu', 'cuda' or 'cuda:N'"),
    ('left_image', 'left/image_rect_color', 'left rectified image topic'),
    ('left_camera_info', 'left/camera_info', 'left camera_info topic'),
    ('right_image', 'right/image_rect_color', 'right rectified image topic'),
    ('right_camera_info', 'right/camera_info', 'right camera_info topic'),
    ('rviz', 'false', 'also start RViz with rviz/segment.rviz (true|false)'),
)


def generate_launch_description() -> LaunchDescription:
    """Declare the arguments, the segmentation node and the optional RViz window."""
    actions = [DeclareLaunchArgument(name, default_value=default, description=description)
               for name, default, description in ARGUMENTS]

    def text(name: str) -> ParameterValue:
        # Typed as str: a YAML-parsed '' would become null and an id like 0 an int.
        return ParameterValue(LaunchConfiguration(name), value_type=str)

    actions.append(Node(
        package=PACKAGE,
        executable='segment_node',
        name='segment_node',
        namespace=LaunchConfiguration('namespace'),
        output='screen',
        emulate_tty=True,
        parameters=[
            LaunchConfiguration('params_file'),
            # The command-line arguments win over the file; autostart walks the lifecycle.
            {'model': text('model'), 'weights': text('weights'), 'device': text('device'),
             'autostart': True},
        ],
        remappings=[
            ('left/image_rect_color', LaunchConfiguration('left_image')),
            ('left/camera_info', LaunchConfiguration('left_camera_info')),
            ('right/image_rect_color', LaunchConfiguration('right_image')),
            ('right/camera_info', LaunchConfiguration('right_camera_info')),
        ],
    ))
    actions.append(Node(
        package='rviz2',
        executable='rviz2',
        name='rviz2',
        arguments=['-d', PathJoinSubstitution(
            [FindPackageShare(PACKAGE), 'rviz', 'segment.rviz'])],
        condition=IfCondition(LaunchConfiguration('rviz')),
        output='screen',
    ))
    return LaunchDescription(actions)
