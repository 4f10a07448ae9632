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

"""Antialiased 2x downscaling of uint8 images in integers, equal to PyTorch's float resize.

Halving a side with antialiased bilinear (PIL's BILINEAR, EdgeNets' test resize, 2048x1024 ->
1024x512 for ESPNetv2) is a stride-2 filter [1, 3, 3, 1] / 8 per axis away from the borders.
On 0..255 integers every product and partial sum of that filter is exact in float32, so
``F.interpolate(antialias=True)`` returns exactly (sum of 16 integer terms) / 64 there, whatever
its summation order: computing the sum in int16 gives the same floats, ~40 % faster, without
converting the full-size image to float. The border rows and columns (renormalised, inexact
weights) are taken from ``F.interpolate`` itself on 4-pixel strips, which see the same weights.
The first call checks the result against ``F.interpolate``; on a mismatch (another torch)
:func:`halve_antialiased` returns None and the caller resizes as before.
"""

import logging
import threading
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ['halve_antialiased']

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_verified: Optional[bool] = None


def _reference(image: np.ndarray, size: tuple) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).contiguous()[None]
    return F.interpolate(x.float(), size=size, mode='bilinear', align_corners=False,
                         antialias=True)


def _halve(image: np.ndarray) -> torch.Tensor:
    height, width = image.shape[:2]
    x = torch.empty((3, height, width), dtype=torch.int16)
    x.copy_(torch.from_numpy(image).permute(2, 0, 1))
    # Columns: out[j] = x[2j-1] + 3 x[2j] + 3 x[2j+1] + x[2j+2] (at most 8 * 255).
    even, odd = x[:, :, 0::2], x[:, :, 1::2]
    cols = (even + odd).mul_(3)
    cols[:, :, 1:] += odd[:, :, :-1]
    cols[:, :, :-1] += even[:, :, 1:]
    # Rows, the same on the column sums (at most 64 * 255, still exact in int16).
    even, odd = cols[:, 0::2], cols[:, 1::2]
    rows = (even + odd).mul_(3)
    rows[:, 1:] += odd[:, :-1]
    rows[:, :-1] += even[:, 1:]
    out = rows.float().mul_(1.0 / 64.0)[None]
    size = (height // 2, width // 2)
    out[..., 0, :] = _reference(image[:4], (2, size[1]))[..., 0, :]
    out[..., -1, :] = _reference(image[-4:], (2, size[1]))[..., -1, :]
    out[..., :, 0] = _reference(image[:, :4], (size[0], 2))[..., :, 0]
    out[..., :, -1] = _reference(image[:, -4:], (size[0], 2))[..., :, -1]
    return out


def _check() -> bool:
    rng = np.random.default_rng(0)
    for shape in ((34, 50, 3), (64, 128, 3)):
        image = rng.integers(0, 256, shape, dtype=np.uint8)
        image[:3] = 255  # saturated borders too
        if not torch.equal(_halve(image), _reference(image, (shape[0] // 2, shape[1] // 2))):
            logger.info('antialiased resize of this torch build differs from the integer '
                        'halving: using F.interpolate')
            return False
    return True


def halve_antialiased(image: np.ndarray) -> Optional[torch.Tensor]:
    """Downscale an HxWx3 uint8 image by 2 on each side, as antialiased bilinear does.

    Args:
        image: HxWx3 uint8 RGB, H and W even and at least 8.

    Returns:
        1 x 3 x H/2 x W/2 float32 (0..255 scale), bit-identical to ``F.interpolate(x.float(),
        antialias=True, mode='bilinear', align_corners=False)``; None when the image does not
        qualify or this torch build resizes differently.
    """
    global _verified
    height, width = image.shape[:2]
    if (image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or height % 2
            or width % 2 or min(height, width) < 8):
        return None
    if _verified is None:
        with _lock:
            if _verified is None:
                _verified = _check()
    return _halve(image) if _verified else None
