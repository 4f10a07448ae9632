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

"""Input helpers without spinning: QoS choice, loss counting, stamp and calibration checks."""

from cityseg_ros.ros.inputs import image_topic, SequenceGaps
from cityseg_ros.ros.messages import size_problem, stamp_problem
from cityseg_ros.ros.params import ros_hint
from cityseg_ros.ros.points import camera_info_problem
from cityseg_ros.ros.qos import choose_reliability, input_qos
from node_harness import camera_info
import pytest
from std_msgs.msg import Header


def test_auto_reliability_follows_the_publishers():
    reliable, best = input_qos('reliable'), input_qos('best_effort')
    assert choose_reliability([]) == ('best_effort', 'no publisher yet (best_effort hears '
                                      'either kind)', False)
    assert choose_reliability([reliable, reliable]) == ('reliable', '2 publishers, all '
                                                        'reliable', True)
    assert choose_reliability([reliable, best]) == ('best_effort', '2 publishers, 1 '
                                                    'best_effort', True)


def test_sequence_gaps_count_missing_frames_of_one_publisher():
    gaps = SequenceGaps()
    assert gaps.observe('left', 1, True) == 0  # first: nothing to compare with
    assert gaps.observe('left', 2, True) == 0
    assert gaps.observe('left', 7, True) == 4
    assert gaps.observe('left', 3, True) == 0  # the publisher restarted
    assert gaps.observe('left', 9, False) == 0  # two publishers: numbers interleave
    assert gaps.observe('left', None, True) == 0  # the middleware gives none
    assert gaps.observe('left', 12, True) == 0
    assert gaps.observe('right', 5, True) == 0


@pytest.mark.parametrize('sec,nanosec,problem', [
    (10, 5, None),
    (0, 1, None),
    (10, 1_000_000_000, 'nanosec 1000000000 is not below 1e9'),
    (-1, 0, 'sec -1 is negative'),
    (0, 0, 'does not stamp its images'),
])
def test_stamp_problems(sec, nanosec, problem):
    header = Header()
    header.stamp.sec, header.stamp.nanosec = sec, nanosec
    result = stamp_problem(header)
    assert result is None if problem is None else problem in result


def test_camera_info_problems():
    assert camera_info_problem(camera_info('left', 1)) is None
    bad = camera_info('left', 1)
    bad.k[0] = float('inf')
    assert 'K has non-finite values' in camera_info_problem(bad)
    bad = camera_info('left', 1)
    bad.p[3] = 1e300
    assert 'P has absurd values' in camera_info_problem(bad)
    bad = camera_info('left', 1)
    bad.height = 0
    assert 'size 128x0 is outside' in camera_info_problem(bad)
    # Kept and copied into every C/semantic/camera_info: a 16 MB D cost ~75 ms per frame.
    rich = camera_info('left', 1)
    rich.d, rich.distortion_model = [0.0] * 14, 'rational_polynomial'
    assert camera_info_problem(rich) is None
    bad = camera_info('left', 1)
    bad.d = [0.0] * 2_000_000
    assert 'D has 2000000 coefficients, more than the 64' in camera_info_problem(bad)
    bad = camera_info('left', 1)
    bad.distortion_model = 'x' * 100_000
    assert 'distortion_model is 100000 characters long' in camera_info_problem(bad)


@pytest.mark.parametrize('library,node', [
    ('/c/e.pth is not in the cache; run fetch_weights --model espnetv2 or pass --weights FILE',
     '/c/e.pth is not in the cache; run fetch_weights --model espnetv2 or set weights:=FILE'),
    ('--weights w.pth not found; run fetch_weights --model espnetv2 or pass a file',
     'weights:=w.pth not found; run fetch_weights --model espnetv2 or set weights:=FILE '
     '(-p weights:=FILE)'),
    ("model 'x' has no released weights, so --weights auto cannot work; train it and pass "
     '--weights FILE', "model 'x' has no released weights, so weights:=auto cannot work; train "
     'it and set weights:=FILE'),
    ('use --device cpu or --input-size 512x1024', 'use device:=cpu or input_height:=512 '
     'input_width:=1024'),
    ('unknown flag --frobnicate 3', 'unknown flag --frobnicate 3'),
])
def test_library_hints_become_parameter_hints(library, node):
    assert ros_hint(library) == node


def test_image_topics_follow_the_transport_and_sizes_are_checked_alike():
    assert image_topic('rear_left') == 'rear_left/image_rect_color'
    assert image_topic('cam/front', 'compressed') == 'cam/front/image_rect_color/compressed'
    assert size_problem(1920, 1080, 16) is None
    assert size_problem(8, 1080, 16)[0] == 'too_small'
    assert size_problem(20000, 100, 16)[0] == 'too_large'


@pytest.mark.parametrize('cameras,problem', [
    (['front', 'front_left', 'rear/left_1'], None),
    (['front', '1cam'], "'1cam' is not a relative ROS name"),
    (['front', 'a b'], "'a b' is not a relative ROS name"),
    (['front', '~x'], "'~x' is not a relative ROS name"),
    ([], 'must name 1 to 16 camera(s), got 0'),
])
def test_camera_lists_are_checked_with_reasons(cameras, problem):
    from cityseg_ros.ros.params import check_values, PARAMS
    values = {p.name: p.default for p in PARAMS}
    values['cameras'] = cameras
    problems = check_values(values)
    if problem is None:
        assert problems == []
    else:
        assert any(problem in p for p in problems), problems
