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

"""The diagnostics judgement without spinning: never OK while input arrives and nothing leaves."""

from cityseg_ros.ros.diagnostics import (assess, CounterWindow, ERROR, Facts, OK, WARN,
                                         window_seconds)
import pytest

CAMS = ('left', 'right')


def facts(delta, **kwargs):
    kwargs.setdefault('state', 'active')
    return Facts(cameras=CAMS, window_s=3.0, delta=delta, tolerance_ms=5.0, **kwargs)


def flowing(**extra):
    return dict({'left_images': 90, 'right_images': 90, 'pairs': 90, 'submitted': 90,
                 'published_pairs': 30}, **extra)


def test_output_flowing_is_ok_with_the_rate():
    assert assess(facts(flowing())) == (OK, 'segmenting at 10.00 Hz')


def test_error_and_inactive_states_come_first():
    assert assess(facts(flowing(), error='configure failed: x'))[0] == ERROR
    assert assess(facts(flowing(), state='inactive')) == (WARN, 'inactive: not segmenting')


@pytest.mark.parametrize('delta,extra,reason', [
    ({'left_images': 30}, {}, 'no right images arrive (30 left), so no pair can form'),
    ({'left_images': 30}, {'camera_timeout_s': 1.0},
     'sync exact waits camera_timeout_s=1 s, then segments the others'),
    ({'left_images': 30}, {'reliability': {'right': 'best_effort'}, 'publishers': {'right': 1}},
     'best_effort input loses large images in transport'),
    ({'left_images': 30, 'right_images': 30, 'rejected': 60}, {'last_reject': 'left: bad'},
     'every pair is rejected (60 inputs), latest: left: bad'),
    ({'left_images': 30, 'right_images': 30, 'unpaired': 50}, {'stamp_gap_ms': 20.0},
     'no partner: none of 60 images found a partner within pair_tolerance_ms=5; the latest '
     'stamps differ by 20.0 ms; synchronise the cameras'),
    ({'left_images': 30, 'right_images': 10, 'left_lost': 20},
     {'reliability': {'left': 'best_effort', 'right': 'best_effort'}},
     'no partner: none of 40 images found a partner within pair_tolerance_ms=5; 20 images '
     'lost before the node: best_effort input loses large images'),
    ({'left_images': 30, 'right_images': 30, 'pairs': 30, 'rate_limited': 30},
     {'max_rate_hz': 0.1}, 'rate limit: max_rate_hz=0.1 skipped all 30 pairs'),
    ({'left_images': 30, 'right_images': 30, 'pairs': 30, 'submitted': 30,
      'skipped_no_subscribers': 30}, {}, 'no subscribers: nobody subscribes to any output'),
    ({'left_images': 30, 'right_images': 30, 'pairs': 30, 'submitted': 30, 'failed': 30},
     {'last_error': 'MemoryError()'}, 'segmentation failed 30 times, latest: MemoryError()'),
    ({'left_images': 30, 'right_images': 30, 'pairs': 30, 'submitted': 30}, {'busy_for_s': 7.5},
     'the model has been busy on one pair for 7.5 s'),
])
def test_input_without_output_is_a_warning_that_says_why(delta, extra, reason):
    level, message = assess(facts(delta, **extra))
    assert level == WARN
    images = sum(v for k, v in delta.items() if k.endswith('_images'))
    assert message.startswith(f'input arrives ({images} images in 3 s) but nothing is '
                              'published: ')
    assert reason in message, message


def test_no_input():
    assert assess(facts({})) == (OK, 'waiting for images on left/image_rect_color, '
                                     'right/image_rect_color')
    level, message = assess(facts({}, images_ever=100))
    assert level == WARN and message.startswith('images stopped')
    level, message = assess(facts({}, publishers={'left': 1, 'right': 1},
                                  reliability={'left': 'best_effort', 'right': 'best_effort'}))
    assert level == WARN and 'have publishers' in message
    # LARGE_DATA alone lost every 2-megapixel best-effort frame here: the hint is the profile.
    assert 'FASTRTPS_DEFAULT_PROFILES_FILE=config/fastdds_large_images.xml' in message
    assert 'LARGE_DATA' not in message
    level, message = assess(facts({'incompatible_qos': 2}))
    assert level == WARN and 'input_reliability:=auto' in message


def test_problems_while_output_flows_are_warnings_too():
    level, message = assess(facts(flowing(failed=1, rejected=2, left_lost=3, points_failed=4,
                                          time_jumps=1), last_error='e', last_reject='r',
                                  last_jump='left stamps jumped back 30.000 s'))
    assert level == WARN
    assert message == ('segmenting at 10.00 Hz; 1 frame(s) failed, latest: e; 2 input(s) '
                       'rejected, latest: r; 3 images lost before the node; semantic/points '
                       'failed 4 times (labels published); recovered from a time jump (left '
                       'stamps jumped back 30.000 s)')


def test_counter_window_gives_deltas_over_at_least_the_window():
    window = CounterWindow(start=0.0)
    assert window.add(1.0, {'a': 5}) == (1.0, {'a': 5})
    assert window.add(2.0, {'a': 7}) == (2.0, {'a': 7})
    assert window.add(4.0, {'a': 10}) == (3.0, {'a': 5})  # base: the sample at 1.0
    assert window.add(4.5, {'a': 10}, seconds=1.0) == (2.5, {'a': 3})  # base at 2.0
    for t in range(5, 1000):
        window.add(float(t), {'a': t})
    assert len(window._samples) <= 128


def test_window_grows_for_slow_models_and_low_rates():
    assert window_seconds(None, 0.0) == 3.0
    assert window_seconds(4000.0, 0.0) == 8.0
    assert window_seconds(None, 0.25) == 8.0
    assert window_seconds(1e7, 0.0) == 60.0


def test_clock_jumps_are_named():
    from cityseg_ros.ros.diagnostics import describe_clock_jump
    assert describe_clock_jump('ROS_TIME_ACTIVATED', -5, 0).startswith('use_sim_time on')
    assert describe_clock_jump('ROS_TIME_DEACTIVATED', 5, 9).startswith('use_sim_time off')
    assert describe_clock_jump('ROS_TIME_NO_CHANGE', 30 * 10**9, 30 * 10**9) == (
        'first /clock message: ROS time starts at 30.000 s')
    assert describe_clock_jump('ROS_TIME_NO_CHANGE', -30 * 10**9, 70 * 10**9) == (
        'ROS clock jumped back 30.000 s')


def test_counter_values_cover_every_rejection_kind_and_sum_losses():
    from cityseg_ros.ros.diagnostics import counter_values, REJECT_KINDS
    values = counter_values({'rejected': 3, 'rejected_too_small': 2, 'left_lost': 4,
                             'right_lost': 1})
    assert values['rejected_messages'] == '3' and values['rejected_too_small'] == '2'
    assert values['lost_images'] == '5'
    assert all(values[f'rejected_{kind}'] for kind in REJECT_KINDS)


def test_a_camera_left_out_of_the_groups_is_a_warning_while_the_others_flow():
    level, message = assess(facts(flowing(right_images=10), left_out=('right',),
                                  camera_timeout_s=1.0))
    assert level == WARN
    assert message == ('segmenting at 10.00 Hz; right left out of the groups: no images for '
                       'camera_timeout_s=1 s (the other cameras are segmented)')
