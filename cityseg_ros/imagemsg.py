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

"""sensor_msgs/Image buffers to numpy, for rclpy and rosbags messages alike.

The one decoder of camera, label and instance images: the live node and the bag reader both
call :func:`image_to_numpy`. Sizes are checked against the data before anything is allocated,
row padding (``step``) is stripped, big-endian data swapped, and colour converted with the
OpenCV codes cv_bridge uses (``getConversionCodes`` in ``cv_bridge.cpp``):

- ``yuv422`` is UYVY byte order (U0 Y0 V0 Y1), as in cv_bridge and sensor_msgs, and equal to
  ``uyvy``; ``yuv422_yuy2`` is YUYV (Y0 U0 Y1 V0), equal to ``yuyv``. 4:2:2 needs an even
  width (pixels come in pairs).
- ``nv21`` (Jazzy's sensor_msgs) and ``nv12`` (rosbags-image): 4:2:0 semi-planar, as V4L2 lays
  them out: ``height`` rows of Y, then ``height / 2`` rows of interleaved chroma (VU for nv21,
  UV for nv12), every row ``step`` bytes; ``width`` and ``height`` are the image's, and both
  must be even.
- 16-bit images (``rgb16``, ``bgr16``, ``rgba16``, ``bgra16``, ``mono16``, ``bayer_*16``) become
  8-bit for the camera path as cv_bridge converts them: colour first, then
  ``round(v * 255 / 65535)`` (``convertTo(CV_8U, 255. / 65535.)``). Label and instance images
  (``rgb=False``) keep 16 bits when single-channel.
"""

from typing import Any

from cityseg_ros.errors import ImageError
from cityseg_ros.imageio import scale_16_to_8
import cv2
import numpy as np

__all__ = ['COLOR_ENCODINGS', 'LAYOUTS', 'image_to_numpy']

_BAYER = ('rggb', 'bggr', 'gbrg', 'grbg')

#: Encodings accepted as a camera image (converted to RGB), as the node accepts them.
COLOR_ENCODINGS: tuple[str, ...] = (
    'rgb8', 'bgr8', 'rgba8', 'bgra8', 'mono8',
    *(f'bayer_{p}8' for p in _BAYER),
    'rgb16', 'bgr16', 'rgba16', 'bgra16', 'mono16',
    *(f'bayer_{p}16' for p in _BAYER),
    'yuv422', 'uyvy', 'yuv422_yuy2', 'yuyv', 'nv12', 'nv21',
)

# encoding -> (dtype, channels): what a row of pixels holds, to check step and data size. The
# OpenCV-style names are those ROS uses for label and depth images. nv12/nv21 rows are their Y
# rows (1 byte per pixel); the chroma rows follow (see the module docstring).
LAYOUTS: dict[str, tuple[np.dtype, int]] = {
    'rgb8': (np.dtype(np.uint8), 3), 'bgr8': (np.dtype(np.uint8), 3),
    'rgba8': (np.dtype(np.uint8), 4), 'bgra8': (np.dtype(np.uint8), 4),
    'mono8': (np.dtype(np.uint8), 1), '8UC1': (np.dtype(np.uint8), 1),
    **{f'bayer_{p}8': (np.dtype(np.uint8), 1) for p in _BAYER},
    'rgb16': (np.dtype(np.uint16), 3), 'bgr16': (np.dtype(np.uint16), 3),
    'rgba16': (np.dtype(np.uint16), 4), 'bgra16': (np.dtype(np.uint16), 4),
    'mono16': (np.dtype(np.uint16), 1), '16UC1': (np.dtype(np.uint16), 1),
    **{f'bayer_{p}16': (np.dtype(np.uint16), 1) for p in _BAYER},
    'yuv422': (np.dtype(np.uint8), 2), 'uyvy': (np.dtype(np.uint8), 2),
    'yuv422_yuy2': (np.dtype(np.uint8), 2), 'yuyv': (np.dtype(np.uint8), 2),
    'nv12': (np.dtype(np.uint8), 1), 'nv21': (np.dtype(np.uint8), 1),
    '32SC1': (np.dtype(np.int32), 1), '32FC1': (np.dtype(np.float32), 1),
}

# encoding -> OpenCV code to RGB (None: already RGB). cv_bridge's table; OpenCV names Bayer
# patterns by the second row's first two pixels, hence rggb -> BayerBG.
_TO_RGB: dict[str, Any] = {
    'rgb8': None, 'bgr8': cv2.COLOR_BGR2RGB, 'rgba8': cv2.COLOR_RGBA2RGB,
    'bgra8': cv2.COLOR_BGRA2RGB, 'mono8': cv2.COLOR_GRAY2RGB,
    'rgb16': None, 'bgr16': cv2.COLOR_BGR2RGB, 'rgba16': cv2.COLOR_RGBA2RGB,
    'bgra16': cv2.COLOR_BGRA2RGB, 'mono16': cv2.COLOR_GRAY2RGB,
    'yuv422': cv2.COLOR_YUV2RGB_UYVY, 'uyvy': cv2.COLOR_YUV2RGB_UYVY,
    'yuv422_yuy2': cv2.COLOR_YUV2RGB_YUY2, 'yuyv': cv2.COLOR_YUV2RGB_YUY2,
    'nv12': cv2.COLOR_YUV2RGB_NV12, 'nv21': cv2.COLOR_YUV2RGB_NV21,
    **{f'bayer_{p}{b}': code for b in (8, 16) for p, code in zip(_BAYER, (
        cv2.COLOR_BayerBG2RGB, cv2.COLOR_BayerRG2RGB, cv2.COLOR_BayerGR2RGB,
        cv2.COLOR_BayerGB2RGB))},
}
_YUV422 = ('yuv422', 'uyvy', 'yuv422_yuy2', 'yuyv')
_YUV420 = ('nv12', 'nv21')


def _check_subsampling(encoding: str, width: int, height: int) -> None:
    if encoding in _YUV422 and width % 2:
        raise ImageError(f'{encoding} image {width}x{height} has an odd width: 4:2:2 pixels '
                         'come in pairs that share U and V, so the width must be even')
    if encoding in _YUV420 and (width % 2 or height % 2):
        raise ImageError(f'{encoding} image {width}x{height} has an odd side: 4:2:0 shares '
                         'one U, V pair between 2x2 pixels, so width and height must be even')


def image_to_numpy(msg: Any, rgb: bool = False) -> np.ndarray:
    """Decode a sensor_msgs/Image (rosbags or rclpy message) to a writable numpy array.

    Args:
        msg: any object with height, width, encoding, is_bigendian, step and data.
        rgb: convert to HxWx3 uint8 RGB (any of :data:`COLOR_ENCODINGS`): for camera images.
            When False, colour, Bayer and YUV encodings still come back as 8-bit RGB, but
            single-channel images keep their 2-D layout and dtype (label and instance images,
            mono16 as uint16).

    Returns:
        A C-contiguous writable array; unpadded little-endian rgb8 shares the message's
        buffer when that buffer is writable (rclpy's ``array('B')``).

    Raises:
        ImageError: unknown encoding, no pixels, ``step`` smaller than a row, data shorter
            than the image needs, an odd side for 4:2:2 / 4:2:0, or ``rgb`` asked of an
            encoding that is not a camera image (e.g. 32FC1).
    """
    encoding = str(msg.encoding)
    if encoding not in LAYOUTS:
        raise ImageError(f'image encoding {encoding!r} is not supported; '
                         f'accepted: {", ".join(LAYOUTS)}')
    if rgb and encoding not in COLOR_ENCODINGS:
        raise ImageError(f'a camera image must be one of {", ".join(COLOR_ENCODINGS)}, '
                         f'got {encoding!r}')
    dtype, channels = LAYOUTS[encoding]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    row = width * channels * dtype.itemsize
    data = np.frombuffer(msg.data, dtype=np.uint8) if not isinstance(msg.data, np.ndarray) \
        else msg.data.reshape(-1).view(np.uint8)
    if height <= 0 or width <= 0:
        raise ImageError(f'{encoding} image has size {width}x{height}: width and height must '
                         'be > 0')
    _check_subsampling(encoding, width, height)
    if step < row:
        raise ImageError(f'{encoding} image {width}x{height} has step {step}, smaller than '
                         f'width x {channels * dtype.itemsize} byte(s) per pixel = {row}')
    rows = height * 3 // 2 if encoding in _YUV420 else height  # Y rows, then chroma rows
    if data.size < step * rows:
        need = (f'step x height x 3 / 2 = {step} x {height} x 3 / 2' if rows != height
                else f'step x height = {step} x {height}')
        raise ImageError(f'{encoding} image {width}x{height} has {data.size} data bytes, fewer '
                         f'than {need} = {step * rows} (truncated)')
    pixels = data[:step * rows].reshape(rows, step)
    if step != row:
        pixels = pixels[:, :row]
    shape = (rows, width) if channels == 1 else (rows, width, channels)
    wire = dtype.newbyteorder('>' if msg.is_bigendian else '<')
    image = np.ascontiguousarray(pixels).view(wire).reshape(shape)
    if not wire.isnative:
        image = image.astype(dtype)
    if channels == 1 and encoding not in _YUV420 and not encoding.startswith('bayer_'):
        if not rgb:
            return image if image.flags.writeable else image.copy()
        if image.dtype == np.uint16:  # grey: scaling first is the same, on a third of the data
            image = scale_16_to_8(image)
    code = _TO_RGB[encoding]
    image = image if code is None else cv2.cvtColor(image, code)
    if image.dtype == np.uint16:
        image = scale_16_to_8(image)
    return image if image.flags.writeable else image.copy()
