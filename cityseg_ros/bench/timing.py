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

"""Timing helpers shared by the benchmark tables: warm-up, device sync, median and p95."""

from dataclasses import dataclass
import platform
import statistics
import time
from typing import Callable

import torch

__all__ = ['Timing', 'time_call', 'environment_line', 'markdown_table', 'peak_memory']


@dataclass(frozen=True)
class Timing:
    """Milliseconds per call after warm-up."""

    median_ms: float
    p95_ms: float
    runs: int


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def time_call(fn: Callable[[], object], warmup: int = 2, runs: int = 5,
              min_seconds: float = 0.0) -> Timing:
    """Time ``fn`` (synchronising CUDA around each call) and return median and p95 in ms."""
    for _ in range(warmup):
        fn()
    samples = []
    start_all = time.perf_counter()
    while len(samples) < runs or time.perf_counter() - start_all < min_seconds:
        _sync()
        start = time.perf_counter()
        fn()
        _sync()
        samples.append((time.perf_counter() - start) * 1e3)
    samples.sort()
    p95 = samples[min(len(samples) - 1, int(round(0.95 * (len(samples) - 1))))]
    return Timing(statistics.median(samples), p95, len(samples))


def environment_line() -> str:
    """Describe where the numbers come from: CPU/GPU, torch version and thread count."""
    if torch.cuda.is_available():
        device = torch.cuda.get_device_name(0)
    else:
        device = platform.processor() or platform.machine()
    return (f'device: {device}; torch {torch.__version__}; '
            f'{torch.get_num_threads()} CPU threads; python {platform.python_version()}')


def markdown_table(header: list, rows: list) -> str:
    """Format rows (lists of cells) as a GitHub markdown table."""
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    lines += ['| ' + ' | '.join(str(c) for c in row) + ' |' for row in rows]
    return '\n'.join(lines)


def peak_memory(fn: Callable[[], torch.Tensor]) -> tuple:
    """Run ``fn`` once; return (rise of the peak resident set in GiB or None, its output)."""
    try:
        with open('/proc/self/clear_refs', 'w') as fh:
            fh.write('5')  # resets VmHWM to the current resident set
        base = _status_kib('VmRSS:')
    except OSError:
        base = None
    out = fn()
    if base is None:
        return None, out
    return (_status_kib('VmHWM:') - base) * 1024 / float(1 << 30), out


def _status_kib(field: str) -> int:
    with open('/proc/self/status') as fh:
        for line in fh:
            if line.startswith(field):
                return int(line.split()[1])
    raise OSError(f'/proc/self/status has no {field}')
