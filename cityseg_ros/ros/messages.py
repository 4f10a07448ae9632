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

"""sensor_msgs/Image and CompressedImage <-> numpy, without spinning: decode inputs, build outputs.

Decoding honours ``step`` (rows may be padded) and validates the message before touching its
buffer; colour conversion and demosaicing are OpenCV's, with cv_bridge's table of codes.
Building never goes through Python lists: the array's bytes are copied once into the
``array.array('B')`` that rclpy's ``uint8[]`` fields hold, which its setter accepts without a
per-element check (2048x1024x3: ~0.7 ms, vs ~3.4 ms for ``bytes`` and ~270 ms for a memoryview,
both of which the setter iterates; measured with rclpy 7.1).
"""

import array
from typing import Any, Optional, Tuple

from cityseg_ros.compressed import decode_compressed, encode_compressed
from cityseg_ros.errors import ImageError
from cityseg_ros.imagemsg import COLOR_ENCODINGS, image_to_numpy
import numpy as np
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, RegionOfInterest
from std_msgs.msg import Header

__all__ = ['ACCEPTED_ENCODINGS', 'copy_header', 'image_to_rgb', 'compressed_to_rgb',
           'labels_msg', 'compressed_labels_msg', 'camera_info_msg', 'confidence_msg',
           'rgb_msg', 'stamp_ns', 'stamp_problem', 'input_problem', 'size_problem',
           'MAX_INPUT_SIDE', 'MAX_INPUT_PIXELS']

#: Input encodings (DESIGN.md, "Contract: topics").
ACCEPTED_ENCODINGS = COLOR_ENCODINGS
#: Largest input image side and size accepted; larger ones are refused before decoding.
MAX_INPUT_SIDE = 16384
MAX_INPUT_PIXELS = 8192 * 8192


def stamp_ns(header: Header) -> int:
    """Return the header's stamp as integer nanoseconds."""
    return header.stamp.sec * 1_000_000_000 + header.stamp.nanosec


def stamp_problem(header: Header) -> Optional[str]:
    """Say why a header stamp cannot be paired or published, or return None when it can.

    builtin_interfaces/Time holds ``nanosec`` in [0, 1e9) and a time since the epoch; the wire
    types (int32, uint32) let a broken driver send anything else, and a zero stamp (never
    set) would make every frame the same instant.
    """
    sec, nanosec = int(header.stamp.sec), int(header.stamp.nanosec)
    if nanosec >= 1_000_000_000:
        return f'header.stamp.nanosec {nanosec} is not below 1e9 (a malformed stamp)'
    if sec < 0:
        return f'header.stamp.sec {sec} is negative (a malformed stamp)'
    if sec == 0 and nanosec == 0:
        return 'header.stamp is 0: the driver does not stamp its images'
    return None


def input_problem(msg: Image, min_side: int) -> Optional[Tuple[str, str]]:
    """Check an input image's header and size before any decoding.

    Args:
        msg: the image.
        min_side: smallest width and height the model accepts, px.

    Returns:
        None when the image may be decoded, else (kind, reason): kind is ``bad_stamp``,
        ``too_small`` or ``too_large`` (diagnostics count ``rejected_<kind>``); the reason is
        one sentence for the log.
    """
    problem = stamp_problem(msg.header)
    if problem is not None:
        return 'bad_stamp', problem
    return size_problem(int(msg.width), int(msg.height), min_side)


def size_problem(width: int, height: int, min_side: int) -> Optional[Tuple[str, str]]:
    """Check an image size (from a raw header, or a decoded compressed image).

    Returns:
        None, or (``too_small`` | ``too_large``, reason) as :func:`input_problem`.
    """
    if 0 < min(width, height) < min_side:
        return 'too_small', (f'{width}x{height} image is smaller than the {min_side} px the '
                             'model needs per side')
    if max(width, height) > MAX_INPUT_SIDE or width * height > MAX_INPUT_PIXELS:
        return 'too_large', (f'{width}x{height} image is larger than {MAX_INPUT_SIDE} px per '
                             f'side or {MAX_INPUT_PIXELS // 2**20} Mpx; resize it on the driver')
    return None


def copy_header(header: Header) -> Header:
    """Return a new Header with the same stamp and frame_id (outputs carry the input's)."""
    out = Header(frame_id=header.frame_id)
    out.stamp.sec = header.stamp.sec
    out.stamp.nanosec = header.stamp.nanosec
    return out


def image_to_rgb(msg: Image) -> np.ndarray:
    """Decode a sensor_msgs/Image into an RGB array.

    Args:
        msg: an Image in one of :data:`ACCEPTED_ENCODINGS`; rows may be padded (``step`` larger
            than ``width * channels``).

    Returns:
        HxWx3 uint8 RGB, C-contiguous. For unpadded rgb8 it shares the message's buffer.

    Raises:
        ImageError: unknown encoding, zero size, ``step`` too small, or ``data`` shorter than
            ``step * height``; the message names the problem and the accepted encodings.
    """
    if msg.encoding not in ACCEPTED_ENCODINGS:
        raise ImageError(f'unsupported encoding {msg.encoding!r}; accepted: '
                         f'{", ".join(ACCEPTED_ENCODINGS)} (republish through image_proc or '
                         'convert on the camera driver)')
    return image_to_numpy(msg, rgb=True)


def compressed_to_rgb(msg: Any, what: str) -> np.ndarray:
    """Decode a sensor_msgs/CompressedImage (JPEG or PNG) into HxWx3 uint8 RGB.

    The header is read and checked against :data:`MAX_INPUT_PIXELS` before anything is
    decoded (:func:`cityseg_ros.compressed.decode_compressed`).

    Raises:
        ImageError: unknown ``format``, corrupt or truncated data, a codec other than the
            format says, or more pixels than the node accepts; ``what`` (the topic) leads.
    """
    return decode_compressed(msg, rgb=True, max_pixels=MAX_INPUT_PIXELS, what=what)


def _image_msg(pixels: np.ndarray, header: Header, encoding: str, channels: int) -> Image:
    expected = 'HxW' if channels == 1 else f'HxWx{channels}'
    shape_ok = pixels.ndim == 2 if channels == 1 else (pixels.ndim == 3 and
                                                       pixels.shape[2] == channels)
    if pixels.dtype != np.uint8 or not shape_ok:
        raise ImageError(f'{encoding} output needs an {expected} uint8 array, got '
                         f'{pixels.dtype} {pixels.shape}')
    pixels = np.ascontiguousarray(pixels)
    msg = Image()
    msg.header = copy_header(header)
    msg.height, msg.width = int(pixels.shape[0]), int(pixels.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = msg.width * channels
    data = array.array('B')
    data.frombytes(pixels)  # one copy; the setter takes an array('B') as is
    msg.data = data
    return msg


def labels_msg(labels: np.ndarray, header: Header) -> Image:
    """Build a mono8 Image of label ids with a copy of the input header.

    Args:
        labels: HxW uint8 ids of the node's label space (trainIds by default, 255 = ignore).
        header: the input image's header (stamp and frame_id are copied).
    """
    return _image_msg(labels, header, 'mono8', 1)


def compressed_labels_msg(labels: np.ndarray, header: Header) -> CompressedImage:
    """Build the lossless ``labels/compressed`` message: a single-channel 8-bit PNG.

    ``format`` is image_transport's for a mono8 PNG (``'mono8; png compressed '``), so
    ``image_transport``'s compressed subscriber and ``decode_compressed(msg, rgb=False)`` give
    back exactly ``labels``. Never JPEG: its loss turns ids into other ids at every edge.

    Args:
        labels: HxW uint8 ids.
        header: the input image's header (stamp and frame_id are copied).
    """
    if labels.dtype != np.uint8 or labels.ndim != 2:
        raise ImageError(f'labels must be an HxW uint8 array, got {labels.dtype} '
                         f'{labels.shape}')
    fmt, data = encode_compressed(labels, 'png', 'mono8')
    msg = CompressedImage()
    msg.header = copy_header(header)
    msg.format = fmt
    msg.data = array.array('B', data)
    return msg


def camera_info_msg(info: CameraInfo, header: Header) -> CameraInfo:
    """Return a copy of ``info`` carrying ``header`` (``C/semantic/camera_info``).

    image_geometry-style consumers pair an image with the CameraInfo of the same stamp and
    frame_id; the labels carry the input image's header, so their CameraInfo must too.
    """
    out = CameraInfo(height=info.height, width=info.width,
                     distortion_model=info.distortion_model, d=array.array('d', info.d),
                     k=np.array(info.k, np.float64), r=np.array(info.r, np.float64),
                     p=np.array(info.p, np.float64), binning_x=info.binning_x,
                     binning_y=info.binning_y)
    roi = info.roi
    out.roi = RegionOfInterest(x_offset=roi.x_offset, y_offset=roi.y_offset, height=roi.height,
                               width=roi.width, do_rectify=roi.do_rectify)
    out.header = copy_header(header)
    return out


def confidence_msg(confidence: np.ndarray, header: Header) -> Image:
    """Build a mono8 Image of max softmax probability x 255 with a copy of the input header."""
    return _image_msg(confidence, header, 'mono8', 1)


def rgb_msg(rgb: np.ndarray, header: Header) -> Image:
    """Build an rgb8 Image (palette colours or overlay) with a copy of the input header.

    Args:
        rgb: HxWx3 uint8 RGB; need not be contiguous.
        header: the input image's header (stamp and frame_id are copied).
    """
    return _image_msg(rgb, header, 'rgb8', 3)
