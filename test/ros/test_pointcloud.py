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

"""ros/pointcloud.py: PointCloud2 decoded field by field with an independent struct reader."""

import math
import struct

from cityseg_ros.labels import PALETTE
from cityseg_ros.ros.pointcloud import cloud_msg
from cityseg_ros.stereo import SemanticCloud
import numpy as np
import pytest
from sensor_msgs.msg import PointCloud2, PointField
from std_msgs.msg import Header

# PointField datatype -> struct format character (sensor_msgs/PointField constants).
_STRUCT = {PointField.INT8: 'b', PointField.UINT8: 'B', PointField.INT16: 'h',
           PointField.UINT16: 'H', PointField.INT32: 'i', PointField.UINT32: 'I',
           PointField.FLOAT32: 'f', PointField.FLOAT64: 'd'}


def _read_point(msg: PointCloud2, index: int) -> dict:
    """Decode point ``index`` using only the message's own description of its layout."""
    endian = '>' if msg.is_bigendian else '<'
    row, col = divmod(index, msg.width)
    base = row * msg.row_step + col * msg.point_step
    data = bytes(msg.data)
    return {f.name: struct.unpack_from(endian + _STRUCT[f.datatype], data, base + f.offset)[0]
            for f in msg.fields}


def _rgb_of(packed_float: float) -> tuple:
    """Undo RViz's packing: the float's bits are the uint32 0x00RRGGBB."""
    (bits,) = struct.unpack('<I', struct.pack('<f', packed_float))
    assert bits >> 24 == 0
    return (bits >> 16) & 0xFF, (bits >> 8) & 0xFF, bits & 0xFF


def _header() -> Header:
    header = Header(frame_id='left_camera_optical_frame')
    header.stamp.sec, header.stamp.nanosec = 1_600_000_123, 456_789
    return header


def _dense(n: int = 257, seed: int = 0) -> SemanticCloud:
    rng = np.random.default_rng(seed)
    xyz = rng.uniform(-20, 40, (n, 3)).astype(np.float32)
    labels = rng.integers(0, 19, n, dtype=np.uint8)
    labels[:3] = (0, 18, 255)  # first, last class and ignore (black)
    return SemanticCloud(xyz, labels, PALETTE[labels], 1, n, True)


def _organized(rows: int = 6, cols: int = 9) -> SemanticCloud:
    cloud = _dense(rows * cols, seed=1)
    xyz = cloud.xyz.copy()
    xyz[::4] = np.nan
    return SemanticCloud(xyz, cloud.labels, cloud.rgb, rows, cols, False)


def test_fields_describe_x_y_z_rgb_label():
    msg = cloud_msg(_dense(), _header())
    layout = [(f.name, f.offset, f.datatype, f.count) for f in msg.fields]
    assert layout == [('x', 0, PointField.FLOAT32, 1), ('y', 4, PointField.FLOAT32, 1),
                      ('z', 8, PointField.FLOAT32, 1), ('rgb', 12, PointField.FLOAT32, 1),
                      ('label', 16, PointField.UINT8, 1)]
    assert msg.point_step == 20 and not msg.is_bigendian


@pytest.mark.parametrize('index', [0, 1, 2, 100, 256])
def test_points_decode_field_by_field(index):
    cloud = _dense()
    msg = cloud_msg(cloud, _header())
    point = _read_point(msg, index)
    assert [point['x'], point['y'], point['z']] == cloud.xyz[index].tolist()
    assert point['label'] == cloud.labels[index]
    assert _rgb_of(point['rgb']) == tuple(PALETTE[point['label']])


def test_dense_cloud_is_one_row():
    cloud = _dense()
    msg = cloud_msg(cloud, _header())
    assert (msg.height, msg.width) == (1, len(cloud))
    assert msg.row_step == 20 * len(cloud) and len(msg.data) == msg.row_step
    assert msg.is_dense


def test_organized_cloud_keeps_its_grid_and_nans():
    cloud = _organized()
    msg = cloud_msg(cloud, _header())
    assert (msg.height, msg.width) == (6, 9) and not msg.is_dense
    assert msg.row_step == 20 * 9 and len(msg.data) == msg.row_step * msg.height
    for index in (0, 4, 13, 53):  # 0, 4 dropped (NaN); 13, 53 valid
        point = _read_point(msg, index)
        expected = cloud.xyz[index]
        for name, value in zip('xyz', expected):
            assert (math.isnan(point[name]) and math.isnan(value)) or point[name] == value
        assert point['label'] == cloud.labels[index]
        assert _rgb_of(point['rgb']) == tuple(cloud.rgb[index])


def test_header_is_copied_not_shared():
    header = _header()
    msg = cloud_msg(_dense(), header)
    assert msg.header.frame_id == 'left_camera_optical_frame'
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (1_600_000_123, 456_789)
    header.stamp.sec = 1
    assert msg.header.stamp.sec == 1_600_000_123


def test_every_palette_colour_survives_the_float_packing():
    labels = np.arange(256, dtype=np.uint8)
    cloud = SemanticCloud(np.zeros((256, 3), np.float32), labels, PALETTE[labels], 1, 256, True)
    msg = cloud_msg(cloud, _header())
    for index in range(256):
        assert _rgb_of(_read_point(msg, index)['rgb']) == tuple(PALETTE[index])


def test_empty_cloud_is_a_valid_message():
    empty = SemanticCloud(np.zeros((0, 3), np.float32), np.zeros(0, np.uint8),
                          np.zeros((0, 3), np.uint8), 1, 0, True)
    msg = cloud_msg(empty, _header())
    assert (msg.height, msg.width, len(msg.data)) == (1, 0, 0)


def test_message_round_trips_through_rclpy_serialization():
    from rclpy.serialization import deserialize_message, serialize_message

    msg = cloud_msg(_organized(), _header())
    back = deserialize_message(serialize_message(msg), PointCloud2)
    assert bytes(back.data) == bytes(msg.data)
    assert [f.name for f in back.fields] == ['x', 'y', 'z', 'rgb', 'label']


def test_camera_info_messages_feed_the_stereo_model_directly():
    """The node's path: CameraInfo messages -> StereoModel -> cloud -> PointCloud2."""
    from cityseg_ros.stereo import reproject, StereoModel, StereoParams
    from cityseg_ros.tools.make_bag import DEFAULT_CALIBRATION
    from sensor_msgs.msg import CameraInfo

    def info(calibration):
        msg = CameraInfo(width=calibration.width, height=calibration.height)
        msg.p = calibration.p.reshape(-1).tolist()
        return msg

    cal = DEFAULT_CALIBRATION
    left, right = info(cal.left()), info(cal.right())
    model = StereoModel.from_camera_info(left, right, (512, 1024))  # a half-size image
    assert model.baseline_m == pytest.approx(0.209313) and model.fx == pytest.approx(1131.26)
    disp = np.full((512, 1024), model.fx * model.baseline_m / 10.0, np.float32)  # Z = 10 m
    labels = np.zeros((512, 1024), np.uint8)
    cloud = reproject(disp, model, labels, None, StereoParams(decimation=8, organized=True))
    msg = cloud_msg(cloud, _header())
    assert (msg.height, msg.width) == (64, 128) and msg.is_dense
    point = _read_point(msg, 64 * 128 - 1)  # bottom-right pixel (1016, 504)
    assert point['z'] == pytest.approx(10.0, rel=1e-5)
    assert point['x'] == pytest.approx((1016 - model.cx) * 10.0 / model.fx, rel=1e-5)
    assert point['y'] == pytest.approx((504 - model.cy) * 10.0 / model.fy, rel=1e-5)
    assert _rgb_of(point['rgb']) == tuple(PALETTE[0])
