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

"""``make_bag``: turn a Cityscapes split into a rosbag2 with the stereo topics the node reads.

Layout read (the official one, any subset of it)::

    ROOT/leftImg8bit/SPLIT/CITY/CITY_SEQ_FRAME_leftImg8bit.png     required
    ROOT/rightImg8bit/SPLIT/CITY/CITY_SEQ_FRAME_rightImg8bit.png   -> right image + camera_info
    ROOT/gtFine/SPLIT/CITY/CITY_SEQ_FRAME_gtFine_labelIds.png      -> gt/label_ids (mono8)
    ROOT/gtFine/SPLIT/CITY/CITY_SEQ_FRAME_gtFine_instanceIds.png   -> gt/instance_ids (mono16)
    ROOT/camera/SPLIT/CITY/CITY_SEQ_FRAME_camera.json              -> camera_info (else default)

Topics written are DESIGN.md's bag contract (``cityseg_ros.bags.TOPIC_*``). Every topic of a
frame carries the same header stamp: frame i (frames sorted by name) is stamped
``start_time + i / rate_hz``, the 17 Hz at which Cityscapes was recorded.

``--image-format jpeg|png`` writes the photos as sensor_msgs/CompressedImage on
``<topic>/compressed`` (``/stereo/left/image_rect_color/compressed``), ``format`` as
image_transport's compressed publisher writes it (``rgb8; jpeg compressed bgr8``), JPEG quality
95 by default as image_transport's; ground truth stays raw.

Input files are checked before they are decoded: every image's header must say at most
:data:`MAX_FRAME_PIXELS` pixels (what one bag message may hold).
"""

import argparse
from dataclasses import dataclass
import json
import logging
import math
from pathlib import Path
import re
import shutil
import time
from typing import Optional, Sequence

from cityseg_ros.bags import (BagWriter, CameraCalibration, JPEG_QUALITY, MAX_MESSAGE_BYTES,
                              STORAGES, TOPIC_GT_INSTANCE_IDS, TOPIC_GT_LABEL_IDS,
                              TOPIC_LEFT_IMAGE, TOPIC_LEFT_INFO, TOPIC_RIGHT_IMAGE,
                              TOPIC_RIGHT_INFO)
from cityseg_ros.errors import BagError, ConfigError, ImageError
from cityseg_ros.imageio import decode_image, probe_file
from cityseg_ros.tools.common import EXIT_OK, run_cli
import cv2
import numpy as np
from tqdm import tqdm

__all__ = ['CityscapesFrame', 'StereoCalibration', 'DEFAULT_CALIBRATION', 'IMAGE_FORMATS',
           'MAX_FRAME_PIXELS', 'find_frames', 'load_calibration', 'write_bag', 'build_parser',
           'run', 'main']

_LOG = logging.getLogger(__name__)

#: Default start time: a fixed, non-zero stamp (2020-09-13T12:26:40Z) so bags are reproducible
#: and no consumer mistakes stamp 0 for "latest" (tf2 does).
DEFAULT_START_TIME_S = 1_600_000_000.0
#: Cityscapes' recording rate (Cordts et al. 2016, section 2: "17 Hz").
DEFAULT_RATE_HZ = 17.0
#: How the photos are written: raw sensor_msgs/Image, or CompressedImage on <topic>/compressed.
IMAGE_FORMATS = ('raw', 'jpeg', 'png')
#: Largest image written, pixels: 4 bytes a pixel still fit one bag message
#: (:data:`~cityseg_ros.bags.MAX_MESSAGE_BYTES`); Cityscapes' are 2 Mpixel.
MAX_FRAME_PIXELS = MAX_MESSAGE_BYTES // 4
# builtin_interfaces/Time.sec is int32: the last stamp must lie before 2038-01-19.
_MAX_STAMP_S = 2**31 - 1
# camera.json files are a few hundred bytes.
_MAX_CAMERA_FILE_BYTES = 64 * 1024
_NAME = re.compile(r'[A-Za-z0-9_][A-Za-z0-9_.-]*')


@dataclass(frozen=True)
class StereoCalibration:
    """Rectified stereo intrinsics as Cityscapes' ``*_camera.json`` gives them.

    Attributes:
        fx: focal length x, pixels.
        fy: focal length y, pixels.
        cx: principal point x (Cityscapes ``u0``), pixels.
        cy: principal point y (Cityscapes ``v0``), pixels.
        baseline: distance between the cameras, metres.
        width: image width the values hold for, pixels.
        height: image height the values hold for, pixels.
    """

    fx: float
    fy: float
    cx: float
    cy: float
    baseline: float
    width: int = 2048
    height: int = 1024

    def scaled(self, width: int, height: int) -> 'StereoCalibration':
        """Return the same cameras for images resized to ``width`` x ``height``."""
        if (width, height) == (self.width, self.height):
            return self
        sx, sy = width / self.width, height / self.height
        return StereoCalibration(self.fx * sx, self.fy * sy, self.cx * sx, self.cy * sy,
                                 self.baseline, width, height)

    def left(self) -> CameraCalibration:
        """Left camera: P = [K | 0]."""
        return CameraCalibration.pinhole(self.width, self.height, self.fx, self.fy, self.cx,
                                         self.cy)

    def right(self) -> CameraCalibration:
        """Right camera: P = [K | (-fx * baseline, 0, 0)], as ROS stereo expects."""
        return CameraCalibration.pinhole(self.width, self.height, self.fx, self.fy, self.cx,
                                         self.cy, tx=-self.fx * self.baseline)


#: Used when a frame has no ``camera.json``: values typical of Cityscapes' ``camera/*.json``
#: files (rounded to 0.01 px) for its 2048x1024 rectified images; scaled for resized images.
DEFAULT_CALIBRATION = StereoCalibration(fx=2262.52, fy=2265.30, cx=1096.98, cy=513.14,
                                        baseline=0.209313)


@dataclass(frozen=True)
class CityscapesFrame:
    """The files of one Cityscapes frame; optional parts are None when absent."""

    name: str
    city: str
    left: Path
    right: Optional[Path] = None
    label_ids: Optional[Path] = None
    instance_ids: Optional[Path] = None
    camera: Optional[Path] = None


def find_frames(root: Path, split: str, cities: Sequence[str] = (),
                limit: Optional[int] = None) -> list[CityscapesFrame]:
    """List the frames of a split, sorted by name, with whatever parts exist for each.

    Args:
        root: the Cityscapes root (holds ``leftImg8bit``).
        split: 'train', 'val', 'test', ... (a folder under ``leftImg8bit``).
        cities: only these cities (folder names); all when empty.
        limit: keep the first ``limit`` frames.

    Raises:
        ImageError: root or split missing, an unknown city, or no left images.
    """
    root = Path(root)
    if not _NAME.fullmatch(split):
        raise ImageError(f'--split {split!r} is not a split name (letters, digits, _ . -), e.g. '
                         'val')
    if not root.is_dir():
        raise ImageError(f'--cityscapes-root {root} is not a directory; pass the folder that '
                         'holds leftImg8bit/ (and gtFine/)')
    split_dir = root / 'leftImg8bit' / split
    if not split_dir.is_dir():
        present = sorted(p.name for p in (root / 'leftImg8bit').glob('*') if p.is_dir())
        raise ImageError(f'{split_dir} does not exist; splits present under '
                         f'{root / "leftImg8bit"}: {", ".join(present) or "none"}')
    available = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    if cities:
        unknown = [c for c in cities if c not in available]
        if unknown:
            raise ImageError(f'no city {", ".join(unknown)} in split {split}; cities present: '
                             f'{", ".join(available) or "none"}')
        available = [c for c in available if c in set(cities)]
    lefts = sorted((p for city in available for p in (split_dir / city).glob('*_leftImg8bit.png')),
                   key=lambda p: p.name)
    if not lefts:
        raise ImageError(f'no *_leftImg8bit.png under {split_dir}'
                         + (f' for {", ".join(cities)}' if cities else '')
                         + '; is this the Cityscapes root?')
    if limit is not None:
        lefts = lefts[:limit]

    def part(folder: str, city: str, name: str, suffix: str) -> Optional[Path]:
        path = root / folder / split / city / f'{name}_{suffix}'
        if path.is_file():
            return path
        if path.exists() or path.is_symlink():  # not silently "absent": a pipe would block
            raise ImageError(f'{path} is not a regular file (a directory, pipe, device, loop '
                             'of links or dangling link); replace or remove it')
        return None

    frames = []
    for left in lefts:
        city = left.parent.name
        name = left.name[:-len('_leftImg8bit.png')]
        frames.append(CityscapesFrame(
            name=name, city=city, left=left,
            right=part('rightImg8bit', city, name, 'rightImg8bit.png'),
            label_ids=part('gtFine', city, name, 'gtFine_labelIds.png'),
            instance_ids=part('gtFine', city, name, 'gtFine_instanceIds.png'),
            camera=part('camera', city, name, 'camera.json')))
    return frames


def load_calibration(path: Path) -> StereoCalibration:
    """Read a Cityscapes ``*_camera.json`` (intrinsic fx, fy, u0, v0; extrinsic baseline).

    Raises:
        ImageError: unreadable JSON or missing keys.
    """
    try:
        if Path(path).stat().st_size > _MAX_CAMERA_FILE_BYTES:
            raise ValueError(f'more than {_MAX_CAMERA_FILE_BYTES} bytes')
        data = json.loads(Path(path).read_bytes())
        intrinsic, extrinsic = data['intrinsic'], data['extrinsic']
        values = {name: float(intrinsic[key]) for name, key in
                  (('fx', 'fx'), ('fy', 'fy'), ('cx', 'u0'), ('cy', 'v0'))}
        values['baseline'] = float(extrinsic['baseline'])
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as exc:
        raise ImageError(f'{path} is not a Cityscapes camera file (needs intrinsic fx, fy, u0, '
                         f'v0 and extrinsic baseline): {exc!r}') from exc
    bad = [f'{k} {v}' for k, v in values.items() if not math.isfinite(v)
           or (v <= 0 if k in ('fx', 'fy') else v < 0)]
    if bad:
        raise ImageError(f'{path}: {", ".join(bad)}; focal lengths must be finite and > 0, the '
                         'principal point and baseline finite and >= 0')
    return StereoCalibration(**values)


def _read(path: Path, what: str, dtype: type, channels: Sequence[int]) -> np.ndarray:
    """Decode an image file after checking its header (size, pixel count), as stored."""
    probe_file(path, MAX_FRAME_PIXELS)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageError(f'{path} cannot be read: {exc.strerror or exc}') from None
    image, _ = decode_image(data, MAX_FRAME_PIXELS, str(path))
    got = 1 if image.ndim == 2 else image.shape[2]
    if image.dtype != dtype or got not in channels:
        raise ImageError(f'{path} should be a {what} ({np.dtype(dtype)}, '
                         f'{" or ".join(map(str, channels))} channel(s)), got {image.dtype} of '
                         f'shape {image.shape}')
    return image


def _read_rgb(path: Path) -> np.ndarray:
    """Read an 8-bit photo as RGB: grey expanded, alpha dropped (as IMREAD_COLOR did)."""
    image = _read(path, '8-bit colour PNG', np.uint8, (3, 1, 4))
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB if image.shape[2] == 4 else cv2.COLOR_BGR2RGB)


def _check_size(path: Path, image: np.ndarray, shape: tuple[int, ...]) -> None:
    if image.shape[:2] != shape:
        raise ImageError(f'{path} is {image.shape[1]}x{image.shape[0]} but its left image is '
                         f'{shape[1]}x{shape[0]}')


def stamps_ns(count: int, start_time_ns: int, rate_hz: float) -> list[int]:
    """Header stamps of ``count`` frames: ``start_time_ns + i / rate_hz`` seconds, in ns.

    Raises:
        ConfigError: a start before 0, a rate outside (0, 1e9] Hz (stamps must differ), or a
            last stamp past what a ROS Time holds (int32 seconds: 2038-01-19).
    """
    if start_time_ns < 0:
        raise ConfigError(f'--start-time must be >= 0 seconds, got {start_time_ns / 1e9:g}')
    if not (math.isfinite(rate_hz) and 0 < rate_hz <= 1e9):
        raise ConfigError(f'--rate-hz must be in (0, 1e9] (frames 1 ns apart at most), got '
                          f'{rate_hz}')
    last = start_time_ns / 1e9 + max(count - 1, 0) / rate_hz
    if not last < _MAX_STAMP_S + 1:
        raise ConfigError(f'--start-time {start_time_ns / 1e9:g} s with --rate-hz {rate_hz:g} '
                          f'puts frame {count - 1} at {last:g} s, past {_MAX_STAMP_S} s, the '
                          'last second a ROS stamp holds (int32); choose an earlier start or a '
                          'higher rate')
    return [start_time_ns + round(index * 1e9 / rate_hz) for index in range(count)]


def write_bag(frames: Sequence[CityscapesFrame], out: Path, storage: str = 'mcap',
              start_time_ns: int = int(DEFAULT_START_TIME_S * 1e9),
              rate_hz: float = DEFAULT_RATE_HZ, frame_id_prefix: str = 'stereo',
              progress: bool = True, image_format: str = 'raw',
              jpeg_quality: int = JPEG_QUALITY) -> dict[str, int]:
    """Write ``frames`` to a new bag at ``out``; on failure no partial bag is left behind.

    Args:
        frames: from :func:`find_frames`.
        out: the bag directory to create.
        storage: 'mcap' or 'sqlite3'.
        start_time_ns: stamp of the first frame.
        rate_hz: frame rate of the stamps.
        frame_id_prefix: frame_ids are ``PREFIX_left_optical_frame`` and ``..._right_...``.
        progress: show a progress bar (on a terminal).
        image_format: one of :data:`IMAGE_FORMATS`; jpeg/png write the photos as
            CompressedImage on ``<topic>/compressed``.
        jpeg_quality: JPEG quality 1..100.

    Returns:
        Messages written per topic.

    Raises:
        BagError: ``out`` exists or cannot be created or written.
        ImageError: an input file is unreadable or of the wrong kind or size.
        ConfigError: an unknown image format or a quality outside 1..100.
    """
    if image_format not in IMAGE_FORMATS:
        raise ConfigError(f'--image-format {image_format!r}: use one of '
                          f'{", ".join(IMAGE_FORMATS)}')
    if not 1 <= jpeg_quality <= 100:
        raise ConfigError(f'--jpeg-quality must be 1..100, got {jpeg_quality}')
    left_frame = f'{frame_id_prefix}_left_optical_frame'
    right_frame = f'{frame_id_prefix}_right_optical_frame'
    stamps = stamps_ns(len(frames), start_time_ns, rate_hz)
    defaulted: list[CityscapesFrame] = []

    def write_photo(topic: str, rgb: np.ndarray, stamp: int, frame_id: str) -> None:
        if image_format == 'raw':
            writer.write_image(topic, rgb, 'rgb8', stamp, frame_id)
        else:
            writer.write_compressed_image(f'{topic}/compressed', rgb, image_format, 'rgb8',
                                          stamp, frame_id, quality=jpeg_quality)

    writer = BagWriter(out, storage=storage)
    try:
        with writer:
            # disable=None: no bar when stderr is not a terminal (logs, pipes, CI).
            for frame, stamp in zip(tqdm(frames, desc='make_bag', unit='frame',
                                         disable=None if progress else True), stamps):
                left = _read_rgb(frame.left)
                shape = left.shape[:2]
                if frame.camera is not None:
                    calibration = load_calibration(frame.camera)
                else:
                    calibration = DEFAULT_CALIBRATION
                    defaulted.append(frame)
                calibration = calibration.scaled(shape[1], shape[0])
                write_photo(TOPIC_LEFT_IMAGE, left, stamp, left_frame)
                writer.write_camera_info(TOPIC_LEFT_INFO, calibration.left(), stamp, left_frame)
                if frame.right is not None:
                    right = _read_rgb(frame.right)
                    _check_size(frame.right, right, shape)
                    write_photo(TOPIC_RIGHT_IMAGE, right, stamp, right_frame)
                    writer.write_camera_info(TOPIC_RIGHT_INFO, calibration.right(), stamp,
                                             right_frame)
                if frame.label_ids is not None:
                    labels = _read(frame.label_ids, '8-bit labelIds PNG', np.uint8, (1,))
                    _check_size(frame.label_ids, labels, shape)
                    writer.write_image(TOPIC_GT_LABEL_IDS, labels, 'mono8', stamp, left_frame)
                if frame.instance_ids is not None:
                    instances = _read(frame.instance_ids, '16-bit instanceIds PNG', np.uint16,
                                      (1,))
                    _check_size(frame.instance_ids, instances, shape)
                    writer.write_image(TOPIC_GT_INSTANCE_IDS, instances, 'mono16', stamp,
                                       left_frame)
    except BaseException as exc:
        if writer.path.exists():
            _LOG.info('removing the partial bag %s', writer.path)
            shutil.rmtree(writer.path, ignore_errors=True)
        if isinstance(exc, OSError):  # a full disk, a vanished folder: one line, exit 2
            raise BagError(f'cannot write bag {out}: {exc.strerror or exc}') from exc
        raise
    if defaulted:  # said after the bag is written, so a failure stays one line
        first = defaulted[0]
        _LOG.warning('%d frame(s) have no camera/<split>/<city>/<name>_camera.json (the first: '
                     '%s/%s): their camera_info uses the default Cityscapes calibration (fx '
                     '%.2f, fy %.2f, cx %.2f, cy %.2f, baseline %.6f m at 2048x1024)',
                     len(defaulted), first.city, first.name, DEFAULT_CALIBRATION.fx,
                     DEFAULT_CALIBRATION.fy, DEFAULT_CALIBRATION.cx, DEFAULT_CALIBRATION.cy,
                     DEFAULT_CALIBRATION.baseline)
    return writer.counts


def build_parser() -> argparse.ArgumentParser:
    """Build the command line of ``make_bag``."""
    parser = argparse.ArgumentParser(
        prog='make_bag',
        description='Write a Cityscapes split as a rosbag2 with stereo images, camera info and '
                    'fine ground truth, one stamp per frame.')
    parser.add_argument('--cityscapes-root', required=True, type=Path, metavar='DIR',
                        help='folder holding leftImg8bit/ (and rightImg8bit/, gtFine/, camera/)')
    parser.add_argument('--split', required=True, help='train, val, test, ...')
    parser.add_argument('--out', required=True, type=Path, metavar='BAG',
                        help='bag directory to create (must not exist)')
    parser.add_argument('--storage', choices=STORAGES, default='mcap',
                        help='rosbag2 storage plugin (default: %(default)s)')
    parser.add_argument('--image-format', choices=IMAGE_FORMATS, default='raw',
                        help='photos as sensor_msgs/Image (raw) or as CompressedImage on '
                             '<topic>/compressed (jpeg, png), as image_transport writes them; '
                             'ground truth stays raw (default: %(default)s)')
    parser.add_argument('--jpeg-quality', type=int, default=JPEG_QUALITY, metavar='Q',
                        help='JPEG quality 1..100 (default: %(default)s, as image_transport)')
    parser.add_argument('--city', action='append', default=[], metavar='NAME',
                        help='only this city; repeat for more (default: all)')
    parser.add_argument('--limit', type=int, metavar='N', help='first N frames only')
    parser.add_argument('--start-time', type=float, default=DEFAULT_START_TIME_S, metavar='SEC',
                        help='stamp of the first frame, seconds (default: %(default).0f)')
    parser.add_argument('--rate-hz', type=float, default=DEFAULT_RATE_HZ,
                        help='frame rate of the stamps (default: %(default)g, as recorded)')
    parser.add_argument('--frame-id-prefix', default='stereo',
                        help='frame_ids are PREFIX_left_optical_frame and '
                             'PREFIX_right_optical_frame (default: %(default)s)')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    parser.add_argument('-v', '--verbose', action='store_true', help='debug logging')
    return parser


def run(args: argparse.Namespace) -> int:
    """Validate every input, then write the bag."""
    if not args.verbose:  # on stderr only warnings, so a failure is one line
        logging.getLogger().setLevel(logging.WARNING)
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    if args.limit is not None and args.limit < 1:
        raise ImageError(f'--limit must be at least 1, got {args.limit}')
    if not (math.isfinite(args.rate_hz) and args.rate_hz > 0):
        raise ConfigError(f'--rate-hz must be positive, got {args.rate_hz}')
    if not (math.isfinite(args.start_time) and 0 <= args.start_time <= _MAX_STAMP_S):
        raise ConfigError(f'--start-time must be 0..{_MAX_STAMP_S} seconds (a ROS stamp holds '
                          f'int32 seconds), got {args.start_time}')
    start_ns = round(args.start_time * 1e9)
    stamps_ns(1, start_ns, args.rate_hz)
    if not 1 <= args.jpeg_quality <= 100:
        raise ConfigError(f'--jpeg-quality must be 1..100, got {args.jpeg_quality}')
    if not _NAME.fullmatch(args.frame_id_prefix):
        raise ConfigError(f'--frame-id-prefix {args.frame_id_prefix!r} must be a name of '
                          'letters, digits, _ . - (e.g. stereo)')
    if args.out.exists() or args.out.is_symlink():
        raise BagError(f'--out {args.out} exists already; remove it or choose another path')
    for parent in args.out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise BagError(f'--out {args.out}: {parent} is a file, not a folder')
            break
    frames = find_frames(args.cityscapes_root, args.split, args.city, args.limit)
    stamps_ns(len(frames), start_ns, args.rate_hz)  # the last stamp, before any writing
    started = time.monotonic()
    counts = write_bag(frames, args.out, storage=args.storage, start_time_ns=start_ns,
                       rate_hz=args.rate_hz, frame_id_prefix=args.frame_id_prefix,
                       progress=not args.no_progress, image_format=args.image_format,
                       jpeg_quality=args.jpeg_quality)
    right = f'{TOPIC_RIGHT_IMAGE}/compressed' if args.image_format != 'raw' else \
        TOPIC_RIGHT_IMAGE
    print(f'wrote {len(frames)} frames ({counts.get(right, 0)} with right image, '
          f'{counts.get(TOPIC_GT_LABEL_IDS, 0)} with fine GT) to {args.out} ({args.storage}, '
          f'{args.image_format} images) in {time.monotonic() - started:.1f} s')
    missing_gt = len(frames) - counts.get(TOPIC_GT_LABEL_IDS, 0)
    if missing_gt:
        _LOG.warning('%d of %d frames have no gtFine labelIds: the evaluator skips them',
                     missing_gt, len(frames))
    return EXIT_OK


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point."""
    return run_cli(build_parser, run, argv)


if __name__ == '__main__':
    raise SystemExit(main())
