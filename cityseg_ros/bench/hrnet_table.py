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

"""Table: HRNet-W48 + OCR whole-image forward, ours beside the official model code.

Why: ``hrnet_ocr.py`` reimplements HRNet/HRNet-Semantic-Segmentation's ``seg_hrnet_ocr.py``;
this shows it is no slower and needs no more memory, at the published test size
(1x3x1024x2048). The official code is not part of the package: pass a checkout of the
``HRNet-OCR`` branch (``reference_root`` or ``$CITYSEG_ROS_HRNET_OCR_SRC``); without one its
row says so. Both networks get the same synthetic weights (the golden fixtures' rule applied to
our key list) and input; their logits are compared before anything is timed. Runs of the
variants are interleaved, so a busy machine slows them alike. Peak memory is the rise of the
process's peak resident set (``VmHWM``, reset through ``/proc/self/clear_refs``) during one
forward, on Linux.
"""

import importlib
import logging
import os
from pathlib import Path
import statistics
import sys
import time
import types
from typing import Optional, Sequence

from cityseg_ros.bench.timing import markdown_table, peak_memory
from cityseg_ros.errors import ConfigError
from cityseg_ros.models.hrnet_ocr import hrnet_w48_ocr
from cityseg_ros.models.synthetic import synthetic_input, synthetic_state_dict
import numpy as np
import torch
from torch import nn
import yaml

__all__ = ['load_reference', 'run']

logger = logging.getLogger(__name__)

SOURCE_ENV = 'CITYSEG_ROS_HRNET_OCR_SRC'
# The Cityscapes train+val experiment of the released hrnet_ocr_cs_trainval_8227_torch11.pth.
CONFIG = ('experiments/cityscapes/'
          'seg_hrnet_ocr_w48_trainval_512x1024_sgd_lr1e-2_wd5e-4_bs_12_epoch484.yaml')
_PACKAGE = '_cityseg_hrnet_ocr_upstream'


def load_reference(root: str) -> nn.Module:
    """Build the official ``HighResolutionNet`` from a checkout, as ``tools/test.py`` does.

    SyncBatchNorm is swapped for BatchNorm2d and the config is the experiment YAML plus the
    ``lib/config/default.py`` values the YAML leaves out (``ALIGN_CORNERS``, ``MODEL.OCR``).

    Args:
        root: the repository root (with ``lib/models/seg_hrnet_ocr.py``), branch HRNet-OCR.

    Raises:
        ConfigError: the checkout lacks the model file or the experiment config.
    """
    root_path = Path(root).expanduser()
    models_dir = root_path / 'lib' / 'models'
    if not (models_dir / 'seg_hrnet_ocr.py').is_file() or not (root_path / CONFIG).is_file():
        raise ConfigError(f'{root_path} is not a checkout of HRNet/HRNet-Semantic-Segmentation '
                          f'branch HRNet-OCR (needs lib/models/seg_hrnet_ocr.py and {CONFIG})')
    if _PACKAGE not in sys.modules:
        # A stand-in package for lib/models, so that its relative import of bn_helper works
        # without running lib/models/__init__.py (which imports the plain HRNet too).
        package = types.ModuleType(_PACKAGE)
        package.__path__ = [str(models_dir)]
        sys.modules[_PACKAGE] = package
    module = importlib.import_module(f'{_PACKAGE}.seg_hrnet_ocr')
    module.BatchNorm2d_class = module.BatchNorm2d = nn.BatchNorm2d

    experiment = yaml.safe_load((root_path / CONFIG).read_text())
    ns = types.SimpleNamespace
    config = ns(MODEL=ns(EXTRA=experiment['MODEL']['EXTRA'], ALIGN_CORNERS=True,
                         OCR=ns(MID_CHANNELS=512, KEY_CHANNELS=256)),
                DATASET=ns(NUM_CLASSES=experiment['DATASET']['NUM_CLASSES']))
    # The constructor calls np.int, which numpy 1.24 removed; lend it for the call only.
    lent = 'int' not in vars(np)
    if lent:
        np.int = int
    try:
        return module.HighResolutionNet(config).eval()
    finally:
        if lent:
            del np.int


def run(runs: int = 3, reference_root: Optional[str] = None,
        size: Sequence[int] = (1024, 2048), threads: int = 2) -> str:
    """Time one whole-image forward of each implementation on the CPU.

    Args:
        runs: timed runs per row, after one warm-up run (whose outputs are compared).
        reference_root: checkout of the official code; default ``$CITYSEG_ROS_HRNET_OCR_SRC``.
        size: (H, W) of the input.
        threads: torch CPU threads during the table (restored afterwards).

    Returns:
        A markdown table; a variant that fails becomes a row saying why.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _run(runs, reference_root or os.environ.get(SOURCE_ENV), tuple(size))
    finally:
        torch.set_num_threads(before)


def _run(runs: int, reference_root: Optional[str], size: tuple) -> str:
    ours = hrnet_w48_ocr().eval()
    rows = [(key, tuple(v.shape), str(v.dtype).replace('torch.', ''))
            for key, v in ours.state_dict().items()]
    state = synthetic_state_dict(rows)
    ours.load_state_dict(state, strict=True)
    engine = hrnet_w48_ocr().eval()
    engine.load_state_dict(state, strict=True)
    engine.fuse_bn()
    engine = engine.to(memory_format=torch.channels_last)
    x = synthetic_input((1, 3) + size)
    x_nhwc = x.contiguous(memory_format=torch.channels_last)

    variants: dict = {}
    errors: dict = {}
    if reference_root:
        try:
            reference = load_reference(reference_root)
            reference.load_state_dict(state, strict=True)
            variants['official seg_hrnet_ocr.py'] = lambda: reference(x)[-1]
        except (ConfigError, ImportError, OSError, RuntimeError, KeyError) as exc:
            errors['official seg_hrnet_ocr.py'] = f'error: {type(exc).__name__}: {exc}'
    else:
        errors['official seg_hrnet_ocr.py'] = (f'not run: set {SOURCE_ENV} to a checkout of '
                                               'the HRNet-OCR branch')
    variants['ours'] = lambda: ours(x)
    variants['ours, BN folded + channels_last (engine)'] = lambda: engine(x_nhwc)

    samples, peaks, outputs = _measure(variants, runs, errors)
    reference_out = outputs.get('official seg_hrnet_ocr.py')
    table = []
    for name in list(errors) + [n for n in variants if n not in errors]:
        if name in errors:
            table.append([name, errors[name]] + [''] * 5)
            continue
        times = sorted(samples[name])
        p95 = times[min(len(times) - 1, int(round(0.95 * (len(times) - 1))))]
        diff = ''
        if reference_out is not None:
            out = outputs[name].float()
            scale = max(1.0, float(reference_out.abs().max()))
            diff = f'{float((out - reference_out).abs().max()) / scale:.1e}'
        peak = f'{peaks[name]:.2f}' if peaks.get(name) is not None else 'n/a'
        table.append([name, f'{size[0]}x{size[1]}', f'{statistics.median(times):.2f}',
                      f'{p95:.2f}', len(times), peak, diff])
    header = ['implementation', 'input HxW', 'forward s (p50)', 'forward s (p95)', 'runs',
              'peak RSS rise GiB', 'max |diff| / max(1, max|official|)']
    return markdown_table(header, table)


def _measure(variants: dict, runs: int, errors: dict) -> tuple:
    """Warm up each variant (keeping its output and peak memory), then time them interleaved."""
    samples = {name: [] for name in variants}
    peaks, outputs = {}, {}
    with torch.inference_mode():
        for name, fn in variants.items():
            try:
                peaks[name], outputs[name] = peak_memory(fn)
            except (RuntimeError, MemoryError) as exc:  # e.g. out of memory
                errors[name] = f'error: {type(exc).__name__}: {exc}'
        for _ in range(runs):
            for name, fn in variants.items():
                if name not in errors:
                    start = time.perf_counter()
                    fn()
                    samples[name].append(time.perf_counter() - start)
    return samples, peaks, outputs
