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

"""Label spaces, semantic/camera_info and semantic/points on demand, through the live node."""

from pathlib import Path

from cityseg_ros.label_spaces import get_label_space
from cityseg_ros.render import colorize, overlay
from cityseg_ros.ros.messages import image_to_rgb
from cityseg_ros.ros.pointcloud import POINT_DTYPE
from node_harness import (camera_info, expected_labels, now_ns, POINTS_PARAMS, RELIABLE,
                          StandIn)
import numpy as np
import pytest
from rclpy.lifecycle import TransitionCallbackReturn
from sensor_msgs.msg import CameraInfo, PointCloud2

S = 1_000_000_000
EXAMPLE_MAP = Path(__file__).resolve().parents[2] / 'config' / 'label_map_example.yaml'


def stamp_of(msg) -> int:
    return msg.header.stamp.sec * S + msg.header.stamp.nanosec


@pytest.mark.parametrize('space,label_map', [
    ('trainid', ''), ('labelid', ''), ('category', ''), ('label_map', str(EXAMPLE_MAP)),
    ('trainid', str(EXAMPLE_MAP)),  # a label_map file selects itself
])
def test_labels_colours_and_overlay_follow_the_label_space(harness, stereo_pair, space,
                                                           label_map):
    h = harness(factory=lambda p: StandIn(),
                overrides={'label_space': space, 'label_map': label_map})
    h.listen('left/semantic/labels', 'left/semantic/color', 'left/semantic/overlay')
    h.start()
    h.wait_connected()
    h.publish_pair(stereo_pair, now_ns(h.io))
    assert h.spin_until(lambda: all(h.received[t] for t in h.subs))
    expected_space = get_label_space(space, label_map)
    train_ids = expected_labels(stereo_pair[0])
    ids = expected_space.map(train_ids)
    msg = h.received['left/semantic/labels'][0]
    np.testing.assert_array_equal(np.frombuffer(msg.data, np.uint8).reshape(train_ids.shape),
                                  ids)
    color = colorize(ids, palette=expected_space.palette)
    np.testing.assert_array_equal(image_to_rgb(h.received['left/semantic/color'][0]), color)
    np.testing.assert_array_equal(
        image_to_rgb(h.received['left/semantic/overlay'][0]),
        overlay(stereo_pair[0], ids, 0.5, palette=expected_space.palette,
                ignore_id=expected_space.ignore_id))
    diag = {kv.key: kv.value for kv in h.seg_node.diagnostics().values}
    assert diag['label_space'] == expected_space.name


def test_a_bad_label_map_fails_configure_with_the_file_and_the_reason(harness, tmp_path):
    bad = tmp_path / 'map.yaml'
    bad.write_text('ignore: {id: 0, name: x, color: [0, 0, 0]}\nclasses:\n'
                   '  - {id: 1, name: a, color: [1, 2, 3], train_ids: [road, 99]}\n')
    h = harness(factory=lambda p: StandIn(), overrides={'label_map': str(bad)})
    assert h.seg_node.trigger_configure() == TransitionCallbackReturn.FAILURE
    message = h.seg_node.diagnostics().message
    assert str(bad) in message and '99' in message and 'not a trainId' in message


def test_semantic_camera_info_is_the_input_info_with_the_labels_header(harness, stereo_pair):
    h = harness(factory=lambda p: StandIn())
    h.listen('left/semantic/labels')
    h.listen('left/semantic/camera_info', 'right/semantic/camera_info', msg_type=CameraInfo)
    infos = {c: h.io.create_publisher(CameraInfo, f'{c}/camera_info', RELIABLE)
             for c in ('left', 'right')}
    h.start()
    h.wait_connected()
    node = h.seg_node
    # No CameraInfo yet: labels flow, the info is counted as missing.
    h.publish_pair(stereo_pair, now_ns(h.io))
    assert h.spin_until(lambda: node.counters.get('camera_info_missing', 0) == 2)
    assert not h.received['left/semantic/camera_info']
    assert h.spin_until(lambda: all(p.get_subscription_count() for p in infos.values()))
    sent = {}
    for cam, pub in infos.items():
        sent[cam] = camera_info(cam, now_ns(h.io) - 3 * S)  # calibration from earlier
        sent[cam].header.frame_id = f'{cam}_calibration'
        pub.publish(sent[cam])
    assert h.spin_until(lambda: node.counters.get('right_camera_info') == 1)
    stamp = now_ns(h.io)
    h.publish_pair(stereo_pair, stamp)
    assert h.spin_until(lambda: h.received['left/semantic/camera_info']
                        and h.received['right/semantic/camera_info'])
    labels = h.received['left/semantic/labels'][-1]
    for cam in ('left', 'right'):
        info = h.received[f'{cam}/semantic/camera_info'][0]
        assert stamp_of(info) == stamp and info.header.frame_id == f'{cam}_optical'
        if cam == 'left':
            assert info.header == labels.header
        for field in ('k', 'p', 'r', 'd'):
            np.testing.assert_array_equal(getattr(info, field), getattr(sent[cam], field))
        assert (info.width, info.height, info.distortion_model) == (
            sent[cam].width, sent[cam].height, 'plumb_bob')


def test_points_come_on_demand_with_the_default_cameras(harness, stereo_pair):
    """No parameter to set: subscribing to semantic/points after activation is enough."""
    model = StandIn()
    overrides = {k: v for k, v in POINTS_PARAMS.items() if k != 'publish_color'}
    h = harness(factory=lambda p: model, overrides=overrides)
    infos = {c: h.io.create_publisher(CameraInfo, f'{c}/camera_info', RELIABLE)
             for c in ('left', 'right')}
    h.start()
    node = h.seg_node
    assert h.spin_until(lambda: all(p.get_subscription_count() for p in infos.values()))
    stamp = now_ns(h.io)
    for cam, pub in infos.items():
        pub.publish(camera_info(cam, stamp))
    assert h.spin_until(lambda: node.counters.get('right_camera_info') == 1)
    h.publish_pair(stereo_pair, stamp)  # nobody listens: nothing is computed
    assert h.spin_until(lambda: node.counters.get('skipped_no_subscribers') == 1)
    assert model.calls == [] and node._points.ms.count == 0

    clouds = []
    h.io.create_subscription(PointCloud2, 'semantic/points', clouds.append, RELIABLE)
    assert h.spin_until(lambda: node._points.wanted())
    h.spin_until(lambda: False, timeout=0.2)  # the cloud subscription matches both ways
    h.publish_pair(stereo_pair, stamp + S // 30)
    assert h.spin_until(lambda: clouds)
    assert model.calls == [(1, False)]  # only the left image: its labels make the cloud
    assert clouds[0].header.frame_id == 'left_optical'
    assert stamp_of(clouds[0]) == stamp + S // 30
    assert clouds[0].width * clouds[0].height > 100


def test_point_labels_and_colours_follow_the_label_space(harness, stereo_pair):
    space = get_label_space('category')
    h = harness(factory=lambda p: StandIn(), overrides=dict(
        POINTS_PARAMS, label_space='category', points_drop_classes=[10]))
    clouds = []
    h.io.create_subscription(PointCloud2, 'semantic/points', clouds.append, RELIABLE)
    infos = {c: h.io.create_publisher(CameraInfo, f'{c}/camera_info', RELIABLE)
             for c in ('left', 'right')}
    h.start()
    node = h.seg_node
    assert h.spin_until(lambda: node._points.wanted()
                        and all(p.get_subscription_count() for p in infos.values()))
    h.spin_until(lambda: False, timeout=0.2)
    stamp = now_ns(h.io)
    for cam, pub in infos.items():
        pub.publish(camera_info(cam, stamp))
    assert h.spin_until(lambda: node.counters.get('right_camera_info') == 1)
    h.publish_pair(stereo_pair, stamp)
    assert h.spin_until(lambda: clouds)
    points = np.frombuffer(bytes(clouds[0].data), POINT_DTYPE)
    train_ids = expected_labels(stereo_pair[0])
    allowed = set(space.lut[np.unique(train_ids[train_ids != 10])].tolist())
    assert len(points) > 100 and set(np.unique(points['label']).tolist()) <= allowed
    rgb = space.palette[points['label']].astype(np.uint32)
    np.testing.assert_array_equal(points['rgb'], (rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2])


def test_points_with_sync_none_need_stereo_stamps_within_the_tolerance(harness, stereo_pair):
    h = harness(factory=lambda p: StandIn(), overrides=dict(POINTS_PARAMS, sync='none'))
    clouds = []
    h.io.create_subscription(PointCloud2, 'semantic/points', clouds.append, RELIABLE)
    infos = {c: h.io.create_publisher(CameraInfo, f'{c}/camera_info', RELIABLE)
             for c in ('left', 'right')}
    h.start()
    node = h.seg_node
    assert h.spin_until(lambda: node._points.wanted()
                        and all(p.get_subscription_count() for p in infos.values()))
    h.spin_until(lambda: False, timeout=0.2)
    stamp = now_ns(h.io)
    for cam, pub in infos.items():
        pub.publish(camera_info(cam, stamp))
    assert h.spin_until(lambda: node.counters.get('right_camera_info') == 1)
    h.publish_pair(stereo_pair[1:], stamp, cameras=('right',))
    assert h.spin_until(lambda: node.counters.get('right_segmented', 0) == 0
                        and node.counters.get('right_images') == 1)
    h.publish_pair(stereo_pair[:1], stamp + 100_000_000, cameras=('left',))  # 100 ms later
    assert h.spin_until(lambda: node.counters.get('points_skipped', 0) == 1)
    assert not clouds
    h.publish_pair(stereo_pair[:1], stamp + 1_000_000, cameras=('left',))  # a fresh pair...
    h.publish_pair(stereo_pair[1:], stamp + 1_000_000, cameras=('right',))
    assert h.spin_until(lambda: clouds)  # ...within 5 ms: the newest right makes the cloud
