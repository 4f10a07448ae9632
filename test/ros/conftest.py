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

"""Real rclpy for the node tests: one context per session, an executor, spin_until.

test/conftest.py has already pinned discovery to localhost and a test domain; every test also
gets its own namespace so parallel runs on one machine never see each other's topics.
"""

import os
import time
from typing import Callable
import uuid

import cv2
from node_harness import Harness, HEIGHT, SHARED, WIDTH
import numpy as np
import pytest


def _spin_until(executor, predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Spin ``executor`` until ``predicate()`` is true or ``timeout`` seconds pass.

    Returns:
        The predicate's final value, so ``assert spin_until(...)`` reads naturally.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        executor.spin_once(timeout_sec=0.01)
    return bool(predicate())


@pytest.fixture(scope='session')
def spin_until():
    """Provide the helper: spin an executor until a predicate holds (see ``_spin_until``)."""
    return _spin_until


@pytest.fixture(scope='session')
def rclpy_session():
    """Initialise rclpy once (localhost-only, test domain), shut it down at the end."""
    assert os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] == 'LOCALHOST'
    assert 'ROS_LOCALHOST_ONLY' not in os.environ  # deprecated on Jazzy
    import rclpy

    rclpy.init()
    yield rclpy
    rclpy.try_shutdown()


@pytest.fixture
def executor(rclpy_session):
    """Give each test a SingleThreadedExecutor, like the node's ``main``."""
    from rclpy.executors import SingleThreadedExecutor

    ex = SingleThreadedExecutor()
    yield ex
    ex.shutdown(timeout_sec=5.0)


@pytest.fixture
def namespace():
    """Return a namespace unique to this test."""
    return f'/t{uuid.uuid4().hex[:10]}'


@pytest.fixture(scope='module')
def stereo_pair():
    """Load the real val stereo pair at 128x64, or generate images without ../shared."""
    base = SHARED / 'data' / 'cityscapes'
    left = base / 'leftImg8bit' / 'val' / 'frankfurt' / 'frankfurt_000000_009291_leftImg8bit.png'
    right = base / 'rightImg8bit' / 'val' / 'frankfurt' / \
        'frankfurt_000000_009291_rightImg8bit.png'
    if left.is_file() and right.is_file():
        images = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in (left, right)]
        return [cv2.resize(img, (WIDTH, HEIGHT), interpolation=cv2.INTER_AREA) for img in images]
    rng = np.random.default_rng(1)
    return [rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8) for _ in range(2)]


@pytest.fixture
def harness(executor, spin_until, namespace):
    made = []

    def make(**kwargs) -> Harness:
        h = Harness(executor, spin_until, namespace, **kwargs)
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()
