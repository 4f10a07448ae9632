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

"""Table: UperNet + InternImage-L/-XL forward on the CPU, ours beside the official backbone.

Why: ``internimage.py`` and ``dcnv3.py`` reimplement OpenGVLab/InternImage's backbone and its
DCNv3 operator without compiled code; this shows the time, the memory, and how much of the
time the DCNv3 sampling core takes, for both of our cores (``gather``, the default, and
``grid_sample``, the reference's formulation) and, given a checkout of the official repository
(``reference_root`` or ``$CITYSEG_ROS_INTERNIMAGE_SRC``), for the official backbone with its
pure-PyTorch core ``dcnv3_core_pytorch``. The official row runs upstream's backbone with our
UPerHead (the same head object), since mmseg is not installed; the heads are identical code for
all rows. All rows get the same synthetic weights (the golden fixtures' rule applied to our key
list, which is the official one in the official order) and input; outputs are compared with
the first row before anything is timed, and runs of the variants are interleaved so that a busy
machine slows them alike; the process CPU time is given too, as a busy machine inflates wall
times (and splits of them) by a factor that changes from run to run. Peak memory is the rise
of the process's peak resident set (``VmHWM``, reset through ``/proc/self/clear_refs``) during
one forward, on Linux.
"""

import importlib.util
import logging
import os
from pathlib import Path
import statistics
import sys
import time
import types
from typing import Callable, Optional, Sequence
import warnings

from cityseg_ros.bench.timing import markdown_table, peak_memory
from cityseg_ros.errors import ConfigError
from cityseg_ros.models import dcnv3
from cityseg_ros.models.internimage import (L_CHANNELS, L_DEPTHS, L_GROUPS, MLP_RATIO,
                                            OFFSET_SCALE, upernet_internimage_l,
                                            upernet_internimage_xl, XL_CHANNELS, XL_DEPTHS,
                                            XL_GROUPS)
from cityseg_ros.models.synthetic import synthetic_input, synthetic_state_dict
import torch
from torch import nn

__all__ = ['load_reference_backbone', 'run']

logger = logging.getLogger(__name__)

SOURCE_ENV = 'CITYSEG_ROS_INTERNIMAGE_SRC'
BACKBONE_FILE = 'segmentation/mmseg_custom/models/backbones/intern_image.py'
OPS_DIR = 'segmentation/ops_dcnv3'
MODELS = {
    'l': (upernet_internimage_l, {'channels': L_CHANNELS, 'depths': list(L_DEPTHS),
                                  'groups': list(L_GROUPS)}),
    'xl': (upernet_internimage_xl, {'channels': XL_CHANNELS, 'depths': list(XL_DEPTHS),
                                    'groups': list(XL_GROUPS)}),
}
OFFICIAL = 'official backbone, dcnv3_core_pytorch'


class _Identity(nn.Module):
    def __init__(self, *args, **kwargs):
        super().__init__()

    def forward(self, x):
        return x


def _stubs() -> dict:
    """Stand-ins for what upstream imports but inference never uses (mmcv, mmseg, timm, ext)."""
    def module(name, **attrs):
        mod = types.ModuleType(name)
        mod.__dict__.update(attrs)
        return mod

    def unused(*args, **kwargs):  # init helpers the built network never calls
        raise NotImplementedError('not available in the benchmark')

    registry = types.SimpleNamespace(register_module=lambda *a, **k: (lambda cls: cls))
    return {
        'mmcv': module('mmcv'),
        'mmcv.cnn': module('mmcv.cnn', constant_init=unused, trunc_normal_init=unused),
        'mmcv.runner': module('mmcv.runner', _load_checkpoint=unused),
        'mmseg': module('mmseg'),
        'mmseg.models': module('mmseg.models'),
        'mmseg.models.builder': module('mmseg.models.builder', BACKBONES=registry),
        'mmseg.utils': module('mmseg.utils', get_root_logger=lambda: logger),
        'timm': module('timm'),
        'timm.models': module('timm.models'),
        'timm.models.layers': module('timm.models.layers', DropPath=_Identity,
                                     trunc_normal_=nn.init.trunc_normal_),
        # The compiled CUDA extension ops_dcnv3 imports at the top; never called here.
        'DCNv3': module('DCNv3'),
    }


def load_reference_backbone(root: str, variant: str) -> tuple:
    """Build the official InternImage backbone with the pure-PyTorch DCNv3 from a checkout.

    Upstream's ``DCNv3`` (CUDA) is swapped for its ``DCNv3_pytorch`` (same parameters, core
    ``dcnv3_core_pytorch``), as the golden fixtures were made.

    Args:
        root: the repository root of OpenGVLab/InternImage.
        variant: 'l' or 'xl'.

    Returns:
        (backbone in eval mode, upstream's ``ops_dcnv3.modules.dcnv3`` module, whose
        ``dcnv3_core_pytorch`` global the backbone calls).

    Raises:
        ConfigError: the checkout lacks the backbone or the operator.
    """
    root_path = Path(root).expanduser()
    if not (root_path / BACKBONE_FILE).is_file() or not (root_path / OPS_DIR).is_dir():
        raise ConfigError(f'{root_path} is not a checkout of OpenGVLab/InternImage (needs '
                          f'{BACKBONE_FILE} and {OPS_DIR})')
    saved_path = list(sys.path)
    stubs = _stubs()
    saved_modules = {name: sys.modules.get(name) for name in stubs}
    sys.path.insert(0, str(root_path / 'segmentation'))
    sys.modules.update(stubs)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')  # upstream warns about DCNv4 and group widths
            ops = importlib.import_module('ops_dcnv3.modules.dcnv3')
            spec = importlib.util.spec_from_file_location('_cityseg_internimage_upstream',
                                                          root_path / BACKBONE_FILE)
            backbone_module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(backbone_module)

            class DCNv3PyTorch(ops.DCNv3_pytorch):
                def __init__(self, use_dcn_v4_op=False, **kwargs):
                    super().__init__(**kwargs)

            # InternImage looks its core_op up by name in the package at construction.
            importlib.import_module('ops_dcnv3.modules').DCNv3 = DCNv3PyTorch
            backbone = backbone_module.InternImage(
                core_op='DCNv3', mlp_ratio=MLP_RATIO, drop_path_rate=0.4, norm_layer='LN',
                layer_scale=1.0, offset_scale=OFFSET_SCALE, post_norm=True, with_cp=False,
                out_indices=(0, 1, 2, 3), **MODELS[variant][1])
    finally:
        sys.path[:] = saved_path
        for name, mod in saved_modules.items():
            if mod is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = mod
    backbone.eval()  # upstream's train() returns None, so no chaining
    return backbone, ops


class _Timer:
    """Accumulate the wall and process CPU seconds spent in wrapped callables."""

    def __init__(self):
        self.seconds = self.cpu_seconds = 0.0

    def wrap(self, fn: Callable) -> Callable:
        def timed(*args, **kwargs):
            start, start_cpu = time.perf_counter(), time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start
                self.cpu_seconds += time.process_time() - start_cpu
        return timed


class _Segmentor(nn.Module):
    """Upstream's backbone under our heads."""

    def __init__(self, backbone: nn.Module, decode_head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.decode_head = decode_head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode_head(self.backbone(x))


def run(runs: int = 1, reference_root: Optional[str] = None, size: Sequence[int] = (512, 1024),
        models: Sequence[str] = ('l', 'xl'), threads: int = 2) -> str:
    """Time whole-image forwards of UperNet + InternImage on the CPU.

    Args:
        runs: timed runs per row, after one warm-up run (whose outputs are compared).
        reference_root: checkout of OpenGVLab/InternImage; default
            ``$CITYSEG_ROS_INTERNIMAGE_SRC``; without one the official rows say so.
        size: (H, W) of the input; 512x1024 keeps a CPU run to minutes.
        models: 'l' and/or 'xl'; one model is in memory at a time.
        threads: torch CPU threads during the table (restored afterwards).

    Returns:
        A markdown table; a variant that fails becomes a row saying why.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    root = reference_root or os.environ.get(SOURCE_ENV)
    try:
        rows = []
        for name in models:
            rows += _model_rows(name, runs, root, tuple(size))
    finally:
        torch.set_num_threads(before)
    header = ['model', 'implementation', 'input HxW', 'forward s (p50)', 'forward s (p95)',
              'CPU s (p50)', 'runs', 'peak RSS rise GiB', 'DCNv3 core s (share)',
              'DCNv3 core CPU s (share)', 'max abs diff / max(1, max abs ref)']
    return markdown_table(header, rows)


def _model_rows(name: str, runs: int, root: Optional[str], size: tuple) -> list:
    ours = MODELS[name][0]().eval()
    rows = [(key, tuple(v.shape), str(v.dtype).replace('torch.', ''))
            for key, v in ours.state_dict().items()]
    state = synthetic_state_dict(rows)
    ours.load_state_dict(state, strict=True)
    x = synthetic_input((1, 3) + size)
    timers: dict = {}
    variants: dict = {}
    errors: dict = {}

    for core in ('gather', 'grid_sample'):
        label = f'ours, {core} core' + (' (default)' if core == dcnv3.DEFAULT_CORE else '')
        timers[label] = timer = _Timer()
        variants[label] = _ours(ours, core, timer)
    if root:
        try:
            backbone, ops = load_reference_backbone(root, name)
            backbone.load_state_dict({k[len('backbone.'):]: v for k, v in state.items()
                                      if k.startswith('backbone.')}, strict=True)
            timers[OFFICIAL] = timer = _Timer()
            variants[OFFICIAL] = _Segmentor(backbone, ours.decode_head).eval()
        except (ConfigError, ImportError, OSError, RuntimeError, KeyError, TypeError) as exc:
            errors[OFFICIAL] = f'error: {type(exc).__name__}: {exc}'
    else:
        errors[OFFICIAL] = f'not run: set {SOURCE_ENV} to a checkout of OpenGVLab/InternImage'
    del state

    if OFFICIAL in variants:
        core = ops.dcnv3_core_pytorch
        ops.dcnv3_core_pytorch = timers[OFFICIAL].wrap(core)
        try:
            samples, peaks, outputs, cores = _measure(variants, x, runs, errors, timers)
        finally:
            ops.dcnv3_core_pytorch = core
    else:
        samples, peaks, outputs, cores = _measure(variants, x, runs, errors, timers)
    ref_name = OFFICIAL if OFFICIAL in outputs else next(iter(outputs), None)
    table = []
    for label in list(variants) + [e for e in errors if e not in variants]:
        if label in errors:
            table.append([name.upper(), label, errors[label]] + [''] * 8)
            continue
        times = sorted(wall for wall, _ in samples[label])
        p50 = statistics.median(times)
        p95 = times[min(len(times) - 1, int(round(0.95 * (len(times) - 1))))]
        cpu = statistics.median(cpu for _, cpu in samples[label])
        core_s = statistics.median(wall for wall, _ in cores[label])
        core_cpu = statistics.median(cpu for _, cpu in cores[label])
        ref = outputs[ref_name]
        diff = float((outputs[label] - ref).abs().max()) / max(1.0, float(ref.abs().max()))
        peak = f'{peaks[label]:.2f}' if peaks.get(label) is not None else 'n/a'
        table.append([name.upper(), label, f'{size[0]}x{size[1]}', f'{p50:.1f}', f'{p95:.1f}',
                      f'{cpu:.1f}', len(times), peak, f'{core_s:.1f} ({100 * core_s / p50:.0f}%)',
                      f'{core_cpu:.1f} ({100 * core_cpu / cpu:.0f}%)',
                      f'{diff:.1e}' + (' (ref)' if label == ref_name else '')])
    return table


def _ours(model: nn.Module, core: str, timer: _Timer) -> Callable:
    def forward(x: torch.Tensor) -> torch.Tensor:
        model.backbone.set_dcn_core(core)
        saved = dcnv3.CORES[core]
        dcnv3.CORES[core] = timer.wrap(saved)
        try:
            return model(x)
        finally:
            dcnv3.CORES[core] = saved
            model.backbone.set_dcn_core('auto')
    return forward


def _measure(variants: dict, x: torch.Tensor, runs: int, errors: dict, timers: dict) -> tuple:
    """Warm up each variant (keeping its output and peak memory), then time them interleaved."""
    samples = {label: [] for label in variants}
    cores = {label: [] for label in variants}
    peaks, outputs = {}, {}
    with torch.inference_mode():
        for label, fn in variants.items():
            try:
                peaks[label], outputs[label] = peak_memory(lambda: fn(x))
            except (RuntimeError, MemoryError) as exc:  # e.g. out of memory
                errors[label] = f'error: {type(exc).__name__}: {exc}'
        for _ in range(runs):
            for label, fn in variants.items():
                if label in errors:
                    continue
                timer = timers[label]
                timer.seconds = timer.cpu_seconds = 0.0
                start, start_cpu = time.perf_counter(), time.process_time()
                fn(x)
                samples[label].append((time.perf_counter() - start,
                                       time.process_time() - start_cpu))
                cores[label].append((timer.seconds, timer.cpu_seconds))
    for label in errors:
        variants.pop(label, None)
    return samples, peaks, outputs, cores
