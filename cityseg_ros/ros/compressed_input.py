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

"""Compressed input for the node: JPEG/PNG decoded on threads of their own, never the executor.

A 2-megapixel JPEG takes 6-17 ms to decode on this project's CPU, idle or beside the model
(``cityseg_ros.bench.codec_table``), a PNG photo ~90 ms: in a subscription callback that would
hold an executor thread serving the other cameras, camera_info and parameters. The callback
only checks the stamp and ``format`` (a string); decoding happens here, in one of two ways:

- ``sync: none``: one :class:`~cityseg_ros.decoding.DecodeStage` slot per camera, newest wins,
  cameras served in turn (``decode_threads`` threads), each decoded frame handed on at once.
- ``sync: exact``: frames are grouped by stamp *before* decoding (headers are enough), and a
  whole group is the unit of work: the newest complete group waits in one slot (an older
  waiting group is dropped and counted), and its frames are decoded in parallel on
  ``decode_threads`` pool threads. Decoding per camera with newest-wins would, once the CPU
  falls behind, decode different stamps for different cameras and never complete a group.

The threads run at a lower priority (nice) than inference: when the CPU is short, decoding
sheds frames rather than delaying every batch. A failed decode is reported per camera (the
node counts and logs it); in a group it drops the group, as a bad raw image leaves its
partners unpaired.
"""

from concurrent.futures import ThreadPoolExecutor
import os
import threading
import time
from typing import Any, Callable, Dict, Optional, Tuple

from cityseg_ros.decoding import DecodeStage
from cityseg_ros.pairing import Matched
from cityseg_ros.worker import LatencyWindow
import numpy as np

__all__ = ['CompressedInput', 'GROUP', 'DECODE_NICE']

#: The decode stage's key for stamp groups (sync exact).
GROUP = 'group'
#: Nice increment of the decode threads (Linux): inference keeps the CPU when it is short.
DECODE_NICE = 4

Decode = Callable[[str, Any], np.ndarray]


class _GroupDropped(Exception):
    """A frame of the group failed (already reported per camera): the group is dropped."""


def lower_priority(nice: int = DECODE_NICE) -> None:
    """Raise the calling thread's nice value by ``nice`` (Linux; elsewhere nothing)."""
    if nice <= 0 or not hasattr(os, 'setpriority'):
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + nice)
    except OSError:
        pass  # not allowed here: decoding keeps the normal priority


class CompressedInput:
    """Decode compressed images off the executor, per camera or per stamp group.

    Args:
        name: thread name prefix (``<node>-decode``).
        sync: 'exact' (groups, :meth:`submit_group`) or 'none' (frames, :meth:`submit_frame`).
        threads: ``decode_threads``.
        decode: ``decode(camera, msg) -> rgb``; raises on a bad image (run on decode threads).
        on_frame: ``on_frame(camera, msg, rgb, received)`` after a frame decoded (sync none).
        on_group: ``on_group(matched, rgbs)`` after every frame of a group decoded; ``rgbs``
            maps camera -> HxWx3 uint8 (sync exact).
        on_error: ``on_error(camera, msg, exc)`` for each frame that failed to decode.
    """

    def __init__(self, name: str, sync: str, threads: int, decode: Decode,
                 on_frame: Callable[[str, Any, np.ndarray, float], None],
                 on_group: Callable[[Matched, Dict[str, np.ndarray]], None],
                 on_error: Callable[[str, Any, BaseException], None]) -> None:
        self._name = name
        self._exact = sync == 'exact'
        self._threads = int(threads)
        self._decode = decode
        self._on_frame = on_frame
        self._on_group = on_group
        self._on_error = on_error
        self._pool: Optional[ThreadPoolExecutor] = None
        self.decode_ms = LatencyWindow()  # per image, every camera
        if self._exact:
            self._stage = DecodeStage(self._decode_group, self._group_decoded, self._group_error,
                                      threads=1, name=name, nice=DECODE_NICE)
        else:
            self._stage = DecodeStage(self._decode_frame, self._frame_decoded, self._frame_error,
                                      threads=self._threads, name=name, nice=DECODE_NICE)

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the decode threads."""
        if self._exact:
            self._pool = ThreadPoolExecutor(max_workers=self._threads,
                                            thread_name_prefix=f'{self._name}-pool',
                                            initializer=lower_priority)
        self._stage.start()

    def stop(self) -> None:
        """Finish the decodes under way, drop what waits, join the threads."""
        self._stage.stop()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    # -- producer side (executor threads) ---------------------------------------------------

    def submit_frame(self, camera: str, msg: Any, received: float) -> None:
        """Hand over one camera's newest compressed message (sync none); returns at once."""
        self._stage.submit(camera, (msg, received))

    def submit_group(self, matched: Matched) -> None:
        """Hand over a complete stamp group of compressed messages (sync exact)."""
        self._stage.submit(GROUP, matched)

    def counters(self) -> Dict[str, int]:
        """``C_decode_dropped`` / ``C_decode_failed`` per camera, or the group counts."""
        stats = self._stage.stats()
        if self._exact:
            group = stats.get(GROUP)
            return {'decode_dropped_groups': group.dropped if group else 0,
                    'decode_failed_groups': group.failed if group else 0}
        counts = {}
        for cam, cam_stats in stats.items():
            counts[f'{cam}_decode_dropped'] = cam_stats.dropped
            counts[f'{cam}_decode_failed'] = cam_stats.failed
        return counts

    # -- decode threads -----------------------------------------------------------------------

    def _timed(self, camera: str, msg: Any) -> np.ndarray:
        start = time.perf_counter()
        rgb = self._decode(camera, msg)
        self.decode_ms.add((time.perf_counter() - start) * 1e3)
        return rgb

    def _decode_frame(self, camera: str, item: Tuple[Any, float]) -> np.ndarray:
        return self._timed(camera, item[0])

    def _frame_decoded(self, camera: str, item: Tuple[Any, float], rgb: np.ndarray) -> None:
        self._on_frame(camera, item[0], rgb, item[1])

    def _frame_error(self, camera: str, item: Tuple[Any, float], exc: BaseException) -> None:
        self._on_error(camera, item[0], exc)

    def _decode_group(self, _: str, matched: Matched) -> Dict[str, np.ndarray]:
        pool = self._pool
        if pool is None:  # stopped meanwhile
            raise _GroupDropped()
        futures = {cam: pool.submit(self._timed, cam, pending.msg)
                   for cam, pending in matched.items.items()}
        rgbs, failed = {}, False
        for cam, future in futures.items():
            try:
                rgbs[cam] = future.result()
            except Exception as exc:  # noqa: B902 -- reported per camera, the group goes
                failed = True
                self._on_error(cam, matched.items[cam].msg, exc)
        if failed:
            raise _GroupDropped()
        return rgbs

    def _group_decoded(self, _: str, matched: Matched, rgbs: Dict[str, np.ndarray]) -> None:
        self._on_group(matched, rgbs)

    def _group_error(self, _: str, matched: Matched, exc: BaseException) -> None:
        if not isinstance(exc, _GroupDropped):
            cam = next(iter(matched.items))
            self._on_error(cam, matched.items[cam].msg, exc)
