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

"""The node's input subscriptions: QoS that matches the publishers, and loss that is counted.

Per camera ``C`` of ``cameras`` it subscribes to ``C/image_rect_color`` (``input_transport: raw``)
or ``C/image_rect_color/compressed`` (``compressed``: sensor_msgs/CompressedImage, the topic
image_transport's compressed plugin publishes) and ``C/camera_info``.
With ``input_reliability: auto`` each topic gets the reliability :func:`choose_reliability`
picks from its publishers, looked at again every :data:`RECHECK_S` on a steady clock (publishers
come, go and change); when the choice changes, the subscription is made again and one log line
says which QoS was chosen and why.

Loss is counted two ways: gaps in a publisher's sequence numbers (the MessageInfo rclpy hands a
two-argument callback; only while the topic has exactly one publisher, whose numbers are
consecutive) and the middleware's message-lost events. Either means frames were published but
never reached the node: best-effort transport losing fragments of large images, or the input
queue (``input_depth``) overflowing while the node was busy.
"""

import functools
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

from cityseg_ros.ros.diagnostics import LARGE_IMAGE_HINT
from cityseg_ros.ros.qos import choose_reliability, input_qos, subscription_event_callbacks
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

__all__ = ['InputSubscriptions', 'SequenceGaps', 'RECHECK_S', 'image_topic']

#: Seconds between two looks at the publishers (rosbag2 polls topics every 0.1 s; QoS changes
#: are rarer than new topics).
RECHECK_S = 1.0
#: Seconds between two checks for a "look now" from a matched or incompatible-QoS event (the
#: events' own callbacks must not destroy the subscription they belong to).
_TICK_S = 0.25
#: Seconds between two log lines about lost frames.
THROTTLE_S = 5.0

Count = Callable[[str, int], None]


def image_topic(camera: str, transport: str = 'raw') -> str:
    """Return the relative image topic of ``camera`` for ``input_transport``."""
    return f'{camera}/image_rect_color' + ('/compressed' if transport == 'compressed' else '')


class SequenceGaps:
    """Frames missing between consecutive publication sequence numbers, per topic."""

    def __init__(self) -> None:
        self._last: Dict[str, int] = {}

    def observe(self, topic: str, sequence: Optional[int], single_publisher: bool) -> int:
        """Return how many frames are missing before ``sequence`` on ``topic`` (0 if unknown).

        Args:
            topic: the topic (the keys are the node's own topics, so this stays bounded).
            sequence: ``publication_sequence_number`` of the message; None or 0 when the
                middleware does not provide one.
            single_publisher: whether the topic has exactly one publisher now; with more, the
                numbers of different publishers interleave and say nothing.
        """
        if not sequence:
            self._last.pop(topic, None)
            return 0
        last = self._last.get(topic)
        self._last[topic] = sequence
        if not single_publisher or last is None or sequence <= last:
            return 0  # first message, several publishers, or a publisher that restarted
        return sequence - last - 1

    def reset(self) -> None:
        """Forget the last numbers (new subscriptions)."""
        self._last.clear()


class _Topic:
    """One input topic: its subscription and the QoS it was made with."""

    def __init__(self, camera: str, name: str, msg_type: Any, callback: Callable,
                 is_image: bool) -> None:
        self.camera = camera
        self.name = name  # relative, e.g. 'left/image_rect_color'
        self.msg_type = msg_type
        self.is_image = is_image
        self.callback = callback
        self.subscription: Optional[Any] = None
        self.reliability = ''
        self.reason = ''
        self.settled = False
        self.publishers = 0


class InputSubscriptions:
    """Create, re-create and destroy the node's input subscriptions.

    Args:
        node: the node that owns the subscriptions.
        cameras: camera namespaces to subscribe (``NodeParams.input_cameras``).
        reliability: 'auto', 'reliable' or 'best_effort' (``input_reliability``).
        depth: history depth (``input_depth``).
        on_image: called as ``on_image(camera, msg)`` on an executor thread (an Image, or a
            CompressedImage with ``transport`` 'compressed').
        on_camera_info: called as ``on_camera_info(camera, msg)``.
        count: ``count(key, n)`` adds to a diagnostics counter (incompatible_qos,
            ``C_lost``, dds_lost_samples, qos_changes).
        transport: 'raw' or 'compressed' (``input_transport``).

    Each camera's callbacks share one mutually exclusive group: cameras are decoded in
    parallel, but one camera's frames reach the pairer and the sequence check in order.
    """

    def __init__(self, node: Node, cameras: Sequence[str], reliability: str, depth: int,
                 on_image: Callable[[str, Image], None],
                 on_camera_info: Callable[[str, CameraInfo], None], count: Count,
                 transport: str = 'raw') -> None:
        self._node = node
        self._transport = transport
        self._auto = reliability == 'auto'
        self._fixed = None if self._auto else reliability
        self._depth = depth
        self._count = count
        self._groups = {cam: MutuallyExclusiveCallbackGroup() for cam in cameras}
        self._on_image = on_image
        self._lock = threading.Lock()
        self._gaps = SequenceGaps()
        self._timer: Optional[Any] = None
        self._due = threading.Event()
        self._last_look = 0.0
        self._topics: List[_Topic] = []
        image_type = CompressedImage if transport == 'compressed' else Image
        for camera in cameras:
            self._topics.append(_Topic(camera, image_topic(camera, transport), image_type,
                                       functools.partial(self._image, camera), True))
            self._topics.append(_Topic(camera, f'{camera}/camera_info', CameraInfo,
                                       functools.partial(on_camera_info, camera), False))
        self._by_full = {node.resolve_topic_name(t.name): t for t in self._topics}

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Subscribe to every input topic and start looking at the publishers."""
        self._gaps.reset()
        self.recheck()
        self._timer = self._node.create_timer(
            _TICK_S, self._tick, callback_group=MutuallyExclusiveCallbackGroup(),
            clock=Clock(clock_type=ClockType.STEADY_TIME))

    def stop(self) -> None:
        """Destroy the timer and the subscriptions."""
        if self._timer is not None:
            self._node.destroy_timer(self._timer)
            self._timer = None
        with self._lock:
            for topic in self._topics:
                if topic.subscription is not None:
                    self._node.destroy_subscription(topic.subscription)
                    topic.subscription = None
                topic.reliability = ''
                topic.settled = False

    # -- state ----------------------------------------------------------------------------------

    @property
    def topic_names(self) -> List[str]:
        """Full names of the subscribed topics."""
        return [t.subscription.topic_name for t in self._topics if t.subscription is not None]

    def publishers(self, camera: str) -> int:
        """Return how many publishers ``camera``'s image topic had at the last look."""
        return next((t.publishers for t in self._topics if t.camera == camera and t.is_image), 0)

    def reliability(self, camera: str) -> str:
        """Return the reliability of ``camera``'s image subscription ('' when none)."""
        return next((t.reliability for t in self._topics if t.camera == camera and t.is_image),
                    '')

    def summary(self) -> str:
        """One line: the QoS of each image subscription and why, for logs and diagnostics."""
        parts = []
        for topic in self._topics:
            if topic.is_image and topic.subscription is not None:
                why = f' ({topic.reason})' if self._auto else ''
                parts.append(f'{topic.name} {topic.reliability}{why}')
        return '; '.join(parts)

    # -- callbacks ------------------------------------------------------------------------------

    def _tick(self) -> None:
        if self._due.is_set() or time.monotonic() - self._last_look >= RECHECK_S:
            try:
                self.recheck()
            except Exception as exc:  # noqa: B902 -- a timer must not end the node; next tick
                self._count('internal_errors', 1)
                self._node.get_logger().error(
                    f'input QoS check failed ({type(exc).__name__}: {exc}); retrying',
                    throttle_duration_sec=THROTTLE_S)

    def _incompatible(self) -> None:
        if self._auto:  # a publisher changed its QoS: follow it at the next tick
            self._due.set()
        else:
            self._count('incompatible_qos', 1)

    def recheck(self) -> None:
        """Look at each topic's publishers; subscribe again where the QoS choice changed."""
        changed = []
        self._due.clear()
        self._last_look = time.monotonic()
        with self._lock:
            for topic in self._topics:
                full = self._node.resolve_topic_name(topic.name)
                infos = self._node.get_publishers_info_by_topic(full)
                topic.publishers = len(infos)
                if self._auto:
                    wanted, reason, settled = choose_reliability([i.qos_profile for i in infos])
                else:
                    wanted, reason, settled = self._fixed, 'input_reliability', True
                if topic.subscription is not None and wanted == topic.reliability:
                    topic.reason, topic.settled = reason, settled
                    continue
                if topic.subscription is not None:
                    self._node.destroy_subscription(topic.subscription)
                    self._count('qos_changes', 1)
                qos = input_qos(wanted, self._depth)
                # In auto mode a mismatch is the moment before the next look, not an error.
                warn = (self._node.get_logger().debug if self._auto
                        else self._node.get_logger().warning)
                events = subscription_event_callbacks(
                    full, qos, warn, on_event=self._incompatible, on_matched=self._due.set,
                    on_lost=functools.partial(self._lost_samples, topic.camera))
                topic.subscription = self._node.create_subscription(
                    topic.msg_type, topic.name, topic.callback, qos,
                    callback_group=self._groups[topic.camera], event_callbacks=events)
                topic.reliability, topic.reason, topic.settled = wanted, reason, settled
                if self._auto and topic.is_image:
                    changed.append(f'{full}: {wanted} ({reason})')
        for line in changed:
            self._node.get_logger().info(f'input_reliability auto: {line}')

    def _image(self, camera: str, msg: Image, info: Dict[str, Any]) -> None:
        """Count sequence gaps, then hand the image on.

        Two arguments after ``camera``: rclpy then passes the MessageInfo too.
        """
        sequence = info.get('publication_sequence_number') if info else None
        missing = self._gaps.observe(camera, sequence, self.publishers(camera) == 1)
        if missing:
            self._count(f'{camera}_lost', missing)
            self._warn_lost(camera, f'{missing} frame(s) missing from the publication sequence')
        self._on_image(camera, msg)

    def _lost_samples(self, camera: str, count: int) -> None:
        self._count('dds_lost_samples', count)
        self._warn_lost(camera, f'the middleware reports {count} sample(s) lost')

    def _warn_lost(self, camera: str, what: str) -> None:
        reliability = self.reliability(camera)
        why = (f'best_effort transport drops fragments of large images: {LARGE_IMAGE_HINT}'
               if reliability == 'best_effort' else
               'the input queue (input_depth) overflowed while the node was busy, or the '
               'transport dropped them')
        self._node.get_logger().warning(
            f'{self._node.resolve_topic_name(image_topic(camera, self._transport))}: {what} '
            f'before the node ({reliability}); {why}', throttle_duration_sec=THROTTLE_S)
