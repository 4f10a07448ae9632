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

"""The inference worker with plain threads: newest-wins slot, counters, errors, stop."""

import threading
import time

from cityseg_ros.worker import LatencyWindow, Worker, WorkerStats
import pytest


def _wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.002)
    return predicate()


def _balanced(stats: WorkerStats) -> bool:
    return stats.submitted == (stats.processed + stats.failed + stats.dropped + stats.pending
                               + stats.busy)


def test_worker_processes_every_item_when_consumer_keeps_up():
    seen = []
    worker = Worker(seen.append)
    worker.start()
    try:
        for i in range(5):
            worker.submit(i)
            assert _wait_for(lambda: len(seen) == i + 1)
    finally:
        assert worker.stop(timeout=5.0)
    stats = worker.stats
    assert seen == [0, 1, 2, 3, 4]
    assert (stats.submitted, stats.processed, stats.dropped, stats.failed) == (5, 5, 0, 0)
    assert stats.last_latency_ms is not None and stats.last_latency_ms >= 0.0
    assert stats.latency_p50_ms <= stats.latency_p95_ms
    assert stats.last_inference_ms is None  # process never reported one


def test_worker_drops_older_items_under_fast_producer_and_slow_consumer():
    seen = []

    def slow(item):
        seen.append(item)
        time.sleep(0.02)

    worker = Worker(slow)
    worker.start()
    n = 200
    try:
        for i in range(n):
            worker.submit(i)
            time.sleep(0.001)
        # The newest item is never the one dropped: it is processed in the end.
        assert _wait_for(lambda: worker.stats.pending == 0 and seen and seen[-1] == n - 1)
    finally:
        worker.stop(timeout=5.0)
    stats = worker.stats
    assert stats.submitted == n
    assert stats.processed == len(seen)
    assert stats.dropped == n - len(seen) > 0
    assert _balanced(stats)
    assert seen == sorted(seen)  # newest-wins never reorders
    # One waiting item at most: latency is bounded by about two processing times.
    assert stats.latency_p95_ms < 20 * 2 + 200


def test_worker_submit_never_blocks_on_process():
    release = threading.Event()
    worker = Worker(lambda item: release.wait(5.0))
    worker.start()
    try:
        start = time.monotonic()
        for i in range(1000):
            worker.submit(i)
        assert time.monotonic() - start < 1.0
    finally:
        release.set()
        worker.stop(timeout=5.0)


def test_worker_keeps_one_slot_so_memory_stays_bounded():
    release = threading.Event()
    worker = Worker(lambda item: release.wait(5.0))
    worker.start()
    try:
        assert _wait_for(lambda: worker.stats.submitted == 0)
        worker.submit(bytearray(1 << 20))
        assert _wait_for(lambda: worker.stats.pending == 0)  # taken: now blocked in process
        for _ in range(500):
            worker.submit(bytearray(1 << 20))  # 500 MiB if anything queued them
        stats = worker.stats
        assert (stats.pending, stats.busy, stats.dropped) == (1, 1, 499)
        assert _balanced(stats)
    finally:
        release.set()
        worker.stop(timeout=5.0)
    assert _balanced(worker.stats)


def test_worker_reports_errors_and_keeps_going():
    errors = []
    seen = []

    def process(item):
        if item % 2:
            raise RuntimeError(f'CUDA out of memory on item {item}')
        seen.append(item)

    worker = Worker(process, on_error=lambda item, exc: errors.append((item, exc)))
    worker.start()
    try:
        for i in range(6):
            worker.submit(i)
            assert _wait_for(lambda: worker.stats.processed + worker.stats.failed == i + 1)
    finally:
        worker.stop(timeout=5.0)
    stats = worker.stats
    assert seen == [0, 2, 4]
    assert [item for item, _ in errors] == [1, 3, 5]
    assert all(isinstance(exc, RuntimeError) for _, exc in errors)
    assert (stats.processed, stats.failed, stats.dropped) == (3, 3, 0)
    assert 'out of memory on item 5' in stats.last_error


def test_worker_survives_a_failing_error_callback(caplog):
    def broken_reporter(item, exc):
        raise ValueError('reporter is broken')

    seen = []

    def process(item):
        if item == 'bad':
            raise RuntimeError('bad frame')
        seen.append(item)

    worker = Worker(process, on_error=broken_reporter)
    worker.start()
    try:
        worker.submit('bad')
        assert _wait_for(lambda: worker.stats.failed == 1)
        worker.submit('good')
        assert _wait_for(lambda: seen == ['good'])
    finally:
        worker.stop(timeout=5.0)
    assert 'on_error raised' in caplog.text


def test_worker_stop_joins_the_thread_and_counts_the_pending_item_as_dropped():
    started = threading.Event()
    release = threading.Event()

    def process(item):
        started.set()
        release.wait(5.0)

    worker = Worker(process, name='test-worker')
    worker.start()
    assert worker.running
    worker.submit(1)
    assert started.wait(5.0)
    worker.submit(2)  # waits in the slot while 1 is processed
    threading.Timer(0.05, release.set).start()
    assert worker.stop(timeout=5.0)
    assert not worker.running
    assert not any(t.name == 'test-worker' for t in threading.enumerate())
    stats = worker.stats
    assert (stats.submitted, stats.processed, stats.dropped, stats.pending) == (2, 1, 1, 0)


def test_worker_stop_returns_false_when_process_outlives_the_timeout():
    release = threading.Event()
    worker = Worker(lambda item: release.wait(5.0))
    worker.start()
    worker.submit(0)
    assert _wait_for(lambda: worker.stats.pending == 0)
    assert worker.stop(timeout=0.05) is False
    release.set()
    assert worker.stop(timeout=5.0)


def test_worker_idle_stop_is_prompt_and_restart_works():
    seen = []
    worker = Worker(seen.append)
    worker.start()
    with pytest.raises(RuntimeError, match='already running'):
        worker.start()
    start = time.monotonic()
    assert worker.stop(timeout=5.0)
    assert time.monotonic() - start < 1.0
    worker.start()
    worker.submit('again')
    assert _wait_for(lambda: seen == ['again'])
    worker.stop(timeout=5.0)
    assert worker.stats.processed == 1


def test_worker_record_inference_feeds_the_inference_statistics():
    worker = Worker(lambda item: worker.record_inference(item))
    worker.start()
    try:
        for ms in (10.0, 20.0, 30.0):
            worker.submit(ms)
            assert _wait_for(lambda: worker.stats.last_inference_ms == ms)
    finally:
        worker.stop(timeout=5.0)
    stats = worker.stats
    assert stats.inference_p50_ms == pytest.approx(20.0)
    assert 20.0 < stats.inference_p95_ms <= 30.0


def test_latency_window_is_bounded_and_reports_percentiles():
    window = LatencyWindow(size=10)
    assert window.last is None and window.percentile(50) is None
    for ms in range(100):
        window.add(ms)
    assert window.count == 100
    assert window.last == 99.0
    assert window.percentile(0) == 90.0  # only the newest 10 are kept
    assert window.percentile(50) == pytest.approx(94.5)
    window.clear()
    assert window.percentile(95) is None
    with pytest.raises(ValueError, match='window size'):
        LatencyWindow(0)


def test_worker_stats_say_how_long_the_current_item_has_been_running():
    started, release = threading.Event(), threading.Event()

    def process(item):
        started.set()
        release.wait(5.0)

    worker = Worker(process)
    assert worker.stats.busy_for_s is None
    worker.start()
    try:
        worker.submit(1)
        assert started.wait(5.0)
        time.sleep(0.05)
        assert worker.stats.busy_for_s >= 0.04
    finally:
        release.set()
        worker.stop(timeout=5.0)
    assert worker.stats.busy_for_s is None
