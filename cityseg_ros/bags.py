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

"""rosbag2 reading and writing without ROS: images and camera info <-> numpy, frames by stamp.

Writing uses rosbags (``rosbags.rosbag2.Writer``, the ROS 2 Jazzy typestore for CDR); reading
uses our own bounded readers of both storages, mcap and sqlite3, and rosbags-image for colour
conversion.

Hostile files: every length read from a bag (records, chunks, names, zstd and lz4 output) is
checked against the bytes left in the file or chunk and a cap (:data:`MAX_MESSAGE_BYTES`,
:data:`MAX_CHUNK_BYTES`) before anything is allocated, so a crafted file gets a
:class:`~cityseg_ros.errors.BagError` and never a ``MemoryError``.

Damaged bags: an mcap without its footer (a recording cut off) is scanned record by record in
file order; a sqlite3 file cut short is read from a copy whose header is fixed up. Either way
:class:`BagReader` yields every message readable before the damage and then raises
:class:`~cityseg_ros.errors.BagError`, so a caller can keep what was read. Damage met while
reading an intact-looking bag is reported the same way.
"""

from dataclasses import dataclass
import functools
import logging
from operator import itemgetter
from pathlib import Path
import sqlite3
import struct
import tempfile
from typing import Any, Callable, Iterator, NamedTuple, Optional, Sequence, Union
import zlib

from cityseg_ros.errors import BagError, ImageError
from cityseg_ros.imagemsg import COLOR_ENCODINGS, image_to_numpy, LAYOUTS
from cityseg_ros.pairing import PairingStats, StampPairer
import numpy as np
from rosbags.interfaces import Connection
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.serde import SerdeError
from rosbags.typesys import get_typestore, Stores
from rosbags.typesys.store import Typestore
from ruamel.yaml import YAML

__all__ = [
    'TOPIC_LEFT_IMAGE', 'TOPIC_RIGHT_IMAGE', 'TOPIC_LEFT_INFO', 'TOPIC_RIGHT_INFO',
    'TOPIC_GT_LABEL_IDS', 'TOPIC_GT_INSTANCE_IDS', 'STORAGES', 'DEFAULT_TOLERANCE_NS',
    'COLOR_ENCODINGS', 'IMAGE_TYPE', 'COMPRESSED_IMAGE_TYPE', 'IMAGE_TYPES', 'CAMERA_INFO_TYPE',
    'MAX_MESSAGE_BYTES', 'MAX_CHUNK_BYTES', 'MAX_IMAGE_PIXELS', 'JPEG_QUALITY',
    'TopicInfo', 'Frame', 'ImageRecord', 'MessageRecord', 'CameraCalibration',
    'CameraInfoRecord', 'image_msg', 'compressed_image_msg', 'camera_info_msg', 'image_to_numpy',
    'decode_image', 'check_label_image', 'calibration_from_msg', 'stamp_to_ns',
    'BagWriter', 'BagReader',
]

_LOG = logging.getLogger(__name__)

# The bag layout written by make_bag (DESIGN.md, "Contract: bag layout").
TOPIC_LEFT_IMAGE = '/stereo/left/image_rect_color'
TOPIC_RIGHT_IMAGE = '/stereo/right/image_rect_color'
TOPIC_LEFT_INFO = '/stereo/left/camera_info'
TOPIC_RIGHT_INFO = '/stereo/right/camera_info'
TOPIC_GT_LABEL_IDS = '/stereo/left/gt/label_ids'
TOPIC_GT_INSTANCE_IDS = '/stereo/left/gt/instance_ids'

#: Storage plugins both written and read.
STORAGES: tuple[str, ...] = ('mcap', 'sqlite3')

#: Default stamp tolerance between partners of one frame: make_bag gives all topics of a frame
#: the same stamp; a hardware-triggered stereo pair is within a few ms; frames at 17 Hz are
#: 59 ms apart, so 10 ms never pairs neighbours.
DEFAULT_TOLERANCE_NS = 10_000_000

IMAGE_TYPE = 'sensor_msgs/msg/Image'
CAMERA_INFO_TYPE = 'sensor_msgs/msg/CameraInfo'

COMPRESSED_IMAGE_TYPE = 'sensor_msgs/msg/CompressedImage'
#: Message types an image topic may hold.
IMAGE_TYPES: tuple[str, ...] = (IMAGE_TYPE, COMPRESSED_IMAGE_TYPE)

_WRITE_LAYOUTS = {'rgb8', 'bgr8', 'rgba8', 'bgra8', 'mono8', 'mono16', '16UC1', '32SC1', '32FC1'}

#: Largest message the reader accepts (after per-message decompression): a 4K rgb16 image is
#: 50 MB. With the readers' bounded queues this keeps a crafted bag within a few GiB.
MAX_MESSAGE_BYTES = 64 * 2**20
#: Largest mcap chunk, compressed or inflated: a chunk holds at least one whole message.
MAX_CHUNK_BYTES = 2 * MAX_MESSAGE_BYTES
#: Largest CompressedImage the reader decodes, pixels: as large as a raw rgb8 message may be.
MAX_IMAGE_PIXELS = MAX_MESSAGE_BYTES // 3
#: JPEG quality image_transport's compressed publisher uses by default.
JPEG_QUALITY = 95

# rosbag2 metadata version 9 is what Jazzy's rosbag2 writes (QoS enums as names).
_BAG_VERSION = 9
# A pairer for bags may hold a few more frames than the live node's: topics written by
# different processes can be logged a little apart. It holds undecoded messages (at most
# MAX_MESSAGE_BYTES each).
_BAG_MAX_PENDING = 8


@functools.lru_cache(maxsize=1)
def _typestore() -> Typestore:
    return get_typestore(Stores.ROS2_JAZZY)


# --------------------------------------------------------------------------------------------
# Typed records


class TopicInfo(NamedTuple):
    """A topic of a bag: its message type and count (None when unknown, e.g. a damaged bag)."""

    msgtype: str
    count: Optional[int]


@dataclass(frozen=True, eq=False)
class Frame:
    """One frame of a bag, its parts matched by header stamp.

    Attributes:
        stamp_ns: header stamp of the left image, nanoseconds.
        left: HxWx3 uint8 RGB.
        right: HxWx3 uint8 RGB, or None when no right topic was asked for.
        gt_label_ids: HxW uint8 Cityscapes labelIds, or None.
        gt_instance_ids: HxW int32 Cityscapes instanceIds (labelId * 1000 + index for instances,
            the plain labelId elsewhere), or None.
        frame_id: header frame_id of the left image.
    """

    stamp_ns: int
    left: np.ndarray
    right: Optional[np.ndarray] = None
    gt_label_ids: Optional[np.ndarray] = None
    gt_instance_ids: Optional[np.ndarray] = None
    frame_id: str = ''


class ImageRecord(NamedTuple):
    """One image message: header stamp (ns), pixels, header frame_id.

    ``image`` is HxWx3 uint8 RGB for colour encodings (bgr8, rgba8, bgra8 and bayer converted),
    HxW of the stored dtype for single-channel ones (mono8 uint8, mono16 uint16, 32SC1 int32).
    """

    stamp_ns: int
    image: np.ndarray
    frame_id: str


@dataclass(frozen=True, eq=False)
class CameraCalibration:
    """A sensor_msgs/CameraInfo without its header: image size and the K, D, R, P matrices.

    Attributes:
        width: image width, pixels.
        height: image height, pixels.
        k: 3x3 float64 intrinsics of the raw image.
        d: (n,) float64 distortion coefficients of ``distortion_model``.
        r: 3x3 float64 rectification rotation.
        p: 3x4 float64 projection of the rectified image; ``p[0, 3] = -fx * baseline`` for the
            right camera of a stereo pair (baseline in metres).
        distortion_model: 'plumb_bob' for the usual 5 coefficients.
    """

    width: int
    height: int
    k: np.ndarray
    d: np.ndarray
    r: np.ndarray
    p: np.ndarray
    distortion_model: str = 'plumb_bob'

    @classmethod
    def pinhole(cls, width: int, height: int, fx: float, fy: float, cx: float, cy: float,
                tx: float = 0.0) -> 'CameraCalibration':
        """Rectified pinhole camera: D zero, R identity, P = [K | (tx, 0, 0)].

        Args:
            width: image width, pixels.
            height: image height, pixels.
            fx: focal length along x, pixels.
            fy: focal length along y, pixels.
            cx: principal point x, pixels.
            cy: principal point y, pixels.
            tx: ``P[0, 3]``; ``-fx * baseline`` (pixels * metres) for a right camera.
        """
        k = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=np.float64)
        p = np.zeros((3, 4), dtype=np.float64)
        p[:, :3] = k
        p[0, 3] = tx
        return cls(int(width), int(height), k, np.zeros(5, dtype=np.float64),
                   np.eye(3, dtype=np.float64), p, 'plumb_bob')

    @property
    def baseline_m(self) -> float:
        """Stereo baseline in metres, ``-P[0, 3] / P[0, 0]`` (0 for a left camera)."""
        return float(-self.p[0, 3] / self.p[0, 0]) if self.p[0, 0] else 0.0


class MessageRecord(NamedTuple):
    """One message as read, not yet decoded: header stamp (ns), frame_id, the message."""

    stamp_ns: int
    frame_id: str
    msg: Any


class CameraInfoRecord(NamedTuple):
    """One CameraInfo message: header stamp (ns), frame_id and the calibration."""

    stamp_ns: int
    frame_id: str
    calibration: CameraCalibration


# --------------------------------------------------------------------------------------------
# Messages <-> numpy


def stamp_to_ns(stamp: Any) -> int:
    """``builtin_interfaces/Time`` (sec, nanosec) -> integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def _header(stamp_ns: int, frame_id: str) -> Any:
    if stamp_ns < 0:
        raise ValueError(f'stamp_ns must be >= 0, got {stamp_ns}')
    store = _typestore()
    sec, nanosec = divmod(int(stamp_ns), 1_000_000_000)
    time = store.types['builtin_interfaces/msg/Time'](sec=sec, nanosec=nanosec)
    return store.types['std_msgs/msg/Header'](stamp=time, frame_id=frame_id)


def image_msg(array: np.ndarray, encoding: str, stamp_ns: int, frame_id: str) -> Any:
    """Build a sensor_msgs/Image (rosbags Jazzy type) from an array, little-endian, no padding.

    Args:
        array: HxWx3 uint8 for rgb8/bgr8, HxWx4 uint8 for rgba8/bgra8, HxW uint8 for mono8,
            HxW uint16 for mono16/16UC1, HxW int32 for 32SC1, HxW float32 for 32FC1.
        encoding: the ROS encoding the array is in.
        stamp_ns: header stamp, nanoseconds.
        frame_id: header frame_id.

    Raises:
        ImageError: the encoding is not one of those above or the array does not fit it.
    """
    if encoding not in _WRITE_LAYOUTS:
        raise ImageError(f'cannot write encoding {encoding!r}; '
                         f'supported: {", ".join(sorted(_WRITE_LAYOUTS))}')
    dtype, channels = LAYOUTS[encoding]
    array = np.asarray(array)
    shape_ok = (array.ndim == 2 and channels == 1) or (array.ndim == 3
                                                       and array.shape[2] == channels)
    if array.dtype != dtype or not shape_ok or array.size == 0:
        want = 'HxW' if channels == 1 else f'HxWx{channels}'
        raise ImageError(f'{encoding} needs a non-empty {want} {dtype} array, got '
                         f'{array.dtype} of shape {array.shape}')
    height, width = array.shape[:2]
    data = np.ascontiguousarray(array, dtype=dtype.newbyteorder('<')).view(np.uint8).reshape(-1)
    return _typestore().types[IMAGE_TYPE](
        header=_header(stamp_ns, frame_id), height=height, width=width, encoding=encoding,
        is_bigendian=0, step=width * channels * dtype.itemsize, data=data)


def compressed_image_msg(array: np.ndarray, codec: str, encoding: str, stamp_ns: int,
                         frame_id: str, quality: int = JPEG_QUALITY) -> Any:
    """Build a sensor_msgs/CompressedImage as image_transport's compressed publisher does.

    Args:
        array: the image in ``encoding`` (see :func:`~cityseg_ros.compressed.encode_compressed`).
        codec: 'jpeg' or 'png' (PNG for labels: lossless).
        encoding: the array's ROS encoding, e.g. 'rgb8', 'mono8'.
        stamp_ns: header stamp, nanoseconds.
        frame_id: header frame_id.
        quality: JPEG quality 1..100 (image_transport's default 95).

    Raises:
        ConfigError: as :func:`~cityseg_ros.compressed.encode_compressed`.
    """
    from cityseg_ros.compressed import encode_compressed

    fmt, data = encode_compressed(array, codec, encoding, quality=quality)
    return _typestore().types[COMPRESSED_IMAGE_TYPE](
        header=_header(stamp_ns, frame_id), format=fmt,
        data=np.frombuffer(data, dtype=np.uint8))


def decode_image(msg: Any, rgb: bool = False, lossless: bool = False) -> np.ndarray:
    """Decode a sensor_msgs/Image or sensor_msgs/CompressedImage (rosbags or rclpy) to numpy.

    Args:
        msg: the message; a CompressedImage is told apart by its ``format`` field.
        rgb: HxWx3 uint8 RGB, for a camera image. When False, colour still comes back as RGB
            but single-channel images keep their 2-D layout and dtype (labels, instance ids).
        lossless: refuse JPEG (labels and instance ids must come back exactly).

    Raises:
        ImageError: unknown encoding or format, truncated or corrupt data, an image above
            :data:`MAX_IMAGE_PIXELS`, or a JPEG when ``lossless``.
    """
    if not hasattr(msg, 'format'):
        return image_to_numpy(msg, rgb=rgb)
    from cityseg_ros.compressed import decode_compressed, parse_format

    if lossless and parse_format(msg.format).codec != 'png':
        raise ImageError(f'format {msg.format!r}: labels and instance ids must be PNG '
                         '(lossless); JPEG changes their values')
    return decode_compressed(msg, rgb=rgb, max_pixels=MAX_IMAGE_PIXELS)


def check_label_image(image: np.ndarray, kind: str, what: str) -> None:
    """Check a decoded label image: 'labels' HxW uint8, 'instances' HxW integer.

    Raises:
        BagError: naming ``what`` and what it holds instead.
    """
    if kind == 'labels' and (image.ndim != 2 or image.dtype != np.uint8):
        raise BagError(f'{what} must hold mono8 labelIds, got a {image.dtype} image of shape '
                       f'{image.shape}')
    if kind == 'instances' and (image.ndim != 2 or not np.issubdtype(image.dtype, np.integer)):
        raise BagError(f'{what} must hold mono16 instanceIds, got a {image.dtype} image of '
                       f'shape {image.shape}')


def camera_info_msg(calibration: CameraCalibration, stamp_ns: int, frame_id: str) -> Any:
    """Build a sensor_msgs/CameraInfo (rosbags Jazzy type), binning 1x1, full-image ROI."""
    store = _typestore()
    roi = store.types['sensor_msgs/msg/RegionOfInterest'](
        x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
    return store.types[CAMERA_INFO_TYPE](
        header=_header(stamp_ns, frame_id), height=calibration.height,
        width=calibration.width, distortion_model=calibration.distortion_model,
        d=np.asarray(calibration.d, dtype=np.float64).reshape(-1),
        k=np.asarray(calibration.k, dtype=np.float64).reshape(9),
        r=np.asarray(calibration.r, dtype=np.float64).reshape(9),
        p=np.asarray(calibration.p, dtype=np.float64).reshape(12),
        binning_x=0, binning_y=0, roi=roi)


def calibration_from_msg(msg: Any) -> CameraCalibration:
    """sensor_msgs/CameraInfo (rosbags or rclpy) -> :class:`CameraCalibration`."""
    return CameraCalibration(
        width=int(msg.width), height=int(msg.height),
        k=np.array(msg.k, dtype=np.float64).reshape(3, 3),
        d=np.array(msg.d, dtype=np.float64).reshape(-1),
        r=np.array(msg.r, dtype=np.float64).reshape(3, 3),
        p=np.array(msg.p, dtype=np.float64).reshape(3, 4),
        distortion_model=str(msg.distortion_model))


# --------------------------------------------------------------------------------------------
# Writer


class BagWriter:
    """Write a rosbag2 (mcap or sqlite3) of images and camera info; use it as a context manager.

    The log time of every message is its header stamp. Leaving the context closes the bag
    even on an exception, so what was written stays readable.

    Example:
        >>> with BagWriter('out_bag', storage='mcap') as bag:
        ...     bag.write_image(TOPIC_LEFT_IMAGE, rgb, 'rgb8', stamp_ns, 'left_optical')
    """

    def __init__(self, path: Union[str, Path], storage: str = 'mcap') -> None:
        """Prepare a writer; nothing is created before :meth:`open`.

        Args:
            path: the bag directory to create; must not exist.
            storage: 'mcap' or 'sqlite3'.

        Raises:
            BagError: unknown storage, or the path exists.
        """
        if storage not in STORAGES:
            raise BagError(f'storage {storage!r} is not supported; use one of {list(STORAGES)}')
        self.path = Path(path)
        self.storage = storage
        if self.path.exists():
            raise BagError(f'{self.path} exists already and a bag is never overwritten: '
                           'remove it or choose another path')
        self._writer: Optional[Writer] = None
        self._connections: dict[str, Connection] = {}
        self._counts: dict[str, int] = {}

    def open(self) -> None:  # noqa: A003 - rosbags' name
        """Create the bag directory and its storage file."""
        plugin = StoragePlugin.MCAP if self.storage == 'mcap' else StoragePlugin.SQLITE3
        try:
            writer = Writer(self.path, version=_BAG_VERSION, storage_plugin=plugin)
            writer.open()
        except Exception as exc:  # WriterError or OSError: either way the bag cannot be made
            raise BagError(f'cannot create bag {self.path}: {exc}') from exc
        self._writer = writer

    def close(self) -> None:
        """Write the index and metadata.yaml; the bag is complete afterwards."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()

    def __enter__(self) -> 'BagWriter':
        self.open()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        writer = self._writer
        try:
            self.close()
        except Exception:
            if exc_type is None:
                raise
            # The original error matters more; abort so no half-written index is left.
            if writer is not None:
                try:
                    writer.abort()
                except Exception:  # noqa: B902 - best effort while another error propagates
                    _LOG.debug('abort after a failed close failed too', exc_info=True)

    @property
    def counts(self) -> dict[str, int]:
        """Messages written so far per topic."""
        return dict(self._counts)

    def write_message(self, topic: str, msg: Any, stamp_ns: int) -> None:
        """Serialize a rosbags message (any Jazzy type) and write it at log time ``stamp_ns``.

        Raises:
            BagError: the bag is not open, or ``topic`` was written with another type before.
        """
        if self._writer is None:
            raise BagError(f'bag {self.path} is not open: use BagWriter as a context manager')
        msgtype = msg.__msgtype__
        connection = self._connections.get(topic)
        if connection is None:
            connection = self._writer.add_connection(topic, msgtype, typestore=_typestore())
            self._connections[topic] = connection
            self._counts[topic] = 0
        elif connection.msgtype != msgtype:
            raise BagError(f'topic {topic} of bag {self.path} holds {connection.msgtype}, '
                           f'cannot write a {msgtype} to it')
        self._writer.write(connection, int(stamp_ns), _typestore().serialize_cdr(msg, msgtype))
        self._counts[topic] += 1

    def write_image(self, topic: str, array: np.ndarray, encoding: str, stamp_ns: int,
                    frame_id: str) -> None:
        """Write an image; see :func:`image_msg` for the array each encoding takes."""
        self.write_message(topic, image_msg(array, encoding, stamp_ns, frame_id), stamp_ns)

    def write_compressed_image(self, topic: str, array: np.ndarray, codec: str, encoding: str,
                               stamp_ns: int, frame_id: str,
                               quality: int = JPEG_QUALITY) -> None:
        """Write a CompressedImage; see :func:`compressed_image_msg`."""
        self.write_message(topic, compressed_image_msg(array, codec, encoding, stamp_ns,
                                                       frame_id, quality), stamp_ns)

    def write_camera_info(self, topic: str, calibration: CameraCalibration, stamp_ns: int,
                          frame_id: str) -> None:
        """Write a CameraInfo message."""
        self.write_message(topic, camera_info_msg(calibration, stamp_ns, frame_id), stamp_ns)


# --------------------------------------------------------------------------------------------
# Storage: our own bounded readers for mcap and sqlite3. Each source yields
# (topic, msgtype, log time, raw CDR) and raises _Damage where it cannot go on.
#
# Why not rosbags' Reader: it trusts the file. It reads any record length it is given
# (``read_exact(bio, 2**62)``), inflates zstd and lz4 chunks and zstd-compressed messages without
# an output limit (a 1 KiB chunk inflates to gigabytes before its size is compared), and unpacks
# a ``compression_mode: file`` bag into /tmp without a limit either. A crafted file can look
# intact, so every length here is checked against the bytes that are left and a cap before
# anything is read or allocated.


class _Damage(Exception):
    """Internal: the storage cannot be read past this point (the text says why)."""


_Message = tuple[str, str, int, bytes]

_MCAP_MAGIC = b'\x89MCAP0\r\n'
_SQLITE_MAGIC = b'SQLite format 3\x00'
_U16 = struct.Struct('<H')
_U32 = struct.Struct('<I')
_U64 = struct.Struct('<Q')
_RECORD_HEAD = struct.Struct('<BQ')  # opcode, content length
_MSG_HEAD = struct.Struct('<HIQQ')  # channel id, sequence, log time, publish time
_CHUNK_HEAD = struct.Struct('<QQQI')  # start, end, uncompressed size, uncompressed crc32
_CHUNK_INDEX_HEAD = struct.Struct('<QQQQ')  # start, end, chunk offset, chunk length
_FOOTER = struct.Struct('<BQQQI8s')  # opcode 2, length 20, summary start, offsets, crc, magic
_CHANNEL_HEAD = struct.Struct('<HH')  # channel id, schema id
_STATISTICS_HEAD = struct.Struct('<QHIIIIQQ')
# Summaries hold one ~100-byte chunk index per chunk: 64 MiB is a bag of a million chunks.
_MAX_SUMMARY_BYTES = 64 * 2**20
_MAX_NAME_BYTES = 4096  # a topic, type, encoding or compression name
_MAX_TOPICS = 10_000
_MAX_METADATA_BYTES = 16 * 2**20  # metadata.yaml; rosbag2's are a few KiB
_OP_FOOTER, _OP_SCHEMA, _OP_CHANNEL, _OP_MESSAGE, _OP_CHUNK = 0x02, 0x03, 0x04, 0x05, 0x06
_OP_CHUNK_INDEX, _OP_STATISTICS, _OP_DATA_END = 0x08, 0x0B, 0x0F


class _Inflater:
    """Inflate zstd or lz4 data into at most ``limit`` bytes, whatever its headers claim."""

    @staticmethod
    def zstd(data: bytes, limit: int) -> bytes:
        try:
            from compression import zstd  # Python >= 3.14
        except ImportError:
            from backports import zstd  # what rosbags installs before 3.14
        return _Inflater._frames(zstd.ZstdDecompressor, data, limit)

    @staticmethod
    def lz4(data: bytes, limit: int) -> bytes:
        import lz4.frame
        return _Inflater._frames(lz4.frame.LZ4FrameDecompressor, data, limit)

    @staticmethod
    def _frames(make: Callable[[], Any], data: bytes, limit: int) -> bytes:
        """Inflate concatenated frames; stop (and return ``limit`` + 1 bytes) past the limit."""
        out = bytearray()
        rest = data
        while rest:
            decompressor = make()
            out += decompressor.decompress(rest, max_length=limit + 1 - len(out))
            if len(out) > limit:
                break
            if not decompressor.eof:
                raise ValueError('the compressed data ends inside a frame')
            rest = decompressor.unused_data
        return bytes(out)


def _inflate(data: bytes, compression: str, size: Optional[int], limit: int, what: str) -> bytes:
    """Decompress ``data`` into exactly ``size`` bytes (any size up to ``limit`` if None).

    Raises:
        _Damage: unknown compression, corrupt data, or more (or other) bytes than declared.
    """
    if size is not None and size > limit:
        raise _Damage(f'{what} declares {size} bytes uncompressed, more than the {limit} bytes '
                      'a bag record may have here')
    cap = limit if size is None else size
    if compression == '':
        raw = data
    elif compression in ('zstd', 'lz4'):
        try:
            raw = getattr(_Inflater, compression)(data, cap)
        except Exception as exc:  # zstd and lz4 raise their own error types
            raise _Damage(f'{what} does not decompress ({compression}): {exc}') from exc
    else:
        raise _Damage(f'{what} uses compression {compression!r}; only zstd and lz4 are read')
    if len(raw) > cap:
        raise _Damage(f'{what} inflates to more than the {cap} bytes '
                      f'{"it declares" if size is not None else "a bag record may have here"}')
    if size is not None and len(raw) != size:
        raise _Damage(f'{what} holds {len(raw)} bytes, not the {size} it declares')
    return raw


class _Fields:
    """Bounded reader of the fields of one mcap record (a memoryview)."""

    def __init__(self, buf: memoryview, what: str) -> None:
        self.buf, self.pos, self.what = buf, 0, what

    def unpack(self, fmt: struct.Struct) -> tuple[Any, ...]:
        if self.pos + fmt.size > len(self.buf):
            raise _Damage(f'{self.what} is shorter than its fields')
        values = fmt.unpack_from(self.buf, self.pos)
        self.pos += fmt.size
        return values

    def bytes_(self, prefix: struct.Struct = _U32, limit: Optional[int] = None) -> memoryview:
        (size,) = self.unpack(prefix)
        if size > len(self.buf) - self.pos:
            raise _Damage(f'{self.what} has a field of {size} bytes, longer than its record')
        if limit is not None and size > limit:
            raise _Damage(f'{self.what} has a name of {size} bytes (at most {limit})')
        value = self.buf[self.pos:self.pos + size]
        self.pos += size
        return value

    def string(self) -> str:
        try:
            return bytes(self.bytes_(limit=_MAX_NAME_BYTES)).decode()
        except UnicodeDecodeError as exc:
            raise _Damage(f'{self.what} has a name that is not UTF-8') from exc


class _McapFile:
    """One .mcap file: its header and, when the file is complete, its summary.

    Record layout: https://mcap.dev/spec. Attributes:
        complete: the file ends with a valid footer (it was not cut off).
        indexed: the summary was read: channels, counts and chunk indexes are known before the
            data is scanned.
        channels: channel id -> (topic, message type) of the cdr channels with a schema.
        counts: channel id -> message count, or None while unknown.
        chunk_channels: file offset of a chunk record -> the channels it holds (from the chunk
            indexes): chunks without a wanted channel are skipped unread.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.size = path.stat().st_size
            with path.open('rb') as handle:
                head = handle.read(8 + _RECORD_HEAD.size)
        except OSError as exc:
            raise _Damage(f'cannot read {path}: {exc.strerror}') from exc
        if not head.startswith(_MCAP_MAGIC):
            raise _Damage(f'{path.name} does not start with the MCAP magic bytes')
        if len(head) < 8 + _RECORD_HEAD.size:
            raise _Damage(f'{path.name} ends inside its header')
        opcode, length = _RECORD_HEAD.unpack_from(head, 8)
        if opcode != 0x01 or length > self.size - len(head):
            raise _Damage(f'{path.name} has no valid MCAP header record')
        self.data_start = len(head) + length
        self.data_end = self.size
        self.complete = self.indexed = False
        self.schemas: dict[int, str] = {}
        self.channels: dict[int, tuple[str, str]] = {}
        self.counts: Optional[dict[int, int]] = None
        self.chunk_channels: dict[int, frozenset[int]] = {}
        try:
            self._read_summary()
        except (_Damage, OSError, struct.error) as exc:
            _LOG.debug('%s: summary not used (%s); scanning the data', path, exc)
            self.schemas.clear()
            self.channels.clear()
            self.chunk_channels.clear()
            self.counts = None

    def _read_summary(self) -> None:
        footer_start = self.size - _FOOTER.size
        if footer_start < self.data_start:
            raise _Damage('no room for a footer')
        with self.path.open('rb') as handle:
            handle.seek(footer_start)
            opcode, length, summary_start, offsets_start, _, magic = _FOOTER.unpack(
                handle.read(_FOOTER.size))
            if opcode != _OP_FOOTER or length != 20 or magic != _MCAP_MAGIC:
                raise _Damage('no footer: the recording was cut off')
            self.complete = True
            self.data_end = footer_start
            if summary_start == 0:
                raise _Damage('no summary section')
            summary_end = offsets_start or footer_start
            if not self.data_start <= summary_start <= summary_end <= footer_start:
                raise _Damage('the footer points outside the file')
            if summary_end - summary_start > _MAX_SUMMARY_BYTES:
                raise _Damage(f'a summary of {summary_end - summary_start} bytes')
            handle.seek(summary_start)
            summary = memoryview(handle.read(summary_end - summary_start))
        for opcode, body in _records(summary, f'{self.path.name} summary'):
            fields = _Fields(body, f'{self.path.name}: summary record 0x{opcode:02x}')
            if opcode in (_OP_SCHEMA, _OP_CHANNEL):
                self._definition(opcode, fields)
            elif opcode == _OP_CHUNK_INDEX:
                _, _, offset, _ = fields.unpack(_CHUNK_INDEX_HEAD)
                self.chunk_channels[offset] = frozenset(self._id_map(fields))
            elif opcode == _OP_STATISTICS:
                fields.unpack(_STATISTICS_HEAD)
                self.counts = self._id_map(fields)
        if not self.channels:
            raise _Damage('the summary lists no channels')
        self.data_end = summary_start
        self.indexed = True

    @staticmethod
    def _id_map(fields: _Fields) -> dict[int, int]:
        """Read a map<uint16, uint64> field (chunk index offsets, statistics counts)."""
        entries = fields.bytes_()
        if len(entries) % 10:
            raise _Damage(f'{fields.what}: a map field of {len(entries)} bytes')
        return dict(struct.iter_unpack('<HQ', entries))

    def _definition(self, opcode: int, fields: _Fields) -> None:
        """Read a schema or channel record into :attr:`schemas` / :attr:`channels`."""
        if opcode == _OP_SCHEMA:
            (schema_id,) = fields.unpack(_U16)
            self.schemas[schema_id] = fields.string()
            if len(self.schemas) > _MAX_TOPICS:
                raise _Damage(f'{self.path.name} defines more than {_MAX_TOPICS} schemas')
            return
        channel_id, schema_id = fields.unpack(_CHANNEL_HEAD)
        topic = fields.string()
        encoding = fields.string()
        if encoding == 'cdr' and schema_id in self.schemas:
            self.channels[channel_id] = (topic, self.schemas[schema_id])
            if len(self.channels) > _MAX_TOPICS:
                raise _Damage(f'{self.path.name} defines more than {_MAX_TOPICS} channels')

    def scan(self, topics: Optional[Sequence[str]], with_data: bool,
             message_compression: str = '') -> Iterator[tuple[int, int, bytes]]:
        """Yield (channel id, log time, data) of ``topics`` (all if None) in file order.

        The messages of a chunk come sorted by log time (as rosbags yields them). Channels met
        in the data fill :attr:`channels`. Data is b'' unless ``with_data``.

        Raises:
            _Damage: a record that does not fit the file or its chunk or a cap, a chunk that
                does not inflate to its declared size, or the end of a file without footer.
        """
        try:
            handle = self.path.open('rb')
        except OSError as exc:
            raise _Damage(f'cannot open {self.path}: {exc.strerror}') from exc
        with handle:
            handle.seek(self.data_start)
            offset = self.data_start
            while offset < self.data_end:
                head = handle.read(_RECORD_HEAD.size)
                if len(head) < _RECORD_HEAD.size:
                    raise _Damage(f'{self.path.name} is cut inside a record header at byte '
                                  f'{offset}')
                opcode, length = _RECORD_HEAD.unpack(head)
                if length > self.size - offset - _RECORD_HEAD.size:
                    raise _Damage(f'{self.path.name}: the record at byte {offset} claims '
                                  f'{length} bytes but only {self.size - offset - 9} follow '
                                  '(cut off or damaged)')
                if opcode in (_OP_FOOTER, _OP_DATA_END):  # the data section ended cleanly
                    return
                if self._wanted_record(opcode, offset, topics):
                    messages = self._read_record(handle, opcode, offset, length, topics,
                                                 with_data, message_compression)
                    yield from messages
                    del messages
                offset += _RECORD_HEAD.size + length
                handle.seek(offset)
        if not self.complete:
            raise _Damage(f'{self.path.name} ends at byte {offset} without its summary and '
                          'footer: the recording was cut off')

    def _wanted_record(self, opcode: int, offset: int, topics: Optional[Sequence[str]]) -> bool:
        if opcode not in (_OP_SCHEMA, _OP_CHANNEL, _OP_MESSAGE, _OP_CHUNK):
            return False
        if opcode != _OP_CHUNK or not self.indexed or topics is None:
            return True
        held = self.chunk_channels.get(offset)
        return held is None or any(self.channels.get(i, ('',))[0] in topics for i in held)

    def _read_record(self, handle: Any, opcode: int, offset: int, length: int,
                     topics: Optional[Sequence[str]], with_data: bool,
                     message_compression: str) -> list[tuple[int, int, bytes]]:
        """Return the wanted messages of one record (a chunk's sorted by log time)."""
        where = f'{self.path.name}: the record at byte {offset}'
        limit = MAX_CHUNK_BYTES if opcode == _OP_CHUNK else MAX_MESSAGE_BYTES + _MSG_HEAD.size
        if length > limit:
            raise _Damage(f'{where} has {length} bytes, more than the {limit} a bag record may '
                          'have here')
        content = memoryview(handle.read(length))
        if len(content) < length:
            raise _Damage(f'{where} is cut short')
        if opcode == _OP_CHUNK:
            records = _records(self._chunk(content, where), where)
        else:
            records = iter([(opcode, content)])
        messages = []
        for op, body in records:
            fields = _Fields(body, where)
            if op in (_OP_SCHEMA, _OP_CHANNEL):
                self._definition(op, fields)
                continue
            if op != _OP_MESSAGE:
                continue
            channel_id, _, log_time, _ = fields.unpack(_MSG_HEAD)
            channel = self.channels.get(channel_id)
            if channel is None or (topics is not None and channel[0] not in topics):
                continue
            data = b''
            if with_data:
                data = bytes(body[_MSG_HEAD.size:])
                if message_compression:
                    data = _inflate(data, message_compression, None, MAX_MESSAGE_BYTES,
                                    f'{where}: a message on {channel[0]}')
                elif len(data) > MAX_MESSAGE_BYTES:
                    raise _Damage(f'{where}: a message of {len(data)} bytes on {channel[0]}, '
                                  f'more than {MAX_MESSAGE_BYTES}')
            messages.append((channel_id, log_time, data))
        messages.sort(key=itemgetter(1))
        return messages

    @staticmethod
    def _chunk(content: memoryview, where: str) -> memoryview:
        fields = _Fields(content, where)
        _, _, size, crc = fields.unpack(_CHUNK_HEAD)
        compression = fields.string()
        stored = fields.bytes_(_U64)
        raw = _inflate(bytes(stored), compression, size, MAX_CHUNK_BYTES, f'{where} (a chunk)')
        if crc and zlib.crc32(raw) != crc:
            raise _Damage(f'{where}: a chunk that fails its crc check')
        return memoryview(raw)


def _records(buf: memoryview, what: str) -> Iterator[tuple[int, memoryview]]:
    """Split a buffer into (opcode, content) records, each checked to fit."""
    pos = 0
    while pos < len(buf):
        if pos + _RECORD_HEAD.size > len(buf):
            raise _Damage(f'{what} ends inside a record header')
        opcode, length = _RECORD_HEAD.unpack_from(buf, pos)
        pos += _RECORD_HEAD.size
        if length > len(buf) - pos:
            raise _Damage(f'{what} has a record of {length} bytes where {len(buf) - pos} are '
                          'left')
        yield opcode, buf[pos:pos + length]
        pos += length


class _McapSource:
    """The .mcap files of a bag, read with :class:`_McapFile`.

    ``damaged`` when a file was cut off (no valid footer): its topics come from a scan that
    stops at the damage, reading stops there with :class:`_Damage`, and later files are not
    read.
    """

    def __init__(self, files: Sequence[Path], message_compression: str = '') -> None:
        self._files: list[_McapFile] = []
        self._compression = message_compression
        self._failed: Optional[str] = None
        self.damaged = False
        counts: dict[str, Optional[int]] = {}
        types_: dict[str, str] = {}
        for path in files:
            try:
                mcap = self._open(path)
            except _Damage as exc:
                if not self._files:
                    raise
                self.damaged = True
                self._failed = str(exc)
                break
            self._files.append(mcap)
            for channel_id, (topic, msgtype) in mcap.channels.items():
                types_.setdefault(topic, msgtype)
                count = None if mcap.counts is None else mcap.counts.get(channel_id, 0)
                previous = counts.get(topic, 0)
                counts[topic] = None if count is None or previous is None else previous + count
            if len(types_) > _MAX_TOPICS:
                raise _Damage(f'{path.name}: more than {_MAX_TOPICS} topics')
            if not mcap.complete:
                self.damaged = True
                break
        self.topics = {t: TopicInfo(m, counts.get(t)) for t, m in sorted(types_.items())}

    @staticmethod
    def _open(path: Path) -> _McapFile:
        try:
            return _McapSource._scanned(path)
        except OSError as exc:
            raise _Damage(f'cannot read {path}: {exc.strerror or exc}') from exc

    @staticmethod
    def _scanned(path: Path) -> _McapFile:
        mcap = _McapFile(path)
        if mcap.indexed:
            return mcap
        # No summary: find the channels (and count the messages) by scanning, up to any damage.
        counts: dict[int, int] = {}
        try:
            for channel_id, _, _ in mcap.scan(None, with_data=False):
                counts[channel_id] = counts.get(channel_id, 0) + 1
                if len(mcap.channels) > _MAX_TOPICS:
                    raise _Damage(f'{path.name}: more than {_MAX_TOPICS} channels')
        except _Damage as exc:
            if not mcap.channels:
                raise
            _LOG.debug('mcap pre-scan of %s stopped: %s', path, exc)
        mcap.counts = counts
        return mcap

    def messages(self, topics: Sequence[str]) -> Iterator[_Message]:
        for mcap in self._files:
            try:
                for channel_id, timestamp, raw in mcap.scan(
                        topics, with_data=True, message_compression=self._compression):
                    topic, msgtype = mcap.channels[channel_id]
                    yield topic, msgtype, timestamp, raw
            except OSError as exc:  # an I/O error mid-file: damage as far as we can tell
                raise _Damage(f'{mcap.path.name}: {exc.strerror or exc}') from exc
        if self._failed:
            raise _Damage(self._failed)

    def close(self) -> None:
        pass


class _Sqlite3Source:
    """Read .db3 files row by row in insertion order, stopping at the first malformed page.

    SQLite checks its own pages; we cap what a row may make it allocate
    (``SQLITE_LIMIT_LENGTH``) and how many topics we take. SQLite refuses a file shorter than
    the page count its header records ("database disk image is malformed", even for the schema
    table), so a cut file is copied to a temporary file with whole pages and the header's page
    count set to what is there (the header format: https://www.sqlite.org/fileformat.html,
    offsets 16 and 28); such a bag is ``damaged``.
    """

    def __init__(self, files: Sequence[Path], message_compression: str = '') -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix='cityseg_bag_salvage_')
        self._compression = message_compression
        self._dbs: list[tuple[Path, sqlite3.Connection, dict[int, tuple[str, str]]]] = []
        self._failed: Optional[str] = None
        self._cut: list[str] = []
        types_: dict[str, str] = {}
        counts: dict[str, Optional[int]] = {}
        for index, path in enumerate(files):
            try:
                db, topics = self._open(path, index)
            except _Damage as exc:
                if not self._dbs:
                    self.close()
                    raise
                self._failed = str(exc)
                break
            self._dbs.append((path, db, topics))
            per_topic = self._counts(db, topics)
            for name, msgtype in topics.values():
                types_.setdefault(name, msgtype)
                count = None if per_topic is None else per_topic.get(name, 0)
                previous = counts.get(name, 0)
                counts[name] = None if count is None or previous is None else previous + count
        self.damaged = bool(self._cut or self._failed)
        self.topics = {t: TopicInfo(m, counts.get(t)) for t, m in sorted(types_.items())}

    def _open(self, path: Path,
              index: int) -> tuple[sqlite3.Connection, dict[int, tuple[str, str]]]:
        try:
            return self._connect(path)
        except sqlite3.DatabaseError as first:
            fixed = self._fix_header(path, Path(self._tmp.name) / f'{index}.db3')
            if fixed is None:
                raise _Damage(f'{path.name} is not a readable sqlite3 bag: {first}') from first
            _LOG.info('%s is cut short; reading a copy with a repaired header', path)
            self._cut.append(path.name)
            try:
                return self._connect(fixed)
            except sqlite3.DatabaseError as exc:
                raise _Damage(f'{path.name} is not a readable sqlite3 bag: {exc}') from exc

    @staticmethod
    def _connect(path: Path) -> tuple[sqlite3.Connection, dict[int, tuple[str, str]]]:
        db = sqlite3.connect(f'{path.resolve().as_uri()}?immutable=1', uri=True,
                             check_same_thread=False)
        try:
            # A row's blob is allocated whole: cap it ("string or blob too big" past it).
            db.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, MAX_MESSAGE_BYTES)
            rows = db.execute('SELECT id, name, type FROM topics LIMIT ?',
                              (_MAX_TOPICS + 1,)).fetchall()
        except (sqlite3.Error, OverflowError):
            db.close()
            raise
        if len(rows) > _MAX_TOPICS:
            db.close()
            raise sqlite3.DatabaseError(f'more than {_MAX_TOPICS} topics')
        topics = {}
        for topic_id, name, msgtype in rows:
            if not (isinstance(topic_id, int) and isinstance(name, str)
                    and isinstance(msgtype, str)):
                db.close()
                raise sqlite3.DatabaseError('a topics row of the wrong types')
            topics[topic_id] = (name, msgtype)
        return db, topics

    @staticmethod
    def _counts(db: sqlite3.Connection,
                topics: dict[int, tuple[str, str]]) -> Optional[dict[str, int]]:
        try:
            rows = db.execute('SELECT topic_id, COUNT(*) FROM messages GROUP BY topic_id '
                              'LIMIT ?', (_MAX_TOPICS + 1,)).fetchall()
        except sqlite3.Error:
            return None  # a damaged table: the counts stay unknown, the rows are read anyway
        counts: dict[str, int] = {}
        for topic_id, count in rows:
            if topic_id in topics:
                name = topics[topic_id][0]
                counts[name] = counts.get(name, 0) + int(count)
        return counts

    @staticmethod
    def _rows(db: sqlite3.Connection, ids: list[int]) -> Iterator[tuple[int, int]]:
        """(rowid, topic id) of the messages of ``ids`` in insertion order, page by page.

        Python's sqlite3 cursor steps one row ahead, so a damaged row would take the good row
        before it down with it; pages of rows without their data, and the data fetched row by
        row, keep every row before the damage. A failed page is retried a row at a time.
        """
        query = (f'SELECT rowid, topic_id FROM messages WHERE rowid > ? AND topic_id IN '
                 f'({",".join("?" * len(ids))}) ORDER BY rowid LIMIT ?')
        last, page = -2**63, 256
        while True:
            try:
                rows = db.execute(query, (last, *ids, page)).fetchall()
            except sqlite3.Error:
                if page == 1:
                    raise
                page = 1
                continue
            if not rows:
                return
            for row, topic_id in rows:
                yield row, topic_id
                last = row

    @staticmethod
    def _fix_header(path: Path, copy: Path) -> Optional[Path]:
        with path.open('rb') as handle:
            header = handle.read(100)
        if len(header) < 100 or not header.startswith(_SQLITE_MAGIC):
            return None
        (page_size,) = struct.unpack_from('>H', header, 16)
        page_size = 65536 if page_size == 1 else page_size
        # A power of two from 512 to 65536, or the file is not SQLite's (0 would divide by 0).
        if page_size < 512 or page_size & (page_size - 1):
            return None
        pages = path.stat().st_size // page_size
        (recorded,) = struct.unpack_from('>I', header, 28)
        if pages == 0 or pages >= recorded:
            return None  # not cut short: the damage is elsewhere
        with path.open('rb') as src, copy.open('wb') as dst:
            remaining = pages * page_size
            while remaining:
                block = src.read(min(remaining, 1 << 24))
                if not block:
                    return None
                dst.write(block)
                remaining -= len(block)
            dst.seek(28)
            dst.write(struct.pack('>I', pages))
        return copy

    def messages(self, topics: Sequence[str]) -> Iterator[_Message]:
        for path, db, names in self._dbs:
            ids = [i for i, (topic, _) in names.items() if topic in topics]
            if not ids:
                continue
            try:
                for row, topic_id in self._rows(db, ids):
                    timestamp, data = db.execute('SELECT timestamp, data FROM messages WHERE '
                                                 'rowid = ?', (row,)).fetchone()
                    if not isinstance(timestamp, int) or not isinstance(data, bytes):
                        raise _Damage(f'{path.name}: a message row of the wrong types')
                    topic, msgtype = names[topic_id]
                    if self._compression:
                        data = _inflate(data, self._compression, None, MAX_MESSAGE_BYTES,
                                        f'{path.name}: a message on {topic}')
                    yield topic, msgtype, timestamp, data
            except (sqlite3.Error, OverflowError) as exc:
                raise _Damage(f'{path.name}: {exc}') from exc
        if self._failed:
            raise _Damage(self._failed)
        if self._cut:
            raise _Damage(f'{", ".join(self._cut)} is cut short: its last pages are missing')

    def close(self) -> None:
        for _, db, _ in self._dbs:
            db.close()
        self._dbs.clear()
        self._tmp.cleanup()


class _Layout(NamedTuple):
    """What a bag path holds: storage id, files, per-message compression ('' or 'zstd')."""

    storage: str
    files: list[Path]
    message_compression: str


def _sniff(path: Path) -> str:
    """Storage id of one file from its magic bytes (or suffix); '' when it is neither."""
    try:
        with path.open('rb') as handle:
            head = handle.read(16)
    except OSError as exc:
        raise BagError(f'cannot read {path}: {exc.strerror}') from exc
    if head.startswith(_MCAP_MAGIC):
        return 'mcap'
    if head.startswith(_SQLITE_MAGIC):
        return 'sqlite3'
    return {'.mcap': 'mcap', '.db3': 'sqlite3'}.get(path.suffix, '')


def _metadata(path: Path) -> Optional[dict]:
    """Return ``path/metadata.yaml``'s ``rosbag2_bagfile_information``; None if absent or bad."""
    meta = path / 'metadata.yaml'
    if not meta.is_file():
        return None
    try:
        if meta.stat().st_size > _MAX_METADATA_BYTES:
            _warn_once(meta, f'{meta} is larger than {_MAX_METADATA_BYTES} bytes: ignored')
            return None
        info = YAML(typ='safe').load(meta.read_text())['rosbag2_bagfile_information']
        return info if isinstance(info, dict) else None
    except Exception:  # noqa: B902 - any bad YAML: fall back to the files present
        _warn_once(meta, f'{meta} is not a readable rosbag2 metadata file: ignored')
        return None


_WARNED: set = set()


def _warn_once(path: Path, message: str) -> None:
    """Warn about a bag file once per process: evaluate opens the bag once per stream."""
    key = (str(path.resolve()), message)
    if key in _WARNED:
        return
    if len(_WARNED) < 1024:  # bounded, like every cache
        _WARNED.add(key)
    _LOG.warning('%s', message)


def _bag_layout(path: Path) -> _Layout:
    """Find the storage files of a bag directory or file.

    Raises:
        BagError: not a bag, or a layout we do not read (file-compressed bags).
    """
    if path.is_file():
        storage = _sniff(path)
        if not storage:
            raise BagError(f'{path} is not a rosbag2: neither an MCAP nor a SQLite file; pass a '
                           'bag directory with metadata.yaml or a .mcap/.db3 file')
        return _Layout(storage, [path], '')
    if not path.is_dir():
        raise BagError(f'{path} is not a rosbag2 (not a file or directory); pass a bag '
                       'directory with metadata.yaml or a .mcap/.db3 file')
    info = _metadata(path) or {}

    def text(key: str) -> str:  # str() of a YAML alias bomb would expand it: strings only
        value = info.get(key)
        return value if isinstance(value, str) else ''

    mode = text('compression_mode').lower()
    if mode == 'file':
        raise BagError(f'bag {path} is compressed file by file (compression_mode: file), which '
                       'is not read here; decompress its files first (zstd -d, then fix '
                       'metadata.yaml) or convert it with ros2 bag convert')
    compression = ''
    if mode == 'message':
        compression = text('compression_format')
        if compression != 'zstd':
            raise BagError(f'bag {path} compresses messages with {compression!r}; only zstd '
                           'is read')
    files: list[Path] = []
    listed = info.get('relative_file_paths')
    if isinstance(listed, list):
        files = [path / Path(f).name for f in listed[:_MAX_TOPICS] if isinstance(f, str)]
        files = [f for f in files if f.is_file()]
    if not files:
        files = sorted(p for p in path.iterdir() if p.suffix in ('.mcap', '.db3')
                       and p.is_file())
    kinds = {_sniff(f) for f in files} - {''}
    if not kinds:
        raise BagError(f'{path} is not a rosbag2: no .mcap or .db3 file in it; pass a bag '
                       'directory with metadata.yaml or a .mcap/.db3 file')
    if len(kinds) > 1:
        raise BagError(f'bag {path} mixes mcap and sqlite3 files; pass one storage file')
    storage = kinds.pop()
    return _Layout(storage, [f for f in files if _sniff(f) == storage], compression)


def _open_source(path: Path) -> Any:
    """Open a bag with the bounded reader of its storage."""
    layout = _bag_layout(path)
    source = _McapSource if layout.storage == 'mcap' else _Sqlite3Source
    try:
        return source(layout.files, layout.message_compression)
    except _Damage as exc:
        raise BagError(f'bag {path} is damaged and nothing in it is readable: {exc}') from exc


# --------------------------------------------------------------------------------------------
# Reader


class BagReader:
    """Read images, frames and camera info from a rosbag2; use it as a context manager.

    Image topics may hold sensor_msgs/Image or sensor_msgs/CompressedImage (JPEG/PNG as
    image_transport writes them); the message type in the bag decides.

    Example:
        >>> with BagReader('cityscapes_bag') as bag:
        ...     for frame in bag.read_frames(TOPIC_LEFT_IMAGE, gt_topic=TOPIC_GT_LABEL_IDS):
        ...         ...
    """

    def __init__(self, path: Union[str, Path]) -> None:
        """Name the bag; it is opened by :meth:`open` or ``with``.

        Args:
            path: a rosbag2 directory (metadata.yaml + storage files), or one .mcap / .db3
                file.

        Raises:
            BagError: the path does not exist.
        """
        self.path = Path(path)
        if not self.path.exists():
            raise BagError(f'bag {self.path} does not exist; pass a rosbag2 directory or a '
                           '.mcap/.db3 file (make_bag writes one from Cityscapes)')
        self._source: Any = None
        self.pairing_stats: Optional[PairingStats] = None

    def open(self) -> None:  # noqa: A003 - rosbags' name
        """Open the bag, salvaging a damaged one.

        Raises:
            BagError: the path is not a bag, or nothing in it is readable.
        """
        self._source = _open_source(self.path)
        if self._source.damaged:
            _LOG.info('bag %s is damaged; reading what precedes the damage', self.path)

    def close(self) -> None:
        """Close the storage files."""
        source, self._source = self._source, None
        if source is not None:
            source.close()

    def __enter__(self) -> 'BagReader':
        self.open()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close()

    @property
    def topics(self) -> dict[str, TopicInfo]:
        """Topic name -> :class:`TopicInfo` (message type, count)."""
        return dict(self._opened().topics)

    @property
    def damaged(self) -> bool:
        """True when the bag was opened by salvaging: reading will end with a BagError."""
        return bool(self._opened().damaged)

    def read_messages(self, topic: str,
                      msgtypes: Sequence[str] = IMAGE_TYPES) -> Iterator[MessageRecord]:
        """Yield the messages of ``topic`` deserialized but not decoded, in log-time order.

        Decoding an image (:meth:`decode`) costs far more than reading its header: callers that
        skip frames (shards, frames without partners) decode only what they use.

        Raises:
            BagError: missing topic or one of another type, a message that cannot be
                deserialized, or damage in the bag (after yielding the messages before it).
        """
        count = 0
        try:
            for record in self._records(topic, msgtypes):
                count += 1
                yield record
        except _Damage as exc:
            raise BagError(f'bag {self.path} is damaged: {exc}; {count} messages of {topic} '
                           'were read before it') from exc

    def decode(self, topic: str, record: MessageRecord, rgb: bool = False,
               lossless: bool = False) -> np.ndarray:
        """Decode an image message of :meth:`read_messages` (see :func:`decode_image`).

        Raises:
            BagError: naming the bag, topic and stamp, when the image cannot be decoded.
        """
        return self._decode(topic, record.stamp_ns, record.msg, rgb, lossless)

    def read_images(self, topic: str) -> Iterator[ImageRecord]:
        """Yield every image of ``topic`` in log-time order (e.g. a predictions topic).

        Single-channel images stay 2-D (labels, instance ids); colour comes back as RGB.

        Raises:
            BagError: missing topic or not an image topic, an undecodable or truncated message,
                or damage in the bag (after yielding the images before it).
        """
        count = 0
        try:
            for record in self._records(topic, IMAGE_TYPES):
                image = self.decode(topic, record)
                count += 1
                yield ImageRecord(record.stamp_ns, image, record.frame_id)
        except _Damage as exc:
            raise BagError(f'bag {self.path} is damaged: {exc}; {count} images of {topic} '
                           'were read before it') from exc

    def read_camera_info(self, topic: str) -> Iterator[CameraInfoRecord]:
        """Yield every CameraInfo of ``topic`` in log-time order.

        Raises:
            BagError: as :meth:`read_messages`.
        """
        count = 0
        try:
            for record in self._records(topic, (CAMERA_INFO_TYPE,)):
                count += 1
                yield CameraInfoRecord(record.stamp_ns, record.frame_id,
                                       calibration_from_msg(record.msg))
        except _Damage as exc:
            raise BagError(f'bag {self.path} is damaged: {exc}; {count} camera infos of {topic} '
                           'were read before it') from exc

    def read_frames(self, left_topic: str, gt_topic: Optional[str] = None,
                    inst_topic: Optional[str] = None, right_topic: Optional[str] = None,
                    tolerance_ns: int = DEFAULT_TOLERANCE_NS) -> Iterator[Frame]:
        """Yield frames whose parts all exist, matched by header stamp, in log-time order.

        A left image without a partner on every other requested topic is skipped (counted in
        :attr:`pairing_stats`, set when the iteration ends or fails). Only matched messages
        are decoded.

        Args:
            left_topic: the camera image (any of :data:`COLOR_ENCODINGS`, or a JPEG/PNG
                CompressedImage), converted to RGB.
            gt_topic: mono8 Cityscapes labelIds (Image, or a PNG CompressedImage), or None.
            inst_topic: mono16 (or 32SC1) Cityscapes instanceIds, or None.
            right_topic: the right camera image, or None.
            tolerance_ns: largest header stamp difference between the parts of one frame.

        Raises:
            BagError: a topic is missing or not an image topic, a message cannot be decoded, is
                truncated or has the wrong encoding, or the bag is damaged (raised after the
                frames before the damage were yielded).
        """
        roles = {'left': left_topic, 'right': right_topic, 'gt': gt_topic, 'inst': inst_topic}
        roles = {role: topic for role, topic in roles.items() if topic is not None}
        self._check_topics(roles)
        by_topic = {topic: role for role, topic in roles.items()}
        pairer = StampPairer(list(roles), tolerance_ns, max_pending=_BAG_MAX_PENDING)
        count = 0
        try:
            for topic, msgtype, _, raw in self._opened().messages(tuple(by_topic)):
                msg = self._deserialize(topic, msgtype, raw)
                matched = pairer.push(by_topic[topic], stamp_to_ns(msg.header.stamp),
                                      (topic, msg))
                if matched is not None:
                    frame = self._frame(matched.stamp_ns, matched.items)
                    count += 1
                    yield frame
        except _Damage as exc:
            raise BagError(f'bag {self.path} is damaged: {exc}; {count} frames were read '
                           'before it') from exc
        finally:
            self.pairing_stats = pairer.stats
            if self.pairing_stats.dropped:
                _LOG.info('%s: %d images had no partner within %.1f ms and were skipped: %s',
                          self.path, self.pairing_stats.dropped, tolerance_ns / 1e6,
                          self.pairing_stats.dropped_unmatched)

    # -- helpers ---------------------------------------------------------------------------

    def _opened(self) -> Any:
        if self._source is None:
            raise BagError(f'bag {self.path} is not open: use BagReader as a context manager')
        return self._source

    def _records(self, topic: str, msgtypes: Sequence[str]) -> Iterator[MessageRecord]:
        """Deserialized messages of one topic; storage damage raises :class:`_Damage`."""
        self._check_topics({'topic': topic}, msgtypes=msgtypes)
        for name, msgtype, _, raw in self._opened().messages((topic,)):
            msg = self._deserialize(name, msgtype, raw)
            yield MessageRecord(stamp_to_ns(msg.header.stamp), str(msg.header.frame_id), msg)

    def _check_topics(self, roles: dict[str, str],
                      msgtypes: Sequence[str] = IMAGE_TYPES) -> None:
        topics = self._opened().topics
        seen: dict[str, str] = {}
        for role, topic in roles.items():
            if topic in seen:
                raise BagError(f'topic {topic} is given for both {seen[topic]} and {role}')
            seen[topic] = role
            if topic not in topics:
                present = ', '.join(sorted(topics)) or 'none'
                asked = '' if role == 'topic' else f' (asked for as {role})'
                raise BagError(f'bag {self.path} has no topic {topic}{asked}; '
                               f'topics present: {present}')
            if topics[topic].msgtype not in msgtypes:
                raise BagError(f'topic {topic} of bag {self.path} holds '
                               f'{topics[topic].msgtype}, expected {" or ".join(msgtypes)}')

    def _deserialize(self, topic: str, msgtype: str, raw: bytes) -> Any:
        try:
            return _typestore().deserialize_cdr(raw, msgtype)
        except (SerdeError, KeyError, ValueError) as exc:
            raise BagError(f'bag {self.path}: a message on {topic} cannot be decoded as '
                           f'{msgtype}: {exc}') from exc

    def _decode(self, topic: str, stamp_ns: int, msg: Any, rgb: bool,
                lossless: bool = False) -> np.ndarray:
        try:
            return decode_image(msg, rgb=rgb, lossless=lossless)
        except ImageError as exc:
            raise BagError(f'bag {self.path}: image on {topic} at stamp {stamp_ns} ns: '
                           f'{exc}') from exc

    def _frame(self, stamp_ns: int, items: dict[str, tuple[str, Any]]) -> Frame:
        left_topic, left = items['left']
        parts: dict[str, Optional[np.ndarray]] = {'right': None, 'gt': None, 'inst': None}
        for role in ('right', 'gt', 'inst'):
            if role not in items:
                continue
            topic, msg = items[role]
            stamp = stamp_to_ns(msg.header.stamp)
            if role == 'right':
                parts[role] = self._decode(topic, stamp, msg, rgb=True)
                continue
            image = self._decode(topic, stamp, msg, rgb=False, lossless=True)
            check_label_image(image, 'labels' if role == 'gt' else 'instances',
                              f'bag {self.path}: {topic}')
            parts[role] = image.astype(np.int32) if role == 'inst' else image
        return Frame(stamp_ns=stamp_ns, left=self._decode(left_topic, stamp_ns, left, rgb=True),
                     right=parts['right'], gt_label_ids=parts['gt'],
                     gt_instance_ids=parts['inst'], frame_id=str(left.header.frame_id))
