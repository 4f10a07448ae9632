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

"""Start segment_node with the parameters of ``params_file``, optionally with RViz.

Examples::

    ros2 launch cityseg_ros segment.launch.py
    ros2 launch cityseg_ros segment.launch.py params_file:=my.yaml      # its values hold
    ros2 launch cityseg_ros segment.launch.py device:=cuda model:=hrnet_w48_ocr rviz:=true
    ros2 launch cityseg_ros segment.launch.py left_image:=/zed/left/image_rect_color

A launch argument given on the command line wins over ``params_file``; an argument not given
leaves the file's value (or the node's default) alone. The node walks configure and activate
when the file says ``autostart: true`` (the default); with ``false`` use ``ros2 lifecycle set``.
The default namespace ``stereo`` matches the topics of bags written by ``make_bag``. The logic
lives in :mod:`cityseg_ros.ros.launch_args` (tested without launch).
"""

from pathlib import Path
import sys

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
import launch.logging
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

try:
    from cityseg_ros.ros import launch_args
except ImportError:  # ros2 launch runs in another Python than the package (e.g. a tools venv)
    # share/cityseg_ros/launch links into the checkout (scripts/ament_register.sh).
    sys.path.append(str(Path(__file__).resolve().parents[1]))
    from cityseg_ros.ros import launch_args

PACKAGE = 'cityseg_ros'


def _start(context, *args, **kwargs) -> list:
    """Build the actions from the argument values; fails before starting anything."""
    values = {name: LaunchConfiguration(name).perform(context)
              for name, _, _ in launch_args.ARGUMENTS}
    plan = launch_args.plan_launch(
        values, rviz_executable=launch_args.find_executable('rviz2', 'rviz2'))
    logger = launch.logging.get_logger('segment.launch')
    for warning in plan.warnings:
        logger.warning(warning)
    # Typed as str: launch would YAML-parse '' to null and an id like 0 to an int.
    overrides = {name: ParameterValue(value, value_type=str)
                 for name, value in plan.parameters.items()}
    actions = [Node(
        package=PACKAGE,
        executable='segment_node',
        name='segment_node',
        namespace=plan.namespace,
        output='screen',
        emulate_tty=True,
        parameters=[plan.params_file] + ([overrides] if overrides else []),
        remappings=plan.remappings,
    )]
    if plan.rviz:
        share = FindPackageShare(PACKAGE).perform(context)
        actions.append(Node(
            package='rviz2',
            executable='rviz2',
            name='rviz2',
            arguments=['-d', str(Path(share, 'rviz', 'segment.rviz'))],
            output='screen',
        ))
    return actions


def generate_launch_description() -> LaunchDescription:
    """Declare the arguments; the actions are built once their values are known."""
    defaults = {'params_file': PathJoinSubstitution(
        [FindPackageShare(PACKAGE), 'config', 'segment.yaml'])}
    actions = [DeclareLaunchArgument(name, default_value=defaults.get(name, default),
                                     description=description)
               for name, default, description in launch_args.ARGUMENTS]
    actions.append(OpaqueFunction(function=_start))
    return LaunchDescription(actions)
