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

"""Labels (and confidence) from low-resolution logits, equal to the plain path but cheaper.

The plain path (EdgeNets' test protocol) upsamples every logit channel bilinearly with
``align_corners=True`` to the network input size, takes the argmax over classes, and brings the
label map to the camera size with pixel-centre nearest neighbour. For a 1024x512 input that is
10 M interpolated values per image, to keep one byte per pixel.

Bilinear interpolation is a convex combination of the four low-resolution neighbours with the
same weights for every class. Where all four neighbours have the same argmax ``c``, each ahead of
the runner-up by more than any float rounding could move it, the interpolated argmax is ``c``.
Only the pixels of the other cells (class borders, 2-5 % of a Cityscapes frame) are interpolated,
with the arithmetic of PyTorch's own kernel (``fma(t0, w0, t1 * w1)`` per axis, width first),
and their argmax taken; the nearest-neighbour resize only picks rows and columns, so only those
are evaluated. The first use of each size checks that arithmetic against ``F.interpolate`` on
random logits; on a build where it differs the plain path is used instead, so the labels are
bit-identical either way.

Confidence (max softmax) needs every class at every pixel: it is computed densely, from the
interpolated logits minus the (already known) winning logit, which skips a max reduction.
"""

from collections import OrderedDict
from dataclasses import dataclass
import logging
import threading
from typing import Callable, Hashable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ['LruCache', 'LabelMaker', 'plain_labels']

logger = logging.getLogger(__name__)

#: A neighbour's winning class must lead the runner-up by this much, relative to the largest
#: logit magnitude, for the shortcut to decide the pixel. The interpolation's rounding error is
#: below 1e-6 of that magnitude (four float roundings), so 1e-5 leaves a margin of ten.
MARGIN = 1e-5
#: Marks "undecided" in the cell label map; real class ids are below it.
_UNDECIDED = 255


class LruCache:
    """A small thread-safe least-recently-used cache: ``get(key, make)``; at most ``size`` items.

    Every cache of the engine is one of these, so a stream of changing image sizes keeps a
    bounded number of entries (DESIGN.md: every cache is bounded).
    """

    def __init__(self, size: int = 8) -> None:
        if size < 1:
            raise ValueError(f'LruCache size must be >= 1, got {size}')
        self.size = size
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, make: Callable[[], object]) -> object:
        """Return the cached value for ``key``, computing it with ``make()`` on a miss."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = make()
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        """Drop every entry."""
        with self._lock:
            self._items.clear()


@dataclass(frozen=True)
class _Axis:
    """Source indices and weights of one axis of an align_corners=True linear upsampling."""

    lo: torch.Tensor    # int64, first neighbour of each output index
    hi: torch.Tensor    # int64, second neighbour (== lo on the last index)
    w_lo: torch.Tensor  # float32 weight of lo
    w_hi: torch.Tensor  # float32 weight of hi
    lo_np: np.ndarray   # lo as a numpy array


def _axis(n_in: int, n_out: int, device: torch.device) -> _Axis:
    # aten/src/ATen/native/UpSample.h, area_pixel_compute_scale / compute_source_index_and_lambda
    # for align_corners=True: the scale and every product are float32, as in the kernel.
    out = torch.arange(n_out, dtype=torch.int64)
    if n_in == n_out:
        lo, w_hi = out, torch.zeros(n_out, dtype=torch.float32)
    else:
        scale = (torch.tensor(n_in - 1, dtype=torch.float32) /
                 torch.tensor(max(n_out - 1, 1), dtype=torch.float32))
        real = scale * out.to(torch.float32)
        lo = torch.clamp(torch.floor(real).to(torch.int64), max=n_in - 1)
        w_hi = torch.clamp(real - lo.to(torch.float32), 0.0, 1.0)
    hi = lo + (lo < n_in - 1).to(torch.int64)
    w_lo = 1.0 - w_hi
    return _Axis(lo.to(device), hi.to(device), w_lo.to(device), w_hi.to(device), lo.numpy())


def _interpolate_at(pixels: torch.Tensor, width: int, rows: _Axis, cols: _Axis,
                    i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    """Bilinear logits at output pixels (i, j), as PyTorch's generic CPU kernel computes them.

    ``InterpolateNonSeparable<.., 2>`` evaluates ``t0 * w0 + t1 * w1`` per axis, width first,
    and the compiler contracts it to ``fma(t0, w0, t1 * w1)``; ``addcmul`` computes exactly that
    (both are checked against ``F.interpolate`` before use, see :meth:`LabelMaker._exact_ok`).

    Args:
        pixels: (h * w) x C float32, the class vector of each low-res pixel, row-major.
        width: w.
        rows, cols: the axes of the upsampling.
        i, j: int64 output row and column of each pixel (P,).

    Returns:
        P x C float32.
    """
    r0, r1 = rows.lo[i] * width, rows.hi[i] * width
    c0, c1 = cols.lo[j], cols.hi[j]
    wc0, wc1 = cols.w_lo[j, None], cols.w_hi[j, None]
    top = torch.addcmul(pixels.index_select(0, r0 + c1) * wc1, pixels.index_select(0, r0 + c0),
                        wc0)
    bottom = torch.addcmul(pixels.index_select(0, r1 + c1) * wc1,
                           pixels.index_select(0, r1 + c0), wc0)
    return torch.addcmul(bottom * rows.w_hi[i, None], top, rows.w_lo[i, None])


def plain_labels(logits: torch.Tensor, size: Sequence[int], rows: torch.Tensor,
                 cols: torch.Tensor, confidence: bool = False):
    """Upsample every channel, take the argmax, pick ``rows`` x ``cols``: the plain path.

    Args:
        logits: N x C x h x w float logits.
        size: (H, W) network input size to upsample to (align_corners=True).
        rows, cols: int64 nearest-neighbour indices into H and W (the camera grid).
        confidence: also return max softmax x 255 as uint8.

    Returns:
        (labels N x len(rows) x len(cols) uint8, confidence of that shape or None).
    """
    scores = F.interpolate(logits, size=tuple(size), mode='bilinear', align_corners=True)
    if confidence:
        conf, labels = scores.softmax(dim=1).max(dim=1)
        conf = (conf[:, rows][:, :, cols] * 255.0).round_().to(torch.uint8)
    else:
        labels, conf = scores.argmax(dim=1), None
    return labels.to(torch.uint8)[:, rows][:, :, cols], conf


class LabelMaker:
    """Turn one image's logits into labels (and confidence) on a camera grid, exactly.

    Only align_corners=True upsampling (EdgeNets' protocol, the one ESPNetv2 uses) takes the
    shortcut; the labels equal :func:`plain_labels` bit for bit (the argmax is the first
    maximum, as ``torch.argmax``). Thread-safe: the engine calls it from several threads.
    """

    def __init__(self, cache_size: int = 8) -> None:
        self._axes = LruCache(2 * cache_size)
        self._checked = LruCache(cache_size)

    def __call__(self, logits: torch.Tensor, size: Sequence[int], rows, cols,
                 confidence: bool = False):
        """Labels and optional confidence of one image.

        Args:
            logits: 1 x C x h x w float32 network logits (C < 32; any memory format).
            size: (H, W) network input size, at least (h, w) on each side.
            rows, cols: camera-grid indices into H and W (nearest neighbour), int64 tensors
                or arrays.
            confidence: also compute max softmax x 255.

        Returns:
            (labels len(rows) x len(cols) uint8 array, confidence uint8 array or None).
        """
        h, w = logits.shape[-2:]
        size = (int(size[0]), int(size[1]))
        rows, cols = _numpy_index(rows), _numpy_index(cols)
        if (logits.shape[0] != 1 or logits.dtype != torch.float32 or logits.shape[1] >= 32
                or size[0] < h or size[1] < w or not self._exact_ok(logits, size)):
            labels, conf = plain_labels(logits, size, torch.from_numpy(rows).to(logits.device),
                                        torch.from_numpy(cols).to(logits.device), confidence)
            return labels[0].cpu().numpy(), (None if conf is None else conf[0].cpu().numpy())
        ax_r = self._axis(h, size[0], logits.device)
        ax_c = self._axis(w, size[1], logits.device)
        # Evaluate each needed network row / column once, then spread them to the camera grid.
        need_r, inv_r = np.unique(rows, return_inverse=True)
        need_c, inv_c = np.unique(cols, return_inverse=True)
        labels = self._labels(logits[0], ax_r, ax_c, need_r, need_c)
        conf = None
        if confidence:
            conf = _spread(self._confidence(logits, size, labels, need_r, need_c), inv_r, inv_c)
        return _spread(labels, inv_r, inv_c), conf

    # -- internals ----------------------------------------------------------------------------

    def _axis(self, n_in: int, n_out: int, device: torch.device) -> _Axis:
        return self._axes.get((n_in, n_out, str(device)), lambda: _axis(n_in, n_out, device))

    def _labels(self, chw: torch.Tensor, ax_r: _Axis, ax_c: _Axis, need_r: np.ndarray,
                need_c: np.ndarray) -> np.ndarray:
        classes, h, w = chw.shape
        planes = chw.contiguous()  # C x h x w: reductions over classes vectorise across pixels
        best = planes.amax(dim=0)
        tolerance = MARGIN * (1.0 + max(float(best.amax()), -float(planes.amin())))
        # Classes within the tolerance of the best, as count + 32 * class id in one sum: a
        # count of 1 is a sure winner (no tie, no close runner-up) and names it.
        near = planes >= best - tolerance
        code = torch.arange(classes, dtype=torch.int16, device=chw.device).mul_(32).add_(1)
        summed = (near * code[:, None, None]).sum(dim=0, dtype=torch.int16)
        winner = torch.where((summed & 31) == 1, summed >> 5, _UNDECIDED)
        winner = winner.to(torch.uint8).cpu().numpy()
        # A cell is the square between low-res (r, c) and (r + 1, c + 1), clamped at the last
        # row / column exactly as the kernel clamps its second neighbour.
        down = np.concatenate([winner[1:], winner[-1:]], 0)
        right = np.concatenate([winner[:, 1:], winner[:, -1:]], 1)
        diag = np.concatenate([down[:, 1:], down[:, -1:]], 1)
        agree = (winner == down) & (winner == right) & (winner == diag)
        cell = np.where(agree, winner, np.uint8(_UNDECIDED))
        labels = np.take(np.take(cell, ax_r.lo_np[need_r], 0), ax_c.lo_np[need_c], 1)
        undecided = np.nonzero(labels == _UNDECIDED)
        if len(undecided[0]):
            i = torch.from_numpy(need_r[undecided[0]]).to(chw.device)
            j = torch.from_numpy(need_c[undecided[1]]).to(chw.device)
            rows_flat = chw.permute(1, 2, 0).reshape(h * w, classes)  # a view for CL logits
            exact = _interpolate_at(rows_flat, w, ax_r, ax_c, i, j).argmax(dim=1)
            labels[undecided] = exact.to(torch.uint8).cpu().numpy()
        return labels

    @staticmethod
    def _confidence(logits: torch.Tensor, size: Sequence[int], labels: np.ndarray,
                    need_r: np.ndarray, need_c: np.ndarray) -> np.ndarray:
        # max softmax = 1 / sum_k exp(s_k - s_max), and s_max is the winner's logit.
        scores = F.interpolate(logits.contiguous(memory_format=torch.channels_last),
                               size=tuple(size), mode='bilinear', align_corners=True)
        scores = scores[0].permute(1, 2, 0)  # H x W x C, contiguous
        if len(need_r) != size[0]:
            scores = scores[torch.from_numpy(need_r).to(scores.device)]
        if len(need_c) != size[1]:
            scores = scores[:, torch.from_numpy(need_c).to(scores.device)]
        scores = scores.reshape(-1, scores.shape[-1])
        winner = torch.from_numpy(labels.reshape(-1, 1).astype(np.int64)).to(scores.device)
        total = scores.sub_(scores.gather(1, winner)).exp_().sum(dim=1)
        conf = (255.0 / total).round_().to(torch.uint8).cpu().numpy()
        return conf.reshape(labels.shape)

    def _exact_ok(self, logits: torch.Tensor, size: Sequence[int]) -> bool:
        """Tell whether :func:`_interpolate_at` equals ``F.interpolate`` here (once per size)."""
        key = (tuple(logits.shape), logits.stride(), str(logits.device), tuple(size))
        return self._checked.get(key, lambda: self._check(logits, size))

    def _check(self, logits: torch.Tensor, size: Sequence[int]) -> bool:
        gen = torch.Generator().manual_seed(0)
        probe = torch.empty_strided(logits.shape, logits.stride(), dtype=torch.float32)
        probe.copy_(torch.randn(logits.shape, generator=gen) * 8.0)
        probe = probe.to(logits.device)
        ref = F.interpolate(probe, size=tuple(size), mode='bilinear', align_corners=True)[0]
        classes, h, w = logits.shape[1:]
        ax_r, ax_c = _axis(h, size[0], probe.device), _axis(w, size[1], probe.device)
        count = min(size[0] * size[1], 4096)
        i = torch.randint(size[0], (count,), generator=gen)
        j = torch.randint(size[1], (count,), generator=gen)
        # Plus the corners, where the clamping of the second neighbour matters.
        i = torch.cat([i, torch.tensor([0, 0, size[0] - 1, size[0] - 1])]).to(probe.device)
        j = torch.cat([j, torch.tensor([0, size[1] - 1, 0, size[1] - 1])]).to(probe.device)
        rows_flat = probe[0].permute(1, 2, 0).reshape(h * w, classes)
        ours = _interpolate_at(rows_flat, w, ax_r, ax_c, i, j)
        same = torch.equal(ours, ref[:, i, j].t())
        if not same:
            logger.info('bilinear arithmetic of this torch build differs from the shortcut '
                        '(%s -> %s): using the plain upsample + argmax', (h, w), tuple(size))
        return same


def _numpy_index(index) -> np.ndarray:
    if isinstance(index, torch.Tensor):
        index = index.cpu().numpy()
    return np.asarray(index, dtype=np.int64)


def _spread(values: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Pick ``rows`` x ``cols`` of a 2-D array (nearest-neighbour resize by index)."""
    return np.take(np.take(values, rows, 0), cols, 1)
