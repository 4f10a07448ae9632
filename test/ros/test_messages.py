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

"""Message <-> numpy conversions, without spinning (no rclpy.init needed)."""

import array

from cityseg_ros.errors import ImageError
from cityseg_ros.ros.messages import (ACCEPTED_ENCODINGS, copy_header, image_to_rgb, labels_msg,
                                      rgb_msg, stamp_ns)
import numpy as np
import pytest
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import Image
from std_msgs.msg import Header

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (6, 10, 3), dtype=np.uint8)

# Which pixel of each 2x2 cell carries which colour, per ROS Bayer encoding (row, col).
BAYER_SITES = {
    'bayer_rggb8': {'r': (0, 0), 'b': (1, 1)},
    'bayer_bggr8': {'r': (1, 1), 'b': (0, 0)},
    'bayer_gbrg8': {'r': (1, 0), 'b': (0, 1)},
    'bayer_grbg8': {'r': (0, 1), 'b': (1, 0)},
}


def _header(sec=12, nanosec=345, frame_id='cam_left_optical'):
    header = Header(frame_id=frame_id)
    header.stamp.sec, header.stamp.nanosec = sec, nanosec
    return header


def _image(pixels: np.ndarray, encoding: str, pad: int = 0) -> Image:
    """Build an input message the way a driver would, optionally with padded rows."""
    height, width = pixels.shape[:2]
    rows = pixels.reshape(height, -1)
    if pad:
        rows = np.concatenate([rows, np.full((height, pad), 77, np.uint8)], axis=1)
    msg = Image(height=height, width=width, encoding=encoding, step=rows.shape[1])
    msg.data = array.array('B', rows.tobytes())
    return msg


def _bayer(color, encoding, height=8, width=12):
    mosaic = np.full((height, width), color[1], np.uint8)  # green everywhere else
    for channel, (row, col) in BAYER_SITES[encoding].items():
        mosaic[row::2, col::2] = color[0 if channel == 'r' else 2]
    return mosaic


@pytest.mark.parametrize('encoding,pixels', [
    ('rgb8', RGB),
    ('bgr8', RGB[..., ::-1]),
    ('rgba8', np.dstack([RGB, np.full(RGB.shape[:2], 9, np.uint8)])),
    ('bgra8', np.dstack([RGB[..., ::-1], np.full(RGB.shape[:2], 9, np.uint8)])),
])
@pytest.mark.parametrize('pad', [0, 5])
def test_image_to_rgb_decodes_colour_encodings(encoding, pixels, pad):
    rgb = image_to_rgb(_image(np.ascontiguousarray(pixels), encoding, pad))
    assert rgb.dtype == np.uint8 and rgb.flags.c_contiguous
    np.testing.assert_array_equal(rgb, RGB)


@pytest.mark.parametrize('pad', [0, 3])
def test_image_to_rgb_replicates_mono8(pad):
    gray = RGB[..., 0].copy()
    rgb = image_to_rgb(_image(gray, 'mono8', pad))
    assert rgb.shape == (6, 10, 3)
    for channel in range(3):
        np.testing.assert_array_equal(rgb[..., channel], gray)


@pytest.mark.parametrize('encoding', sorted(BAYER_SITES))
@pytest.mark.parametrize('pad', [0, 4])
def test_image_to_rgb_demosaics_each_bayer_pattern(encoding, pad):
    color = (200, 100, 30)
    rgb = image_to_rgb(_image(_bayer(color, encoding), encoding, pad))
    assert rgb.shape == (8, 12, 3)
    # A flat colour demosaics back to itself away from the border, whatever the pattern:
    # a swapped R/B pattern would give (30, 100, 200).
    inner = rgb[2:-2, 2:-2].reshape(-1, 3).astype(int)
    assert np.abs(inner - np.array(color)).max() <= 2


def test_accepted_encodings_are_the_contract():
    # DESIGN.md: rgb8, bgr8, rgba8, bgra8, mono8, bayer_*8, yuv422 variants, 16-bit encodings.
    bayer = {f'bayer_{order}{bits}' for order in ('rggb', 'bggr', 'gbrg', 'grbg')
             for bits in (8, 16)}
    assert set(ACCEPTED_ENCODINGS) == {
        'rgb8', 'bgr8', 'rgba8', 'bgra8', 'mono8', 'rgb16', 'bgr16', 'rgba16', 'bgra16', 'mono16',
        'yuv422', 'uyvy', 'yuv422_yuy2', 'yuyv', 'nv12', 'nv21', *bayer}


@pytest.mark.parametrize('encoding', ['16UC1', '32FC1', 'yuv999', ''])
def test_image_to_rgb_rejects_other_encodings_naming_it_and_the_accepted_ones(encoding):
    msg = _image(RGB[..., 0].copy(), 'mono8')
    msg.encoding = encoding
    with pytest.raises(ImageError, match='unsupported encoding') as info:
        image_to_rgb(msg)
    assert repr(encoding) in str(info.value)
    assert 'rgb8, bgr8' in str(info.value) and 'bayer_grbg8' in str(info.value)


@pytest.mark.parametrize('height,width', [(0, 10), (6, 0), (0, 0)])
def test_image_to_rgb_rejects_empty_images(height, width):
    msg = Image(height=height, width=width, encoding='rgb8', step=width * 3)
    with pytest.raises(ImageError, match='must be > 0'):
        image_to_rgb(msg)


def test_image_to_rgb_rejects_a_step_smaller_than_a_row():
    msg = _image(RGB, 'rgb8')
    msg.step = 29
    with pytest.raises(ImageError, match='step 29, smaller than width x 3 byte'):
        image_to_rgb(msg)


def test_image_to_rgb_rejects_truncated_data():
    msg = _image(RGB, 'rgb8')
    msg.data = msg.data[:-1]
    with pytest.raises(ImageError, match='179 data bytes, fewer than step x height = 30 x 6'):
        image_to_rgb(msg)


def test_image_to_rgb_survives_serialization_roundtrip():
    msg = deserialize_message(serialize_message(_image(RGB[..., ::-1].copy(), 'bgr8')), Image)
    np.testing.assert_array_equal(image_to_rgb(msg), RGB)


def test_labels_msg_is_mono8_with_the_input_header():
    labels = RNG.integers(0, 19, (6, 10), dtype=np.uint8)
    labels[0, 0] = 255
    header = _header()
    msg = labels_msg(labels, header)
    assert (msg.encoding, msg.height, msg.width, msg.step) == ('mono8', 6, 10, 10)
    assert msg.is_bigendian == 0
    assert isinstance(msg.data, array.array) and msg.data.typecode == 'B'
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (12, 345)
    assert msg.header.frame_id == 'cam_left_optical'
    assert msg.header is not header
    header.frame_id = 'changed'  # a copy: later edits of the input do not leak into outputs
    assert msg.header.frame_id == 'cam_left_optical'
    back = deserialize_message(serialize_message(msg), Image)
    np.testing.assert_array_equal(
        np.frombuffer(back.data, np.uint8).reshape(6, 10), labels)


def test_rgb_msg_accepts_non_contiguous_arrays_and_roundtrips():
    view = RGB[:, ::2]  # strided: must be packed, not sent with holes
    msg = rgb_msg(view, _header(frame_id='f'))
    assert (msg.encoding, msg.height, msg.width, msg.step) == ('rgb8', 6, 5, 15)
    assert len(msg.data) == 6 * 15
    np.testing.assert_array_equal(image_to_rgb(msg), view)


@pytest.mark.parametrize('builder,bad', [
    (labels_msg, np.zeros((4, 4, 3), np.uint8)),
    (labels_msg, np.zeros((4, 4), np.int32)),
    (rgb_msg, np.zeros((4, 4), np.uint8)),
    (rgb_msg, np.zeros((4, 4, 4), np.uint8)),
])
def test_builders_reject_wrong_shapes_and_dtypes(builder, bad):
    with pytest.raises(ImageError, match='output needs an'):
        builder(bad, _header())


def test_stamp_ns_and_copy_header():
    header = _header(sec=3, nanosec=7)
    assert stamp_ns(header) == 3_000_000_007
    copied = copy_header(header)
    assert copied == header and copied is not header and copied.stamp is not header.stamp
