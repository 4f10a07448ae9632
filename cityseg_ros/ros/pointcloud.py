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

"""SemanticCloud -> sensor_msgs/PointCloud2 for ``semantic/points`` (no spinning needed).

Point layout, little-endian, 20 bytes per point (``point_step``)::

    offset  0  x      FLOAT32  metres, left optical frame (x right, y down, z forward)
    offset  4  y      FLOAT32
    offset  8  z      FLOAT32
    offset 12  rgb    FLOAT32  the uint32 0x00RRGGBB reinterpreted as float32 (PCL's and
                               RViz's "rgb" convention; RViz's RGB8 colour transformer)
    offset 16  label  UINT8    Cityscapes trainId (RViz: Intensity on channel "label")
    offset 17  --     3 padding bytes, zero, so every point starts 4-byte aligned

The points are written into one numpy structured array and its bytes are copied once into the
``array('B')`` the message's ``data`` field holds (see ``ros/messages.py`` on why not bytes).
"""

import array

from cityseg_ros.ros.messages import copy_header
from cityseg_ros.stereo import SemanticCloud
import numpy as np
from sensor_msgs.msg import PointCloud2, PointField
from std_msgs.msg import Header

__all__ = ['POINT_DTYPE', 'POINT_STEP', 'point_fields', 'pack_rgb', 'cloud_msg']

#: Bytes per point: 17 used, padded to a multiple of 4.
POINT_STEP = 20
#: One point as numpy sees it; ``rgb`` is held as uint32 so no float op can touch its bits.
POINT_DTYPE = np.dtype({'names': ['x', 'y', 'z', 'rgb', 'label'],
                        'formats': ['<f4', '<f4', '<f4', '<u4', 'u1'],
                        'offsets': [0, 4, 8, 12, 16], 'itemsize': POINT_STEP})


def point_fields() -> list:
    """Return the PointField list that describes :data:`POINT_DTYPE`."""
    return [PointField(name='x', offset=0, datatype=PointField.FLOAT32, count=1),
            PointField(name='y', offset=4, datatype=PointField.FLOAT32, count=1),
            PointField(name='z', offset=8, datatype=PointField.FLOAT32, count=1),
            PointField(name='rgb', offset=12, datatype=PointField.FLOAT32, count=1),
            PointField(name='label', offset=16, datatype=PointField.UINT8, count=1)]


def pack_rgb(rgb: np.ndarray) -> np.ndarray:
    """Pack (N, 3) uint8 RGB into (N,) uint32 ``0x00RRGGBB`` (view as float32 for the wire)."""
    rgb = rgb.astype(np.uint32, copy=False)
    return (rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]


def cloud_msg(cloud: SemanticCloud, header: Header) -> PointCloud2:
    """Build the PointCloud2 of ``cloud`` with a copy of ``header`` (stamp and frame_id).

    Args:
        cloud: points in the left optical frame; organized clouds keep their grid (height > 1,
            NaN coordinates for dropped points), dense ones are 1 x N.
        header: the left image's header.

    Returns:
        A little-endian PointCloud2 with the fields of :func:`point_fields`, ``point_step``
        20, ``row_step = 20 * width`` and ``is_dense`` from the cloud (False when it has NaNs).
    """
    n = len(cloud)
    points = np.zeros(n, dtype=POINT_DTYPE)  # zeros: the padding bytes are deterministic
    points['x'] = cloud.xyz[:, 0]
    points['y'] = cloud.xyz[:, 1]
    points['z'] = cloud.xyz[:, 2]
    points['rgb'] = pack_rgb(cloud.rgb.reshape(-1, 3))
    points['label'] = cloud.labels
    msg = PointCloud2()
    msg.header = copy_header(header)
    msg.height, msg.width = int(cloud.height), int(cloud.width)
    msg.fields = point_fields()
    msg.is_bigendian = False
    msg.point_step = POINT_STEP
    msg.row_step = POINT_STEP * msg.width
    data = array.array('B')
    data.frombytes(points.view(np.uint8))  # one copy, no intermediate bytes object
    msg.data = data
    msg.is_dense = bool(cloud.is_dense)
    return msg
