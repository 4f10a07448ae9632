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


"""``--backend`` on the tools that run a model: segment_images, evaluate (shared options)."""

import sys

from cityseg_ros.imageio import read_rgb, write_png
from cityseg_ros.tools import evaluate, segment_images
import numpy as np
import pytest


def _frame(cityscapes_root):
    return sorted((cityscapes_root / 'leftImg8bit' / 'train').rglob('*_leftImg8bit.png'))[0]


def test_segment_images_with_openvino_writes_torchs_labels(tmp_path, cityscapes_root,
                                                           espnetv2_weights, capsys):
    pytest.importorskip('openvino')
    image = _frame(cityscapes_root)
    outs = {}
    for backend in ('torch', 'openvino'):
        out = tmp_path / backend
        code = segment_images.main(['--model', 'espnetv2', '--weights', str(espnetv2_weights),
                                    '--device', 'cpu', '--backend', backend, '--quiet',
                                    '--out', str(out), str(image)])
        assert code == 0, capsys.readouterr().err
        outs[backend] = read_rgb(out / (image.stem + '_trainIds.png'))[..., 0]
    assert (outs['openvino'] == outs['torch']).mean() >= 0.999


def test_missing_extra_exits_2_with_what_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, 'onnxruntime', None)
    image = tmp_path / 'cam.png'
    write_png(image, np.zeros((64, 128, 3), np.uint8))
    code = segment_images.main(['--weights', 'none', '--device', 'cpu', '--backend',
                                'onnxruntime', '--input-size', '64x128', '--quiet', '--out',
                                str(tmp_path / 'out'), str(image)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and 'pip install .[onnx]' in err[0], err


def test_evaluate_takes_the_backend_option():
    args = evaluate.build_parser().parse_args(['--bag', 'b', '--out', 'o', '--backend',
                                               'openvino'])
    assert args.backend == 'openvino'
    with pytest.raises(SystemExit):
        evaluate.build_parser().parse_args(['--bag', 'b', '--out', 'o', '--backend', 'tflite'])
