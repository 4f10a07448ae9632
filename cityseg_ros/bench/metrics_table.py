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

"""Table: scoring time per 2048x1024 frame, ours against cityscapesscripts' ``evaluatePair``.

Why: the evaluator scores every frame of a bag, so its per-frame cost is what the official
script would cost per frame. Both run on the same frames (the real gtFine frames in
``../shared`` when present, generated ones otherwise) after a check that all scores agree.
The official function reads PNG files, so it is timed twice: as shipped (decoding three PNGs per
frame) and with the decoded images handed to it (scoring only, the fair comparison with ours,
which takes arrays as they come out of a bag).
"""

import contextlib
import importlib
from pathlib import Path
import tempfile
from typing import Iterator, Optional

from cityseg_ros.bench.timing import markdown_table, time_call
from cityseg_ros.labels import (CATEGORY_NAMES, CLASS_NAMES, ID_TO_TRAINID, INSTANCE_CLASSES,
                                NUM_CLASSES, TRAINID_TO_ID)
from cityseg_ros.metrics import Counts, INSTANCE_CATEGORIES, Scores
import cv2
import numpy as np

__all__ = ['run']

_DEFAULT_ROOT = Path(__file__).resolve().parents[3] / 'shared' / 'data' / 'cityscapes'
_HEIGHT, _WIDTH = 1024, 2048
_EVAL_MODULE = 'cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling'
_TOLERANCE = 1e-9

Frame = tuple[np.ndarray, np.ndarray, np.ndarray]  # gt labelIds, pred trainIds, instanceIds


def _perturb(rng: np.random.Generator, gt_label_ids: np.ndarray) -> np.ndarray:
    """Make a plausible network output: shifted boundaries, wrong blobs, void blobs."""
    pred = np.roll(ID_TO_TRAINID[gt_label_ids], (int(rng.integers(-6, 7)),
                                                 int(rng.integers(-9, 10))), axis=(0, 1))
    height, width = pred.shape
    for _ in range(16):
        y, x = int(rng.integers(0, height - 64)), int(rng.integers(0, width - 128))
        dy, dx = int(rng.integers(8, 160)), int(rng.integers(8, 320))
        pred[y:y + dy, x:x + dx] = rng.choice([*range(len(CLASS_NAMES)), 255])
    return pred


def _real_frames(root: Path, count: int, rng: np.random.Generator) -> list[Frame]:
    files = sorted((root / 'gtFine').glob('*/*/*_gtFine_labelIds.png'))
    frames = []
    for index in range(count if files else 0):
        path = files[index % len(files)]
        gt = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        inst = cv2.imread(str(path).replace('labelIds', 'instanceIds'), cv2.IMREAD_UNCHANGED)
        if gt is None or inst is None or gt.shape != (_HEIGHT, _WIDTH):
            return []
        frames.append((gt, _perturb(rng, gt), inst))
    return frames


def _generated_frames(count: int, rng: np.random.Generator) -> list[Frame]:
    """Street-like scenes: sky, buildings, road bands, then boxes of objects and instances."""
    frames = []
    for _ in range(count):
        gt = np.empty((_HEIGHT, _WIDTH), np.uint8)
        gt[:300], gt[300:600], gt[600:] = 23, 11, 7  # sky, building, road (labelIds)
        inst = gt.astype(np.uint16)
        for index in range(40):
            label = int(rng.choice([17, 20, 21, 8, 4, 24, 25, 26, 26, 26, 27, 28, 32, 33]))
            y, x = int(rng.integers(200, _HEIGHT - 50)), int(rng.integers(0, _WIDTH - 50))
            dy, dx = int(rng.integers(20, 250)), int(rng.integers(20, 400))
            gt[y:y + dy, x:x + dx] = label
            inst[y:y + dy, x:x + dx] = label * 1000 + index if label >= 24 else label
        frames.append((gt, _perturb(rng, gt), inst))
    return frames


@contextlib.contextmanager
def _official_module() -> Iterator:
    """Import the official module with ``np.in1d`` (removed in numpy 2.4) restored meanwhile.

    Yields the module, or the exception that prevented importing it.
    """
    added = not hasattr(np, 'in1d')
    if added:
        np.in1d = np.isin
    try:
        try:
            module = importlib.import_module(_EVAL_MODULE)
        except (ImportError, ValueError) as exc:  # ValueError: a bad CITYSCAPES_EXPORT_DIR
            module = exc
        yield module
    finally:
        if added:
            del np.in1d


def _official_args(ev):
    args = ev.CArgs()
    vars(args).update(vars(ev.args))
    args.quiet, args.JSONOutput, args.colorized = True, False, False
    args.evalInstLevelScore, args.evalPixelAccuracy = True, False
    args.bold = args.nocol = ''
    return args


def _official_scores(ev, args, conf, stats) -> dict[str, float]:
    """Every score the official ``evaluateImgLists`` computes, by name."""
    out = {}
    classes = {}
    inst_classes = {}
    for label in args.evalLabels:
        name = ev.id2label[label].name
        classes[name] = ev.getIouScoreForLabel(label, conf, args)
        inst_classes[name] = ev.getInstanceIouScoreForLabel(label, conf, stats, args)
    categories = {c: ev.getIouScoreForCategory(c, conf, args) for c in ev.category2labels}
    inst_categories = {c: ev.getInstanceIouScoreForCategory(c, conf, stats, args)
                       for c in ev.category2labels}
    out.update({f'IoU {k}': v for k, v in classes.items() if k in CLASS_NAMES})
    out.update({f'iIoU {k}': inst_classes[k] for k in INSTANCE_CLASSES})
    out.update({f'cat IoU {k}': categories[k] for k in CATEGORY_NAMES})
    out.update({f'cat iIoU {k}': inst_categories[k] for k in INSTANCE_CATEGORIES})
    out['mIoU'] = ev.getScoreAverage(classes, args)
    out['iIoU'] = ev.getScoreAverage(inst_classes, args)
    out['mIoU category'] = ev.getScoreAverage(categories, args)
    out['iIoU category'] = ev.getScoreAverage(inst_categories, args)
    return out


def _our_scores(scores: Scores) -> dict[str, float]:
    out = {f'IoU {k}': v for k, v in scores.class_iou.items()}
    out.update({f'iIoU {k}': v for k, v in scores.class_iiou.items()})
    out.update({f'cat IoU {k}': v for k, v in scores.category_iou.items()})
    out.update({f'cat iIoU {k}': v for k, v in scores.category_iiou.items()})
    out.update({'mIoU': scores.miou, 'iIoU': scores.iiou, 'mIoU category': scores.miou_category,
                'iIoU category': scores.iiou_category})
    return out


def _max_difference(ours: dict[str, float], official: dict[str, float]) -> float:
    worst = 0.0
    for name, value in official.items():
        mine = ours[name]
        if np.isnan(value) or np.isnan(mine):
            worst = max(worst, 0.0 if np.isnan(value) and np.isnan(mine) else np.inf)
        else:
            worst = max(worst, abs(mine - value))
    return worst


def _cycler(frames: list, fn):
    """Return a no-argument callable that applies ``fn`` to the next frame on each call."""
    state = {'next': 0}

    def call():
        fn(frames[state['next'] % len(frames)])
        state['next'] += 1
    return call


def _row(name: str, timing, pixels: int, reference_ms: Optional[float]) -> list:
    speed = f'{timing.median_ms / reference_ms:.1f}x slower' if reference_ms else '1.0x'
    return [name, f'{timing.median_ms:.2f}', f'{timing.p95_ms:.2f}',
            f'{pixels / timing.median_ms / 1e3:.0f}', speed]


def run(frames: int = 4, runs: int = 5, cityscapes_root: Optional[Path] = None) -> str:
    """Time ours and the official per-frame scoring on the same frames; return a markdown table.

    Args:
        frames: distinct frames to score (real ones are reused cyclically if fewer exist).
        runs: timed passes over the frames per row (after one warm-up frame).
        cityscapes_root: a Cityscapes root with ``gtFine``; defaults to ``../shared``'s.
    """
    if frames < 1 or runs < 1:
        raise ValueError(f'frames and runs must be >= 1, got {frames} and {runs}')
    rng = np.random.default_rng(0)
    data = _real_frames(Path(cityscapes_root or _DEFAULT_ROOT), frames, rng)
    source = 'real gtFine frames, perturbed as predictions'
    if not data:
        data = _generated_frames(frames, rng)
        source = 'generated street-like frames (no Cityscapes gtFine found)'
    pixels = data[0][0].size
    notes = [f'{len(data)} frames of {data[0][0].shape[1]}x{data[0][0].shape[0]} ({source}); '
             f'numpy {np.__version__}; median and p95 of {runs * len(data)} timed frames.']

    ours = time_call(_cycler(data, lambda f: Counts().add(*f)), warmup=1, runs=runs * len(data))
    rows = [_row('cityseg_ros Counts.add (arrays)', ours, pixels, None)]
    # The worst case: salt-and-pepper predictions defeat the run-length encoding.
    noisy = []
    for gt, pred, inst in data:
        pred = pred.copy()
        flip = rng.random(pred.shape) < 0.3
        pred[flip] = rng.integers(0, len(CLASS_NAMES), int(flip.sum()))
        noisy.append((gt, pred, inst))
    timing = time_call(_cycler(noisy, lambda f: Counts().add(*f)), warmup=1,
                       runs=runs * len(data))
    rows.append(_row('cityseg_ros Counts.add, 30% pixel noise in predictions', timing, pixels,
                     ours.median_ms))
    counts = Counts()
    for frame in data:
        counts.add(*frame)
    scores = Scores.from_counts(counts)

    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for index, (gt, pred, inst) in enumerate(data):
            gt_file = f'{tmp}/f{index}_gtFine_labelIds.png'
            pred_file = f'{tmp}/f{index}_pred.png'
            cv2.imwrite(gt_file, gt)
            cv2.imwrite(gt_file.replace('labelIds', 'instanceIds'), inst.astype(np.uint16))
            cv2.imwrite(pred_file, TRAINID_TO_ID[pred])
            files.append((pred_file, gt_file))

        rows += _official_rows(files, scores, runs, pixels, ours.median_ms, notes)
    header = ['scoring', 'ms/frame p50', 'ms/frame p95', 'Mpixel/s', 'vs ours']
    return '\n'.join(notes) + '\n\n' + markdown_table(header, rows)


def _official_rows(files, scores: Scores, runs: int, pixels: int, ours_ms: float,
                   notes: list) -> list:
    """Check equality with, then time, cityscapesscripts; failures become rows."""
    name = 'cityscapesscripts evaluatePair'
    with _official_module() as ev:
        if isinstance(ev, Exception):
            return [[name, f'not importable: {ev}', '', '', '']]
        try:
            notes.append(_official_check(ev, files, scores))
            shipped, compute = _time_official(ev, files, runs)
        except SystemExit as exc:  # its printError() exits the process on bad input
            return [[name, f'failed: printError exited with {exc.code}', '', '', '']]
    notes.append(f'speed-up per frame: {shipped.median_ms / ours_ms:.1f}x against evaluatePair '
                 f'as shipped, {compute.median_ms / ours_ms:.1f}x against its scoring alone.')
    return [_row(f'{name}, decoded images (scoring only)', compute, pixels, ours_ms),
            _row(f'{name} as shipped (reads 3 PNGs)', shipped, pixels, ours_ms)]


def _official_check(ev, files, scores: Scores) -> str:
    """Score ``files`` the official way and describe how far our ``scores`` are from it."""
    args = _official_args(ev)
    conf, stats = ev.generateMatrix(args), ev.generateInstanceStats(args)
    for pred_file, gt_file in files:
        ev.evaluatePair(pred_file, gt_file, conf, stats, {}, args)
    ours = _our_scores(scores)
    diff = _max_difference(ours, _official_scores(ev, args, conf, stats))
    train_ids = TRAINID_TO_ID[:NUM_CLASSES]
    same_conf = np.array_equal(scores.confusion[:, :-1], conf[np.ix_(train_ids, train_ids)])
    check = 'equal' if diff <= _TOLERANCE and same_conf else 'MISMATCH'
    return (f'check against cityscapesscripts: {check}, max |score difference| = {diff:.3g} '
            f'over {len(ours)} scores, confusion {"identical" if same_conf else "DIFFERENT"}; '
            f'official confusion via {"Cython" if ev.CSUPPORT else "numpy (no Cython build)"}.')


def _time_official(ev, files, runs: int):
    """Time evaluatePair as shipped, then with its three PNGs already decoded."""
    from PIL import Image  # cityscapesscripts' own image library
    args = _official_args(ev)
    conf, stats = ev.generateMatrix(args), ev.generateInstanceStats(args)

    def official(pair):
        ev.evaluatePair(pair[0], pair[1], conf, stats, {}, args)

    shipped = time_call(_cycler(files, official), warmup=1, runs=runs * len(files))
    decoded = {}
    for pred_file, gt_file in files:
        for path in (pred_file, gt_file, gt_file.replace('labelIds', 'instanceIds')):
            decoded[path] = Image.open(path)
            decoded[path].load()

    class _Decoded:
        """Stands in for PIL.Image in the module: open() returns a decoded image."""

        @staticmethod
        def open(path):  # noqa: A003 (the name PIL.Image uses)
            return decoded[path]

    real_image = ev.Image
    ev.Image = _Decoded
    try:
        compute = time_call(_cycler(files, official), warmup=1, runs=runs * len(files))
    finally:
        ev.Image = real_image
    return shipped, compute
