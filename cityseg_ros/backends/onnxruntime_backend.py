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


"""ONNX Runtime: the exported graph on the best available provider, TensorRT -> CUDA -> CPU.

On a CUDA device the session gets the TensorRT execution provider when this onnxruntime build
has it (fp16 with ``precision='fp16'``, its engines cached in our engine cache with a shape
profile for batches 1..8), then CUDA, then the CPU for nodes neither takes. Batches go in and
logits come out through I/O binding on the batch's own memory, on the CPU as on the GPU.
"""

import logging
from pathlib import Path
from typing import Callable, Optional, Sequence

from cityseg_ros.backends import require
from cityseg_ros.backends.cache import CacheKey
from cityseg_ros.backends.export import INPUT_NAME, OUTPUT_NAME
from cityseg_ros.backends.graph import GraphBackend
from cityseg_ros.errors import ConfigError
import numpy as np
import torch

__all__ = ['OnnxRuntimeBackend', 'check', 'create', 'select_providers', 'PROVIDER_ORDER']

logger = logging.getLogger(__name__)

#: Preference order on a CUDA device; the CPU provider always comes last.
PROVIDER_ORDER = ('TensorrtExecutionProvider', 'CUDAExecutionProvider')
CPU_PROVIDER = 'CPUExecutionProvider'
#: Largest batch of the TensorRT shape profile unless a larger one is seen (N cameras).
ENGINE_MAX_BATCH = 8
TRT_WORKSPACE_BYTES = 8 << 30


def select_providers(available: Sequence[str], device_type: str) -> list:
    """Return the providers to ask for, best first: TensorRT, CUDA, CPU (CPU alone on CPU)."""
    if device_type != 'cuda':
        return [CPU_PROVIDER]
    return [p for p in PROVIDER_ORDER if p in available] + [CPU_PROVIDER]


def check(device: torch.device, precision: str) -> None:
    """Raise ConfigError without onnxruntime (or the exporter), or for what it cannot serve."""
    ort = require('onnxruntime', 'onnx', 'backend onnxruntime')
    require('onnxscript', 'onnx', 'backend onnxruntime (the ONNX export)')
    if precision == 'bf16':
        raise ConfigError('backend onnxruntime runs fp32 (fp16 through TensorRT on CUDA), not '
                          'bf16; use precision fp32, or backend openvino or torch for bf16')
    if device.type == 'cuda' and not set(PROVIDER_ORDER) & set(ort.get_available_providers()):
        raise ConfigError('this onnxruntime has no CUDA or TensorRT provider '
                          f'({", ".join(ort.get_available_providers())}); pip install '
                          'onnxruntime-gpu, or use device cpu')


def create(net, spec, device: torch.device, precision: str,
           progress: Optional[Callable[[str], None]] = None, cache=None) -> 'OnnxRuntimeBackend':
    """Build the backend (after :func:`check`)."""
    check(device, precision)
    return OnnxRuntimeBackend(net, spec, device, precision, progress=progress, cache=cache)


class OnnxRuntimeBackend(GraphBackend):
    """One InferenceSession per input size (the graph has a dynamic batch)."""

    name = 'onnxruntime'

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._ort = require('onnxruntime', 'onnx', 'backend onnxruntime')
        if self.device.type == 'cuda':
            _load_gpu_libraries(self._ort)

    @property
    def version(self) -> str:
        return self._ort.__version__

    def _session_options(self):
        options = self._ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()  # as torch: a fair comparison
        options.inter_op_num_threads = 1
        options.execution_mode = self._ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = self._ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only: constant-folding notes are not news
        # Idle threads sleep: spinning ones would starve the engine's resize and label steps
        # (and torch's threads) between two runs, 5x slower predict on 2 cores.
        options.add_session_config_entry('session.intra_op.allow_spinning', '0')
        return options

    def _providers(self, names: Sequence[str], trt_dir: Optional[Path], batch: int,
                   size: Sequence[int]) -> list:
        index = self.device.index or 0
        h, w = size
        providers = []
        for name in names:
            if name == 'TensorrtExecutionProvider':
                shape = f'{INPUT_NAME}:{{}}x3x{h}x{w}'
                providers.append((name, {
                    'device_id': index, 'trt_fp16_enable': self.precision == 'fp16',
                    'trt_engine_cache_enable': True, 'trt_engine_cache_path': str(trt_dir),
                    'trt_timing_cache_enable': True, 'trt_timing_cache_path': str(trt_dir),
                    'trt_max_workspace_size': TRT_WORKSPACE_BYTES,
                    'trt_profile_min_shapes': shape.format(1),
                    'trt_profile_opt_shapes': shape.format(batch),
                    'trt_profile_max_shapes': shape.format(max(batch, ENGINE_MAX_BATCH))}))
            elif name == 'CUDAExecutionProvider':
                providers.append((name, {'device_id': index,
                                         'cudnn_conv_algo_search': 'EXHAUSTIVE'}))
            else:
                providers.append(name)
        return providers

    def _session(self, graph: Path, names: Sequence[str], trt_dir: Optional[Path], batch: int,
                 size: Sequence[int]):
        return self._ort.InferenceSession(str(graph), self._session_options(),
                                          providers=self._providers(names, trt_dir, batch, size))

    def make_runner(self, shape: Sequence[int]) -> Callable[[torch.Tensor], torch.Tensor]:
        batch, size = shape[0], tuple(shape[-2:])
        graph = self.graph(size)
        names = select_providers(self._ort.get_available_providers(), self.device.type)
        trt_dir = None
        if 'TensorrtExecutionProvider' in names:
            trt_dir = self._trt_cache(graph, names, batch, size)
        session = self._session(graph, names, trt_dir, batch, size)
        used = session.get_providers()
        self.provider = used[0]
        if self.device.type == 'cuda' and used[0] == CPU_PROVIDER:
            raise ConfigError('onnxruntime could not start its CUDA or TensorRT provider (see '
                              'its log above: CUDA/cuDNN libraries?); use device cpu')
        self._say(f'onnxruntime {self.version}: {self.spec.name} {size[0]}x{size[1]} on '
                  f'{", ".join(used)}')
        return _BoundRunner(session, self.device)

    def _trt_cache(self, graph: Path, names: Sequence[str], batch: int,
                   size: Sequence[int]) -> Path:
        """Build (or verify) onnxruntime's TensorRT engines for ``graph`` in our cache."""
        profile = f'1-{batch}-{max(batch, ENGINE_MAX_BATCH)}'
        props = torch.cuda.get_device_properties(self.device)
        versions = (('onnxruntime', self.version), ('graph', graph.parent.name),
                    ('gpu', f'{props.name} sm{props.major}{props.minor}'),
                    ('tensorrt', _trt_version()))
        key = CacheKey('ort_tensorrt', self.spec.name, self.weights_sha256, tuple(size),
                       profile, self.precision, versions)

        def build(tmp: Path) -> None:
            self._say(f'onnxruntime: building TensorRT {self.precision} engines for '
                      f'{self.spec.name} {size[0]}x{size[1]} (batch {profile}); this can take '
                      'minutes')
            session = self._session(graph, names, tmp, batch, size)
            x = torch.zeros((batch, 3) + tuple(size), device=self.device)
            _BoundRunner(session, self.device)(x)  # TensorRT builds its engines on first run
        return self.cache.get_or_build(key, build, progress=self._say,
                                       what='onnxruntime TensorRT engines')


def _load_gpu_libraries(ort) -> None:
    """Make the CUDA, cuDNN and TensorRT libraries of the pip wheels findable by onnxruntime.

    onnxruntime-gpu dlopens them by name: torch's wheels bring CUDA and cuDNN (``nvidia-*``
    packages, loaded by ``preload_dlls``), the ``tensorrt`` wheel brings libnvinfer (loaded by
    importing it), none of them on the loader's path.
    """
    try:
        import tensorrt  # noqa: F401 -- loads libnvinfer for the TensorRT provider
    except ImportError:
        pass
    if hasattr(ort, 'preload_dlls'):  # onnxruntime >= 1.21
        try:
            ort.preload_dlls()
        except Exception as exc:  # noqa: B902 -- best effort: the session says what is missing
            logger.debug('onnxruntime.preload_dlls: %s', exc)


def _trt_version() -> str:
    try:
        import tensorrt
        return tensorrt.__version__
    except ImportError:
        return 'bundled'


class _BoundRunner:
    """Run a session on a torch batch in place: I/O binding on the batch's memory.

    The output shape of each input shape is learnt on its first run; later runs write straight
    into a torch tensor on the batch's device (no host round trip on the GPU).
    """

    def __init__(self, session, device: torch.device) -> None:
        self.session = session
        self.device = device
        self._kind = 'cuda' if device.type == 'cuda' else 'cpu'
        self._index = (device.index or 0) if device.type == 'cuda' else 0
        self._out_shapes: dict = {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().float().contiguous()
        if x.is_cuda:  # our stream wrote x; onnxruntime runs on its own
            torch.cuda.current_stream(x.device).synchronize()
        binding = self.session.io_binding()
        binding.bind_input(INPUT_NAME, self._kind, self._index, np.float32, tuple(x.shape),
                           x.data_ptr())
        shape = self._out_shapes.get(tuple(x.shape))
        if shape is None:
            binding.bind_output(OUTPUT_NAME, self._kind, self._index)
            self.session.run_with_iobinding(binding)
            out = torch.from_numpy(binding.copy_outputs_to_cpu()[0]).to(x.device)
            self._out_shapes[tuple(x.shape)] = tuple(out.shape)
            return out
        out = torch.empty(shape, dtype=torch.float32, device=x.device)
        binding.bind_output(OUTPUT_NAME, self._kind, self._index, np.float32, shape,
                            out.data_ptr())
        self.session.run_with_iobinding(binding)
        return out
