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

"""How the frames of N cameras become one batch for the model, without ROS.

Two ways (the node's ``sync`` parameter):

- ``exact``: one frame per camera with stamps within the tolerance (a hardware-triggered rig,
  a stereo pair). The shared :class:`~cityseg_ros.pairing.StampPairer` forms the groups and the
  worker's one-slot mailbox keeps the newest group: every camera comes out at the same rate;
  a camera that stops is left out of the groups after ``camera_timeout_s``
  (:class:`~cityseg_ros.ros.pairs.LivePairer`), so the others go on.
- ``none``: each camera's newest frame, whatever its stamp (free-running cameras). Frames wait
  in :class:`LatestFrames`, one slot per camera, newest wins; the worker takes all waiting
  frames at once, so a batch holds every camera that sent something since the last batch and
  no camera can starve another (each camera's output rate is its input rate, capped by the
  model's batch rate). A silent camera is simply absent from the batches.

Frames are opaque here (the node's decoded images); counters are per camera, bounded by the
camera list given at construction.
"""

import threading
from typing import Any, Dict, Iterable, Optional

__all__ = ['SYNC_MODES', 'LatestFrames']

#: Values of the node's ``sync`` parameter.
SYNC_MODES = ('exact', 'none')


class LatestFrames:
    """The newest frame of each camera until the worker takes them together (``sync: none``).

    A frame that is replaced before the worker took it is counted as dropped for its camera.
    :meth:`put` says when to hand the worker a new *ticket*: at most one is outstanding, so the
    worker's mailbox never drops a batch, and the frames that arrive while the worker is busy
    simply join the next batch.

    Args:
        cameras: the camera names (the only keys ever accepted).
        keep_newest: cameras whose newest frame stays available after the worker took it
            (:meth:`newest`; the stereo partner of a cloud); the others' frames are let go.
    """

    def __init__(self, cameras: Iterable[str], keep_newest: Iterable[str] = ()) -> None:
        self._cameras = tuple(cameras)
        if not self._cameras or len(set(self._cameras)) != len(self._cameras):
            raise ValueError(f'cameras must be unique and not empty, got {self._cameras!r}')
        self._keep = frozenset(keep_newest)
        self._lock = threading.Lock()
        self._pending: Dict[str, Any] = {}
        self._newest: Dict[str, Any] = {}
        self._ticket = False
        self._dropped = dict.fromkeys(self._cameras, 0)
        self._taken = dict.fromkeys(self._cameras, 0)

    def put(self, camera: str, frame: Any, ready: bool = True) -> bool:
        """Keep ``frame`` as ``camera``'s newest; return True when a ticket should be submitted.

        Args:
            camera: one of the cameras.
            frame: the decoded frame.
            ready: False while the node may not start a batch (its rate limit): the frame
                waits, and a later ``put`` issues the ticket.

        Returns:
            True exactly when no ticket is outstanding and ``ready``; the caller then submits
            one ticket to the worker, whose ``process`` calls :meth:`take`.

        Raises:
            KeyError: ``camera`` is not one of the cameras.
        """
        if camera not in self._dropped:
            raise KeyError(f'unknown camera {camera!r}; expected one of {list(self._cameras)}')
        with self._lock:
            if camera in self._pending:
                self._dropped[camera] += 1
            self._pending[camera] = frame
            if camera in self._keep:
                self._newest[camera] = frame
            if ready and not self._ticket:
                self._ticket = True
                return True
            return False

    def take(self) -> Dict[str, Any]:
        """Return the waiting frames (camera -> frame, in camera order) and clear the ticket."""
        with self._lock:
            frames = {cam: self._pending[cam] for cam in self._cameras if cam in self._pending}
            self._pending.clear()
            self._ticket = False
            for cam in frames:
                self._taken[cam] += 1
            return frames

    def newest(self, camera: str) -> Optional[Any]:
        """Return the newest frame of a ``keep_newest`` camera (taken or not), else None."""
        with self._lock:
            return self._newest.get(camera)

    def clear(self) -> None:
        """Forget waiting frames (counted as dropped) and the ticket (deactivate)."""
        with self._lock:
            for cam in self._pending:
                self._dropped[cam] += 1
            self._pending.clear()
            self._newest.clear()
            self._ticket = False

    @property
    def cameras(self) -> tuple:
        """The camera names, in order."""
        return self._cameras

    def dropped(self) -> Dict[str, int]:
        """Frames per camera replaced by a newer one before the worker took them."""
        with self._lock:
            return dict(self._dropped)

    def taken(self) -> Dict[str, int]:
        """Frames per camera handed to the worker."""
        with self._lock:
            return dict(self._taken)
