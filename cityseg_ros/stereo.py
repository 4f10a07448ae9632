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

"""Disparity from a rectified stereo pair and reprojection into a semantic point cloud.

Pure numpy/OpenCV, no ROS: ``ros/pointcloud.py`` turns a :class:`SemanticCloud` into a
PointCloud2. The geometry is stereo_image_proc's (``point_cloud_node``, via image_geometry's
``StereoCameraModel``): in the left camera's optical frame (x right, y down, z forward),

    Z = fx * B / (d - doffs),  X = (u - cx) * Z / fx,  Y = (v - cy) * Z / fy,

with ``B = Tx_left - Tx_right`` (``Tx = P[0, 3] / P[0, 0]``; ``-P_right[0, 3] / P_right[0, 0]``
for the usual ``P_left[0, 3] = 0``) and ``doffs = cx_left - cx_right`` (0 unless the two
rectified cameras have different principal points).

Typical use (what the node does for ``semantic/points``)::

    reason = StereoModel.check(left_info, right_info, rgb.shape[:2])
    if reason is None:
        model = StereoModel.from_camera_info(left_info, right_info, rgb.shape[:2])
        cloud = semantic_cloud(left_rgb, right_rgb, labels, model, StereoParams())
"""

from dataclasses import dataclass
import math
from typing import Any, Optional, Sequence

from cityseg_ros.errors import ConfigError, ImageError
from cityseg_ros.labels import PALETTE
import cv2
import numpy as np

__all__ = ['MATCHERS', 'COLOR_MODES', 'SKY_TRAIN_ID', 'StereoParams', 'StereoModel',
           'SemanticCloud', 'disparity', 'reproject', 'semantic_cloud', 'fit_plane']

#: Matchers: OpenCV's semi-global matcher (5 paths), its 3-path variant (faster, a little
#: noisier) and the full 8-path variant ('hh', slow, memory-hungry), and block matching.
MATCHERS = ('sgbm', 'sgbm_3way', 'hh', 'bm')
#: Point colours: the palette colour of the point's label (what RViz shows by default) or the
#: photo's colour at that pixel.
COLOR_MODES = ('label', 'photo')
#: Cityscapes trainId of 'sky' (labels.py): at infinity, so never a useful point.
SKY_TRAIN_ID = 10

_SGBM_MODES = {'sgbm': cv2.STEREO_SGBM_MODE_SGBM, 'sgbm_3way': cv2.STEREO_SGBM_MODE_SGBM_3WAY,
               'hh': cv2.STEREO_SGBM_MODE_HH}
#: OpenCV returns disparities as int16 fixed point with 4 fractional bits.
_DISP_SCALE = 16.0
_DOWNSCALES = (1, 2, 4)


@dataclass(frozen=True)
class StereoParams:
    """Matcher and point-cloud settings; invalid values raise :class:`ConfigError`.

    Attributes:
        matcher: one of :data:`MATCHERS`.
        block_size: odd matching window side, pixels at the matched (downscaled) resolution.
        min_disparity: smallest disparity searched, full-resolution pixels.
        disparity_range: number of disparities searched, full-resolution pixels; matched at
            ``ceil(range / downscale)`` rounded up to a multiple of 16 (OpenCV's rule). The
            nearest point seen is about ``fx * baseline / (min_disparity + range)`` metres
            (Cityscapes: 473.6 px*m / 256 px = 1.85 m).
        uniqueness_ratio: percent by which the best cost must beat the second best.
        speckle_window_size: largest blob of similar disparity (pixels, matched resolution)
            that is removed as a speckle; 0 turns the filter off.
        speckle_range: largest disparity step inside one blob, matched-resolution pixels.
        disp12_max_diff: largest left-right consistency error, matched pixels; -1 turns the
            check off.
        pre_filter_cap: clip of the x-derivative prefilter (OpenCV, 1..63).
        downscale: match at 1/1, 1/2 or 1/4 of the image size (about 4x faster per step);
            disparities come back in full-resolution pixels, so depths stay metric.
        min_depth_m: points nearer than this are dropped, metres.
        max_depth_m: points farther than this are dropped, metres (stereo depth error grows
            with Z squared).
        decimation: keep every n-th row and column of the image (n^2 fewer points).
        drop_classes: trainIds whose points are dropped (default: sky).
        organized: keep the decimated image grid (height > 1, NaN for dropped points) instead
            of a dense 1xN list of valid points.
        color: one of :data:`COLOR_MODES`.
    """

    matcher: str = 'sgbm'
    block_size: int = 5
    min_disparity: int = 0
    disparity_range: int = 256
    uniqueness_ratio: int = 10
    speckle_window_size: int = 100
    speckle_range: int = 2
    disp12_max_diff: int = 1
    pre_filter_cap: int = 63
    downscale: int = 2
    min_depth_m: float = 0.5
    max_depth_m: float = 50.0
    decimation: int = 4
    drop_classes: tuple = (SKY_TRAIN_ID,)
    organized: bool = False
    color: str = 'label'

    def __post_init__(self) -> None:
        object.__setattr__(self, 'drop_classes', tuple(int(c) for c in self.drop_classes))
        problems = self.problems()
        if problems:
            raise ConfigError('invalid stereo parameters: ' + '; '.join(problems))

    def problems(self) -> list:
        """Return why these values cannot work (one string per problem); empty when valid."""
        out = []
        if self.matcher not in MATCHERS:
            out.append(f'matcher {self.matcher!r} is not one of {", ".join(MATCHERS)}')
        if self.block_size < 1 or self.block_size % 2 == 0 or self.block_size > 51:
            out.append(f'block_size {self.block_size} must be odd and in [1, 51]')
        if self.matcher == 'bm' and self.block_size < 5:
            out.append(f'block_size {self.block_size}: block matching needs >= 5')
        if self.disparity_range < 16:
            out.append(f'disparity_range {self.disparity_range} must be >= 16 px')
        if self.min_disparity < 0:
            out.append(f'min_disparity {self.min_disparity} must be >= 0 (points behind the '
                       'cameras cannot be seen)')
        if not 0 <= self.uniqueness_ratio <= 100:
            out.append(f'uniqueness_ratio {self.uniqueness_ratio} must be in [0, 100] %')
        if self.speckle_window_size < 0 or self.speckle_range < 0:
            out.append(f'speckle_window_size {self.speckle_window_size} and speckle_range '
                       f'{self.speckle_range} must be >= 0')
        if not 1 <= self.pre_filter_cap <= 63:
            out.append(f'pre_filter_cap {self.pre_filter_cap} must be in [1, 63]')
        if self.downscale not in _DOWNSCALES:
            out.append(f'downscale {self.downscale} must be one of {_DOWNSCALES}')
        if not 0.0 <= self.min_depth_m < self.max_depth_m:
            out.append(f'min_depth_m {self.min_depth_m} and max_depth_m {self.max_depth_m}: '
                       'need 0 <= min < max')
        if self.decimation < 1:
            out.append(f'decimation {self.decimation} must be >= 1')
        if any(not 0 <= c <= 255 for c in self.drop_classes):
            out.append(f'drop_classes {list(self.drop_classes)} must be trainIds in [0, 255]')
        if self.color not in COLOR_MODES:
            out.append(f'color {self.color!r} is not one of {", ".join(COLOR_MODES)}')
        return out

    @property
    def p1(self) -> int:
        """SGBM smoothness penalty for 1-px disparity steps (OpenCV's sample: 8 * bs^2)."""
        return 8 * self.block_size ** 2

    @property
    def p2(self) -> int:
        """SGBM penalty for larger steps (OpenCV's sample: 32 * bs^2, so P2 > P1)."""
        return 32 * self.block_size ** 2

    def matched_range(self) -> tuple:
        """Return (min_disparity, num_disparities) at the matched resolution, OpenCV's units."""
        lo = self.min_disparity // self.downscale
        num = 16 * math.ceil(self.disparity_range / self.downscale / 16)
        return lo, num


def _proportional(calibrated: int, actual: int, scale: float) -> bool:
    return abs(calibrated * scale - actual) <= 0.5


def _projection(info: Any) -> np.ndarray:
    """P as 3x4 float64 from a CameraCalibration (3x4) or a CameraInfo (12 values)."""
    p = np.asarray(info.p, dtype=np.float64)
    return p.reshape(3, 4) if p.size == 12 else p


@dataclass(frozen=True)
class StereoModel:
    """Rectified stereo geometry at one image size (the left camera's optical frame).

    Attributes:
        fx: focal length x, pixels.
        fy: focal length y, pixels.
        cx: principal point x of the left image, pixels.
        cy: principal point y, pixels.
        baseline_m: distance between the optical centres, metres (> 0: right camera to the
            right of the left one).
        doffs: ``cx_left - cx_right``, pixels; subtracted from every disparity.
        width: image width the values hold for, pixels.
        height: image height, pixels.
    """

    fx: float
    fy: float
    cx: float
    cy: float
    baseline_m: float
    width: int
    height: int
    doffs: float = 0.0

    @staticmethod
    def check(left: Any, right: Any, image_shape: Sequence[int]) -> Optional[str]:
        """Return why no model can be built for images of ``image_shape``, or None if one can.

        Args:
            left: the left camera's :class:`~cityseg_ros.bags.CameraCalibration`, or anything
                with ``width``, ``height`` and ``p`` (3x4 or 12 values, e.g. a
                sensor_msgs/CameraInfo); None when none has arrived.
            right: the right camera's, likewise.
            image_shape: (height, width) of the left image, e.g. ``rgb.shape[:2]``.

        Returns:
            One sentence naming the problem and the fix (for one throttled log line), or None.
            Images that are an exact downscale of the calibrated size are accepted (K and P
            are scaled); other sizes are not.
        """
        for side, info in (('left', left), ('right', right)):
            if info is None:
                return (f'no {side}/camera_info received yet: the point cloud needs the '
                        'CameraInfo of both cameras (publish them with the images)')
            p = _projection(info)
            if p.shape != (3, 4) or not np.isfinite(p).all():
                return f'{side}/camera_info has a malformed P: {p.reshape(-1).tolist()}'
            if p[0, 0] <= 0.0 or p[1, 1] <= 0.0:
                return (f'{side}/camera_info is uncalibrated (P fx {p[0, 0]:g}, fy '
                        f'{p[1, 1]:g}): calibrate the stereo pair (camera_calibration)')
            if info.width <= 0 or info.height <= 0:
                return (f'{side}/camera_info has no image size ({info.width}x{info.height}): '
                        'the driver must fill width and height')
        if (left.width, left.height) != (right.width, right.height):
            return (f'left/camera_info is {left.width}x{left.height} but right/camera_info is '
                    f'{right.width}x{right.height}: the cameras must be rectified to one size')
        height, width = int(image_shape[0]), int(image_shape[1])
        scale = width / left.width
        if not (_proportional(left.width, width, scale) and
                _proportional(left.height, height, scale)):
            return (f'image is {width}x{height} but camera_info is calibrated for '
                    f'{left.width}x{left.height}, and it is not a uniform rescale of it: '
                    'publish camera_info for the image size used')
        pl, pr = _projection(left), _projection(right)
        if abs(pl[1, 1] - pr[1, 1]) > 1e-3 * pl[1, 1] or abs(pl[1, 2] - pr[1, 2]) > 1.0:
            return (f'left and right P differ in fy ({pl[1, 1]:g} vs {pr[1, 1]:g}) or cy '
                    f'({pl[1, 2]:g} vs {pr[1, 2]:g}): the images are not a rectified pair')
        baseline = pl[0, 3] / pl[0, 0] - pr[0, 3] / pr[0, 0]
        if baseline == 0.0:
            return ('stereo baseline is 0 (right/camera_info P[0, 3] = 0): set P[0, 3] = '
                    '-fx * baseline as stereo calibration does')
        if baseline < 0.0:
            return (f'stereo baseline is negative ({baseline:.4f} m): left and right are '
                    'swapped (right P[0, 3] must be -fx * baseline < 0)')
        return None

    @classmethod
    def from_camera_info(cls, left: Any, right: Any,
                         image_shape: Sequence[int]) -> 'StereoModel':
        """Build the model for images of ``image_shape`` (height, width) from both CameraInfos.

        ``left`` and ``right`` are as for :meth:`check` (CameraCalibration or CameraInfo).
        fx, fy, cx, cy come from the left P; the baseline is ``Tx_left - Tx_right`` with
        ``Tx = P[0, 3] / P[0, 0]``. K and P are scaled when the images are a uniform rescale of
        the calibrated size.

        Raises:
            ConfigError: with :meth:`check`'s reason when it finds one.
        """
        reason = cls.check(left, right, image_shape)
        if reason is not None:
            raise ConfigError(reason)
        height, width = int(image_shape[0]), int(image_shape[1])
        sx, sy = width / left.width, height / left.height
        pl, pr = _projection(left), _projection(right)
        return cls(fx=float(pl[0, 0] * sx), fy=float(pl[1, 1] * sy), cx=float(pl[0, 2] * sx),
                   cy=float(pl[1, 2] * sy),
                   baseline_m=float(pl[0, 3] / pl[0, 0] - pr[0, 3] / pr[0, 0]),
                   width=width, height=height, doffs=float((pl[0, 2] - pr[0, 2]) * sx))

    def depth(self, disparity: np.ndarray) -> np.ndarray:
        """Return Z in metres for disparities in pixels (inf/negative where d <= doffs)."""
        with np.errstate(divide='ignore', invalid='ignore'):
            return (self.fx * self.baseline_m) / (disparity - self.doffs)


@dataclass(frozen=True)
class SemanticCloud:
    """Labelled points in the left optical frame (x right, y down, z forward), metres.

    Arrays are flat, row-major over a ``height`` x ``width`` grid (N = height * width): a dense
    cloud has height 1 and only valid points; an organized one keeps the decimated image grid
    with NaN coordinates for dropped points (their label and colour are kept).

    Attributes:
        xyz: (N, 3) float32 coordinates.
        labels: (N,) uint8 trainIds.
        rgb: (N, 3) uint8 colours (palette colour of the label, or the photo's).
        height: grid rows (1 for a dense cloud).
        width: grid columns (N for a dense cloud).
        is_dense: True when no coordinate is NaN.
    """

    xyz: np.ndarray
    labels: np.ndarray
    rgb: np.ndarray
    height: int
    width: int
    is_dense: bool

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def _grey(image: np.ndarray, name: str) -> np.ndarray:
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ImageError(f'{name} image must be HxW or HxWx3 uint8, got {image.dtype} '
                         f'{image.shape}')
    if image.ndim == 2:
        return image
    if image.shape[2] != 3:
        raise ImageError(f'{name} image must have 3 channels (RGB), got {image.shape[2]}')
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)


def _matcher(params: StereoParams, channels: int = 1) -> cv2.StereoMatcher:
    lo, num = params.matched_range()
    if params.matcher == 'bm':
        bm = cv2.StereoBM_create(numDisparities=num, blockSize=params.block_size)
        bm.setMinDisparity(lo)
        bm.setUniquenessRatio(params.uniqueness_ratio)
        bm.setSpeckleWindowSize(params.speckle_window_size)
        bm.setSpeckleRange(params.speckle_range)
        bm.setDisp12MaxDiff(params.disp12_max_diff)
        bm.setPreFilterCap(params.pre_filter_cap)
        return bm
    return cv2.StereoSGBM_create(
        minDisparity=lo, numDisparities=num, blockSize=params.block_size,
        P1=params.p1 * channels, P2=params.p2 * channels,
        disp12MaxDiff=params.disp12_max_diff, preFilterCap=params.pre_filter_cap,
        uniquenessRatio=params.uniqueness_ratio, speckleWindowSize=params.speckle_window_size,
        speckleRange=params.speckle_range, mode=_SGBM_MODES[params.matcher])


def disparity(left_rgb: np.ndarray, right_rgb: np.ndarray,
              params: StereoParams = StereoParams()) -> np.ndarray:
    """Match a rectified pair: left-image disparities in full-resolution pixels.

    Args:
        left_rgb: HxWx3 uint8 RGB (or HxW grey) rectified left image.
        right_rgb: the right image, same shape.
        params: matcher settings; ``params.downscale`` > 1 matches a smaller copy and scales
            the disparities back, so they stay in full-resolution pixels.

    Returns:
        HxW float32 disparity ``u_left - u_right`` in pixels at the input's size, NaN where the
        matcher found none (occlusions, no texture, the left border of width
        ``min_disparity + disparity_range``) or the disparity is <= 0.

    Raises:
        ImageError: the images differ in shape or are not uint8 RGB/grey.
    """
    if left_rgb.shape != right_rgb.shape:
        raise ImageError(f'left image {left_rgb.shape} and right image {right_rgb.shape} '
                         'differ in shape: a rectified pair has one size')
    left, right = _grey(left_rgb, 'left'), _grey(right_rgb, 'right')
    height, width = left.shape
    ds = params.downscale
    if ds > 1:
        small = (max(1, round(width / ds)), max(1, round(height / ds)))
        left = cv2.resize(left, small, interpolation=cv2.INTER_AREA)
        right = cv2.resize(right, small, interpolation=cv2.INTER_AREA)
    raw = _matcher(params).compute(left, right)
    lo, _ = params.matched_range()
    disp = raw.astype(np.float32)
    # OpenCV marks "no match" as (minDisparity - 1) * 16.
    disp[raw < lo * _DISP_SCALE] = np.nan
    disp *= np.float32(width / left.shape[1] / _DISP_SCALE)
    disp[~(disp > 0)] = np.nan
    if ds > 1:
        disp = cv2.resize(disp, (width, height), interpolation=cv2.INTER_NEAREST)
    return disp


def reproject(disp: np.ndarray, model: StereoModel, labels: np.ndarray,
              rgb: Optional[np.ndarray] = None,
              params: StereoParams = StereoParams()) -> SemanticCloud:
    """Turn a disparity map and its labels into labelled 3-D points.

    Args:
        disp: HxW float32 disparities, pixels (NaN = none), as :func:`disparity` returns.
        model: the pair's geometry at this HxW.
        labels: HxW uint8 trainIds of the left image.
        rgb: HxWx3 uint8 left photo; needed only for ``params.color == 'photo'``.
        params: depth range, class filter, decimation, layout and colour mode.

    Returns:
        The points of every ``params.decimation``-th row and column whose depth is finite and
        within ``[min_depth_m, max_depth_m]`` and whose label is not in ``drop_classes``: dense
        (1xN) or organized (grid with NaN for the others), per ``params.organized``.

    Raises:
        ImageError: shapes disagree with each other or with the model, or 'photo' colours are
            asked for without a photo.
    """
    shape = (model.height, model.width)
    if disp.shape != shape or labels.shape != shape:
        raise ImageError(f'disparity {disp.shape} and labels {labels.shape} must both be '
                         f'{shape}, the size the stereo model was built for')
    if params.color == 'photo' and (rgb is None or rgb.shape[:2] != shape):
        raise ImageError(f"color 'photo' needs the left photo at {shape}, got "
                         f'{None if rgb is None else rgb.shape}')
    step = params.decimation
    lab = np.ascontiguousarray(labels[::step, ::step])
    rows, cols = lab.shape
    z = model.depth(disp[::step, ::step]).astype(np.float32, copy=False)
    with np.errstate(invalid='ignore'):
        valid = (z >= params.min_depth_m) & (z <= params.max_depth_m)  # False for NaN
    if params.drop_classes:
        drop = np.zeros(256, dtype=bool)
        drop[list(params.drop_classes)] = True
        valid &= ~drop[lab]
    # x / z and y / z of each pixel's ray.
    ray_x = (np.arange(0, model.width, step, dtype=np.float32) - np.float32(model.cx)) \
        / np.float32(model.fx)
    ray_y = (np.arange(0, model.height, step, dtype=np.float32) - np.float32(model.cy)) \
        / np.float32(model.fy)
    photo = np.ascontiguousarray(rgb[::step, ::step]) if params.color == 'photo' else None

    if params.organized:
        z = np.where(valid, z, np.float32(np.nan))  # x and y inherit the NaN
        xyz = np.empty((rows, cols, 3), dtype=np.float32)
        xyz[..., 2] = z
        np.multiply(ray_x[None, :], z, out=xyz[..., 0])
        np.multiply(ray_y[:, None], z, out=xyz[..., 1])
        # np.take, not PALETTE[lab]: a 1-D gather, ~5x faster on 2 Mpx.
        colors = photo if photo is not None else np.take(PALETTE, lab, axis=0)
        return SemanticCloud(xyz.reshape(-1, 3), lab.reshape(-1), colors.reshape(-1, 3),
                             rows, cols, bool(valid.all()))
    z_valid = z[valid]
    n = len(z_valid)
    xyz = np.empty((n, 3), dtype=np.float32)
    xyz[:, 2] = z_valid
    np.multiply(np.broadcast_to(ray_x[None, :], valid.shape)[valid], z_valid, out=xyz[:, 0])
    np.multiply(np.broadcast_to(ray_y[:, None], valid.shape)[valid], z_valid, out=xyz[:, 1])
    lab_valid = lab[valid]
    if photo is not None:
        colors = photo.reshape(-1, 3)[valid.reshape(-1)]
    else:
        colors = np.take(PALETTE, lab_valid, axis=0)
    return SemanticCloud(xyz, lab_valid, colors, 1, n, True)


def semantic_cloud(left_rgb: np.ndarray, right_rgb: np.ndarray, labels: np.ndarray,
                   model: StereoModel, params: StereoParams = StereoParams()) -> SemanticCloud:
    """Run :func:`disparity` then :func:`reproject` on one rectified, segmented pair."""
    return reproject(disparity(left_rgb, right_rgb, params), model, labels, left_rgb, params)


def _plane_from(points: np.ndarray) -> tuple:
    """Least-squares plane through ``points``: (unit normal, d) with normal . p + d = 0."""
    centroid = points.mean(axis=0)
    _, _, vt = np.linalg.svd(points - centroid, full_matrices=False)
    normal = vt[-1]
    return normal, -float(normal @ centroid)


def fit_plane(points: np.ndarray, threshold: float = 0.05, iterations: int = 200,
              seed: int = 0, max_samples: int = 5000) -> tuple:
    """Fit a plane robustly: RANSAC on 3-point samples, then least squares on the inliers.

    Hypotheses are scored together (vectorised) on at most ``max_samples`` random points; the
    best one's inliers among all points are refit by SVD twice.

    Args:
        points: (N, 3) coordinates, metres; N >= 3.
        threshold: inlier distance to the plane, metres.
        iterations: number of random 3-point hypotheses.
        seed: random seed (results are reproducible).
        max_samples: points used to score hypotheses.

    Returns:
        (normal, d, inliers): unit float64 normal (3,) and offset with ``normal . p + d = 0``,
        oriented so that ``d >= 0`` (``d`` is then the origin's distance to the plane and the
        normal points to the origin's side), and an (N,) bool inlier mask.

    Raises:
        ValueError: fewer than 3 points, or all of them on a line.
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    if len(pts) < 3:
        raise ValueError(f'fit_plane needs at least 3 points, got {len(pts)}')
    rng = np.random.default_rng(seed)
    score_pts = pts if len(pts) <= max_samples else pts[rng.choice(len(pts), max_samples,
                                                                   replace=False)]
    idx = rng.integers(0, len(pts), (iterations, 3))
    a, b, c = pts[idx[:, 0]], pts[idx[:, 1]], pts[idx[:, 2]]
    normals = np.cross(b - a, c - a)
    norms = np.linalg.norm(normals, axis=1)
    ok = norms > 1e-12
    if not ok.any():
        raise ValueError('fit_plane: the points are collinear (no plane is defined)')
    normals, a = normals[ok] / norms[ok, None], a[ok]
    offsets = -np.einsum('ij,ij->i', normals, a)
    counts = (np.abs(score_pts @ normals.T + offsets) < threshold).sum(axis=0)
    best = int(np.argmax(counts))
    normal, d = normals[best], float(offsets[best])
    inliers = np.abs(pts @ normal + d) < threshold
    for _ in range(2):
        if inliers.sum() < 3:
            break
        normal, d = _plane_from(pts[inliers])
        inliers = np.abs(pts @ normal + d) < threshold
    if d < 0:
        normal, d = -normal, -d
    return normal, d, inliers
