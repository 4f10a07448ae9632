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

"""The live node's grouping: the shared StampPairer with time-jump recovery, and what it says.

With ``sync: exact`` the cameras' frames are grouped by stamp (one frame per camera within
``pair_tolerance_ms``); with ``sync: none`` every frame passes at once as its own group (the
node's :class:`~cityseg_ros.camera_group.LatestFrames` batches them).

A camera that stops sending must not stop the others: with ``camera_timeout_s`` > 0, a camera
that sent nothing for that long *and* for ``LEFT_OUT_ROUNDS`` frames of every other camera
(so a slow but steady rate, or one lost frame, never counts) is left out of the groups until
its next frame; the groups of the others go on, counted as ``partial_groups``, logged once per
change and named in ``/diagnostics``.

Beside the pairer it keeps, per camera, the latest stamp and frame_id (bounded by the camera
list), logs time jumps, frames without partner and frame_id changes (throttled), and names the
latest jump for ``/diagnostics``. The node's input callbacks and decode threads call
:meth:`LivePairer.push`; the pairer and the camera bookkeeping are thread-safe.
"""

import threading
import time
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

from cityseg_ros.pairing import Matched, StampPairer
from cityseg_ros.ros.diagnostics import clip_text
from std_msgs.msg import Header

__all__ = ['LivePairer', 'JUMP_NS', 'MAX_PENDING']

#: Frames kept per camera while the pairer waits for the partner.
MAX_PENDING = 8
#: Stamp or ROS-clock jumps larger than this are time jumps (the pairer resets on one back).
JUMP_NS = 1_000_000_000
#: Seconds between two log lines of the same kind.
THROTTLE_S = 5.0
#: A camera is left out after this many frames of every other camera without one of its own.
LEFT_OUT_ROUNDS = 3


class LivePairer:
    """Pair the input cameras' frames by stamp and explain what happens to the others.

    Args:
        cameras: the cameras to pair (``NodeParams.input_cameras``), reference first.
        tolerance_ms: ``pair_tolerance_ms``.
        logger: the node's logger.
        count: ``count(key)`` adds one to a node counter (``frame_id_changes``).
        lost: returns how many input images were lost before the node so far (for the hint).
        sync: 'exact' (group by stamp) or 'none' (no grouping).
        camera_timeout_s: ``camera_timeout_s`` (sync exact): leave a camera that stopped out
            of the groups after this many seconds (and ``LEFT_OUT_ROUNDS`` frames of each
            other camera); 0 waits for every camera for good.
        clock: seconds on a steady clock (tests pass their own).
    """

    def __init__(self, cameras: Sequence[str], tolerance_ms: float, logger: Any,
                 count: Callable[[str], None], lost: Callable[[], int],
                 sync: str = 'exact', camera_timeout_s: float = 0.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.sync = sync
        self._passed = 0  # sync none: frames let through
        self._timeout_s = float(camera_timeout_s)
        self._clock = clock
        self._live_lock = threading.Lock()
        start = clock()
        self._last_arrival = dict.fromkeys(cameras, start)  # never sent: since configure
        self._others_since = dict.fromkeys(cameras, 0)  # frames of the others since its last
        self._left_out: Tuple[str, ...] = ()
        self._partial = 0
        self._left_out_groups = dict.fromkeys(cameras, 0)
        self.pairer = StampPairer(cameras, int(tolerance_ms * 1e6), max_pending=MAX_PENDING,
                                  jump_ns=JUMP_NS)
        self._cameras = tuple(cameras)
        self._log = logger
        self._count = count
        self._lost = lost
        self._stamps: Dict[str, int] = {}
        self._frame_ids: Dict[str, str] = {}
        self._jumps_logged = 0
        self._unpaired_logged = 0
        self.last_jump = ''  # the latest time jump, stamps or ROS clock, in words

    def push(self, camera: str, header: Header, stamp: int, item: Any,
             topic: str) -> Optional[Matched]:
        """Pair one decoded frame; return the matched set when it completes one."""
        self._note_frame_id(camera, header.frame_id, topic)
        self._stamps[camera] = stamp
        if self.sync == 'none':
            self._passed += 1
            return Matched(stamp_ns=stamp, items={camera: item}, stamps={camera: stamp})
        required = self._required(camera)
        matched = self.pairer.push(camera, stamp, item, required=required)
        if matched is not None and len(matched.items) < len(self._cameras):
            with self._live_lock:
                self._partial += 1
                for cam in self._cameras:
                    if cam not in matched.items:
                        self._left_out_groups[cam] += 1
        self._log_changes()
        return matched

    @property
    def left_out(self) -> Tuple[str, ...]:
        """The cameras left out of the groups now (sync exact, ``camera_timeout_s``)."""
        return self._left_out

    def _required(self, camera: str) -> Optional[Sequence[str]]:
        """Note ``camera``'s frame; return the cameras a group needs now (None: all)."""
        with self._live_lock:
            now = self._clock()
            self._last_arrival[camera] = now
            for cam in self._cameras:
                self._others_since[cam] += 1
            self._others_since[camera] = 0
            if self._timeout_s <= 0.0 or len(self._cameras) < 2:
                return None
            rounds = LEFT_OUT_ROUNDS * (len(self._cameras) - 1)
            out = tuple(cam for cam in self._cameras
                        if self._others_since[cam] >= rounds
                        and now - self._last_arrival[cam] >= self._timeout_s)
            previous, self._left_out = self._left_out, out
        if out != previous:
            gone = [cam for cam in out if cam not in previous]
            back = [cam for cam in previous if cam not in out]
            # Throttled: a camera slower than camera_timeout_s flaps out and back at its rate
            # (16 lines/s at 0.01 s); /diagnostics (C/left_out, the message) has the state.
            if gone:
                self._log.warning(
                    f'no images from {", ".join(gone)} for {self._timeout_s:g} s or more '
                    f'(camera_timeout_s): segmenting the other cameras without '
                    f'{"it" if len(gone) == 1 else "them"} until '
                    f'{"it sends" if len(gone) == 1 else "they send"} again',
                    throttle_duration_sec=THROTTLE_S)
            if back:
                self._log.info(f'{", ".join(back)} sends again: back in the groups',
                               throttle_duration_sec=THROTTLE_S)
        return [cam for cam in self._cameras if cam not in out] if out else None

    def clear(self) -> None:
        """Forget pending frames and the late watermark (deactivate, ROS clock jumps)."""
        self.pairer.clear()

    def stamp_gap_ms(self) -> Optional[float]:
        """Return the spread of the cameras' latest stamps, ms (None until each has one)."""
        if len(self._cameras) < 2:
            return None
        stamps = [self._stamps.get(cam) for cam in self._cameras]
        if None in stamps:
            return None
        return (max(stamps) - min(stamps)) / 1e6

    def latest_stamp(self, camera: str) -> Optional[int]:
        """Return the latest stamp ``camera`` sent, ns (None before its first frame)."""
        return self._stamps.get(camera)

    def counters(self) -> Dict[str, int]:
        """Pairing counters for diagnostics: pairs, unpaired, unpaired_future, time jumps.

        ``pairs`` counts groups (sync exact) or frames let through (sync none); per camera,
        ``C_unpaired`` counts its frames that left the pairer without a group. Sync exact also
        counts ``partial_groups`` (groups without a camera that stopped) and, per camera,
        ``C_left_out`` (groups it was left out of).
        """
        stats = self.pairer.stats
        if self.sync == 'none':
            return {'pairs': self._passed}
        with self._live_lock:
            partial = {'partial_groups': self._partial,
                       **{f'{cam}_left_out': n for cam, n in self._left_out_groups.items()}}
        return {'pairs': stats.matched, **partial,
                **{f'{cam}_unpaired': n for cam, n in stats.dropped_unmatched.items()},
                'unpaired': stats.dropped,
                'unpaired_future': sum(stats.dropped_future.values()),
                'time_jumps_back': stats.jumps_back, 'time_jumps_forward': stats.jumps_forward}

    def _note_frame_id(self, camera: str, frame_id: str, topic: str) -> None:
        previous = self._frame_ids.get(camera)
        self._frame_ids[camera] = frame_id
        if previous is not None and previous != frame_id:
            self._count('frame_id_changes')
            self._log.warning(f'{topic}: frame_id changed from {clip_text(repr(previous), 200)} '
                              f'to {clip_text(repr(frame_id), 200)}; outputs carry the new one',
                              throttle_duration_sec=THROTTLE_S)

    def _log_changes(self) -> None:
        stats = self.pairer.stats
        jumps = stats.jumps_back + stats.jumps_forward
        if jumps > self._jumps_logged and stats.last_jump is not None:
            self._jumps_logged = jumps
            self.last_jump = stats.last_jump.describe()
            action = 'pairing starts afresh' if stats.last_jump.delta_ns < 0 else 'pairing goes on'
            self._log.warning(f'time jump: {self.last_jump}; {action}',
                              throttle_duration_sec=THROTTLE_S)
        if stats.dropped > self._unpaired_logged:
            self._unpaired_logged = stats.dropped
            self._log.warning(
                f'{stats.dropped} image(s) so far found no partner within pair_tolerance_ms='
                f'{self.pairer.tolerance_ns / 1e6:g} ms ({self.hint()})',
                throttle_duration_sec=THROTTLE_S)

    def hint(self) -> str:
        """Say what the latest stamps and losses suggest about missing partners."""
        parts = []
        gap = self.stamp_gap_ms()
        if gap is not None:
            parts.append(f'latest {"/".join(self._cameras)} stamps differ by up to {gap:.1f} ms')
        lost = self._lost()
        if lost:
            parts.append(f'{lost} images lost before the node (transport or input queue)')
        parts.append('equal stamps need synchronised cameras; see /diagnostics')
        return '; '.join(parts)
