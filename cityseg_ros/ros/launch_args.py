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

"""What ``segment.launch.py`` starts, as a pure function of its arguments (tested without launch).

Precedence of a node parameter: a launch argument given on the command line, else the value in
``params_file``, else the node's default. So only the arguments that were given are passed after
the file, and ``autostart`` is never forced (``autostart: false`` in the file must hold, for
``ros2 lifecycle set``). RViz is started only when ``rviz2`` is installed; otherwise a warning,
and no process is started that could be left behind. Imports only the standard library and
:mod:`cityseg_ros.errors`, so a launch file can load it without rclpy or torch.
"""

from dataclasses import dataclass, field
import os
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple

from cityseg_ros.errors import ConfigError

__all__ = ['UNSET', 'ARGUMENTS', 'PARAMETER_ARGUMENTS', 'REMAP_ARGUMENTS', 'LaunchPlan',
           'plan_launch', 'find_executable', 'parse_bool']

PACKAGE = 'cityseg_ros'

#: Default of the arguments that are passed to the node only when given. Not '' because
#: ``weights:=''`` means something (random weights).
UNSET = '(params_file)'

#: Node parameters that have a launch argument; passed only when given, after params_file.
PARAMETER_ARGUMENTS: Tuple[Tuple[str, str], ...] = (
    ('model', 'zoo model name, e.g. espnetv2, hrnet_w48_ocr'),
    ('weights', "checkpoint file, 'auto' (the cache) or '' (random weights: weights:=\"''\")"),
    ('device', "'auto', 'cpu', 'cuda' or 'cuda:N'"),
    ('input_reliability', 'input QoS reliability (see the node parameter input_reliability)'),
)

#: (argument, topic the node subscribes to): remapped only when the argument differs.
REMAP_ARGUMENTS: Tuple[Tuple[str, str], ...] = (
    ('left_image', 'left/image_rect_color'),
    ('left_camera_info', 'left/camera_info'),
    ('right_image', 'right/image_rect_color'),
    ('right_camera_info', 'right/camera_info'),
)

#: (name, default, description) of every launch argument; params_file's default is the
#: launch file's (the package's config/segment.yaml).
ARGUMENTS: Tuple[Tuple[str, Optional[str], str], ...] = (
    ('params_file', None, 'YAML file with the node parameters (config/segment.yaml lists them '
     'all); launch arguments given on the command line override its values'),
    ('namespace', 'stereo', 'namespace of the node and its relative topics'),
    *((name, UNSET, f'{text}; default: the value in params_file')
      for name, text in PARAMETER_ARGUMENTS),
    *((name, topic, f'topic to remap {topic} to') for name, topic in REMAP_ARGUMENTS),
    ('rviz', 'false', 'also start RViz with rviz/segment.rviz when rviz2 is installed '
     '(true|false)'),
)

_TRUE = ('true', '1', 'yes', 'on')
_FALSE = ('false', '0', 'no', 'off')


@dataclass(frozen=True)
class LaunchPlan:
    """The processes to start: segment_node always, RViz when asked for and installed."""

    namespace: str
    params_file: str
    parameters: Dict[str, str] = field(default_factory=dict)  # only the given arguments
    remappings: List[Tuple[str, str]] = field(default_factory=list)
    rviz: bool = False
    warnings: List[str] = field(default_factory=list)

    def node_parameters(self) -> list:
        """Node ``parameters=``: the file first, then the given arguments (later ones win)."""
        return [self.params_file] + ([dict(self.parameters)] if self.parameters else [])


def parse_bool(name: str, value: str) -> bool:
    """Parse a launch argument as launch's IfCondition does, with an error that says how."""
    text = value.strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise ConfigError(f'launch argument {name}:={value!r} is not a boolean; use {name}:=true '
                      f'or {name}:=false')


def _unquote(value: str) -> str:
    # ros2 launch rejects `weights:=`; the shell turns weights:="''" into the two quote marks.
    return '' if value in ("''", '""') else value


def plan_launch(values: Mapping[str, str], rviz_executable: Optional[str] = None) -> LaunchPlan:
    """Turn launch argument values (strings, as launch holds them) into a :class:`LaunchPlan`.

    Args:
        values: every argument of :data:`ARGUMENTS` by name; :data:`UNSET` means not given.
        rviz_executable: path of the rviz2 executable, None when rviz2 is not installed (see
            :func:`find_executable`).

    Raises:
        ConfigError: params_file does not exist, or rviz is not a boolean. Raised before any
            process starts, so a failed launch leaves nothing running.
    """
    params_file = values['params_file']
    if not Path(params_file).is_file():
        raise ConfigError(f'params_file {params_file!r} does not exist; pass an existing YAML '
                          f'file (the package default is config/segment.yaml)')
    parameters = {name: _unquote(values[name]) for name, _ in PARAMETER_ARGUMENTS
                  if values.get(name, UNSET) != UNSET}
    remappings = [(topic, values[name]) for name, topic in REMAP_ARGUMENTS
                  if values.get(name, topic) != topic]
    warnings = []
    rviz = parse_bool('rviz', values.get('rviz', 'false'))
    if rviz and rviz_executable is None:
        rviz = False
        warnings.append('rviz:=true but rviz2 is not installed (package rviz2 not found under '
                        'AMENT_PREFIX_PATH): starting segment_node without RViz. Install '
                        'ros-jazzy-rviz2, or run rviz2 -d rviz/segment.rviz on another machine.')
    return LaunchPlan(namespace=values['namespace'], params_file=params_file,
                      parameters=parameters, remappings=remappings, rviz=rviz,
                      warnings=warnings)


def find_executable(package: str, executable: str,
                    ament_prefix_path: Optional[str] = None) -> Optional[str]:
    """Return ``<prefix>/lib/<package>/<executable>`` as ``ros2 run`` finds it, else None.

    Looks through the ament index like ament_index_python (first prefix with the package's
    marker wins) but never raises, so a missing optional package is a plain ``None``.

    Args:
        package: ROS package name, e.g. ``rviz2``.
        executable: file name in the package's ``lib`` folder.
        ament_prefix_path: ``os.pathsep``-separated prefixes; default ``$AMENT_PREFIX_PATH``.
    """
    path = os.environ.get('AMENT_PREFIX_PATH', '') if ament_prefix_path is None \
        else ament_prefix_path
    for prefix in filter(None, path.split(os.pathsep)):
        marker = Path(prefix, 'share', 'ament_index', 'resource_index', 'packages', package)
        if marker.is_file():
            candidate = Path(prefix, 'lib', package, executable)
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
            return None
    return None
