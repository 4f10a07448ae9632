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

Built on rosbags (``rosbags.rosbag2`` storage, the ROS 2 Jazzy typestore for CDR) and
rosbags-image (encoding -> numpy -> RGB). Both storages, mcap and sqlite3, are read and written.

Damaged bags: rosbags refuses to open an mcap without its footer (a recording cut off) and a
sqlite3 file whose pages are missing or malformed. :class:`BagReader` then falls back to
salvaging: it scans the mcap records in file order, or reads the sqlite3 rows in insertion order
(from a copy whose header is fixed up when the file was cut), yields every message readable
before the damage and then raises :class:`~cityseg_ros.errors.BagError`, so a caller can keep
what was read. Damage that rosbags meets while iterating is reported the same way.
"""

from dataclasses import dataclass
import functools
import logging
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
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.serde import SerdeError
from rosbags.typesys import get_typestore, Stores
from rosbags.typesys.store import Typestore
from ruamel.yaml import YAML

__all__ = [
    'TOPIC_LEFT_IMAGE', 'TOPIC_RIGHT_IMAGE', 'TOPIC_LEFT_INFO', 'TOPIC_RIGHT_INFO',
    'TOPIC_GT_LABEL_IDS', 'TOPIC_GT_INSTANCE_IDS', 'STORAGES', 'DEFAULT_TOLERANCE_NS',
    'COLOR_ENCODINGS', 'IMAGE_TYPE', 'CAMERA_INFO_TYPE',
    'TopicInfo', 'Frame', 'ImageRecord', 'CameraCalibration', 'CameraInfoRecord',
    'image_msg', 'camera_info_msg', 'image_to_numpy', 'calibration_from_msg', 'stamp_to_ns',
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

_WRITE_LAYOUTS = {'rgb8', 'bgr8', 'rgba8', 'bgra8', 'mono8', 'mono16', '16UC1', '32SC1', '32FC1'}
_INSTANCE_ENCODINGS = ('mono16', '16UC1', '32SC1')
_LABEL_ENCODINGS = ('mono8', '8UC1')
_IMAGE_TYPES = (IMAGE_TYPE,)

# rosbag2 metadata version 9 is what Jazzy's rosbag2 writes (QoS enums as names).
_BAG_VERSION = 9
# A pairer for bags may hold a few more frames than the live node's: topics written by
# different processes can be logged a little apart.
_BAG_MAX_PENDING = 16


@functools.lru_cache(maxsize=1)
def _typestore() -> Typestore:
    return get_typestore(Stores.ROS2_JAZZY)


# --------------------------------------------------------------------------------------------
# Typed records


class TopicInfo(NamedTuple):
    """A topic of a bag: its message type and count (None when a damaged bag hides it)."""

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

    def write_camera_info(self, topic: str, calibration: CameraCalibration, stamp_ns: int,
                          frame_id: str) -> None:
        """Write a CameraInfo message."""
        self.write_message(topic, camera_info_msg(calibration, stamp_ns, frame_id), stamp_ns)


# --------------------------------------------------------------------------------------------
# Storage sources: rosbags for healthy bags, salvage scanners for damaged ones. Each yields
# (topic, msgtype, log time, raw CDR) and raises _Damage where it cannot go on.


class _Damage(Exception):
    """Internal: the storage cannot be read past this point (the text says why)."""


_Message = tuple[str, str, int, bytes]


class _RosbagsSource:
    """A bag rosbags opens: directory with metadata.yaml, or a single .mcap / .db3 file."""

    damaged = False

    def __init__(self, path: Path) -> None:
        self._reader = Reader(path)
        self._reader.open()
        try:
            self.topics = {
                name: TopicInfo(info.msgtype or '', int(info.msgcount))
                for name, info in self._reader.topics.items()
            }
        except BaseException:
            self._reader.close()
            raise

    def messages(self, topics: Sequence[str]) -> Iterator[_Message]:
        connections = [c for c in self._reader.connections if c.topic in topics]
        if not connections:  # rosbags reads every topic when given none
            return
        iterator = self._reader.messages(connections=connections)
        while True:
            try:
                connection, timestamp, raw = next(iterator)
            except StopIteration:
                return
            except Exception as exc:  # apsw, struct, lz4, zstd, ReaderError: damaged storage
                raise _Damage(f'{type(exc).__name__}: {exc}') from exc
            yield connection.topic, connection.msgtype, timestamp, raw

    def close(self) -> None:
        self._reader.close()


_MCAP_MAGIC = b'\x89MCAP0\r\n'
_U16 = struct.Struct('<H')
_U32 = struct.Struct('<I')
_U64 = struct.Struct('<Q')
_MSG_HEAD = struct.Struct('<HIQQ')  # channel id, sequence, log time, publish time
_CHUNK_HEAD = struct.Struct('<QQQI')  # start, end, uncompressed size, uncompressed crc32


def _decompressor(name: str) -> Callable[[bytes], bytes]:
    if name == '':
        return bytes
    if name == 'zstd':
        try:
            from compression import zstd  # Python >= 3.14
        except ImportError:
            from backports import zstd  # what rosbags installs before 3.14
        return zstd.decompress
    if name == 'lz4':
        import lz4.frame
        return lz4.frame.decompress
    raise _Damage(f'unknown mcap chunk compression {name!r}')


def _mcap_string(buf: memoryview, pos: int) -> tuple[str, int]:
    (size,) = _U32.unpack_from(buf, pos)
    end = pos + 4 + size
    if end > len(buf):
        raise _Damage('record field runs past its record')
    return bytes(buf[pos + 4:end]).decode(), end


class _McapSalvage:
    """Scan .mcap files record by record (what rosbags does without a summary, but tolerant).

    Data section records are: opcode u8, length u64, content. Schemas (0x03), channels (0x04)
    and messages (0x05) may sit in chunks (0x06); everything else is skipped. Spec:
    https://mcap.dev/spec.
    """

    damaged = True

    def __init__(self, files: Sequence[Path]) -> None:
        self._files = list(files)
        self.topics: dict[str, TopicInfo] = {}
        counts: dict[str, int] = {}
        types_: dict[str, str] = {}
        for path in self._files:
            channels: dict[int, tuple[str, str]] = {}
            try:
                for channel_id, _, _ in self._scan(path, channels, with_data=False):
                    topic = channels[channel_id][0]
                    counts[topic] = counts.get(topic, 0) + 1
            except _Damage as exc:
                types_.update(dict(channels.values()))
                if not types_:
                    raise
                _LOG.debug('mcap pre-scan stopped: %s', exc)
                break
            types_.update(dict(channels.values()))
        # Channels met before the damage; counts are the messages readable.
        self.topics = {t: TopicInfo(m, counts.get(t, 0)) for t, m in sorted(types_.items())}

    def messages(self, topics: Sequence[str]) -> Iterator[_Message]:
        for path in self._files:
            channels: dict[int, tuple[str, str]] = {}
            for channel_id, timestamp, raw in self._scan(path, channels, with_data=True):
                topic, msgtype = channels[channel_id]
                if topic in topics:
                    yield topic, msgtype, timestamp, raw

    def close(self) -> None:
        pass

    def _scan(self, path: Path, channels: dict[int, tuple[str, str]],
              with_data: bool) -> Iterator[tuple[int, int, bytes]]:
        """Yield (channel id, log time, data) in file order; channels fill ``channels``."""
        schemas: dict[int, str] = {}
        try:
            handle = path.open('rb')
        except OSError as exc:
            raise _Damage(f'cannot open {path}: {exc.strerror}') from exc
        with handle:
            if handle.read(8) != _MCAP_MAGIC:
                raise _Damage(f'{path.name} does not start with the MCAP magic bytes')
            while True:
                offset = handle.tell()
                head = handle.read(9)
                if not head:
                    raise _Damage(f'{path.name} ends at byte {offset} without its summary and '
                                  'footer: the recording was cut off')
                if len(head) < 9:
                    raise _Damage(f'{path.name} is cut inside a record header at byte {offset}')
                opcode, (length,) = head[0], _U64.unpack_from(head, 1)
                if opcode == 0x02:  # footer: the data section ended cleanly
                    return
                if opcode not in (0x03, 0x04, 0x05, 0x06):
                    handle.seek(length, 1)
                    continue
                content = handle.read(length)
                if len(content) < length:
                    raise _Damage(f'{path.name} is cut inside a record at byte {offset} '
                                  f'({len(content)} of {length} bytes present)')
                records = [(opcode, memoryview(content))]
                if opcode == 0x06:
                    records = list(self._chunk_records(path, offset, memoryview(content)))
                messages = []
                for op, body in records:
                    try:
                        if op == 0x03:
                            (schema_id,) = _U16.unpack_from(body, 0)
                            schemas[schema_id], _ = _mcap_string(body, 2)
                        elif op == 0x04:
                            channel_id, schema_id = struct.unpack_from('<HH', body, 0)
                            topic, pos = _mcap_string(body, 4)
                            encoding, _ = _mcap_string(body, pos)
                            if encoding == 'cdr' and schema_id in schemas:
                                channels[channel_id] = (topic, schemas[schema_id])
                        elif op == 0x05:
                            channel_id, _, log_time, _ = _MSG_HEAD.unpack_from(body, 0)
                            if channel_id in channels:
                                data = bytes(body[_MSG_HEAD.size:]) if with_data else b''
                                messages.append((channel_id, log_time, data))
                    except (struct.error, UnicodeDecodeError) as exc:
                        raise _Damage(f'{path.name}: malformed record near byte {offset}: '
                                      f'{exc}') from exc
                # rosbags sorts a chunk's messages by log time, so do we.
                messages.sort(key=lambda message: message[1])
                yield from messages

    @staticmethod
    def _chunk_records(path: Path, offset: int,
                       content: memoryview) -> Iterator[tuple[int, memoryview]]:
        try:
            _, _, size, crc = _CHUNK_HEAD.unpack_from(content, 0)
            compression, pos = _mcap_string(content, _CHUNK_HEAD.size)
            (stored,) = _U64.unpack_from(content, pos)
        except struct.error as exc:
            raise _Damage(f'{path.name}: malformed chunk at byte {offset}') from exc
        stored_data = bytes(content[pos + 8:pos + 8 + stored])
        try:
            raw = _decompressor(compression)(stored_data)
        except _Damage:
            raise
        except Exception as exc:  # zstd/lz4 raise their own error types
            raise _Damage(f'{path.name}: chunk at byte {offset} does not decompress: '
                          f'{exc}') from exc
        if len(raw) != size or (crc and zlib.crc32(raw) != crc):
            raise _Damage(f'{path.name}: chunk at byte {offset} fails its size or crc check')
        body = memoryview(raw)
        pos = 0
        while pos < len(body):
            if pos + 9 > len(body):
                raise _Damage(f'{path.name}: chunk at byte {offset} ends inside a record')
            opcode, (length,) = body[pos], _U64.unpack_from(body, pos + 1)
            end = pos + 9 + length
            if end > len(body):
                raise _Damage(f'{path.name}: chunk at byte {offset} ends inside a record')
            yield opcode, body[pos + 9:end]
            pos = end


class _Sqlite3Salvage:
    """Read .db3 files row by row in insertion order, stopping at the first malformed page.

    SQLite refuses a file shorter than the page count its header records ("database disk
    image is malformed", even for the schema table), so a cut file is copied to a temporary
    file with whole pages and the header's page count set to what is there (the header format:
    https://www.sqlite.org/fileformat.html, offsets 16 and 28).
    """

    damaged = True

    def __init__(self, files: Sequence[Path]) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix='cityseg_bag_salvage_')
        self._dbs: list[tuple[Path, sqlite3.Connection, dict[int, tuple[str, str]]]] = []
        self._failed: Optional[str] = None
        self._cut: list[str] = []
        types_: dict[str, str] = {}
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
            types_.update(dict(topics.values()))
        self.topics = {t: TopicInfo(m, None) for t, m in sorted(types_.items())}

    def _open(self, path: Path,
              index: int) -> tuple[sqlite3.Connection, dict[int, tuple[str, str]]]:
        try:
            return self._connect(path)
        except sqlite3.DatabaseError as first:
            fixed = self._fix_header(path, Path(self._tmp.name) / f'{index}.db3')
            if fixed is None:
                raise _Damage(f'{path.name} is not a readable sqlite3 bag: {first}') from first
            _LOG.warning('%s is cut short; reading a copy with a repaired header', path)
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
            rows = db.execute('SELECT id, name, type FROM topics').fetchall()
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db, {int(i): (str(name), str(msgtype)) for i, name, msgtype in rows}

    @staticmethod
    def _fix_header(path: Path, copy: Path) -> Optional[Path]:
        with path.open('rb') as handle:
            header = handle.read(100)
        if len(header) < 100 or not header.startswith(b'SQLite format 3\x00'):
            return None
        (page_size,) = struct.unpack_from('>H', header, 16)
        page_size = 65536 if page_size == 1 else page_size
        pages = path.stat().st_size // page_size
        (recorded,) = struct.unpack_from('>I', header, 28)
        if pages == 0 or pages >= recorded:
            return None  # not cut short: the damage is elsewhere
        with path.open('rb') as src, copy.open('wb') as dst:
            remaining = pages * page_size
            while remaining:
                block = src.read(min(remaining, 1 << 24))
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
            query = (f'SELECT topic_id, timestamp, data FROM messages WHERE topic_id IN '
                     f'({",".join("?" * len(ids))}) ORDER BY id')
            try:
                cursor = db.execute(query, ids)
                for topic_id, timestamp, data in cursor:
                    topic, msgtype = names[topic_id]
                    yield topic, msgtype, int(timestamp), bytes(data)
            except sqlite3.DatabaseError as exc:
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


def _storage_files(path: Path) -> tuple[str, list[Path]]:
    """Storage id and files of a bag rosbags could not open; ('', []) when it is none."""
    if path.is_file():
        kind = {'.mcap': 'mcap', '.db3': 'sqlite3'}.get(path.suffix, '')
        return kind, [path] if kind else []
    files: list[Path] = []
    kind = ''
    meta = path / 'metadata.yaml'
    if meta.is_file():
        try:
            info = YAML(typ='safe').load(meta.read_text())['rosbag2_bagfile_information']
            kind = str(info.get('storage_identifier', ''))
            files = [path / Path(f).name for f in info.get('relative_file_paths', [])]
            files = [f for f in files if f.is_file()]
        except Exception:  # noqa: B902 - a bad metadata.yaml: fall back to the files present
            files = []
    if not files:
        for suffix, name in (('.mcap', 'mcap'), ('.db3', 'sqlite3')):
            found = sorted(path.glob(f'*{suffix}'))
            if found:
                kind, files = name, found
                break
    return (kind, files) if kind in STORAGES else ('', [])


# --------------------------------------------------------------------------------------------
# Reader


class BagReader:
    """Read images, frames and camera info from a rosbag2; use it as a context manager.

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
        try:
            self._source = _RosbagsSource(self.path)
            return
        except Exception as exc:  # rosbags raises ReaderError, FileNotFoundError, apsw errors
            reason = f'{type(exc).__name__}: {exc}'
        kind, files = _storage_files(self.path)
        if not files:
            raise BagError(f'{self.path} is not a rosbag2 ({reason}); pass a bag directory with '
                           'metadata.yaml or a .mcap/.db3 file')
        _LOG.warning('bag %s cannot be opened normally (%s); reading what precedes the damage',
                     self.path, reason)
        try:
            self._source = (_McapSalvage if kind == 'mcap' else _Sqlite3Salvage)(files)
        except _Damage as exc:
            raise BagError(f'bag {self.path} is damaged and nothing in it is readable: {exc} '
                           f'(rosbags: {reason})') from exc

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

    def read_images(self, topic: str) -> Iterator[ImageRecord]:
        """Yield every image of ``topic`` in log-time order (e.g. a predictions topic).

        Raises:
            BagError: missing topic or not an Image topic, an undecodable or truncated message,
                or damage in the bag (after yielding the images before it).
        """
        self._check_topics({'image': topic})
        count = 0
        try:
            for name, msgtype, _, raw in self._opened().messages((topic,)):
                msg = self._deserialize(name, msgtype, raw)
                stamp = stamp_to_ns(msg.header.stamp)
                image = self._decode(name, stamp, msg, rgb=False)
                count += 1
                yield ImageRecord(stamp, image, str(msg.header.frame_id))
        except _Damage as exc:
            raise BagError(f'bag {self.path} is damaged: {exc}; {count} images of {topic} '
                           'were read before it') from exc

    def read_camera_info(self, topic: str) -> Iterator[CameraInfoRecord]:
        """Yield every CameraInfo of ``topic`` in log-time order.

        Raises:
            BagError: as :meth:`read_images`.
        """
        self._check_topics({'camera_info': topic}, msgtypes=(CAMERA_INFO_TYPE,))
        try:
            for name, msgtype, _, raw in self._opened().messages((topic,)):
                msg = self._deserialize(name, msgtype, raw)
                yield CameraInfoRecord(stamp_to_ns(msg.header.stamp), str(msg.header.frame_id),
                                       calibration_from_msg(msg))
        except _Damage as exc:
            raise BagError(f'bag {self.path} is damaged: {exc}') from exc

    def read_frames(self, left_topic: str, gt_topic: Optional[str] = None,
                    inst_topic: Optional[str] = None, right_topic: Optional[str] = None,
                    tolerance_ns: int = DEFAULT_TOLERANCE_NS) -> Iterator[Frame]:
        """Yield frames whose parts all exist, matched by header stamp, in log-time order.

        A left image without a partner on every other requested topic is skipped (counted in
        :attr:`pairing_stats`, set when the iteration ends or fails).

        Args:
            left_topic: the camera image (any of :data:`COLOR_ENCODINGS`), converted to RGB.
            gt_topic: mono8 Cityscapes labelIds, or None.
            inst_topic: mono16 (or 32SC1) Cityscapes instanceIds, or None.
            right_topic: the right camera image, or None.
            tolerance_ns: largest header stamp difference between the parts of one frame.

        Raises:
            BagError: a topic is missing or not an Image topic, a message cannot be decoded, is
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

    def _check_topics(self, roles: dict[str, str],
                      msgtypes: Sequence[str] = _IMAGE_TYPES) -> None:
        topics = self._opened().topics
        seen: dict[str, str] = {}
        for role, topic in roles.items():
            if topic in seen:
                raise BagError(f'topic {topic} is given for both {seen[topic]} and {role}')
            seen[topic] = role
            if topic not in topics:
                present = ', '.join(sorted(topics)) or 'none'
                raise BagError(f'bag {self.path} has no topic {topic} (asked for as {role}); '
                               f'topics present: {present}')
            if topics[topic].msgtype not in msgtypes:
                raise BagError(f'topic {topic} of bag {self.path} holds '
                               f'{topics[topic].msgtype}, expected {" or ".join(msgtypes)}')

    def _deserialize(self, topic: str, msgtype: str, raw: bytes) -> Any:
        try:
            return _typestore().deserialize_cdr(raw, msgtype)
        except (SerdeError, KeyError) as exc:
            raise BagError(f'bag {self.path}: a message on {topic} cannot be decoded as '
                           f'{msgtype}: {exc}') from exc

    def _decode(self, topic: str, stamp_ns: int, msg: Any, rgb: bool) -> np.ndarray:
        try:
            return image_to_numpy(msg, rgb=rgb)
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
            if role == 'gt' and msg.encoding not in _LABEL_ENCODINGS:
                raise BagError(f'bag {self.path}: {topic} must hold mono8 labelIds, got '
                               f'{msg.encoding!r}')
            if role == 'inst' and msg.encoding not in _INSTANCE_ENCODINGS:
                raise BagError(f'bag {self.path}: {topic} must hold mono16 instanceIds, got '
                               f'{msg.encoding!r}')
            image = self._decode(topic, stamp_to_ns(msg.header.stamp), msg, rgb=role == 'right')
            parts[role] = image.astype(np.int32) if role == 'inst' else image
        return Frame(stamp_ns=stamp_ns, left=self._decode(left_topic, stamp_ns, left, rgb=True),
                     right=parts['right'], gt_label_ids=parts['gt'],
                     gt_instance_ids=parts['inst'], frame_id=str(left.header.frame_id))
