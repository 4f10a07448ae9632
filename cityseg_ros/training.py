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

"""Training and fine-tuning of every zoo model on a Cityscapes-layout folder.

One loop for all models, as in mmseg's and HRNet's Cityscapes recipes: random scale, crop,
flip and photometric jitter; cross-entropy over the 19 trainIds (255 ignored, optional OHEM);
SGD with a poly schedule or AdamW; mixed precision on CUDA; periodic validation with the
official scores (:mod:`cityseg_ros.metrics`); and checkpoints that resume **exactly**.

Exact resume: the data order is a pure function of (seed, epoch) (a seeded
``DistributedSampler``), each sample's augmentation a pure function of (seed, epoch, index),
so the step counter fixes where the data stands and DataLoader workers change nothing. The
checkpoint adds the model, optimiser, scheduler, grad scaler and the Python / NumPy / torch RNG
states of every rank. Everything is saved as plain tensors, dicts and lists, so it loads with
``torch.load(weights_only=True)``.

Multi-process: started by ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) the trainer
joins the process group (NCCL on CUDA, gloo on CPU), wraps the model in
``DistributedDataParallel``, shards the data with the sampler, and only rank 0 writes logs and
checkpoints.

Outputs in ``out``: ``last.pt`` (training state), ``model.pth`` (the model's plain state dict,
which ``segment_images``, ``evaluate`` and the node load by path), ``scalars.csv``
(``step,tag,value,wall_time``), ``config.json``, ``summary.json`` and, with ``tensorboard``
installed and asked for, an event file.

Models are trained in ``train()`` mode and never fused: ESPNetv2's ``fuse_bn`` is an
inference-only step of the engine. Only the first 19 logit channels are trained (ESPNetv2's
"background" channel and InternImage's 131 unused ones receive no target). Auxiliary heads
(HRNet-OCR's soft object regions, UperNet's FCN head) are not supervised: ``forward`` returns
the final logits only.
"""

import contextlib
import csv
from dataclasses import asdict, dataclass, field
import errno
import hashlib
import json
import logging
import math
import os
from pathlib import Path
import random
import sys
import time
from typing import Iterator, NamedTuple, Optional, Sequence, Union

from cityseg_ros.checkpoints import file_problem, read_checkpoint, tensor_problem
from cityseg_ros.engine import resolve_device
from cityseg_ros.errors import CheckpointError, CitysegError, ConfigError, ImageError
from cityseg_ros.labels import IGNORE_ID, label_ids_to_train_ids, NUM_CLASSES
from cityseg_ros.metrics import Counts, Scores
from cityseg_ros.models.zoo import build_model, get_spec, ModelSpec, WeightsFile
import cv2
import numpy as np
import torch
from torch import nn
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, DistributedSampler

__all__ = [
    'CityscapesFrame', 'DistInfo', 'EpochSampler', 'PolySchedule', 'SegmentationLoss',
    'TrainConfig', 'TrainResult', 'TrainSet', 'Trainer', 'augment', 'build_optimizer',
    'find_frames', 'load_training_state', 'parameter_digest', 'photometric_jitter', 'train',
    'validate', 'CHECKPOINT_FORMAT', 'LAST_CHECKPOINT', 'MODEL_FILE', 'SCALARS_FILE',
]

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

CHECKPOINT_FORMAT = 'cityseg_ros.train/1'
LAST_CHECKPOINT = 'last.pt'
MODEL_FILE = 'model.pth'
SCALARS_FILE = 'scalars.csv'
CONFIG_FILE = 'config.json'
SUMMARY_FILE = 'summary.json'
OPTIMIZERS = ('sgd', 'adamw')
PRECISIONS = ('auto', 'fp32', 'fp16', 'bf16')
_AUTOCAST = {'fp16': torch.float16, 'bf16': torch.bfloat16}
# Per-optimiser defaults: mmseg's Cityscapes schedules (SGD lr 0.01, momentum 0.9, wd 5e-4;
# AdamW lr 6e-5, wd 0.01 as in SegFormer).
_DEFAULT_LR = {'sgd': 0.01, 'adamw': 6e-5}
_DEFAULT_WD = {'sgd': 5e-4, 'adamw': 0.01}
# The largest crop used by default (mmseg / HRNet train Cityscapes on 512x1024 crops).
_DEFAULT_CROP = (512, 1024)
# mmseg's PhotoMetricDistortion: brightness delta, contrast and saturation ranges, hue delta
# in degrees; each applied with probability 1/2.
_BRIGHTNESS = 32.0
_CONTRAST = (0.5, 1.5)
_SATURATION = (0.5, 1.5)
_HUE_DEGREES = 18.0


# --------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs; saved in ``config.json`` and in ``last.pt``.

    Attributes:
        model: zoo name.
        data_root: Cityscapes-layout folder (``leftImg8bit/SPLIT/CITY/*_leftImg8bit.png`` and
            ``gtFine/SPLIT/CITY/*_gtFine_labelIds.png``).
        out: output folder.
        split: training split.
        val_split: validation split; ``'auto'``: ``'val'`` when it has ground truth, else no
            validation; None: no validation.
        steps: optimiser steps in total (the poly schedule runs to this).
        batch_size: images per step and process.
        crop_size: (H, W) training crop; default the smaller of the base size and 512x1024,
            rounded up to the model's size divisor.
        base_size: (H, W) the image is first fitted into (keeping its aspect ratio) before the
            random scale; default the model's test size (of the init weights if they have one).
        scale_range: random scale factors on the base size, uniform.
        flip: random horizontal flips.
        jitter: photometric jitter (brightness, contrast, saturation, hue).
        optimizer: 'sgd' (momentum, poly schedule) or 'adamw' (poly schedule).
        lr: base learning rate; None: 0.01 (SGD) or 6e-5 (AdamW).
        momentum: SGD momentum.
        weight_decay: on weights with more than one dimension only (not on norms, biases,
            PReLU slopes); None: 5e-4 (SGD) or 0.01 (AdamW).
        poly_power: lr = base * (1 - step / steps) ** power.
        warmup_steps: linear warm-up from 1e-3 x lr.
        ohem: online hard example mining (HRNet's OhemCrossEntropy).
        ohem_thresh: OHEM keeps pixels whose true-class probability is below this ...
        ohem_min_kept: ... and at least this many pixels per process and step.
        clip_grad: clip the gradient norm to this value; None: no clipping.
        precision: 'auto' (fp16 with a GradScaler on CUDA, fp32 on CPU), 'fp32', 'fp16'
            (CUDA only) or 'bf16' (autocast).
        device: 'auto', 'cpu', 'cuda' or 'cuda:N' (under torchrun: the local rank's GPU).
        channels_last: NHWC tensors (faster convolutions on recent GPUs).
        sync_bn: SyncBatchNorm across processes (CUDA only).
        freeze_bn: keep every BatchNorm in eval mode (running statistics fixed, scale and shift
            still trained): for fine-tuning with small batches, whose statistics are noisy
            and differ from whole images'.
        workers: DataLoader worker processes per process.
        seed: seeds data order, augmentation and initialisation.
        init_weights: checkpoint to fine-tune from (loaded strictly through the zoo adapter),
            'auto' for the model's released file in the cache, or None.
        backbone_weights: ImageNet encoder weights (SERNet-Former: torchvision's ResNet), 'auto'
            for the spec's file in the cache, or None.
        resume: 'auto' (``out/last.pt``), a checkpoint path, or None (start afresh).
        val_every: validate every this many steps (0: only at the end).
        val_size: (H, W) network input size for validation; default the model's test size.
        val_at_start: also validate before the first step (the starting point's score).
        save_every: write ``last.pt`` every this many steps (and at the end).
        log_every: write scalars every this many steps.
        tensorboard: also write a TensorBoard event file (if tensorboard is installed).
        progress: show a tqdm progress bar (rank 0).
    """

    model: str
    data_root: Path
    out: Path
    split: str = 'train'
    val_split: Optional[str] = 'auto'
    steps: int = 80_000
    batch_size: int = 8
    crop_size: Optional[tuple[int, int]] = None
    base_size: Optional[tuple[int, int]] = None
    scale_range: tuple[float, float] = (0.5, 2.0)
    flip: bool = True
    jitter: bool = True
    optimizer: str = 'sgd'
    lr: Optional[float] = None
    momentum: float = 0.9
    weight_decay: Optional[float] = None
    poly_power: float = 0.9
    warmup_steps: int = 0
    ohem: bool = False
    ohem_thresh: float = 0.7
    ohem_min_kept: int = 100_000
    clip_grad: Optional[float] = None
    precision: str = 'auto'
    device: str = 'auto'
    channels_last: bool = False
    sync_bn: bool = False
    freeze_bn: bool = False
    workers: int = 4
    seed: int = 0
    init_weights: Optional[str] = None
    backbone_weights: Optional[str] = None
    resume: Optional[str] = None
    val_every: int = 0
    val_size: Optional[tuple[int, int]] = None
    val_at_start: bool = False
    save_every: int = 1000
    log_every: int = 10
    tensorboard: bool = False
    progress: bool = True

    def to_dict(self) -> dict:
        """Return the config as JSON-friendly primitives (paths as strings, tuples as lists)."""
        out = {}
        for key, value in asdict(self).items():
            if isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[key] = value
        return out

    def check(self) -> None:
        """Raise ConfigError for values that cannot work (before anything is loaded)."""
        def positive(name: str, value) -> None:
            if value is not None and value <= 0:
                raise ConfigError(f'--{name.replace("_", "-")} must be > 0, got {value}')

        # NaN passes every comparison, and a float32 optimiser state overflows on 1e308: the
        # real-valued options must be finite and within _MAX_HYPER; the counts, int64 steps.
        for name in ('lr', 'momentum', 'weight_decay', 'poly_power', 'clip_grad',
                     'ohem_thresh'):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and abs(value) <= _MAX_HYPER):
                raise ConfigError(f'--{name.replace("_", "-")} must be a finite number of at '
                                  f'most {_MAX_HYPER:g}, got {value}')
        for name in ('steps', 'warmup_steps', 'val_every', 'save_every', 'log_every',
                     'ohem_min_kept'):
            if getattr(self, name) > _MAX_STEPS:
                raise ConfigError(f'--{name.replace("_", "-")} must be at most {_MAX_STEPS}, '
                                  f'got {getattr(self, name)}')
        if self.workers > _MAX_WORKERS:  # each is a process: 999999 would fork until it hangs
            raise ConfigError(f'--workers must be 0..{_MAX_WORKERS}, got {self.workers}')
        if not 0 <= self.seed < 2**32:  # numpy's seeds are >= 0, torch's fit in 64 bits
            raise ConfigError(f'--seed must be 0..{2**32 - 1}, got {self.seed}')
        for name in ('steps', 'batch_size', 'save_every', 'log_every', 'lr', 'poly_power',
                     'ohem_min_kept', 'clip_grad'):
            positive(name, getattr(self, name))
        for name in ('val_every', 'warmup_steps', 'workers', 'momentum', 'weight_decay'):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f'--{name.replace("_", "-")} must be >= 0, got {value}')
        for name in ('crop_size', 'base_size', 'val_size'):
            size = getattr(self, name)
            if size is not None and (len(size) != 2 or min(size) < 16):
                raise ConfigError(f'--{name.replace("_", "-")} {size} is not a valid HxW '
                                  '(both sides >= 16)')
        lo, hi = self.scale_range
        if not 0 < lo <= hi <= _MAX_SCALE:
            raise ConfigError(f'--scale-range {lo} {hi}: need 0 < MIN <= MAX <= {_MAX_SCALE:g}')
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f'unknown optimizer {self.optimizer!r}; use one of {OPTIMIZERS}')
        if self.precision not in PRECISIONS:
            raise ConfigError(f'unknown precision {self.precision!r}; use one of {PRECISIONS}')
        if not 0.0 < self.ohem_thresh <= 1.0:
            raise ConfigError(f'--ohem-thresh must be in (0, 1], got {self.ohem_thresh}')


# Bounds of the options (TrainConfig.check): far beyond any real run, small enough that
# nothing overflows (float32 optimiser state, int64 step counters, process tables).
_MAX_HYPER = 1e6
_MAX_STEPS = 10**9
_MAX_WORKERS = 64
_MAX_SCALE = 8.0  # a random rescale of the base size (mmseg trains with 0.5..2.0)


@dataclass
class TrainResult:
    """What a finished (or stopped) run reports.

    Attributes:
        step: optimiser steps done.
        loss: loss of the last step (mean over processes).
        scores: the last validation's scores, or None.
        initial_scores: the scores before the first step (``val_at_start``), or None.
        seconds: wall time of this invocation.
        checkpoint: ``out/last.pt``.
        model_file: ``out/model.pth``.
        param_digests: sha256 of the parameters on each rank (equal under DDP).
    """

    step: int
    loss: float
    scores: Optional[Scores]
    initial_scores: Optional[Scores]
    seconds: float
    checkpoint: Path
    model_file: Path
    param_digests: list = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# Data


class CityscapesFrame(NamedTuple):
    """One image and its fine ground truth (None when the split has none)."""

    image: Path
    label_ids: Optional[Path]


def find_frames(root: PathLike, split: str, require_gt: bool = True) -> list[CityscapesFrame]:
    """List ``leftImg8bit/SPLIT/*/*_leftImg8bit.png`` and their ``gtFine`` labelIds, sorted.

    Raises:
        ConfigError: the root or split folder is missing.
        ImageError: no images, or (``require_gt``) an image without its labelIds file.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ConfigError(f'--data-root {root} not found; pass the Cityscapes folder that holds '
                          'leftImg8bit/ and gtFine/')
    images_dir = root / 'leftImg8bit' / split
    if not images_dir.is_dir():
        present = sorted(p.name for p in (root / 'leftImg8bit').glob('*') if p.is_dir())
        raise ConfigError(f'split {split!r} not found: no folder {images_dir} (splits present: '
                          f'{", ".join(present) or "none"}); pass --data-root with '
                          'leftImg8bit/SPLIT/CITY/*_leftImg8bit.png')
    images = sorted(images_dir.glob('*/*_leftImg8bit.png'))
    if not images:
        raise ImageError(f'no *_leftImg8bit.png images in {images_dir}/CITY/; is this a '
                         'Cityscapes-layout folder?')
    frames = []
    for image in images:
        name = image.name[:-len('_leftImg8bit.png')] + '_gtFine_labelIds.png'
        label = root / 'gtFine' / split / image.parent.name / name
        if not label.is_file():
            if require_gt:
                raise ImageError(f'{label} not found: every training image needs its fine '
                                 f'labelIds ({image.name})')
            label = None
        frames.append(CityscapesFrame(image, label))
    return frames


def _read_image(path: Path) -> np.ndarray:
    from cityseg_ros.imageio import read_rgb
    return read_rgb(path)


def _read_label_ids(path: Path, shape: Sequence[int]) -> np.ndarray:
    """Read a labelIds PNG of the image's size; the header is checked before decoding.

    A label file is as hostile as any: a header claiming a huge size is refused before the
    decoder allocates it, and only a regular file is read (never a FIFO).
    """
    from cityseg_ros.imageio import decode_image, probe_file

    info = probe_file(path)
    if (info.height, info.width) != tuple(shape[:2]):
        raise ImageError(f'{path} is {info.width}x{info.height} but its image is '
                         f'{shape[1]}x{shape[0]}')
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ImageError(f'{path} cannot be read: {exc.strerror or exc}') from None
    labels, _ = decode_image(data, what=str(path))
    if labels.dtype != np.uint8 or labels.ndim != 2:
        raise ImageError(f'{path} is not an 8-bit single-channel labelIds PNG')
    return labels


def photometric_jitter(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Randomly change brightness, contrast, saturation and hue (each with probability 1/2).

    mmseg's ``PhotoMetricDistortion`` ranges, in a fixed order. ``image``: HxWx3 uint8 RGB.
    """
    img = image.astype(np.float32)
    if rng.random() < 0.5:
        img += rng.uniform(-_BRIGHTNESS, _BRIGHTNESS)
    if rng.random() < 0.5:
        img *= rng.uniform(*_CONTRAST)
    saturate, hue = rng.random() < 0.5, rng.random() < 0.5
    sat_factor, hue_shift = rng.uniform(*_SATURATION), rng.uniform(-_HUE_DEGREES, _HUE_DEGREES)
    if saturate or hue:
        hsv = cv2.cvtColor(np.clip(img, 0, 255) / 255.0, cv2.COLOR_RGB2HSV)  # H in degrees
        if saturate:
            hsv[..., 1] = np.clip(hsv[..., 1] * sat_factor, 0.0, 1.0)
        if hue:
            hsv[..., 0] = (hsv[..., 0] + hue_shift) % 360.0
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB) * 255.0
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def augment(image: np.ndarray, labels: np.ndarray, base_size: Sequence[int],
            crop_size: Sequence[int], scale_range: Sequence[float], rng: np.random.Generator,
            flip: bool = True, jitter: bool = True,
            pad_value: Sequence[float] = (124, 116, 104)) -> tuple[np.ndarray, np.ndarray]:
    """Random scale, crop, flip and jitter of one training pair.

    Args:
        image: HxWx3 uint8 RGB.
        labels: HxW uint8 trainIds (255 = ignore).
        base_size: (H, W) the image is fitted into (aspect ratio kept) at scale 1.
        crop_size: (H, W) of the output; smaller scaled images are padded (image with
            ``pad_value``, labels with 255).
        scale_range: (min, max) of the uniform random scale.
        rng: the sample's generator (seeded from seed, epoch and index).
        flip: flip horizontally with probability 1/2.
        jitter: apply :func:`photometric_jitter`.
        pad_value: RGB fill of the padding (the ImageNet mean, so it normalises to ~0).

    Returns:
        (crop_h x crop_w x 3 uint8 image, crop_h x crop_w uint8 trainIds).
    """
    h, w = labels.shape
    factor = min(base_size[0] / h, base_size[1] / w) * rng.uniform(*scale_range)
    nh, nw = max(1, int(h * factor + 0.5)), max(1, int(w * factor + 0.5))
    if (nh, nw) != (h, w):
        # Area averaging when shrinking (no aliasing), bilinear when enlarging.
        interp = cv2.INTER_AREA if nh < h else cv2.INTER_LINEAR
        image = cv2.resize(image, (nw, nh), interpolation=interp)
        labels = cv2.resize(labels, (nw, nh), interpolation=cv2.INTER_NEAREST)
    ch, cw = crop_size
    pad_h, pad_w = max(ch - nh, 0), max(cw - nw, 0)
    if pad_h or pad_w:
        image = cv2.copyMakeBorder(image, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT,
                                   value=tuple(float(v) for v in pad_value))
        labels = cv2.copyMakeBorder(labels, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT,
                                    value=IGNORE_ID)
    top = int(rng.integers(0, labels.shape[0] - ch + 1))
    left = int(rng.integers(0, labels.shape[1] - cw + 1))
    image = image[top:top + ch, left:left + cw]
    labels = labels[top:top + ch, left:left + cw]
    if flip and rng.random() < 0.5:
        image, labels = image[:, ::-1], labels[:, ::-1]
    if jitter:
        image = photometric_jitter(image, rng)
    return np.ascontiguousarray(image), np.ascontiguousarray(labels)


class TrainSet(Dataset):
    """Augmented training pairs; item ``epoch * len(self) + i`` is frame i in that epoch.

    The epoch travels in the index (see :class:`EpochSampler`) so that each sample's random
    augmentation depends only on (seed, epoch, i), whichever worker process loads it.
    """

    def __init__(self, frames: Sequence[CityscapesFrame], base_size: Sequence[int],
                 crop_size: Sequence[int], scale_range: Sequence[float], seed: int,
                 flip: bool = True, jitter: bool = True,
                 pad_value: Sequence[float] = (124, 116, 104)):
        self.frames = list(frames)
        self.base_size = tuple(base_size)
        self.crop_size = tuple(crop_size)
        self.scale_range = tuple(scale_range)
        self.seed = seed
        self.flip = flip
        self.jitter = jitter
        self.pad_value = tuple(pad_value)

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, key: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (H x W x 3 uint8 image, H x W uint8 trainIds) of one augmented crop."""
        epoch, index = divmod(int(key), len(self.frames))
        frame = self.frames[index]
        image = _read_image(frame.image)
        labels = label_ids_to_train_ids(_read_label_ids(frame.label_ids, image.shape))
        rng = np.random.default_rng((self.seed, epoch, index))
        image, labels = augment(image, labels, self.base_size, self.crop_size,
                                self.scale_range, rng, self.flip, self.jitter, self.pad_value)
        return torch.from_numpy(image), torch.from_numpy(labels)


class EpochSampler(DistributedSampler):
    """``DistributedSampler`` (seeded shuffle, ``drop_last``) that can start mid-epoch.

    Yields ``epoch * len(dataset) + index`` (see :class:`TrainSet`), skipping the first
    ``start`` samples of this rank's share, which is how a resumed run continues an epoch.
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True,
                         seed=seed, drop_last=True)
        self.start = 0

    def __iter__(self) -> Iterator[int]:
        offset = self.epoch * len(self.dataset)
        indices = list(super().__iter__())[self.start:]
        return iter([offset + i for i in indices])

    def __len__(self) -> int:
        return self.num_samples - self.start


def _worker_init(_: int) -> None:
    # Each loader process decodes one image at a time; more threads only oversubscribe.
    cv2.setNumThreads(1)
    torch.set_num_threads(1)


# --------------------------------------------------------------------------------------------
# Loss, optimiser, schedule


class SegmentationLoss(nn.Module):
    """Cross-entropy over the 19 trainIds at label resolution, 255 ignored; optional OHEM.

    Logits (N x C x h x w, C >= 19, any stride) are upsampled bilinearly to the labels' size
    with the model's ``align_corners`` (as HRNet and mmseg do) and only channels 0..18 are
    used. With OHEM (HRNet's ``OhemCrossEntropy``), only pixels whose probability of the true
    class is below ``max(thresh, the min_kept-th smallest probability)`` count.
    """

    def __init__(self, align_corners: bool, ohem: bool = False, thresh: float = 0.7,
                 min_kept: int = 100_000):
        super().__init__()
        self.align_corners = align_corners
        self.ohem = ohem
        self.thresh = thresh
        self.min_kept = min_kept

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Return the mean loss over the kept pixels (0 when every pixel is ignored)."""
        logits = logits[:, :NUM_CLASSES].float()
        if logits.shape[-2:] != labels.shape[-2:]:
            logits = F.interpolate(logits, size=labels.shape[-2:], mode='bilinear',
                                   align_corners=self.align_corners)
        pixel_loss = F.cross_entropy(logits, labels, ignore_index=IGNORE_ID, reduction='none')
        valid = labels != IGNORE_ID
        if self.ohem:
            with torch.no_grad():
                target = labels.clamp(max=NUM_CLASSES - 1).unsqueeze(1)
                prob = logits.softmax(1).gather(1, target).squeeze(1)[valid]
                if prob.numel():
                    kth = min(self.min_kept, prob.numel()) - 1
                    threshold = max(self.thresh, prob.kthvalue(kth + 1).values.item())
                    keep = torch.zeros_like(valid)
                    keep[valid] = prob <= threshold
                    valid = keep
        kept = pixel_loss[valid]
        # A crop of nothing but ignored pixels still returns a loss tied to the graph.
        return kept.sum() / max(kept.numel(), 1)


class PolySchedule:
    """Learning-rate factor for LambdaLR: linear warm-up, then ``(1 - step / steps) ** power``.

    A callable object rather than a function, so LambdaLR's state dict keeps its settings.
    """

    def __init__(self, steps: int, power: float = 0.9, warmup_steps: int = 0,
                 warmup_start: float = 1e-3):
        self.steps = steps
        self.power = power
        self.warmup_steps = warmup_steps
        self.warmup_start = warmup_start

    def __call__(self, step: int) -> float:
        factor = max(1.0 - step / self.steps, 0.0) ** self.power
        if step < self.warmup_steps:
            ramp = self.warmup_start + (1.0 - self.warmup_start) * step / self.warmup_steps
            factor *= ramp
        return factor


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD (Nesterov off, momentum) or AdamW; no weight decay on 1-D tensors.

    Norm weights, biases and PReLU slopes are one-dimensional; decaying them only shrinks the
    normalisation (mmseg's ``norm_decay_mult=0`` convention).
    """
    lr = cfg.lr if cfg.lr is not None else _DEFAULT_LR[cfg.optimizer]
    wd = cfg.weight_decay if cfg.weight_decay is not None else _DEFAULT_WD[cfg.optimizer]
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim > 1 else no_decay).append(param)
    groups = [{'params': decay, 'weight_decay': wd},
              {'params': no_decay, 'weight_decay': 0.0}]
    if cfg.optimizer == 'sgd':
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum)
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999))


# --------------------------------------------------------------------------------------------
# Distributed helpers


@dataclass(frozen=True)
class DistInfo:
    """This process's place in a (possibly one-process) job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """Whether more than one process trains."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this process writes logs and checkpoints."""
        return self.rank == 0

    @classmethod
    def from_env(cls) -> 'DistInfo':
        """Read ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` as torchrun sets them."""
        def env(name: str, default: int) -> int:
            try:
                return int(os.environ.get(name, default))
            except ValueError:
                raise ConfigError(f'environment variable {name}={os.environ[name]!r} is not '
                                  'an integer; start multi-process runs with torchrun') from None
        return cls(env('RANK', 0), env('WORLD_SIZE', 1), env('LOCAL_RANK', 0))


def _all_gather_objects(obj, info: DistInfo) -> list:
    if not info.enabled:
        return [obj]
    gathered = [None] * info.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def parameter_digest(model: nn.Module) -> str:
    """Return the sha256 over the names and bytes of the model's parameters, in order."""
    digest = hashlib.sha256()
    for name, param in model.named_parameters():
        digest.update(name.encode())
        digest.update(param.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# Checkpoints and RNG state


def _rng_state() -> dict:
    version, state, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    return {
        'python': {'version': version, 'state': list(state), 'gauss': gauss},
        'numpy': {'bit_generator': np_state['bit_generator'],
                  'key': torch.from_numpy(np_state['state']['key'].astype(np.int64)),
                  'pos': int(np_state['state']['pos']),
                  'has_gauss': int(np_state['has_gauss']),
                  'gauss': float(np_state['gauss'])},
        'torch': torch.get_rng_state(),
        'cuda': torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _set_rng_state(state: dict) -> None:
    py = state['python']
    random.setstate((py['version'], tuple(py['state']), py['gauss']))
    npy = state['numpy']
    np.random.set_state({'bit_generator': npy['bit_generator'],
                         'state': {'key': npy['key'].numpy().astype(np.uint32),
                                   'pos': npy['pos']},
                         'has_gauss': npy['has_gauss'], 'gauss': npy['gauss']})
    torch.set_rng_state(state['torch'])
    if state['cuda'] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def _kind_of(path: Path) -> str:
    problem = file_problem(path)
    return 'a file' if problem is None else problem.removeprefix('is ').split(', not')[0]


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[None]:
    """Report a failed write under ``--out`` (disk full, read-only, a file in the way)."""
    try:
        yield
    except OSError as exc:
        where = exc.filename or path
        raise ConfigError(f'cannot write {where}: {exc.strerror or exc}; free space or choose '
                          'another --out') from None


def _atomic_save(obj, path: Path) -> None:
    """Save to a temporary file, then rename: an interrupted save never leaves half a file."""
    tmp = path.with_name(path.name + '.tmp')
    try:
        with _writing(path):
            try:
                torch.save(obj, tmp)
            except RuntimeError as exc:  # torch's zip writer reports a failed write this way
                raise OSError(errno.EIO, ' '.join(str(exc).split())[:200], str(path)) from None
            os.replace(tmp, path)
    finally:
        if tmp.is_file():
            tmp.unlink()


def load_training_state(path: PathLike) -> dict:
    """Read a ``last.pt`` safely (``weights_only=True``, sizes checked) and check its layout.

    The types and ranges that do not depend on the run are checked here (see
    :meth:`Trainer._restore` for the rest), so a crafted or foreign file fails with one
    message instead of somewhere inside the optimiser or the RNG.

    Raises:
        CheckpointError: missing, not a regular file, unreadable or hostile file, or not a
            training checkpoint of this package (e.g. a plain model file: pass that as
            ``--init-weights``), or one whose entries have the wrong types or sizes.
    """
    path = Path(path).expanduser()
    problem = file_problem(path)
    if problem:
        raise CheckpointError(f'--resume {path} {problem}; {_RESUME_FIX}')
    state = read_checkpoint(path, _RESUME_FIX, mmap=False)
    if (not isinstance(state, dict) or type(state.get('format')) is not str
            or state['format'] != CHECKPOINT_FORMAT):
        raise CheckpointError(f'{path} is not a training checkpoint of cityseg_ros (format '
                              f'{CHECKPOINT_FORMAT}); to start from model weights use '
                              '--init-weights')
    try:
        _check_layout(state)
    except _Bad as exc:
        raise CheckpointError(f'{path} is not a valid training checkpoint: {exc}; '
                              f'{_RESUME_FIX}') from None
    return state


# --------------------------------------------------------------------------------------------
# Checking a training state read from a file: everything is hostile until checked


_RESUME_FIX = 'pass the last.pt of a training run (or start without --resume)'
# Far beyond any schedule; bounds what a crafted step makes the trainer compute.
_MAX_STEP = 1 << 31
_STATE_DICTS = ('model', 'optimizer', 'scheduler', 'scaler', 'data', 'best', 'config')
# random.getstate(): version 3 and 624 words of Mersenne Twister state plus the position.
_MT_WORDS = 624


class _Bad(Exception):
    """What is wrong with an entry of a training state, in words."""


def _show(value: object) -> str:
    """Describe a value from a file briefly (never its full repr: it may be huge)."""
    if isinstance(value, torch.Tensor):
        return f'a tensor of shape {list(value.shape)} ({str(value.dtype)[len("torch."):]})'
    if isinstance(value, (dict, list, tuple, set)):
        return f'a {type(value).__name__} of {len(value)} items'
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + '...'


def _expect(ok: bool, what: str) -> None:
    if not ok:
        raise _Bad(what)


def _is_int(value: object, low: int = 0, high: int = _MAX_STEP) -> bool:
    return type(value) is int and low <= value < high


def _is_number(value: object) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def _same_kind(value: object, template: object) -> bool:
    """Whether a saved value can stand where the run has ``template`` (a plain value)."""
    if isinstance(template, bool):
        return isinstance(value, bool)
    if isinstance(template, (int, float)):
        return _is_number(value) and value >= 0
    if template is None:
        return value is None
    if isinstance(template, str):
        return isinstance(value, str)
    if isinstance(template, (tuple, list)):
        return (isinstance(value, (tuple, list)) and len(value) == len(template)
                and all(_same_kind(v, t) for v, t in zip(value, template)))
    return False


def _check_like(value: object, template: object, where: str) -> None:
    """Check a saved state dict against the run's own: no unknown keys, the same kinds."""
    if isinstance(template, dict):
        _expect(isinstance(value, dict), f'{where} is {_show(value)}, not a dict')
        unknown = [k for k in value if k not in template]
        _expect(not unknown, f'{where} has unknown keys ({", ".join(map(_show, unknown[:5]))})')
        for key, item in value.items():
            _check_like(item, template[key], f'{where}[{key!r}]')
    elif isinstance(template, list) and template and isinstance(template[0], dict):
        _expect(isinstance(value, list) and len(value) == len(template),
                f'{where} is {_show(value)}, expected a list of {len(template)}')
        for i, (item, sub) in enumerate(zip(value, template)):
            _check_like(item, sub, f'{where}[{i}]')
    else:
        _expect(_same_kind(value, template), f'{where} is {_show(value)}')


def _check_layout(state: dict) -> None:
    """Check the entries of a training state that do not depend on the run."""
    missing = [k for k in ('model_name', 'step', 'rng', *_STATE_DICTS) if k not in state]
    _expect(not missing, f'it lacks {", ".join(missing)}')
    _expect(isinstance(state['model_name'], str), f"'model_name' is {_show(state['model_name'])}")
    _expect(_is_int(state['step']), f"'step' is {_show(state['step'])}, not a step count")
    for key in _STATE_DICTS:
        _expect(isinstance(state[key], dict), f'{key!r} is {_show(state[key])}, not a dict')
    for key, value in state['model'].items():
        _expect(isinstance(key, str) and isinstance(value, torch.Tensor),
                f"'model' maps {_show(key)} to {_show(value)}, not a name to a tensor")
        problem = tensor_problem(value)
        _expect(problem is None, f"'model'[{key!r}] is {problem}")
    optimizer = state['optimizer']
    _expect(isinstance(optimizer.get('state'), dict)
            and isinstance(optimizer.get('param_groups'), list),
            "'optimizer' lacks its 'state' dict or 'param_groups' list")
    for key, value in state['data'].items():
        _expect(_is_int(value, -_MAX_STEP), f"'data'[{key!r}] is {_show(value)}")
    best = state['best']
    _expect(set(best) <= {'miou', 'step'}, f"'best' has keys {_show(list(best))}")
    _expect('miou' not in best or (_is_number(best['miou']) and -1 <= best['miou'] <= 1),
            f"'best'['miou'] is {_show(best.get('miou'))}")
    _expect('step' not in best or _is_int(best['step']), f"'best'['step'] is "
            f"{_show(best.get('step'))}")
    rng = state['rng']
    _expect(isinstance(rng, list) and 0 < len(rng) <= 4096,
            f"'rng' is {_show(rng)}, not one state per process")
    for i, entry in enumerate(rng):
        _check_rng(entry, f"'rng'[{i}]")


def _check_rng(entry: object, where: str) -> None:
    """Check one process's RNG states as :func:`_rng_state` writes them."""
    _expect(isinstance(entry, dict) and {'python', 'numpy', 'torch', 'cuda'} == set(entry),
            f'{where} is {_show(entry)}, not the python/numpy/torch/cuda RNG states')
    py = entry['python']
    _expect(isinstance(py, dict) and set(py) == {'version', 'state', 'gauss'},
            f"{where}['python'] is {_show(py)}")
    words = py['state']
    _expect(_is_int(py['version'], 0, 16) and isinstance(words, (list, tuple))
            and len(words) == _MT_WORDS + 1
            and all(_is_int(w, 0, 1 << 32) for w in words[:-1])
            and _is_int(words[-1], 0, _MT_WORDS + 1)
            and (py['gauss'] is None or _is_number(py['gauss'])),
            f"{where}['python'] is not a Mersenne Twister state")
    npy = entry['numpy']
    _expect(isinstance(npy, dict)
            and set(npy) == {'bit_generator', 'key', 'pos', 'has_gauss', 'gauss'},
            f"{where}['numpy'] is {_show(npy)}")
    key = npy['key']
    _expect(npy['bit_generator'] == 'MT19937' and isinstance(key, torch.Tensor)
            and key.dtype == torch.int64 and tuple(key.shape) == (_MT_WORDS,)
            and tensor_problem(key) is None and bool(((key >= 0) & (key < 1 << 32)).all())
            and _is_int(npy['pos'], 0, _MT_WORDS + 1) and _is_int(npy['has_gauss'], 0, 2)
            and _is_number(npy['gauss']),
            f"{where}['numpy'] is not an MT19937 state")
    cpu = entry['torch']
    _expect(isinstance(cpu, torch.Tensor) and cpu.dtype == torch.uint8
            and cpu.shape == torch.get_rng_state().shape and tensor_problem(cpu) is None,
            f"{where}['torch'] is {_show(cpu)}, not torch's CPU generator state")
    cuda = entry['cuda']
    _expect(isinstance(cuda, list) and len(cuda) <= 1024
            and all(isinstance(t, torch.Tensor) and t.dtype == torch.uint8 and t.ndim == 1
                    and t.numel() <= 4096 and tensor_problem(t) is None for t in cuda),
            f"{where}['cuda'] is {_show(cuda)}, not CUDA generator states")


def _check_model_state(saved: dict, model: nn.Module) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in saved]
    unexpected = [k for k in saved if k not in expected]
    shapes = [f'{k}: file {list(v.shape)} vs model {list(expected[k].shape)}'
              for k, v in saved.items() if k in expected and v.shape != expected[k].shape]
    parts = []
    kinds = ((missing, 'missing'), (unexpected, 'unexpected'), (shapes, 'wrongly shaped'))
    for items, what in kinds:
        if items:
            more = f', ... (+{len(items) - 3} more)' if len(items) > 3 else ''
            parts.append(f'{len(items)} {what} model keys ({", ".join(items[:3])}{more})')
    _expect(not parts, '; '.join(parts))
    for key, value in saved.items():
        _expect(value.dtype.is_floating_point == expected[key].dtype.is_floating_point,
                f"'model'[{key!r}] is {_show(value)}, the model's is {expected[key].dtype}")


def _check_optimizer_state(saved: dict, optimizer: torch.optim.Optimizer) -> None:
    """Check saved param groups and per-parameter state against the run's optimiser."""
    template = optimizer.state_dict()
    groups = saved['param_groups']
    _expect(len(groups) == len(template['param_groups']),
            f"'optimizer' has {len(groups)} parameter groups, this run "
            f"{len(template['param_groups'])} (another --optimizer or model?)")
    shapes = {}
    for i, (group, mine, live) in enumerate(zip(groups, template['param_groups'],
                                                optimizer.param_groups)):
        where = f"'optimizer' group {i}"
        _expect(isinstance(group, dict), f'{where} is {_show(group)}, not a dict')
        lacking = sorted(set(mine) - set(group))
        unknown = [_show(k) for k in group if k not in mine]
        _expect(not lacking and not unknown,
                f'{where} ' + ' and '.join(
                    ([f'lacks {", ".join(lacking)}'] if lacking else [])
                    + ([f'has unknown keys {", ".join(unknown[:5])}'] if unknown else []))
                + ' (another --optimizer?)')
        ids = group['params']
        _expect(isinstance(ids, list) and ids == mine['params']
                and all(type(p) is int for p in ids),
                f'{where} lists {_show(ids)} parameters, this run {len(mine["params"])}')
        for key, value in group.items():
            if key != 'params':
                _expect(_same_kind(value, mine[key]), f'{where} {key!r} is {_show(value)}')
        shapes.update({pid: param.shape for pid, param in zip(ids, live['params'])})
    for pid, per_param in saved['state'].items():
        where = f"'optimizer' state of parameter {_show(pid)}"
        _expect(type(pid) is int and pid in shapes,
                f"'optimizer' has state for parameter {_show(pid)}, which this run lacks")
        _expect(isinstance(per_param, dict), f'{where} is {_show(per_param)}')
        for key, value in per_param.items():
            if key == 'step':  # Adam's step count: a 0-d tensor
                ok = (isinstance(value, torch.Tensor) and value.ndim == 0
                      and tensor_problem(value) is None and value.dtype != torch.bool
                      and 0 <= float(value) < _MAX_STEP) or _is_int(value)
            else:  # momentum / moments: the parameter's shape
                ok = value is None or (isinstance(value, torch.Tensor)
                                       and value.shape == shapes[pid]
                                       and value.dtype.is_floating_point
                                       and tensor_problem(value) is None)
            _expect(ok, f'{where} {key!r} is {_show(value)}')


# --------------------------------------------------------------------------------------------
# Validation


@torch.no_grad()
def validate(model: nn.Module, frames: Sequence[CityscapesFrame], spec: ModelSpec,
             device: torch.device, input_size: Sequence[int], precision: str = 'fp32',
             info: DistInfo = DistInfo(), channels_last: bool = False) -> Scores:
    """Score ``model`` on frames with ground truth; the confusion is summed over processes.

    Each image is resized (bilinear, antialiased) to ``input_size``, normalised with the
    spec's statistics, and segmented in one pass; the logits are upsampled to the image's
    size (or, for models whose protocol upsamples labels, the labels are resized with nearest
    neighbour), like :class:`~cityseg_ros.engine.Segmenter` with ``tta='none'``. Each process
    scores frames ``rank::world_size``.
    """
    was_training = model.training
    model.eval()
    mean = torch.tensor(spec.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, device=device).view(1, 3, 1, 1)
    counts = Counts()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    try:
        for frame in frames[info.rank::info.world_size]:
            image = _read_image(frame.image)
            gt = _read_label_ids(frame.label_ids, image.shape)
            x = torch.from_numpy(image).to(device).permute(2, 0, 1)[None].float()
            x = F.interpolate(x, size=tuple(input_size), mode='bilinear', align_corners=False,
                              antialias=True)
            x = ((x - mean) / std).contiguous(memory_format=memory_format)
            with _autocast(device, precision):
                logits = model(x)
            logits = logits[:, :NUM_CLASSES].float()
            size = gt.shape if spec.logits_at_image_size else tuple(input_size)
            logits = F.interpolate(logits, size=size, mode='bilinear',
                                   align_corners=spec.align_corners)
            pred = logits.argmax(1)[0].to(torch.uint8).cpu().numpy()
            if pred.shape != gt.shape:
                pred = cv2.resize(pred, (gt.shape[1], gt.shape[0]),
                                  interpolation=cv2.INTER_NEAREST_EXACT)
            counts.add(gt, pred)
    finally:
        model.train(was_training)
    if info.enabled:
        total = torch.from_numpy(np.append(counts.confusion.ravel(), counts.frames)).to(device)
        dist.all_reduce(total)
        total = total.cpu().numpy()
        counts = Counts(confusion=total[:-1].reshape(counts.confusion.shape),
                        frames=int(total[-1]))
    return Scores.from_counts(counts)


def _autocast(device: torch.device, precision: str):
    if precision == 'fp32':
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=_AUTOCAST[precision])


# --------------------------------------------------------------------------------------------
# Logging


class _Scalars:
    """Append ``step,tag,value,wall_time`` rows to a CSV (and a TensorBoard file if asked)."""

    def __init__(self, out: Path, append: bool, tensorboard: bool):
        self.path = out / SCALARS_FILE
        new = not (append and self.path.is_file())
        self._fh = open(self.path, 'w' if new else 'a', newline='')
        self._csv = csv.writer(self._fh)
        if new:
            self._csv.writerow(['step', 'tag', 'value', 'wall_time'])
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                log.warning('--tensorboard: the tensorboard package is not installed; writing '
                            'only %s', self.path)
            else:
                self._tb = SummaryWriter(str(out / 'tensorboard'))

    def add(self, step: int, values: dict) -> None:
        now = time.time()
        with _writing(self.path):
            for tag, value in values.items():
                # repr: the shortest string that reads back as the same float.
                self._csv.writerow([step, tag, repr(float(value)), f'{now:.3f}'])
                if self._tb is not None:
                    self._tb.add_scalar(tag, value, step, walltime=now)
            self._fh.flush()

    def close(self) -> None:
        self._fh.close()
        if self._tb is not None:
            self._tb.close()


def _scores_json(scores: Optional[Scores]) -> Optional[dict]:
    if scores is None:
        return None
    return {**scores.to_dict(), 'pixel_accuracy': scores.pixel_accuracy,
            'frames': scores.frames}


def _score_scalars(prefix: str, scores: Scores) -> dict:
    values = {f'{prefix}/miou': scores.miou, f'{prefix}/pixel_accuracy': scores.pixel_accuracy}
    values.update({f'{prefix}/iou/{name}': v for name, v in scores.class_iou.items()
                   if not math.isnan(v)})
    return values


# --------------------------------------------------------------------------------------------
# The trainer


def _unwrapped(exc: CitysegError) -> CitysegError:
    """Return a loader process's error with its own one-line message.

    DataLoader re-raises a worker's exception with the worker's traceback in the message; the
    CLI promise is one line, so only the original message (the traceback's last line) is kept.
    """
    text = str(exc)
    if 'Original Traceback' not in text:
        return exc
    last = [line for line in text.splitlines() if line.strip()][-1]
    name = type(exc).__name__
    last = last.split(f'{name}: ', 1)[1] if f'{name}: ' in last else last
    return type(exc)(last.strip())


def _round_up(value: int, divisor: int) -> int:
    return max(divisor, -(-value // divisor) * divisor)


class Trainer:
    """Train one zoo model as a :class:`TrainConfig` says; :meth:`run` does the work.

    Construction validates the inputs (model name, data, sizes, weights files) before any
    model is built, and joins the process group when started by torchrun.
    """

    def __init__(self, cfg: TrainConfig, info: Optional[DistInfo] = None):
        cfg.check()
        self.cfg = cfg
        self.spec = get_spec(cfg.model)
        self.info = info or DistInfo.from_env()
        self.frames = find_frames(cfg.data_root, cfg.split)
        self.val_frames = self._val_frames()
        if len(self.frames) < cfg.batch_size * self.info.world_size:
            raise ConfigError(f'{len(self.frames)} training frames cannot fill one step of '
                              f'{cfg.batch_size} image(s) x {self.info.world_size} process(es); '
                              'lower --batch-size or add frames')
        self.out = Path(cfg.out).expanduser()
        if self.out.exists() and not self.out.is_dir():
            raise ConfigError(f'--out {self.out} is {_kind_of(self.out)}, not a directory; '
                              'choose another --out')
        for name in (CONFIG_FILE, SCALARS_FILE, SUMMARY_FILE, LAST_CHECKPOINT, MODEL_FILE):
            path = self.out / name  # a pipe there would block the first write forever
            if path.exists() and not path.is_file():
                raise ConfigError(f'--out {self.out}: {path} is {_kind_of(path)}, not a file; '
                                  'remove it or choose another --out')
        self.resume_path = self._resume_path()
        self.device = self._device()
        self.precision = self._precision()
        if cfg.sync_bn and self.device.type != 'cuda':
            raise ConfigError('--sync-bn needs CUDA (SyncBatchNorm has no CPU kernels); '
                              'drop it on CPU')
        if cfg.sync_bn and cfg.freeze_bn:
            raise ConfigError('--sync-bn and --freeze-bn contradict each other: frozen '
                              'BatchNorm layers compute no statistics to synchronise')
        self.init_path = self._weights_path(cfg.init_weights, 'init')
        self.backbone_path = self._weights_path(cfg.backbone_weights, 'backbone')

    # -- input checks ------------------------------------------------------------------------

    def _val_frames(self) -> list[CityscapesFrame]:
        split = self.cfg.val_split
        if split is None:
            return []
        if split == 'auto':
            try:
                frames = find_frames(self.cfg.data_root, 'val', require_gt=False)
            except (ConfigError, ImageError):
                frames = []
            with_gt = [f for f in frames if f.label_ids is not None]
            if not with_gt:
                log.info('no val split with ground truth under %s: validation is off (pass '
                         '--val-split to choose one)', self.cfg.data_root)
            return with_gt
        return find_frames(self.cfg.data_root, split)

    def _resume_path(self) -> Optional[Path]:
        resume = self.cfg.resume
        if resume is None:
            if (self.out / LAST_CHECKPOINT).exists():
                raise ConfigError(f'{self.out / LAST_CHECKPOINT} exists: pass --resume to '
                                  'continue that run, or choose another --out')
            return None
        path = self.out / LAST_CHECKPOINT if resume == 'auto' else Path(resume).expanduser()
        problem = file_problem(path)
        if problem:
            raise CheckpointError(f'--resume: {path} {problem}; {_RESUME_FIX}')
        return path

    def _device(self) -> torch.device:
        device = resolve_device(self.cfg.device)
        if device.type == 'cuda' and self.info.enabled:
            device = torch.device('cuda', self.info.local_rank)
        return device

    def _precision(self) -> str:
        precision = self.cfg.precision
        if precision == 'auto':
            return 'fp16' if self.device.type == 'cuda' else 'fp32'
        if precision == 'fp16' and self.device.type != 'cuda':
            raise ConfigError('--precision fp16 needs CUDA (its GradScaler); on CPU use bf16 '
                              'or fp32')
        return precision

    def _weights_path(self, value: Optional[str], kind: str) -> Optional[Path]:
        from cityseg_ros.checkpoints import cache_dir, resolve_weights

        if value is None:
            return None
        if kind == 'init':
            if value != 'auto':
                path = Path(value).expanduser()
                problem = file_problem(path)
                if problem:
                    raise CheckpointError(f'--init-weights {value} {problem}; pass a checkpoint '
                                          f'of {self.spec.name} (or auto after fetch_weights)')
                return path
            if not self.spec.weights:
                raise CheckpointError(f'model {self.spec.name!r} has no released weights, so '
                                      '--init-weights auto cannot work; start from ImageNet '
                                      '(--backbone-weights) or from scratch')
            return resolve_weights(self.spec, value)
        wf = self.spec.backbone_weights
        if wf is None:
            raise ConfigError(f'model {self.spec.name!r} has no separate ImageNet backbone; '
                              'drop --backbone-weights (use --init-weights for a checkpoint '
                              'of the whole model)')
        path = cache_dir() / wf.filename if value == 'auto' else Path(value).expanduser()
        problem = file_problem(path)
        if problem:
            raise CheckpointError(f'--backbone-weights: {path} {problem}; download {wf.url} '
                                  f'(torchvision ImageNet weights) and pass the file')
        return path

    # -- building ----------------------------------------------------------------------------

    def _sizes(self, wf: Optional[WeightsFile]) -> tuple[tuple, tuple, tuple]:
        """Return the (H, W) base, crop and validation sizes."""
        test = tuple(wf.test_size) if wf is not None and wf.test_size else self.spec.test_size
        base = tuple(self.cfg.base_size or test)
        div = self.spec.size_divisor
        crop = self.cfg.crop_size or tuple(min(b, d) for b, d in zip(base, _DEFAULT_CROP))
        crop = (_round_up(crop[0], div), _round_up(crop[1], div))
        if self.cfg.crop_size and crop != tuple(self.cfg.crop_size):
            log.info('crop %s rounded up to %s (multiple of %d for %s)', self.cfg.crop_size,
                     crop, div, self.spec.name)
        val = tuple(self.cfg.val_size or test)
        val = (_round_up(val[0], div), _round_up(val[1], div))
        return base, crop, val

    def _build_model(self) -> tuple[nn.Module, Optional[WeightsFile]]:
        from cityseg_ros.checkpoints import load_checkpoint, load_state_dict

        wf = self.spec.weights_for(str(self.init_path)) if self.init_path else None
        model = build_model(self.spec.name, wf)
        if self.init_path is not None:
            load_checkpoint(model, self.init_path)
            log.info('fine-tuning from %s', self.init_path)
        if self.backbone_path is not None:
            from cityseg_ros.models.sernet_former import check_backbone_file

            if not hasattr(model, 'load_backbone'):
                raise ConfigError(f'model {self.spec.name!r} cannot load backbone weights')
            problem = check_backbone_file(self.backbone_path, self.spec.backbone_weights.filename)
            if problem:
                raise CheckpointError(f'{self.backbone_path}: {problem}; delete it and download '
                                      f'{self.spec.backbone_weights.url} again')
            try:
                model.load_backbone(load_state_dict(self.backbone_path))
            except ValueError as exc:
                raise CheckpointError(f'{self.backbone_path} does not fit the encoder of '
                                      f'{self.spec.name!r}: {exc}') from None
            log.info('encoder initialised from ImageNet weights %s', self.backbone_path)
        return model, wf

    # -- the loop ----------------------------------------------------------------------------

    def run(self, stop_at: Optional[int] = None) -> TrainResult:
        """Train until ``cfg.steps`` (or ``stop_at``) and write the outputs; return a summary.

        ``stop_at`` ends this invocation after that step, with ``last.pt`` written, as a
        pre-empted job would; ``resume`` continues it exactly.
        """
        started_group = False
        if self.info.enabled and not dist.is_initialized():
            backend = 'nccl' if self.device.type == 'cuda' else 'gloo'
            if self.device.type == 'cuda':
                torch.cuda.set_device(self.device)
            dist.init_process_group(backend)
            started_group = True
            log.info('rank %d/%d joined the %s process group', self.info.rank,
                     self.info.world_size, backend)
        try:
            return self._run(stop_at)
        finally:
            if started_group:
                dist.destroy_process_group()

    def _run(self, stop_at: Optional[int]) -> TrainResult:
        cfg, info, device = self.cfg, self.info, self.device
        t_start = time.perf_counter()
        # Same seed everywhere for the initialisation; DDP also broadcasts rank 0's weights.
        _seed_everything(cfg.seed)
        model, wf = self._build_model()
        base, crop, val_size = self._sizes(wf)
        if cfg.sync_bn and info.enabled:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self._train_mode(model)
        memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        model.to(device, memory_format=memory_format)
        optimizer = build_optimizer(model, cfg)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, PolySchedule(cfg.steps, cfg.poly_power, cfg.warmup_steps))
        scaler = torch.amp.GradScaler(device.type, enabled=self.precision == 'fp16')
        criterion = SegmentationLoss(self.spec.align_corners, cfg.ohem, cfg.ohem_thresh,
                                     cfg.ohem_min_kept)

        step = 0
        best = {}
        if self.resume_path is not None:
            state = load_training_state(self.resume_path)
            step = self._restore(state, model, optimizer, scheduler, scaler)
            best = dict(state.get('best', {}))
        else:
            _seed_everything(cfg.seed + info.rank)
        if step >= cfg.steps:
            log.warning('the checkpoint is already at step %d of %d: nothing to train', step,
                        cfg.steps)

        net = model
        if info.enabled:
            ids = [device.index] if device.type == 'cuda' else None
            # Some zoo models own parameters their forward never uses (ESPNetv2's unused
            # PReLUs, auxiliary heads): DDP must be told, or it waits for their gradients.
            net = nn.parallel.DistributedDataParallel(model, device_ids=ids,
                                                      find_unused_parameters=True)

        train_set = TrainSet(self.frames, base, crop, cfg.scale_range, cfg.seed, cfg.flip,
                             cfg.jitter, pad_value=self.spec.mean)
        sampler = EpochSampler(train_set, info.world_size, info.rank, cfg.seed)
        loader = self._loader(train_set, sampler)
        steps_per_epoch = sampler.num_samples // cfg.batch_size
        mean = torch.tensor(self.spec.mean, device=device).view(1, 3, 1, 1)
        std = torch.tensor(self.spec.std, device=device).view(1, 3, 1, 1)

        scalars = None
        if info.is_main:
            with _writing(self.out):
                self.out.mkdir(parents=True, exist_ok=True)
                (self.out / CONFIG_FILE).write_text(json.dumps(
                    {**cfg.to_dict(), 'world_size': info.world_size, 'base_size': list(base),
                     'crop_size': list(crop), 'val_size': list(val_size),
                     'precision': self.precision, 'device': str(device)}, indent=2) + '\n')
                scalars = _Scalars(self.out, step > 0, cfg.tensorboard)
        log.info('%s: %d frames; per step %d process(es) x %d crop(s) of %dx%d (base %dx%d), '
                 '%d step(s) per epoch; %s on %s', self.spec.name, len(self.frames),
                 info.world_size, cfg.batch_size, crop[1], crop[0], base[1], base[0],
                 steps_per_epoch, self.precision, device)

        initial = scores = None
        if cfg.val_at_start and self.val_frames and step == 0:
            initial = self._validate(model, val_size)
            if scalars:
                scalars.add(0, _score_scalars('val', initial))
            log.info('step 0: val mIoU %.4f', initial.miou)

        bar = None
        if info.is_main and cfg.progress:
            from tqdm import tqdm
            bar = tqdm(total=cfg.steps, initial=step, unit='step', file=sys.stderr,
                       dynamic_ncols=True, desc=self.spec.name)
        last_stop = min(cfg.steps, stop_at) if stop_at is not None else cfg.steps
        loss_value = math.nan
        window_images, window_start = 0, time.perf_counter()
        batches = self._batches(loader, sampler, step, steps_per_epoch)
        try:
            while step < last_stop:
                try:
                    images, labels = next(batches)
                except CitysegError as exc:
                    raise _unwrapped(exc) from None
                x = images.to(device, non_blocking=True).permute(0, 3, 1, 2).float()
                x = ((x - mean) / std).contiguous(memory_format=memory_format)
                y = labels.to(device, non_blocking=True).long()
                with _autocast(device, self.precision):
                    logits = net(x)
                loss = criterion(logits, y)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if cfg.clip_grad is not None:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
                scaler.step(optimizer)
                scaler.update()
                lr = optimizer.param_groups[0]['lr']
                scheduler.step()
                step += 1
                window_images += images.shape[0] * info.world_size

                if step % cfg.log_every == 0 or step == last_stop:
                    loss_value = self._mean_over_ranks(loss.detach())
                    if not math.isfinite(loss_value):
                        raise ConfigError(f'the loss became {loss_value} at step {step}; lower '
                                          '--lr (or use --clip-grad / fp32) and resume')
                    elapsed = max(time.perf_counter() - window_start, 1e-9)
                    speed = window_images / elapsed
                    window_images, window_start = 0, time.perf_counter()
                    if scalars:
                        scalars.add(step, {'train/loss': loss_value, 'train/lr': lr,
                                           'train/images_per_s': speed})
                    if bar is not None:
                        bar.set_postfix(loss=f'{loss_value:.4f}', lr=f'{lr:.2e}',
                                        img_s=f'{speed:.1f}')
                if bar is not None:
                    bar.update(1)

                final = step == cfg.steps
                if self.val_frames and (final or (cfg.val_every and step % cfg.val_every == 0)):
                    scores = self._validate(model, val_size)
                    if scalars:
                        scalars.add(step, _score_scalars('val', scores))
                    log.info('step %d: val mIoU %.4f', step, scores.miou)
                    if scores.miou > best.get('miou', -1.0):
                        best = {'miou': scores.miou, 'step': step}
                if final or step == last_stop or step % cfg.save_every == 0:
                    self._save(model, optimizer, scheduler, scaler, step, best, steps_per_epoch)
        finally:
            if bar is not None:
                bar.close()
            if scalars:
                scalars.close()

        digests = _all_gather_objects(parameter_digest(model), info)
        if len(set(digests)) > 1:
            log.error('DDP ranks hold different parameters after step %d: %s', step, digests)
        seconds = time.perf_counter() - t_start
        result = TrainResult(step, loss_value, scores, initial, seconds,
                             self.out / LAST_CHECKPOINT, self.out / MODEL_FILE, digests)
        if info.is_main:
            summary = {'model': self.spec.name, 'step': step, 'steps': cfg.steps,
                       'loss': loss_value, 'seconds': seconds, 'world_size': info.world_size,
                       'param_digests': digests, 'best': best,
                       'val': _scores_json(scores), 'val_at_start': _scores_json(initial)}
            with _writing(self.out / SUMMARY_FILE):
                (self.out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, default=str)
                                                     + '\n')
        return result

    def _loader(self, train_set: TrainSet, sampler: EpochSampler) -> DataLoader:
        workers = {}
        if self.cfg.workers:
            # Spawned, not forked: OpenCV's thread pool (used by validation and image reading
            # in this process) deadlocks in forked children. Persistent, so they start once;
            # the epoch travels in the sample index, not in the workers' copy of the dataset.
            workers = {'multiprocessing_context': 'spawn', 'persistent_workers': True,
                       'worker_init_fn': _worker_init}
        return DataLoader(train_set, batch_size=self.cfg.batch_size, sampler=sampler,
                          num_workers=self.cfg.workers, pin_memory=self.device.type == 'cuda',
                          drop_last=True, **workers,
                          # its own generator: creating iterators leaves torch's RNG alone
                          generator=torch.Generator().manual_seed(self.cfg.seed))

    def _batches(self, loader: DataLoader, sampler: EpochSampler, step: int,
                 steps_per_epoch: int) -> Iterator:
        """Yield batches forever, starting where ``step`` steps left the data order."""
        epoch, done = divmod(step, steps_per_epoch)
        while True:
            sampler.set_epoch(epoch)
            sampler.start = done * self.cfg.batch_size
            yield from loader
            epoch, done = epoch + 1, 0

    def _mean_over_ranks(self, value: torch.Tensor) -> float:
        if self.info.enabled:
            value = value.clone()
            dist.all_reduce(value)
            value /= self.info.world_size
        return float(value)

    def _validate(self, model: nn.Module, val_size: Sequence[int]) -> Scores:
        self._sync_buffers(model)
        scores = validate(model, self.val_frames, self.spec, self.device, val_size,
                          self.precision, self.info, self.cfg.channels_last)
        self._train_mode(model)
        return scores

    def _train_mode(self, model: nn.Module) -> None:
        model.train()
        if self.cfg.freeze_bn:
            for module in model.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()

    def _sync_buffers(self, model: nn.Module) -> None:
        # BatchNorm statistics are updated per rank; DDP re-broadcasts rank 0's at the next
        # forward. Validation and the saved model use rank 0's, on every rank.
        if self.info.enabled:
            for buf in model.buffers():
                dist.broadcast(buf, 0)

    def _save(self, model: nn.Module, optimizer, scheduler, scaler, step: int, best: dict,
              steps_per_epoch: int) -> None:
        self._sync_buffers(model)
        rng = _all_gather_objects(_rng_state(), self.info)
        if not self.info.is_main:
            return
        model_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        epoch, done = divmod(step, steps_per_epoch)
        state = {
            'format': CHECKPOINT_FORMAT,
            'model_name': self.spec.name,
            'step': step,
            'model': model_state,
            'optimizer': optimizer.state_dict(),
            'scheduler': scheduler.state_dict(),
            'scaler': scaler.state_dict(),
            'rng': rng,
            'data': {'epoch': epoch, 'batches_done': done, 'steps_per_epoch': steps_per_epoch,
                     'world_size': self.info.world_size, 'batch_size': self.cfg.batch_size,
                     'seed': self.cfg.seed, 'frames': len(self.frames)},
            'best': best,
            'config': self.cfg.to_dict(),
        }
        _atomic_save(state, self.out / LAST_CHECKPOINT)
        _atomic_save(model_state, self.out / MODEL_FILE)
        log.debug('saved step %d to %s', step, self.out)

    def _restore(self, state: dict, model: nn.Module, optimizer, scheduler, scaler) -> int:
        """Load a state checked by :func:`load_training_state` into this run's objects.

        Everything is compared with this run's own model, optimiser, scheduler and scaler
        before anything is loaded, so a foreign or crafted file fails here with one message,
        not at the first step.
        """
        if state['model_name'] != self.spec.name:
            raise CheckpointError(f'{self.resume_path} is a checkpoint of '
                                  f'{state["model_name"][:80]!r}, not of {self.spec.name!r}')
        step = state['step']
        try:
            _check_model_state(state['model'], model)
            _check_optimizer_state(state['optimizer'], optimizer)
            _check_like(state['scheduler'], scheduler.state_dict(), "'scheduler'")
            last = state['scheduler'].get('last_epoch', step)
            _expect(last == step, f"'scheduler' is at step {_show(last)}, the checkpoint at "
                                  f'{step}')
            warmup = [fn.get('warmup_start', 1e-3) for fn in
                      state['scheduler'].get('lr_lambdas', []) if isinstance(fn, dict)]
            _expect(all(0 < w <= 1 for w in warmup), "'scheduler' warm-up start is not in "
                                                     '(0, 1]')
            if state['scaler'] and scaler.is_enabled():
                _check_like(state['scaler'], scaler.state_dict(), "'scaler'")
        except _Bad as exc:
            raise CheckpointError(f'{self.resume_path} does not fit this run: {exc}; resume '
                                  "with the run's own last.pt and options, or start afresh "
                                  'without --resume') from None
        try:
            model.load_state_dict(state['model'], strict=True)
            optimizer.load_state_dict(state['optimizer'])
            scheduler.load_state_dict(state['scheduler'])
            if state['scaler'] and scaler.is_enabled():
                scaler.load_state_dict(state['scaler'])
            rng = state['rng']
            if len(rng) == self.info.world_size:
                _set_rng_state(rng[self.info.rank])
            else:
                _seed_everything(self.cfg.seed + self.info.rank + step)
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError,
                OverflowError) as exc:  # what the checks above let through
            detail = ' '.join(str(exc).split())[:300]
            raise CheckpointError(f'{self.resume_path} does not fit this run: {detail}') from None
        # The schedule's length comes from this run's --steps (it may have been extended).
        for fn in scheduler.lr_lambdas:
            if isinstance(fn, PolySchedule):
                fn.steps, fn.power = self.cfg.steps, self.cfg.poly_power
                fn.warmup_steps = self.cfg.warmup_steps
        data = state['data']
        now = {'world_size': self.info.world_size, 'batch_size': self.cfg.batch_size,
               'seed': self.cfg.seed, 'frames': len(self.frames)}
        changed = {k: (data.get(k), v) for k, v in now.items() if data.get(k) != v}
        if changed:
            log.warning('resuming with a different %s: the data order will not continue '
                        'exactly', ', '.join(f'{k} ({a} -> {b})' for k, (a, b) in changed.items()))
        log.info('resumed %s at step %d from %s', self.spec.name, step, self.resume_path)
        return step


def train(cfg: TrainConfig, stop_at: Optional[int] = None) -> TrainResult:
    """Train as ``cfg`` says (see :class:`Trainer`); returns the run's summary."""
    return Trainer(cfg).run(stop_at)
