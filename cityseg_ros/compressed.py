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

"""sensor_msgs/CompressedImage (JPEG, PNG) to and from numpy, as image_transport writes them.

The ``format`` field follows image_transport_plugins' compressed plugin
(``compressed_publisher.cpp``, Jazzy): ``"<encoding>; jpeg compressed bgr8"`` for colour,
``"... jpeg compressed mono8"`` for grey, ``"<encoding>; png compressed bgr8|bgr16"`` for colour
and ``"<encoding>; png compressed "`` (nothing after) for single-channel images, which the PNG
keeps as they are (mono8, mono16, labels). Older publishers wrote only ``"jpeg"`` or ``"png"``;
their subscriber took the channel count of the decoded image (1 = mono8, 3 = bgr8), and so do
we. ``compressedDepth`` (depth images) and other codecs are refused.

Nothing here imports rclpy: any object with ``format`` and ``data`` (bytes, ``array('B')`` or a
numpy array) works, rclpy and rosbags messages alike. Data is hostile: the header is read and
checked against ``max_pixels`` before OpenCV decodes anything.
"""

from dataclasses import dataclass
from typing import Any

from cityseg_ros.errors import ConfigError, ImageError
from cityseg_ros.imageio import decode_image, MAX_IMAGE_PIXELS, scale_16_to_8
import cv2
import numpy as np

__all__ = ['CODECS', 'CompressedFormat', 'parse_format', 'decode_compressed',
           'encode_compressed', 'JPEG_QUALITY', 'PNG_LEVEL', 'MAX_IMAGE_PIXELS']

CODECS = ('jpeg', 'png')
#: image_transport's defaults: ``jpeg_quality`` 95, ``png_level`` 3.
JPEG_QUALITY = 95
PNG_LEVEL = 3

# What the JPEG/PNG pixels hold (the part after "compressed"): channels, bits, colour order.
_COMPRESSED = {
    'bgr8': (3, 8), 'rgb8': (3, 8), 'bgra8': (4, 8), 'rgba8': (4, 8), 'mono8': (1, 8),
    'bgr16': (3, 16), 'rgb16': (3, 16), 'bgra16': (4, 16), 'rgba16': (4, 16), 'mono16': (1, 16),
    '8UC1': (1, 8), '16UC1': (1, 16),
    **{f'bayer_{p}{b}': (1, b) for p in ('rggb', 'bggr', 'gbrg', 'grbg') for b in (8, 16)},
}
# OpenCV names Bayer patterns by the second row's first two pixels (cv_bridge's table).
_BAYER_TO_RGB = {'rggb': cv2.COLOR_BayerBG2RGB, 'bggr': cv2.COLOR_BayerRG2RGB,
                 'gbrg': cv2.COLOR_BayerGR2RGB, 'grbg': cv2.COLOR_BayerGB2RGB}
_ACCEPTED = ("'<encoding>; jpeg compressed bgr8|mono8', '<encoding>; png compressed "
             "bgr8|bgr16|<nothing>', 'jpeg' or 'png'")


@dataclass(frozen=True)
class CompressedFormat:
    """A parsed ``CompressedImage.format``.

    Attributes:
        codec: 'jpeg' or 'png'.
        source_encoding: the raw image's encoding before compression (e.g. 'rgb8'); '' when
            the format does not say (old-style 'jpeg'/'png').
        compressed_encoding: what the JPEG/PNG pixels hold (e.g. 'bgr8', 'mono8', 'bgr16');
            for single-channel PNGs the source encoding; '' when unknown (old style: OpenCV's
            order, BGR for colour).
    """

    codec: str
    source_encoding: str
    compressed_encoding: str


def parse_format(fmt: str) -> CompressedFormat:
    """Parse a CompressedImage ``format`` string as image_transport writes it.

    Raises:
        ImageError: compressedDepth, an unknown codec or compressed encoding, or an
            unparseable string; the message names the format and what is accepted.
    """
    text = str(fmt).strip()
    if 'compresseddepth' in text.lower():
        raise ImageError(f'CompressedImage format {fmt!r} is compressedDepth (a depth image), '
                         'not a camera image; subscribe to a colour topic')
    if ';' not in text:
        codec = {'jpg': 'jpeg'}.get(text.lower(), text.lower())
        if codec not in CODECS:
            raise ImageError(f'CompressedImage format {fmt!r} is not supported; accepted: '
                             f'{_ACCEPTED}')
        return CompressedFormat(codec, '', '')
    source, _, rest = text.partition(';')
    source, words = source.strip(), rest.split()
    if not source or ' ' in source or len(words) not in (2, 3) or words[1] != 'compressed':
        raise ImageError(f'CompressedImage format {fmt!r} is not understood; accepted: '
                         f'{_ACCEPTED}')
    codec = {'jpg': 'jpeg'}.get(words[0].lower(), words[0].lower())
    if codec not in CODECS:
        raise ImageError(f'CompressedImage format {fmt!r}: codec {words[0]!r} is not supported '
                         f'(only {" and ".join(CODECS)})')
    packed = words[2] if len(words) == 3 else source  # PNG keeps single-channel images as is
    if packed not in _COMPRESSED:
        raise ImageError(f'CompressedImage format {fmt!r}: compressed encoding {packed!r} is '
                         f'not supported; accepted: {", ".join(_COMPRESSED)}')
    channels, bits = _COMPRESSED[packed]
    if len(words) == 2 and channels != 1:
        raise ImageError(f'CompressedImage format {fmt!r} names no compressed encoding, which '
                         f'image_transport writes only for single-channel images, not {source!r}')
    if codec == 'jpeg' and bits != 8:
        raise ImageError(f'CompressedImage format {fmt!r}: a JPEG cannot hold {packed} '
                         '(16-bit) data')
    return CompressedFormat(codec, source, packed)


def _check_layout(image: np.ndarray, fmt: CompressedFormat, what: str) -> None:
    """Refuse data whose channels or depth contradict the format's compressed encoding."""
    if not fmt.compressed_encoding:
        return
    channels, bits = _COMPRESSED[fmt.compressed_encoding]
    got = 1 if image.ndim == 2 else image.shape[2]
    if got != channels or image.dtype.itemsize * 8 != bits:
        raise ImageError(f'{what}: format says {fmt.compressed_encoding} ({channels} channel(s), '
                         f'{bits}-bit) but the {fmt.codec.upper()} holds {got} channel(s), '
                         f'{image.dtype.itemsize * 8}-bit')


def decode_compressed(msg: Any, rgb: bool = True, max_pixels: int = MAX_IMAGE_PIXELS,
                      what: str = 'CompressedImage') -> np.ndarray:
    """Decode a sensor_msgs/CompressedImage (JPEG or PNG).

    Args:
        msg: any object with ``format`` and ``data`` (bytes, ``array('B')`` or uint8 numpy).
        rgb: True: HxWx3 uint8 RGB for the engine (grey expanded, Bayer demosaiced, alpha
            dropped, 16-bit scaled to 8 bits with cv_bridge's rounding, ``round(v * 255 /
            65535)``). False: single-channel images stay HxW with their dtype (mono8 or label
            PNGs exactly as encoded, mono16 as uint16); colour still comes back as 8-bit RGB.
        max_pixels: refuse images with more pixels than this (checked in the header).
        what: how error messages name the message (e.g. the topic).

    Raises:
        ImageError: unsupported format, empty or corrupt data, data of another codec than the
            format says (magic bytes), channels or bit depth contradicting the format, or more
            than ``max_pixels`` pixels.
    """
    fmt = parse_format(msg.format)
    data = msg.data
    if len(data) == 0:
        raise ImageError(f'{what} has no data (0 bytes)')
    image, info = decode_image(data, max_pixels, what)
    if info.codec != fmt.codec:
        raise ImageError(f'{what}: format {msg.format!r} says {fmt.codec.upper()} but the data '
                         f'is a {info.codec.upper()}')
    _check_layout(image, fmt, what)
    if image.ndim == 2:
        if not rgb:
            return image
        if fmt.compressed_encoding.startswith('bayer_'):
            image = cv2.cvtColor(image, _BAYER_TO_RGB[fmt.compressed_encoding[6:10]])
            return scale_16_to_8(image) if image.dtype == np.uint16 else image
        if image.dtype == np.uint16:
            image = scale_16_to_8(image)
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.dtype == np.uint16:
        image = scale_16_to_8(image)
    stored_rgb = fmt.compressed_encoding.startswith('rgb')  # else OpenCV's BGR order
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_RGBA2RGB if stored_rgb else cv2.COLOR_BGRA2RGB)
    return image if stored_rgb else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


# encoding of the array to compress -> (channels, bits, colour order or '' for single-channel)
_SOURCES = {
    'rgb8': (3, 8, 'rgb'), 'bgr8': (3, 8, 'bgr'), 'rgba8': (4, 8, 'rgb'),
    'bgra8': (4, 8, 'bgr'), 'rgb16': (3, 16, 'rgb'), 'bgr16': (3, 16, 'bgr'),
    'rgba16': (4, 16, 'rgb'), 'bgra16': (4, 16, 'bgr'),
    'mono8': (1, 8, ''), 'mono16': (1, 16, ''), '8UC1': (1, 8, ''), '16UC1': (1, 16, ''),
}
_TO_BGR = {('rgb', 3): cv2.COLOR_RGB2BGR, ('rgb', 4): cv2.COLOR_RGBA2BGR,
           ('bgr', 4): cv2.COLOR_BGRA2BGR}


def encode_compressed(array: np.ndarray, codec: str, encoding: str, quality: int = JPEG_QUALITY,
                      png_level: int = PNG_LEVEL) -> tuple[str, bytes]:
    """Compress an image as image_transport's compressed publisher does.

    Colour becomes BGR (8-bit for JPEG, 8 or 16-bit for PNG), grey JPEGs are mono8, and PNG
    keeps single-channel images exactly (labels: ``'mono8; png compressed '``, lossless).

    Args:
        array: HxW or HxWxC image matching ``encoding`` (uint8 or uint16).
        codec: 'jpeg' or 'png'.
        encoding: the array's ROS encoding: rgb8, bgr8, rgba8, bgra8, rgb16, bgr16, rgba16,
            bgra16, mono8, mono16, 8UC1 or 16UC1 (8UC1/16UC1: PNG only, as cv_bridge).
        quality: JPEG quality 1..100 (image_transport's default 95).
        png_level: PNG compression level 0..9 (image_transport's default 3).

    Returns:
        ``(format, data)``: the ``format`` string image_transport writes and the encoded bytes.

    Raises:
        ConfigError: unknown codec or encoding, an array that does not match the encoding, or
            quality/level out of range.
    """
    if codec not in CODECS:
        raise ConfigError(f'codec {codec!r} is not supported; use one of {", ".join(CODECS)}')
    if encoding not in _SOURCES:
        raise ConfigError(f'cannot compress encoding {encoding!r}; supported: '
                          f'{", ".join(_SOURCES)}')
    channels, bits, order = _SOURCES[encoding]
    array = np.asarray(array)
    got = 1 if array.ndim == 2 else (array.shape[2] if array.ndim == 3 else 0)
    if got != channels or array.dtype != (np.uint8 if bits == 8 else np.uint16) \
            or min(array.shape[:2], default=0) < 1:
        raise ConfigError(f'{encoding} needs an HxW{"" if channels == 1 else f"x{channels}"} '
                          f'uint{bits} array, got {array.dtype} {array.shape}')
    if order and (order, channels) in _TO_BGR:
        array = cv2.cvtColor(array, _TO_BGR[(order, channels)])
    if codec == 'jpeg':
        if not 1 <= int(quality) <= 100:
            raise ConfigError(f'JPEG quality must be in 1..100, got {quality}')
        if encoding in ('8UC1', '16UC1'):
            raise ConfigError(f'{encoding} cannot be JPEG-compressed (cv_bridge refuses it); '
                              'use png')
        if bits == 16:
            array = scale_16_to_8(array)
        packed = 'bgr8' if order else 'mono8'
        params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
        fmt = f'{encoding}; jpeg compressed {packed}'
    else:
        if not 0 <= int(png_level) <= 9:
            raise ConfigError(f'PNG level must be in 0..9, got {png_level}')
        packed = f'bgr{bits}' if order else ''
        params = [cv2.IMWRITE_PNG_COMPRESSION, int(png_level)]
        fmt = f'{encoding}; png compressed {packed}'
    ok, buf = cv2.imencode('.jpg' if codec == 'jpeg' else '.png',
                           np.ascontiguousarray(array), params)
    if not ok:
        raise ConfigError(f'OpenCV could not encode a {array.shape} {array.dtype} image as '
                          f'{codec}')
    return fmt, buf.tobytes()
