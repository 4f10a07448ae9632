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


"""GPU paths: fp16 autocast, ONNX Runtime's TensorRT/CUDA providers, TensorRT engines.

Every test is ``@pytest.mark.cuda``: skipped (with the reason) where torch sees no GPU;
``scripts/device_check.sh`` runs them on one. ESPNetv2 at its test size, the official weights
when ../shared has them, else random weights after a fixed seed (the same in every Segmenter).
The references are the fp32 torch path with TF32 off (GOLDEN.md section 5).
"""

from pathlib import Path

from cityseg_ros.engine import Segmenter
import numpy as np
import pytest
import torch

pytestmark = pytest.mark.cuda

SIZE = (512, 1024)
_WEIGHTS = (Path(__file__).resolve().parents[3] / 'shared' / 'data' / 'weights' / 'espnetv2'
            / 'espnetv2_s_2.0_city_1024x512.pth')
#: fp32 on the GPU against fp32 torch: cuDNN's and TensorRT's kernel choices (no TF32).
FP32_TOLERANCE = 1e-3
#: fp16 against fp32: normalised logit difference and share of equal argmax.
FP16_TOLERANCE = 5e-2
FP16_AGREEMENT = 0.98


def _segmenter(backend: str, precision: str, progress=None) -> Segmenter:
    torch.manual_seed(0)
    weights = str(_WEIGHTS) if _WEIGHTS.is_file() else None
    return Segmenter('espnetv2', weights=weights, device='cuda', precision=precision,
                     input_size=SIZE, backend=backend, progress=progress)


@pytest.fixture(scope='module')
def reference():
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    seg = _segmenter('torch', 'fp32')
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, SIZE + (3,), dtype=np.uint8) for _ in range(2)]
    with torch.inference_mode():
        x = seg.preprocess(images)
        logits = seg.logits(x)
    return x, logits


def _compare(seg: Segmenter, reference) -> tuple:
    x, expected = reference
    with torch.inference_mode():
        got = seg.logits(x)
    assert got.shape == expected.shape and got.device == expected.device
    assert torch.isfinite(got).all()
    error = float((got - expected).abs().max()) / max(1.0, float(expected.abs().max()))
    agreement = float((got.argmax(1) == expected.argmax(1)).float().mean())
    return error, agreement


def test_torch_fp16_autocast_agrees_with_fp32(reference):
    error, agreement = _compare(_segmenter('torch', 'fp16'), reference)
    assert error <= FP16_TOLERANCE and agreement >= FP16_AGREEMENT, (error, agreement)


def _gpu_onnxruntime():
    ort = pytest.importorskip('onnxruntime')
    pytest.importorskip('onnxscript')
    providers = ort.get_available_providers()
    if 'CUDAExecutionProvider' not in providers:
        pytest.skip(f'onnxruntime {ort.__version__} has no CUDA provider ({providers}): '
                    'pip install onnxruntime-gpu')
    return ort


@pytest.mark.parametrize('precision, tolerance', [('fp32', FP32_TOLERANCE),
                                                  ('fp16', FP16_TOLERANCE)])
def test_onnxruntime_on_the_gpu_agrees_with_torch(reference, precision, tolerance):
    _gpu_onnxruntime()
    seg = _segmenter('onnxruntime', precision)
    error, agreement = _compare(seg, reference)
    assert seg.backend.provider in ('TensorrtExecutionProvider', 'CUDAExecutionProvider')
    assert error <= tolerance, (seg.backend.provider, error)
    assert agreement >= FP16_AGREEMENT, (seg.backend.provider, agreement)
    one = seg.predict([np.zeros(SIZE + (3,), np.uint8)])  # batch 1 from the same session
    assert one[0].labels.shape == SIZE


def test_onnxruntime_tensorrt_engines_are_cached(reference):
    ort = _gpu_onnxruntime()
    if 'TensorrtExecutionProvider' not in ort.get_available_providers():
        pytest.skip('this onnxruntime has no TensorRT provider')
    _compare(_segmenter('onnxruntime', 'fp16'), reference)
    lines = []
    _compare(_segmenter('onnxruntime', 'fp16', progress=lines.append), reference)
    assert not any('building' in line for line in lines), lines
    assert any('onnxruntime TensorRT engines: cached in' in line for line in lines), lines


@pytest.mark.parametrize('precision, tolerance', [('fp16', FP16_TOLERANCE),
                                                  ('fp32', FP32_TOLERANCE)])
def test_tensorrt_engine_agrees_with_torch_and_is_cached(reference, precision, tolerance):
    pytest.importorskip('tensorrt')
    pytest.importorskip('onnxscript')
    seg = _segmenter('tensorrt', precision)
    error, agreement = _compare(seg, reference)
    assert error <= tolerance and agreement >= FP16_AGREEMENT, (error, agreement)
    x, expected = reference
    with torch.inference_mode():  # the profile's dynamic batch: 1 and 2 share one engine
        single = seg.logits(x[:1])
    assert single.shape == expected[:1].shape
    lines = []
    again = _segmenter('tensorrt', precision, progress=lines.append)
    _compare(again, reference)
    assert any('TensorRT' in line and 'cached in' in line for line in lines), lines
    assert not any('building' in line for line in lines), lines
