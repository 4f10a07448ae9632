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

"""LatestFrames (sync none): newest frame per camera, one ticket at a time, drops per camera."""

import threading

from cityseg_ros.camera_group import LatestFrames
import pytest

CAMS = ('front', 'front_left', 'front_right', 'rear', 'rear_left', 'rear_right')


def test_one_ticket_until_the_worker_takes_the_batch():
    latest = LatestFrames(CAMS)
    assert latest.put('rear', 'r0') is True  # the first frame asks for a ticket
    assert latest.put('front', 'f0') is False  # joins the waiting batch
    assert latest.put('rear', 'r1') is False  # replaces r0: dropped for rear
    assert latest.take() == {'front': 'f0', 'rear': 'r1'}  # camera order, newest frames
    assert latest.dropped() == dict.fromkeys(CAMS, 0) | {'rear': 1}
    assert latest.taken()['rear'] == 1 and latest.taken()['front'] == 1
    assert latest.take() == {}
    assert latest.put('front', 'f1') is True  # a new batch, a new ticket


def test_a_frame_held_back_by_the_rate_waits_and_a_later_one_asks_for_the_ticket():
    latest = LatestFrames(CAMS[:2])
    assert latest.put('front', 'f0', ready=False) is False
    assert latest.put('front_left', 'l0', ready=True) is True
    assert latest.take() == {'front': 'f0', 'front_left': 'l0'}


def test_newest_survives_take_and_clear_counts_what_waited():
    latest = LatestFrames(CAMS[:2], keep_newest=CAMS[:2])
    latest.put('front', 'f0')
    assert latest.take() == {'front': 'f0'}
    assert latest.newest('front') == 'f0' and latest.newest('front_left') is None
    latest.put('front_left', 'l0')
    assert LatestFrames(CAMS[:2]).newest('front') is None  # kept only when asked for
    latest.clear()
    assert latest.dropped()['front_left'] == 1 and latest.newest('front') is None
    assert latest.put('front', 'f1') is True  # clear() also forgets an outstanding ticket


def test_unknown_cameras_and_bad_lists_are_refused():
    latest = LatestFrames(CAMS)
    with pytest.raises(KeyError, match="unknown camera 'side'"):
        latest.put('side', 'x')
    with pytest.raises(ValueError, match='unique'):
        LatestFrames(['a', 'a'])
    with pytest.raises(ValueError, match='not empty'):
        LatestFrames([])


def test_six_cameras_at_different_rates_into_a_slow_consumer_none_starves():
    """Every batch holds each camera that sent since the last one: outputs follow inputs."""
    latest = LatestFrames(CAMS)
    tickets = threading.Semaphore(0)
    stop = threading.Event()
    batches = []

    def camera(name: str, period_s: float) -> None:
        i = 0
        while not stop.wait(period_s):
            if latest.put(name, (name, i)):
                tickets.release()
            i += 1

    def worker() -> None:
        while not stop.is_set():
            if tickets.acquire(timeout=0.05):
                batches.append(latest.take())
                stop.wait(0.03)  # a model slower than every camera

    threads = [threading.Thread(target=camera, args=(name, 0.004 * (1 + i % 3)))
               for i, name in enumerate(CAMS)] + [threading.Thread(target=worker)]
    for thread in threads:
        thread.start()
    stop.wait(0.6)
    stop.set()
    for thread in threads:
        thread.join()
    per_camera = {cam: sum(cam in batch for batch in batches) for cam in CAMS}
    assert len(batches) >= 5
    # In (almost) every batch; half leaves room for a loaded machine's scheduling.
    assert min(per_camera.values()) >= len(batches) // 2, (per_camera, len(batches))
    taken, dropped = latest.taken(), latest.dropped()
    assert all(dropped[cam] > 0 for cam in CAMS)  # faster than the model: newest wins
    assert taken == per_camera
