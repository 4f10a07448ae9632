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

"""What the ONNX-based backends share: the graph per input size, and a runner per shape.

A graph is exported once per network input size (H, W) with a dynamic batch and kept in the
engine cache; each backend turns it into runners (a session, a compiled model, an engine) that
it keeps in a small LRU: TTA scales or cameras of another aspect ratio each need their own.
"""

from collections import OrderedDict
import hashlib
import logging
from pathlib import Path
import platform
import threading
from typing import Callable, Optional, Sequence

from cityseg_ros.backends.cache import CacheKey, EngineCache, state_sha256
from cityseg_ros.backends.export import export_onnx, EXPORT_VERSION, OPSET
import torch
from torch import nn

__all__ = ['GraphBackend', 'cpu_id', 'MAX_RUNNERS']

logger = logging.getLogger(__name__)

#: Runners (sessions, compiled models, engines) kept per backend: each holds the weights.
MAX_RUNNERS = 8
GRAPH_FILE = 'model.onnx'


def cpu_id() -> str:
    """Name the CPU and its instruction sets: compiled CPU code is only valid on the same."""
    text = ''
    try:
        with open('/proc/cpuinfo') as fh:
            text = fh.read()
    except OSError:
        pass
    model = next((line.split(':', 1)[1].strip() for line in text.splitlines()
                  if line.startswith('model name')), platform.processor() or platform.machine())
    flags = next((line.split(':', 1)[1] for line in text.splitlines()
                  if line.startswith('flags')), '')
    return f'{model} {hashlib.sha256(flags.encode()).hexdigest()[:8]}'


def _package_version(name: str) -> str:
    from importlib import metadata
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return 'none'


class GraphBackend:
    """Base of the backends that run the exported ONNX graph.

    Args:
        net: the engine's network (eval mode, weights loaded, BatchNorm folded); moved to the
            CPU in NCHW for export, where the engine no longer runs it.
        spec: its ModelSpec.
        device: where batches come from and logits go back to.
        precision: fp32, fp16 or bf16 (each subclass checks what it supports).
        progress: gets one line per slow step (export, engine build, cache hit).
        cache: the engine cache; default the one under :func:`engine_cache_dir`.
    """

    name = ''

    def __init__(self, net: nn.Module, spec, device: torch.device, precision: str,
                 progress: Optional[Callable[[str], None]] = None,
                 cache: Optional[EngineCache] = None) -> None:
        self.net = net.to('cpu', memory_format=torch.contiguous_format)
        self.spec = spec
        self.device = device
        self.precision = precision
        self.cache = cache or EngineCache()
        self._say = progress or logger.info
        self._weights_sha256: Optional[str] = None
        self._runners: 'OrderedDict[tuple, Callable]' = OrderedDict()
        self._lock = threading.Lock()
        self.provider = ''

    # -- what subclasses provide --------------------------------------------------------------

    def runner_key(self, shape: Sequence[int]) -> tuple:
        """Which runner serves an input of ``shape`` (default: one per (H, W), any batch)."""
        return tuple(shape[-2:])

    def make_runner(self, shape: Sequence[int]) -> Callable[[torch.Tensor], torch.Tensor]:
        """Build what runs batches of ``shape`` (N, 3, H, W)."""
        raise NotImplementedError

    @property
    def version(self) -> str:
        """The runtime's version."""
        return ''

    # -- shared -------------------------------------------------------------------------------

    @property
    def description(self) -> str:
        """One line for logs and /diagnostics: name, version, provider."""
        text = f'{self.name} {self.version}'.strip()
        return f'{text} ({self.provider})' if self.provider else text

    def __str__(self) -> str:
        return self.description

    @property
    def weights_sha256(self) -> str:
        """Digest of the network's weights (computed once)."""
        if self._weights_sha256 is None:
            self._weights_sha256 = state_sha256(self.net)
        return self._weights_sha256

    def graph_key(self, size: Sequence[int]) -> CacheKey:
        """Return the cache key of the dynamic-batch ONNX graph for input size (H, W)."""
        return CacheKey('onnx', self.spec.name, self.weights_sha256, tuple(size), 'dynamic',
                        'fp32', versions=(('torch', torch.__version__),
                                          ('onnxscript', _package_version('onnxscript')),
                                          ('opset', str(OPSET)), ('export', str(EXPORT_VERSION))))

    def graph(self, size: Sequence[int]) -> Path:
        """Return the ONNX graph for input size (H, W), exporting it on a cache miss."""
        h, w = size
        meta = {'cityseg_ros.model': self.spec.name, 'cityseg_ros.mean': self.spec.mean,
                'cityseg_ros.std': self.spec.std,
                'cityseg_ros.output_stride': self.spec.output_stride,
                'cityseg_ros.weights_sha256': self.weights_sha256}

        def build(tmp: Path) -> None:
            export_onnx(self.net, tmp / GRAPH_FILE, (h, w), dynamic_batch=True, metadata=meta,
                        progress=self._say)
        entry = self.cache.get_or_build(self.graph_key(size), build, progress=self._say,
                                        what=f'ONNX graph of {self.spec.name} {h}x{w}')
        return entry / GRAPH_FILE

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Return the logits of a normalised N,3,H,W float batch, on ``x``'s device."""
        key = self.runner_key(tuple(x.shape))
        with self._lock:  # two threads never build the same runner
            runner = self._runners.get(key)
            if runner is None:
                if self.net is None:
                    raise RuntimeError(f'backend {self.name} was closed')
                runner = self.make_runner(tuple(x.shape))
                self._runners[key] = runner
                while len(self._runners) > MAX_RUNNERS:
                    self._runners.popitem(last=False)
            else:
                self._runners.move_to_end(key)
        return runner(x)

    def close(self) -> None:
        """Drop the runners (sessions, engines) and the network: nothing runs afterwards."""
        with self._lock:
            self._runners.clear()
            self.net = None
