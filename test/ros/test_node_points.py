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

"""semantic/points from the live node: published when calibrated, explained when not."""

from cityseg_ros.ros.pointcloud import POINT_STEP
from node_harness import camera_info, now_ns, POINTS_PARAMS, RELIABLE, StandIn
import pytest
from sensor_msgs.msg import CameraInfo, PointCloud2


@pytest.fixture
def points_harness(harness):
    h = harness(factory=lambda params: StandIn(), overrides=dict(POINTS_PARAMS))
    h.clouds = []
    sub = h.io.create_subscription(PointCloud2, 'semantic/points', h.clouds.append, RELIABLE)
    h.info_pubs = {cam: h.io.create_publisher(CameraInfo, f'{cam}/camera_info', RELIABLE)
                   for cam in ('left', 'right')}
    h.listen(f'{h.ns}/left/semantic/labels')
    h.start()
    h.wait_connected()
    # Matched both ways: the node computes the cloud, and our reader receives the first one.
    assert h.spin_until(lambda: h.seg_node._points.wanted() and sub.get_publisher_count() >= 1)
    return h


def test_points_are_published_with_the_left_header(points_harness, stereo_pair):
    h = points_harness
    stamp = now_ns(h.io)
    for cam, pub in h.info_pubs.items():
        pub.publish(camera_info(cam, stamp))
    assert h.spin_until(lambda: all(h.seg_node._points.has_camera_info(c)
                                    for c in ('left', 'right')))
    h.publish_pair(stereo_pair, stamp)  # right is paired for the cloud, not segmented
    assert h.spin_until(lambda: h.clouds)
    cloud = h.clouds[0]
    assert cloud.header.frame_id == 'left_optical'
    assert cloud.header.stamp.sec * 10**9 + cloud.header.stamp.nanosec == stamp
    assert [f.name for f in cloud.fields] == ['x', 'y', 'z', 'rgb', 'label']
    assert cloud.point_step == POINT_STEP and cloud.width * cloud.height > 100
    # Published before the cloud, but topics are delivered independently.
    assert h.spin_until(lambda: h.received[f'{h.ns}/left/semantic/labels'])


def test_no_camera_info_skips_points_but_labels_flow(points_harness, stereo_pair):
    h = points_harness
    h.publish_pair(stereo_pair, now_ns(h.io))
    assert h.spin_until(lambda: h.received[f'{h.ns}/left/semantic/labels'])
    assert h.spin_until(lambda: h.seg_node.counters.get('points_skipped', 0) >= 1)
    assert not h.clouds


def test_zero_baseline_is_refused(points_harness, stereo_pair):
    h = points_harness
    stamp = now_ns(h.io)
    for cam, pub in h.info_pubs.items():
        pub.publish(camera_info('left', stamp))  # right with tx = 0: no baseline
    assert h.spin_until(lambda: all(h.seg_node._points.has_camera_info(c)
                                    for c in ('left', 'right')))
    h.publish_pair(stereo_pair, stamp)
    assert h.spin_until(lambda: h.seg_node.counters.get('points_skipped', 0) >= 1)
    assert not h.clouds


def test_points_parameters_are_checked(points_harness):
    from rclpy.parameter import Parameter
    node = points_harness.seg_node
    result = node.set_parameters([Parameter('stereo_block_size', value=4)])[0]
    assert not result.successful and 'block_size' in result.reason
    result = node.set_parameters([Parameter('points_decimation', value=2)])[0]
    assert result.successful and node._points.settings.decimation == 2
