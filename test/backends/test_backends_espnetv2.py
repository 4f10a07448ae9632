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


"""ONNX Runtime and OpenVINO behind the Segmenter give torch's logits, labels and scores.

ESPNetv2 with the official weights at its own size: logits for batches 1 and 3 (the graph has a
dynamic batch), and the official Cityscapes evaluation of the 8 real frames, which must equal
the torch path's class mIoU within 0.0005. The engine cache is the session's (conftest.py): the
graph is exported once (that is most of the time here).
"""

from cityseg_ros.engine import Segmenter
from cityseg_ros.imageio import read_rgb, write_png
from cityseg_ros.labels import train_ids_to_label_ids
import numpy as np
import pytest
import torch

CPU_BACKENDS = ('onnxruntime', 'openvino')
REAL_FRAMES = 8
#: Largest logit difference from torch, as a fraction of max(1, max |logit|): the golden
#: fixtures' float32 tolerance (shared/reference/GOLDEN.md section 5) times 5, for the
#: runtimes' own convolution kernels (oneDNN, MLAS) and fusions.
LOGIT_TOLERANCE = 1e-4
MIOU_TOLERANCE = 0.0005
#: ESPNetv2's test size (H, W) for the official 1024x512 weights.
SIZE = (512, 1024)


def _segmenter(backend, weights, size, progress=None):
    if backend != 'torch':
        pytest.importorskip(backend)
    return Segmenter('espnetv2', weights=str(weights), device='cpu', input_size=size,
                     backend=backend, progress=progress)


@pytest.fixture(scope='module')
def torch_seg(espnetv2_weights):
    return _segmenter('torch', espnetv2_weights, SIZE)


def _batch(n):
    rng = np.random.default_rng(n)
    return [rng.integers(0, 256, SIZE + (3,), dtype=np.uint8) for _ in range(n)]


@pytest.mark.parametrize('backend', CPU_BACKENDS)
def test_logits_and_labels_equal_torch_at_every_batch(backend, espnetv2_weights, torch_seg):
    lines = []
    seg = _segmenter(backend, espnetv2_weights, SIZE, progress=lines.append)
    for n in (1, 3):
        with torch.inference_mode():
            x = torch_seg.preprocess(_batch(n))
            expected, got = torch_seg.logits(x), seg.logits(x)
        assert got.shape == expected.shape and got.dtype == torch.float32
        error = float((got - expected).abs().max()) / max(1.0, float(expected.abs().max()))
        assert error <= LOGIT_TOLERANCE, f'{backend} batch {n}: {error:.3g}'
    pair = _batch(2)
    for ours, ref in zip(seg.predict(pair, confidence=True),
                         torch_seg.predict(pair, confidence=True)):
        assert ours.labels.shape == SIZE
        assert (ours.labels == ref.labels).mean() >= 0.999
        assert np.abs(ours.confidence.astype(int) - ref.confidence).max() <= 1
    assert backend in str(seg.backend) and any('ONNX graph' in line for line in lines)


def test_second_segmenter_loads_the_cached_graph(espnetv2_weights, torch_seg):
    first, second = [], []
    for lines in (first, second):
        seg = _segmenter('onnxruntime', espnetv2_weights, SIZE, progress=lines.append)
        seg.predict(_batch(1))
    assert not any('exporting' in line for line in second), second
    assert any('cached in' in line for line in second)


@pytest.fixture(scope='module')
def real_frames(cityscapes_root):
    images = sorted((cityscapes_root / 'leftImg8bit' / 'train').rglob('*_leftImg8bit.png'))
    assert len(images) == REAL_FRAMES
    gts = [cityscapes_root / 'gtFine' / 'train' / p.parent.name /
           p.name.replace('_leftImg8bit.png', '_gtFine_labelIds.png') for p in images]
    return images, gts


def _class_miou(seg, real_frames, out, official_eval) -> float:
    images, gts = real_frames
    out.mkdir()
    preds = []
    for path in images:
        labels = seg([read_rgb(path)])[0]
        preds.append(out / (path.stem + '_labelIds.png'))
        write_png(preds[-1], train_ids_to_label_ids(labels))
    return official_eval(preds, gts)['averageScoreClasses']


def test_real_frames_official_miou_equals_torch(tmp_path, espnetv2_weights, real_frames,
                                                official_eval):
    scores = {}
    for backend in ('torch',) + CPU_BACKENDS:
        seg = _segmenter(backend, espnetv2_weights, SIZE)
        scores[backend] = _class_miou(seg, real_frames, tmp_path / backend, official_eval)
        seg.close()
    print('official class mIoU on the real frames:', scores)
    assert scores['torch'] >= 0.55
    for backend in CPU_BACKENDS:
        assert abs(scores[backend] - scores['torch']) <= MIOU_TOLERANCE, (backend, scores)
