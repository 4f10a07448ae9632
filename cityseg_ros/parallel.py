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

"""CPU execution helpers: images of a batch side by side, and a heap that keeps freed memory.

Why a stereo pair is not one batch on CPU. A light network such as ESPNetv2 is a long chain of
small, memory-bound operators; with two intra-op threads each of them splits its work and then
waits at a barrier, so two threads give only ~1.3x one thread, and a batch of two is slower than
two single passes. Running the two images side by side, each on one thread (or each on half of
the threads), keeps both cores busy with no barrier between them. The per-thread thread count
is OpenMP's per-thread ``nthreads`` setting, which ``torch.set_num_threads`` sets for the
calling thread only; other ATen parallel backends have a process-wide count, so there the
images simply run one after the other.

Why the heap settings. glibc hands allocations above its mmap threshold (at most 32 MiB by its
dynamic rule) straight to the kernel and returns them on free, and trims the heap top past its
trim threshold, so large activations are page-faulted in again on every forward (~90 k faults,
~0.16 s of kernel time per stereo batch of ESPNetv2 at 1024x512). Worker threads allocate from
their own arenas, whose 64 MiB heaps are shrunk or unmapped as soon as more than ``M_TOP_PAD``
(128 KiB) is free at their top, whatever the thresholds: 25-60 k faults per pair side by side.
Raising the three keeps freed blocks in the process for reuse (a few hundred faults per pair);
blocks above 256 MiB (large models at large sizes) still go back to the system.
"""

from concurrent.futures import ThreadPoolExecutor
import ctypes
import logging
import platform
import threading
from typing import Callable, Optional, Sequence

import torch

__all__ = ['keep_freed_memory', 'parallel_map', 'parallel_images_supported', 'close_pools']

logger = logging.getLogger(__name__)

#: glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
#: Blocks up to this size are served from (and returned to) the heap instead of mmap.
MMAP_THRESHOLD = 256 << 20
#: Free memory at the top of the main heap above this is returned to the system.
TRIM_THRESHOLD = 512 << 20
#: Slack kept at the top of every heap, also the threads' (their heaps are 64 MiB at most).
TOP_PAD = 64 << 20

_lock = threading.Lock()
_malloc_done: Optional[bool] = None
_pools: dict = {}
#: Pools kept alive at once (each is a few idle threads); the oldest is shut down beyond this.
MAX_POOLS = 2


def keep_freed_memory() -> bool:
    """Make glibc keep large freed blocks for reuse (once per process; no-op elsewhere).

    Returns:
        True if the setting is in effect.
    """
    global _malloc_done
    with _lock:
        if _malloc_done is not None:
            return _malloc_done
        _malloc_done = False
        if platform.system() != 'Linux' or platform.libc_ver()[0] != 'glibc':
            return False
        try:
            libc = ctypes.CDLL('libc.so.6')
            ok = (libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and
                  libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and
                  libc.mallopt(_M_TOP_PAD, TOP_PAD) == 1)
        except (OSError, AttributeError):
            ok = False
        _malloc_done = ok
        if ok:
            logger.debug('glibc keeps freed blocks up to %d MiB (mallopt)', MMAP_THRESHOLD >> 20)
        return ok


def parallel_images_supported() -> bool:
    """Tell whether intra-op thread counts are per thread (ATen's OpenMP backend)."""
    return 'parallel backend: OpenMP' in torch.__config__.parallel_info()


class _Pool:
    """Worker threads whose intra-op thread counts are fixed when each thread starts."""

    def __init__(self, threads: Sequence[int]) -> None:
        self.threads = tuple(threads)
        self._ready = threading.Barrier(len(threads) + 1, timeout=60)
        self._start_lock = threading.Lock()
        self._ok = []
        self._executor = ThreadPoolExecutor(len(threads), thread_name_prefix='cityseg-img')
        total = torch.get_num_threads()
        for count in self.threads:
            self._executor.submit(self._init_worker, count)
        try:
            self._ready.wait()
        except threading.BrokenBarrierError:
            self._ok.append(False)
        torch.set_num_threads(total)  # the process-wide default the workers overwrote
        self.ok = all(self._ok) and len(self._ok) == len(threads)

    def _init_worker(self, count: int) -> None:
        try:
            with self._start_lock:  # one at a time: set_num_threads writes a global default too
                torch.set_num_threads(count)
                # The first query runs ATen's lazy per-thread init, which reads that global
                # default; from then on this thread keeps its own count.
                self._ok.append(torch.get_num_threads() == count)
        except Exception:  # reported through self.ok; the images then run one by one
            self._ok.append(False)
        try:
            # Hold the thread until every worker exists, so that each one gets a thread.
            self._ready.wait()
        except threading.BrokenBarrierError:
            pass

    def run(self, fn: Callable, items: Sequence) -> list:
        futures = [self._executor.submit(fn, item) for item in items]
        return [f.result() for f in futures]

    def close(self) -> None:
        self._executor.shutdown(wait=False)


def _split(total: int, workers: int) -> tuple:
    base, extra = divmod(total, workers)
    return tuple(base + (i < extra) for i in range(workers))


def _pool(total: int, workers: int) -> Optional[_Pool]:
    key = (total, workers)
    with _lock:
        pool = _pools.get(key)
        if pool is None:
            pool = _Pool(_split(total, workers))
            if not pool.ok:
                logger.info('per-thread intra-op thread counts are not honoured here: images of '
                            'a batch run one after the other')
            _pools[key] = pool
            while len(_pools) > MAX_POOLS:
                _pools.pop(next(iter(_pools))).close()
        return pool if pool.ok else None


def parallel_map(fn: Callable, items: Sequence, enabled: bool = True) -> list:
    """``[fn(x) for x in items]``, the items side by side on the intra-op threads.

    With T intra-op threads (``torch.get_num_threads()`` of the caller) and N items, min(N, T)
    worker threads share the T threads; ``fn`` runs in those workers, so it must set up its
    own thread-local state (``torch.inference_mode``, autocast). One item, one thread, a
    non-OpenMP build or ``enabled=False``: a plain loop in the calling thread.
    """
    total = torch.get_num_threads()
    workers = min(len(items), total)
    if not enabled or workers < 2 or not parallel_images_supported():
        return [fn(item) for item in items]
    pool = _pool(total, workers)
    if pool is None:
        return [fn(item) for item in items]
    return pool.run(fn, items)


def close_pools() -> None:
    """Shut the worker threads down (tests; they are idle and cheap otherwise)."""
    with _lock:
        while _pools:
            _pools.popitem()[1].close()
