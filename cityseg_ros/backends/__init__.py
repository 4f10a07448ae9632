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

"""Inference engines behind the Segmenter: one protocol, one small module per engine.

A backend maps a normalised N,3,H,W float batch to the network's logits, nothing else: resize,
normalisation, upsampling, argmax and TTA stay the engine's, identical for every backend.
``torch`` runs the module itself; ``onnxruntime``, ``openvino`` and ``tensorrt`` run the ONNX
graph :mod:`cityseg_ros.backends.export` makes of it, through the bounded, verified cache of
:mod:`cityseg_ros.backends.cache`. Their packages are optional extras (``pip install .[onnx]``,
``.[openvino]``, ``.[tensorrt]``); this module imports none of them, nor torch, so the node's
parameter table can use :data:`BACKENDS`.
"""

import importlib
from typing import Callable, Optional

__all__ = ['BACKENDS', 'EXTRAS', 'check_backend', 'create_backend', 'require']

#: Backend names, the same everywhere: Segmenter(backend=), node parameter, --backend flags.
BACKENDS = ('torch', 'onnxruntime', 'openvino', 'tensorrt')
#: The pip extra that installs each optional backend (see setup.py).
EXTRAS = {'onnxruntime': 'onnx', 'openvino': 'openvino', 'tensorrt': 'tensorrt'}
_MODULES = {'torch': 'torch_backend', 'onnxruntime': 'onnxruntime_backend',
            'openvino': 'openvino_backend', 'tensorrt': 'tensorrt_backend'}


def require(module: str, extra: str, purpose: str):
    """Import an optional package, or raise ConfigError saying which extra installs it.

    Args:
        module: the package to import, e.g. ``'onnxruntime'``.
        extra: the pip extra of this project that installs it, e.g. ``'onnx'``.
        purpose: what needs it, for the message ("backend onnxruntime").
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        from cityseg_ros.errors import ConfigError
        raise ConfigError(f'{purpose} needs the {module} package, which is not installed '
                          f'({exc}); pip install .[{extra}]') from None


def _module(name: str):
    if name not in BACKENDS:
        from cityseg_ros.errors import ConfigError
        raise ConfigError(f'unknown backend {name!r}; use one of {", ".join(BACKENDS)}')
    return importlib.import_module(f'cityseg_ros.backends.{_MODULES[name]}')


def check_backend(name: str, device, precision: str) -> None:
    """Fail fast, before a model is built: unknown name, missing extra, unserved device/precision.

    Raises:
        ConfigError: saying what to install or which device or precision to use instead.
    """
    _module(name).check(device, precision)


def create_backend(name: str, net, spec, device, precision: str,
                   progress: Optional[Callable[[str], None]] = None, **options):
    """Build the backend ``name`` around a zoo network (eval mode, weights loaded).

    Args:
        name: one of :data:`BACKENDS`.
        net: the torch module the engine built (ONNX graphs are exported from it).
        spec: its :class:`~cityseg_ros.models.zoo.ModelSpec`.
        device: the engine's torch.device; batches arrive there and logits go back there.
        precision: the engine's precision (fp32, fp16, bf16); each backend says what it supports.
        progress: called with one line per step of a slow build (export, engine build).
        **options: backend-specific settings (see each module).

    Raises:
        ConfigError: unknown name, a missing optional package, or a device or precision the
            backend cannot serve.
    """
    return _module(name).create(net, spec, device, precision, progress=progress, **options)
