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

"""Table: the bag evaluator's frames/s, by stage, beside cityscapesscripts on the same frames.

Why: ``evaluate`` replays a whole split; this says what a frame costs apart from the model
(reading and decoding the bag, scoring) and what it costs with one. A small mcap bag of
2048x1024 frames is written to a temporary folder, in the make_bag layout plus a predictions
topic: the real gtFine frames of ``../shared`` when present (generated street scenes otherwise),
with perturbed GT as the recorded predictions. Rows:

- the evaluator scoring the recorded predictions (no model: read + decode + score);
- the evaluator running random-weight ESPNetv2 at its test size (the model's share on top);
- cityscapesscripts' ``evaluatePair`` on the same predictions as PNG files, as shipped and with
  the PNGs already decoded, after a check that its scores equal the evaluator's.
"""

import logging
from pathlib import Path
import statistics
import tempfile
from typing import Optional

from cityseg_ros.bags import (BagWriter, TOPIC_GT_INSTANCE_IDS, TOPIC_GT_LABEL_IDS,
                              TOPIC_LEFT_IMAGE)
from cityseg_ros.bench import metrics_table
from cityseg_ros.bench.timing import markdown_table
from cityseg_ros.errors import CitysegError
from cityseg_ros.evaluation import BagEvaluator, EvalOptions, Evaluation
from cityseg_ros.labels import TRAINID_TO_ID
import cv2
import numpy as np

__all__ = ['run']

_LOG = logging.getLogger(__name__)
_PRED_TOPIC = '/stereo/left/semantic/labels'
_START_NS = 1_600_000_000_000_000_000
_PERIOD_NS = 58_823_529  # 17 Hz, as make_bag stamps
_HEADER = ['pipeline', 'frames/s (p50 of runs)', 'read + decode ms/frame',
           'inference ms/frame', 'scoring ms/frame', 'scoring Mpixel/s']


def _write_bag(path: Path, frames: list) -> None:
    rng = np.random.default_rng(1)
    with BagWriter(path, storage='mcap') as bag:
        for index, (gt, pred, inst) in enumerate(frames):
            stamp = _START_NS + index * _PERIOD_NS
            left = rng.integers(0, 256, (*gt.shape, 3), dtype=np.uint8)
            bag.write_image(TOPIC_LEFT_IMAGE, left, 'rgb8', stamp, 'left')
            bag.write_image(TOPIC_GT_LABEL_IDS, gt, 'mono8', stamp, 'left')
            bag.write_image(TOPIC_GT_INSTANCE_IDS, inst.astype(np.uint16), 'mono16', stamp,
                            'left')
            bag.write_image(_PRED_TOPIC, pred, 'mono8', stamp, 'left')


def _median_stage(runs: list[Evaluation], stage: str) -> float:
    return statistics.median(getattr(row, stage) for ev in runs for row in ev.frames)


def _evaluator_row(name: str, bag: Path, runs: int, pixels: int, segmenter=None,
                   options: Optional[EvalOptions] = None) -> tuple[list, Evaluation]:
    options = options or EvalOptions()
    BagEvaluator(bag, options).run(segmenter)  # warm-up: file cache, lazy initialisation
    done = [BagEvaluator(bag, options).run(segmenter) for _ in range(runs)]
    fps = statistics.median(ev.frames_per_s for ev in done)
    scoring = _median_stage(done, 'scoring_ms')
    inference = f'{_median_stage(done, "inference_ms"):.1f}' if segmenter else '-'
    return [name, f'{fps:.2f}', f'{_median_stage(done, "decode_ms"):.1f}', inference,
            f'{scoring:.1f}', f'{pixels / scoring / 1e3:.0f}'], done[-1]


def _official_rows(frames: list, scores, runs: int, pixels: int, tmp: Path,
                   notes: list) -> list:
    """Check, then time, cityscapesscripts on the same frames as PNG files; failures are rows."""
    name = 'cityscapesscripts evaluatePair'
    files = []
    for index, (gt, pred, inst) in enumerate(frames):
        gt_file = str(tmp / f'f{index}_gtFine_labelIds.png')
        pred_file = str(tmp / f'f{index}_pred.png')
        cv2.imwrite(gt_file, gt)
        cv2.imwrite(gt_file.replace('labelIds', 'instanceIds'), inst.astype(np.uint16))
        cv2.imwrite(pred_file, TRAINID_TO_ID[pred])
        files.append((pred_file, gt_file))
    with metrics_table._official_module() as ev:
        if isinstance(ev, Exception):
            return [[name, f'not importable: {ev}', '', '', '', '']]
        try:
            notes.append('evaluator ' + metrics_table._official_check(ev, files, scores))
            shipped, compute = metrics_table._time_official(ev, files, runs)
        except SystemExit as exc:  # its printError() exits the process on bad input
            return [[name, f'failed: printError exited with {exc.code}', '', '', '', '']]
    rows = []
    for label, timing in ((f'{name}, decoded images (scoring only)', compute),
                          (f'{name} as shipped (reads 3 PNGs)', shipped)):
        rows.append([label, f'{1e3 / timing.median_ms:.2f}', '-', '-',
                     f'{timing.median_ms:.1f}', f'{pixels / timing.median_ms / 1e3:.0f}'])
    return rows


def run(runs: int = 3, frames: int = 4, device: str = 'auto',
        cityscapes_root: Optional[Path] = None) -> str:
    """Time the evaluator on a generated bag, with and without a model; return markdown.

    Args:
        runs: timed passes over the bag per row (after one warm-up pass).
        frames: frames in the bag.
        device: where the model row runs.
        cityscapes_root: a Cityscapes root with ``gtFine``; defaults to ``../shared``'s.
    """
    if runs < 1 or frames < 1:
        raise ValueError(f'runs and frames must be >= 1, got {runs} and {frames}')
    rng = np.random.default_rng(0)
    root = Path(cityscapes_root or metrics_table._DEFAULT_ROOT)
    data = metrics_table._real_frames(root, frames, rng)
    source = 'real gtFine frames, perturbed GT as the predictions'
    if not data:
        data = metrics_table._generated_frames(frames, rng)
        source = 'generated street-like frames (no Cityscapes gtFine found)'
    height, width = data[0][0].shape
    pixels = height * width
    notes = [f'mcap bag of {len(data)} frames of {width}x{height} ({source}); median over '
             f'{runs} passes after one warm-up pass; stage times are per-frame medians.']
    rows = []
    with tempfile.TemporaryDirectory(prefix='cityseg_eval_bench_') as tmp:
        bag = Path(tmp) / 'bag'
        _write_bag(bag, data)
        row, recorded = _evaluator_row('evaluate --predictions-topic (no model)', bag, runs,
                                       pixels, options=EvalOptions(predictions_topic=_PRED_TOPIC))
        rows.append(row)
        rows.append(_model_row(bag, runs, pixels, device))
        rows += _official_rows(data, recorded.scores, runs, pixels, Path(tmp), notes)
    return '\n'.join(notes) + '\n\n' + markdown_table(_HEADER, rows)


def _model_row(bag: Path, runs: int, pixels: int, device: str) -> list:
    from cityseg_ros.engine import Segmenter

    name = 'evaluate, espnetv2 (random weights)'
    try:
        seg = Segmenter('espnetv2', weights=None, device=device)
    except CitysegError as exc:
        return [name, f'error: {exc}', '', '', '', '']
    name = f'{name}, {seg.device}, input {seg.input_size[1]}x{seg.input_size[0]}'
    try:
        row, _ = _evaluator_row(name, bag, runs, pixels, segmenter=seg)
    except (RuntimeError, MemoryError) as exc:  # OOM becomes a row
        return [name, f'error: {str(exc).splitlines()[0][:80]}', '', '', '', '']
    finally:
        seg.close()
    return row
