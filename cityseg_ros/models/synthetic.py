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

"""Synthetic weights and inputs of the golden fixtures (``shared/reference/GOLDEN.md``).

A key manifest (``key<TAB>shape<TAB>dtype`` per line, in state-dict order) is turned into a
state dict by a fixed rule that gives bit-identical tensors on any machine, so that a model can be
compared with outputs the official code computed under the same weights. The weights are not
trained: they exercise every parameter, buffer and key, not accuracy.
"""

from collections import OrderedDict
import hashlib
import math
import os
from typing import Mapping, Sequence, Union

import torch

__all__ = ['read_manifest', 'state_dict_digest', 'synthetic_input', 'synthetic_state_dict']

ManifestRow = tuple[str, tuple[int, ...], str]

# GOLDEN.md section 1: seeds of the weights and (section 2) of the inputs.
WEIGHT_SEED = 0
INPUT_SEED = 1
# std = SCALE / sqrt(fan_in): at 1.0 HRNet-OCR's attention saturates, 0.7 keeps outputs O(1-10).
SCALE = 0.7
_DTYPES = {'float32': torch.float32, 'int64': torch.int64}


def read_manifest(path: Union[str, os.PathLike]) -> list[ManifestRow]:
    """Parse a key manifest into ``(key, shape, dtype)`` rows, in file order.

    Args:
        path: text file of ``key<TAB>shape<TAB>dtype`` lines, e.g.
            ``model.conv1.weight<TAB>(64, 3, 3, 3)<TAB>float32``; ``#`` starts a comment line.

    Returns:
        One row per key: the key, the shape as a tuple of ints (``()`` for a scalar) and the
        dtype name (``'float32'`` or ``'int64'``).

    Raises:
        ValueError: a line is malformed or names another dtype.
    """
    rows = []
    with open(path, encoding='utf-8') as fh:
        for number, line in enumerate(fh, 1):
            line = line.rstrip('\n')
            if not line.strip() or line.startswith('#'):
                continue
            parts = line.split('\t')
            if len(parts) != 3 or parts[2] not in _DTYPES:
                raise ValueError(f'{path}:{number}: expected key<TAB>(shape)<TAB>float32|int64, '
                                 f'got {line!r}')
            key, shape, dtype = parts
            dims = tuple(int(d) for d in shape.strip().strip('()').split(',') if d.strip())
            rows.append((key, dims, dtype))
    return rows


def _value_range(key: str, shape: Sequence[int]) -> tuple[float, float]:
    """Return the ``[lo, hi)`` a float entry is drawn from; the first matching case applies."""
    name = key.split('.')[-1]
    if name == 'running_var':
        return 0.5, 1.5
    if name == 'running_mean':
        return -0.2, 0.2
    if len(shape) >= 2:
        bound = SCALE * math.sqrt(3.0 / math.prod(shape[1:]))
        return -bound, bound
    if name == 'weight':  # BatchNorm / LayerNorm scales (and HRNet's loss class weights)
        return 0.75, 1.25
    if name in ('gamma1', 'gamma2'):  # InternImage's layer scales
        return 0.25, 0.75
    return -0.2, 0.2


def synthetic_state_dict(rows: Sequence[ManifestRow],
                         seed: int = WEIGHT_SEED) -> 'OrderedDict[str, torch.Tensor]':
    """Build the golden fixtures' synthetic state dict from manifest rows.

    One generator serves the whole manifest. ``int64`` rows (``num_batches_tracked``) are zeros
    and draw nothing; every float row draws exactly once, ``torch.rand`` (bit-identical across CPU
    kernels, unlike ``randn``), even when the model ignores the tensor, so the sequence depends on
    the manifest alone. The draw is scaled in float64 and rounded to float32.

    Args:
        rows: ``(key, shape, dtype)`` in state-dict order, as :func:`read_manifest` returns.
        seed: generator seed; the fixtures use 0.

    Returns:
        key -> tensor, in manifest order.
    """
    gen = torch.Generator().manual_seed(seed)
    state = OrderedDict()
    for key, shape, dtype in rows:
        if dtype == 'int64':
            state[key] = torch.zeros(shape, dtype=torch.int64)
            continue
        lo, hi = _value_range(key, shape)
        u = torch.rand(shape, generator=gen, dtype=torch.float32)
        state[key] = (u.double() * (hi - lo) + lo).float()
    return state


def synthetic_input(shape: Sequence[int], seed: int = INPUT_SEED) -> torch.Tensor:
    """Return the fixtures' input: float32 uniform on [-2, 2), an already-normalised image."""
    u = torch.rand(tuple(shape), generator=torch.Generator().manual_seed(seed),
                   dtype=torch.float32)
    return (u.double() * 4.0 + (-2.0)).float()


def state_dict_digest(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Return the SHA-256 hex digest of a state dict, the fixtures' way.

    For each entry in order: the key (UTF-8), the ``repr`` of its shape tuple (``(64, 3, 3, 3)``,
    ``(64,)``, ``()``), then its raw little-endian bytes.
    """
    digest = hashlib.sha256()
    for key, tensor in state_dict.items():
        digest.update(key.encode('utf-8'))
        digest.update(repr(tuple(tensor.shape)).encode('utf-8'))
        digest.update(_le_bytes(tensor))
    return digest.hexdigest()


def _le_bytes(tensor: torch.Tensor) -> bytes:
    array = tensor.detach().cpu().contiguous().numpy()
    return array.astype(array.dtype.newbyteorder('<'), copy=False).tobytes()
