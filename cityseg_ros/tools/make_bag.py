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
"""

import argparse
from dataclasses import dataclass
import json
import logging
from pathlib import Path
import shutil
import time
from typing import Optional, Sequence

from cityseg_ros.bags import (BagWriter, CameraCalibration, STORAGES, TOPIC_GT_INSTANCE_IDS,
                              TOPIC_GT_LABEL_IDS, TOPIC_LEFT_IMAGE, TOPIC_LEFT_INFO,
                              TOPIC_RIGHT_IMAGE, TOPIC_RIGHT_INFO)
from cityseg_ros.errors import BagError, ImageError
from cityseg_ros.tools.common import EXIT_OK, run_cli
import cv2
import numpy as np
from tqdm import tqdm

__all__ = ['CityscapesFrame', 'StereoCalibration', 'DEFAULT_CALIBRATION', 'find_frames',
           'load_calibration', 'write_bag', 'build_parser', 'run', 'main']

_LOG = logging.getLogger(__name__)

#: Default start time: a fixed, non-zero stamp (2020-09-13T12:26:40Z) so bags are reproducible
#: and no consumer mistakes stamp 0 for "latest" (tf2 does).
DEFAULT_START_TIME_S = 1_600_000_000.0
#: Cityscapes' recording rate (Cordts et al. 2016, section 2: "17 Hz").
DEFAULT_RATE_HZ = 17.0


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
        return path if path.is_file() else None

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
        data = json.loads(Path(path).read_text())
        intrinsic, extrinsic = data['intrinsic'], data['extrinsic']
        return StereoCalibration(fx=float(intrinsic['fx']), fy=float(intrinsic['fy']),
                                 cx=float(intrinsic['u0']), cy=float(intrinsic['v0']),
                                 baseline=float(extrinsic['baseline']))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ImageError(f'{path} is not a Cityscapes camera file (needs intrinsic fx, fy, u0, '
                         f'v0 and extrinsic baseline): {exc!r}') from exc


def _read(path: Path, flags: int, what: str, dtype: type, channels: int) -> np.ndarray:
    image = cv2.imread(str(path), flags)
    if image is None:
        raise ImageError(f'{path} cannot be read as an image; is the file complete?')
    ndim = 2 if channels == 1 else 3
    if image.dtype != dtype or image.ndim != ndim:
        raise ImageError(f'{path} should be a {what} ({np.dtype(dtype)}, '
                         f'{channels} channel(s)), got {image.dtype} of shape {image.shape}')
    return image


def _read_rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(_read(path, cv2.IMREAD_COLOR, '8-bit colour PNG', np.uint8, 3),
                        cv2.COLOR_BGR2RGB)


def _check_size(path: Path, image: np.ndarray, shape: tuple[int, ...]) -> None:
    if image.shape[:2] != shape:
        raise ImageError(f'{path} is {image.shape[1]}x{image.shape[0]} but its left image is '
                         f'{shape[1]}x{shape[0]}')


def write_bag(frames: Sequence[CityscapesFrame], out: Path, storage: str = 'mcap',
              start_time_ns: int = int(DEFAULT_START_TIME_S * 1e9),
              rate_hz: float = DEFAULT_RATE_HZ, frame_id_prefix: str = 'stereo',
              progress: bool = True) -> dict[str, int]:
    """Write ``frames`` to a new bag at ``out``; on failure no partial bag is left behind.

    Returns:
        Messages written per topic.

    Raises:
        BagError: ``out`` exists or cannot be created.
        ImageError: an input file is unreadable or of the wrong kind or size.
    """
    left_frame = f'{frame_id_prefix}_left_optical_frame'
    right_frame = f'{frame_id_prefix}_right_optical_frame'
    warned_default = False
    writer = BagWriter(out, storage=storage)
    try:
        with writer:
            for index, frame in enumerate(tqdm(frames, desc='make_bag', unit='frame',
                                               disable=not progress)):
                stamp = start_time_ns + round(index * 1e9 / rate_hz)
                left = _read_rgb(frame.left)
                shape = left.shape[:2]
                if frame.camera is not None:
                    calibration = load_calibration(frame.camera)
                else:
                    calibration = DEFAULT_CALIBRATION
                    if not warned_default:
                        _LOG.warning('no camera/<split>/%s/%s_camera.json (nor for later '
                                     'frames without one): camera_info uses the default '
                                     'Cityscapes calibration (fx %.2f, fy %.2f, cx %.2f, '
                                     'cy %.2f, baseline %.6f m at 2048x1024)', frame.city,
                                     frame.name, calibration.fx, calibration.fy,
                                     calibration.cx, calibration.cy, calibration.baseline)
                        warned_default = True
                calibration = calibration.scaled(shape[1], shape[0])
                writer.write_image(TOPIC_LEFT_IMAGE, left, 'rgb8', stamp, left_frame)
                writer.write_camera_info(TOPIC_LEFT_INFO, calibration.left(), stamp, left_frame)
                if frame.right is not None:
                    right = _read_rgb(frame.right)
                    _check_size(frame.right, right, shape)
                    writer.write_image(TOPIC_RIGHT_IMAGE, right, 'rgb8', stamp, right_frame)
                    writer.write_camera_info(TOPIC_RIGHT_INFO, calibration.right(), stamp,
                                             right_frame)
                if frame.label_ids is not None:
                    labels = _read(frame.label_ids, cv2.IMREAD_UNCHANGED, '8-bit labelIds PNG',
                                   np.uint8, 1)
                    _check_size(frame.label_ids, labels, shape)
                    writer.write_image(TOPIC_GT_LABEL_IDS, labels, 'mono8', stamp, left_frame)
                if frame.instance_ids is not None:
                    instances = _read(frame.instance_ids, cv2.IMREAD_UNCHANGED,
                                      '16-bit instanceIds PNG', np.uint16, 1)
                    _check_size(frame.instance_ids, instances, shape)
                    writer.write_image(TOPIC_GT_INSTANCE_IDS, instances, 'mono16', stamp,
                                       left_frame)
    except BaseException:
        if writer.path.exists():
            _LOG.info('removing the partial bag %s', writer.path)
            shutil.rmtree(writer.path, ignore_errors=True)
        raise
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
    if args.limit is not None and args.limit < 1:
        raise ImageError(f'--limit must be at least 1, got {args.limit}')
    if not args.rate_hz > 0:
        raise ImageError(f'--rate-hz must be positive, got {args.rate_hz}')
    if not args.start_time >= 0:
        raise ImageError(f'--start-time must be >= 0 seconds, got {args.start_time}')
    if not args.frame_id_prefix or '/' in args.frame_id_prefix:
        raise ImageError(f'--frame-id-prefix {args.frame_id_prefix!r} must be a non-empty name '
                         'without "/"')
    if args.out.exists():
        raise BagError(f'--out {args.out} exists already; remove it or choose another path')
    frames = find_frames(args.cityscapes_root, args.split, args.city, args.limit)
    started = time.monotonic()
    counts = write_bag(frames, args.out, storage=args.storage,
                       start_time_ns=round(args.start_time * 1e9), rate_hz=args.rate_hz,
                       frame_id_prefix=args.frame_id_prefix, progress=not args.no_progress)
    _LOG.info('wrote %d frames (%d with right image, %d with fine GT) to %s (%s) in %.1f s',
              len(frames), counts.get(TOPIC_RIGHT_IMAGE, 0), counts.get(TOPIC_GT_LABEL_IDS, 0),
              args.out, args.storage, time.monotonic() - started)
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
