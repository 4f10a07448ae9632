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


"""Backend tests: one engine cache for the session (graphs exported once), CUDA tests skip."""

import os

import pytest


@pytest.fixture(scope='session', autouse=True)
def engine_cache(tmp_path_factory):
    """Point the engine cache at a fresh directory shared by every backend test."""
    path = tmp_path_factory.mktemp('engines')
    before = os.environ.get('CITYSEG_ROS_ENGINE_CACHE')
    os.environ['CITYSEG_ROS_ENGINE_CACHE'] = str(path)
    yield path
    if before is None:
        del os.environ['CITYSEG_ROS_ENGINE_CACHE']
    else:
        os.environ['CITYSEG_ROS_ENGINE_CACHE'] = before


def pytest_collection_modifyitems(config, items):
    """Skip ``@pytest.mark.cuda`` tests, with the reason, where torch sees no CUDA device."""
    cuda_items = [item for item in items if item.get_closest_marker('cuda')]
    if not cuda_items:
        return
    import torch
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason=f'needs an NVIDIA GPU: torch {torch.__version__} sees no '
                                   'CUDA device (scripts/device_check.sh runs these on one)')
    for item in cuda_items:
        item.add_marker(skip)
