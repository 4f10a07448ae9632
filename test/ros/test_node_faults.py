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

"""The node under faults: time jumps, bad messages, point-cloud errors, silent failures.

Each test publishes real messages through rclpy and checks what comes out and what
``/diagnostics`` says; the node must recover by itself and never leave ``active``.
"""

import threading

from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from node_harness import (BEST_EFFORT, camera_info, make_image, now_ns, POINTS_PARAMS, RELIABLE,
                          StandIn)
import numpy as np
import pytest
from rclpy.parameter import Parameter
from rclpy.qos import ReliabilityPolicy
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CameraInfo, PointCloud2

S = 1_000_000_000
PERIOD = S // 30


def values(node):
    return {kv.key: kv.value for kv in node.diagnostics().values}


def stamp_of(msg) -> int:
    return msg.header.stamp.sec * S + msg.header.stamp.nanosec


def started(harness, **overrides):
    h = harness(factory=lambda p: StandIn(), overrides=overrides)
    h.listen('left/semantic/labels')
    h.start()
    h.wait_connected()
    return h


def pairs_until_output(h, stereo_pair, stamps, topic='left/semantic/labels'):
    """Publish one pair per stamp, each given a second to come out; return pairs needed."""
    for count, stamp in enumerate(stamps, 1):
        h.publish_pair(stereo_pair, stamp)
        if h.spin_until(lambda: any(stamp_of(m) == stamp for m in h.received[topic]),
                        timeout=2.0):
            return count
    return None


def wait_for_points_and_calibration(h, infos):
    """Wait until semantic/points has our subscriber and both CameraInfos reached the node."""
    assert h.spin_until(lambda: h.io.count_subscribers(f'{h.ns}/left/camera_info') == 1
                        and h.io.count_subscribers(f'{h.ns}/right/camera_info') == 1
                        and h.io.count_publishers(f'{h.ns}/semantic/points') == 1)
    h.spin_until(lambda: False, timeout=0.3)  # the cloud subscription matches both ways
    stamp = now_ns(h.io)
    for cam, pub in infos.items():
        pub.publish(camera_info(cam, stamp))
    assert h.spin_until(lambda: h.seg_node.counters.get('left_camera_info') == 1
                        and h.seg_node.counters.get('right_camera_info') == 1)


def calibrated_points_rig(harness, overrides, *listen):
    """Start a node whose semantic/points we subscribe to, calibrated; return (h, clouds)."""
    h = harness(factory=lambda p: StandIn(), overrides=overrides)
    clouds = []
    h.io.create_subscription(PointCloud2, 'semantic/points', clouds.append, RELIABLE)
    infos = {c: h.io.create_publisher(CameraInfo, f'{c}/camera_info', RELIABLE)
             for c in ('left', 'right')}
    h.listen(*listen)
    h.start()
    h.wait_connected()
    wait_for_points_and_calibration(h, infos)
    return h, clouds


# -- issue 11.1: time jumps -----------------------------------------------------------------------

def test_output_resumes_after_one_pair_stamped_far_in_the_future(harness, stereo_pair):
    h = started(harness)
    base = now_ns(h.io)
    assert pairs_until_output(h, stereo_pair, [base]) == 1
    assert pairs_until_output(h, stereo_pair, [base + 3600 * S]) == 1  # a bad driver clock
    later = [base + i * PERIOD for i in range(1, 6)]
    assert pairs_until_output(h, stereo_pair, later) <= 2
    node = h.seg_node
    assert node.state == 'active'
    diag = values(node)
    assert diag['time_jumps_back'] == '1' and diag['time_jumps_forward'] == '1'
    assert diag['last_time_jump'] in ('left stamps jumped back 3599.967 s',
                                      'right stamps jumped back 3599.967 s')
    assert 'recovered from a time jump (' in node.diagnostics().message


@pytest.mark.parametrize('jump_s', [-30.0, -0.5, 600.0])
def test_output_resumes_after_stamps_jump_like_a_bag_loop(harness, stereo_pair, jump_s):
    h = started(harness)
    base = now_ns(h.io) - 60 * S
    first = [base + i * PERIOD for i in range(3)]
    for stamp in first:
        assert pairs_until_output(h, stereo_pair, [stamp]) == 1
    restart = first[-1] + int(jump_s * S)
    assert pairs_until_output(h, stereo_pair, [restart + i * PERIOD for i in range(5)]) <= 2
    assert h.seg_node.state == 'active'


def test_sim_time_clock_jump_back_recovers_and_diagnostics_keep_coming(harness, stereo_pair):
    h = started(harness)
    node = h.seg_node
    clock = h.io.create_publisher(Clock, '/clock', 10)
    statuses = []
    name = f'{h.ns}/segment_node: semantic segmentation'
    h.io.create_subscription(DiagnosticArray, '/diagnostics', lambda m: statuses.extend(
        s for s in m.status if s.name == name), 10)

    def tick(t_ns):
        clock.publish(Clock(clock=Time(sec=t_ns // S, nanosec=t_ns % S)))

    assert node.set_parameters([Parameter('use_sim_time', value=True)])[0].successful
    sim = 5000 * S
    tick(sim)
    assert h.spin_until(lambda: node.get_clock().now().nanoseconds == sim)
    assert pairs_until_output(h, stereo_pair, [sim - 20 * 10**6]) == 1
    assert node.latency.percentile(50) == pytest.approx(20.0, abs=1.0)  # ms on the sim clock
    # The simulator resets: /clock and the stamps jump back 30 s.
    tick(sim - 30 * S)
    assert h.spin_until(lambda: node.get_clock().now().nanoseconds == sim - 30 * S)
    restart = sim - 30 * S
    assert pairs_until_output(h, stereo_pair, [restart + i * PERIOD for i in range(5)]) <= 2
    diag = values(node)
    assert int(diag['clock_jumps']) >= 2  # use_sim_time on, then the jump back
    assert diag['last_time_jump'] == 'ROS clock jumped back 30.000 s'
    # The ROS clock now stands still (/clock stopped): the diagnostics timer is steady.
    statuses.clear()
    assert h.spin_until(lambda: len(statuses) >= 2, timeout=4.0), 'diagnostics stopped'
    # Latency against the reset clock is new data, never minus 30 s.
    assert 0.0 <= node.latency.percentile(0) <= node.latency.percentile(100) < 60_000.0
    assert node.state == 'active'


def test_stamps_far_from_the_clock_stay_out_of_the_latency_statistics(harness, stereo_pair):
    h = started(harness)
    assert pairs_until_output(h, stereo_pair, [S * 1_000_000]) == 1  # a bag from 1970
    assert h.seg_node.latency.count == 0
    assert values(h.seg_node)['latency_excluded'] == '1'


# -- issue 11.2: point-cloud errors are the cloud's -----------------------------------------------

def test_point_cloud_error_is_not_a_segmentation_failure(harness, stereo_pair):
    overrides = dict(POINTS_PARAMS, stereo_disparity_range=256, points_downscale=2,
                     stereo_block_size=5)  # OpenCV refuses 256 disparities on 64 px
    h, clouds = calibrated_points_rig(harness, overrides, 'left/semantic/labels')
    node = h.seg_node
    stamp = now_ns(h.io)
    h.publish_pair(stereo_pair, stamp)
    assert h.spin_until(lambda: h.received['left/semantic/labels'])
    # The worker counts the pair as published after the cloud step: wait for both counters.
    assert h.spin_until(lambda: node.counters.get('points_failed') == 1
                        and node.counters.get('published_pairs') == 1)
    diag = values(node)
    assert diag['failed_pairs'] == '0' and diag['published_pairs'] == '1'
    assert diag['points_failed'] == '1' and diag['latency_p50_ms'] != 'n/a'
    assert not clouds and node.state == 'active'
    status = node.diagnostics()
    assert status.level == DiagnosticStatus.WARN
    assert 'semantic/points failed 1 times (labels published)' in status.message


def test_a_stereo_camera_that_stops_leaves_the_other_segmented_without_a_cloud(
        harness, stereo_pair):
    h, clouds = calibrated_points_rig(harness, dict(POINTS_PARAMS, camera_timeout_s=0.2),
                                      'left/semantic/labels', 'right/semantic/labels')
    node = h.seg_node
    base = now_ns(h.io)
    h.publish_pair(stereo_pair, base)
    assert h.spin_until(lambda: clouds and h.received['right/semantic/labels'])
    sent = 1
    while len(h.received['left/semantic/labels']) < 2 and sent < 40:  # right stops
        h.publish_pair(stereo_pair[:1], base + sent * PERIOD, cameras=('left',))
        h.spin_until(lambda: False, timeout=0.1)
        sent += 1
    assert len(h.received['left/semantic/labels']) >= 2, 'left stalled with right'
    assert sent - 1 >= 3 and len(h.received['right/semantic/labels']) == 1
    assert h.spin_until(lambda: node.counters.get('points_skipped', 0) >= 1)  # after labels
    assert len(clouds) == 1
    assert node.counters['right_left_out'] >= 1 and node.state == 'active'
    assert 'right left out of the groups' in node.diagnostics().message


# -- issue 11.3: never OK while input arrives and nothing comes out -------------------------------

@pytest.mark.parametrize('case,reason', [
    ('left_only', 'no right images arrive (3 left), so no pair can form (no partner; sync '
                  'exact waits camera_timeout_s=60 s, then segments the others'),
    ('unsynchronised', 'no partner: none of 6 images found a partner within '
                       'pair_tolerance_ms=5; the latest stamps differ by 20.0 ms'),
    ('no_subscribers', 'no subscribers: nobody subscribes to any output'),
])
def test_diagnostics_warn_with_the_reason_when_nothing_comes_out(harness, stereo_pair, case,
                                                                 reason):
    h = harness(factory=lambda p: StandIn(), overrides={'camera_timeout_s': 60.0})
    if case != 'no_subscribers':
        h.listen('left/semantic/labels')
    h.start()
    h.wait_connected()
    base = now_ns(h.io)
    for i in range(3):
        stamp = base + i * PERIOD
        if case == 'left_only':
            h.publish_pair(stereo_pair[:1], stamp, cameras=('left',))
        elif case == 'unsynchronised':
            h.publish_pair(stereo_pair[:1], stamp, cameras=('left',))
            h.publish_pair(stereo_pair[1:], stamp + 20 * 10**6, cameras=('right',))
        else:
            h.publish_pair(stereo_pair, stamp)
    node = h.seg_node
    key = {'left_only': 'left_images', 'unsynchronised': 'right_images',
           'no_subscribers': 'pairs'}[case]
    assert h.spin_until(lambda: node.counters.get(key) == 3)
    assert h.spin_until(lambda: (node.worker.stats.pending, node.worker.stats.busy) == (0, 0))
    status = node.diagnostics()
    assert status.level == DiagnosticStatus.WARN, status.message
    assert 'but nothing is published' in status.message
    assert reason in status.message, status.message


def test_lost_frames_are_counted_and_named(harness, stereo_pair):
    # Depth 1 and no spinning while 6 frames go out: the input queue keeps only the last.
    h = started(harness, input_depth=1)
    node = h.seg_node
    base = now_ns(h.io)
    h.publish_pair(stereo_pair[:1], base, cameras=('left',))
    assert h.spin_until(lambda: node.counters.get('left_images') == 1)
    for i in range(1, 7):
        h.publish_pair(stereo_pair[:1], base + i * PERIOD, cameras=('left',))
    assert h.spin_until(lambda: node.counters.get('left_lost', 0) >= 1)
    assert int(values(node)['lost_images']) == node.counters['left_lost']
    assert 'images lost before the node' in node._pairer.hint()


# -- issue 11.4: too small is rejected input ------------------------------------------------------

def test_images_under_the_minimum_size_are_rejected_not_failed(harness, stereo_pair):
    h = started(harness)
    tiny = [np.zeros((8, 12, 3), np.uint8)] * 2
    h.publish_pair(tiny, now_ns(h.io))
    node = h.seg_node
    assert h.spin_until(lambda: node.counters.get('rejected_too_small') == 2)
    assert h.spin_until(lambda: False, timeout=0.3) is False
    diag = values(node)
    assert diag['failed_pairs'] == '0' and diag['rejected_messages'] == '2'
    assert 'smaller than the 16 px' in diag['last_rejected']
    assert pairs_until_output(h, stereo_pair, [now_ns(h.io)]) == 1


# -- issue 11.6: stereo settings hand-over --------------------------------------------------------

def test_a_parameter_change_during_a_cloud_build_is_not_lost(harness, stereo_pair, monkeypatch):
    """The worker must never write back settings it built from values read before a change."""
    import importlib

    import cityseg_ros.ros.node as node_module
    import cityseg_ros.stereo as stereo
    try:
        points_module = importlib.import_module('cityseg_ros.ros.points')
    except ImportError:  # before the fix the node built the cloud itself
        points_module = node_module

    h = harness(factory=lambda p: StandIn(), overrides=dict(POINTS_PARAMS,
                                                            points_organized=True))
    clouds = []
    h.io.create_subscription(PointCloud2, 'semantic/points', clouds.append, RELIABLE)
    infos = {c: h.io.create_publisher(CameraInfo, f'{c}/camera_info', RELIABLE)
             for c in ('left', 'right')}
    h.start()
    node = h.seg_node
    worker = node.worker._name
    injected = []
    real = getattr(points_module, 'stereo_params', None) or node_module.stereo_params

    def racing_stereo_params(values):
        settings = real(values)  # the worker read the old values...
        if threading.current_thread().name == worker and not injected:
            injected.append(1)  # ...and now the change lands before it stores its result
            setter = threading.Thread(target=node.set_parameters,
                                      args=([Parameter('points_decimation', value=2)],))
            setter.start()
            setter.join()
        return settings

    monkeypatch.setattr(points_module, 'stereo_params', racing_stereo_params, raising=False)
    monkeypatch.setattr(node_module, 'stereo_params', racing_stereo_params, raising=False)
    real_cloud = stereo.semantic_cloud
    used = []

    def recording_cloud(left, right, labels, model, settings):
        used.append(settings.decimation)
        return real_cloud(left, right, labels, model, settings)

    monkeypatch.setattr(points_module, 'semantic_cloud', recording_cloud, raising=False)
    monkeypatch.setattr(node_module, 'semantic_cloud', recording_cloud, raising=False)
    wait_for_points_and_calibration(h, infos)
    stamp = now_ns(h.io)
    h.publish_pair(stereo_pair, stamp)
    assert h.spin_until(lambda: len(clouds) == 1)
    if not injected:  # the worker builds no settings: change them between the clouds
        assert node.set_parameters([Parameter('points_decimation', value=2)])[0].successful
    assert node.get_parameter('points_decimation').value == 2
    h.publish_pair(stereo_pair, stamp + PERIOD)
    assert h.spin_until(lambda: len(clouds) == 2)
    assert used[-1] == 2, used
    assert clouds[-1].height == 32  # organised: one row per 2 image rows


# -- hostile messages -----------------------------------------------------------------------------

def test_hostile_messages_are_counted_and_the_node_stays_active(harness, stereo_pair):
    h = started(harness)
    info_pub = h.io.create_publisher(CameraInfo, 'left/camera_info', RELIABLE)
    node = h.seg_node
    assert h.spin_until(lambda: node.count_subscribers(f'{h.ns}/left/camera_info') == 1)
    left = stereo_pair[0]
    base = now_ns(h.io)
    bad = []
    msg = make_image(left, base, 'left_optical')
    msg.header.stamp.nanosec = 1_500_000_000
    bad.append(msg)
    msg = make_image(left, base, 'left_optical')
    msg.header.stamp.sec = -5
    bad.append(msg)
    bad.append(make_image(left, 0, 'left_optical'))  # never stamped
    msg = make_image(left, base, 'left_optical')
    msg.width = msg.height = 2**32 - 1  # width * height overflows 32 and 64 bits of bytes
    msg.step = 2**32 - 1
    bad.append(msg)
    msg = make_image(left, base, 'left_optical')
    msg.height, msg.step = 1000, 2**31  # step * height = 2 TB, data 24 KB
    bad.append(msg)
    for msg in bad:
        h.pubs['left'].publish(msg)
    nan_info = camera_info('left', base)
    nan_info.p[0] = float('nan')
    huge_info = camera_info('left', base)
    huge_info.width = 2**32 - 1
    for msg in (nan_info, huge_info):
        info_pub.publish(msg)
    assert h.spin_until(lambda: node.counters.get('rejected', 0) == 7)
    counters = node.counters
    assert counters['rejected_bad_stamp'] == 3
    assert counters['rejected_too_large'] == 1 and counters['rejected_bad_image'] == 1
    assert counters['rejected_camera_info'] == 2
    assert counters.get('internal_errors', 0) == 0
    # A frame_id change is noted; output goes on with the new frame.
    h.publish_pair(stereo_pair, base + S, cameras=('left', 'right'))
    assert h.spin_until(lambda: h.received['left/semantic/labels'])
    renamed = [make_image(img, base + 2 * S, f'{cam}_renamed')
               for cam, img in zip(('left', 'right'), stereo_pair)]
    for cam, msg in zip(('left', 'right'), renamed):
        h.pubs[cam].publish(msg)
    assert h.spin_until(lambda: len(h.received['left/semantic/labels']) == 2)
    assert h.received['left/semantic/labels'][-1].header.frame_id == 'left_renamed'
    assert node.counters['frame_id_changes'] == 2
    assert node.state == 'active' and node.worker.running


def test_a_negative_clock_message_is_rejected_and_the_node_keeps_spinning(harness, stereo_pair):
    """Before: rclpy's /clock callback raised ValueError on sec < 0, ending spin and the node."""
    h = started(harness, use_sim_time=True)
    node = h.seg_node
    clock_pub = h.io.create_publisher(Clock, '/clock', BEST_EFFORT)
    assert h.spin_until(lambda: clock_pub.get_subscription_count() >= 1)
    good = Clock()
    good.clock.sec = 1000
    clock_pub.publish(good)
    assert h.spin_until(lambda: node.get_clock().now().nanoseconds == 1000 * S)
    bad = Clock()
    bad.clock.sec = -5
    clock_pub.publish(bad)  # before the fix: ValueError out of spin_once here
    assert h.spin_until(lambda: node.counters.get('rejected_bad_stamp') == 1)
    assert node.get_clock().now().nanoseconds == 1000 * S  # the clock stays where it was
    assert '/clock: clock -5 s 0 ns is not a time' in values(node)['last_rejected']
    assert pairs_until_output(h, stereo_pair, [1000 * S + i * PERIOD for i in range(3)]) == 1
    assert node.state == 'active' and node.counters.get('internal_errors', 0) == 0


def test_megabyte_strings_in_messages_give_short_log_lines_and_diagnostics(
        harness, stereo_pair, capfd):
    """A 1 MB frame_id or a 100 kB encoding was quoted whole in a log line and /diagnostics."""
    h = started(harness)
    node = h.seg_node
    base = now_ns(h.io)
    long_encoding = make_image(stereo_pair[0], base, 'left_optical', encoding='x' * 100_000)
    h.pubs['left'].publish(long_encoding)
    assert h.spin_until(lambda: node.counters.get('rejected_bad_image') == 1)
    last = values(node)['last_rejected']
    assert len(last) < 1200 and 'characters cut' in last, len(last)
    assert last.endswith('(republish through image_proc or convert on the camera driver)')
    huge_id = [make_image(img, base + S, f'{cam}_' + 'f' * (1 << 20))
               for cam, img in zip(('left', 'right'), stereo_pair)]
    for cam, msg in zip(('left', 'right'), huge_id):
        h.pubs[cam].publish(msg)
    assert h.spin_until(lambda: len(h.received['left/semantic/labels']) == 1)
    assert len(h.received['left/semantic/labels'][0].header.frame_id) == 5 + (1 << 20)
    assert pairs_until_output(h, stereo_pair, [base + 2 * S]) == 1  # frame_id changes back
    assert node.counters['frame_id_changes'] == 2
    err = capfd.readouterr().err
    assert 'frame_id changed from' in err and 'unsupported encoding' in err
    assert max(len(line) for line in err.splitlines()) < 2000


# -- issue 14.1: input_reliability auto -----------------------------------------------------------

def _node_reliability(h, cam='left'):
    infos = h.io.get_subscriptions_info_by_topic(f'{h.ns}/{cam}/image_rect_color')
    return [i.qos_profile.reliability for i in infos]


def test_auto_reliability_follows_the_publishers(harness, stereo_pair):
    from rclpy.lifecycle import TransitionCallbackReturn
    from sensor_msgs.msg import Image

    h = harness(factory=lambda p: StandIn(), overrides={'input_reliability': 'auto'})
    h.listen('left/semantic/labels')
    node = h.seg_node
    assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    # The harness's publishers are reliable: so is the subscription (large frames survive).
    assert h.spin_until(lambda: _node_reliability(h) == [ReliabilityPolicy.RELIABLE])
    h.wait_connected()
    assert pairs_until_output(h, stereo_pair, [now_ns(h.io)]) == 1
    # The camera is replaced by a best-effort driver: the node follows within a second or so.
    for cam in ('left', 'right'):
        h.io.destroy_publisher(h.pubs[cam])
        h.pubs[cam] = h.io.create_publisher(Image, f'{cam}/image_rect_color', BEST_EFFORT)
    assert h.spin_until(lambda: _node_reliability(h) == [ReliabilityPolicy.BEST_EFFORT]
                        and _node_reliability(h, 'right') == [ReliabilityPolicy.BEST_EFFORT],
                        timeout=5.0)
    h.wait_connected()
    assert pairs_until_output(h, stereo_pair, [now_ns(h.io) + i * PERIOD for i in range(3)])
    summary = values(node)['input_reliability']
    assert 'left/image_rect_color best_effort (1 publisher, 1 best_effort)' in summary
    assert int(values(node)['qos_changes']) >= 2
    assert node.counters.get('incompatible_qos', 0) == 0


def test_auto_reliability_without_publishers_waits_with_best_effort(harness):
    h = harness(factory=lambda p: StandIn(), overrides={'input_reliability': 'auto'})
    for cam in ('left', 'right'):
        h.io.destroy_publisher(h.pubs[cam])
    h.start()
    assert h.spin_until(lambda: _node_reliability(h) == [ReliabilityPolicy.BEST_EFFORT])
    assert 'no publisher yet' in values(h.seg_node)['input_reliability']


# -- issue 14.5: hints a node user can follow -----------------------------------------------------

def test_configure_errors_name_parameters_not_command_line_flags(harness):
    from cityseg_ros.errors import CheckpointError
    from rclpy.lifecycle import TransitionCallbackReturn

    def missing(params):
        raise CheckpointError('/cache/espnetv2.pth is not in the cache; run fetch_weights '
                              '--model espnetv2 or pass --weights FILE')

    h = harness(factory=missing)
    assert h.seg_node.trigger_configure() == TransitionCallbackReturn.FAILURE
    message = h.seg_node.diagnostics().message
    assert 'run fetch_weights --model espnetv2 or set weights:=FILE' in message
    assert '--weights' not in message


def test_a_camera_name_too_long_for_a_topic_fails_configure_with_a_reason(harness):
    """Before: rcl refused the topic, and rclpy made that a silent configure ERROR."""
    from rclpy.lifecycle import TransitionCallbackReturn

    built = []
    h = harness(factory=lambda p: built.append(p) or StandIn(),
                overrides={'cameras': ['x' * 300, 'left']})
    node = h.seg_node
    assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
    message = node.diagnostics().message
    assert "cameras: 'xxx" in message and 'which rcl refuses (' in message
    assert 'topic length should not exceed' in message
    assert 'use a shorter camera name or namespace' in message and len(message) < 1500
    assert not built and node.state == 'unconfigured'
    assert node.set_parameters([Parameter('cameras', value=['left'])])[0].successful
    assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS


def test_configure_log_lists_the_point_cloud_output(harness, capfd):
    h = harness(factory=lambda p: StandIn())
    h.start()
    err = capfd.readouterr().err
    assert "outputs ['C/semantic/labels', 'C/semantic/labels/compressed', " \
           "'C/semantic/camera_info', 'C/semantic/color', 'C/semantic/overlay', " \
           "'semantic/points']" in err, err
