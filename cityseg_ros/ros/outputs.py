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

"""The per-camera outputs under ``C/semantic/``: render, encode and publish what is wanted.

Only outputs somebody subscribes to are computed (DESIGN.md); every message carries the input
header. Ids follow the node's label space (``label_space`` / ``label_map``): ``labels`` and
``labels/compressed`` carry its ids, ``color`` and ``overlay`` its colours, and ``camera_info``
is the camera's latest CameraInfo with the labels' header. Publishers are made by the node
(lifecycle publishers with QoS event handlers) and handed in, so this stays a small, testable
piece of the worker's job.
"""

from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from cityseg_ros import render
from cityseg_ros.label_spaces import get_label_space, LabelSpace
from cityseg_ros.ros.messages import (camera_info_msg, compressed_labels_msg, confidence_msg,
                                      labels_msg, rgb_msg)
import numpy as np
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header

__all__ = ['OUTPUTS', 'ALWAYS', 'OUTPUT_TYPES', 'LabelOutputs']

#: Output names under ``C/semantic/``, in publishing order.
OUTPUTS = ('labels', 'labels/compressed', 'camera_info', 'color', 'overlay', 'confidence')
#: Outputs that always have a publisher (the others have a ``publish_<name>`` switch).
ALWAYS = ('labels', 'labels/compressed', 'camera_info')
#: Message type of each output.
OUTPUT_TYPES = {'labels': Image, 'labels/compressed': CompressedImage, 'camera_info': CameraInfo,
                'color': Image, 'overlay': Image, 'confidence': Image}


class LabelOutputs:
    """The enabled outputs of every segmented camera.

    Args:
        make_publisher: ``make_publisher(msg_type, topic)`` creates one publisher.
        cameras: the segmented cameras.
        enabled: output name -> whether it is published at all (:data:`ALWAYS` always are).
        space: the label space of the published ids; default trainIds.
    """

    def __init__(self, make_publisher: Callable[[Any, str], Any], cameras: Sequence[str],
                 enabled: Mapping[str, bool], space: Optional[LabelSpace] = None) -> None:
        self.space = space or get_label_space('trainid')
        self._identity = self.space.is_identity
        self.publishers: Dict[str, Dict[str, Any]] = {
            cam: {name: make_publisher(OUTPUT_TYPES[name], f'{cam}/semantic/{name}')
                  for name in OUTPUTS if name in ALWAYS or enabled.get(name)}
            for cam in cameras}

    @property
    def names(self) -> List[str]:
        """Enabled outputs as ``C/semantic/<name>``, for the configure log line."""
        first = next(iter(self.publishers.values()), {})
        return [f'C/semantic/{name}' for name in first]

    def wanted(self) -> Dict[str, Dict[str, Any]]:
        """Per camera, the publishers that somebody listens to now."""
        return {cam: {name: pub for name, pub in pubs.items() if pub.get_subscription_count()}
                for cam, pubs in self.publishers.items()}

    def publish(self, wanted: Mapping[str, Any], rgb: np.ndarray, header: Header,
                prediction: Any, alpha: float,
                camera_info: Optional[CameraInfo] = None) -> List[str]:
        """Render and publish one camera's wanted outputs; return the names published.

        Args:
            wanted: name -> publisher, from :meth:`wanted` for this camera.
            rgb: the input image, HxWx3 uint8 (for the overlay).
            header: the input header, copied into every output.
            prediction: ``labels`` (HxW uint8 trainIds) and ``confidence`` (HxW uint8 or None).
            alpha: photo weight of the overlay.
            camera_info: the camera's latest CameraInfo; ``camera_info`` is not published
                without one.
        """
        train_ids = prediction.labels
        space = self.space
        ids = train_ids
        if not self._identity and {'labels', 'labels/compressed', 'overlay'} & set(wanted):
            ids = space.map(train_ids)
        messages = {}
        if 'labels' in wanted:
            messages['labels'] = labels_msg(ids, header)
        if 'labels/compressed' in wanted:
            messages['labels/compressed'] = compressed_labels_msg(ids, header)
        if 'camera_info' in wanted and camera_info is not None:
            messages['camera_info'] = camera_info_msg(camera_info, header)
        color = None
        if 'color' in wanted or 'overlay' in wanted:
            # trainId -> colour in one table: no map needed for the colours.
            color = render.colorize(train_ids, palette=space.train_palette)
        if 'color' in wanted:
            messages['color'] = rgb_msg(color, header)
        if 'overlay' in wanted:
            messages['overlay'] = rgb_msg(render.overlay(
                rgb, ids, alpha, color=color, palette=space.palette,
                ignore_id=space.ignore_id), header)
        if 'confidence' in wanted and prediction.confidence is not None:
            messages['confidence'] = confidence_msg(prediction.confidence, header)
        for name, msg in messages.items():
            wanted[name].publish(msg)
        return list(messages)

    def destroy(self, destroy_publisher: Callable[[Any], Any]) -> None:
        """Destroy every publisher with the node's ``destroy_lifecycle_publisher``."""
        for pubs in self.publishers.values():
            for pub in pubs.values():
                destroy_publisher(pub)
        self.publishers = {}
