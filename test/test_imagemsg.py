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

import array
import types

from cityseg_ros.errors import ImageError
from cityseg_ros.imagemsg import COLOR_ENCODINGS, image_to_numpy, LAYOUTS
import cv2
import numpy as np
import pytest

H, W = 6, 10


def _msg(pixels: np.ndarray, encoding: str, height: int, width: int, pad: int = 0,
         bigendian: bool = False):
    """Build a message whose rows are ``pixels``' rows (bytes), each padded by ``pad``."""
    raw = np.ascontiguousarray(pixels)
    if bigendian:
        raw = raw.astype(raw.dtype.newbyteorder('>'))
    rows = raw.view(np.uint8).reshape(raw.shape[0], -1)
    step = rows.shape[1] + pad
    buf = np.zeros((rows.shape[0], step), np.uint8)
    buf[:, :rows.shape[1]] = rows
    return types.SimpleNamespace(height=height, width=width, encoding=encoding,
                                 is_bigendian=int(bigendian), step=step,
                                 data=array.array('B', buf.tobytes()))


def _random(shape, dtype=np.uint8, seed=0):
    info = np.iinfo(dtype)
    return np.random.default_rng(seed).integers(0, int(info.max) + 1, shape, dtype=dtype)


@pytest.mark.parametrize('encoding, code', [
    ('yuv422', cv2.COLOR_YUV2RGB_UYVY), ('uyvy', cv2.COLOR_YUV2RGB_UYVY),
    ('yuv422_yuy2', cv2.COLOR_YUV2RGB_YUY2), ('yuyv', cv2.COLOR_YUV2RGB_YUY2),
])
@pytest.mark.parametrize('pad', [0, 6])
def test_yuv422_matches_opencv_cvtcolor(encoding, code, pad):
    packed = _random((H, W, 2))
    rgb = image_to_numpy(_msg(packed, encoding, H, W, pad), rgb=True)
    assert rgb.shape == (H, W, 3) and rgb.dtype == np.uint8
    assert (rgb == cv2.cvtColor(packed, code)).all()


def test_yuv422_is_uyvy_byte_order_and_yuy2_is_yuyv():
    # Grey (U = V = 128): the luma bytes alone give the output. In ROS's yuv422 (UYVY) they
    # are the odd bytes; in yuv422_yuy2 (YUYV) the even ones.
    luma = np.tile(np.linspace(16, 235, W).astype(np.uint8), (H, 1))
    uyvy = np.full((H, W, 2), 128, np.uint8)
    uyvy[..., 1] = luma
    yuyv = np.full((H, W, 2), 128, np.uint8)
    yuyv[..., 0] = luma
    grey_uyvy = image_to_numpy(_msg(uyvy, 'yuv422', H, W), rgb=True)
    grey_yuyv = image_to_numpy(_msg(yuyv, 'yuv422_yuy2', H, W), rgb=True)
    for grey in (grey_uyvy, grey_yuyv):
        assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
        # BT.601 studio range: Y 16 -> black, 235 -> white.
        assert grey[0, 0, 0] <= 1 and grey[0, -1, 0] >= 254
    assert (grey_uyvy == grey_yuyv).all()


@pytest.mark.parametrize('encoding, code', [('nv12', cv2.COLOR_YUV2RGB_NV12),
                                            ('nv21', cv2.COLOR_YUV2RGB_NV21)])
@pytest.mark.parametrize('pad', [0, 6])
def test_nv12_nv21_match_opencv_cvtcolor(encoding, code, pad):
    planes = _random((H * 3 // 2, W))  # H rows of Y, then H/2 rows of interleaved chroma
    rgb = image_to_numpy(_msg(planes, encoding, H, W, pad), rgb=True)
    assert rgb.shape == (H, W, 3)
    assert (rgb == cv2.cvtColor(planes, code)).all()


def test_nv21_is_nv12_with_chroma_swapped():
    planes = _random((H * 3 // 2, W), seed=3)
    swapped = planes.copy()
    swapped[H:, 0::2], swapped[H:, 1::2] = planes[H:, 1::2], planes[H:, 0::2]
    assert (image_to_numpy(_msg(planes, 'nv21', H, W), rgb=True)
            == image_to_numpy(_msg(swapped, 'nv12', H, W), rgb=True)).all()


@pytest.mark.parametrize('encoding, shape, code', [
    ('rgb16', (H, W, 3), None), ('bgr16', (H, W, 3), cv2.COLOR_BGR2RGB),
    ('rgba16', (H, W, 4), cv2.COLOR_RGBA2RGB), ('bgra16', (H, W, 4), cv2.COLOR_BGRA2RGB),
    ('mono16', (H, W), cv2.COLOR_GRAY2RGB), ('bayer_rggb16', (H, W), cv2.COLOR_BayerBG2RGB),
])
@pytest.mark.parametrize('bigendian', [False, True])
def test_16_bit_encodings_scale_like_cv_bridge(encoding, shape, code, bigendian):
    pixels = _random(shape, np.uint16, seed=1)
    rgb = image_to_numpy(_msg(pixels, encoding, H, W, 2, bigendian), rgb=True)
    colour = pixels if code is None else cv2.cvtColor(pixels, code)
    # cv_bridge: convertTo(CV_8U, 255. / 65535.), i.e. round(v * 255 / 65535).
    expected = np.round(colour.astype(np.float64) * 255.0 / 65535.0).astype(np.uint8)
    assert rgb.dtype == np.uint8 and rgb.shape == (H, W, 3)
    assert (rgb == expected).all()


def test_16_bit_rule_covers_every_value():
    values = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    grey = image_to_numpy(_msg(values, 'mono16', 256, 256), rgb=True)[..., 0]
    assert (grey.astype(np.int64) == (values.astype(np.int64) + 128) // 257).all()
    assert grey[0, 0] == 0 and grey[-1, -1] == 255


def test_mono16_label_path_keeps_16_bits_and_fixes_byte_order():
    pixels = _random((H, W), np.uint16, seed=2)
    out = image_to_numpy(_msg(pixels, 'mono16', H, W, 4, bigendian=True))
    assert out.dtype == np.uint16 and out.dtype.isnative and (out == pixels).all()


@pytest.mark.parametrize('encoding', ['yuv422', 'uyvy', 'yuv422_yuy2', 'yuyv'])
def test_yuv422_odd_width_is_rejected_with_the_reason(encoding):
    with pytest.raises(ImageError, match='odd width.*pairs'):
        image_to_numpy(_msg(_random((H, 9, 2)), encoding, H, 9), rgb=True)


def test_yuv422_odd_height_is_fine():
    packed = _random((5, W, 2))
    assert image_to_numpy(_msg(packed, 'yuv422', 5, W), rgb=True).shape == (5, W, 3)


@pytest.mark.parametrize('encoding', ['nv12', 'nv21'])
@pytest.mark.parametrize('height, width', [(6, 9), (5, 10)])
def test_yuv420_odd_side_is_rejected_with_the_reason(encoding, height, width):
    planes = _random((height * 3 // 2 + 1, width))
    with pytest.raises(ImageError, match='odd side.*2x2'):
        image_to_numpy(_msg(planes, encoding, height, width), rgb=True)


def test_nv12_without_its_chroma_rows_is_truncated():
    with pytest.raises(ImageError, match='fewer than step x height x 3 / 2'):
        image_to_numpy(_msg(_random((H, W)), 'nv12', H, W), rgb=True)


def test_every_camera_encoding_decodes_to_rgb():
    for encoding in COLOR_ENCODINGS:
        dtype, channels = LAYOUTS[encoding]
        rows = H * 3 // 2 if encoding in ('nv12', 'nv21') else H
        shape = (rows, W) if channels == 1 else (rows, W, channels)
        rgb = image_to_numpy(_msg(_random(shape, dtype.type), encoding, H, W), rgb=True)
        assert rgb.shape == (H, W, 3) and rgb.dtype == np.uint8, encoding
        assert rgb.flags.writeable and rgb.flags.c_contiguous, encoding


def test_rgb8_shares_the_message_buffer():
    pixels = _random((H, W, 3))
    msg = _msg(pixels, 'rgb8', H, W)
    rgb = image_to_numpy(msg, rgb=True)
    assert (rgb == pixels).all()
    assert np.shares_memory(rgb, np.frombuffer(msg.data, np.uint8))


@pytest.mark.parametrize('encoding', ['32FC1', '16UC1', 'nv24', ''])
def test_non_camera_encodings_are_refused_for_the_camera_path(encoding):
    dtype, channels = LAYOUTS.get(encoding, (np.dtype(np.uint8), 1))
    msg = _msg(np.zeros((H, W), dtype), encoding, H, W)
    with pytest.raises(ImageError, match=repr(encoding)):
        image_to_numpy(msg, rgb=True)
