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

"""semantic/points for the node: camera infos, matcher settings, and failures kept to itself.

The cloud exists when both ``stereo_cameras`` are segmented cameras and is built only while
somebody subscribes. Point labels and ``label`` colours follow the node's label space (the
class filter ``points_drop_classes`` stays in trainIds).

A point-cloud problem (no or bad calibration, an OpenCV error from the matcher on small images)
is counted as ``points_skipped`` / ``points_failed`` and logged (throttled); it never fails the
pair, whose labels are already out. The matcher settings are built by the parameter thread and
handed over as one immutable :class:`~cityseg_ros.stereo.StereoParams` under a lock, so the
worker never sees a half-applied change nor keeps a stale one.
"""

import dataclasses
import math
import threading
import time
import traceback
from typing import Any, Callable, Dict, Mapping, Optional, Sequence

from cityseg_ros.errors import CitysegError
from cityseg_ros.label_spaces import LabelSpace
from cityseg_ros.ros.params import stereo_params
from cityseg_ros.ros.pointcloud import cloud_msg
from cityseg_ros.stereo import semantic_cloud, SemanticCloud, StereoModel, StereoParams
from cityseg_ros.worker import LatencyWindow
import numpy as np
from sensor_msgs.msg import CameraInfo

__all__ = ['PointsOutput', 'camera_info_problem', 'MAX_CAMERA_INFO_SIDE', 'MAX_DISTORTION',
           'MAX_DISTORTION_MODEL']

#: Largest width or height a CameraInfo may claim (the node's network input cap is 8192).
MAX_CAMERA_INFO_SIDE = 65536
#: Most distortion coefficients kept (OpenCV's richest model has 14, ROS's plumb_bob 5). The
#: kept CameraInfo is copied into every C/semantic/camera_info: one with a 16 MB ``d`` added
#: ~75 ms to every later frame.
MAX_DISTORTION = 64
#: Longest ``distortion_model`` name kept (ROS's are 'plumb_bob', 'rational_polynomial' ...).
MAX_DISTORTION_MODEL = 256
THROTTLE_S = 5.0

Count = Callable[[str], None]


def camera_info_problem(msg: CameraInfo) -> Optional[str]:
    """Say why a CameraInfo cannot describe a camera, or None when it can be kept.

    Only what no calibration can have: non-finite numbers in K or P, an image size of zero or
    beyond :data:`MAX_CAMERA_INFO_SIDE`, and a ``d`` or ``distortion_model`` longer than any
    model's (:data:`MAX_DISTORTION`, :data:`MAX_DISTORTION_MODEL`). Whether the pair can make
    a cloud is :meth:`StereoModel.check`'s question, asked per pair.
    """
    width, height = int(msg.width), int(msg.height)
    if not (0 < width <= MAX_CAMERA_INFO_SIDE and 0 < height <= MAX_CAMERA_INFO_SIDE):
        return (f'size {width}x{height} is outside 1..{MAX_CAMERA_INFO_SIDE} px per side')
    if len(msg.d) > MAX_DISTORTION:
        return f'D has {len(msg.d)} coefficients, more than the {MAX_DISTORTION} any model uses'
    if len(msg.distortion_model) > MAX_DISTORTION_MODEL:
        return (f'distortion_model is {len(msg.distortion_model)} characters long (at most '
                f'{MAX_DISTORTION_MODEL})')
    for name in ('k', 'p'):
        values = np.asarray(getattr(msg, name), dtype=np.float64)
        if not np.isfinite(values).all():
            return f'{name.upper()} has non-finite values {values.tolist()}'
        if np.abs(values).max(initial=0.0) > 1e12:
            return f'{name.upper()} has absurd values {values.tolist()}'
    return None


class PointsOutput:
    """Builds and publishes ``semantic/points`` on the worker thread, failing only itself.

    Args:
        publisher: the lifecycle publisher of ``semantic/points``.
        cameras: (left, right) camera names of the stereo pair.
        values: the node's parameter values (name -> value) at configure.
        logger: the node's logger.
        count: ``count(key)`` adds one to a diagnostics counter.
        space: the node's label space; None keeps trainIds.
    """

    def __init__(self, publisher: Any, cameras: Sequence[str], values: Mapping[str, Any],
                 logger: Any, count: Count, space: Optional[LabelSpace] = None) -> None:
        self.publisher = publisher
        self._left, self._right = cameras
        self._space = None if space is None or space.is_identity else space
        self._log = logger
        self._count = count
        self._lock = threading.Lock()
        self._settings: StereoParams = stereo_params(values)
        self._info: Dict[str, CameraInfo] = {}  # one per camera of the pair: bounded
        self.ms = LatencyWindow()  # disparity + cloud + message, ms
        self.published = 0

    # -- settings (parameter thread) ------------------------------------------------------------

    def update_settings(self, read_values: Callable[[], Mapping[str, Any]]) -> None:
        """Rebuild the matcher settings from the current parameter values, atomically.

        ``read_values`` is called under the lock, so of two concurrent updates the one that
        runs last reads the newest values and its result stays.
        """
        with self._lock:
            self._settings = stereo_params(read_values())

    @property
    def settings(self) -> StereoParams:
        """The settings the next cloud is built with."""
        return self._settings

    # -- camera infos (executor threads) ------------------------------------------------------

    def on_camera_info(self, camera: str, msg: CameraInfo) -> Optional[str]:
        """Keep ``msg`` as ``camera``'s calibration; return why it was refused, if it was."""
        problem = camera_info_problem(msg)
        if problem is None and camera in (self._left, self._right):
            self._info[camera] = msg
        return problem

    def has_camera_info(self, camera: str) -> bool:
        """Whether a usable CameraInfo of ``camera`` has arrived."""
        return camera in self._info

    # -- the worker thread --------------------------------------------------------------------

    def wanted(self) -> bool:
        """Whether anybody subscribes to the cloud."""
        return self.publisher.get_subscription_count() > 0

    @property
    def cameras(self) -> tuple:
        """(left, right) camera names."""
        return (self._left, self._right)

    def skip(self, reason: str) -> None:
        """Count and log (throttled) a cloud that cannot be built for this batch."""
        self._count('points_skipped')
        self._log.warning(f'semantic/points not published: {reason}',
                          throttle_duration_sec=THROTTLE_S)

    def publish(self, frames: Mapping[str, Any], left_labels: np.ndarray) -> bool:
        """Publish the cloud of one pair; on any problem count it, log it, return False.

        Args:
            frames: camera -> frame with ``rgb`` (HxWx3 uint8) and ``header``.
            left_labels: HxW uint8 trainIds of the left image (mapped to the label space
                after the class filter).
        """
        left, right = frames[self._left], frames[self._right]
        shape = left.rgb.shape[:2]
        info_l, info_r = self._info.get(self._left), self._info.get(self._right)
        reason = StereoModel.check(info_l, info_r, shape)
        if reason is None and right.rgb.shape != left.rgb.shape:
            reason = (f'{self._left} is {left.rgb.shape[1]}x{left.rgb.shape[0]} but '
                      f'{self._right} {right.rgb.shape[1]}x{right.rgb.shape[0]}: the stereo '
                      'pair must be rectified to one size')
        if reason is not None:
            self.skip(reason)
            return False
        settings = self._settings  # one read: the worker uses one consistent snapshot
        start = time.perf_counter()
        try:
            model = StereoModel.from_camera_info(info_l, info_r, shape)
            cloud = self._in_space(semantic_cloud(left.rgb, right.rgb, left_labels, model,
                                                  settings), settings)
            msg = cloud_msg(cloud, left.header)
        except Exception as exc:  # noqa: B902 -- cv2.error too: the cloud's problem only
            self._count('points_failed')
            if not isinstance(exc, CitysegError):
                self._log.debug(traceback.format_exc())
            self._log.error(
                f'semantic/points failed for a {shape[1]}x{shape[0]} pair '
                f'({type(exc).__name__}: {_one_line(exc)}); the labels were published. '
                f'{_hint(settings, shape)}', throttle_duration_sec=THROTTLE_S)
            return False
        self.publisher.publish(msg)
        self.ms.add((time.perf_counter() - start) * 1e3)
        self.published += 1
        return True

    def _in_space(self, cloud: SemanticCloud, settings: StereoParams) -> SemanticCloud:
        """Give the points the label space's ids (and colours, unless they are the photo's)."""
        space = self._space
        if space is None:
            return cloud
        rgb = cloud.rgb if settings.color == 'photo' else space.train_palette[cloud.labels]
        return dataclasses.replace(cloud, labels=space.lut[cloud.labels], rgb=rgb)


def _one_line(exc: BaseException) -> str:
    text = ' '.join(str(exc).split())
    return text[:300]


def _hint(settings: StereoParams, shape: Sequence[int]) -> str:
    """Suggest a fix when the images are small for the matcher's window and range."""
    height, width = int(shape[0]), int(shape[1])
    matched_w = math.ceil(width / settings.downscale)
    matched_h = math.ceil(height / settings.downscale)
    _, num = settings.matched_range()
    if matched_w <= num + settings.block_size or matched_h <= settings.block_size:
        return (f'At points_downscale {settings.downscale} the matcher sees '
                f'{matched_w}x{matched_h} px but searches {num} disparities with a '
                f'{settings.block_size} px window: lower stereo_disparity_range or '
                'points_downscale, or send larger images.')
    return 'Check the stereo_* and points_* parameters.'
