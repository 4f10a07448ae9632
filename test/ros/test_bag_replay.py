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

"""A JPEG stereo bag of real frames played into the node, its labels recorded and scored.

The whole path a user takes: ``make_bag --image-format jpeg``, a player that publishes the
bag's serialized messages as they are (as ``ros2 bag play`` does), the node with
``input_transport: compressed`` and the official ESPNetv2 weights, a recorder that writes the
node's serialized label messages into a bag beside the ground truth, and ``evaluate
--predictions-topic``. The recorded labels must score exactly as ``evaluate`` running the same
model on the same JPEG bag: one decoding and inference path.
"""

from cityseg_ros.bags import (BagReader, BagWriter, TOPIC_GT_INSTANCE_IDS, TOPIC_GT_LABEL_IDS,
                              TOPIC_LEFT_IMAGE, TOPIC_LEFT_INFO, TOPIC_RIGHT_IMAGE,
                              TOPIC_RIGHT_INFO)
from cityseg_ros.engine import Segmenter
from cityseg_ros.evaluation import BagEvaluator, EvalOptions
from node_harness import SHARED
import numpy as np
import pytest
from rclpy.serialization import deserialize_message, serialize_message
from rosbags.typesys import get_typestore, Stores
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

WEIGHTS = SHARED / 'data' / 'weights' / 'espnetv2' / 'espnetv2_s_2.0_city_1024x512.pth'
CITYSCAPES = SHARED / 'data' / 'cityscapes'
STAMP0 = 1_700_000_000_000_000_000
TYPESTORE = get_typestore(Stores.ROS2_JAZZY)
PLAYED = {  # bag topic -> (topic under the test namespace, rclpy type)
    f'{TOPIC_LEFT_IMAGE}/compressed': ('left/image_rect_color/compressed', CompressedImage),
    f'{TOPIC_RIGHT_IMAGE}/compressed': ('right/image_rect_color/compressed', CompressedImage),
    TOPIC_LEFT_INFO: ('left/camera_info', CameraInfo),
    TOPIC_RIGHT_INFO: ('right/camera_info', CameraInfo),
}
RECORDED = {  # node output under the namespace -> (bag topic, rclpy type)
    'left/semantic/labels': ('/stereo/left/semantic/labels', Image),
    'left/semantic/labels/compressed': ('/stereo/left/semantic/labels/compressed',
                                        CompressedImage),
}


def _stereo_frames():
    """Two real frames with ground truth; their right images are the left ones.

    ../shared's one real stereo pair has no ground truth, its GT frames no right image: the
    node needs both cameras, the score only the left.
    """
    from dataclasses import replace

    from cityseg_ros.tools.make_bag import find_frames

    if not (WEIGHTS.is_file() and CITYSCAPES.is_dir()):
        pytest.skip('../shared (ESPNetv2 weights, Cityscapes frames) is absent')
    frames = [f for f in find_frames(CITYSCAPES, 'train') if f.label_ids][:2]
    if len(frames) < 2:
        pytest.skip('../shared has fewer than two Cityscapes frames with ground truth')
    return [replace(f, right=f.right or f.left) for f in frames]


def _messages(bag, topic):
    """Yield (stamp_ns, CDR bytes) of a bag topic: what a player sends on the wire."""
    for record in bag.read_messages(topic, (bag.topics[topic].msgtype,)):
        yield record.stamp_ns, bytes(TYPESTORE.serialize_cdr(record.msg, record.msg.__msgtype__))


@pytest.fixture(scope='module')
def jpeg_bag(tmp_path_factory):
    from cityseg_ros.tools.make_bag import write_bag

    path = tmp_path_factory.mktemp('replay') / 'jpeg'
    write_bag(_stereo_frames(), path, image_format='jpeg', start_time_ns=STAMP0, rate_hz=1.0,
              progress=False)
    return path


def test_jpeg_bag_played_into_the_node_scores_like_evaluate(harness, jpeg_bag, tmp_path):
    h = harness(overrides={'weights': str(WEIGHTS), 'model': 'espnetv2',
                           'input_transport': 'compressed', 'publish_overlay': False,
                           'publish_color': False})
    players = {bag_topic: h.io.create_publisher(kind, topic, 10)
               for bag_topic, (topic, kind) in PLAYED.items()}
    h.listen('left/semantic/labels')
    h.listen('left/semantic/labels/compressed', msg_type=CompressedImage)
    h.start()
    assert h.spin_until(lambda: all(pub.get_subscription_count() >= 1
                                    for pub in players.values()))
    h.wait_connected()

    with BagReader(jpeg_bag) as bag:
        played = sorted((stamp, topic, data) for topic in PLAYED
                        for stamp, data in _messages(bag, topic))
    stamps = sorted({stamp for stamp, _, _ in played})
    assert len(stamps) == 2
    for stamp in stamps:  # one frame at a time: the node keeps the newest pair only
        for _, topic, data in (p for p in played if p[0] == stamp):
            players[topic].publish(deserialize_message(data, PLAYED[topic][1]))
        assert h.spin_until(lambda: len(h.received['left/semantic/labels/compressed'])
                            == stamps.index(stamp) + 1
                            and len(h.received['left/semantic/labels'])
                            == stamps.index(stamp) + 1, timeout=60.0)

    recorded = tmp_path / 'recorded'
    with BagReader(jpeg_bag) as source, BagWriter(recorded) as out:
        for topic in (TOPIC_GT_LABEL_IDS, TOPIC_GT_INSTANCE_IDS):
            for record in source.read_messages(topic):
                out.write_message(topic, record.msg, record.stamp_ns)
        for name, (topic, kind) in RECORDED.items():
            for msg in h.received[name]:
                stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
                assert stamp in stamps and msg.header.frame_id == 'stereo_left_optical_frame'
                rosbags_msg = TYPESTORE.deserialize_cdr(serialize_message(msg),
                                                        _msgtype(kind))
                out.write_message(topic, rosbags_msg, stamp)

    direct = BagEvaluator(jpeg_bag, EvalOptions()).run(
        Segmenter('espnetv2', weights=str(WEIGHTS), device='cpu'))
    assert [row.stamp_ns for row in direct.frames] == stamps and not direct.skipped
    for topic, _ in RECORDED.values():
        replayed = BagEvaluator(recorded, EvalOptions(predictions_topic=topic)).run()
        np.testing.assert_array_equal(replayed.counts.confusion, direct.counts.confusion)
        assert replayed.scores.miou == direct.scores.miou
    assert 0.3 < direct.scores.miou < 1.0  # real weights on a real frame


def _msgtype(kind) -> str:
    """Return the ROS type name of an rclpy message class, e.g. sensor_msgs/msg/Image."""
    return f'{kind.__module__.split(".")[0]}/msg/{kind.__name__}'
