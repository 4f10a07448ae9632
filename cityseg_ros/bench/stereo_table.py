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

"""Table: stereo disparity and semantic cloud cost per 2048x1024 pair, full and half resolution.

Uses the real Cityscapes val pair from ``../shared`` when present, otherwise a synthetic
textured pair with a known 40 px shift. The label map is synthetic either way (the cost does not
depend on label values, only on how many points the class filter drops). Our reprojection is
put beside OpenCV's ``cv2.reprojectImageTo3D`` on the same disparity map after checking that
both give the same coordinates.
"""

from pathlib import Path
from typing import Optional

from cityseg_ros.bench.timing import markdown_table, time_call
from cityseg_ros.labels import NUM_CLASSES
from cityseg_ros.stereo import disparity, reproject, StereoModel, StereoParams
from cityseg_ros.tools.make_bag import DEFAULT_CALIBRATION
import cv2
import numpy as np

__all__ = ['run']

_DEFAULT_ROOT = Path(__file__).resolve().parents[3] / 'shared' / 'data' / 'cityscapes'
_FRAME = ('val', 'frankfurt', 'frankfurt_000000_009291')


def _real_pair(root: Path) -> Optional[tuple]:
    split, city, name = _FRAME
    left = root / 'leftImg8bit' / split / city / f'{name}_leftImg8bit.png'
    right = root / 'rightImg8bit' / split / city / f'{name}_rightImg8bit.png'
    if not (left.is_file() and right.is_file()):
        return None
    from cityseg_ros.imageio import read_rgb

    return read_rgb(left), read_rgb(right), f'Cityscapes {name}'


def _synthetic_pair(shift: int = 40) -> tuple:
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 256, (1024, 2048 + shift), dtype=np.uint8)
    texture = cv2.GaussianBlur(texture, (0, 0), 1.0)
    # right(u) = left(u + shift): every left pixel u is seen at u - shift on the right.
    left = np.repeat(texture[:, :-shift, None], 3, axis=2)
    right = np.repeat(texture[:, shift:, None], 3, axis=2)
    return left, right, f'synthetic (constant {shift} px disparity)'


def _labels(height: int, width: int) -> np.ndarray:
    """Sky (10) in the top fifth, every class in bands below: a plausible filter load."""
    rows = np.arange(height)[:, None] * np.ones((1, width), np.int64)
    labels = (rows * NUM_CLASSES // height).astype(np.uint8)
    labels[: height // 5] = 10
    return labels


def _opencv_q(model: StereoModel) -> np.ndarray:
    # stereoRectify's Q for Tx = -baseline; the y row scaled by fx / fy since Q has one focal.
    return np.array([[1.0, 0.0, 0.0, -model.cx],
                     [0.0, model.fx / model.fy, 0.0, -model.cy * model.fx / model.fy],
                     [0.0, 0.0, 0.0, model.fx],
                     [0.0, 0.0, 1.0 / model.baseline_m, -model.doffs / model.baseline_m]])


def _check_against_opencv(disp: np.ndarray, model: StereoModel, labels: np.ndarray) -> str:
    params = StereoParams(decimation=1, organized=True, drop_classes=(), min_depth_m=0.0,
                          max_depth_m=1e9)
    ours = reproject(disp, model, labels, None, params).xyz.reshape(disp.shape + (3,))
    theirs = cv2.reprojectImageTo3D(np.nan_to_num(disp, nan=-1.0), _opencv_q(model))
    valid = np.isfinite(ours[..., 2])
    diff = np.abs(ours[valid] - theirs[valid]) / np.maximum(1.0, np.abs(theirs[valid]))
    worst = float(diff.max()) if diff.size else 0.0
    return 'equal' if worst < 1e-4 else f'MISMATCH (rel {worst:.1e})'


def run(runs: int = 3, cityscapes_root: Optional[Path] = None) -> str:
    """Time disparity (SGBM) and reprojection per pair at downscale 1, 2 and 4.

    Args:
        runs: timed runs per cell, after one warm-up run.
        cityscapes_root: a Cityscapes root with the val pair; defaults to ``../shared``'s.

    Returns:
        A markdown table (one line naming the input above it).
    """
    pair = _real_pair(Path(cityscapes_root or _DEFAULT_ROOT)) or _synthetic_pair()
    left, right, source = pair
    height, width = left.shape[:2]
    calibration = DEFAULT_CALIBRATION.scaled(width, height)
    model = StereoModel.from_camera_info(calibration.left(), calibration.right(),
                                         (height, width))
    labels = _labels(height, width)
    rows = []
    for downscale in (1, 2, 4):
        params = StereoParams(downscale=downscale)
        disp = disparity(left, right, params)
        t_disp = time_call(lambda: disparity(left, right, params), warmup=1, runs=runs)
        cloud = reproject(disp, model, labels, left, params)
        t_cloud = time_call(lambda: reproject(disp, model, labels, left, params), runs=runs)
        full = StereoParams(decimation=1, organized=True)
        t_full = time_call(lambda: reproject(disp, model, labels, left, full), runs=runs)
        q = _opencv_q(model)
        t_cv = time_call(lambda: cv2.reprojectImageTo3D(disp, q), runs=runs)
        _, num = params.matched_range()
        rows.append([
            f'1/{downscale}', f'{round(width / downscale)}x{round(height / downscale)}', num,
            f'{t_disp.median_ms:.0f}', f'{t_disp.p95_ms:.0f}',
            f'{100 * np.isfinite(disp).mean():.0f}',
            f'{t_cloud.median_ms:.1f}', len(cloud), f'{t_full.median_ms:.1f}',
            f'{t_cv.median_ms:.1f}', _check_against_opencv(disp, model, labels)])
    header = ['matched at', 'matched WxH', 'disparities', 'disparity ms (p50)',
              'disparity ms (p95)', 'valid px %', 'cloud ms (p50, decimation 4, dense)',
              'points', 'cloud ms (p50, decimation 1, organized)',
              'cv2.reprojectImageTo3D ms (p50, xyz only)', 'xyz vs OpenCV']
    intro = (f'Input: {source}, {width}x{height}; SGBM block 5, range 256 px (full-resolution '
             f'units), OpenCV {cv2.__version__} with {cv2.getNumThreads()} threads.\n\n')
    return intro + markdown_table(header, rows)
