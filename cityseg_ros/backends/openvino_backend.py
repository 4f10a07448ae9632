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


"""OpenVINO on the CPU: the exported graph compiled for one static shape, its blob cached.

Settings are the fastest we measured for one stream of frames: performance hint LATENCY, one
stream, as many inference threads as torch uses. ``INFERENCE_PRECISION_HINT`` is always set:
on CPUs with AVX512-BF16 or AMX, OpenVINO would otherwise run bf16 while asked for fp32.
The compiled model is exported (``CompiledModel.export_model``) into the engine cache, keyed by
the OpenVINO version, the CPU and its instruction sets, and imported on the next start.
Logits come out NHWC, written straight into a torch tensor (returned as an NCHW view in
channels_last, the layout the torch path gives too): OpenVINO's own NCHW output reorder ran a
reference kernel and, with the copy out of the request's buffer, cost ~6 % of an ESPNetv2
forward.
"""

from pathlib import Path
import threading
from typing import Callable, Optional, Sequence

from cityseg_ros.backends import require
from cityseg_ros.backends.cache import CacheKey
from cityseg_ros.backends.export import INPUT_NAME
from cityseg_ros.backends.graph import cpu_id, GraphBackend
from cityseg_ros.errors import ConfigError
import torch

__all__ = ['OpenVinoBackend', 'check', 'create', 'compile_config']

BLOB_FILE = 'model.blob'
OUTPUT_LAYOUT = 'NHWC'
_PRECISION_HINTS = {'fp32': 'f32', 'bf16': 'bf16'}


def compile_config(precision: str, threads: int) -> dict:
    """Return the CPU plugin's properties: LATENCY, 1 stream, ``threads`` threads, precision."""
    return {'PERFORMANCE_HINT': 'LATENCY', 'NUM_STREAMS': '1',
            'INFERENCE_NUM_THREADS': str(threads),
            'INFERENCE_PRECISION_HINT': _PRECISION_HINTS[precision]}


def check(device: torch.device, precision: str) -> None:
    """Raise ConfigError without openvino (or the exporter), off the CPU, or for fp16."""
    require('openvino', 'openvino', 'backend openvino')
    require('onnxscript', 'openvino', 'backend openvino (the ONNX export)')
    if device.type != 'cpu':
        raise ConfigError(f'backend openvino runs on the CPU here, not {device}; use device cpu '
                          '(or backend onnxruntime or tensorrt on CUDA)')
    if precision not in _PRECISION_HINTS:
        raise ConfigError(f'backend openvino runs fp32 or bf16, not {precision}')


def create(net, spec, device: torch.device, precision: str,
           progress: Optional[Callable[[str], None]] = None, cache=None) -> 'OpenVinoBackend':
    """Build the backend (after :func:`check`)."""
    check(device, precision)
    return OpenVinoBackend(net, spec, device, precision, progress=progress, cache=cache)


class OpenVinoBackend(GraphBackend):
    """One compiled model per input shape (static shapes are the CPU plugin's fast path)."""

    name = 'openvino'

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._ov = require('openvino', 'openvino', 'backend openvino')
        self._core = self._ov.Core()
        self.provider = f'CPU {self.precision}'

    @property
    def version(self) -> str:
        return self._ov.__version__.split('-')[0]

    def runner_key(self, shape: Sequence[int]) -> tuple:
        return tuple(shape)

    def make_runner(self, shape: Sequence[int]) -> Callable[[torch.Tensor], torch.Tensor]:
        n, _, h, w = shape
        graph = self.graph((h, w))
        config = compile_config(self.precision, torch.get_num_threads())
        key = CacheKey('openvino', self.spec.name, self.weights_sha256, (h, w), str(n),
                       self.precision,
                       versions=(('openvino', self._ov.__version__), ('cpu', cpu_id()),
                                 ('graph', graph.parent.name), ('output', OUTPUT_LAYOUT),
                                 ('config', ','.join(f'{k}={v}' for k, v in config.items()))))
        built = {}

        def build(tmp: Path) -> None:
            model = self._core.read_model(str(graph))
            model.reshape({INPUT_NAME: [n, 3, h, w]})
            compiled = self._core.compile_model(_nhwc_output(self._ov, model), 'CPU', config)
            blob = compiled.export_model()  # BytesIO in 2025+, bytes before
            (tmp / BLOB_FILE).write_bytes(blob.getvalue() if hasattr(blob, 'getvalue')
                                          else bytes(blob))
            built['compiled'] = compiled
        entry = self.cache.get_or_build(key, build, progress=self._say,
                                        what=f'OpenVINO {self.precision} model for {n}x3x{h}x{w}')
        compiled = built.get('compiled') or self._core.import_model(
            (entry / BLOB_FILE).read_bytes(), 'CPU', config)
        return _Runner(self._ov, compiled)


def _nhwc_output(ov, model):
    """Return ``model`` with its logits output laid out NHWC."""
    from openvino.preprocess import PrePostProcessor

    ppp = PrePostProcessor(model)
    ppp.output(0).tensor().set_layout(ov.Layout(OUTPUT_LAYOUT))
    ppp.output(0).model().set_layout(ov.Layout('NCHW'))
    return ppp.build()


class _Runner:
    """Synchronous inference on one request (one caller at a time); nothing is copied.

    Each call gets a fresh NHWC tensor for OpenVINO to write into (a result outlives the next
    call) and returns it as an N,C,H,W view.
    """

    def __init__(self, ov, compiled) -> None:
        self._ov = ov
        self.compiled = compiled
        self.request = compiled.create_infer_request()
        self._shape = tuple(compiled.output(0).get_shape())
        self._lock = threading.Lock()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        device = x.device
        array = x.detach().float().contiguous().cpu().numpy()
        out = torch.empty(self._shape)
        with self._lock:
            self.request.set_output_tensor(0, self._ov.Tensor(out.numpy(), shared_memory=True))
            self.request.infer({0: array}, share_inputs=True)
        return out.permute(0, 3, 1, 2).to(device)
