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

"""Offline evaluation of a bag: segment (or read) each frame's labels and score them against GT.

:class:`BagEvaluator` replays a rosbag2 (the ``make_bag`` layout by default): the camera images
go through a :class:`~cityseg_ros.engine.Segmenter` in batches, or, with a predictions topic,
the label images already recorded are scored as they are. Each frame's GT labelIds (and
instanceIds, for iIoU) is matched to it by header stamp; the official scores are accumulated as
:class:`~cityseg_ros.metrics.Counts`, so shards evaluated on several machines merge exactly
(:func:`merge_evaluations`).

Every stream (images or predictions, GT labels, GT instances) is read by its own
:class:`~cityseg_ros.bags.BagReader`, the streams are merged by stamp and matched with the
:class:`~cityseg_ros.pairing.StampPairer` the node uses. Reading them apart, rather than with
``read_frames``, is what lets every frame that is not scored be *listed* (stamp and reason:
a missing or duplicate part, a part lost to damage) instead of silently dropped, and lets
predictions be matched to GT without a camera image. Messages stay undecoded until their frame
is scored, so a shard decodes only its own frames. Image topics may hold Image or
CompressedImage messages.

Label spaces: predictions may carry labelIds, category ids or a label map's ids
(:meth:`EvalOptions.class_groups`); the counts stay per trainId and the space's classes are
scored as groups of trainIds (:class:`~cityseg_ros.metrics.ClassGroups`).

Damaged bags: whatever was scored before a :class:`~cityseg_ros.errors.BagError` stays in
:attr:`BagEvaluator.evaluation`, marked ``partial``, so a caller can still write it; a stream
that fails ends alone, so the frames whose parts all precede the damage are still scored.
"""

import bisect
from collections import Counter
import contextlib
import csv
from dataclasses import dataclass, field
import heapq
import itertools
import json
import logging
import math
from operator import itemgetter
import os
from pathlib import Path
import statistics
import time
from typing import Any, Callable, Iterator, NamedTuple, Optional, Sequence, TYPE_CHECKING, Union

from cityseg_ros.bags import (BagReader, DEFAULT_TOLERANCE_NS, IMAGE_TYPES, TOPIC_GT_INSTANCE_IDS,
                              TOPIC_GT_LABEL_IDS, TOPIC_LEFT_IMAGE, TopicInfo)
from cityseg_ros.errors import BagError, CitysegError, ConfigError
from cityseg_ros.labels import CLASS_NAMES, NUM_CLASSES
from cityseg_ros.metrics import ClassGroups, Counts, mean_defined, Scores
from cityseg_ros.pairing import StampPairer
import numpy as np

if TYPE_CHECKING:  # the engine pulls in torch; scoring recorded predictions does not need it
    from cityseg_ros.engine import Segmenter

__all__ = [
    'OUTPUT_FILES', 'MAX_BATCH_SIZE', 'MAX_TOLERANCE_NS', 'EvalOptions', 'ModelInfo',
    'FrameResult', 'SkippedFrame', 'StageTiming', 'Evaluation', 'BagEvaluator',
    'merge_evaluations', 'load_evaluation', 'check_output_folder', 'write_outputs',
    'write_metrics_json', 'write_report', 'write_confusion_png', 'write_frames_csv',
]

_LOG = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

#: Largest batch: images are decoded and held until their batch runs.
MAX_BATCH_SIZE = 256
#: Largest stamp tolerance: a minute; frames of one camera are milliseconds apart.
MAX_TOLERANCE_NS = 60 * 10**9

#: What :func:`write_outputs` writes into the output folder.
OUTPUT_FILES: tuple[str, ...] = ('metrics.json', 'report.md', 'confusion.png', 'frames.csv',
                                 'counts.npz')

# Stream keys: the frames to score ('ref': camera images or predictions), then the GT.
_REF, _GT, _INST = 'ref', 'gt', 'inst'
# A pairer for bags may hold a few frames while partners logged a little apart arrive (as
# BagReader.read_frames does); it holds undecoded messages (at most MAX_MESSAGE_BYTES each).
_MAX_PENDING = 8
# A batch is scored early once its decoded images take this much memory.
_BATCH_BYTES = 256 * 2**20
_FRAME_FIELDS = ('stamp_ns', 'pixel_accuracy', 'miou', 'decode_ms', 'inference_ms',
                 'scoring_ms')
# Skipped frames listed in report.md; metrics.json lists them all.
_REPORT_SKIPPED = 50


# --------------------------------------------------------------------------------------------
# Typed records


@dataclass(frozen=True)
class EvalOptions:
    """What to read from the bag and which part of it to evaluate.

    Attributes:
        left_topic: camera images to segment (any encoding the node accepts, or JPEG/PNG
            CompressedImage); when the bag lacks it, ``<left_topic>/compressed`` is read.
        gt_topic: mono8 Cityscapes labelIds.
        instance_topic: mono16 Cityscapes instanceIds (for iIoU), or None for none.
        require_instances: a missing ``instance_topic`` is an error; when False it is logged
            and iIoU is left undefined.
        predictions_topic: score the mono8 label images of this topic (e.g. the node's
            ``left/semantic/labels``, or ``.../labels/compressed`` as PNG) instead of running
            a model; their ids are those of ``label_space``.
        limit: evaluate only the first ``limit`` complete frames of the bag (counted before
            sharding, so the shards of a limited run merge into the limited run).
        shard: ``(i, n)``: evaluate complete frames k with ``k % n == i`` (k counts the frames
            that have their GT, in stamp order, from 0).
        batch_size: images per forward pass.
        tolerance_ns: largest header stamp difference between a frame and its GT.
        label_space: the ids the predictions carry and the classes scored: 'trainid'
            (official), 'labelid' (official numbers too), 'category' (the official category
            scores) or 'label_map' (with ``label_map``). A model's trainIds are mapped into it.
        label_map: a label map YAML file (:mod:`cityseg_ros.label_spaces`): the predictions
            carry its ids; the GT is mapped the same way and its classes are scored.
    """

    left_topic: str = TOPIC_LEFT_IMAGE
    gt_topic: str = TOPIC_GT_LABEL_IDS
    instance_topic: Optional[str] = TOPIC_GT_INSTANCE_IDS
    require_instances: bool = True
    predictions_topic: Optional[str] = None
    limit: Optional[int] = None
    shard: tuple[int, int] = (0, 1)
    batch_size: int = 1
    tolerance_ns: int = DEFAULT_TOLERANCE_NS
    label_space: str = 'trainid'
    label_map: str = ''

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first option that cannot work."""
        self.class_groups()
        index, count = self.shard
        if count < 1 or not 0 <= index < count:
            raise ConfigError(f'shard {index}/{count} does not exist; use i/n with 0 <= i < n, '
                              'e.g. 0/2 and 1/2')
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f'limit must be at least 1 frame, got {self.limit}')
        if not 1 <= self.batch_size <= MAX_BATCH_SIZE:
            raise ConfigError(f'batch size must be 1..{MAX_BATCH_SIZE}, got {self.batch_size}')
        if not 0 <= self.tolerance_ns <= MAX_TOLERANCE_NS:
            raise ConfigError(f'stamp tolerance must be 0..{MAX_TOLERANCE_NS / 1e6:g} ms, got '
                              f'{self.tolerance_ns / 1e6:g} ms')
        topics = [t for t in (self.scored_topic, self.gt_topic, self.instance_topic) if t]
        if len(set(topics)) != len(topics):
            raise ConfigError(f'the scored, GT and instance topics must differ, got {topics}')

    def class_groups(self) -> ClassGroups:
        """Return the classes scored, from :attr:`label_space` / :attr:`label_map`.

        Raises:
            ConfigError: an unknown space or a bad label map file.
        """
        from cityseg_ros.label_spaces import get_label_space

        space = get_label_space(self.label_space, self.label_map)
        kind = 'label_map' if self.label_map else self.label_space
        if kind == 'trainid':
            return ClassGroups.trainid()
        return ClassGroups.from_lut(space.name, kind, space.lut, space.ignore_id, space.names)

    @property
    def scored_topic(self) -> str:
        """The topic whose frames are scored: the predictions topic, else the camera topic."""
        return self.predictions_topic or self.left_topic


@dataclass(frozen=True)
class ModelInfo:
    """The model that produced the labels, as recorded in ``metrics.json``."""

    name: str
    weights: Optional[str]
    device: str
    precision: str
    tta: str
    input_size: tuple[int, int]

    @classmethod
    def from_segmenter(cls, segmenter: 'Segmenter') -> 'ModelInfo':
        """Describe a :class:`~cityseg_ros.engine.Segmenter` (weights None = random)."""
        weights = segmenter.weights_path
        return cls(segmenter.spec.name, None if weights is None else str(weights),
                   str(segmenter.device), segmenter.precision, segmenter.tta,
                   (int(segmenter.input_size[0]), int(segmenter.input_size[1])))


class FrameResult(NamedTuple):
    """One scored frame: a row of ``frames.csv``.

    ``decode_ms`` is the time spent reading, deserialising and decoding the bag since the
    previous scored frame (frames of other shards included); ``inference_ms`` is the frame's
    share of its batch's ``Segmenter.predict`` (0 when scoring recorded predictions).
    """

    stamp_ns: int
    pixel_accuracy: float
    miou: float
    decode_ms: float
    inference_ms: float
    scoring_ms: float


class SkippedFrame(NamedTuple):
    """A frame that was not scored, and why."""

    stamp_ns: int
    reason: str


@dataclass
class StageTiming:
    """Seconds spent per stage over a whole run (summed over shards when merged).

    Attributes:
        decode_s: reading, deserialising and decoding messages.
        inference_s: ``Segmenter.predict``.
        scoring_s: counting and per-frame scores.
        wall_s: the whole run, from opening the bag to the last frame.
        workers: runs summed here (shards of a merged evaluation).
    """

    decode_s: float = 0.0
    inference_s: float = 0.0
    scoring_s: float = 0.0
    wall_s: float = 0.0
    workers: int = 1


def _json_float(value: Optional[float]) -> Optional[float]:
    return None if value is None or math.isnan(value) else float(value)


def _stage_stats(values: Sequence[float]) -> dict[str, Optional[float]]:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return {'mean': None, 'p50': None, 'p95': None}
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]
    return {'mean': statistics.fmean(ordered), 'p50': statistics.median(ordered), 'p95': p95}


@dataclass(eq=False)
class Evaluation:
    """Everything an evaluation produced; :meth:`to_dict` is ``metrics.json``.

    Attributes:
        counts: the official scores' counts over all scored frames.
        frames: one row per scored frame, in the order scored.
        skipped: frames not scored (no GT, sizes differ, ...), by stamp.
        timing: per-stage totals.
        bag: the bag evaluated (several, comma-separated, for a merge of several bags).
        model: the model, or None when recorded predictions were scored.
        topics: role (``scored``, ``gt``, ``instance``) -> topic name (None: not read).
        shard: ``(i, n)`` of this run; None for a merge.
        limit: the frame limit of the run, or None.
        partial: the run stopped before the end of the bag (damage, interruption) or a merge
            lacks shards: the scores cover only :attr:`frames`.
        error: why it is partial.
        merged_from: the shard folders a merge read.
    """

    counts: Counts = field(default_factory=Counts)
    frames: list[FrameResult] = field(default_factory=list)
    skipped: list[SkippedFrame] = field(default_factory=list)
    timing: StageTiming = field(default_factory=StageTiming)
    bag: Optional[str] = None
    model: Optional[ModelInfo] = None
    topics: dict[str, Optional[str]] = field(default_factory=dict)
    shard: Optional[tuple[int, int]] = (0, 1)
    limit: Optional[int] = None
    partial: bool = False
    error: Optional[str] = None
    merged_from: list[str] = field(default_factory=list)
    groups: ClassGroups = field(default_factory=ClassGroups.trainid)

    @property
    def scores(self) -> Scores:
        """The official scores of the counts (NaN where undefined)."""
        return Scores.from_counts(self.counts)

    def space_scores(self) -> 'SpaceScores':
        """Return the scores in the label space (:attr:`groups`), NaN where undefined.

        trainid and labelid: the official scores. category: the official category scores, as
        the classes too. A label map: IoU of the map's classes; categories and iIoU undefined.
        """
        official = self.scores
        groups = self.groups
        if groups.official:
            return SpaceScores(groups.names, dict(zip(groups.names, official.class_iou.values())),
                               official.miou,
                               {groups.names[CLASS_NAMES.index(n)]: v
                                for n, v in official.class_iiou.items()}, official.iiou,
                               official.category_iou, official.miou_category,
                               official.category_iiou, official.iiou_category,
                               official.pixel_accuracy, self.counts.confusion)
        iou, accuracy = groups.class_iou(self.counts)
        class_iou = dict(zip(groups.names, iou.tolist()))
        miou = mean_defined(iou.tolist())
        confusion = groups.confusion(self.counts)
        if groups.kind == 'category':
            return SpaceScores(groups.names, class_iou, miou, official.category_iiou,
                               official.iiou_category, official.category_iou,
                               official.miou_category, official.category_iiou,
                               official.iiou_category, accuracy, confusion)
        return SpaceScores(groups.names, class_iou, miou, {}, math.nan, {}, math.nan, {},
                           math.nan, accuracy, confusion)

    @property
    def frames_per_s(self) -> float:
        """Scored frames per second of wall time (per worker for a merge); NaN if unknown."""
        wall = self.timing.wall_s
        return len(self.frames) / wall if wall > 0 and self.frames else math.nan

    def timing_dict(self) -> dict[str, Any]:
        """Return the ``timing`` entry of ``metrics.json``: totals and per-frame ms stats."""
        out: dict[str, Any] = {
            'frames_per_s': _json_float(self.frames_per_s),
            'wall_s': self.timing.wall_s,
            'decode_s': self.timing.decode_s,
            'inference_s': self.timing.inference_s,
            'scoring_s': self.timing.scoring_s,
            'workers': self.timing.workers,
        }
        for stage in ('decode_ms', 'inference_ms', 'scoring_ms'):
            out[stage] = _stage_stats([getattr(row, stage) for row in self.frames])
        return out

    def to_dict(self) -> dict[str, Any]:
        """Return ``metrics.json``: the ``evaluate`` contract keys first, NaN as None (null).

        Contract keys: ``miou``, ``class_iou``, ``category_iou``, ``miou_category``, ``iiou``,
        ``iiou_category``, ``confusion`` (19x19, GT rows x predicted columns), ``frames``
        (frames scored), ``timing``. Then: ``class_iiou``, ``category_iiou``,
        ``pixel_accuracy``, ``confusion_void`` (per GT class, pixels predicted outside 0..18),
        ``label_space``, ``instance_frames``, ``skipped``, ``partial``, ``error``, ``bag``,
        ``model``, ``topics``, ``shard``, ``limit`` and, for a merge, ``merged_from``.

        In another label space than trainid/labelid (:meth:`space_scores`) the class keys and
        the confusion (KxK) are the space's classes.
        """
        scores = self.space_scores()
        classes = len(scores.names)

        def floats(values: dict[str, float]) -> dict[str, Optional[float]]:
            return {k: _json_float(v) for k, v in values.items()}

        out = {
            'miou': _json_float(scores.miou),
            'class_iou': floats(scores.class_iou),
            'category_iou': floats(scores.category_iou),
            'miou_category': _json_float(scores.miou_category),
            'iiou': _json_float(scores.iiou),
            'iiou_category': _json_float(scores.iiou_category),
            'confusion': scores.confusion[:, :classes].tolist(),
            'frames': self.counts.frames,
            'timing': self.timing_dict(),
        }
        out.update({
            'class_iiou': floats(scores.class_iiou),
            'category_iiou': floats(scores.category_iiou),
            'pixel_accuracy': _json_float(scores.pixel_accuracy),
            'confusion_void': scores.confusion[:, classes].tolist(),
            'label_space': self.groups.to_dict(),
            'instance_frames': self.counts.instance_frames,
            'skipped': [{'stamp_ns': s.stamp_ns, 'reason': s.reason} for s in self.skipped],
            'partial': self.partial,
            'error': self.error,
            'bag': self.bag,
            'model': None if self.model is None else {
                'name': self.model.name, 'weights': self.model.weights,
                'device': self.model.device, 'precision': self.model.precision,
                'tta': self.model.tta, 'input_size': list(self.model.input_size)},
            'topics': dict(self.topics),
            'shard': None if self.shard is None else list(self.shard),
            'limit': self.limit,
        })
        if self.merged_from:
            out['merged_from'] = list(self.merged_from)
        return out


# --------------------------------------------------------------------------------------------
# The evaluator


class SpaceScores(NamedTuple):
    """The scores of an evaluation in its label space; NaN marks an undefined score.

    ``confusion`` is int64[K, K + 1] over the K classes of ``names`` (GT rows, predicted
    columns; the last column counts predictions outside the classes).
    """

    names: tuple[str, ...]
    class_iou: dict[str, float]
    miou: float
    class_iiou: dict[str, float]
    iiou: float
    category_iou: dict[str, float]
    miou_category: float
    category_iiou: dict[str, float]
    iiou_category: float
    pixel_accuracy: float
    confusion: np.ndarray


class _Work(NamedTuple):
    """A matched frame waiting for its batch."""

    stamp_ns: int
    scored: np.ndarray  # HxWx3 RGB camera image, or HxW predicted trainIds
    gt: np.ndarray
    instances: Optional[np.ndarray]
    decode_s: float


_ROLE_TEXT = {
    _REF: ('camera images', '--left-topic'),
    _GT: ('ground truth labelIds', '--gt-topic'),
    _INST: ('ground truth instanceIds', '--instance-topic'),
}


def _as_uint8(labels: np.ndarray) -> np.ndarray:
    """Integer labels as uint8, values outside 0..255 as 255 (never a real class)."""
    if labels.dtype == np.uint8:
        return labels
    return np.where((labels >= 0) & (labels <= 255), labels, 255).astype(np.uint8)


def _one_line(exc: BaseException) -> str:
    text = ' '.join(str(exc).split())
    return text or type(exc).__name__


class BagEvaluator:
    """Evaluate one bag (or one shard of it); the result grows in :attr:`evaluation`.

    Example:
        >>> evaluator = BagEvaluator('cityscapes_bag', EvalOptions(batch_size=2))
        >>> evaluator.check()                 # topics present? (before loading a model)
        >>> result = evaluator.run(Segmenter('espnetv2', weights='auto'))
        >>> write_outputs(result, 'eval_out')
    """

    def __init__(self, bag: PathLike, options: Optional[EvalOptions] = None) -> None:
        """Prepare an evaluation; nothing is read yet.

        Args:
            bag: a rosbag2 directory, or one .mcap / .db3 file.
            options: topics, limit, shard, batch size; the defaults read the make_bag layout.

        Raises:
            ConfigError: an option cannot work (see :meth:`EvalOptions.validate`).
        """
        options = options or EvalOptions()
        options.validate()
        self.bag = Path(bag)
        self.options = options
        groups = options.class_groups()
        self.evaluation = Evaluation(bag=str(self.bag), shard=options.shard,
                                     limit=options.limit, groups=groups)
        # Labels -> trainIds of the right group: recorded predictions carry the space's ids,
        # a model's carry trainIds (None: nothing to map).
        if options.predictions_topic:
            self._to_train = None if groups.kind == 'trainid' else groups.prediction_lut()
        else:
            lut = np.full(256, 255, np.uint8)
            to_train = groups.prediction_lut()
            lut[:NUM_CLASSES] = [to_train[groups.ids[g]] if g >= 0 else 255
                                 for g in groups.groups]
            self._to_train = None if groups.official else lut
        self._topics: Optional[dict[str, str]] = None
        self._counts: dict[str, Optional[int]] = {}
        self._matched_frames = 0
        self._ran = False

    # -- public API -------------------------------------------------------------------------

    def check(self) -> dict[str, TopicInfo]:
        """Open the bag and check that every topic to read is there and holds images.

        Cheap: call it before loading a model. A missing instance topic is allowed when
        ``options.require_instances`` is False (iIoU is then undefined).

        Returns:
            Every topic of the bag -> :class:`~cityseg_ros.bags.TopicInfo`.

        Raises:
            BagError: the bag cannot be opened, a topic is missing (the message lists the
                topics present) or holds no images. :attr:`evaluation` is then marked partial.
        """
        try:
            with BagReader(self.bag) as reader:
                topics = reader.topics
            self._topics = self._resolve_topics(topics)
        except BagError as exc:
            self._fail(exc)
            raise
        self._counts = {role: topics[topic].count for role, topic in self._topics.items()}
        return topics

    @property
    def matched_frames(self) -> int:
        """Frames of the whole bag (all shards) that had all their parts, after :meth:`run`."""
        return self._matched_frames

    @property
    def expected_frames(self) -> Optional[int]:
        """Frames this run will score at most (from the bag's message counts), if known."""
        count = self._counts.get(_REF)
        if count is None:
            return None
        if self.options.limit is not None:
            count = min(count, self.options.limit)
        index, shards = self.options.shard
        return len(range(index, count, shards))

    def run(self, segmenter: Optional['Segmenter'] = None,
            on_frame: Optional[Callable[[FrameResult], None]] = None) -> Evaluation:
        """Score the bag's frames and return :attr:`evaluation`.

        Args:
            segmenter: the model, unless ``options.predictions_topic`` is set.
            on_frame: called after each scored frame (e.g. to advance a progress bar).

        Returns:
            The evaluation, complete.

        Raises:
            BagError: the bag is missing a topic, holds a message that cannot be used, or is
                damaged. Frames scored before it stay in :attr:`evaluation`, which is marked
                ``partial`` with the error; the same happens for any other exception
                (KeyboardInterrupt included) before it propagates.
            ConfigError: a segmenter is missing, or given together with a predictions topic;
                or this evaluator ran already (make a new one: results would add up).
        """
        if self._ran:
            raise ConfigError('this BagEvaluator has run already; make a new one per run')
        if (segmenter is None) == (self.options.predictions_topic is None):
            raise ConfigError('pass a segmenter, or set predictions_topic to score recorded '
                              'labels (not both)')
        self._ran = True
        evaluation = self.evaluation
        evaluation.model = None if segmenter is None else ModelInfo.from_segmenter(segmenter)
        started = time.perf_counter()
        try:
            if self._topics is None:
                self.check()
            with contextlib.ExitStack() as stack:
                self._score(stack, segmenter, on_frame)
        except BaseException as exc:
            self._fail(exc)
            raise
        finally:
            evaluation.timing.wall_s = time.perf_counter() - started
        _LOG.info('%s: scored %d frames (%d skipped) in %.1f s, %.2f frames/s', self.bag,
                  len(evaluation.frames), len(evaluation.skipped), evaluation.timing.wall_s,
                  evaluation.frames_per_s)
        return evaluation

    # -- helpers ----------------------------------------------------------------------------

    def _fail(self, exc: BaseException) -> None:
        self.evaluation.partial = True
        self.evaluation.error = _one_line(exc)

    def _resolve_topics(self, topics: dict[str, TopicInfo]) -> dict[str, str]:
        opts = self.options
        wanted = {_REF: opts.scored_topic, _GT: opts.gt_topic}
        compressed = f'{opts.left_topic}/compressed'
        if not opts.predictions_topic and opts.left_topic not in topics and compressed in topics:
            _LOG.info('bag %s has no %s: reading %s', self.bag, opts.left_topic, compressed)
            wanted[_REF] = compressed
        if opts.instance_topic and (opts.instance_topic in topics or opts.require_instances):
            wanted[_INST] = opts.instance_topic
        present = ', '.join(sorted(topics)) or 'none'
        for role, topic in wanted.items():
            what, flag = _ROLE_TEXT[role]
            if role == _REF and opts.predictions_topic:
                what, flag = 'predicted trainIds', '--predictions-topic'
            if topic not in topics:
                raise BagError(f'bag {self.bag} has no topic {topic} ({what}); topics present: '
                               f'{present}; pass the right one with {flag}')
            if topics[topic].msgtype not in IMAGE_TYPES:
                raise BagError(f'topic {topic} of bag {self.bag} holds {topics[topic].msgtype}, '
                               f'not an image ({what}); pass an image topic with {flag}')
        if opts.instance_topic and _INST not in wanted:
            _LOG.info('bag %s has no %s: frames are scored without instance ids, iIoU is '
                      'undefined', self.bag, opts.instance_topic)
        self.evaluation.topics = {'scored': wanted[_REF], 'gt': wanted[_GT],
                                  'instance': wanted.get(_INST)}
        return wanted

    def _streams(self, stack: contextlib.ExitStack,
                 errors: dict[str, BagError]) -> list[Iterator[tuple[int, str, Any]]]:
        """One reader per topic: (stamp_ns, role, undecoded message) in log-time order.

        A stream that fails (damage, an undeserializable message) ends there and leaves its
        error in ``errors``; the others go on, so every frame whose parts were all read before
        the damage is still matched (the merge reads each stream ahead by one message).
        """
        assert self._topics is not None

        def stream(role: str, topic: str) -> Iterator[tuple[int, str, Any]]:
            try:
                reader = stack.enter_context(BagReader(self.bag))
                for record in reader.read_messages(topic):
                    yield record.stamp_ns, role, (reader, topic, record)
            except BagError as exc:
                errors[role] = exc

        return [stream(role, topic) for role, topic in self._topics.items()]

    def _score(self, stack: contextlib.ExitStack, segmenter: Optional['Segmenter'],
               on_frame: Optional[Callable[[FrameResult], None]]) -> None:
        assert self._topics is not None
        opts = self.options
        keys = list(self._topics)
        errors: dict[str, BagError] = {}
        pairer = StampPairer(keys, opts.tolerance_ns, max_pending=_MAX_PENDING)
        seen: dict[str, list[int]] = {key: [] for key in keys}
        matched: dict[str, Counter] = {key: Counter() for key in keys}
        merged = heapq.merge(*self._streams(stack, errors), key=itemgetter(0))
        batch: list[_Work] = []
        index = 0
        decode_s = 0.0
        finished = False
        try:
            while opts.limit is None or index < opts.limit:
                start = time.perf_counter()
                try:
                    stamp, role, item = next(merged)
                except StopIteration:
                    finished = True
                    break
                finally:
                    decode_s += time.perf_counter() - start
                seen[role].append(stamp)
                match = pairer.push(role, stamp, item)
                if match is None:
                    continue
                for key, key_stamp in match.stamps.items():
                    matched[key][key_stamp] += 1
                index += 1
                if (index - 1) % opts.shard[1] != opts.shard[0]:
                    continue
                work = self._work(match.stamp_ns, match.items, decode_s)
                decode_s = 0.0
                if work is None:
                    continue
                batch.append(work)
                if (len(batch) >= opts.batch_size
                        or sum(w.scored.nbytes for w in batch) >= _BATCH_BYTES):
                    self._flush(batch, segmenter, on_frame)
        except BagError:
            self._flush(batch, segmenter, on_frame)  # frames read before the error count
            raise
        finally:
            self._list_unmatched(seen, matched, errors,
                                 None if finished else self._last_stamp(matched))
        self._flush(batch, segmenter, on_frame)
        self._matched_frames = index
        if errors:  # the first stream to fail, in role order (images, GT, instances)
            raise next(errors[key] for key in keys if key in errors)

    @staticmethod
    def _last_stamp(matched: dict[str, Counter]) -> int:
        """Stamps at or after this one may have lost their partners to an early stop."""
        return max(matched[_REF], default=-1)

    def _decode(self, role: str, item: tuple[BagReader, str, Any], rgb: bool) -> np.ndarray:
        reader, topic, record = item
        return reader.decode(topic, record, rgb=rgb, lossless=role != _REF or not rgb)

    def _work(self, stamp: int, items: dict[str, Any], decode_s: float) -> Optional[_Work]:
        """Decode and check one matched frame; list it as skipped (return None) if unusable."""
        assert self._topics is not None
        start = time.perf_counter()
        model = not self.options.predictions_topic
        scored = self._decode(_REF, items[_REF], rgb=model)
        gt = self._decode(_GT, items[_GT], rgb=False)
        instances = self._decode(_INST, items[_INST], rgb=False) if _INST in items else None
        decode_s += time.perf_counter() - start
        if gt.ndim != 2 or gt.dtype != np.uint8:
            raise BagError(f'{self._topics[_GT]} at stamp {stamp} ns holds a {gt.dtype} image '
                           f'of shape {gt.shape}, not mono8 labelIds; pass the labelIds topic '
                           'with --gt-topic')
        if instances is not None and (instances.ndim != 2
                                      or not np.issubdtype(instances.dtype, np.integer)):
            raise BagError(f'{self._topics[_INST]} at stamp {stamp} ns holds a '
                           f'{instances.dtype} image of shape {instances.shape}, not mono16 '
                           'instanceIds; pass the instanceIds topic with --instance-topic')
        if not model and (scored.ndim != 2 or not np.issubdtype(scored.dtype, np.integer)):
            raise BagError(f'{self._topics[_REF]} at stamp {stamp} ns holds a {scored.dtype} '
                           f'image of shape {scored.shape}, not mono8 trainIds; pass a labels '
                           'topic (e.g. left/semantic/labels) with --predictions-topic')
        what = 'image' if model else 'prediction'
        sizes = {what: scored.shape[:2], 'ground truth': gt.shape}
        if instances is not None:
            sizes['instanceIds'] = instances.shape
        if len(set(sizes.values())) > 1:
            text = ', '.join(f'{name} {shape[1]}x{shape[0]}' for name, shape in sizes.items())
            self._skip(stamp, f'sizes differ: {text}')
            return None
        return _Work(stamp, scored, gt, instances, decode_s)

    def _flush(self, batch: list[_Work], segmenter: Optional['Segmenter'],
               on_frame: Optional[Callable[[FrameResult], None]]) -> None:
        if not batch:
            return
        evaluation = self.evaluation
        inference_s = 0.0
        if segmenter is not None:
            start = time.perf_counter()
            labels = [p.labels for p in segmenter.predict([w.scored for w in batch])]
            inference_s = (time.perf_counter() - start) / len(batch)
        else:
            labels = [w.scored for w in batch]
        groups = evaluation.groups
        for work, pred in zip(batch, labels):
            start = time.perf_counter()
            if self._to_train is not None:
                pred = self._to_train[_as_uint8(pred)]
            # Added straight into the totals, so the iIoU sums grow in the official order
            # (merging per-frame subtotals would round differently); the frame's own scores
            # come from its share of the confusion matrix.
            before = evaluation.counts.confusion.copy()
            evaluation.counts.add(work.gt, pred, work.instances)
            frame = Counts(evaluation.counts.confusion - before)
            if groups.official:
                frame_scores = Scores.from_counts(frame)
                accuracy, miou = frame_scores.pixel_accuracy, frame_scores.miou
            else:
                iou, accuracy = groups.class_iou(frame)
                miou = mean_defined(iou.tolist())
            scoring_s = time.perf_counter() - start
            row = FrameResult(work.stamp_ns, accuracy, miou, work.decode_s * 1e3,
                              inference_s * 1e3, scoring_s * 1e3)
            evaluation.frames.append(row)
            evaluation.timing.decode_s += work.decode_s
            evaluation.timing.inference_s += inference_s
            evaluation.timing.scoring_s += scoring_s
            if on_frame is not None:
                on_frame(row)
        batch.clear()

    def _skip(self, stamp: int, reason: str) -> None:
        _LOG.info('%s: frame at stamp %d ns skipped: %s', self.bag, stamp, reason)
        self.evaluation.skipped.append(SkippedFrame(stamp, reason))

    def _list_unmatched(self, seen: dict[str, list[int]], matched: dict[str, Counter],
                        errors: dict[str, BagError], cutoff: Optional[int]) -> None:
        """List every part that was read but not scored, with the reason.

        Frames that never got all their parts (their part lies beyond damage, or is missing,
        or came out of order), ground truth without a frame, and duplicate stamps (a second
        message with a stamp already used). With ``cutoff`` (a run stopped early), stamps at
        or after it are left out: their partners were never read.
        """
        tolerance = self.options.tolerance_ns
        window = f'{tolerance / 1e6:g} ms'
        ordered = {key: sorted(stamps) for key, stamps in seen.items()}
        last_read = {key: ordered[key][-1] if ordered[key] else None for key in errors}
        plural, single = self._role_nouns()

        def near(key: str, stamp: int) -> list[int]:
            stamps = ordered.get(key, [])
            pos = bisect.bisect_left(stamps, stamp - tolerance)
            return stamps[pos:bisect.bisect_right(stamps, stamp + tolerance)]

        def missing(key: str, stamp: int) -> str:
            end = last_read.get(key, -1)
            if key in errors and (end is None or stamp > end - tolerance):
                return f'{plural[key]} lost to the damage in the bag'
            return f'no {plural[key]} within {window}'

        skipped = []
        for key, stamps in ordered.items():
            for stamp, count in sorted(Counter(stamps).items()):
                used = matched[key][stamp]
                if used >= count or (cutoff is not None and stamp >= cutoff):
                    continue
                if used:
                    reason = (f'duplicate stamp: {count} {plural[key]} have it; one was used, '
                              f'{count - used} dropped')
                elif key == _REF:
                    reasons = [missing(k, stamp) for k in ordered if k != _REF
                               and not near(k, stamp)]
                    reason = '; '.join(reasons) or 'its ground truth came out of order'
                    if count > 1:
                        reason += f' ({count} {plural[_REF]} have this stamp)'
                else:
                    frames = near(_REF, stamp)
                    if any(not matched[_REF][ref] for ref in frames):
                        continue  # listed with its frame
                    if key == _INST and any(not matched[_GT][g] for g in near(_GT, stamp)):
                        continue  # listed with its ground truth
                    if frames:
                        reason = (f'{single[key]} not used: another one within {window} was '
                                  'matched to its frame')
                    else:
                        reason = f'{single[key]} without a {single[_REF]}'
                skipped.append(SkippedFrame(stamp, reason))
        if skipped:
            _LOG.info('%s: %d frames or parts that could not be scored are listed', self.bag,
                      len(skipped))
        self.evaluation.skipped = sorted(set(self.evaluation.skipped) | set(skipped))

    def _role_nouns(self) -> tuple[dict[str, str], dict[str, str]]:
        """Plural and singular names of what each stream holds, for the skip reasons."""
        plural = {key: text for key, (text, _) in _ROLE_TEXT.items()}
        single = {_REF: 'camera image', _GT: 'ground truth', _INST: 'instance ids'}
        if self.options.predictions_topic:
            plural[_REF], single[_REF] = 'predicted trainIds', 'prediction'
        return plural, single


# --------------------------------------------------------------------------------------------
# Shards: load and merge


# Caps on the shard files merge reads: metrics.json lists every skipped frame (~100 bytes
# each), frames.csv one ~100-byte row per frame; 64 MiB / 256 MiB are runs of millions.
_MAX_METRICS_BYTES = 64 * 2**20
_MAX_FRAMES_CSV_BYTES = 256 * 2**20


class _Bad(Exception):
    """Internal: a field of a shard file that is not what :func:`write_outputs` writes."""


def _get(data: dict, key: str, kinds: tuple, default: Any = None) -> Any:
    value = data.get(key, default)
    if value is not None and (not isinstance(value, kinds) or isinstance(value, bool)
                              and bool not in kinds):
        raise _Bad(f'{key!r} is {type(value).__name__}')
    return value


def _count(value: Any, what: str, low: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value < 2**63:
        raise _Bad(f'{what} is {value!r}, not an integer >= {low}')
    return value


def _stamp(value: Any, what: str) -> int:
    """Return a header stamp in ns: any int64 (stamps before 1970 exist in simulations)."""
    if isinstance(value, bool) or not isinstance(value, int) or not -2**63 <= value < 2**63:
        raise _Bad(f'{what} is {value!r}, not an int64 stamp')
    return value


# A stage time no run reaches (about 3000 years): shards' times add up, and a sum that
# overflowed to infinity could not be written back as JSON.
_MAX_SECONDS = 1e11


def _seconds(value: Any, what: str) -> float:
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not 0 <= value <= _MAX_SECONDS:
        raise _Bad(f'{what} is {value!r}, not a number of seconds 0..{_MAX_SECONDS:g}')
    return float(value)


def _parse_metrics(data: Any, evaluation: Evaluation) -> None:
    """Fill ``evaluation`` from a ``metrics.json`` document, checking every field used."""
    if not isinstance(data, dict):
        raise _Bad(f'the document is a {type(data).__name__}, not an object')
    model = _get(data, 'model', (dict,))
    if model is not None:
        size = model.get('input_size')
        if not (isinstance(size, list) and len(size) == 2):
            raise _Bad('model.input_size is not [height, width]')
        texts = [_get(model, k, (str,), '') for k in ('device', 'precision', 'tta')]
        name = _get(model, 'name', (str,))
        if not name:
            raise _Bad('model.name is missing')
        evaluation.model = ModelInfo(name, _get(model, 'weights', (str,)), *texts,
                                     (_count(size[0], 'model.input_size'),
                                      _count(size[1], 'model.input_size')))
    topics = _get(data, 'topics', (dict,)) or {}
    if not all(isinstance(k, str) and (v is None or isinstance(v, str))
               for k, v in topics.items()):
        raise _Bad('topics is not {role: topic}')
    shard = _get(data, 'shard', (list,))
    if shard is not None:
        if len(shard) != 2:
            raise _Bad(f'shard is {shard!r}, not [i, n]')
        index, count = _count(shard[0], 'shard'), _count(shard[1], 'shard', 1)
        if index >= count:
            raise _Bad(f'shard {index}/{count} does not exist')
        evaluation.shard = (index, count)
    limit = _get(data, 'limit', (int,))
    evaluation.limit = None if limit is None else _count(limit, 'limit', 1)
    evaluation.bag = _get(data, 'bag', (str,))
    evaluation.topics = dict(topics)
    evaluation.partial = bool(_get(data, 'partial', (bool,), False))
    evaluation.error = _get(data, 'error', (str,))
    skipped = _get(data, 'skipped', (list,), [])
    evaluation.skipped = []
    for entry in skipped:
        if not isinstance(entry, dict) or not isinstance(entry.get('reason'), str):
            raise _Bad('skipped holds an entry that is not {stamp_ns, reason}')
        evaluation.skipped.append(SkippedFrame(_stamp(entry.get('stamp_ns'), 'a skipped stamp'),
                                               entry['reason']))
    if data.get('label_space') is not None:
        try:
            evaluation.groups = ClassGroups.from_dict(data['label_space'])
        except ValueError as exc:
            raise _Bad(str(exc)) from None
    timing = _get(data, 'timing', (dict,)) or {}
    stages = ('decode_s', 'inference_s', 'scoring_s', 'wall_s')
    evaluation.timing = StageTiming(
        *(_seconds(timing.get(k), f'timing.{k}') for k in stages),
        workers=_count(timing.get('workers') or 1, 'timing.workers', 1))


def _float(text: str) -> float:
    if text in ('', 'nan', 'None'):
        return math.nan
    value = float(text)
    if math.isinf(value):
        raise ValueError(f'{text!r} is infinite')
    return value


def _check_capped(path: Path, limit: int) -> None:
    """Refuse anything but a regular file (a pipe would block) of at most ``limit`` bytes."""
    if not path.is_file():
        raise _Bad('not a regular file')
    size = path.stat().st_size
    if size > limit:
        raise _Bad(f'{size} bytes, more than any evaluation writes ({limit} at most)')


def load_evaluation(folder: PathLike) -> Evaluation:
    """Read an evaluation written by :func:`write_outputs` (a shard) back.

    ``counts.npz`` is required; ``metrics.json`` (run description, timing, skipped frames)
    and ``frames.csv`` (per-frame rows) are read when present. All three are hostile input:
    size-capped, every field checked.

    Args:
        folder: the output folder, or its ``counts.npz``.

    Raises:
        CitysegError: no counts file, or a damaged or inconsistent shard; one line that names
            the file.
    """
    folder = Path(folder)
    if folder.is_file():
        if folder.name != 'counts.npz':
            raise CitysegError(f'{folder} is a file; pass the output folder of an evaluate run '
                               '(or its counts.npz)')
        folder = folder.parent
    elif not folder.is_dir():
        raise CitysegError(f'{folder} not found; pass the output folders of evaluate runs')
    counts = Counts.load(folder / 'counts.npz')
    evaluation = Evaluation(counts=counts, shard=None, merged_from=[str(folder)])
    metrics_path = folder / 'metrics.json'
    # A dangling link or a loop of links "does not exist" but is no absent file: refused below.
    if metrics_path.exists() or metrics_path.is_symlink():
        try:
            _check_capped(metrics_path, _MAX_METRICS_BYTES)
            _parse_metrics(json.loads(metrics_path.read_bytes()), evaluation)
        except (OSError, ValueError, RecursionError, _Bad) as exc:
            raise CitysegError(f'{metrics_path} is not a metrics.json of evaluate ({_text(exc)}'
                               '); re-run that shard, or remove the file to merge its counts '
                               'alone') from None
    frames_path = folder / 'frames.csv'
    if frames_path.exists() or frames_path.is_symlink():
        try:
            _check_capped(frames_path, _MAX_FRAMES_CSV_BYTES)
            with frames_path.open(newline='', encoding='utf-8') as handle:
                rows = csv.DictReader(handle)
                if rows.fieldnames is None or list(rows.fieldnames) != list(_FRAME_FIELDS):
                    raise _Bad(f'its columns are {rows.fieldnames}, not '
                               f'{", ".join(_FRAME_FIELDS)}')
                evaluation.frames = [
                    FrameResult(_stamp(int(row['stamp_ns']), 'stamp_ns'),
                                *(_float(row[k]) for k in _FRAME_FIELDS[1:]))
                    for row in rows]
        except (OSError, ValueError, TypeError, csv.Error, _Bad) as exc:
            raise CitysegError(f'{frames_path} is not a frames.csv of evaluate ({_text(exc)}); '
                               're-run that shard, or remove the file to merge without '
                               'per-frame rows') from None
        if len(evaluation.frames) != counts.frames:
            raise CitysegError(f'{frames_path} lists {len(evaluation.frames)} frames but '
                               f'counts.npz counts {counts.frames}; the shard is inconsistent, '
                               're-run it')
    return evaluation


def _text(exc: BaseException) -> str:
    """One short line for an error message."""
    text = ' '.join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + '...'


def merge_evaluations(parts: Sequence[Evaluation]) -> Evaluation:
    """Add up shard evaluations (or evaluations of different bags) into one.

    Counts, frames and stage times add up; skipped frames are listed once. The result is
    partial when any part is, or when a bag's shards are not all there.

    Raises:
        ConfigError: no parts; a shard given twice; parts scored by different models, or
            some by a model and some from recorded predictions, or in different label spaces.
    """
    if not parts:
        raise ConfigError('nothing to merge: pass the output folders of the shards')
    described = [p for p in parts if p.bag is not None]
    sources = {(p.model.name, p.model.weights and Path(p.model.weights).name)
               if p.model else ('predictions', p.topics.get('scored')) for p in described}
    if len(sources) > 1:
        raise ConfigError(f'the parts were scored differently ({sorted(map(str, sources))}); '
                          'merge only the shards of one evaluation')
    spaces = {p.groups for p in described}
    if len(spaces) > 1:
        raise ConfigError(f'the parts were scored in different label spaces '
                          f'({", ".join(sorted(g.name for g in spaces))}); merge only the shards '
                          'of one evaluation')
    shards: dict[tuple[str, int], set[int]] = {}
    for part in described:
        if part.shard is None:
            continue
        key = (Path(part.bag).name, part.shard[1])
        if part.shard[0] in shards.setdefault(key, set()):
            raise ConfigError(f'shard {part.shard[0]}/{part.shard[1]} of {key[0]} is given twice; '
                              'pass each shard folder once')
        shards[key].add(part.shard[0])
    errors = [f'{", ".join(p.merged_from)}: {p.error}' for p in parts if p.partial]
    for (bag, count), present in sorted(shards.items()):
        if len(present) < count:  # name the first few: count may be huge (any int64)
            first = list(itertools.islice((i for i in range(count) if i not in present), 8))
            more = count - len(present) - len(first)
            errors.append(f'shard(s) {", ".join(f"{i}/{count}" for i in first)}'
                          f'{f" and {more} more" if more else ""} of {bag} missing')
    merged = Evaluation(shard=None)
    for part in parts:
        merged.counts.merge(part.counts)
        merged.frames.extend(part.frames)
        for name in ('decode_s', 'inference_s', 'scoring_s', 'wall_s'):
            setattr(merged.timing, name,
                    getattr(merged.timing, name) + getattr(part.timing, name))
        merged.merged_from.extend(part.merged_from)
    merged.timing.workers = sum(part.timing.workers for part in parts)
    merged.frames.sort(key=itemgetter(0))
    merged.skipped = sorted({s for part in parts for s in part.skipped})
    bags = sorted({p.bag for p in described})
    merged.bag = ', '.join(bags) if bags else None
    merged.model = next((p.model for p in described if p.model), None)
    merged.groups = next(iter(spaces), ClassGroups.trainid())
    merged.topics = next((dict(p.topics) for p in described if p.topics), {})
    limits = {p.limit for p in described}
    merged.limit = limits.pop() if len(limits) == 1 else None
    merged.partial = bool(errors)
    merged.error = '; '.join(errors) or None
    return merged


# --------------------------------------------------------------------------------------------
# Writers


def write_outputs(evaluation: Evaluation, out_dir: PathLike) -> list[Path]:
    """Write :data:`OUTPUT_FILES` into ``out_dir`` (created if needed); return their paths."""
    out = Path(out_dir)
    check_output_folder(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f'cannot create the output folder {out}: {exc.strerror}; pass a '
                          'writable --out') from exc
    paths = [out / name for name in OUTPUT_FILES]
    try:
        write_metrics_json(evaluation, paths[0])
        write_report(evaluation, paths[1])
        write_confusion_png(evaluation, paths[2])
        write_frames_csv(evaluation, paths[3])
        evaluation.counts.save(paths[4])
    except OSError as exc:
        raise ConfigError(f'cannot write {exc.filename or out}: {exc.strerror or exc}; pass a '
                          'writable --out') from exc
    return paths


def check_output_folder(out_dir: PathLike, create: bool = False) -> None:
    """Check, before a long run, that :func:`write_outputs` can write into ``out_dir``.

    Args:
        out_dir: the output folder.
        create: also create it (with its parents), so a path that cannot be made fails now.

    Raises:
        ConfigError: ``out_dir`` (or a folder above it) is a file, one of
            :data:`OUTPUT_FILES` in it is a folder, pipe or device, or it cannot be created.
    """
    out = Path(out_dir)
    for parent in (out, *out.parents):
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f'--out {out}: {parent} is a file, not a folder; pass a '
                                  'folder to write the results into')
            break
    for name in OUTPUT_FILES:
        if (out / name).is_dir():
            raise ConfigError(f'--out {out}: {out / name} is a folder; remove it or pass '
                              'another --out')
        if (out / name).exists() and not (out / name).is_file():  # writing to a pipe blocks
            raise ConfigError(f'--out {out}: {out / name} is not a regular file (a pipe or '
                              'device); remove it or pass another --out')
    if create:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f'cannot create the output folder {out}: '
                              f'{exc.strerror or exc}; pass a writable --out') from None


def write_metrics_json(evaluation: Evaluation, path: PathLike) -> None:
    """Write :meth:`Evaluation.to_dict` as JSON (strict: undefined scores are null)."""
    text = json.dumps(evaluation.to_dict(), indent=2, allow_nan=False)
    Path(path).write_text(text + '\n')


def write_frames_csv(evaluation: Evaluation, path: PathLike) -> None:
    """Write one row per scored frame; floats at full precision, NaN as an empty cell."""
    with Path(path).open('w', newline='') as handle:
        writer = csv.writer(handle, lineterminator='\n')
        writer.writerow(_FRAME_FIELDS)
        for row in evaluation.frames:
            writer.writerow([row.stamp_ns] + ['' if math.isnan(v) else repr(float(v))
                                              for v in row[1:]])


def _pct(value: Optional[float]) -> str:
    return 'n/a' if value is None or math.isnan(value) else f'{100 * value:.2f}'


def _ms(value: Optional[float]) -> str:
    return 'n/a' if value is None else f'{value:.1f}'


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    lines += ['| ' + ' | '.join(str(c) for c in row) + ' |' for row in rows]
    return lines + ['']


def write_report(evaluation: Evaluation, path: PathLike) -> None:
    """Write a markdown report: scores per class and category, timing, skipped frames."""
    scores = evaluation.space_scores()
    conf = scores.confusion
    groups = evaluation.groups
    lines = ['# Cityscapes evaluation', '']
    source = 'recorded predictions on ' + str(evaluation.topics.get('scored'))
    if evaluation.model is not None:
        m = evaluation.model
        source = (f'{m.name} (weights {m.weights or "random"}, {m.device}, {m.precision}, '
                  f'tta {m.tta}, input {m.input_size[0]}x{m.input_size[1]})')
    lines += [f'- bag: `{evaluation.bag}`', f'- labels: {source}',
              f'- frames scored: {evaluation.counts.frames} ({evaluation.counts.instance_frames}'
              f' with instance ids), skipped: {len(evaluation.skipped)}',
              f'- label space: {groups.name} ({groups.kind}, {len(groups.ids)} classes)']
    if evaluation.shard is not None and evaluation.shard[1] > 1:
        lines.append(f'- shard: {evaluation.shard[0]}/{evaluation.shard[1]}')
    if evaluation.limit is not None:
        lines.append(f'- limit: first {evaluation.limit} frames')
    if evaluation.merged_from and evaluation.shard is None:
        lines.append(f'- merged from: {", ".join(evaluation.merged_from)}')
    lines.append('')
    if evaluation.partial:
        lines += [f'> **Partial result**: {evaluation.error}. The scores cover only the '
                  f'{evaluation.counts.frames} frames scored.', '']
    what = ('Official Cityscapes scores (cityscapesScripts definitions)' if groups.kind
            in ('trainid', 'labelid', 'category') else
            f'Scores of the classes of label map {groups.name} (official IoU rules)')
    lines += ['## Summary', '', f'{what}, in percent; n/a = undefined (no GT and no '
              'prediction).', '']
    lines += _table(['score', 'classes', 'categories'], [
        ['IoU (mean)', _pct(scores.miou), _pct(scores.miou_category)],
        ['iIoU (mean)', _pct(scores.iiou), _pct(scores.iiou_category)],
        ['pixel accuracy', _pct(scores.pixel_accuracy), '']])
    lines += ['## Classes', '']
    rows = []
    for index, name in enumerate(scores.names):
        rows.append([name, _pct(scores.class_iou[name]),
                     _pct(scores.class_iiou[name]) if name in scores.class_iiou else '',
                     int(conf[index].sum()), int(conf[:, index].sum())])
    lines += _table(['class', 'IoU %', 'iIoU %', 'GT pixels', 'predicted pixels'], rows)
    if scores.category_iou and groups.kind != 'category':
        lines += ['## Categories', '']
        lines += _table(['category', 'IoU %', 'iIoU %'], [
            [name, _pct(scores.category_iou[name]),
             _pct(scores.category_iiou[name]) if name in scores.category_iiou else '']
            for name in scores.category_iou])
    timing = evaluation.timing_dict()
    lines += ['## Timing', '']
    stages = [('read + decode', 'decode'), ('inference', 'inference'), ('scoring', 'scoring')]
    lines += _table(['stage', 'ms/frame mean', 'ms/frame p50', 'ms/frame p95', 'total s'], [
        [label, _ms(timing[f'{key}_ms']['mean']), _ms(timing[f'{key}_ms']['p50']),
         _ms(timing[f'{key}_ms']['p95']), f'{timing[f"{key}_s"]:.2f}']
        for label, key in stages])
    fps = timing['frames_per_s']
    workers = f' per worker ({timing["workers"]} runs)' if timing['workers'] > 1 else ''
    lines += [f'Throughput: {"n/a" if fps is None else f"{fps:.2f}"} frames/s{workers}, '
              f'{timing["wall_s"]:.1f} s wall time.', '']
    lines += [f'## Skipped frames ({len(evaluation.skipped)})', '']
    if evaluation.skipped:
        lines += _table(['stamp (ns)', 'reason'],
                        [[s.stamp_ns, s.reason] for s in evaluation.skipped[:_REPORT_SKIPPED]])
        if len(evaluation.skipped) > _REPORT_SKIPPED:
            lines += [f'... and {len(evaluation.skipped) - _REPORT_SKIPPED} more: see '
                      '`skipped` in metrics.json.', '']
    else:
        lines += ['None.', '']
    Path(path).write_text('\n'.join(lines))


def write_confusion_png(evaluation: Evaluation, path: PathLike) -> None:
    """Plot the row-normalised confusion matrix (GT rows, predicted columns) with class names.

    Rows are divided by all the pixels of the GT class, so a row sums to the class recall plus
    its misses; a last column ``(none)`` appears when some predictions lie outside the classes
    (of the label space: 19 trainIds, 7 categories or a label map's).
    """
    # Lazy, and through the Agg canvas rather than pyplot: no GUI backend, no global state.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    scores = evaluation.space_scores()
    names = list(scores.names)
    conf = scores.confusion.astype(np.float64)
    columns = list(names)
    if not conf[:, len(names)].any():
        conf = conf[:, :len(names)]
    else:
        columns.append('(none)')
    totals = conf.sum(axis=1, keepdims=True)
    norm = np.divide(conf, totals, out=np.zeros_like(conf), where=totals > 0)
    fig = Figure(figsize=(11, 9.5), dpi=100, layout='constrained')
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(norm, cmap='Blues', vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(columns)), columns, rotation=60, ha='right', fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xlabel('predicted class')
    ax.set_ylabel('ground truth class')
    title = f'Confusion, row-normalised ({evaluation.counts.frames} frames'
    ax.set_title(title + (', partial)' if evaluation.partial else ')'))
    for row, col in zip(*np.nonzero(norm >= 0.005)):
        value = norm[row, col]
        ax.text(col, row, f'{100 * value:.0f}', ha='center', va='center', fontsize=6,
                color='white' if value > 0.5 else 'black')
    fig.colorbar(image, ax=ax, fraction=0.04, label='fraction of the GT class pixels')
    fig.savefig(os.fspath(path))
