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

"""What every tool shares (tools/common.run_cli): a path the system refuses is one line."""

from cityseg_ros.imageio import write_png
from cityseg_ros.tools import evaluate, export_model, make_bag, segment_images, train
import numpy as np
import pytest

LONG = 'a' * 300  # over NAME_MAX (255): every stat() of it fails with ENAMETOOLONG


@pytest.mark.parametrize('tool, argv', [
    (segment_images, ['--weights', 'none', '--out', LONG, 'x.png']),
    (segment_images, ['--weights', 'none', '--out', 'OUT', LONG + '.png']),
    (evaluate, ['--bag', LONG, '--out', 'OUT']),
    (evaluate, ['merge', '--out', 'OUT', LONG]),
    (make_bag, ['--cityscapes-root', LONG, '--split', 'val', '--out', 'OUT']),
    (make_bag, ['--cityscapes-root', 'ROOT', '--split', 'val', '--out', LONG]),
    (train, ['--model', 'espnetv2', '--data-root', LONG, '--out', 'OUT']),
    (export_model, ['--model', 'espnetv2', '--weights', 'none', '--input-size', '64x128',
                    '--out', LONG + '.onnx']),
    (export_model, ['--model', 'espnetv2', '--weights', 'none', '--input-size', '64x128',
                    '--out', 'FILE/m.onnx']),  # under a file: was FileExistsError
])
def test_a_path_the_system_refuses_is_one_line(tmp_path, capsys, monkeypatch, tool, argv):
    """Before: OSError tracebacks (File name too long, File exists) from pathlib checks."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'ROOT' / 'leftImg8bit' / 'val').mkdir(parents=True)
    (tmp_path / 'FILE').write_text('not a folder')
    write_png(tmp_path / 'x.png', np.zeros((32, 32, 3), np.uint8))
    code = tool.main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if 'RANDOM' not in line]
    assert code == 2 and len(lines) == 1 and 'Traceback' not in err, err
    assert lines[0].startswith(f'{tool.build_parser().prog}: error: '), err
    assert not (tmp_path / 'OUT').exists()
