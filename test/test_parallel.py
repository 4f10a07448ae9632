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

"""Images side by side: each worker gets its share of the threads, the caller keeps its own."""

import threading

from cityseg_ros import parallel
import pytest
import torch


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    parallel.close_pools()
    torch.set_num_threads(before)


needs_openmp = pytest.mark.skipif(not parallel.parallel_images_supported(),
                                  reason='per-thread thread counts need ATen on OpenMP')


@needs_openmp
def test_items_run_side_by_side_on_one_thread_each(two_threads):
    seen = []

    def work(i):
        seen.append(threading.current_thread().name)
        return i * i, torch.get_num_threads()

    out = parallel.parallel_map(work, [1, 2, 3, 4, 5])
    barrier = threading.Barrier(2, timeout=10)
    both = parallel.parallel_map(lambda _: barrier.wait() is not None, [0, 1])
    assert both == [True, True]  # two items really run at the same time
    assert [v for v, _ in out] == [1, 4, 9, 16, 25]  # in order
    assert {n for _, n in out} == {1}
    assert all(name.startswith('cityseg-img') for name in seen)
    assert torch.get_num_threads() == 2  # the caller's count is left alone


@needs_openmp
def test_threads_are_shared_out_when_there_are_more_threads_than_items(two_threads):
    torch.set_num_threads(3)
    barrier = threading.Barrier(2, timeout=10)

    def work(_):
        barrier.wait()  # both items in flight at once: one per worker
        return torch.get_num_threads()

    assert sorted(parallel.parallel_map(work, [0, 1])) == [1, 2]
    assert torch.get_num_threads() == 3


def test_one_item_or_disabled_runs_in_the_caller(two_threads):
    caller = threading.current_thread().name
    assert parallel.parallel_map(lambda _: threading.current_thread().name, [0]) == [caller]
    names = parallel.parallel_map(lambda _: threading.current_thread().name, [0, 1],
                                  enabled=False)
    assert names == [caller, caller]


@needs_openmp
def test_errors_reach_the_caller(two_threads):
    def work(i):
        if i == 1:
            raise ValueError('bad item 1')
        return i

    with pytest.raises(ValueError, match='bad item 1'):
        parallel.parallel_map(work, [0, 1])
    assert parallel.parallel_map(work, [0, 2]) == [0, 2]  # the pool still works


@needs_openmp
def test_pools_are_bounded(two_threads):
    for threads in (2, 3, 4, 2):
        torch.set_num_threads(threads)
        parallel.parallel_map(lambda _: None, [0, 1])
    assert len(parallel._pools) <= parallel.MAX_POOLS


def test_keep_freed_memory_is_idempotent():
    first = parallel.keep_freed_memory()
    assert parallel.keep_freed_memory() is first
