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

"""Segmenter: RGB uint8 images in, trainId maps out, for every zoo model.

The one inference path shared by the node, the evaluator, the CLIs and the benchmarks. All
model-specific choices (normalisation, test size, upsampling, TTA protocol) come from the zoo's
:class:`~cityseg_ros.models.zoo.ModelSpec`; preprocessing and postprocessing run on the model's
device so a GPU is not starved by CPU-side resizing.
"""

from dataclasses import dataclass
import logging
import math
import time
from typing import Optional, Sequence

from cityseg_ros.errors import ConfigError, ImageError
from cityseg_ros.labels import NUM_CLASSES
from cityseg_ros.models.zoo import build_model, get_spec, ModelSpec
from cityseg_ros.parallel import keep_freed_memory, parallel_map
from cityseg_ros.postprocess import LabelMaker, LruCache
from cityseg_ros.preprocess import halve_antialiased
import cv2
import numpy as np
import torch
import torch.nn.functional as F

__all__ = ['Prediction', 'Segmenter', 'resolve_device', 'PRECISIONS', 'TTA_MODES',
           'MIN_IMAGE_SIDE', 'MAX_INPUT_SIDE']

logger = logging.getLogger(__name__)

PRECISIONS = ('fp32', 'fp16', 'bf16')
TTA_MODES = ('none', 'flip', 'multiscale')
#: Smaller images carry no usable content at any model's stride: rejected, not guessed at.
MIN_IMAGE_SIDE = 16
#: Largest network input side (the node's input_height / input_width range): larger sizes are
#: refused before anything is allocated.
MAX_INPUT_SIDE = 8192
_AUTOCAST_DTYPES = {'fp16': torch.float16, 'bf16': torch.bfloat16}


@dataclass(frozen=True)
class Prediction:
    """One image's result.

    Attributes:
        labels: HxW uint8 trainIds (0..18) at the input image's size.
        confidence: HxW uint8, max softmax probability x 255, or None when not requested.
    """

    labels: np.ndarray
    confidence: Optional[np.ndarray] = None


def resolve_device(device: str) -> torch.device:
    """Turn 'auto', 'cpu', 'cuda' or 'cuda:N' into a usable device, or raise ConfigError."""
    if device == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f'unknown device {device!r}; use auto, cpu, cuda or cuda:N') from None
    if dev.type == 'cuda':
        if not torch.cuda.is_available():
            raise ConfigError(f'device {device!r} requested but CUDA is not available; '
                              'use --device cpu (or auto)')
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f'device {device!r} does not exist: '
                              f'{torch.cuda.device_count()} CUDA device(s) visible')
    elif dev.type != 'cpu':
        raise ConfigError(f'unsupported device {device!r}; use auto, cpu, cuda or cuda:N')
    return dev


def _round_up(value: float, divisor: int) -> int:
    return max(divisor, int(math.ceil(value / divisor)) * divisor)


def _check_input_size(size: Sequence[int]) -> None:
    if (len(size) != 2 or not all(isinstance(v, (int, np.integer)) for v in size)
            or min(size) < MIN_IMAGE_SIDE):
        raise ConfigError(f'input size {tuple(size)} is not a valid (H, W) of integers '
                          f'>= {MIN_IMAGE_SIDE}')
    if max(size) > MAX_INPUT_SIDE:
        raise ConfigError(f'input size {size[0]}x{size[1]} is too large: each side must be at '
                          f'most {MAX_INPUT_SIDE} px; pass a smaller input size (HxW), or none '
                          "for the model's test size")


def _check_image(index: int, image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray):
        raise ImageError(f'image {index} is a {type(image).__name__}, expected an HxWx3 '
                         'uint8 numpy array')
    if image.dtype != np.uint8:
        raise ImageError(f'image {index} has dtype {image.dtype}; only 8-bit images are '
                         'supported (convert 16-bit or float images to uint8 RGB first)')
    if image.ndim != 3 or image.shape[2] != 3:
        raise ImageError(f'image {index} has shape {image.shape}; expected HxWx3 RGB')
    if min(image.shape[:2]) < MIN_IMAGE_SIDE:
        raise ImageError(f'image {index} is {image.shape[1]}x{image.shape[0]} pixels; the '
                         f'smallest accepted side is {MIN_IMAGE_SIDE} px')


class Segmenter:
    """Run a zoo model on batches of RGB images.

    Args:
        model: zoo name, e.g. ``'espnetv2'``.
        weights: checkpoint path, ``'auto'`` (the default file in the cache) or None (random
            weights: only useful for tests and timing; logged as a warning).
        device: ``'auto'``, ``'cpu'``, ``'cuda'`` or ``'cuda:N'``.
        precision: ``'fp32'``, ``'bf16'`` (autocast) or ``'fp16'`` (autocast, CUDA only).
        tta: ``'none'``, ``'flip'`` or ``'multiscale'`` (the model's scales, each flipped).
        input_size: (H, W) network input size overriding the model's test size.
        channels_last: NHWC memory format (default on: oneDNN's and cuDNN's depth-wise and
            grouped convolutions are much faster in NHWC; see ``benchmark``).
        backend: what runs the network: ``'torch'``, ``'onnxruntime'``, ``'openvino'`` or
            ``'tensorrt'`` (:mod:`cityseg_ros.backends`; graphs and engines are built on first
            use of an input size and cached).
        progress: called with a line per slow backend step (export, engine build); default: log.
    """

    def __init__(self, model: str, weights: Optional[str] = None, device: str = 'auto',
                 precision: str = 'fp32', tta: str = 'none',
                 input_size: Optional[Sequence[int]] = None,
                 channels_last: Optional[bool] = None, backend: str = 'torch',
                 progress=None) -> None:
        from cityseg_ros.backends import check_backend, create_backend
        from cityseg_ros.checkpoints import load_checkpoint, resolve_weights

        self.spec: ModelSpec = get_spec(model)
        if precision not in PRECISIONS:
            raise ConfigError(f'unknown precision {precision!r}; use one of {PRECISIONS}')
        if tta not in TTA_MODES:
            raise ConfigError(f'unknown tta {tta!r}; use one of {TTA_MODES}')
        if input_size is not None:
            _check_input_size(input_size)  # before anything is built or allocated
        self.device = resolve_device(device)
        if precision == 'fp16' and self.device.type != 'cuda':
            raise ConfigError('precision fp16 needs a CUDA device; on CPU use bf16 or fp32')
        check_backend(backend, self.device, precision)  # before minutes of model loading
        self.precision = precision
        self.tta = tta

        path = resolve_weights(self.spec, weights)
        self.weights_file = self.spec.weights_for(str(path) if path else None)
        self.net = build_model(self.spec.name, self.weights_file)
        if path is None:
            logger.warning('%s runs with RANDOM (untrained) weights: its labels are '
                           'meaningless. Pass weights (a file or auto).', self.spec.name)
        else:
            load_checkpoint(self.net, path)
        self.weights_path = path
        if hasattr(self.net, 'fuse_bn'):
            self.net.fuse_bn()  # inference only: fold BatchNorm into the convolutions

        size = input_size or (self.weights_file.test_size if self.weights_file and
                              self.weights_file.test_size else self.spec.test_size)
        _check_input_size(size)
        div = self.spec.size_divisor
        self.input_size = (_round_up(size[0], div), _round_up(size[1], div))
        if self.input_size != tuple(size):
            logger.info('input size %s rounded to %s (multiple of %d for %s)', tuple(size),
                        self.input_size, div, self.spec.name)

        self.channels_last = True if channels_last is None else channels_last
        self._memory_format = (torch.channels_last if self.channels_last
                               else torch.contiguous_format)
        self.net.to(self.device, memory_format=self._memory_format)
        self.backend = create_backend(backend, self.net, self.spec, self.device, precision,
                                      progress=progress)
        if self.device.type == 'cuda':
            torch.backends.cudnn.benchmark = True  # fixed input size: pick the fastest kernels
        self._index_cache = LruCache(8)  # bounded: camera sizes may change at any time
        self._label_maker = LabelMaker()
        # Images of a batch side by side on CPU: only for the torch module itself (other
        # backends thread on their own).
        self._parallel_images = backend == 'torch'
        if self.device.type == 'cpu':
            keep_freed_memory()
        shape = (1, 3, 1, 1)
        self._mean = torch.tensor(self.spec.mean, device=self.device).view(shape)
        self._inv_std = 1.0 / torch.tensor(self.spec.std, device=self.device).view(shape)
        logger.info('%s on %s, %s, tta=%s, input %dx%d, weights %s', self.spec.name,
                    self.device, precision, tta, self.input_size[1], self.input_size[0],
                    path or 'random')

    # -- public API ---------------------------------------------------------------------------

    def __call__(self, images: Sequence[np.ndarray]) -> list:
        """Segment RGB images; return HxW uint8 trainId maps (see :meth:`predict`)."""
        return [p.labels for p in self.predict(images)]

    def predict(self, images: Sequence[np.ndarray], confidence: bool = False) -> list:
        """Segment a batch of images.

        Args:
            images: HxWx3 uint8 RGB arrays; sizes may differ (same-size images share a batch).
            confidence: also return max softmax probability maps.

        Returns:
            One :class:`Prediction` per image, labels at the image's own size.
        """
        for i, image in enumerate(images):
            _check_image(i, image)
        results: list = [None] * len(images)
        groups: dict = {}
        for i, image in enumerate(images):
            groups.setdefault(image.shape, []).append(i)
        for indices in groups.values():
            batch = [images[i] for i in indices]
            for i, pred in zip(indices, self._predict_same_size(batch, confidence)):
                results[i] = pred
        return results

    def warmup(self, batch_size: int = 1, iterations: int = 2,
               image_size: Optional[Sequence[int]] = None) -> float:
        """Run a few passes so lazy initialisation and kernel selection leave the hot path.

        Args:
            batch_size: images per pass (2 for a stereo pair).
            iterations: passes.
            image_size: (H, W) of the camera images; default: the network input size.

        Returns:
            Milliseconds of the last pass.
        """
        h, w = image_size or self.input_size
        dummy = [np.zeros((h, w, 3), np.uint8)] * batch_size
        elapsed = 0.0
        for _ in range(iterations):
            start = time.perf_counter()
            self.predict(dummy)
            elapsed = (time.perf_counter() - start) * 1e3
        return elapsed

    def close(self) -> None:
        """Free the network (and its GPU memory)."""
        self.backend.close()
        self.net = None
        if self.device.type == 'cuda':
            torch.cuda.empty_cache()

    # -- stages -------------------------------------------------------------------------------

    def net_size(self, height: int, width: int, scale: float = 1.0) -> tuple:
        """Network input (H, W) for an image of ``height`` x ``width`` at a TTA ``scale``."""
        th, tw = self.input_size
        if self.spec.resize == 'fixed':
            h, w = th * scale, tw * scale
        else:
            long_edge, short_edge = max(th, tw) * scale, min(th, tw) * scale
            if self.spec.resize == 'fit':  # mmcv.imrescale
                factor = min(long_edge / max(height, width), short_edge / min(height, width))
                h, w = int(height * factor + 0.5), int(width * factor + 0.5)
            else:  # 'long_side': HRNet's base_size * scale on the long side, same rounding
                side = int(long_edge + 0.5)
                h, w = ((side, int(width * side / height + 0.5)) if height > width
                        else (int(height * side / width + 0.5), side))
        div = self.spec.size_divisor
        return _round_up(h, div), _round_up(w, div)

    def to_device(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Stack same-size uint8 HxWx3 images as a float N,3,H,W (0..255) tensor on the device."""
        host = torch.from_numpy(np.stack(images))
        if self.device.type == 'cuda':
            host = host.pin_memory()
        return host.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()

    def resize_normalize(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        """Resize a 0..255 batch to the network size and normalise it with the model's stats."""
        if tuple(x.shape[-2:]) != tuple(size):
            # Bilinear with half-pixel centres is cv2's INTER_LINEAR (HRNet, mmcv); with
            # antialias it is PIL's BILINEAR (EdgeNets).
            x = F.interpolate(x, size=tuple(size), mode='bilinear', align_corners=False,
                              antialias=self.spec.antialias)
        x = (x - self._mean) * self._inv_std
        return x.contiguous(memory_format=self._memory_format)

    def preprocess(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Turn same-size uint8 images into the normalised network input at scale 1."""
        x = self.to_device(images)
        return self.resize_normalize(x, self.net_size(*x.shape[-2:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Network logits for a normalised batch, upsampled to the input size, 19 classes."""
        return F.interpolate(self.logits(x), size=x.shape[-2:], mode='bilinear',
                             align_corners=self.spec.align_corners)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Return the network's 19 trainId logit channels for a normalised batch, float32."""
        with self._autocast():
            out = self.backend(x)
        return out[:, :NUM_CLASSES].float()

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores of a 0..255 batch (from :meth:`to_device`) with the configured TTA.

        One pass gives logits. With TTA the passes are merged as the model's published test
        code does (``spec.tta_merge``); argmax gives the labels either way. Scores come at the
        image size (``spec.logits_at_image_size``) or at the scale-1 network size.
        """
        height, width = x.shape[-2:]
        out_size = (height, width) if self.spec.logits_at_image_size \
            else self.net_size(height, width)
        scales = self.spec.tta_scales if self.tta == 'multiscale' else (1.0,)
        flip = self.tta in ('flip', 'multiscale')
        merge = self.spec.tta_merge if (flip or len(scales) > 1) else 'logits'
        total = None
        for scale in scales:
            xs = self.resize_normalize(x, self.net_size(height, width, scale))
            tiled = scale > 1.0
            if merge == 'exp':  # HRNet: flip averaged as logits, then exp, per window
                terms = [self._windows(xs, tiled, lambda w: self._flip_mean(w, flip).exp())]
            else:  # mmseg: every flip is a pass of its own
                terms = [self._windows(xs, tiled, self.forward)]
                if flip:
                    terms.append(self._windows(xs.flip(-1), tiled, self.forward).flip(-1))
            for term in terms:
                term = self._resize(term, out_size)
                term = term.softmax(dim=1) if merge == 'softmax' else term
                total = term if total is None else total + term
        return total

    def _flip_mean(self, x: torch.Tensor, flip: bool) -> torch.Tensor:
        logits = self.forward(x)
        return (logits + self.forward(x.flip(-1)).flip(-1)) * 0.5 if flip else logits

    def _resize(self, scores: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        if tuple(scores.shape[-2:]) == tuple(size):
            return scores
        return F.interpolate(scores, size=tuple(size), mode='bilinear',
                             align_corners=self.spec.align_corners)

    def _windows(self, x: torch.Tensor, tiled: bool, fn) -> torch.Tensor:
        """Apply ``fn`` (a batch -> N,19,h,w scores at its size) to ``x`` whole or in crops.

        Crops (only when ``tiled`` and ``x`` exceeds ``spec.crop_size``) follow HRNet's
        multi_scale_inference: stride = crop, the last crop shifted back inside the image,
        scores averaged where crops overlap.
        """
        crop = self.spec.crop_size
        h, w = x.shape[-2:]
        if not tiled or crop is None or (h <= crop[0] and w <= crop[1]):
            return fn(x)
        ch, cw = min(crop[0], h), min(crop[1], w)
        tops = list(range(0, h - ch, ch)) + [h - ch]
        lefts = list(range(0, w - cw, cw)) + [w - cw]
        total = x.new_zeros((x.shape[0], NUM_CLASSES, h, w))
        count = x.new_zeros((1, 1, h, w))
        for top in tops:
            for left in lefts:
                total[..., top:top + ch, left:left + cw] += fn(
                    x[..., top:top + ch, left:left + cw])
                count[..., top:top + ch, left:left + cw] += 1
        return total / count

    # -- helpers ------------------------------------------------------------------------------

    def _probabilities(self, scores: torch.Tensor) -> torch.Tensor:
        merged_prob = self.tta != 'none' and self.spec.tta_merge in ('exp', 'softmax')
        if merged_prob:
            return scores / scores.sum(dim=1, keepdim=True)
        return scores.softmax(dim=1)

    def _autocast(self):
        if self.precision == 'fp32':
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=_AUTOCAST_DTYPES[self.precision])

    @torch.inference_mode()
    def _predict_same_size(self, images: Sequence[np.ndarray], confidence: bool) -> list:
        if self.tta == 'none' and not self.spec.logits_at_image_size:
            return self._predict_direct(images, confidence)
        height, width = images[0].shape[:2]
        scores = self.scores(self.to_device(images))
        if confidence:
            conf, labels = self._probabilities(scores).max(dim=1)
        else:
            labels = scores.argmax(dim=1)
        rows, cols = self._nearest_index(scores.shape[-2:], (height, width))
        labels = labels.to(torch.uint8)[:, rows][:, :, cols].cpu().numpy()
        if confidence:
            conf = (conf[:, rows][:, :, cols] * 255.0).round_().to(torch.uint8).cpu().numpy()
            return [Prediction(lb, cf) for lb, cf in zip(labels, conf)]
        return [Prediction(lb) for lb in labels]

    def _predict_direct(self, images: Sequence[np.ndarray], confidence: bool) -> list:
        """One pass, upsampling to the network size, nearest to the camera (EdgeNets' protocol).

        Labels come from :class:`~cityseg_ros.postprocess.LabelMaker`, equal to upsampling every
        channel and taking the argmax. On CPU the images run side by side, each on its share of
        the intra-op threads (:func:`~cityseg_ros.parallel.parallel_map`): for a light network
        that beats one batch. On a GPU they run as one batch.
        """
        if self.device.type != 'cpu':
            x = self.preprocess(images)
            logits = self.logits(x)
            return [self._labels_of(logits[i:i + 1], x.shape[-2:], image.shape[:2], confidence)
                    for i, image in enumerate(images)]
        return parallel_map(lambda image: self._predict_one(image, confidence), images,
                            enabled=self._parallel_images)

    def _predict_one(self, image: np.ndarray, confidence: bool) -> Prediction:
        with torch.inference_mode():  # thread-local: this may run in a worker thread
            x = self._preprocess_one(image)
            return self._labels_of(self.logits(x), x.shape[-2:], image.shape[:2], confidence)

    def _preprocess_one(self, image: np.ndarray) -> torch.Tensor:
        """:meth:`preprocess` of one image on CPU, bit for bit, from planar (NCHW) floats.

        The antialiased resize is ~30 % faster on planar input than on the interleaved layout
        :meth:`to_device` gives, with the same result, and an exact halving (2048x1024 ->
        1024x512) is done in integers (:func:`~cityseg_ros.preprocess.halve_antialiased`); the
        plain bilinear resize is not always the same on both layouts, so other models keep
        :meth:`preprocess`.
        """
        if self.device.type != 'cpu' or not self.spec.antialias:
            return self.preprocess([image])
        image = np.ascontiguousarray(image)  # e.g. BGR -> RGB views have negative strides
        height, width = image.shape[:2]
        size = self.net_size(height, width)
        x = halve_antialiased(image) if size == (height // 2, width // 2) else None
        if x is None:
            x = torch.from_numpy(image).permute(2, 0, 1).contiguous()[None].float()
            if (height, width) != tuple(size):
                x = F.interpolate(x, size=size, mode='bilinear', align_corners=False,
                                  antialias=True)
        x = x.sub_(self._mean).mul_(self._inv_std)  # x is a fresh tensor either way
        return x.contiguous(memory_format=self._memory_format)

    def _labels_of(self, logits: torch.Tensor, net_size: Sequence[int],
                   image_size: Sequence[int], confidence: bool) -> Prediction:
        rows, cols = self._nearest_index(net_size, image_size)
        return Prediction(*self._label_maker(logits, net_size, rows, cols, confidence))

    def _nearest_index(self, src: Sequence[int], dst: Sequence[int]):
        """Row/column gather indices of a pixel-centre nearest-neighbour resize src -> dst.

        Exactly PIL's NEAREST (what the reference test scripts use to bring label maps back to
        the camera size) and OpenCV's INTER_NEAREST_EXACT: OpenCV resizes the index ramps, so
        its fixed-point rounding on exact pixel boundaries is reproduced. Cached per size.
        """
        def axis(n_src: int, n_dst: int) -> torch.Tensor:
            ramp = np.arange(n_src, dtype=np.float32)[None]
            idx = cv2.resize(ramp, (n_dst, 1), interpolation=cv2.INTER_NEAREST_EXACT)
            return torch.from_numpy(idx[0].astype(np.int64)).to(self.device)
        key = (tuple(src), tuple(dst))
        return self._index_cache.get(key, lambda: (axis(src[0], dst[0]), axis(src[1], dst[1])))
