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

"""LivePairer: a camera that stops is left out of sync exact groups, on a clock of our own."""

from cityseg_ros.ros.pairs import LivePairer
import pytest
from std_msgs.msg import Header

MS = 1_000_000


class Log:
    def __init__(self):
        self.lines = []

    def warning(self, text, **kwargs):
        self.lines.append(('warning', text))

    def info(self, text, **kwargs):
        self.lines.append(('info', text))


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def pairer(timeout_s=1.0, cameras=('left', 'right')):
    clock, log = Clock(), Log()
    live = LivePairer(cameras, 5.0, log, count=lambda key: None, lost=lambda: 0,
                      camera_timeout_s=timeout_s, clock=clock)
    return live, clock, log


def push(live, camera, stamp_ms):
    return live.push(camera, Header(frame_id=camera), stamp_ms * MS, f'{camera}{stamp_ms}',
                     f'/{camera}/image_rect_color')


def test_a_steady_slow_pair_is_never_split():
    live, clock, _ = pairer(timeout_s=1.0)
    for second in range(10):  # 0.2 Hz: far longer than the timeout between frames
        clock.now = 5.0 * second
        assert push(live, 'left', 1000 * second) is None
        clock.now += 0.01
        assert set(push(live, 'right', 1000 * second).items) == {'left', 'right'}
    assert live.counters()['partial_groups'] == 0 and live.left_out == ()


def test_one_lost_frame_is_waited_for_not_left_out():
    live, clock, _ = pairer(timeout_s=0.0 + 0.05)
    clock.now = 10.0
    for stamp in (0, 100):  # right loses two frames in a row: fewer than three
        assert push(live, 'left', stamp) is None
        clock.now += 0.1
    assert live.left_out == ()


@pytest.mark.parametrize('timeout_s,frames_until_alone', [(1.0, 10), (0.05, 3), (0.0, None)])
def test_a_stopped_camera_is_left_out_after_the_timeout_and_three_frames(
        timeout_s, frames_until_alone):
    live, clock, log = pairer(timeout_s=timeout_s)
    clock.now = 0.0
    push(live, 'left', 0)
    assert push(live, 'right', 0) is not None
    alone = None
    for i in range(1, 20):  # 10 Hz of left only
        clock.now = i * 0.1
        matched = push(live, 'left', 100 * i)
        if matched is not None:
            alone = i
            assert matched.items == {'left': f'left{100 * i}'}
            break
    assert alone == frames_until_alone
    if alone is None:
        assert live.counters()['partial_groups'] == 0
        return
    assert live.left_out == ('right',)
    counts = live.counters()
    assert counts['partial_groups'] == 1 and counts['right_left_out'] == 1
    assert counts['left_left_out'] == 0
    assert [kind for kind, text in log.lines if 'segmenting the other cameras' in text] == \
        ['warning']
    # right sends again: back in the groups at once.
    clock.now += 0.1
    assert push(live, 'right', 100 * alone + 100) is None
    assert live.left_out == ()
    assert set(push(live, 'left', 100 * alone + 100).items) == {'left', 'right'}
    assert ('info', 'right sends again: back in the groups') in log.lines


def test_a_camera_that_never_sent_is_left_out_from_configure_on():
    live, clock, _ = pairer(timeout_s=1.0)
    results = []
    for i in range(5):
        clock.now = 0.5 * i
        results.append(push(live, 'left', 500 * i))
    assert results[:2] == [None, None] and results[2].items == {'left': 'left1000'}
