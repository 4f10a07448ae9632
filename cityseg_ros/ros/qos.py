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

"""QoS profiles for the node's topics, and incompatible-QoS warnings that say what to change.

A reliable subscriber never hears a best-effort publisher, and DDS says so only through an
event; without a handler "no output" has no explanation. The handlers here log one line that
names the topic, both sides' policies and the parameter or setting that fixes it.

``input_reliability: auto`` picks the subscription's reliability from the publishers' QoS, as
rosbag2's recorder and ``ros2 topic echo`` adapt to what they find: all reliable -> reliable
(a best-effort subscription drops most fragments of a 2-megapixel image between processes),
any best_effort -> best_effort (a reliable one would hear nothing), none yet -> best_effort
for now and look again later (:func:`choose_reliability`).
"""

from typing import Callable, Optional, Sequence, Tuple

from rclpy.event_handler import (PublisherEventCallbacks, QoSOfferedIncompatibleQoSInfo,
                                 QoSRequestedIncompatibleQoSInfo, SubscriptionEventCallbacks)
from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSPolicyKind, QoSProfile,
                       ReliabilityPolicy)

__all__ = ['input_qos', 'output_qos', 'describe_incompatible', 'subscription_event_callbacks',
           'publisher_event_callbacks', 'choose_reliability']

Warn = Callable[[str], None]

_RELIABILITY = {'best_effort': ReliabilityPolicy.BEST_EFFORT,
                'reliable': ReliabilityPolicy.RELIABLE}


def input_qos(reliability: str = 'best_effort', depth: int = 5) -> QoSProfile:
    """Return the image/camera_info subscription QoS.

    The default equals rclpy's ``qos_profile_sensor_data`` (best effort, keep last 5,
    volatile), which also receives from reliable publishers.

    Args:
        reliability: 'best_effort' or 'reliable' (parameter ``input_reliability``).
        depth: history depth, keep last (parameter ``input_depth``).
    """
    if reliability not in _RELIABILITY:
        raise ValueError(f'reliability {reliability!r} is not one of {", ".join(_RELIABILITY)}')
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=_RELIABILITY[reliability],
                      durability=DurabilityPolicy.VOLATILE)


def choose_reliability(publishers: Sequence[QoSProfile]) -> Tuple[str, str, bool]:
    """Pick the input reliability that matches the publishers of one topic.

    Args:
        publishers: the QoS of every publisher on the topic (``get_publishers_info_by_topic``).

    Returns:
        (reliability, reason, settled): 'reliable' or 'best_effort'; a few words for the log
        line; False while no publisher is known (best_effort hears either kind meanwhile, and
        the choice must be made again once one appears).
    """
    if not publishers:
        return 'best_effort', 'no publisher yet (best_effort hears either kind)', False
    kinds = [_name(p.reliability) for p in publishers]
    count = f'{len(kinds)} publisher{"s" if len(kinds) > 1 else ""}'
    if all(kind == 'reliable' for kind in kinds):
        return 'reliable', f'{count}, all reliable', True
    best_effort = sum(kind == 'best_effort' for kind in kinds)
    return 'best_effort', f'{count}, {best_effort} best_effort', True


def output_qos(depth: int = 1) -> QoSProfile:
    """Return the output QoS: reliable (serves both kinds of subscriber), volatile, keep last.

    Depth 1: a late frame is worth nothing, and a slow reliable subscriber must not make the
    worker queue full-size images.
    """
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.VOLATILE)


def _name(policy) -> str:
    return policy.name.lower() if policy is not None else 'unknown'


def describe_incompatible(topic: str, policy_kind: int, own: QoSProfile,
                          own_side: str) -> str:
    """Explain an incompatible-QoS event in one line.

    Args:
        topic: the topic's full name.
        policy_kind: the event's ``last_policy_kind``.
        own: the QoS of our side (the entity that got the event).
        own_side: 'subscription' or 'publisher'.

    Returns:
        E.g. "publisher on /cam/left/image_rect_color offers best_effort but this subscription
        wants reliable: no messages pass; set input_reliability:=best_effort or make the
        publisher reliable".
    """
    try:
        kind = QoSPolicyKind(int(policy_kind))
    except ValueError:
        kind = None
    other = 'publisher' if own_side == 'subscription' else 'subscriber'
    if kind == QoSPolicyKind.RELIABILITY:
        if own_side == 'subscription':
            return (f'publisher on {topic} offers best_effort but this subscription wants '
                    f'{_name(own.reliability)}: no messages pass; set '
                    'input_reliability:=auto or input_reliability:=best_effort, or make the '
                    'publisher reliable')
        return (f'subscriber on {topic} wants reliable but this publisher offers '
                f'{_name(own.reliability)}: it gets nothing; make the subscriber best_effort')
    if kind == QoSPolicyKind.DURABILITY:
        if own_side == 'subscription':
            return (f'publisher on {topic} offers volatile but this subscription wants '
                    f'{_name(own.durability)}: no messages pass; make the publisher '
                    'transient_local')
        return (f'subscriber on {topic} wants transient_local but this publisher offers '
                f'{_name(own.durability)}: it gets nothing; make the subscriber volatile')
    policy = kind.name.lower() if kind is not None else f'policy {policy_kind}'
    return (f'a {other} on {topic} has a {policy} QoS incompatible with this {own_side}: no '
            f'messages pass between them; align their {policy} settings')


def subscription_event_callbacks(topic: str, qos: QoSProfile, warn: Warn,
                                 on_event: Optional[Callable[[], None]] = None,
                                 on_matched: Optional[Callable[[], None]] = None,
                                 on_lost: Optional[Callable[[int], None]] = None
                                 ) -> SubscriptionEventCallbacks:
    """Return event callbacks that warn when a publisher's QoS cannot reach this subscription.

    Args:
        topic: the subscription's topic, for the message.
        qos: the subscription's QoS.
        warn: where the line goes, e.g. ``node.get_logger().warning``.
        on_event: also called per incompatible-QoS event (e.g. to count it for diagnostics).
        on_matched: called when a publisher connects or leaves (to re-check the QoS choice).
        on_lost: called with the number of samples the middleware reports lost (best-effort
            fragments that never arrived).
    """
    def incompatible(info: QoSRequestedIncompatibleQoSInfo) -> None:
        warn(describe_incompatible(topic, info.last_policy_kind, qos, 'subscription'))
        if on_event is not None:
            on_event()

    matched = (lambda info: on_matched()) if on_matched is not None else None
    lost = (lambda info: on_lost(int(info.total_count_change))) if on_lost is not None \
        else None
    return SubscriptionEventCallbacks(incompatible_qos=incompatible, matched=matched,
                                      message_lost=lost)


def publisher_event_callbacks(topic: str, qos: QoSProfile, warn: Warn,
                              on_event: Optional[Callable[[], None]] = None
                              ) -> PublisherEventCallbacks:
    """Return event callbacks that warn when a subscriber's QoS cannot be served by this publisher.

    Args:
        topic: the publisher's topic, for the message.
        qos: the publisher's QoS.
        warn: where the line goes, e.g. ``node.get_logger().warning``.
        on_event: also called per event (e.g. to count it for diagnostics).
    """
    def incompatible(info: QoSOfferedIncompatibleQoSInfo) -> None:
        warn(describe_incompatible(topic, info.last_policy_kind, qos, 'publisher'))
        if on_event is not None:
            on_event()

    return PublisherEventCallbacks(incompatible_qos=incompatible)
