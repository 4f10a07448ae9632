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


"""Table: every backend side by side per model (forward, stereo-pair predict, agreement).

For each model at its test size (or ``sizes``) the fp32 torch path is the reference; each
(backend, precision) row gives the time of its first call (export or engine build, or loading
them from the engine cache), the network forward (``Segmenter.logits``: the graph plus the
19-channel slice), ``predict`` of a 2048x1024 stereo pair (resize, forward, upsampling, labels),
the largest logit difference from the reference and the share of pixels whose argmax agrees.
Inputs are real when ../shared or the weights cache has them: the model's released weights and
the Cityscapes stereo pair; otherwise random weights (the same in every row: each Segmenter is
built after the same ``torch.manual_seed``) and smooth random frames. Random weights can drive
activations into denormal floats, which torch computes slowly on CPU while ONNX Runtime and
OpenVINO flush them to zero: compare backends with real weights. A backend that is not
installed, or fails, is a row that says so; a time budget turns the remaining rows into
"skipped" rows (``scripts/device_check.sh``).
"""

import argparse
import json
import logging
from pathlib import Path
import subprocess
import sys
import tempfile
import time
from typing import Optional, Sequence

from cityseg_ros.bench.timing import markdown_table, time_call
from cityseg_ros.engine import Segmenter
from cityseg_ros.errors import CitysegError
import cv2
import numpy as np
import torch

__all__ = ['CPU_VARIANTS', 'CUDA_VARIANTS', 'measure_row', 'run']

logger = logging.getLogger(__name__)

#: (backend, precision) rows on each device; the first is the reference.
CPU_VARIANTS = (('torch', 'fp32'), ('onnxruntime', 'fp32'), ('openvino', 'fp32'),
                ('openvino', 'bf16'), ('torch', 'bf16'))
CUDA_VARIANTS = (('torch', 'fp32'), ('torch', 'fp16'), ('onnxruntime', 'fp16'),
                 ('tensorrt', 'fp16'), ('onnxruntime', 'fp32'), ('tensorrt', 'fp32'))
PAIR_SIZE = (1024, 2048)
_SHARED = Path(__file__).resolve().parents[3] / 'shared' / 'data'
_PAIR = ('val', 'frankfurt', 'frankfurt_000000_009291')
HEADER = ['model', 'input HxW', 'backend', 'precision', 'runs on', 'first call s',
          'forward ms (p50)', 'forward ms (p95)', 'predict pair ms (p50, 2x 2048x1024)',
          'max abs logit diff', 'labels agree %']


def _is_cuda(device: str) -> bool:
    return device.startswith('cuda') or (device == 'auto' and torch.cuda.is_available())


def _frame(seed: int) -> np.ndarray:
    """Return a smooth random 2048x1024 RGB frame (image-like statistics, not white noise)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (PAIR_SIZE[0] // 16, PAIR_SIZE[1] // 16, 3), dtype=np.uint8)
    return cv2.resize(small, PAIR_SIZE[::-1], interpolation=cv2.INTER_LINEAR)


def _real_weights(name: str) -> Optional[str]:
    """Return the model's released file from ../shared or the weights cache, if present."""
    from cityseg_ros.checkpoints import cache_dir
    from cityseg_ros.models.zoo import get_spec

    spec = get_spec(name)
    if not spec.weights:
        return None
    filename = spec.weights[0].filename
    found = [p for p in (_SHARED / 'weights' / name / filename, cache_dir() / filename)
             if p.is_file()]
    return str(found[0]) if found else None


def _pair() -> tuple:
    """Return the Cityscapes stereo pair from ../shared, else two smooth random frames."""
    from cityseg_ros.imageio import read_rgb

    split, city, stem = _PAIR
    root = _SHARED / 'cityscapes'
    paths = (root / 'leftImg8bit' / split / city / f'{stem}_leftImg8bit.png',
             root / 'rightImg8bit' / split / city / f'{stem}_rightImg8bit.png')
    if all(p.is_file() for p in paths):
        return [read_rgb(p) for p in paths], f'Cityscapes {stem} left + right'
    return [_frame(1), _frame(2)], 'smooth random 2048x1024 frames (../shared absent)'


def run(models: Sequence[str] = ('espnetv2',), device: str = 'auto', runs: int = 5,
        backends: Optional[Sequence[str]] = None, sizes: Optional[Sequence] = None,
        weights: Optional[str] = None, budget_s: Optional[float] = None,
        variants: Optional[Sequence] = None, random_weights: bool = False,
        isolate: bool = True) -> str:
    """Time and compare every (backend, precision) on every model.

    Args:
        models: zoo names.
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        runs: timed runs per number, after 2 warm-up runs.
        backends: keep only these backends (the torch fp32 reference always runs).
        sizes: (H, W) network input sizes, one per model or one for all; default the
            models' test sizes.
        weights: a checkpoint path or 'auto' for every model; default: each model's released
            file when ../shared or the cache has it, else random weights.
        budget_s: seconds after which the remaining rows are skipped (not started).
        variants: (backend, precision) pairs instead of the device's default list.
        random_weights: use random weights even when a released file is at hand.
        isolate: measure each row in a fresh process (see :func:`_in_child`).

    Returns:
        Two lines on the inputs, then a markdown table.
    """
    deadline = None if budget_s is None else time.monotonic() + budget_s
    chosen = list(variants or (CUDA_VARIANTS if _is_cuda(device) else CPU_VARIANTS))
    if backends:
        chosen = [v for v in chosen if v[0] in backends or v == chosen[0]]
    _, pair_text = _pair()
    rows, used = [], []
    for i, name in enumerate(models):
        size = None
        if sizes:
            size = tuple(sizes[i] if len(sizes) == len(models) else sizes[0])
        model_weights = weights or (None if random_weights else _real_weights(name))
        used.append(f'{name}: {Path(model_weights).name if model_weights else "random (seed 0)"}')
        rows += _model_rows(name, device, size, model_weights, chosen, runs, deadline, isolate)
    return (f'Input: {pair_text}; weights: {"; ".join(used)}.\n\n'
            + markdown_table(HEADER, rows))


def _build(name, device, size, weights, backend, precision) -> Segmenter:
    torch.manual_seed(0)
    return Segmenter(name, weights=weights, device=device, precision=precision,
                     input_size=size, backend=backend)


def _model_rows(name, device, size, weights, variants, runs, deadline, isolate) -> list:
    label = [name, 'x'.join(str(s) for s in size) if size else '']
    rows = []
    with tempfile.TemporaryDirectory(prefix='cityseg-backends-') as tmp:
        reference = str(Path(tmp) / 'reference.pt')
        for backend, precision in variants:
            if deadline is not None and time.monotonic() > deadline:
                rows.append(label + [backend, precision, 'skipped: time budget'] + [''] * 6)
                continue
            config = {'model': name, 'device': device, 'size': size, 'weights': weights,
                      'backend': backend, 'precision': precision, 'runs': runs,
                      'reference': reference}
            result = _in_child(config, deadline) if isolate else measure_row(config)
            label[1] = result.get('input_size') or label[1]
            rows.append(label + [backend, precision] + result['cells'])
    return rows


def _in_child(config: dict, deadline: Optional[float]) -> dict:
    """Measure one row in a fresh process: no thread pool or arena of an earlier row lingers.

    (ONNX Runtime's, OpenVINO's and torch's worker threads of one process compete for the
    cores; measured in one process, a row runs slower after the rows before it.)
    """
    timeout = None if deadline is None else max(30.0, deadline - time.monotonic() + 60.0)
    cmd = [sys.executable, '-m', 'cityseg_ros.bench.backends_table', '--row', json.dumps(config)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {'cells': ['error: timed out (time budget)'] + [''] * 6}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith('{'):
            return json.loads(line)
    tail = (done.stderr.strip().splitlines() or [f'exit {done.returncode}'])[-1]
    return {'cells': [f'error: {tail[:120]}'] + [''] * 6}


def measure_row(config: dict) -> dict:
    """Measure one (model, backend, precision); the torch fp32 row writes the reference.

    Args:
        config: model, device, size, weights, backend, precision, runs and ``reference``
            (a file: the fp32 torch row saves its input batch and logits there, the other
            rows load them, so every row sees the same input).

    Returns:
        ``{'cells': [...], 'input_size': 'HxW'}``, the row's cells after backend/precision.
    """
    backend, precision = config['backend'], config['precision']
    seg = None
    try:
        seg = _build(config['model'], config['device'], config['size'], config['weights'],
                     backend, precision)
        pair, _ = _pair()
        path = Path(config['reference'])
        with torch.inference_mode():
            if path.is_file():
                saved = torch.load(path, weights_only=True)
                x, reference = saved['x'].to(seg.device), saved['logits'].to(seg.device)
            else:
                x, reference = seg.preprocess(pair[:1]), None
            start = time.perf_counter()
            logits = seg.logits(x)  # builds or loads the graph / engine
            if logits.is_cuda:
                torch.cuda.synchronize()
            first = time.perf_counter() - start
            if reference is None and (backend, precision) == ('torch', 'fp32'):
                torch.save({'x': x.cpu().contiguous(), 'logits': logits.cpu()}, path)
                reference = logits
            forward = time_call(lambda: seg.logits(x), runs=config['runs'])
        predict = time_call(lambda: seg.predict(pair), runs=max(2, config['runs'] // 2))
    except CitysegError as exc:  # a missing extra, an unserved device or precision
        text = str(exc)
        status = (f'not installed: {text[text.index("pip install"):]}'
                  if 'pip install' in text else f'unavailable: {_first_line(exc)}')
        return {'cells': [status] + [''] * 6}
    except (RuntimeError, MemoryError) as exc:  # OOM, unsupported kernels
        return {'cells': [f'error: {_first_line(exc)}'] + [''] * 6}
    finally:
        if seg is not None:
            seg.close()
    if reference is None:
        diff, agree = 'n/a', 'n/a'
    else:
        diff = f'{float((logits.float() - reference).abs().max()):.2e}'
        agree = f'{float((logits.argmax(1) == reference.argmax(1)).float().mean()) * 100:.3f}'
    return {'cells': [str(seg.backend), f'{first:.1f}', f'{forward.median_ms:.1f}',
                      f'{forward.p95_ms:.1f}', f'{predict.median_ms:.1f}', diff, agree],
            'input_size': f'{seg.input_size[0]}x{seg.input_size[1]}'}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:120]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``--row JSON``: measure one row (what :func:`run` starts); else print the CPU table."""
    parser = argparse.ArgumentParser(prog='python -m cityseg_ros.bench.backends_table')
    parser.add_argument('--row', help='one row as JSON (internal)')
    parser.add_argument('--device', default='auto')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(name)s: %(message)s')
    if args.row:
        print(json.dumps(measure_row(json.loads(args.row))), flush=True)
    else:
        print(run(device=args.device, runs=3))
    return 0


if __name__ == '__main__':
    sys.exit(main())
