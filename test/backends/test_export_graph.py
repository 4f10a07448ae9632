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


"""The exporter: DCNv3 through its exportable core, dynamic batch, atomic files, failures."""

from cityseg_ros.backends import export
from cityseg_ros.backends.export import export_onnx, exportable
from cityseg_ros.errors import ConfigError
from cityseg_ros.models.dcnv3 import DCNv3
from cityseg_ros.models.internimage import UperNetInternImage
import numpy as np
import pytest
import torch

ort = pytest.importorskip('onnxruntime')
pytest.importorskip('onnxscript')

# shared/reference/GOLDEN.md section 5: a float32 candidate on CPU.
TOLERANCE = 2e-5


def _tiny_internimage() -> UperNetInternImage:
    """Build a small UperNet + InternImage with every block kind once: exports in seconds."""
    torch.manual_seed(0)
    return UperNetInternImage(16, (1, 1, 1, 1), (1, 2, 4, 8), decode_channels=32,
                              aux_channels=16, num_classes=19).eval()


def _run(path, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    return session.run(['logits'], {'image': x.numpy()})[0]


def test_internimage_exports_through_grid_sample_and_equals_the_gather_core(tmp_path):
    net = _tiny_internimage()
    cores = {m.core for m in net.modules() if isinstance(m, DCNv3)}
    path = export_onnx(net, tmp_path / 'tiny.onnx', (72, 136), dynamic_batch=True)
    assert {m.core for m in net.modules() if isinstance(m, DCNv3)} == cores  # restored
    for n in (1, 2):
        x = torch.rand((n, 3, 72, 136), generator=torch.Generator().manual_seed(n)) * 4 - 2
        with torch.no_grad():
            ref = net(x).numpy()  # the default (gather) core
        got = _run(path, x)
        assert got.shape == ref.shape == (n, 19, 18, 34)
        assert np.abs(got - ref).max() / max(1.0, np.abs(ref).max()) <= TOLERANCE


def test_exportable_restores_the_cores_after_a_failure():
    net = _tiny_internimage()
    with pytest.raises(RuntimeError):
        with exportable(net):
            assert {m.core for m in net.modules() if isinstance(m, DCNv3)} == {'grid_sample'}
            raise RuntimeError('export failed')
    assert {m.core for m in net.modules() if isinstance(m, DCNv3)} == {'auto'}


class _Untraceable(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError('a forward that cannot be traced')


def test_failed_export_is_one_line_and_leaves_no_file(tmp_path):
    with pytest.raises(ConfigError, match='to ONNX failed') as info:
        export_onnx(_Untraceable().eval(), tmp_path / 'bad.onnx', (32, 32))
    assert '\n' not in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_large_weights_go_to_a_data_file_beside_the_graph(tmp_path, monkeypatch):
    monkeypatch.setattr(export, 'EXTERNAL_DATA_BYTES', 0)
    net = torch.nn.Conv2d(3, 8, 3, padding=1).eval()
    path = export_onnx(net, tmp_path / 'conv.onnx', (32, 32), batch=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['conv.onnx', 'conv.onnx.data']
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert np.allclose(_run(path, x), net(x).numpy(), atol=1e-5)


def test_opset_below_17_is_refused(tmp_path):
    with pytest.raises(ConfigError, match='opset 16 is too old'):
        export_onnx(torch.nn.Conv2d(3, 8, 1), tmp_path / 'm.onnx', (32, 32), opset=16)


@pytest.mark.parametrize('size_in, size_out', [((32, 64), (16, 32)), ((48, 96), (32, 64)),
                                               ((3, 5), (6, 6)), ((9, 17), (3, 2)),
                                               ((7, 7), (1, 1))])
def test_adaptive_pooling_as_matmuls_equals_torch(size_in, size_out):
    x = torch.randn((2, 5) + size_in, generator=torch.Generator().manual_seed(0))
    got = export._adaptive_avg_pool2d(x, size_out)
    assert torch.allclose(got, torch.nn.functional.adaptive_avg_pool2d(x, size_out), atol=1e-6)


def test_export_under_the_engines_autocast_and_inference_mode_stays_float32(tmp_path):
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU()).eval()
    with torch.inference_mode(), torch.autocast('cpu', dtype=torch.bfloat16):
        path = export_onnx(net, tmp_path / 'm.onnx', (32, 32))  # as a bf16 Segmenter calls it
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert np.allclose(_run(path, x), net(x).numpy(), atol=1e-5)


def test_thin_grouped_convolutions_are_exported_regrouped_and_restored():
    conv = torch.nn.Conv2d(128, 48, 3, padding=1, groups=16).eval()  # ESPNetv2's merge conv
    net = torch.nn.Sequential(conv)
    x = torch.randn(2, 128, 20, 24)
    with torch.no_grad():
        expected = conv(x)
        with exportable(net):
            assert net[0].groups == 4  # 16 groups of 8 -> 3 as 4 of 32 -> 12
            assert torch.allclose(net(x), expected, atol=1e-5)
    assert net[0] is conv
    depthwise = torch.nn.Conv2d(64, 64, 3, groups=64)
    assert export._regroup_factor(depthwise) == 1
