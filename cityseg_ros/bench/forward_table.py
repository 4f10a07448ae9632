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

"""Table 1: model forward time per model and variant, and the stereo-pair predict beside it.

The second table holds the real-time acceptance numbers in one run: one network forward, two
of them back to back, a batch of two, and ``Segmenter.predict`` of a 2048x1024 stereo pair
(labels, and labels + confidence), timed interleaved (one call of each in turn) so that load
from other processes hits every column alike.
"""

import logging
from pathlib import Path
import statistics
import time
from typing import Callable, Optional, Sequence

from cityseg_ros.bench.timing import markdown_table, time_call, Timing
from cityseg_ros.engine import Segmenter
from cityseg_ros.errors import CitysegError
import numpy as np
import torch

logger = logging.getLogger(__name__)

#: (precision, channels_last) variants timed on each device.
CPU_VARIANTS = (('fp32', False), ('fp32', True), ('bf16', False))
CUDA_VARIANTS = (('fp32', False), ('fp32', True), ('fp16', True), ('bf16', True))
#: The camera size of the stereo-pair rows (Cityscapes).
PAIR_SIZE = (1024, 2048)
_SHARED = Path(__file__).resolve().parents[3] / 'shared' / 'data'
_PAIR = ('val', 'frankfurt', 'frankfurt_000000_009291')


def run(models: Sequence[str] = ('espnetv2',), device: str = 'auto', runs: int = 5,
        batch_size: int = 1, sizes: Optional[Sequence[Sequence[int]]] = None) -> str:
    """Time ``Segmenter.forward`` (network + logit upsampling) and the whole ``predict``.

    Args:
        models: zoo names.
        device: where to run.
        runs: timed runs per row, after 2 warm-up runs (the pair table takes 4x as many).
        batch_size: images per forward.
        sizes: (H, W) network input sizes; default: each model's test size.

    Returns:
        Two markdown tables; a variant that fails (OOM, unsupported) becomes an error row.
    """
    rows = []
    for name in models:
        for prec, cl in (CUDA_VARIANTS if _is_cuda(device) else CPU_VARIANTS):
            for size in sizes or [None]:
                rows.append(_row(name, device, prec, cl, runs, batch_size, size))
    header = ['model', 'input HxW', 'batch', 'precision', 'channels_last', 'forward ms (p50)',
              'forward ms (p95)', 'images/s', 'predict ms (p50, 2048x1024 in)']
    pair_tables = [pair_table(name, device, 4 * runs) for name in models]
    return '\n\n'.join([markdown_table(header, rows)] + pair_tables)


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


# -- the stereo pair ----------------------------------------------------------------------------


def _pair_inputs(name: str) -> tuple:
    """(weights or None, left, right, description): real files from ../shared when present."""
    from cityseg_ros.checkpoints import cache_dir
    from cityseg_ros.imageio import read_rgb
    from cityseg_ros.models.zoo import get_spec

    spec = get_spec(name)
    weights = None
    if spec.weights:
        filename = spec.weights[0].filename
        found = [p for p in (_SHARED / 'weights' / name / filename, cache_dir() / filename)
                 if p.is_file()]
        weights = str(found[0]) if found else None
    split, city, stem = _PAIR
    root = _SHARED / 'cityscapes'
    left = root / 'leftImg8bit' / split / city / f'{stem}_leftImg8bit.png'
    right = root / 'rightImg8bit' / split / city / f'{stem}_rightImg8bit.png'
    if left.is_file() and right.is_file():
        images = read_rgb(left), read_rgb(right)
        what = f'Cityscapes {stem} left + right'
    else:
        rng = np.random.default_rng(0)
        images = tuple(rng.integers(0, 256, (*PAIR_SIZE, 3), dtype=np.uint8) for _ in range(2))
        what = 'random 2048x1024 images (../shared absent)'
    return weights, images[0], images[1], what


def _interleaved(fns: dict, runs: int, warmup: int = 2) -> dict:
    """Time each callable ``runs`` times, one call of each in turn; {name: Timing}."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    samples = {key: [] for key in fns}
    for _ in range(runs):
        for key, fn in fns.items():
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                torch.cuda.synchronize()
            samples[key].append((time.perf_counter() - start) * 1e3)
    out = {}
    for key, values in samples.items():
        values.sort()
        p95 = values[min(len(values) - 1, int(round(0.95 * (len(values) - 1))))]
        out[key] = Timing(statistics.median(values), p95, len(values))
    return out


def pair_table(name: str = 'espnetv2', device: str = 'auto', runs: int = 20,
               input_size: Optional[Sequence[int]] = None) -> str:
    """Time the stereo-pair predict next to one, two and a batch of two network forwards.

    "network forward" is the network alone (normalised batch in, logits out, as a backend
    runs it); "pair predict" is ``Segmenter.predict([left, right])`` from uint8 images to
    labels at 2048x1024. Rows: labels with the images side by side on the CPU threads (the
    default), the same one image after the other, and labels + confidence.
    """
    weights, left, right, what = _pair_inputs(name)
    try:
        seg = Segmenter(name, weights=weights, device=device, input_size=input_size)
    except CitysegError as exc:
        return f'{name}: error: {exc}'
    note = (f'Stereo pair: {what}; {name} at {seg.input_size[0]}x{seg.input_size[1]}, '
            f'{"official" if weights else "random"} weights, {seg.device}, '
            f'{torch.get_num_threads()} threads; {runs} runs each, interleaved.')
    header = ['predict', 'network forward, 1 image ms (p50)', '2 network forwards ms (p50)',
              'network forward, batch of 2 ms (p50)', 'pair predict ms (p50)',
              'pair predict ms (p95)', 'pair predict / 2 forwards']
    try:
        with torch.inference_mode():
            one = seg.preprocess([left])
            two = seg.preprocess([left, right])
            other = seg.preprocess([right])

        def forward(x: torch.Tensor) -> Callable[[], object]:
            def call():
                with torch.inference_mode():
                    return seg.logits(x)
            return call

        def predict(confidence: bool, side_by_side: bool) -> Callable[[], object]:
            def call():
                seg._parallel_images = side_by_side
                try:
                    return seg.predict([left, right], confidence=confidence)
                finally:
                    seg._parallel_images = True
            return call

        fns = {'one': forward(one), 'two': lambda: (forward(one)(), forward(other)()),
               'batch': forward(two), 'labels': predict(False, True),
               'sequential': predict(False, False), 'confidence': predict(True, True)}
        t = _interleaved(fns, runs)
    except (RuntimeError, MemoryError) as exc:
        return note + f'\n\nerror: {str(exc).splitlines()[0][:80]}'
    finally:
        seg.close()
    rows = []
    for key, label in (('labels', 'labels (images side by side)'),
                       ('sequential', 'labels (one image after the other)'),
                       ('confidence', 'labels + confidence (side by side)')):
        rows.append([label, f'{t["one"].median_ms:.1f}', f'{t["two"].median_ms:.1f}',
                     f'{t["batch"].median_ms:.1f}', f'{t[key].median_ms:.1f}',
                     f'{t[key].p95_ms:.1f}', f'{t[key].median_ms / t["two"].median_ms:.2f}x'])
    return note + '\n\n' + markdown_table(header, rows)
