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

"""The node's parameters: one table, declared in a loop, read into a frozen NodeParams.

Like stereo_image_proc's disparity_node, every tunable sits in :data:`PARAMS` with its default,
description and range; rclpy enforces the ranges and ``read_only``, :func:`check_values` adds
choices and cross-field rules with a reason, and :func:`markdown_table` writes the README table,
so the three never disagree. ``config/segment.yaml`` is checked against the table by a test.
"""

from dataclasses import dataclass, fields
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from cityseg_ros.backends import BACKENDS
from cityseg_ros.camera_group import SYNC_MODES
from cityseg_ros.errors import ConfigError
from cityseg_ros.label_spaces import LABEL_SPACES
from cityseg_ros.stereo import StereoParams
from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor,
                                SetParametersResult)
from rclpy.node import Node
from rclpy.parameter import Parameter

__all__ = ['Param', 'PARAMS', 'NodeParams', 'PRECISIONS', 'TTA_MODES', 'RELIABILITIES',
           'TRANSPORTS', 'SYNC_MODES', 'LABEL_SPACES', 'MAX_CAMERAS', 'camera_name_problem',
           'declare_params', 'read_params', 'check_values', 'markdown_table',
           'on_set_parameters', 'ros_hint']

Value = Union[str, int, float, bool, List[str]]

# The engine's choices (cityseg_ros.engine, checked equal by a test); repeated so that this
# table, the YAML check and the README need no torch import.
PRECISIONS = ('fp32', 'fp16', 'bf16')
TTA_MODES = ('none', 'flip', 'multiscale')
RELIABILITIES = ('auto', 'best_effort', 'reliable')
#: ``input_transport`` values (image_transport's plugin names).
TRANSPORTS = ('raw', 'compressed')
#: Most cameras one node segments (one batch); beyond, run a second node.
MAX_CAMERAS = 16
#: A camera namespace: relative ROS name tokens (so the node's namespace and remaps apply).
_CAMERA_NAME = re.compile(r'[A-Za-z_][A-Za-z0-9_]*(/[A-Za-z_][A-Za-z0-9_]*)*')
#: Smallest network input side the engine accepts (engine.MIN_IMAGE_SIDE).
MIN_INPUT_SIDE = 16


@dataclass(frozen=True)
class Param:
    """One parameter: what ``declare_parameter`` and the README need to know.

    Attributes:
        name: parameter name.
        default: default value; its type is the parameter's type.
        description: one line for ``ros2 param describe`` and the README.
        range: inclusive (low, high) for numbers, enforced by rclpy.
        choices: accepted strings, enforced by :func:`check_values`.
        read_only: cannot change after start (``--ros-args -p`` or a params file only).
        runtime: takes effect at once while active; otherwise at the next configure.
    """

    name: str
    default: Value
    description: str
    range: Optional[Tuple[float, float]] = None  # noqa: A003 -- the name STYLE.md uses
    choices: Tuple[str, ...] = ()
    read_only: bool = False
    runtime: bool = False


PARAMS: Tuple[Param, ...] = (
    Param('model', 'espnetv2', 'zoo model name (see README, "Models")', read_only=True),
    Param('weights', 'auto',
          "checkpoint file, 'auto' (the model's default file in the cache; fetch_weights "
          "downloads it) or '' (random weights: tests and timing only)", read_only=True),
    Param('device', 'auto', "'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N'",
          read_only=True),
    Param('precision', 'fp32', 'inference precision; fp16 needs CUDA', choices=PRECISIONS),
    Param('backend', 'torch',
          'what runs the network; onnxruntime, openvino (CPU) and tensorrt (CUDA) are pip extras '
          '(.[onnx], .[openvino], .[tensorrt]) whose graphs and engines are built at configure '
          '(minutes for TensorRT) and cached', choices=BACKENDS),
    Param('input_height', 0, "network input height in px, 0 = the model's test size",
          range=(0, 8192)),
    Param('input_width', 0, "network input width in px, 0 = the model's test size",
          range=(0, 8192)),
    Param('tta', 'none', 'test-time augmentation', choices=TTA_MODES),
    Param('cameras', ['left', 'right'],
          'camera namespaces to segment, any list (e.g. [front, front_left, front_right, rear, '
          'rear_left, rear_right]); all run as one batch by one model'),
    Param('sync', 'exact',
          "'exact': one frame per camera with stamps within pair_tolerance_ms per batch (a "
          "camera that stops is left out after camera_timeout_s); 'none': each camera's newest "
          'frame, whatever its stamp',
          choices=SYNC_MODES),
    Param('camera_timeout_s', 1.0,
          'sync exact: a camera that sent nothing for this long (and for 3 frames of every '
          'other camera) is left out of the groups until it sends again, so the others go on; '
          '0 = wait for every camera',
          range=(0.0, 3600.0)),
    Param('stereo_cameras', ['left', 'right'],
          'the (left, right) pair of cameras whose images make semantic/points; the cloud '
          'exists when both are in cameras and is computed only while somebody subscribes'),
    Param('input_transport', 'raw',
          "'raw': C/image_rect_color (sensor_msgs/Image); 'compressed': "
          'C/image_rect_color/compressed (CompressedImage, JPEG or PNG as image_transport '
          'writes it), decoded on decode_threads, never on the executor',
          choices=TRANSPORTS),
    Param('decode_threads', 2, 'threads that decode compressed input (newest frame per camera '
          'wins, cameras served in turn)', range=(1, 16)),
    Param('label_space', 'trainid',
          "ids the labels carry: 'trainid' (0..18, 255 ignore), 'labelid' (Cityscapes "
          "labelIds, 0 unlabeled), 'category' (1 flat .. 7 vehicle, 0 void) or 'label_map' "
          '(the label_map file); colours, overlay and point labels follow it',
          choices=LABEL_SPACES),
    Param('label_map', '',
          'label map YAML (trainIds -> your ids, names, colours; see '
          "config/label_map_example.yaml); setting it selects it, '' = none"),
    Param('publish_color', True, 'publish C/semantic/color (rgb8 palette image)'),
    Param('publish_overlay', True, 'publish C/semantic/overlay (photo blended with the palette)'),
    Param('publish_confidence', False,
          'publish C/semantic/confidence (mono8, max softmax x 255)'),
    Param('overlay_alpha', 0.5, 'photo weight in the overlay (0 = labels only, 1 = photo only)',
          range=(0.0, 1.0), runtime=True),
    Param('max_rate_hz', 0.0, 'segment at most this many batches per second, 0 = unlimited',
          range=(0.0, 1000.0), runtime=True),
    Param('pair_tolerance_ms', 5.0,
          'largest stamp difference between the cameras of one batch (sync exact) and between '
          'the stereo images of a cloud, ms',
          range=(0.0, 1000.0)),
    Param('input_reliability', 'auto',
          "input QoS reliability: 'auto' matches each topic's publishers (all reliable -> "
          'reliable, any best_effort -> best_effort; looked at again every second), '
          "'best_effort' (loses most large frames from reliable publishers) or 'reliable'",
          choices=RELIABILITIES),
    Param('input_depth', 5, 'input QoS history depth (keep last N)', range=(1, 100)),
    Param('autostart', True, 'segment_node walks configure and activate at start',
          read_only=True),
    # --- semantic/points: stereo disparity -> labelled PointCloud2 (cityseg_ros.stereo) ---
    Param('points_downscale', 2, 'match disparity at 1/1, 1/2 or 1/4 resolution (speed)',
          range=(1, 4), runtime=True),
    Param('points_decimation', 4, 'keep every n-th pixel row and column as a point',
          range=(1, 64), runtime=True),
    Param('points_min_depth_m', 0.5, 'drop points nearer than this, m', range=(0.0, 1000.0),
          runtime=True),
    Param('points_max_depth_m', 50.0, 'drop points farther than this, m',
          range=(0.0, 1000.0), runtime=True),
    Param('points_drop_classes', [10],
          'trainIds whose points are dropped (10 = sky), whatever label_space',
          runtime=True),
    Param('points_organized', False,
          'organised cloud (image grid, NaN for dropped points) instead of dense', runtime=True),
    Param('points_color', 'label', "rgb field: 'label' (palette colour) or 'photo'",
          choices=('label', 'photo'), runtime=True),
    Param('stereo_block_size', 5, 'SGBM matching window side (odd), px at matched resolution',
          range=(1, 51), runtime=True),
    Param('stereo_disparity_range', 256, 'disparities searched, full-resolution px',
          range=(16, 1024), runtime=True),
    Param('stereo_uniqueness_ratio', 10, 'SGBM uniqueness margin, percent', range=(0, 100),
          runtime=True),
    Param('stereo_speckle_window_size', 100,
          'largest speckle blob removed, px (0 = filter off)', range=(0, 10000), runtime=True),
    Param('stereo_speckle_range', 2, 'largest disparity step inside a speckle blob, px',
          range=(0, 64), runtime=True),
)

_BY_NAME: Dict[str, Param] = {p.name: p for p in PARAMS}
_STEREO_NAMES = tuple(p.name for p in PARAMS if p.name.startswith(('points_', 'stereo_')))


@dataclass(frozen=True)
class NodeParams:
    """The parameters' values, read once per configure; see :data:`PARAMS` for meanings."""

    model: str
    weights: str
    device: str
    precision: str
    backend: str
    input_height: int
    input_width: int
    tta: str
    cameras: Tuple[str, ...]
    sync: str
    stereo_cameras: Tuple[str, ...]
    camera_timeout_s: float
    input_transport: str
    decode_threads: int
    label_space: str
    label_map: str
    publish_color: bool
    publish_overlay: bool
    publish_confidence: bool
    overlay_alpha: float
    max_rate_hz: float
    pair_tolerance_ms: float
    input_reliability: str
    input_depth: int
    autostart: bool
    points_downscale: int
    points_decimation: int
    points_min_depth_m: float
    points_max_depth_m: float
    points_drop_classes: Tuple[int, ...]
    points_organized: bool
    points_color: str
    stereo_block_size: int
    stereo_disparity_range: int
    stereo_uniqueness_ratio: int
    stereo_speckle_window_size: int
    stereo_speckle_range: int

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> 'NodeParams':
        """Build from a name -> value mapping (defaults for missing names), checked.

        Raises:
            ConfigError: with every reason :func:`check_values` finds.
        """
        merged = {p.name: p.default for p in PARAMS}
        merged.update(values)
        problems = check_values(merged)
        if problems:
            raise ConfigError('invalid parameters: ' + '; '.join(problems))
        merged['cameras'] = tuple(merged['cameras'])
        merged['stereo_cameras'] = tuple(merged['stereo_cameras'])
        merged['points_drop_classes'] = tuple(merged['points_drop_classes'])
        return cls(**{f.name: merged[f.name] for f in fields(cls)})

    @property
    def input_size(self) -> Optional[Tuple[int, int]]:
        """(H, W) network input override, None for the model's own test size."""
        if self.input_height and self.input_width:
            return (self.input_height, self.input_width)
        return None

    @property
    def weights_arg(self) -> Optional[str]:
        """The Segmenter's ``weights`` argument: a path, 'auto', or None for random weights."""
        return self.weights or None

    @property
    def points(self) -> bool:
        """Whether semantic/points exists: both stereo cameras are segmented cameras."""
        return all(cam in self.cameras for cam in self.stereo_cameras)

    @property
    def input_cameras(self) -> Tuple[str, ...]:
        """Cameras subscribed: the segmented ones (the stereo pair is among them)."""
        return self.cameras


def stereo_params(values: Mapping[str, Any]) -> StereoParams:
    """Build the point-cloud settings from parameter values (name -> value).

    Raises:
        ConfigError: when the matcher settings cannot work together, with the reasons.
    """
    return StereoParams(
        block_size=values['stereo_block_size'], disparity_range=values['stereo_disparity_range'],
        uniqueness_ratio=values['stereo_uniqueness_ratio'],
        speckle_window_size=values['stereo_speckle_window_size'],
        speckle_range=values['stereo_speckle_range'], downscale=values['points_downscale'],
        min_depth_m=values['points_min_depth_m'], max_depth_m=values['points_max_depth_m'],
        decimation=values['points_decimation'],
        drop_classes=tuple(values['points_drop_classes']),
        organized=values['points_organized'], color=values['points_color'])


def check_values(values: Mapping[str, Any]) -> List[str]:
    """Return the reasons ``values`` (name -> value, all names) are invalid; empty when valid.

    rclpy already enforces types, numeric ranges and ``read_only``; these are the rules it
    cannot express: string choices and rules that involve more than one parameter.
    """
    problems = []
    for param in PARAMS:
        value = values.get(param.name)
        if param.choices and value not in param.choices:
            problems.append(f'{param.name} {value!r} is not one of {", ".join(param.choices)}')
        if param.range is not None and value is not None and not (
                param.range[0] <= value <= param.range[1]):
            problems.append(f'{param.name} {value} is outside [{param.range[0]}, '
                            f'{param.range[1]}]')
    cameras = list(values.get('cameras', []))
    problems += _camera_list_problems('cameras', cameras, 1, MAX_CAMERAS)
    problems += _camera_list_problems('stereo_cameras', list(values.get('stereo_cameras', [])),
                                      2, 2)
    space, label_map = values.get('label_space'), values.get('label_map', '')
    if space == 'label_map' and not label_map:
        problems.append("label_space 'label_map' needs label_map (a YAML file, see "
                        'config/label_map_example.yaml)')
    if label_map and space in ('labelid', 'category'):
        problems.append(f'label_space {space!r} and label_map {label_map!r} both given: set '
                        "label_space to 'label_map' (or 'trainid') or clear label_map")
    height, width = values.get('input_height', 0), values.get('input_width', 0)
    if bool(height) != bool(width):
        problems.append(f'input_height {height} and input_width {width}: set both, or both 0 '
                        "for the model's test size")
    for name in ('input_height', 'input_width'):
        if 0 < values.get(name, 0) < MIN_INPUT_SIDE:
            problems.append(f'{name} {values[name]} is too small: 0 or >= {MIN_INPUT_SIDE} px')
    if all(name in values for name in _STEREO_NAMES):
        try:
            stereo_params(values)
        except ConfigError as exc:
            problems.append(str(exc))
        except (TypeError, ValueError) as exc:
            problems.append(f'points_drop_classes must be a list of trainIds: {exc}')
    backend, device = values.get('backend'), str(values.get('device'))
    if backend == 'tensorrt' and device.startswith('cpu'):
        problems.append("backend tensorrt needs a CUDA device but device is 'cpu': use "
                        'onnxruntime or openvino on the CPU')
    if backend == 'openvino' and device.startswith('cuda'):
        problems.append(f'backend openvino runs on the CPU but device is {device!r}: use '
                        'onnxruntime or tensorrt on CUDA')
    if values.get('precision') == 'fp16' and str(values.get('device')).startswith('cpu'):
        problems.append('precision fp16 needs a CUDA device but device is '
                        f"{values.get('device')!r}: use bf16 or fp32 on CPU")
    return problems


def camera_name_problem(name: Any) -> Optional[str]:
    """Say why ``name`` cannot be a camera namespace, or return None when it can."""
    if not isinstance(name, str) or not _CAMERA_NAME.fullmatch(name):
        return (f'{name!r} is not a relative ROS name (letters, digits, _ and /, not starting '
                'with a digit or /)')
    return None


def _camera_list_problems(param: str, cameras: List[Any], low: int, high: int) -> List[str]:
    problems = []
    if not low <= len(cameras) <= high:
        count = f'{low}' if low == high else f'{low} to {high}'
        problems.append(f'{param} {cameras} must name {count} camera(s), got {len(cameras)}')
    problems += [f'{param}: {p}' for p in map(camera_name_problem, cameras) if p]
    if len(set(map(str, cameras))) != len(cameras):
        problems.append(f'{param} {cameras} names a camera twice')
    return problems


def _descriptor(param: Param) -> ParameterDescriptor:
    constraints = []
    if param.choices:
        constraints.append('one of: ' + ', '.join(param.choices))
    if not param.read_only:
        constraints.append('applies at once' if param.runtime else 'applies at next configure')
    descriptor = ParameterDescriptor(
        name=param.name,
        type=Parameter.Type.from_parameter_value(param.default).value,
        description=param.description,
        additional_constraints='; '.join(constraints),
        read_only=param.read_only)
    if param.range is not None:
        low, high = param.range
        if isinstance(param.default, float):
            descriptor.floating_point_range = [
                FloatingPointRange(from_value=float(low), to_value=float(high), step=0.0)]
        else:
            descriptor.integer_range = [
                IntegerRange(from_value=int(low), to_value=int(high), step=1)]
    return descriptor


def declare_params(node: Node, overrides: Optional[Mapping[str, Value]] = None) -> None:
    """Declare every parameter of :data:`PARAMS` on ``node``, with its descriptor.

    Args:
        node: the node.
        overrides: values to use instead of the defaults (e.g. from a test); values given with
            ``--ros-args -p`` or a params file still win, as for any declared parameter.
    """
    overrides = dict(overrides or {})
    unknown = set(overrides) - set(_BY_NAME)
    if unknown:
        raise ConfigError(f'unknown parameter(s) {sorted(unknown)}; known: {sorted(_BY_NAME)}')
    for param in PARAMS:
        node.declare_parameter(param.name, overrides.get(param.name, param.default),
                               _descriptor(param))


def read_params(node: Node) -> NodeParams:
    """Read the current values into a :class:`NodeParams`.

    Raises:
        ConfigError: when the values break a rule, with every reason.
    """
    return NodeParams.from_values({p.name: node.get_parameter(p.name).value for p in PARAMS})


def on_set_parameters(node: Node, parameters: Sequence[Parameter]) -> SetParametersResult:
    """Check a set-parameters request against the current values; the reason says what is wrong.

    Register with ``node.add_on_set_parameters_callback(lambda ps: on_set_parameters(node,
    ps))`` after :func:`declare_params`.
    """
    values = {p.name: node.get_parameter(p.name).value for p in PARAMS
              if node.has_parameter(p.name)}
    for parameter in parameters:
        if parameter.name in _BY_NAME:
            values[parameter.name] = parameter.value
    problems = check_values(values)
    return SetParametersResult(successful=not problems, reason='; '.join(problems))


def _format(value: Value) -> str:
    if isinstance(value, bool):
        return f'`{str(value).lower()}`'
    if isinstance(value, list):
        return '`[' + ', '.join(repr(v) for v in value) + ']`'
    if isinstance(value, str):
        return f"`'{value}'`"
    return f'`{value}`'


def markdown_table() -> str:
    """Return the README's parameter table (GitHub markdown), generated from :data:`PARAMS`."""
    lines = ['| Parameter | Default | Values | Changes | Description |',
             '|---|---|---|---|---|']
    for param in PARAMS:
        if param.choices:
            values = ', '.join(f'`{c}`' for c in param.choices)
        elif param.range is not None:
            values = f'{param.range[0]} .. {param.range[1]}'
        elif isinstance(param.default, bool):
            values = '`true`, `false`'
        else:
            values = ''
        changes = ('read-only' if param.read_only
                   else 'at runtime' if param.runtime else 'next configure')
        description = param.description.replace('|', '\\|')
        lines.append(f'| `{param.name}` | {_format(param.default)} | {values} | {changes} '
                     f'| {description} |')
    return '\n'.join(lines) + '\n'


_FLAG = re.compile(r'--([a-z][a-z0-9-]*)(?: (?!or\b)([^\s;,)]+))?')


def ros_hint(text: str) -> str:
    """Say a library hint the way a node user sets it: ``--weights FILE`` -> ``weights:=FILE``.

    The Segmenter's and checkpoint loader's messages are shared with the command-line tools,
    whose flags mean nothing to ``ros2 run``/``ros2 launch``; flags that are node parameters
    become ``name:=value`` (``-p name:=value`` on the command line). Commands a user runs in a
    shell (``fetch_weights --model M``) keep their flags.
    """
    def replace(match: 're.Match') -> str:
        name = match.group(1).replace('-', '_')
        if name not in _BY_NAME:
            return match.group(0)
        if name == 'model' and 'fetch_weights' in text[max(0, match.start() - 16):match.start()]:
            return match.group(0)  # "run fetch_weights --model M": a shell command
        value = match.group(2) or 'VALUE'
        return f'{name}:={value}'

    text = re.sub(r'--input-size (\d+)x(\d+)', r'input_height:=\1 input_width:=\2', text)
    text = _FLAG.sub(replace, text)
    text = re.sub(r'\bpass (\w+:=)', r'set \1', text)
    return text.replace('or pass a file', 'or set weights:=FILE (-p weights:=FILE)')
