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


"""TensorRT: an engine built from the exported graph with the ``tensorrt`` Python package.

``precision='fp16'`` builds an fp16 engine (the usual deployment; I/O stays float32),
``'bf16'`` a bf16 one, ``'fp32'`` a strict fp32 one (TF32 off) for checking. Each engine has a
shape profile for batches 1..8 (more when a larger batch arrives: N cameras) at one input
size, and is cached keyed by the TensorRT version, the GPU and its compute capability: engines
are not portable between either. A build can take minutes; progress is reported. Batches are
bound in place on torch's CUDA stream (``execute_async_v3``), no copies.
"""

import logging
from pathlib import Path
import threading
import time
from typing import Callable, Optional, Sequence

from cityseg_ros.backends import require
from cityseg_ros.backends.cache import CacheKey
from cityseg_ros.backends.export import INPUT_NAME, OUTPUT_NAME
from cityseg_ros.backends.graph import GraphBackend
from cityseg_ros.errors import ConfigError
import torch

__all__ = ['TensorRTBackend', 'check', 'create', 'engine_key', 'profile_for']

logger = logging.getLogger(__name__)

ENGINE_FILE = 'model.engine'
#: Largest batch of an engine's profile unless a larger one is asked for.
ENGINE_MAX_BATCH = 8
WORKSPACE_BYTES = 8 << 30
PRECISIONS = ('fp32', 'fp16', 'bf16')
#: Seconds between two progress lines of one build phase.
PROGRESS_EVERY_S = 10.0


def profile_for(batch: int) -> tuple:
    """Return the (min, opt, max) batch of the engine built for batches of ``batch``."""
    return 1, batch, max(batch, ENGINE_MAX_BATCH)


def engine_key(model: str, weights_sha256: str, size: Sequence[int], batch: int,
               precision: str, trt_version: str, gpu: str, graph: str) -> CacheKey:
    """Return the cache key of an engine: everything that makes engines incompatible."""
    profile = '-'.join(str(b) for b in profile_for(batch))
    return CacheKey('tensorrt', model, weights_sha256, tuple(size), profile, precision,
                    versions=(('tensorrt', trt_version), ('gpu', gpu), ('graph', graph)))


def check(device: torch.device, precision: str) -> None:
    """Raise ConfigError off CUDA, for an unknown precision, or without tensorrt/the exporter."""
    if device.type != 'cuda':
        raise ConfigError(f'backend tensorrt needs a CUDA device, not {device}; use device '
                          'cuda, or backend onnxruntime or openvino on the CPU')
    if precision not in PRECISIONS:
        raise ConfigError(f'backend tensorrt runs {", ".join(PRECISIONS)}, not {precision}')
    require('tensorrt', 'tensorrt', 'backend tensorrt')
    require('onnxscript', 'tensorrt', 'backend tensorrt (the ONNX export)')


def create(net, spec, device: torch.device, precision: str,
           progress: Optional[Callable[[str], None]] = None, cache=None) -> 'TensorRTBackend':
    """Build the backend (after :func:`check`)."""
    check(device, precision)
    return TensorRTBackend(net, spec, device, precision, progress=progress, cache=cache)


class TensorRTBackend(GraphBackend):
    """One engine per input size; batches up to the profile's maximum share it."""

    name = 'tensorrt'

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._trt = require('tensorrt', 'tensorrt', 'backend tensorrt')
        self._logger = self._trt.Logger(self._trt.Logger.WARNING)
        self._runtime = self._trt.Runtime(self._logger)
        props = torch.cuda.get_device_properties(self.device)
        self._gpu = f'{props.name} sm{props.major}{props.minor}'
        self.provider = f'{self._gpu} {self.precision}'

    @property
    def version(self) -> str:
        return self._trt.__version__

    def runner_key(self, shape: Sequence[int]) -> tuple:
        # Batches up to ENGINE_MAX_BATCH share an engine; a larger one gets its own.
        return tuple(shape[-2:]) + (shape[0] if shape[0] > ENGINE_MAX_BATCH else 0,)

    def make_runner(self, shape: Sequence[int]) -> Callable[[torch.Tensor], torch.Tensor]:
        batch, size = shape[0], tuple(shape[-2:])
        graph = self.graph(size)
        key = engine_key(self.spec.name, self.weights_sha256, size, batch, self.precision,
                         self.version, self._gpu, graph.parent.name)
        entry = self.cache.get_or_build(
            key, lambda tmp: self._build(graph, tmp / ENGINE_FILE, batch, size),
            progress=self._say, what=f'TensorRT {self.precision} engine of {self.spec.name} '
                                     f'{size[0]}x{size[1]}')
        engine = self._runtime.deserialize_cuda_engine((entry / ENGINE_FILE).read_bytes())
        if engine is None:
            raise ConfigError(f'TensorRT could not load the engine in {entry}; delete it')
        return _Runner(engine)

    def _build(self, graph: Path, out: Path, batch: int, size: Sequence[int]) -> None:
        trt = self._trt
        self._say(f'TensorRT {self.version}: building a {self.precision} engine of '
                  f'{self.spec.name} {size[0]}x{size[1]} on {self._gpu}; this can take minutes')
        builder = trt.Builder(self._logger)
        network = builder.create_network(0)  # explicit batch, the only mode of TensorRT 10
        parser = trt.OnnxParser(network, self._logger)
        if not parser.parse_from_file(str(graph)):
            errors = '; '.join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise ConfigError(f'TensorRT cannot parse {graph}: {errors}')
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
        if self.precision == 'fp16':
            config.set_flag(trt.BuilderFlag.FP16)
        elif self.precision == 'bf16':
            config.set_flag(trt.BuilderFlag.BF16)
        else:
            config.clear_flag(trt.BuilderFlag.TF32)
        low, opt, high = profile_for(batch)
        profile = builder.create_optimization_profile()
        h, w = size
        profile.set_shape(INPUT_NAME, (low, 3, h, w), (opt, 3, h, w), (high, 3, h, w))
        config.add_optimization_profile(profile)
        monitor = _progress_monitor(trt, self._say)
        if monitor is not None:
            config.progress_monitor = monitor
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise ConfigError(f'TensorRT failed to build an engine from {graph} (see its log)')
        out.write_bytes(bytes(serialized))


def _progress_monitor(trt, say: Callable[[str], None]):
    """Return a TensorRT progress monitor that reports top-level phases, or None (old TRT)."""
    base = getattr(trt, 'IProgressMonitor', None)
    if base is None:
        return None

    class Monitor(base):
        def __init__(self) -> None:
            base.__init__(self)
            self._last = 0.0
            self._steps: dict = {}

        def phase_start(self, phase_name, parent_phase, num_steps):
            self._steps[phase_name] = num_steps
            if parent_phase is None:
                say(f'TensorRT build: {phase_name}')

        def step_complete(self, phase_name, step):
            now = time.monotonic()
            if now - self._last >= PROGRESS_EVERY_S:
                self._last = now
                total = self._steps.get(phase_name) or 0
                say(f'TensorRT build: {phase_name} {step + 1}/{total}' if total
                    else f'TensorRT build: {phase_name}')
            return True  # False would cancel the build

        def phase_finish(self, phase_name):
            self._steps.pop(phase_name, None)
    return Monitor()


class _Runner:
    """Execute an engine on torch tensors, on torch's current CUDA stream."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.context = engine.create_execution_context()
        self._lock = threading.Lock()  # one execution context: one caller at a time

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().float().contiguous()
        with self._lock:
            return self._run(x)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        self.context.set_input_shape(INPUT_NAME, tuple(x.shape))
        out = torch.empty(tuple(self.context.get_tensor_shape(OUTPUT_NAME)),
                          dtype=torch.float32, device=x.device)
        self.context.set_tensor_address(INPUT_NAME, x.data_ptr())
        self.context.set_tensor_address(OUTPUT_NAME, out.data_ptr())
        stream = torch.cuda.current_stream(x.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError('TensorRT execution failed (see its log)')
        return out
