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

"""Helpers for the node tests: a stand-in model and a harness around a SegmentNode."""

import array
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
import time
from typing import List, Optional

from cityseg_ros.compressed import encode_compressed
from cityseg_ros.ros.node import SegmentNode
from cityseg_ros.ros.qos import input_qos
import numpy as np
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

HEIGHT, WIDTH = 64, 128
SHARED = Path(__file__).resolve().parents[3] / 'shared'
RELIABLE = input_qos('reliable', 10)
BEST_EFFORT = input_qos('best_effort', 10)


@dataclass
class _Prediction:
    labels: np.ndarray
    confidence: Optional[np.ndarray] = None


def expected_labels(rgb: np.ndarray) -> np.ndarray:
    """Return the stand-in's labels: a function of the pixels, so content can be checked."""
    return (rgb[..., 0] % 19).astype(np.uint8)


class StandIn:
    """A model that answers at once (or after ``delay`` s) and records what it was asked."""

    device = 'cpu'

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.calls: List[tuple] = []
        self.warmed = False
        self.closed = False

    def warmup(self, batch_size: int = 1) -> float:
        self.warmed = True
        return 1.0

    def predict(self, images, confidence=False):
        self.calls.append((len(images), confidence))
        if self.delay:
            time.sleep(self.delay)
        return [_Prediction(expected_labels(img),
                            np.full(img.shape[:2], 200, np.uint8) if confidence else None)
                for img in images]

    def close(self) -> None:
        self.closed = True


def make_image(rgb: np.ndarray, stamp_ns: int, frame_id: str,
               encoding: str = 'rgb8') -> Image:
    msg = Image(height=rgb.shape[0], width=rgb.shape[1], encoding=encoding,
                step=rgb.shape[1] * (rgb.shape[2] if rgb.ndim == 3 else 1))
    msg.header.frame_id = frame_id
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
    data = array.array('B')
    data.frombytes(np.ascontiguousarray(rgb))
    msg.data = data
    return msg


def make_compressed(rgb: np.ndarray, stamp_ns: int, frame_id: str,
                    codec: str = 'jpeg') -> CompressedImage:
    """Compress an RGB image as image_transport's compressed publisher does."""
    msg = CompressedImage()
    msg.header.frame_id = frame_id
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
    msg.format, data = encode_compressed(rgb, codec, 'rgb8')
    msg.data = array.array('B', data)
    return msg


class Harness:
    """A test node beside the segment node: camera publishers, output subscribers, spinning."""

    def __init__(self, executor, spin, namespace: str, factory=None, overrides=None,
                 input_qos=RELIABLE, cameras=('left', 'right')) -> None:
        self.executor = executor
        self._spin = spin
        self.ns = namespace
        values = {'weights': '', 'input_reliability': 'reliable', 'input_depth': 10}
        values.update(overrides or {})
        self.seg_node = SegmentNode(
            factory, namespace=namespace,
            parameter_overrides=[Parameter(k, value=v) for k, v in values.items()])
        self.io = Node('io', namespace=namespace)
        self.compressed = values.get('input_transport') == 'compressed'
        if self.compressed:
            self.pubs = {cam: self.io.create_publisher(
                CompressedImage, f'{cam}/image_rect_color/compressed', input_qos)
                for cam in cameras}
        else:
            self.pubs = {cam: self.io.create_publisher(Image, f'{cam}/image_rect_color',
                                                       input_qos)
                         for cam in cameras}
        self.received = defaultdict(list)
        self.subs = {}
        executor.add_node(self.seg_node)
        executor.add_node(self.io)

    def listen(self, *topics: str, msg_type=Image) -> None:
        for topic in topics:
            self.subs[topic] = self.io.create_subscription(
                msg_type, topic, lambda msg, t=topic: self.received[t].append(msg),
                RELIABLE)

    def spin_until(self, predicate, timeout: float = 10.0) -> bool:
        return self._spin(self.executor, predicate, timeout)

    def start(self) -> None:
        assert self.seg_node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert self.seg_node.trigger_activate() == TransitionCallbackReturn.SUCCESS

    def wait_connected(self, cameras=('left', 'right')) -> None:
        """Wait until discovery matched inputs and the outputs we listen to."""
        assert self.spin_until(lambda: all(
            self.pubs[c].get_subscription_count() >= 1 for c in cameras))
        for topic, sub in self.subs.items():
            assert self.spin_until(lambda: self.io.count_publishers(sub.topic_name) >= 1), topic
        wanted = self._wanted_outputs()
        assert self.spin_until(lambda: all(
            pub.get_subscription_count() >= 1 for pub in wanted)), 'outputs not matched'

    def _wanted_outputs(self):
        names = set(self.subs)
        return [pub for cam, pubs in self.seg_node._outputs.publishers.items()
                for out, pub in pubs.items() if f'{cam}/semantic/{out}' in names]

    def publish_pair(self, images, stamp_ns: int, cameras=('left', 'right'),
                     codec: str = 'jpeg') -> None:
        for cam, rgb in zip(cameras, images):
            if self.compressed:
                self.pubs[cam].publish(make_compressed(rgb, stamp_ns, f'{cam}_optical', codec))
            else:
                self.pubs[cam].publish(make_image(rgb, stamp_ns, f'{cam}_optical'))

    def close(self) -> None:
        for node in (self.seg_node, self.io):
            self.executor.remove_node(node)
            node.destroy_node()


def now_ns(node: Node) -> int:
    return node.get_clock().now().nanoseconds


# The Cityscapes camera scaled to the 128x64 test images (1/16 of 2048x1024).
FX, FY, CX, CY, BASELINE = 2262.52 / 16, 2265.30 / 16, 1096.98 / 16, 513.14 / 16, 0.209313

POINTS_PARAMS = {
    'publish_color': False,
    'publish_overlay': False, 'points_downscale': 1, 'points_decimation': 1,
    'points_min_depth_m': 0.0, 'points_max_depth_m': 1000.0, 'points_drop_classes': [255],
    'stereo_block_size': 3, 'stereo_disparity_range': 16, 'stereo_speckle_window_size': 0,
}


def camera_info(cam: str, stamp_ns: int) -> CameraInfo:
    tx = -FX * BASELINE if cam == 'right' else 0.0
    msg = CameraInfo(width=WIDTH, height=HEIGHT, distortion_model='plumb_bob')
    msg.header.frame_id = f'{cam}_optical'
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
    msg.k = [FX, 0.0, CX, 0.0, FY, CY, 0.0, 0.0, 1.0]
    msg.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    msg.p = [FX, 0.0, CX, tx, 0.0, FY, CY, 0.0, 0.0, 0.0, 1.0, 0.0]
    msg.d = [0.0] * 5
    return msg
