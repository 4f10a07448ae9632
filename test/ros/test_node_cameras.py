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

"""N-camera rigs: every camera's outputs and headers, sync exact and none, dead cameras, fairness.

A vehicle's six cameras, small images of different sizes per camera (rigs mix resolutions),
through the real rclpy with the stand-in model.
"""

from diagnostic_msgs.msg import DiagnosticStatus
from node_harness import camera_info, expected_labels, make_image, now_ns, StandIn
import numpy as np
import pytest
from sensor_msgs.msg import CameraInfo, CompressedImage

RIG = ('front', 'front_left', 'front_right', 'rear', 'rear_left', 'rear_right')
#: (height, width) per camera: the side cameras are smaller, as on many vehicles.
SIZES = {cam: (64, 128) if cam in ('front', 'rear') else (48, 80) for cam in RIG}
S = 1_000_000_000


def values(node):
    return {kv.key: kv.value for kv in node.diagnostics().values}


def stamp_of(msg) -> int:
    return msg.header.stamp.sec * S + msg.header.stamp.nanosec


def rig_images(seed: int = 0):
    rng = np.random.default_rng(seed)
    return {cam: rng.integers(0, 256, (*SIZES[cam], 3), dtype=np.uint8) for cam in RIG}


def rig(harness, model, sync='exact', **overrides):
    h = harness(factory=lambda p: model, cameras=RIG,
                overrides={'cameras': list(RIG), 'sync': sync, **overrides})
    return h


@pytest.mark.parametrize('sync', ['exact', 'none'])
def test_six_cameras_each_get_their_outputs_with_their_header_and_size(harness, sync):
    model = StandIn()
    h = rig(harness, model, sync)
    outputs = ('labels', 'color', 'overlay')
    h.listen(*[f'{cam}/semantic/{out}' for cam in RIG for out in outputs])
    h.listen(*[f'{cam}/semantic/labels/compressed' for cam in RIG], msg_type=CompressedImage)
    h.listen(*[f'{cam}/semantic/camera_info' for cam in RIG], msg_type=CameraInfo)
    infos = {cam: h.io.create_publisher(CameraInfo, f'{cam}/camera_info', 10) for cam in RIG}
    h.start()
    h.wait_connected(cameras=RIG)
    node = h.seg_node
    assert h.spin_until(lambda: all(node.count_subscribers(f'{h.ns}/{c}/camera_info')
                                    for c in RIG))
    assert h.spin_until(lambda: all(p.get_subscription_count() for p in infos.values()))
    stamp = now_ns(h.io)
    for cam, pub in infos.items():
        info = camera_info(cam, stamp - S)  # calibration stamps are not matched
        info.height, info.width = SIZES[cam]
        pub.publish(info)
    assert h.spin_until(lambda: all(node.counters.get(f'{c}_camera_info') for c in RIG))
    images = rig_images()
    for cam in RIG:
        h.pubs[cam].publish(make_image(images[cam], stamp, f'{cam}_optical'))
    topics = list(h.subs)
    assert h.spin_until(lambda: all(h.received[t] for t in topics)), \
        [t for t in topics if not h.received[t]]

    for cam in RIG:
        height, width = SIZES[cam]
        for out in ('labels', 'labels/compressed', 'camera_info', 'color', 'overlay'):
            msg = h.received[f'{cam}/semantic/{out}'][0]
            assert msg.header.frame_id == f'{cam}_optical', (cam, out)
            assert stamp_of(msg) == stamp, (cam, out)
            if out not in ('labels/compressed',):
                assert (msg.height, msg.width) == (height, width), (cam, out)
        labels = np.frombuffer(h.received[f'{cam}/semantic/labels'][0].data, np.uint8)
        np.testing.assert_array_equal(labels.reshape(height, width),
                                      expected_labels(images[cam]))
    assert sum(n for n, _ in model.calls) == 6
    if sync == 'exact':
        assert model.calls == [(6, False)]  # one group, one batch
    diag = values(node)
    assert diag['cameras'] == ','.join(RIG) and diag['sync'] == sync
    for cam in RIG:
        assert diag[f'{cam}/dropped'] == '0'
    assert node.published == {f'{cam}/{out}': 1 for cam in RIG for out in (
        'labels', 'labels/compressed', 'camera_info', 'color', 'overlay')}


def test_a_dead_camera_stalls_sync_exact_without_timeout_and_diagnostics_name_it(harness):
    h = rig(harness, StandIn(), camera_timeout_s=0.0)
    h.listen('front/semantic/labels')
    h.start()
    h.wait_connected(cameras=RIG)
    images = rig_images()
    base = now_ns(h.io)
    for i in range(3):
        for cam in RIG[:-1]:  # rear_right sends nothing
            h.pubs[cam].publish(make_image(images[cam], base + i * S // 30, f'{cam}_optical'))
    node = h.seg_node
    assert h.spin_until(lambda: node.counters.get('rear_left_images') == 3)
    h.spin_until(lambda: False, timeout=0.2)
    assert not h.received['front/semantic/labels']
    status = node.diagnostics()
    assert status.level == DiagnosticStatus.WARN
    assert 'no rear_right images arrive (3 front' in status.message, status.message
    assert 'so no stamp group can form' in status.message
    assert 'camera_timeout_s=0 waits for every camera' in status.message
    assert node.counters['partial_groups'] == 0


def test_a_dead_camera_is_left_out_of_sync_exact_groups_and_comes_back(harness):
    model = StandIn()
    h = rig(harness, model, camera_timeout_s=0.3)
    h.listen(*[f'{cam}/semantic/labels' for cam in RIG])
    h.start()
    h.wait_connected(cameras=RIG)
    images = rig_images()
    node = h.seg_node
    base = now_ns(h.io)

    def send(i, cams):
        for cam in cams:
            h.pubs[cam].publish(make_image(images[cam], base + i * S // 10, f'{cam}_optical'))

    send(0, RIG)  # a full group first
    assert h.spin_until(lambda: all(h.received[f'{c}/semantic/labels'] for c in RIG))
    # rear_right stops: the others wait camera_timeout_s and 3 of their frames, then go on.
    i = 1
    while not len(h.received['front/semantic/labels']) > 1 and i < 60:
        send(i, RIG[:-1])
        h.spin_until(lambda: False, timeout=0.1)
        i += 1
    assert len(h.received['front/semantic/labels']) > 1, 'the others never went on'
    assert i - 1 >= 3  # never before three frames of the others
    assert all(len(h.received[f'{c}/semantic/labels']) > 1 for c in RIG[:-1])
    assert len(h.received['rear_right/semantic/labels']) == 1
    assert model.calls[-1] == (5, False)  # one batch of the five live cameras
    counts = node.counters
    assert counts['partial_groups'] >= 1 and counts['rear_right_left_out'] >= 1
    assert counts['front_left_out'] == 0
    status = node.diagnostics()
    assert status.level == DiagnosticStatus.WARN, status.message
    assert 'rear_right left out of the groups: no images for camera_timeout_s=0.3 s' \
        in status.message
    assert values(node)['rear_right/left_out'] == str(counts['rear_right_left_out'])
    # It sends again: from its second frame on (the first may meet a group formed without
    # it), whole groups, all six cameras in one batch.
    for i in range(i + 1, i + 3):
        send(i, RIG)
        h.spin_until(lambda: False, timeout=0.1)
    assert h.spin_until(lambda: len(h.received['rear_right/semantic/labels']) >= 2)
    assert model.calls[-1] == (6, False) and node.state == 'active'


def test_a_camera_that_flaps_out_and_back_is_logged_throttled(harness, capfd):
    """A camera slower than camera_timeout_s went out and back at its rate: 2 lines each time."""
    h = harness(factory=lambda p: StandIn(), overrides={'camera_timeout_s': 0.01})
    h.listen('left/semantic/labels')
    h.start()
    h.wait_connected()
    image = np.zeros((64, 128, 3), np.uint8)
    base = now_ns(h.io)
    capfd.readouterr()
    for i in range(60):
        stamp = base + i * S // 30
        h.pubs['left'].publish(make_image(image, stamp, 'left_optical'))
        if i % 5 == 0:  # right at a fifth of left's rate: left out and back every 5 frames
            h.pubs['right'].publish(make_image(image, stamp, 'right_optical'))
        h.spin_until(lambda: False, timeout=0.02)
    assert h.seg_node.counters['right_left_out'] >= 10
    err = capfd.readouterr().err
    assert 1 <= err.count('no images from right for 0.01 s') <= 2, err
    assert err.count('right sends again: back in the groups') <= 2, err


def test_a_dead_camera_with_sync_none_leaves_the_others_flowing(harness):
    h = rig(harness, StandIn(), sync='none')
    h.listen(*[f'{cam}/semantic/labels' for cam in RIG])
    h.start()
    h.wait_connected(cameras=RIG)
    images = rig_images()
    base = now_ns(h.io)
    for i in range(3):
        for cam in RIG[:-1]:
            h.pubs[cam].publish(make_image(images[cam], base + i * S // 30 + 1000 * RIG.index(cam),
                                           f'{cam}_optical'))
        assert h.spin_until(lambda: all(len(h.received[f'{c}/semantic/labels']) > i
                                        for c in RIG[:-1]))
    node = h.seg_node
    status = node.diagnostics()
    assert status.level == DiagnosticStatus.WARN, status.message
    assert status.message.startswith('segmenting at')
    assert 'no images from rear_right' in status.message
    assert not h.received['rear_right/semantic/labels']
    diag = values(node)
    assert float(diag['front/output_hz']) > 0 and diag['rear_right/output_hz'] == '0.00'


def test_sync_none_with_a_slow_model_serves_every_camera_alike_and_counts_drops(harness):
    """Six free-running cameras at 20 Hz each, a model at ~8 batches/s: no camera starves."""
    model = StandIn(delay=0.12)
    h = rig(harness, model, sync='none', input_depth=2)
    h.listen(*[f'{cam}/semantic/labels' for cam in RIG])
    h.start()
    h.wait_connected(cameras=RIG)
    images = rig_images()
    messages = {cam: make_image(images[cam], 1, f'{cam}_optical') for cam in RIG}
    sent = []

    def tick():  # each camera at its own phase: stamps never line up
        base = now_ns(h.io)
        for i, cam in enumerate(RIG):
            msg = messages[cam]
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(base + i * 7_000_000, S)
            h.pubs[cam].publish(msg)
        sent.append(base)

    timer = h.io.create_timer(0.05, tick)
    h.spin_until(lambda: len(sent) >= 40, timeout=20.0)
    h.io.destroy_timer(timer)
    node = h.seg_node
    h.spin_until(lambda: (node.worker.stats.pending, node.worker.stats.busy) == (0, 0))
    h.spin_until(lambda: False, timeout=0.3)
    out = {cam: len(h.received[f'{cam}/semantic/labels']) for cam in RIG}
    assert min(out.values()) >= 3, out
    assert max(out.values()) <= 1.2 * min(out.values()), out  # within 20 % of each other
    counters = node.counters
    for cam in RIG:
        assert counters[f'{cam}_segmented'] == out[cam]
        received = counters[f'{cam}_images']
        # Every frame is segmented, replaced while waiting (dropped) or still waiting.
        assert received - out[cam] - counters[f'{cam}_dropped'] in (0, 1), cam
        assert counters[f'{cam}_dropped'] > 0  # the cameras outran the model
    diag = values(node)
    assert all(int(diag[f'{cam}/dropped']) == counters[f'{cam}_dropped'] for cam in RIG)
    assert np.mean([n for n, _ in model.calls]) > 4  # mostly all six in one batch
    print(f'outputs per camera {out}; batches {len(model.calls)}')


def test_sync_exact_stamps_of_a_group_differ_by_at_most_the_tolerance(harness):
    h = rig(harness, StandIn(), pair_tolerance_ms=5.0)
    h.listen('front/semantic/labels', 'rear_right/semantic/labels')
    h.start()
    h.wait_connected(cameras=RIG)
    images = rig_images()
    base = now_ns(h.io)
    for i, cam in enumerate(RIG):  # within 5 ms of front: one group
        h.pubs[cam].publish(make_image(images[cam], base + i * 900_000, f'{cam}_optical'))
    assert h.spin_until(lambda: h.received['front/semantic/labels']
                        and h.received['rear_right/semantic/labels'])
    # Each output carries its own camera's stamp, not the group's reference stamp.
    assert stamp_of(h.received['rear_right/semantic/labels'][0]) == base + 5 * 900_000
    assert stamp_of(h.received['front/semantic/labels'][0]) == base


def test_sync_none_rate_limit_gives_whole_batches_at_the_rate(harness):
    """Frames held back by max_rate_hz wait and join the next batch: no camera is left out."""
    model = StandIn()
    h = rig(harness, model, sync='none', max_rate_hz=4.0)
    h.listen(*[f'{cam}/semantic/labels' for cam in RIG])
    h.start()
    h.wait_connected(cameras=RIG)
    images = rig_images()
    messages = {cam: make_image(images[cam], 1, f'{cam}_optical') for cam in RIG}
    ticks = []

    def tick():
        base = now_ns(h.io)
        for i, cam in enumerate(RIG):
            messages[cam].header.stamp.sec, messages[cam].header.stamp.nanosec = divmod(
                base + i * 3_000_000, S)
            h.pubs[cam].publish(messages[cam])
        ticks.append(base)

    timer = h.io.create_timer(0.05, tick)
    start = now_ns(h.io)
    h.spin_until(lambda: len(ticks) >= 30, timeout=20.0)
    h.io.destroy_timer(timer)
    elapsed_s = (now_ns(h.io) - start) / S
    h.spin_until(lambda: False, timeout=0.3)
    assert len(model.calls) <= 4.0 * elapsed_s + 2, (len(model.calls), elapsed_s)
    sizes = [n for n, _ in model.calls]
    assert len(sizes) >= 2 and np.mean(sizes[1:]) > 5, sizes  # after the first: all six
    out = {cam: len(h.received[f'{cam}/semantic/labels']) for cam in RIG}
    assert max(out.values()) - min(out.values()) <= 1, out
