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

"""The official Cityscapes scores (IoU, iIoU, per class and per category), vectorised.

Why this module exists: cityscapesScripts' ``evalPixelLevelSemanticLabeling`` is the reference
for every number we publish, but it reads PNG files, keeps a global ``args`` built from the
environment, exits the process on bad input, and loops over instances with one full-image mask
each. Here the same numbers come from integer counts that are accumulated per frame with
``np.bincount`` (no per-pixel Python), merged across shards, saved exactly, and turned into
floats once by :meth:`Scores.from_counts`.

The official code counts a 34x34 confusion matrix over labelIds. We count in trainId space: a
19x20 matrix whose rows are the GT classes (ignored GT pixels dropped) and whose columns are the
predicted classes plus one "other" column for any prediction outside 0..18 (255, void). Every
official term is a sum over that matrix: TP and FN use whole GT rows (a prediction of an ignored
id is a miss), FP only uses rows of evaluated classes (so "other" never creates a FP). The tests
prove the equality against the ``cityscapesscripts`` package itself.
"""

from dataclasses import dataclass, field
import io
import math
import os
from pathlib import Path
from typing import NamedTuple, Optional, Union
import zipfile

from cityseg_ros.errors import CitysegError, ImageError
from cityseg_ros.labels import (CATEGORY_NAMES, CLASS_NAMES, ID_TO_TRAINID, IGNORE_ID,
                                INSTANCE_CLASSES, LABELS, NUM_CLASSES, TRAINID_TO_CATID,
                                TRAINID_TO_ID)
import numpy as np

__all__ = [
    'AVG_CLASS_SIZE', 'INSTANCE_CATEGORIES', 'MAX_COUNT', 'ClassGroups', 'Counts', 'Scores',
    'FrameStats', 'mean_defined',
    'confusion', 'frame_stats',
]

PathLike = Union[str, os.PathLike]

#: Mean instance size in pixels per class, the iIoU weights' numerators. Source: cityscapesScripts
#: ``cityscapesscripts/evaluation/evalPixelLevelSemanticLabeling.py``, ``args.avgClassSize``
#: (measured on the train set by the dataset authors). caravan and trailer are listed there too
#: but are ignored in evaluation, so they never weigh anything.
AVG_CLASS_SIZE: dict[str, float] = {
    'bicycle': 4672.3249222261,
    'caravan': 36771.8241758242,
    'motorcycle': 6298.7200839748,
    'rider': 3930.4788056518,
    'bus': 35732.1511111111,
    'train': 67583.7075812274,
    'car': 12794.0202738185,
    'person': 3462.4756337644,
    'truck': 27855.1264367816,
    'trailer': 16926.9763313609,
}

#: Categories whose every label has instances: the only ones with a category iIoU (official
#: ``generateInstanceStats``). Both lie in :data:`CATEGORY_NAMES`.
INSTANCE_CATEGORIES: tuple[str, ...] = ('human', 'vehicle')

_N = NUM_CLASSES
_OTHER = _N  # the confusion column of predictions outside 0..18
_FORMAT_VERSION = 1
#: Largest count a saved file may hold: floats add integers exactly below 2**53, and 1024
#: shards of it still fit int64.
MAX_COUNT = 2**53
# counts.npz holds ~4 KiB; anything far larger is not one.
_MAX_NPZ_BYTES = 1 << 20
_MAX_NPZ_MEMBERS = 16

#: int64[19]: labelId of each trainId, the GT rows kept from a (labelId, prediction) histogram.
_TRAIN_ROWS = TRAINID_TO_ID[:_N].astype(np.intp)
#: int64[19]: category index 0..6 of each trainId.
_CLASS_CAT = TRAINID_TO_CATID[:_N].astype(np.intp)
#: float64[19]: avgClassSize per trainId, NaN for classes without instances.
_AVG_SIZE = np.array([AVG_CLASS_SIZE.get(name, math.nan) for name in CLASS_NAMES])
#: int64[7, 19] and int64[20, 8]: one-hot class -> category maps for the confusion rows and
#: columns (the "other" column maps to its own category column 7).
_CAT_OF_ROW = (_CLASS_CAT[None, :] == np.arange(len(CATEGORY_NAMES))[:, None]).astype(np.int64)
_CAT_OF_COLUMN = (np.append(_CLASS_CAT, len(CATEGORY_NAMES))[:, None]
                  == np.arange(len(CATEGORY_NAMES) + 1)[None, :]).astype(np.int64)
#: bool[256]: trainIds whose GT instances enter iIoU (hasInstances and not ignoreInEval).
_IS_INSTANCE_CLASS = np.zeros(256, dtype=bool)
_IS_INSTANCE_CLASS[[CLASS_NAMES.index(name) for name in INSTANCE_CLASSES]] = True
#: Instance ids are labelId * 1000 + k; ids at or beyond this belong to no Cityscapes label.
_INSTANCE_ID_END = (max(lb.label_id for lb in LABELS) + 1) * 1000
#: uint8[34000]: trainId of the label of each instance id (255: ignored in evaluation).
_INSTANCE_ID_CLASS = ID_TO_TRAINID[np.arange(_INSTANCE_ID_END) // 1000]
#: A frame histogram is run-length encoded first when runs are rarer than 1 pixel in this many.
_RLE_RATIO = 8


def _label_image(array: np.ndarray, name: str) -> np.ndarray:
    """Return ``array`` as a C-contiguous 2-D uint8 image; out-of-range values become 255."""
    array = np.asarray(array)
    if array.ndim != 2:
        raise ImageError(f'{name} must be a HxW label image, got shape {array.shape}; '
                         'pass a single-channel array')
    if array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.integer):
            raise ImageError(f'{name} must hold integer ids, got dtype {array.dtype}; '
                             'pass uint8 label ids (255 = ignore)')
        array = np.where((array >= 0) & (array <= 255), array, IGNORE_ID).astype(np.uint8)
    return np.ascontiguousarray(array)


def _same_shape(**images: np.ndarray) -> None:
    shapes = {name: image.shape for name, image in images.items() if image is not None}
    if len(set(shapes.values())) > 1:
        raise ImageError(f'label images differ in size: {shapes}; resize the prediction to the '
                         'ground truth with nearest-neighbour interpolation first')


def _flatnonzero(mask: np.ndarray) -> np.ndarray:
    """``np.flatnonzero`` of a contiguous 1-D bool array, faster when few entries are set.

    Scanning 8 bools at a time as one uint64 skips the empty stretches; only the words that
    hold a set entry are looked at byte by byte. Dense masks go straight to numpy.
    """
    words_end = mask.size // 8 * 8
    if words_end < 4096:
        return np.flatnonzero(mask)
    words = mask[:words_end].view(np.uint64)
    occupied = words != 0
    if np.count_nonzero(occupied) * 4 > occupied.size:
        return np.flatnonzero(mask)
    set_words = np.flatnonzero(occupied)
    in_word = np.flatnonzero(words[set_words].view(bool))
    index = set_words[in_word >> 3] << 3
    index |= in_word & 7
    if words_end < mask.size:
        index = np.concatenate((index, np.flatnonzero(mask[words_end:]) + words_end))
    return index


class _Runs(NamedTuple):
    """Several same-sized images, run-length encoded together (flattened, row-major)."""

    values: tuple[np.ndarray, ...]
    """One array per image: its value in each run (every pixel's value when not encoded)."""
    lengths: Optional[np.ndarray]
    """intp[runs]: pixels per run, the bincount weights; None when every pixel is a run."""

    def weights(self, where: np.ndarray) -> Optional[np.ndarray]:
        """Return the lengths of the runs selected by ``where`` (None if not encoded)."""
        return None if self.lengths is None else self.lengths[where]


def _runs(*images: np.ndarray) -> _Runs:
    """Cut the pixels into runs along which none of ``images`` changes value.

    Label maps are piecewise constant, so a 2048x1024 frame has a few tens of thousands of runs;
    counting runs weighted by length gives the same integers as counting pixels, much faster.
    Noisy maps (a run every few pixels) are left as they are and counted pixel by pixel.
    """
    flat = [image.ravel() for image in images]
    size = flat[0].size
    if size >= 2:
        change = np.empty(size, dtype=bool)
        change[0] = True
        np.not_equal(flat[0][1:], flat[0][:-1], out=change[1:])
        differs = np.empty(size - 1, dtype=bool)
        for other in flat[1:]:
            np.not_equal(other[1:], other[:-1], out=differs)
            change[1:] |= differs
        if np.count_nonzero(change) * _RLE_RATIO < size:
            starts = _flatnonzero(change)
            return _Runs(tuple(f[starts] for f in flat), np.diff(starts, append=size))
    return _Runs(tuple(flat), None)


def _bincount(values: np.ndarray, weights: Optional[np.ndarray], minlength: int) -> np.ndarray:
    """Return ``np.bincount`` as int64; float weights (run lengths) are exact below 2**53."""
    return np.bincount(values, weights=weights, minlength=minlength).astype(np.int64, copy=False)


def _confusion_rows(gt: np.ndarray, pred: np.ndarray, lengths: Optional[np.ndarray],
                    n: int) -> np.ndarray:
    """int64[256, n + 1]: row = GT value, column = prediction, column n = prediction >= n.

    ``gt`` and ``pred`` are uint8 run values weighted by ``lengths`` (or pixels, if None).
    """
    codes = gt.astype(np.uint16) * (n + 1)
    codes += np.minimum(pred, n)
    return _bincount(codes, lengths, 256 * (n + 1)).reshape(256, n + 1)


def confusion(gt_train: np.ndarray, pred_train: np.ndarray, n: int = NUM_CLASSES) -> np.ndarray:
    """Confusion matrix of two trainId maps, the form every official score is computed from.

    Args:
        gt_train: HxW integer ground-truth trainIds; values outside 0..n-1 (255) are ignored.
        pred_train: HxW integer predicted trainIds; values outside 0..n-1 (255, void) are
            false negatives of the GT class and nothing else.
        n: number of classes (at most 255).

    Returns:
        int64[n, n + 1]: entry [g, p] counts pixels of GT class g predicted as p; column n counts
        those predicted as anything outside 0..n-1.
    """
    if not 1 <= n <= 255:
        raise ValueError(f'n must be in 1..255, got {n}')
    gt = _label_image(gt_train, 'gt_train')
    pred = _label_image(pred_train, 'pred_train')
    _same_shape(gt_train=gt, pred_train=pred)
    runs = _runs(gt, pred)
    return _confusion_rows(*runs.values, runs.lengths, n)[:n]


def _label_confusion(runs: _Runs) -> np.ndarray:
    """int64[19, 20] confusion from runs of (GT labelIds, predicted trainIds, ...)."""
    # Rows of the histogram are labelIds; each trainId has exactly one labelId, so selecting
    # those 19 rows is the LUT mapping, and every other row is an ignored GT label.
    return _confusion_rows(runs.values[0], runs.values[1], runs.lengths, _N)[_TRAIN_ROWS]


def _iou(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    """Return tp / (tp + fp + fn) elementwise, NaN where the denominator is 0 (official rule)."""
    denom = tp + fp + fn
    with np.errstate(divide='ignore', invalid='ignore'):
        return np.where(denom > 0, tp / np.where(denom > 0, denom, 1), np.nan)


def _class_iou(conf: np.ndarray) -> np.ndarray:
    """float64[19] class IoU from an int64[19, 20] confusion matrix."""
    # TP: the diagonal, GT class c predicted as c.
    tp = np.diagonal(conf).copy()
    # FN: the rest of GT row c, including predictions outside 0..18 (the "other" column).
    fn = conf.sum(axis=1) - tp
    # FP: column c over the GT rows of the other evaluated classes; pixels with ignored GT are
    # not in the matrix, so they never make a false positive.
    fp = conf[:, :_N].sum(axis=0) - tp
    return _iou(tp, fp, fn)


def _category_confusion(conf: np.ndarray) -> np.ndarray:
    """int64[7, 8] confusion over categories (column 7 = predictions outside 0..18)."""
    return _CAT_OF_ROW @ conf @ _CAT_OF_COLUMN


def _category_fp(cat_conf: np.ndarray) -> np.ndarray:
    """int64[7] category FP: predicted as the category, GT an evaluated class of another one."""
    cats = cat_conf.shape[0]
    return cat_conf[:, :cats].sum(axis=0) - np.diagonal(cat_conf)


def mean_defined(values) -> float:
    """Mean over the non-NaN values, NaN if none (official ``getScoreAverage``).

    A plain left-to-right sum in class order, as the official loop does, so the result is the
    same float and not merely a close one.
    """
    total = 0.0
    count = 0
    for value in values:
        if not math.isnan(value):
            total += value
            count += 1
    return total / count if count else math.nan


class FrameStats(NamedTuple):
    """Scores of a single frame, for per-frame reports."""

    pixel_accuracy: float
    """Correct pixels / pixels with an evaluated GT class; NaN if there are none."""
    miou: float
    """Mean IoU over the classes defined in this frame (present in GT or predicted)."""


def frame_stats(gt_label_ids: np.ndarray, pred_train_ids: np.ndarray) -> FrameStats:
    """Pixel accuracy and mIoU of one frame.

    The official ``evalPixelAccuracy`` option is not used as a reference: it counts the pixels
    *outside* the evaluated labels (``np.in1d(..., invert=True)``) and compares labelIds with
    predictions. Here accuracy is correct / evaluated GT pixels, as the name says.

    Args:
        gt_label_ids: HxW uint8 GT labelIds (``*_gtFine_labelIds.png``).
        pred_train_ids: HxW uint8 predicted trainIds (255 = no prediction).

    Returns:
        ``FrameStats(pixel_accuracy, miou)``.
    """
    gt = _label_image(gt_label_ids, 'gt_label_ids')
    pred = _label_image(pred_train_ids, 'pred_train_ids')
    _same_shape(gt_label_ids=gt, pred_train_ids=pred)
    conf = _label_confusion(_runs(gt, pred))
    total = int(conf.sum())
    accuracy = float(np.trace(conf)) / total if total else math.nan
    return FrameStats(accuracy, mean_defined(_class_iou(conf).tolist()))


def _zeros_float(size: int) -> np.ndarray:
    return np.zeros(size, dtype=np.float64)


@dataclass(eq=False)
class Counts:
    """Everything the official scores need, summed over frames; shards merge by addition.

    Attributes:
        confusion: int64[19, 20], GT trainId rows x predicted trainId columns, column 19 =
            predictions outside 0..18. Pixels whose GT is ignored are not counted.
        tp_weighted: float64[19], per class: sum over GT instances of
            TP pixels * avgClassSize / instance size (iIoU numerator). 0 for stuff classes.
        fn_weighted: float64[19], the same for missed pixels of each instance.
        category_tp_weighted: float64[7], per category: as ``tp_weighted``, where any class of
            the instance's category counts as correct (only human and vehicle are used).
        category_fn_weighted: float64[7], the category misses.
        frames: frames added.
        instance_frames: frames added with instance ids; iIoU is undefined while this is 0.
    """

    confusion: np.ndarray = field(default_factory=lambda: np.zeros((_N, _N + 1), np.int64))
    tp_weighted: np.ndarray = field(default_factory=lambda: _zeros_float(_N))
    fn_weighted: np.ndarray = field(default_factory=lambda: _zeros_float(_N))
    category_tp_weighted: np.ndarray = field(
        default_factory=lambda: _zeros_float(len(CATEGORY_NAMES)))
    category_fn_weighted: np.ndarray = field(
        default_factory=lambda: _zeros_float(len(CATEGORY_NAMES)))
    frames: int = 0
    instance_frames: int = 0

    _ARRAYS = ('confusion', 'tp_weighted', 'fn_weighted', 'category_tp_weighted',
               'category_fn_weighted')

    def add(self, gt_label_ids: np.ndarray, pred_train_ids: np.ndarray,
            gt_instance_ids: Optional[np.ndarray] = None) -> 'Counts':
        """Count one frame in place and return ``self``.

        Args:
            gt_label_ids: HxW uint8 GT labelIds (``*_gtFine_labelIds.png``); ignored and
                unknown ids are not evaluated.
            pred_train_ids: HxW uint8 predicted trainIds; anything outside 0..18 (255) is a
                miss for the GT class and a false positive for none.
            gt_instance_ids: HxW integer GT instanceIds (``*_gtFine_instanceIds.png``, uint16 or
                int32): values above 1000 are instances of labelId ``value // 1000``. None skips
                the instance statistics (iIoU) for this frame.
        """
        gt = _label_image(gt_label_ids, 'gt_label_ids')
        pred = _label_image(pred_train_ids, 'pred_train_ids')
        inst = None if gt_instance_ids is None else np.asarray(gt_instance_ids)
        if inst is not None and (inst.ndim != 2 or not np.issubdtype(inst.dtype, np.integer)):
            raise ImageError(f'gt_instance_ids must be a HxW integer image, got shape '
                             f'{inst.shape} dtype {inst.dtype}; pass the uint16 instanceIds PNG')
        _same_shape(gt_label_ids=gt, pred_train_ids=pred, gt_instance_ids=inst)
        runs = _runs(gt, pred) if inst is None else _runs(gt, pred, inst)
        self.confusion += _label_confusion(runs)
        if inst is not None:
            self._add_instances(runs)
            self.instance_frames += 1
        self.frames += 1
        return self

    def _add_instances(self, runs: _Runs) -> None:
        """Accumulate the weighted instance TP and FN of one frame (official ``evaluatePair``).

        ``runs`` encodes (GT labelIds, predicted trainIds, GT instanceIds).
        """
        _, pred, ids = runs.values
        # Official: np.unique(instanceNp[instanceNp > 1000]); 1000 itself would be labelId 1,
        # ego vehicle, which is ignored anyway. Ids from labelId 34 on name no Cityscapes label
        # (the official code crashes on them).
        where = _flatnonzero((ids > 1000) & (ids < _INSTANCE_ID_END))
        if not where.size:
            return
        ids = ids[where].astype(np.intp)
        hit = pred[where]
        weights = runs.weights(where)
        pixel_class = _INSTANCE_ID_CLASS[ids]
        sizes = _bincount(ids, weights, _INSTANCE_ID_END)
        # Class TP: the prediction is the instance's own class.
        correct = hit == pixel_class
        tp = _bincount(ids[correct], None if weights is None else weights[correct],
                       _INSTANCE_ID_END)
        # Category TP: the prediction is any class of the instance's category
        # (official: np.in1d(prediction, category labelIds)).
        correct = TRAINID_TO_CATID[hit] == TRAINID_TO_CATID[pixel_class]
        cat_tp = _bincount(ids[correct], None if weights is None else weights[correct],
                           _INSTANCE_ID_END)
        # Instances in increasing id order, as np.unique gives them to the official loop; skip
        # labels that are ignored in evaluation (caravan, trailer) or have no instances.
        present = np.flatnonzero(sizes != 0)
        present = present[_IS_INSTANCE_CLASS[_INSTANCE_ID_CLASS[present]]]
        cls = _INSTANCE_ID_CLASS[present].astype(np.intp)
        size, tp, cat_tp = sizes[present], tp[present], cat_tp[present]
        # Each instance weighs avgClassSize / its own size, so small and large instances count
        # alike; the same float operations as the official code, in the same order.
        weight = _AVG_SIZE[cls] / size.astype(np.float64)
        np.add.at(self.tp_weighted, cls, tp.astype(np.float64) * weight)
        np.add.at(self.fn_weighted, cls, (size - tp).astype(np.float64) * weight)
        cat = _CLASS_CAT[cls]
        np.add.at(self.category_tp_weighted, cat, cat_tp.astype(np.float64) * weight)
        np.add.at(self.category_fn_weighted, cat, (size - cat_tp).astype(np.float64) * weight)

    def merge(self, other: 'Counts') -> 'Counts':
        """Add ``other``'s counts into this one in place and return ``self``.

        Raises:
            CitysegError: a sum would pass :data:`MAX_COUNT` (int64 would wrap silently).
        """
        if (self.frames + other.frames > MAX_COUNT
                or (other.confusion > MAX_COUNT - self.confusion).any()):
            raise CitysegError(f'merged counts would exceed {MAX_COUNT}; these cannot be '
                               'counts of real frames (a damaged or edited counts file)')
        with np.errstate(over='ignore'):  # a sum that overflows is refused below, not warned
            sums = {name: getattr(self, name) + getattr(other, name) for name in self._ARRAYS}
        if not all(np.isfinite(v).all() for v in sums.values()):
            raise CitysegError('merged weighted counts overflow to infinity; these cannot be '
                               'counts of real frames (a damaged or edited counts file)')
        for name, value in sums.items():
            getattr(self, name)[...] = value
        self.frames += other.frames
        self.instance_frames += other.instance_frames
        return self

    def __add__(self, other: 'Counts') -> 'Counts':
        if not isinstance(other, Counts):
            return NotImplemented
        return self.copy().merge(other)

    def copy(self) -> 'Counts':
        """Return an independent copy."""
        return Counts(*(getattr(self, name).copy() for name in self._ARRAYS),
                      frames=self.frames, instance_frames=self.instance_frames)

    def save(self, path: PathLike) -> None:
        """Write the counts to ``path`` as an uncompressed ``.npz`` (ints and floats exact)."""
        with open(path, 'wb') as handle:
            np.savez(handle, version=np.int64(_FORMAT_VERSION),
                     class_names=np.array(CLASS_NAMES), frames=np.int64(self.frames),
                     instance_frames=np.int64(self.instance_frames),
                     **{name: getattr(self, name) for name in self._ARRAYS})

    @classmethod
    def load(cls, path: PathLike) -> 'Counts':
        """Read counts written by :meth:`save`; the file is checked as hostile input.

        Nothing is unpickled, every array header is checked against its member's size and a
        cap before its data is read, and the values must be possible counts (integers in
        0..2**53, finite non-negative weights, no more instance frames than frames).

        Raises:
            CitysegError: the file is missing, not a counts file, of another label set, or
                holds impossible values; the message says which and what to do.
        """
        path = Path(path)
        if not path.is_file():
            raise CitysegError(f'counts file {path} not found; pass a file written by '
                               'Counts.save (an evaluate shard)')
        fields = _read_npz(path)
        missing = [name for name in ('version', 'class_names', 'frames', 'instance_frames',
                                     *cls._ARRAYS) if name not in fields]
        if missing:
            raise CitysegError(f'{path} is not a counts file: no {", ".join(missing)}; pass a '
                               'file written by Counts.save')
        scalars = {}
        for name in ('version', 'frames', 'instance_frames'):
            value = fields[name]
            if value.shape != () or value.dtype.kind not in 'iu':
                raise CitysegError(f'{path}: {name} must be one integer, got {value.dtype} of '
                                   f'shape {value.shape}; the file is damaged, re-run the '
                                   'evaluation')
            scalars[name] = int(value)
        if scalars['version'] != _FORMAT_VERSION:
            raise CitysegError(f'{path} has counts format {scalars["version"]}, this '
                               f'version reads {_FORMAT_VERSION}; re-run the evaluation')
        names = fields['class_names']
        if names.dtype.kind != 'U' or tuple(names.tolist()) != CLASS_NAMES:
            raise CitysegError(f'{path} counts other classes than the 19 Cityscapes classes; '
                               'it cannot be merged with these counts')
        counts = cls(frames=scalars['frames'], instance_frames=scalars['instance_frames'])
        for name in cls._ARRAYS:
            expected = getattr(counts, name)
            value = fields[name]
            if value.shape != expected.shape or value.dtype != expected.dtype:
                raise CitysegError(f'{path}: {name} has shape {value.shape} dtype {value.dtype}, '
                                   f'expected {expected.shape} {expected.dtype}; the file is '
                                   'damaged, re-run the evaluation')
            setattr(counts, name, np.array(value))
        counts.check(str(path))
        return counts

    def check(self, what: str = 'counts') -> None:
        """Raise :class:`CitysegError` unless every value is a possible count.

        Integers lie in 0..:data:`MAX_COUNT` (so thousands of shards still add up exactly in
        int64), weights are finite and non-negative, instance frames at most the frames, and
        zero frames count nothing.
        """
        problems = []
        for name in ('frames', 'instance_frames'):
            if not 0 <= getattr(self, name) <= MAX_COUNT:
                problems.append(f'{name} = {getattr(self, name)}')
        if self.instance_frames > self.frames:
            problems.append(f'instance_frames {self.instance_frames} > frames {self.frames}')
        if self.confusion.size and not (0 <= self.confusion.min()
                                        and self.confusion.max() <= MAX_COUNT):
            problems.append(f'confusion values from {self.confusion.min()} to '
                            f'{self.confusion.max()}')
        for name in self._ARRAYS[1:]:
            value = getattr(self, name)
            if not (np.isfinite(value).all() and (value >= 0).all()):
                problems.append(f'{name} holds negative, NaN or infinite values')
        if self.frames == 0 and any(getattr(self, n).any() for n in self._ARRAYS):
            problems.append('counts without frames')
        if problems:
            raise CitysegError(f'{what} holds impossible counts ({"; ".join(problems)}); the '
                               'file is damaged or was edited, re-run that evaluation')


@dataclass(frozen=True)
class ClassGroups:
    """The evaluated classes of a label space, each a group of trainIds.

    The counts are always kept per trainId (:class:`Counts`); a label space whose class is
    several trainIds (Cityscapes categories, a user's label map) is scored by adding up the
    rows and columns of each group, which gives the official category scores exactly and the
    same rules (a prediction outside the classes is a miss, never a false positive) for any
    grouping. trainIds a space does not evaluate are ignored as ground truth.

    Attributes:
        name: 'trainid', 'labelid', 'category' or a label map's name.
        kind: 'trainid', 'labelid', 'category' or 'label_map'.
        ids: the classes' ids in the space, ascending.
        names: the classes' names, in the order of ``ids``.
        groups: 19 entries: trainId -> index into ``ids``, -1 = not evaluated.
    """

    name: str
    kind: str
    ids: tuple[int, ...]
    names: tuple[str, ...]
    groups: tuple[int, ...]

    KINDS = ('trainid', 'labelid', 'category', 'label_map')

    def __post_init__(self) -> None:
        count = len(self.ids)
        if self.kind not in self.KINDS:
            raise ValueError(f'kind must be one of {self.KINDS}, got {self.kind!r}')
        if not 1 <= count <= _N or len(self.names) != count or len(self.groups) != _N:
            raise ValueError(f'{count} ids, {len(self.names)} names, {len(self.groups)} groups: '
                             f'need 1..{_N} classes with a name each and {_N} groups')
        if sorted(set(self.ids)) != list(self.ids) or not all(0 <= i <= 255 for i in self.ids):
            raise ValueError(f'ids must be ascending, distinct and in 0..255, got {self.ids}')
        if sorted(set(self.groups) - {-1}) != list(range(count)):
            raise ValueError(f'groups must cover each class 0..{count - 1} (or -1), got '
                             f'{self.groups}')

    @classmethod
    def trainid(cls) -> 'ClassGroups':
        """Return the 19 Cityscapes trainIds themselves: the official scores."""
        return cls('trainid', 'trainid', tuple(range(_N)), CLASS_NAMES, tuple(range(_N)))

    @classmethod
    def from_lut(cls, name: str, kind: str, lut: np.ndarray, ignore_id: int,
                 names: dict[int, str]) -> 'ClassGroups':
        """Build the groups of a label space from its trainId -> id table.

        Args:
            name: the space's name.
            kind: see :attr:`kind`.
            lut: uint8[256] (or at least 19 entries): trainId -> id in the space.
            ignore_id: the space's id for ignored pixels; trainIds mapped to it are not
                evaluated.
            names: id -> name.
        """
        lut = [int(v) for v in np.asarray(lut)[:_N]]
        ids = tuple(sorted({v for v in lut if v != ignore_id}))
        return cls(name, kind, ids, tuple(str(names.get(i, i)) for i in ids),
                   tuple(ids.index(v) if v != ignore_id else -1 for v in lut))

    @property
    def official(self) -> bool:
        """True when the classes are the 19 trainIds one to one (trainid, labelid)."""
        return self.groups == tuple(range(_N))

    def prediction_lut(self) -> np.ndarray:
        """uint8[256]: an id of the space -> a trainId of its group (255 for other ids).

        Predictions in the space become trainIds that land in the right group; which trainId
        of a group does not matter to the grouped scores.
        """
        lut = np.full(256, IGNORE_ID, np.uint8)
        for train_id, group in enumerate(self.groups):
            if group >= 0 and lut[self.ids[group]] == IGNORE_ID:
                lut[self.ids[group]] = train_id
        return lut

    def confusion(self, counts: 'Counts') -> np.ndarray:
        """int64[K, K + 1] confusion of the K classes; column K = predicted outside them."""
        count = len(self.ids)
        rows = np.zeros((count, _N), np.int64)
        columns = np.zeros((_N + 1, count + 1), np.int64)
        for train_id, group in enumerate(self.groups):
            if group >= 0:
                rows[group, train_id] = 1
            columns[train_id, group if group >= 0 else count] = 1
        columns[_N, count] = 1
        return rows @ counts.confusion @ columns

    def class_iou(self, counts: 'Counts') -> tuple[np.ndarray, float]:
        """float64[K] IoU of the classes (NaN: undefined) and the pixel accuracy."""
        conf = self.confusion(counts)
        count = len(self.ids)
        tp = np.diagonal(conf).copy()
        fn = conf.sum(axis=1) - tp
        fp = conf[:, :count].sum(axis=0) - tp
        total = int(conf.sum())
        return _iou(tp, fp, fn), float(np.trace(conf)) / total if total else math.nan

    def to_dict(self) -> dict:
        """Return the ``label_space`` entry of metrics.json (enough to score merged counts)."""
        return {'name': self.name, 'kind': self.kind, 'ids': list(self.ids),
                'names': list(self.names), 'groups': list(self.groups)}

    @classmethod
    def from_dict(cls, data: dict) -> 'ClassGroups':
        """Inverse of :meth:`to_dict`.

        Raises:
            ValueError: anything but what :meth:`to_dict` writes.
        """
        if not isinstance(data, dict):
            raise ValueError('label_space is not an object')
        fields = [data.get(k) for k in ('name', 'kind', 'ids', 'names', 'groups')]
        name, kind, ids, names, groups = fields
        if not (isinstance(name, str) and isinstance(kind, str)
                and all(isinstance(v, list) and len(v) <= 256 for v in (ids, names, groups))
                and all(isinstance(i, int) and not isinstance(i, bool) for i in ids + groups)
                and all(isinstance(n, str) for n in names)):
            raise ValueError('label_space is not {name, kind, ids, names, groups}')
        return cls(name, kind, tuple(ids), tuple(names), tuple(groups))


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """Read the arrays of a small ``.npz`` without trusting it.

    ``np.load`` allocates whatever shape a member's header claims (an 8 TiB array from a 1 KiB
    file) and may unpickle; here the file, the member count and sizes are capped, object
    dtypes refused, and each header's shape x itemsize must equal the bytes the member holds.

    Raises:
        CitysegError: naming the file and what is wrong with it.
    """
    def damaged(reason: str) -> CitysegError:
        return CitysegError(f'cannot read counts file {path}: {reason}; pass a file written by '
                            'Counts.save (re-run the evaluation if it is damaged)')

    try:
        size = path.stat().st_size
        if size > _MAX_NPZ_BYTES:
            raise damaged(f'{size} bytes, far more than counts take ({_MAX_NPZ_BYTES} at most)')
        data = path.read_bytes()  # small: zipfile then never reads past what is there
        archive = zipfile.ZipFile(io.BytesIO(data))
    except CitysegError:
        raise
    except (OSError, zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError) as exc:
        raise damaged(f'not an npz archive ({exc})') from None
    fields: dict[str, np.ndarray] = {}
    with archive:
        members = archive.infolist()
        if len(members) > _MAX_NPZ_MEMBERS:
            raise damaged(f'{len(members)} members')
        for info in members:
            name = info.filename[:-4] if info.filename.endswith('.npy') else ''
            if not name or name in fields:
                raise damaged(f'an unexpected member {info.filename!r}')
            if info.file_size > _MAX_NPZ_BYTES:
                raise damaged(f'member {info.filename} declares {info.file_size} bytes')
            try:
                with archive.open(info) as member:
                    version = np.lib.format.read_magic(member)
                    if version == (1, 0):
                        shape, fortran, dtype = np.lib.format.read_array_header_1_0(member)
                    elif version == (2, 0):
                        shape, fortran, dtype = np.lib.format.read_array_header_2_0(member)
                    else:
                        raise ValueError(f'npy format version {version}')
                    if dtype.hasobject:
                        raise ValueError('an object array (pickles are never loaded)')
                    if any(not isinstance(n, int) or n < 0 for n in shape):
                        raise ValueError(f'shape {shape} is not a list of sizes >= 0')
                    nbytes = math.prod(shape) * dtype.itemsize
                    if nbytes != info.file_size - member.tell():
                        raise ValueError(f'a {shape} {dtype} header over '
                                         f'{info.file_size - member.tell()} bytes of data')
                    raw = member.read(nbytes)
                    if len(raw) != nbytes:
                        raise ValueError('data cut short')
            except (OSError, ValueError, zipfile.BadZipFile, EOFError, SyntaxError,
                    TypeError) as exc:
                raise damaged(f'member {info.filename}: {exc}') from None
            array = np.frombuffer(raw, dtype=dtype)
            fields[name] = array.reshape(shape, order='F' if fortran else 'C')
    return fields


def _json_float(value: float) -> Optional[float]:
    """Return None (JSON null) for NaN, an undefined score."""
    return None if math.isnan(value) else float(value)


@dataclass(frozen=True)
class Scores:
    """The official Cityscapes scores, from :class:`Counts`. NaN marks an undefined score.

    A class is undefined when it is absent from the GT and never predicted; a class absent from
    the GT but predicted scores 0 (all false positives). Means are over defined entries only.
    """

    miou: float
    class_iou: dict[str, float]
    miou_category: float
    category_iou: dict[str, float]
    iiou: float
    class_iiou: dict[str, float]
    iiou_category: float
    category_iiou: dict[str, float]
    pixel_accuracy: float
    frames: int
    confusion: np.ndarray = field(repr=False, compare=False)
    """int64[19, 20] read-only copy of :attr:`Counts.confusion`."""

    @classmethod
    def from_counts(cls, counts: Counts) -> 'Scores':
        """Compute every score from accumulated counts (official ``evaluateImgLists``)."""
        conf = counts.confusion
        class_iou = _class_iou(conf)
        cat_conf = _category_confusion(conf)
        # Category IoU: confusion between classes of the same category counts as correct.
        cat_tp = np.diagonal(cat_conf).copy()
        cat_fn = cat_conf.sum(axis=1) - cat_tp
        cat_fp = _category_fp(cat_conf)
        category_iou = _iou(cat_tp, cat_fp, cat_fn)

        inst_idx = [CLASS_NAMES.index(name) for name in INSTANCE_CLASSES]
        inst_cat_idx = [CATEGORY_NAMES.index(name) for name in INSTANCE_CATEGORIES]
        if counts.instance_frames:
            # iIoU: TP and FN weighted per instance, FP (no instance to weigh it) as for IoU.
            fp = conf[:, :_N].sum(axis=0) - np.diagonal(conf)
            class_iiou = _iou(counts.tp_weighted, fp, counts.fn_weighted)[inst_idx]
            category_iiou = _iou(counts.category_tp_weighted, cat_fp,
                                 counts.category_fn_weighted)[inst_cat_idx]
        else:
            class_iiou = np.full(len(inst_idx), np.nan)
            category_iiou = np.full(len(inst_cat_idx), np.nan)

        total = int(conf.sum())
        frozen = conf.copy()
        frozen.flags.writeable = False
        return cls(
            miou=mean_defined(class_iou.tolist()),
            class_iou=dict(zip(CLASS_NAMES, class_iou.tolist())),
            miou_category=mean_defined(category_iou.tolist()),
            category_iou=dict(zip(CATEGORY_NAMES, category_iou.tolist())),
            iiou=mean_defined(class_iiou.tolist()),
            class_iiou=dict(zip(INSTANCE_CLASSES, class_iiou.tolist())),
            iiou_category=mean_defined(category_iiou.tolist()),
            category_iiou=dict(zip(INSTANCE_CATEGORIES, category_iiou.tolist())),
            pixel_accuracy=float(np.trace(conf)) / total if total else math.nan,
            frames=counts.frames,
            confusion=frozen,
        )

    def to_dict(self) -> dict:
        """Return the ``metrics.json`` fields of the ``evaluate`` contract, NaN as None (null).

        Keys: ``miou``, ``class_iou`` {name: value}, ``category_iou`` {name: value},
        ``miou_category``, ``iiou``, ``iiou_category``, ``confusion`` (19x19 list of ints, GT
        rows x predicted columns; predictions outside 0..18 are left out).
        """
        return {
            'miou': _json_float(self.miou),
            'class_iou': {k: _json_float(v) for k, v in self.class_iou.items()},
            'category_iou': {k: _json_float(v) for k, v in self.category_iou.items()},
            'miou_category': _json_float(self.miou_category),
            'iiou': _json_float(self.iiou),
            'iiou_category': _json_float(self.iiou_category),
            'confusion': self.confusion[:, :_N].tolist(),
        }
