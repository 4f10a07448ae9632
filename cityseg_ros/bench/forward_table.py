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

"""Table 1: model forward time per model at its test size, by precision and memory format."""

import logging
from typing import Optional, Sequence

from cityseg_ros.bench.timing import markdown_table, time_call
from cityseg_ros.engine import Segmenter
from cityseg_ros.errors import CitysegError
import numpy as np
import torch

logger = logging.getLogger(__name__)

#: (precision, channels_last) variants timed on each device.
CPU_VARIANTS = (('fp32', False), ('fp32', True), ('bf16', False))
CUDA_VARIANTS = (('fp32', False), ('fp32', True), ('fp16', True), ('bf16', True))


def run(models: Sequence[str] = ('espnetv2',), device: str = 'auto', runs: int = 5,
        batch_size: int = 1, sizes: Optional[Sequence[Sequence[int]]] = None) -> str:
    """Time ``Segmenter.forward`` (network + logit upsampling) and the whole ``predict``.

    Args:
        models: zoo names.
        device: where to run.
        runs: timed runs per row, after 2 warm-up runs.
        batch_size: images per forward.
        sizes: (H, W) network input sizes; default: each model's test size.

    Returns:
        A markdown table; a variant that fails (OOM, unsupported) becomes an error row.
    """
    rows = []
    for name in models:
        for prec, cl in (CUDA_VARIANTS if _is_cuda(device) else CPU_VARIANTS):
            for size in sizes or [None]:
                rows.append(_row(name, device, prec, cl, runs, batch_size, size))
    header = ['model', 'input HxW', 'batch', 'precision', 'channels_last', 'forward ms (p50)',
              'forward ms (p95)', 'images/s', 'predict ms (p50, 2048x1024 in)']
    return markdown_table(header, rows)


def _is_cuda(device: str) -> bool:
    return device.startswith('cuda') or (device == 'auto' and torch.cuda.is_available())


def _row(name, device, precision, channels_last, runs, batch_size, size) -> list:
    label = [name, '', batch_size, precision, channels_last]
    try:
        seg = Segmenter(name, weights=None, device=device, precision=precision,
                        input_size=size, channels_last=channels_last)
    except CitysegError as exc:
        return label + [f'error: {exc}', '', '', '']
    h, w = seg.input_size
    label[1] = f'{h}x{w}'
    try:
        with torch.inference_mode():
            x = seg.preprocess([np.zeros((h, w, 3), np.uint8)] * batch_size)
            fwd = time_call(lambda: seg.forward(x), runs=runs)
        frame = [np.random.default_rng(0).integers(0, 256, (1024, 2048, 3), dtype=np.uint8)]
        pred = time_call(lambda: seg.predict(frame * batch_size), runs=max(2, runs // 2))
    except (RuntimeError, MemoryError) as exc:  # OOM and unsupported kernels become rows
        return label + [f'error: {str(exc).splitlines()[0][:80]}', '', '', '']
    finally:
        seg.close()
    return label + [f'{fwd.median_ms:.1f}', f'{fwd.p95_ms:.1f}',
                    f'{1e3 * batch_size / fwd.median_ms:.2f}', f'{pred.median_ms:.1f}']
