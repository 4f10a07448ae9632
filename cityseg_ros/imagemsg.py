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
call :func:`image_to_numpy`. Row padding is stripped and sizes are checked here; colour
conversion is rosbags-image's (``message_to_cvimage``), which ignores ``step``.
"""

import types
from typing import Any

from cityseg_ros.errors import ImageError
import numpy as np
from rosbags.image import message_to_cvimage

__all__ = ['COLOR_ENCODINGS', 'LAYOUTS', 'image_to_numpy']

#: Encodings accepted as a camera image (converted to RGB), as the node accepts them.
COLOR_ENCODINGS: tuple[str, ...] = (
    'rgb8', 'bgr8', 'rgba8', 'bgra8', 'mono8',
    'bayer_rggb8', 'bayer_bggr8', 'bayer_gbrg8', 'bayer_grbg8',
)

# encoding -> (dtype, channels): what a row of pixels holds, to check step and data size. The
# OpenCV-style names are those ROS uses for label and depth images.
LAYOUTS: dict[str, tuple[np.dtype, int]] = {
    **{enc: (np.dtype(np.uint8), 1) for enc in COLOR_ENCODINGS if enc.startswith('bayer_')},
    'rgb8': (np.dtype(np.uint8), 3), 'bgr8': (np.dtype(np.uint8), 3),
    'rgba8': (np.dtype(np.uint8), 4), 'bgra8': (np.dtype(np.uint8), 4),
    'mono8': (np.dtype(np.uint8), 1), '8UC1': (np.dtype(np.uint8), 1),
    'mono16': (np.dtype(np.uint16), 1), '16UC1': (np.dtype(np.uint16), 1),
    '32SC1': (np.dtype(np.int32), 1), '32FC1': (np.dtype(np.float32), 1),
}


def image_to_numpy(msg: Any, rgb: bool = False) -> np.ndarray:
    """Decode a sensor_msgs/Image (rosbags or rclpy message) to a writable numpy array.

    Row padding (``step`` larger than a row) is removed, big-endian data swapped; colour
    conversion is rosbags-image's.

    Args:
        msg: any object with height, width, encoding, is_bigendian, step and data.
        rgb: convert to HxWx3 uint8 RGB (mono8 and bayer included): for camera images. When
            False, 3- and 4-channel colour encodings still come back as RGB but single-channel
            images keep their 2-D layout and dtype (label and instance images).

    Raises:
        ImageError: unknown encoding, no pixels, ``step`` smaller than a row, data shorter
            than ``step * height``, or ``rgb`` asked of a non-8-bit encoding.
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
    if step < row:
        raise ImageError(f'{encoding} image {width}x{height} has step {step}, smaller than '
                         f'width x {channels * dtype.itemsize} byte(s) per pixel = {row}')
    if data.size < step * height:
        raise ImageError(f'{encoding} image {width}x{height} has {data.size} data bytes, fewer '
                         f'than step x height = {step} x {height} = {step * height} (truncated)')
    pixels = data[:step * height]
    if step != row:
        pixels = np.ascontiguousarray(pixels.reshape(height, step)[:, :row]).reshape(-1)
    plain = types.SimpleNamespace(height=height, width=width, encoding=encoding,
                                  is_bigendian=int(bool(msg.is_bigendian)), data=pixels)
    target = 'rgb8' if rgb or channels >= 3 or encoding.startswith('bayer_') else None
    image = np.asarray(message_to_cvimage(plain, target))
    if not image.flags.writeable or not image.flags.c_contiguous:
        image = np.array(image)
    return image
