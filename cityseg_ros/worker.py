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

"""Inference thread: a one-slot, newest-wins mailbox, counters and latency statistics.

Producers (subscription callbacks) call :meth:`Worker.submit` and return at once; one thread
takes the newest item and runs ``process(item)`` on it. A newer item overwrites a pending one,
which is counted as dropped, so a slow model sheds load instead of queueing it: latency stays at
most about two processing times whatever the input rate. camera_calibration's ``BufferQueue`` +
``ConsumerThread`` have the same idea; this one takes plain callables, stops on an Event, and
imports no ROS, so plain threads test it.

Invariant, at any time: ``submitted == processed + failed + dropped + pending + busy``.
"""

from collections import deque
from dataclasses import dataclass
import logging
import threading
import time
from typing import Any, Callable, Deque, Generic, Optional, TypeVar

import numpy as np

__all__ = ['LatencyWindow', 'Worker', 'WorkerStats']

logger = logging.getLogger(__name__)

T = TypeVar('T')

#: How many recent samples the percentiles are taken over (a few seconds at camera rates).
DEFAULT_WINDOW = 256


class LatencyWindow:
    """Thread-safe ring of the most recent durations (ms) with last value and percentiles.

    Args:
        size: number of recent samples kept; memory stays bounded however long the node runs.
    """

    def __init__(self, size: int = DEFAULT_WINDOW) -> None:
        if size < 1:
            raise ValueError(f'window size must be >= 1, got {size}')
        self._samples: Deque[float] = deque(maxlen=size)
        self._lock = threading.Lock()
        self._count = 0

    def add(self, ms: float) -> None:
        """Record one duration in milliseconds."""
        with self._lock:
            self._samples.append(float(ms))
            self._count += 1

    @property
    def count(self) -> int:
        """Samples recorded since creation (not only those still in the window)."""
        return self._count

    @property
    def last(self) -> Optional[float]:
        """The most recent sample in ms, or None before the first."""
        with self._lock:
            return self._samples[-1] if self._samples else None

    def percentile(self, q: float) -> Optional[float]:
        """Return the q-th percentile of the window in ms (q in 0..100), or None when empty."""
        with self._lock:
            if not self._samples:
                return None
            values = np.fromiter(self._samples, dtype=np.float64, count=len(self._samples))
        return float(np.percentile(values, q))

    def clear(self) -> None:
        """Forget all samples."""
        with self._lock:
            self._samples.clear()
            self._count = 0


@dataclass(frozen=True)
class WorkerStats:
    """A snapshot of a :class:`Worker`'s counters; times in milliseconds, None before data.

    Attributes:
        submitted: items handed to :meth:`Worker.submit`.
        processed: items whose ``process`` returned normally.
        failed: items whose ``process`` raised (reported to ``on_error``).
        dropped: items overwritten in the slot by a newer one, or left there at stop.
        pending: 1 while an item waits in the slot, else 0.
        busy: 1 while ``process`` runs on an item, else 0.
        last_latency_ms: submit -> process done of the latest item (mailbox wait + process).
        latency_p50_ms: median of that over the recent window.
        latency_p95_ms: 95th percentile of that over the recent window.
        last_process_ms: duration of the latest ``process`` call.
        process_p50_ms: median ``process`` duration.
        last_inference_ms: latest value given to :meth:`Worker.record_inference` (the model's
            share of ``process``), None when ``process`` never reports one.
        inference_p50_ms: median of those.
        inference_p95_ms: 95th percentile of those.
        last_error: ``repr`` of the latest exception from ``process``, None if none.
        busy_for_s: seconds the current ``process`` call has been running, None when idle
            (a model that hangs shows here, not as silence).
    """

    submitted: int
    processed: int
    failed: int
    dropped: int
    pending: int
    busy: int
    last_latency_ms: Optional[float]
    latency_p50_ms: Optional[float]
    latency_p95_ms: Optional[float]
    last_process_ms: Optional[float]
    process_p50_ms: Optional[float]
    last_inference_ms: Optional[float]
    inference_p50_ms: Optional[float]
    inference_p95_ms: Optional[float]
    last_error: Optional[str]
    busy_for_s: Optional[float] = None


class Worker(Generic[T]):
    """One thread that runs ``process`` on the newest submitted item.

    Args:
        process: called on the worker thread with each item taken from the slot.
        on_error: called on the worker thread with ``(item, exc)`` when ``process`` raises an
            ``Exception`` (a bad frame, CUDA out of memory); the loop goes on. Default: log it.
        name: thread name, shown in tracebacks and ``top -H``.
        window: samples kept for the latency percentiles.
    """

    def __init__(self, process: Callable[[T], Any],
                 on_error: Optional[Callable[[T, BaseException], Any]] = None,
                 name: str = 'cityseg-worker', window: int = DEFAULT_WINDOW) -> None:
        self._process = process
        self._on_error = on_error
        self._name = name
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        # The mailbox: at most one (item, submit time) waits here; guarded by _cond.
        self._slot: Optional[tuple] = None
        self._submitted = 0
        self._processed = 0
        self._failed = 0
        self._dropped = 0
        self._busy = 0
        self._busy_since = 0.0
        self._last_error: Optional[str] = None
        self.latency = LatencyWindow(window)
        self.process_time = LatencyWindow(window)
        self.inference = LatencyWindow(window)

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the thread; a stopped worker can be started again (its counters carry on)."""
        if self.running:
            raise RuntimeError(f'worker {self._name} is already running')
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def stop(self, timeout: Optional[float] = None) -> bool:
        """Ask the thread to finish its current item, then join it.

        A pending item is not processed: it is counted as dropped.

        Args:
            timeout: seconds to wait for the join; None waits for the current ``process``.

        Returns:
            True when the thread has ended (False only after a timeout).
        """
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                logger.warning('worker %s still busy after %.1f s; left running', self._name,
                               timeout)
                return False
        self._thread = None
        with self._cond:
            if self._slot is not None:
                self._slot = None
                self._dropped += 1
        return True

    @property
    def running(self) -> bool:
        """Whether the thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    # -- producer side --------------------------------------------------------------------------

    def submit(self, item: T) -> bool:
        """Put ``item`` in the slot, overwriting (and counting as dropped) a pending one.

        Never blocks on ``process``: safe from executor callbacks.

        Returns:
            True when an older pending item was dropped to make room.
        """
        now = time.monotonic()
        with self._cond:
            dropped = self._slot is not None
            self._dropped += dropped
            self._submitted += 1
            self._slot = (item, now)
            self._cond.notify()
        return dropped

    def record_inference(self, ms: float) -> None:
        """Let ``process`` report the model's share of its time (shown as inference ms)."""
        self.inference.add(ms)

    # -- results ------------------------------------------------------------------------------

    @property
    def stats(self) -> WorkerStats:
        """A consistent snapshot of the counters and timing statistics."""
        with self._cond:
            counts = (self._submitted, self._processed, self._failed, self._dropped,
                      int(self._slot is not None), self._busy, self._last_error)
            busy_for = time.monotonic() - self._busy_since if self._busy else None
        return WorkerStats(
            submitted=counts[0], processed=counts[1], failed=counts[2], dropped=counts[3],
            pending=counts[4], busy=counts[5],
            last_latency_ms=self.latency.last,
            latency_p50_ms=self.latency.percentile(50),
            latency_p95_ms=self.latency.percentile(95),
            last_process_ms=self.process_time.last,
            process_p50_ms=self.process_time.percentile(50),
            last_inference_ms=self.inference.last,
            inference_p50_ms=self.inference.percentile(50),
            inference_p95_ms=self.inference.percentile(95),
            last_error=counts[6], busy_for_s=busy_for)

    # -- the thread -----------------------------------------------------------------------------

    def _take(self) -> Optional[tuple]:
        with self._cond:
            while self._slot is None and not self._stop.is_set():
                self._cond.wait()
            if self._stop.is_set():
                return None
            entry, self._slot = self._slot, None
            self._busy = 1
            self._busy_since = time.monotonic()
            return entry

    def _run(self) -> None:
        while True:
            entry = self._take()
            if entry is None:
                return
            item, submitted_at = entry
            start = time.monotonic()
            try:
                self._process(item)
            except Exception as exc:  # noqa: B902 -- any failure of one frame, CUDA OOM too
                with self._cond:
                    self._failed += 1
                    self._busy = 0
                    self._last_error = repr(exc)
                self._report(item, exc)
                continue
            end = time.monotonic()
            with self._cond:
                self._processed += 1
                self._busy = 0
            self.process_time.add((end - start) * 1e3)
            self.latency.add((end - submitted_at) * 1e3)

    def _report(self, item: T, exc: BaseException) -> None:
        if self._on_error is None:
            logger.error('worker %s: processing failed: %r', self._name, exc)
            return
        try:
            self._on_error(item, exc)
        except Exception:  # noqa: B902 -- a broken reporter must not end the loop either
            logger.exception('worker %s: on_error raised while reporting %r', self._name, exc)
