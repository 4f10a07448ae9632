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

"""stereo.py: analytic reprojection, SGBM on a ray-traced scene, calibration checks, real pair.

The synthetic scene is ray-traced for both cameras, so its depth is known at every pixel and
occlusions are right: a textured road plane 1.2 m below the cameras, a building wall 8 m ahead,
a car-sized box 3 m ahead and a textured "sky" plane 40 m away above the wall.
"""

import time
from types import SimpleNamespace

from cityseg_ros.bags import CameraCalibration
from cityseg_ros.errors import ConfigError, ImageError
from cityseg_ros.labels import PALETTE
from cityseg_ros.stereo import (disparity, fit_plane, MATCHERS, reproject, semantic_cloud,
                                SKY_TRAIN_ID, StereoModel, StereoParams)
import cv2
import numpy as np
import pytest

W, H = 512, 256
FX, CX, CY = 400.0, 256.0, 128.0
BASELINE = 0.25
CAM_HEIGHT, WALL_Z, WALL_TOP_Y, SKY_Z = 1.2, 8.0, -1.5, 40.0
BOX_Z, BOX_X, BOX_Y = 3.0, (-0.9, 0.3), (-0.3, CAM_HEIGHT)
ROAD, BUILDING, CAR, SKY = 0, 2, 13, SKY_TRAIN_ID
#: Full-resolution search range for this scene: nearest point (road, bottom row) ~3.8 m = 27 px.
PARAMS = StereoParams(disparity_range=64, decimation=1, downscale=1)


def _texture(seed: int, size: int = 2048) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur(rng.uniform(0, 255, (size, size)).astype(np.float32), (0, 0), 0.7)


_TEXTURES = {cls: _texture(i) for i, cls in enumerate((ROAD, BUILDING, CAR, SKY))}


def _render(camera_x: float):
    """Ray-trace the scene for a camera at (camera_x, 0, 0): grey RGB, trainIds, depth Z."""
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    a, b = (u - CX) / FX, (v - CY) / FX
    with np.errstate(divide='ignore'):
        z_road = np.where(b > 0, CAM_HEIGHT / b, np.inf)
    z_wall = np.where(b * WALL_Z >= WALL_TOP_Y, WALL_Z, np.inf)
    xb, yb = camera_x + a * BOX_Z, b * BOX_Z
    in_box = (xb >= BOX_X[0]) & (xb <= BOX_X[1]) & (yb >= BOX_Y[0]) & (yb <= BOX_Y[1])
    z_box = np.where(in_box, BOX_Z, np.inf)
    z_sky = np.full((H, W), SKY_Z)
    stack = np.stack([z_road, z_wall, z_box, z_sky])
    nearest = np.argmin(stack, axis=0)
    z = np.take_along_axis(stack, nearest[None], 0)[0]
    labels = np.array([ROAD, BUILDING, CAR, SKY], np.uint8)[nearest]
    x, y = camera_x + a * z, b * z
    # Texture coordinates on each surface, ~25 texels per metre (sky: per 5 m).
    surface = {ROAD: (x, z), BUILDING: (x, y), CAR: (2.5 * x, 2.5 * y), SKY: (x / 5, y / 5)}
    grey = np.zeros((H, W), np.float32)
    for cls, (p, q) in surface.items():
        sampled = cv2.remap(_TEXTURES[cls], ((p + 40) * 25).astype(np.float32),
                            ((q + 40) * 25).astype(np.float32), cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_REFLECT)
        grey[labels == cls] = sampled[labels == cls]
    rgb = np.repeat(np.clip(grey, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    return rgb, labels, z.astype(np.float32)


@pytest.fixture(scope='module')
def scene():
    left, labels, depth = _render(0.0)
    right, _, _ = _render(BASELINE)
    return left, right, labels, depth


def _calibration(width=W, height=H, fx=FX, baseline=BASELINE, cy=CY):
    left = CameraCalibration.pinhole(width, height, fx, fx, CX * width / W, cy)
    right = CameraCalibration.pinhole(width, height, fx, fx, CX * width / W, cy,
                                      tx=-fx * baseline)
    return left, right


@pytest.fixture(scope='module')
def model():
    return StereoModel.from_camera_info(*_calibration(), (H, W))


# -- reprojection (no matcher) ----------------------------------------------------------------


def test_reproject_follows_the_pinhole_formulas_exactly(model, scene):
    _, _, labels, depth = scene
    disp = (FX * BASELINE / depth).astype(np.float32)
    cloud = reproject(disp, model, labels, None,
                      StereoParams(decimation=1, organized=True, drop_classes=(),
                                   max_depth_m=100.0))
    assert (cloud.height, cloud.width) == (H, W) and cloud.is_dense
    xyz = cloud.xyz.reshape(H, W, 3)
    v, u = np.mgrid[0:H, 0:W]
    np.testing.assert_allclose(xyz[..., 2], depth, rtol=1e-5)
    np.testing.assert_allclose(xyz[..., 0], (u - CX) * depth / FX, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(xyz[..., 1], (v - CY) * depth / FX, rtol=1e-5, atol=1e-5)
    # The road is the plane y = CAM_HEIGHT, the wall z = WALL_Z.
    np.testing.assert_allclose(xyz[..., 1][labels == ROAD], CAM_HEIGHT, rtol=1e-5)
    np.testing.assert_allclose(xyz[..., 2][labels == BUILDING], WALL_Z, rtol=1e-5)


def test_principal_point_offset_is_subtracted_from_disparity():
    left = CameraCalibration.pinhole(W, H, FX, FX, CX, CY)
    right = CameraCalibration.pinhole(W, H, FX, FX, CX - 10.0, CY, tx=-FX * BASELINE)
    model = StereoModel.from_camera_info(left, right, (H, W))
    assert model.doffs == pytest.approx(10.0)
    # u_l - u_r = fx B / Z + doffs: 20 px of measured disparity is 10 px of parallax.
    assert model.depth(np.float32(20.0)) == pytest.approx(FX * BASELINE / 10.0)


# -- matcher on the ray-traced pair -----------------------------------------------------------


def _depth_errors(cloud, labels, depth, cls):
    z = cloud.xyz[:, 2].reshape(H, W)
    found = (labels == cls) & np.isfinite(z)
    rel = np.abs(z[found] - depth[found]) / depth[found]
    return found.sum() / (labels == cls).sum(), np.median(rel), np.percentile(rel, 90)


def test_sgbm_depths_match_the_rendered_scene(model, scene):
    left, right, labels, depth = scene
    cloud = semantic_cloud(left, right, labels, model,
                           StereoParams(disparity_range=64, decimation=1, downscale=1,
                                        organized=True, drop_classes=()))
    for cls in (ROAD, BUILDING, CAR):
        coverage, median, p90 = _depth_errors(cloud, labels, depth, cls)
        # A disparity error of ~0.1-0.2 px is 1% at the wall's 12.5 px.
        assert coverage > 0.7 and median < 0.015 and p90 < 0.03, (cls, coverage, median, p90)


@pytest.mark.parametrize('downscale', [2, 4])
def test_downscale_keeps_metric_depth(model, scene, downscale):
    left, right, labels, _ = scene
    params = StereoParams(disparity_range=64, decimation=1, downscale=downscale)
    disp = disparity(left, right, params)
    assert disp.shape == (H, W) and disp.dtype == np.float32
    cloud = reproject(disp, model, labels, left, params)
    for cls, expected in ((BUILDING, WALL_Z), (CAR, BOX_Z)):
        z = cloud.xyz[cloud.labels == cls, 2]
        assert len(z) > 0.5 * (labels == cls).sum()  # full-resolution map, nearest upsampled
        assert np.median(z) == pytest.approx(expected, rel=0.03), (cls, downscale)


@pytest.mark.parametrize('matcher', MATCHERS)
def test_every_matcher_finds_the_wall(model, scene, matcher):
    left, right, labels, _ = scene
    params = StereoParams(matcher=matcher, disparity_range=64, decimation=2, downscale=1)
    cloud = semantic_cloud(left, right, labels, model, params)
    assert np.median(cloud.xyz[cloud.labels == BUILDING, 2]) == pytest.approx(WALL_Z, rel=0.03)


def test_invalid_disparities_are_nan(scene):
    left, right, _, _ = scene
    disp = disparity(left, right, PARAMS)
    # The left border (no partner within the search range) cannot be matched.
    assert np.isnan(disp[:, :32]).all()
    assert not (disp <= 0).any()  # NaN compares False: only positive values remain


def test_disparity_rejects_a_mismatched_pair(scene):
    left, _, _, _ = scene
    with pytest.raises(ImageError, match='differ in shape'):
        disparity(left, left[:, :-2], PARAMS)


# -- validity, class filter, decimation, layout, colours ----------------------------------


def test_sky_is_dropped_by_default_and_kept_on_request(model, scene):
    left, right, labels, _ = scene
    disp = disparity(left, right, PARAMS)
    default = reproject(disp, model, labels, left, PARAMS)
    assert StereoParams().drop_classes == (SKY_TRAIN_ID,)
    assert SKY not in default.labels and ROAD in default.labels
    keep = StereoParams(disparity_range=64, decimation=1, downscale=1, drop_classes=())
    sky = reproject(disp, model, labels, left, keep)
    sky_z = sky.xyz[sky.labels == SKY, 2]
    assert len(sky_z) > 1000 and np.median(sky_z) == pytest.approx(SKY_Z, rel=0.1)
    cars = StereoParams(disparity_range=64, decimation=1, downscale=1,
                        drop_classes=(SKY, CAR))
    assert CAR not in reproject(disp, model, labels, left, cars).labels


def test_depth_range_bounds_the_points(model, scene):
    left, right, labels, _ = scene
    disp = disparity(left, right, PARAMS)
    params = StereoParams(disparity_range=64, decimation=1, downscale=1, min_depth_m=5.0,
                          max_depth_m=20.0, drop_classes=())
    cloud = reproject(disp, model, labels, left, params)
    z = cloud.xyz[:, 2]
    assert len(z) > 0 and z.min() >= 5.0 and z.max() <= 20.0
    # Only pixels the matcher got wrong (at occlusion edges) survive: the car is at 3 m, the
    # sky at 40 m, the wall at 8 m.
    pixels = np.bincount(labels.ravel(), minlength=256).clip(1)
    kept = np.bincount(cloud.labels, minlength=256) / pixels
    assert kept[CAR] < 0.05 and kept[SKY] < 0.05 and kept[BUILDING] > 0.7, kept[[CAR, SKY]]


def test_dense_cloud_has_only_finite_points(model, scene):
    left, right, labels, _ = scene
    cloud = semantic_cloud(left, right, labels, model, PARAMS)
    assert cloud.height == 1 and cloud.width == len(cloud) and cloud.is_dense
    assert cloud.xyz.shape == (len(cloud), 3) and cloud.xyz.dtype == np.float32
    assert cloud.labels.shape == (len(cloud),) and cloud.labels.dtype == np.uint8
    assert cloud.rgb.shape == (len(cloud), 3) and cloud.rgb.dtype == np.uint8
    assert np.isfinite(cloud.xyz).all()


def test_organized_cloud_keeps_the_decimated_grid_with_nans(model, scene):
    left, right, labels, _ = scene
    params = StereoParams(disparity_range=64, downscale=1, decimation=4, organized=True)
    disp = disparity(left, right, params)
    cloud = reproject(disp, model, labels, left, params)
    assert (cloud.height, cloud.width) == (H // 4, W // 4) and len(cloud) == H * W // 16
    assert not cloud.is_dense
    np.testing.assert_array_equal(cloud.labels.reshape(H // 4, W // 4), labels[::4, ::4])
    dropped = np.isnan(cloud.xyz[:, 2])
    assert np.isnan(cloud.xyz[dropped]).all()
    expected = np.isnan(disp[::4, ::4]) | (labels[::4, ::4] == SKY)
    np.testing.assert_array_equal(dropped.reshape(H // 4, W // 4), expected)
    dense = reproject(disp, model, labels, left,
                      StereoParams(disparity_range=64, downscale=1, decimation=4))
    np.testing.assert_array_equal(dense.xyz, cloud.xyz[~dropped])


def test_decimation_keeps_every_nth_column_and_row(model, scene):
    left, right, labels, _ = scene
    disp = disparity(left, right, PARAMS)
    params = StereoParams(disparity_range=64, decimation=3, downscale=1, drop_classes=())
    cloud = reproject(disp, model, labels, left, params)
    u = cloud.xyz[:, 0] * FX / cloud.xyz[:, 2] + CX
    v = cloud.xyz[:, 1] * FX / cloud.xyz[:, 2] + CY
    for pixel in (u, v):
        np.testing.assert_allclose(pixel / 3, np.round(pixel / 3), atol=1e-3)
    assert len(cloud) <= len(range(0, H, 3)) * len(range(0, W, 3))


def test_points_are_coloured_by_label_or_by_photo(model, scene):
    left, right, labels, _ = scene
    disp = disparity(left, right, PARAMS)
    by_label = reproject(disp, model, labels, left, PARAMS)
    np.testing.assert_array_equal(by_label.rgb, PALETTE[by_label.labels])
    photo = StereoParams(disparity_range=64, decimation=1, downscale=1, color='photo',
                         organized=True)
    by_photo = reproject(disp, model, labels, left, photo)
    np.testing.assert_array_equal(by_photo.rgb, left.reshape(-1, 3))
    with pytest.raises(ImageError, match='photo'):
        reproject(disp, model, labels, None, photo)


def test_reproject_rejects_shapes_other_than_the_model(model, scene):
    left, right, labels, _ = scene
    disp = disparity(left, right, PARAMS)
    with pytest.raises(ImageError, match='stereo model'):
        reproject(disp, model, labels[:-1], left, PARAMS)


# -- calibration checks -----------------------------------------------------------------------


def _zero_baseline():
    return _calibration(baseline=0.0)


def _swapped():
    left, right = _calibration()
    return right, left


def _uncalibrated():
    left, right = _calibration()
    left.p[:] = 0.0
    return left, right


def _unequal_sizes():
    left, _ = _calibration()
    _, right = _calibration(width=W // 2, height=H // 2, fx=FX / 2)
    return left, right


def _no_size():
    left, right = _calibration()
    return CameraCalibration(0, 0, left.k, left.d, left.r, left.p), right


def _not_rectified():
    left, _ = _calibration()
    _, right = _calibration(cy=CY + 5.0)
    return left, right


@pytest.mark.parametrize('make, shape, reason', [
    (lambda: (None, _calibration()[1]), (H, W), 'no left/camera_info'),
    (lambda: (_calibration()[0], None), (H, W), 'no right/camera_info'),
    (_calibration, (H, W + 10), 'not a uniform rescale'),
    (_calibration, (H // 2, W), 'not a uniform rescale'),
    (_zero_baseline, (H, W), 'baseline is 0'),
    (_swapped, (H, W), 'swapped'),
    (_uncalibrated, (H, W), 'uncalibrated'),
    (_unequal_sizes, (H, W), 'rectified to one size'),
    (_not_rectified, (H, W), 'not a rectified pair'),
    (_no_size, (H, W), 'no image size'),
])
def test_calibration_problems_give_a_reason(make, shape, reason):
    left, right = make()
    assert reason in StereoModel.check(left, right, shape)
    with pytest.raises(ConfigError, match=reason):
        StereoModel.from_camera_info(left, right, shape)


@pytest.mark.parametrize('factor', [1, 2, 4])
def test_a_downscaled_image_scales_the_calibration(factor):
    left, right = _calibration()
    shape = (H // factor, W // factor)
    assert StereoModel.check(left, right, shape) is None
    model = StereoModel.from_camera_info(left, right, shape)
    assert (model.fx, model.fy) == (FX / factor, FX / factor)
    assert (model.cx, model.cy) == (CX / factor, CY / factor)
    assert model.baseline_m == pytest.approx(BASELINE)
    assert (model.height, model.width) == shape


def test_flat_projection_matrices_are_accepted():
    # sensor_msgs/CameraInfo holds P as 12 values; any object with width, height, p will do.
    left, right = (SimpleNamespace(width=c.width, height=c.height, p=list(c.p.reshape(-1)))
                   for c in _calibration())
    model = StereoModel.from_camera_info(left, right, (H, W))
    assert (model.fx, model.cx, model.baseline_m) == (FX, CX, pytest.approx(BASELINE))


def test_the_cityscapes_calibration_gives_its_baseline():
    from cityseg_ros.tools.make_bag import DEFAULT_CALIBRATION as cal

    model = StereoModel.from_camera_info(cal.left(), cal.right(), (1024, 2048))
    assert model.baseline_m == pytest.approx(0.209313)
    assert (model.fx, model.fy, model.cx, model.cy) == (2262.52, 2265.30, 1096.98, 513.14)


# -- parameters -------------------------------------------------------------------------------


@pytest.mark.parametrize('kwargs, match', [
    ({'matcher': 'census'}, 'matcher'),
    ({'block_size': 4}, 'block_size'),
    ({'disparity_range': 8}, 'disparity_range'),
    ({'downscale': 3}, 'downscale'),
    ({'min_depth_m': 10.0, 'max_depth_m': 5.0}, 'min_depth_m'),
    ({'decimation': 0}, 'decimation'),
    ({'drop_classes': (300,)}, 'drop_classes'),
    ({'color': 'intensity'}, 'color'),
    ({'matcher': 'bm', 'block_size': 3}, 'block matching'),
])
def test_bad_params_raise_config_error(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        StereoParams(**kwargs)


def test_params_derive_penalties_and_the_matched_range():
    params = StereoParams(block_size=5, disparity_range=100, min_disparity=8, downscale=2)
    assert (params.p1, params.p2) == (200, 800)
    assert params.matched_range() == (4, 64)  # ceil(50 / 16) * 16
    assert StereoParams(drop_classes=[10, 13]).drop_classes == (10, 13)


# -- plane fit --------------------------------------------------------------------------------


def test_fit_plane_ignores_outliers():
    rng = np.random.default_rng(1)
    normal = np.array([0.0, -np.cos(0.1), -np.sin(0.1)])
    xz = rng.uniform(-5, 5, (2000, 2))
    plane = np.stack([xz[:, 0], np.zeros(2000), xz[:, 1] + 10], 1)
    # Points on normal . p + 1.3 = 0: start on y = 0, move along the normal.
    plane -= np.outer(plane @ normal + 1.3, normal)
    plane += rng.normal(0, 0.01, plane.shape)
    outliers = rng.uniform(-5, 5, (800, 3))
    found, d, inliers = fit_plane(np.concatenate([plane, outliers]), threshold=0.05)
    assert d == pytest.approx(1.3, abs=0.01)
    assert np.degrees(np.arccos(abs(found @ normal))) < 0.5
    assert inliers[:2000].mean() > 0.99 and inliers[2000:].mean() < 0.1
    with pytest.raises(ValueError, match='at least 3'):
        fit_plane(plane[:2])


def test_fit_plane_finds_the_rendered_road(model, scene):
    left, right, labels, _ = scene
    cloud = semantic_cloud(left, right, labels, model, PARAMS)
    normal, d, _ = fit_plane(cloud.xyz[cloud.labels == ROAD], threshold=0.05)
    assert d == pytest.approx(CAM_HEIGHT, rel=0.02)
    assert np.degrees(np.arccos(abs(normal[1]))) < 1.0


# -- acceptance on the real Cityscapes pair ---------------------------------------------------

FRAME = 'frankfurt_000000_009291'


@pytest.mark.slow
def test_real_pair_road_plane_is_at_camera_height(cityscapes_root, espnetv2_weights):
    """Road points 5-30 m ahead lie on a plane ~1.0-1.5 m below the camera, normal along y."""
    from cityseg_ros.engine import Segmenter
    from cityseg_ros.imageio import read_rgb
    from cityseg_ros.tools.make_bag import DEFAULT_CALIBRATION

    left = read_rgb(cityscapes_root / 'leftImg8bit' / 'val' / 'frankfurt' /
                    f'{FRAME}_leftImg8bit.png')
    right = read_rgb(cityscapes_root / 'rightImg8bit' / 'val' / 'frankfurt' /
                     f'{FRAME}_rightImg8bit.png')
    labels = Segmenter('espnetv2', weights=str(espnetv2_weights), device='cpu')([left])[0]
    model = StereoModel.from_camera_info(DEFAULT_CALIBRATION.left(), DEFAULT_CALIBRATION.right(),
                                         left.shape[:2])
    params = StereoParams(downscale=2, decimation=2)
    start = time.perf_counter()
    disp = disparity(left, right, params)
    mid = time.perf_counter()
    cloud = reproject(disp, model, labels, left, params)
    end = time.perf_counter()

    assert SKY_TRAIN_ID in labels and SKY_TRAIN_ID not in cloud.labels
    z = cloud.xyz[:, 2]
    road = cloud.xyz[(cloud.labels == 0) & (z >= 5.0) & (z <= 30.0)]
    assert len(road) > 10000
    normal, distance, inliers = fit_plane(road, threshold=0.1)
    angle = float(np.degrees(np.arccos(min(1.0, abs(normal[1])))))
    print(f'\n{FRAME}: road plane {distance:.3f} m from the camera, normal {angle:.2f} deg from '
          f'the optical y axis, {inliers.sum()}/{len(road)} inliers; {len(cloud)} points; '
          f'disparity {1e3 * (mid - start):.0f} ms (downscale 2), cloud '
          f'{1e3 * (end - mid):.0f} ms (decimation 2)')
    assert 1.0 <= distance <= 1.5
    assert angle < 10.0
    assert inliers.mean() > 0.5
