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


# -- the torch path on the GPU against the CPU --------------------------------------------------

_PAIR = (_WEIGHTS.parents[2] / 'cityscapes', 'frankfurt', 'frankfurt_000000_009291')


def _images() -> list:
    """Return the Cityscapes stereo pair from ../shared, else two smooth random frames."""
    from cityseg_ros.imageio import read_rgb

    root, city, stem = _PAIR
    paths = [root / f'{side}Img8bit' / 'val' / city / f'{stem}_{side}Img8bit.png'
             for side in ('left', 'right')]
    if all(p.is_file() for p in paths):
        return [read_rgb(p) for p in paths]
    rng = np.random.default_rng(0)
    small = [rng.integers(0, 256, (64, 128, 3), dtype=np.uint8) for _ in range(2)]
    return [np.kron(s, np.ones((16, 16, 1), np.uint8)) for s in small]


def test_cuda_predict_of_a_stereo_pair_equals_the_cpu_path(reference):
    """Preprocessing, the label shortcut and confidence on the GPU: the CPU's labels."""
    torch.manual_seed(0)
    weights = str(_WEIGHTS) if _WEIGHTS.is_file() else None
    cpu = Segmenter('espnetv2', weights=weights, device='cpu', input_size=SIZE)
    torch.manual_seed(0)
    gpu = Segmenter('espnetv2', weights=weights, device='cuda', input_size=SIZE)
    images = _images()
    expected = cpu.predict(images, confidence=True)
    got = gpu.predict(images, confidence=True)
    for want, have in zip(expected, got):
        assert have.labels.shape == want.labels.shape and have.labels.dtype == np.uint8
        assert float((have.labels == want.labels).mean()) >= 0.999
        diff = np.abs(have.confidence.astype(int) - want.confidence.astype(int))
        assert float((diff <= 1).mean()) >= 0.999, int(diff.max())


@pytest.mark.parametrize('model', ['hrnet_w48_ocr', 'sernet_former', 'upernet_internimage_l'])
def test_every_large_model_gives_the_cpu_logits_on_cuda(reference, model):
    """Model code on the GPU (DCNv3's core, OCR's gathers, attention): no CPU-only tensor."""
    torch.manual_seed(0)
    cpu = Segmenter(model, weights=None, device='cpu', input_size=(128, 256))
    gpu = Segmenter(model, weights=None, device='cuda', input_size=(128, 256))
    gpu.net.load_state_dict(cpu.net.state_dict())
    x = cpu.preprocess([_images()[0][::8, ::8].copy()])
    with torch.inference_mode():
        want = cpu.logits(x)
        have = gpu.logits(x.to('cuda')).cpu()
    error = float((have - want).abs().max()) / max(1.0, float(want.abs().max()))
    assert error <= FP32_TOLERANCE, error
