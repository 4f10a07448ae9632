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

import os
import threading

from cityseg_ros.decoding import DecodeStage, MAX_CAMERAS
import pytest

TIMEOUT = 10.0


class Recorder:
    """Callbacks that record what the stage did, with an optional gate that holds decodes."""

    def __init__(self):
        self.lock = threading.Lock()
        self.decoded = []        # (camera, msg) in completion order
        self.errors = []         # (camera, msg, exc)
        self.threads = set()
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()
        self.active = {}
        self.max_active = {}

    def decode(self, camera, msg):
        with self.lock:
            self.threads.add(threading.get_ident())
            self.active[camera] = self.active.get(camera, 0) + 1
            self.max_active[camera] = max(self.max_active.get(camera, 0), self.active[camera])
        self.started.set()
        try:
            assert self.gate.wait(TIMEOUT)
            if isinstance(msg, Exception):
                raise msg
            return ('frame', msg)
        finally:
            with self.lock:
                self.active[camera] -= 1

    def on_decoded(self, camera, msg, frame):
        assert frame == ('frame', msg)
        with self.lock:
            self.decoded.append((camera, msg))

    def on_error(self, camera, msg, exc):
        with self.lock:
            self.errors.append((camera, msg, exc))


@pytest.fixture
def rec():
    return Recorder()


def _stage(rec, **kwargs):
    return DecodeStage(rec.decode, rec.on_decoded, rec.on_error, **kwargs)


def _invariant_holds(stats):
    return all(s.submitted == s.decoded + s.failed + s.dropped + s.pending + s.busy
               for s in stats.values())


def test_decodes_off_the_callers_thread(rec):
    stage = _stage(rec)
    stage.start()
    try:
        stage.submit('left', 1)
        assert stage.wait_idle(TIMEOUT)
    finally:
        assert stage.stop(TIMEOUT)
    assert rec.decoded == [('left', 1)]
    assert threading.get_ident() not in rec.threads


def test_newest_message_wins_and_overwritten_ones_count_as_dropped(rec):
    stage = _stage(rec, threads=1)
    rec.gate.clear()
    stage.start()
    try:
        stage.submit('left', 0)
        assert rec.started.wait(TIMEOUT)  # 0 is being decoded, held at the gate
        for msg in range(1, 6):
            stage.submit('left', msg)     # each overwrites the previous pending one
        stats = stage.stats()['left']
        assert (stats.busy, stats.pending, stats.dropped) == (1, 1, 4)
        assert _invariant_holds(stage.stats())
        rec.gate.set()
        assert stage.wait_idle(TIMEOUT)
    finally:
        stage.stop(TIMEOUT)
    assert rec.decoded == [('left', 0), ('left', 5)]
    stats = stage.stats()['left']
    assert (stats.submitted, stats.decoded, stats.dropped, stats.failed) == (6, 2, 4, 0)
    assert stats.decode_p50_ms is not None and stats.decode_p95_ms >= stats.decode_p50_ms


def test_cameras_are_served_round_robin_so_none_starves(rec):
    # One thread; camera 'hot' resubmits from its own callback, so it always has work. The
    # others must still be decoded in turn, not after 'hot' runs dry.
    stage = None

    def on_decoded(camera, msg, frame):
        rec.on_decoded(camera, msg, frame)
        if camera == 'hot' and msg < 50:
            stage.submit('hot', msg + 1)

    stage = DecodeStage(rec.decode, on_decoded, rec.on_error, threads=1)
    rec.gate.clear()
    stage.start()
    try:
        stage.submit('hot', 0)
        assert rec.started.wait(TIMEOUT)
        for camera in ('a', 'b', 'c'):
            stage.submit(camera, 0)
        rec.gate.set()
        assert stage.wait_idle(TIMEOUT)
    finally:
        stage.stop(TIMEOUT)
    order = [camera for camera, _ in rec.decoded]
    assert order[:5] == ['hot', 'a', 'b', 'c', 'hot']
    assert order.count('hot') == 51


def test_one_camera_is_decoded_in_order_one_at_a_time(rec):
    stage = _stage(rec, threads=3)
    stage.start()
    try:
        for msg in range(200):
            stage.submit('left', msg)
        assert stage.wait_idle(TIMEOUT)
    finally:
        stage.stop(TIMEOUT)
    msgs = [msg for _, msg in rec.decoded]
    assert msgs == sorted(msgs) and msgs[-1] == 199
    assert rec.max_active['left'] == 1
    assert _invariant_holds(stage.stats())


def test_cameras_decode_in_parallel_up_to_the_thread_count(rec):
    barrier = threading.Barrier(2, timeout=TIMEOUT)

    def decode(camera, msg):
        barrier.wait()  # both cameras must be inside decode at the same time
        return ('frame', msg)

    stage = DecodeStage(decode, rec.on_decoded, rec.on_error, threads=2)
    stage.start()
    try:
        stage.submit('left', 1)
        stage.submit('right', 1)
        assert stage.wait_idle(TIMEOUT)
    finally:
        stage.stop(TIMEOUT)
    assert sorted(rec.decoded) == [('left', 1), ('right', 1)] and not rec.errors


def test_failures_are_counted_reported_and_the_stage_goes_on(rec):
    stage = _stage(rec, threads=1)
    stage.start()
    bad = ValueError('corrupt JPEG')
    try:
        stage.submit('left', bad)
        assert stage.wait_idle(TIMEOUT)
        stage.submit('left', 2)
        assert stage.wait_idle(TIMEOUT)
    finally:
        stage.stop(TIMEOUT)
    assert rec.errors == [('left', bad, bad)]
    assert rec.decoded == [('left', 2)]
    stats = stage.stats()['left']
    assert (stats.failed, stats.decoded) == (1, 1) and 'corrupt JPEG' in stats.last_error


def test_a_raising_on_error_or_on_decoded_does_not_stop_the_stage(rec, caplog):
    calls = []

    def on_decoded(camera, msg, frame):
        calls.append(msg)
        if msg == 1:
            raise RuntimeError('publisher gone')

    def on_error(camera, msg, exc):
        raise RuntimeError('logger gone too')

    stage = DecodeStage(rec.decode, on_decoded, on_error, threads=1)
    stage.start()
    try:
        stage.submit('left', 1)
        assert stage.wait_idle(TIMEOUT)
        stage.submit('left', 2)
        assert stage.wait_idle(TIMEOUT)
    finally:
        stage.stop(TIMEOUT)
    assert calls == [1, 2]
    stats = stage.stats()['left']
    assert (stats.failed, stats.decoded) == (1, 1)
    assert 'on_error raised' in caplog.text


def test_submit_before_start_is_decoded_and_stop_drops_what_is_pending(rec):
    stage = _stage(rec, threads=1)
    stage.submit('left', 1)
    stage.submit('left', 2)
    stage.start()
    assert stage.wait_idle(TIMEOUT)
    assert rec.decoded == [('left', 2)]
    rec.gate.clear()
    stage.submit('left', 3)
    assert rec.started.wait(TIMEOUT)
    stage.submit('left', 4)  # pending while 3 is held
    rec.gate.set()
    assert stage.stop(TIMEOUT)
    assert not stage.running
    stats = stage.stats()['left']
    assert stats.pending == 0 and stats.busy == 0
    assert stats.submitted == stats.decoded + stats.dropped + stats.failed
    stage.start()  # restartable
    stage.submit('left', 5)
    assert stage.wait_idle(TIMEOUT)
    stage.stop(TIMEOUT)
    assert rec.decoded[-1] == ('left', 5)


def test_bad_arguments_and_too_many_cameras(rec):
    with pytest.raises(ValueError, match='threads'):
        _stage(rec, threads=0)
    stage = _stage(rec)
    for index in range(MAX_CAMERAS):
        stage.submit(f'cam{index}', index)
    with pytest.raises(ValueError, match='cameras'):
        stage.submit('one_too_many', 0)


@pytest.mark.skipif(not hasattr(os, 'setpriority'), reason='no per-thread nice on this OS')
def test_nice_lowers_the_decode_threads_priority(rec):
    seen = []

    def decode(camera, msg):
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        return ('frame', msg)

    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    if base + 5 > 19:
        pytest.skip('already at the lowest priority')
    stage = DecodeStage(decode, rec.on_decoded, rec.on_error, threads=1, nice=5)
    stage.start()
    try:
        stage.submit('left', 1)
        assert stage.wait_idle(TIMEOUT)
    finally:
        stage.stop(TIMEOUT)
    assert seen == [base + 5]
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == base
