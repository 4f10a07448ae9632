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

"""The node's topics in one table, for the README (generated, checked by a test).

Plain data, no rclpy: the names are the ones ``inputs.py`` and ``outputs.py`` use
(:data:`cityseg_ros.ros.outputs.OUTPUTS` is checked against :data:`TOPICS` by the test).
"""

from typing import Tuple

__all__ = ['TOPICS', 'markdown_topics']

_ENCODINGS = ('rgb8, bgr8, rgba8, bgra8, mono8, bayer_*8, rgb16, bgr16, rgba16, bgra16, mono16, '
              'bayer_*16 (16-bit scaled to 8 as cv_bridge: round(v x 255 / 65535)), yuv422 (= '
              'uyvy, UYVY order), yuv422_yuy2 (= yuyv), nv12, nv21 (even sides)')

#: (topic, type, encoding / QoS, meaning); ``C`` is each camera of ``cameras``.
TOPICS: Tuple[Tuple[str, str, str, str], ...] = (
    ('`C/image_rect_color`', 'sensor_msgs/Image',
     f'{_ENCODINGS}; QoS matched to the publishers (`input_reliability: auto`), keep last '
     '`input_depth`', 'rectified input (`input_transport: raw`)'),
    ('`C/image_rect_color/compressed`', 'sensor_msgs/CompressedImage',
     "JPEG or PNG, `format` as image_transport's compressed plugin writes it (`rgb8; jpeg "
     'compressed bgr8`, `mono8; png compressed `, old-style `jpeg`/`png`); QoS as raw',
     'rectified input (`input_transport: compressed`), decoded on `decode_threads`'),
    ('`C/camera_info`', 'sensor_msgs/CameraInfo',
     'as the images; the latest valid one is used (its stamp is not matched)',
     "calibration: republished as `C/semantic/camera_info`, and the stereo pair's for "
     '`semantic/points`'),
    ('`C/semantic/labels`', 'sensor_msgs/Image', 'mono8, reliable',
     'ids of `label_space` at the input size: `trainid` 0..18 and 255 = ignore (default), '
     '`labelid` Cityscapes labelIds (7 road .. 33 bicycle, 0 = unlabeled), `category` 1 flat '
     ".. 7 vehicle (0 = void), or the `label_map` file's ids"),
    ('`C/semantic/labels/compressed`', 'sensor_msgs/CompressedImage',
     "PNG, `format` `mono8; png compressed ` (image_transport's), reliable",
     'the same ids, lossless (decodes to exactly `C/semantic/labels`); never JPEG for labels'),
    ('`C/semantic/camera_info`', 'sensor_msgs/CameraInfo', 'reliable',
     "the input `C/camera_info` with each label image's header (stamp and frame_id), for "
     'image_geometry-style consumers'),
    ('`C/semantic/color`', 'sensor_msgs/Image', 'rgb8',
     "the label space's colours (Cityscapes palette for trainid/labelid)"),
    ('`C/semantic/overlay`', 'sensor_msgs/Image', 'rgb8',
     'photo blended with those colours (`overlay_alpha`; ignored pixels show the photo)'),
    ('`C/semantic/confidence`', 'sensor_msgs/Image', 'mono8',
     'max softmax x 255 (`publish_confidence`)'),
    ('`semantic/points`', 'sensor_msgs/PointCloud2',
     'x, y, z float32, rgb float32 (RViz-packed), label uint8; point_step 20',
     'labelled stereo points in the left optical frame of `stereo_cameras`, whenever both '
     'are in `cameras` and somebody subscribes; label and colour in the label space, '
     '`points_drop_classes` (trainIds; sky by default) dropped'),
    ('`/diagnostics`', 'diagnostic_msgs/DiagnosticArray',
     '1 Hz, steady clock (keeps coming when `/clock` stops)',
     'level + one-sentence reason, rates, latency, drops, rejects, losses, time jumps, per '
     'camera rates and drops (keys below)'),
)


def markdown_topics() -> str:
    """Return the README's topic table (GitHub markdown), generated from :data:`TOPICS`."""
    lines = ['| topic | type | encoding / QoS | meaning |', '|---|---|---|---|']
    for row in TOPICS:
        lines.append('| ' + ' | '.join(cell.replace('|', '\\|') for cell in row) + ' |')
    return '\n'.join(lines) + '\n'
