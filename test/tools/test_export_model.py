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


"""export_model: every zoo family to ONNX, equal to torch and to the official models' outputs.

HRNet-W48+OCR and UperNet+InternImage are exported at the golden fixtures' sizes with the
synthetic weights in the official file layout, and the graph (run by ONNX Runtime on the CPU)
must match the official code's outputs within the fixtures' float32 tolerance
(shared/reference/GOLDEN.md). Exporting is size-independent but graph-size dependent: the
InternImage exports take about a minute each.
"""

import gc
import sys

from cityseg_ros.backends.export import prepare_network
from cityseg_ros.models.synthetic import read_manifest, synthetic_state_dict
from cityseg_ros.tools import export_model
import numpy as np
import pytest
import torch

onnx = pytest.importorskip('onnx')
ort = pytest.importorskip('onnxruntime')
pytest.importorskip('onnxscript')

# shared/reference/GOLDEN.md section 5: a float32 candidate on CPU.
TOLERANCE = 2e-5


def _run(capsys, *argv):
    code = export_model.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _session(path):
    return ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])


def _normalised(got: np.ndarray, ref: np.ndarray) -> float:
    assert got.shape == ref.shape and np.isfinite(got).all()
    return float(np.abs(got - ref).max() / max(1.0, np.abs(ref).max()))


def _dims(value_info) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def test_espnetv2_dynamic_batch_graph_equals_torch(tmp_path, capsys, espnetv2_weights):
    out = tmp_path / 'espnetv2.onnx'
    code, stdout, err = _run(capsys, '--model', 'espnetv2', '--weights', espnetv2_weights,
                             '--input-size', '64x128', '--dynamic-batch', '--out', out)
    assert code == 0, err
    assert 'onnxruntime vs torch' in stdout
    model = onnx.load(str(out))
    assert model.opset_import[0].version >= 17
    (inp,), outputs = model.graph.input, model.graph.output
    assert inp.name == 'image' and inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert _dims(inp)[1:] == [3, 64, 128] and isinstance(_dims(inp)[0], str)
    assert outputs[0].name == 'logits' and _dims(outputs[0])[1:] == [20, 32, 64]
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta['cityseg_ros.model'] == 'espnetv2'
    assert meta['cityseg_ros.mean'] == '(123.675, 116.28, 103.53)'
    net = prepare_network('espnetv2', str(espnetv2_weights))
    session = _session(out)
    for n in (1, 3):
        x = torch.rand((n, 3, 64, 128), generator=torch.Generator().manual_seed(n)) * 4 - 2
        with torch.no_grad():
            ref = net(x).numpy()
        assert _normalised(session.run(['logits'], {'image': x.numpy()})[0], ref) <= TOLERANCE


def _official_file(tmp_path, shared, manifest: str, wrap: bool):
    state = synthetic_state_dict(read_manifest(shared('reference', manifest)))
    path = tmp_path / 'official_layout.pth'
    torch.save({'state_dict': state} if wrap else state, path)
    del state
    gc.collect()
    return path


def _golden(shared, name: str) -> dict:
    with np.load(shared('reference', 'golden', f'{name}.npz'), allow_pickle=False) as npz:
        return {key: npz[key] for key in npz.files}


def test_hrnet_ocr_graph_equals_the_official_outputs(tmp_path, capsys, shared):
    weights = _official_file(tmp_path, shared, 'keys_hrnet_ocr_w48.txt', wrap=False)
    out = tmp_path / 'hrnet.onnx'
    code, _, err = _run(capsys, '--model', 'hrnet_w48_ocr', '--weights', weights,
                        '--input-size', '72x136', '--batch', '2', '--out', out)
    assert code == 0, err
    golden = _golden(shared, 'hrnet_w48_ocr_2x3x72x136')
    got = _session(out).run(['logits'], {'image': golden['input']})[0]
    assert _normalised(got, golden['cls_logits']) <= TOLERANCE


@pytest.mark.slow
@pytest.mark.parametrize('name, manifest, size', [
    ('upernet_internimage_l', 'keys_upernet_internimage_l_cityscapes.txt', '2x3x72x136'),
    ('upernet_internimage_xl', 'keys_upernet_internimage_xl_mapillary2cityscapes.txt',
     '1x3x128x256')])
def test_internimage_graph_equals_the_official_outputs(tmp_path, capsys, shared, name,
                                                       manifest, size):
    weights = _official_file(tmp_path, shared, manifest, wrap=True)
    golden = _golden(shared, f'{name}_{size}')
    h, w = golden['input'].shape[-2:]
    out = tmp_path / f'{name}.onnx'
    code, stdout, err = _run(capsys, '--model', name, '--weights', weights, '--input-size',
                             f'{h}x{w}', '--dynamic-batch', '--out', out, '--no-check')
    assert code == 0, err
    session = _session(out)
    got = session.run(['logits'], {'image': golden['input']})[0]
    assert _normalised(got, golden['decode_logits']) <= TOLERANCE
    one = session.run(['logits'], {'image': golden['input'][:1]})[0]  # the dynamic batch
    assert _normalised(one, golden['decode_logits'][:1]) <= TOLERANCE


@pytest.mark.parametrize('argv, message', [
    (['--model', 'espnetv2', '--input-size', '72x136'], 'multiples of 32'),
    (['--model', 'espnetv2', '--input-size', '64x128', '--opset', '16'], 'opset 16'),
    # Before: the exporter's multi-line colour message after building the model.
    (['--model', 'espnetv2', '--input-size', '64x128', '--opset', str(10**14)], 'knows opsets'),
    (['--model', 'hrnet_w48_ocr', '--input-size', '64x128', '--weights', 'missing.pth'],
     'missing.pth'),
])
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, argv, message):
    full = ['--weights', 'none', '--out', tmp_path / 'm.onnx'] + argv
    if '--weights' in argv:
        full = full[2:]
    code, _, err = _run(capsys, *full)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert not (tmp_path / 'm.onnx').exists()


def test_out_must_be_an_onnx_file(tmp_path, capsys):
    code, _, err = _run(capsys, '--model', 'espnetv2', '--weights', 'none', '--input-size',
                        '64x128', '--out', tmp_path / 'm.pt')
    assert code == 2 and 'must end in .onnx' in err


def test_missing_onnx_extra_says_what_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, 'onnxscript', None)
    code, _, err = _run(capsys, '--model', 'espnetv2', '--weights', 'none', '--input-size',
                        '64x128', '--out', tmp_path / 'm.onnx')
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and 'pip install .[onnx]' in err, err


def test_batch_and_dynamic_batch_exclude_each_other(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        export_model.main(['--model', 'espnetv2', '--weights', 'none', '--input-size', '64x128',
                           '--batch', '2', '--dynamic-batch', '--out', str(tmp_path / 'm.onnx')])
    assert info.value.code == 2
