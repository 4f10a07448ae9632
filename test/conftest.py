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

"""Shared fixtures. ROS discovery is pinned to this machine before anything imports rclpy."""

import os
from pathlib import Path

import pytest

# Before any rclpy.init: DDS traffic never leaves the host, on a test-only domain.
os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
# ROS_LOCALHOST_ONLY is deprecated on Jazzy (rcl warns); a stale one from the shell goes too.
os.environ.pop('ROS_LOCALHOST_ONLY', None)
os.environ.setdefault('ROS_DOMAIN_ID', '87')
os.environ.setdefault('AMENT_PREFIX_PATH', os.environ.get('VIRTUAL_ENV', ''))

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / 'shared'


def _shared_path(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f'{path} is absent: ../shared (data, weights, reference) is not '
                    'beside the repo')
    return path


@pytest.fixture(scope='session')
def shared():
    """Return a function that resolves a path under ../shared, skipping the test if absent."""
    return _shared_path


@pytest.fixture(scope='session')
def cityscapes_root():
    """Return the real Cityscapes frames (8 train frames with fine GT, one val stereo pair)."""
    return _shared_path('data', 'cityscapes')


@pytest.fixture(scope='session')
def espnetv2_weights():
    """Return the official ESPNetv2 s=2.0 1024x512 Cityscapes checkpoint."""
    return _shared_path('data', 'weights', 'espnetv2', 'espnetv2_s_2.0_city_1024x512.pth')


@pytest.fixture(scope='session')
def official_eval():
    """Return ``evaluate(pred_files, gt_files) -> dict``: cityscapesscripts' own evaluation.

    The pip package is the test oracle. It still calls ``np.in1d`` (removed in numpy 2.4), so
    the alias is patched here, in the tests only.
    """
    np = pytest.importorskip('numpy')
    if not hasattr(np, 'in1d'):
        np.in1d = np.isin
    ev = pytest.importorskip('cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling')

    def evaluate(pred_files, gt_files):
        args = ev.args
        args.quiet = True
        args.JSONOutput = False
        args.evalPixelAccuracy = True
        return ev.evaluateImgLists([str(p) for p in pred_files], [str(g) for g in gt_files],
                                   args)
    return evaluate


@pytest.fixture
def one_torch_thread():
    """Run the test with one torch thread, then restore the count."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
