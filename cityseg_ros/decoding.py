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

"""A decode stage between the subscriptions and the inference worker.

Decoding a 2 MP JPEG costs 6-25 ms of CPU. Done in a subscription callback it would hold the
executor thread that also serves the other cameras, camera_info and parameters; done on the
inference thread it would delay the model. :class:`DecodeStage` gives it its own small pool:

- :meth:`DecodeStage.submit` returns at once. Each camera has one pending slot, newest wins;
  an overwritten message is counted as dropped for that camera (a camera faster than its
  decode sheds frames instead of queueing them, so latency stays bounded).
- At most one message per camera is decoded at a time, so a camera's results come out in
  order, and cameras with pending work are served round-robin: with 6 cameras and 2 threads
  no camera waits for more than one turn of the others, whatever their rates.
- ``threads`` bounds the CPU the stage can take from inference (on 2 cores, 1 leaves one);
  ``nice`` (Linux) lowers the decode threads' priority below the inference thread's.

Invariant per camera, at any time: ``submitted == decoded + failed + dropped + pending + busy``.
No ROS here: plain threads test it.
"""

from collections import deque
from dataclasses import dataclass
import logging
import os
import threading
import time
from typing import Any, Callable, Deque, Optional

from cityseg_ros.worker import DEFAULT_WINDOW, LatencyWindow

__all__ = ['DecodeStage', 'DecodeStats']

logger = logging.getLogger(__name__)

#: Cameras one stage serves at most: camera names come from configuration, so more is a bug
#: (and every per-camera table stays bounded).
MAX_CAMERAS = 64


@dataclass(frozen=True)
class DecodeStats:
    """A snapshot of one camera's counters; times in ms, None before the first decode.

    Attributes:
        submitted: messages handed to :meth:`DecodeStage.submit`.
        decoded: messages decoded and passed to ``on_decoded``.
        failed: messages whose decode (or ``on_decoded``) raised; passed to ``on_error``.
        dropped: messages overwritten by a newer one before their turn, or left at stop.
        pending: 1 while a message waits, else 0.
        busy: 1 while a message of this camera is being decoded, else 0.
        decode_p50_ms: median decode time over the recent window.
        decode_p95_ms: 95th percentile of it.
        last_error: ``repr`` of the latest failure, None if none.
    """

    submitted: int
    decoded: int
    failed: int
    dropped: int
    pending: int
    busy: int
    decode_p50_ms: Optional[float]
    decode_p95_ms: Optional[float]
    last_error: Optional[str]


class _Camera:
    """Per-camera state, guarded by the stage's condition."""

    def __init__(self, window: int) -> None:
        self.pending: Optional[Any] = None
        self.has_pending = False
        self.busy = False
        self.submitted = 0
        self.decoded = 0
        self.failed = 0
        self.dropped = 0
        self.last_error: Optional[str] = None
        self.decode_ms = LatencyWindow(window)


class DecodeStage:
    """A small thread pool that decodes the newest message of each camera, fairly.

    Args:
        decode: ``decode(camera, msg) -> frame``, run on a decode thread.
        on_decoded: ``on_decoded(camera, msg, frame)``, run on the decode thread right after
            (hand the frame to the pairer / worker here; keep it short).
        on_error: ``on_error(camera, msg, exc)`` when ``decode`` or ``on_decoded`` raises an
            ``Exception``; the stage goes on. Exceptions from ``on_error`` are logged.
        threads: decode threads (>= 1).
        name: thread name prefix (``top -H``, tracebacks).
        nice: added to the decode threads' nice value on Linux (0 = unchanged), so that
            inference keeps the CPU when both want it.
        window: decode-time samples kept per camera for the percentiles.
    """

    def __init__(self, decode: Callable[[str, Any], Any],
                 on_decoded: Callable[[str, Any, Any], None],
                 on_error: Callable[[str, Any, BaseException], None],
                 threads: int = 2, name: str = 'decode', nice: int = 0,
                 window: int = DEFAULT_WINDOW) -> None:
        if threads < 1:
            raise ValueError(f'threads must be >= 1, got {threads}')
        self._decode = decode
        self._on_decoded = on_decoded
        self._on_error = on_error
        self._threads_wanted = int(threads)
        self._name = name
        self._nice = int(nice)
        self._window = window
        self._cond = threading.Condition()
        self._cameras: dict[str, _Camera] = {}
        self._ready: Deque[str] = deque()  # cameras with a pending message and none in flight
        self._threads: list[threading.Thread] = []
        self._stopping = False

    # -- producer side ------------------------------------------------------------------------

    def submit(self, camera: str, msg: Any) -> None:
        """Hand over the newest message of ``camera``; returns at once (never decodes here).

        Raises:
            ValueError: more than :data:`MAX_CAMERAS` distinct camera names.
        """
        with self._cond:
            cam = self._camera(camera)
            cam.submitted += 1
            if cam.has_pending:
                cam.dropped += 1  # newest wins
            cam.pending, cam.has_pending = msg, True
            if not cam.busy and camera not in self._ready:
                self._ready.append(camera)
                self._cond.notify()

    def _camera(self, camera: str) -> _Camera:
        cam = self._cameras.get(camera)
        if cam is None:
            if len(self._cameras) >= MAX_CAMERAS:
                raise ValueError(f'decode stage {self._name}: more than {MAX_CAMERAS} cameras')
            cam = self._cameras[camera] = _Camera(self._window)
        return cam

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
        return bool(self._threads)

    def start(self) -> None:
        """Start the decode threads (messages submitted before are decoded now)."""
        with self._cond:
            if self._threads:
                raise RuntimeError(f'decode stage {self._name} is already running')
            self._stopping = False
            self._threads = [threading.Thread(target=self._run, name=f'{self._name}-{i}',
                                              daemon=True)
                             for i in range(self._threads_wanted)]
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: Optional[float] = None) -> bool:
        """Let running decodes finish, join the threads and drop what is still pending.

        Returns:
            True when every thread has ended (False only after ``timeout`` seconds).
        """
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            threads, self._threads = self._threads, []
        deadline = None if timeout is None else time.monotonic() + timeout
        alive = []
        for thread in threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                alive.append(thread.name)
        if alive:
            logger.warning('decode threads %s still busy after %.1f s; left running',
                           ', '.join(alive), timeout)
        with self._cond:
            for cam in self._cameras.values():
                if cam.has_pending:
                    cam.dropped += 1
                    cam.pending, cam.has_pending = None, False
            self._ready.clear()
        return not alive

    def wait_idle(self, timeout: float) -> bool:
        """Block until nothing is pending or being decoded (tests, shutdown); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while any(c.has_pending or c.busy for c in self._cameras.values()):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._threads:
                    return False
                self._cond.wait(remaining)
        return True

    # -- statistics ---------------------------------------------------------------------------

    def stats(self) -> dict[str, DecodeStats]:
        """Per-camera counters and decode-time percentiles, a consistent snapshot."""
        with self._cond:
            counts = {name: (c.submitted, c.decoded, c.failed, c.dropped, int(c.has_pending),
                             int(c.busy), c.last_error, c.decode_ms)
                      for name, c in self._cameras.items()}
        return {name: DecodeStats(sub, dec, fail, drop, pend, busy, window.percentile(50),
                                  window.percentile(95), err)
                for name, (sub, dec, fail, drop, pend, busy, err, window) in counts.items()}

    # -- decode threads -----------------------------------------------------------------------

    def _lower_priority(self) -> None:
        if self._nice <= 0 or not hasattr(os, 'setpriority'):
            return
        try:  # Linux: a thread id is a process id for setpriority
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + self._nice)
        except OSError as exc:
            logger.debug('could not renice %s: %s', threading.current_thread().name, exc)

    def _run(self) -> None:
        self._lower_priority()
        while True:
            with self._cond:
                while not self._ready and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                camera = self._ready.popleft()
                cam = self._cameras[camera]
                msg, cam.pending, cam.has_pending = cam.pending, None, False
                cam.busy = True
            failure = self._handle(camera, cam, msg)
            with self._cond:
                if failure is None:
                    cam.decoded += 1
                else:
                    cam.failed += 1
                    cam.last_error = failure
                cam.busy = False
                if cam.has_pending and not self._stopping:
                    self._ready.append(camera)  # behind the others: round-robin
                self._cond.notify_all()

    def _handle(self, camera: str, cam: _Camera, msg: Any) -> Optional[str]:
        """Decode and deliver one message; return None, or the failure's repr."""
        start = time.perf_counter()
        try:
            frame = self._decode(camera, msg)
            cam.decode_ms.add((time.perf_counter() - start) * 1e3)
            self._on_decoded(camera, msg, frame)
        except Exception as exc:  # a bad message must not stop the stage
            try:
                self._on_error(camera, msg, exc)
            except Exception:
                logger.exception('decode stage %s: on_error raised for camera %s', self._name,
                                 camera)
            return repr(exc)
        return None
