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

from fractions import Fraction

from cityseg_ros.imageio import read_rgb, write_png
from cityseg_ros.tools import segment_images
import numpy as np
import pytest

REAL_FRAMES = 8


def _run(capsys, *argv):
    code = segment_images.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.err


@pytest.mark.slow
def test_official_weights_score_on_real_frames(tmp_path, capsys, cityscapes_root,
                                               espnetv2_weights, official_eval):
    images = sorted((cityscapes_root / 'leftImg8bit' / 'train').rglob('*_leftImg8bit.png'))
    assert len(images) == REAL_FRAMES
    code, err = _run(capsys, '--model', 'espnetv2', '--weights', espnetv2_weights,
                     '--device', 'cpu', '--out', tmp_path, '--label-ids', '--no-train-ids',
                     '--batch-size', 2, '--quiet', *images)
    assert code == 0, err
    gts = [cityscapes_root / 'gtFine' / 'train' / p.parent.name /
           p.name.replace('_leftImg8bit.png', '_gtFine_labelIds.png') for p in images]
    preds = [tmp_path / (p.stem + '_labelIds.png') for p in images]
    result = official_eval(preds, gts)
    miou = result['averageScoreClasses']
    print(f'official evaluation on {len(images)} frames: class mIoU {miou:.4f}, '
          f"iIoU {result['averageScoreInstClasses']:.4f}, "
          f"category IoU {result['averageScoreCategories']:.4f}, "
          f"category iIoU {result['averageScoreInstCategories']:.4f}")
    assert miou >= 0.55


def test_writes_requested_outputs_at_input_size(tmp_path, capsys):
    rng = np.random.default_rng(0)
    src = tmp_path / 'cam_000001.png'
    write_png(src, rng.integers(0, 256, (72, 136, 3), dtype=np.uint8))
    out = tmp_path / 'out'
    code, err = _run(capsys, '--weights', 'none', '--device', 'cpu', '--input-size', '64x128',
                     '--out', out, '--color', '--overlay', '--label-ids', '--confidence',
                     '--quiet', src)
    assert code == 0, err
    for suffix in ('trainIds', 'labelIds', 'color', 'overlay', 'confidence'):
        assert (out / f'cam_000001_{suffix}.png').is_file(), suffix
    train_ids = read_rgb(out / 'cam_000001_trainIds.png')[..., 0]
    assert train_ids.shape == (72, 136)
    assert train_ids.max() < 19  # channel 19 (EdgeNets' untrained background) never output


@pytest.fixture
def bad_inputs(tmp_path):
    not_png = tmp_path / 'not_an_image.png'
    not_png.write_bytes(b'this is text, not a PNG')
    tiny = tmp_path / 'tiny.png'
    write_png(tiny, np.zeros((1, 1, 3), np.uint8))
    deep = tmp_path / 'deep.png'
    write_png(deep, np.zeros((64, 64), np.uint16))
    return {'not_png': not_png, 'tiny': tiny, 'deep': deep}


@pytest.mark.parametrize('case, message', [
    ('not_png', 'not a readable image'),
    ('tiny', 'smallest accepted side'),
    ('deep', '16-bit'),
])
def test_bad_images_exit_2_with_one_line(tmp_path, capsys, bad_inputs, case, message):
    code, err = _run(capsys, '--weights', 'none', '--device', 'cpu', '--input-size', '64x128',
                     '--out', tmp_path / 'out', '--quiet', bad_inputs[case])
    assert code == 2
    assert message in err and 'Traceback' not in err
    assert len(err.strip().splitlines()) == 1


def test_missing_weights_file_exit_2(tmp_path, capsys, bad_inputs):
    code, err = _run(capsys, '--weights', tmp_path / 'nope.pth', '--out', tmp_path,
                     bad_inputs['not_png'])
    assert code == 2 and 'nope.pth' in err and 'Traceback' not in err


def test_checkpoint_of_another_model_exit_2(tmp_path, capsys):
    import torch
    other = tmp_path / 'hrnet.pth'
    torch.save({'model.conv1.weight': torch.zeros(64, 3, 3, 3)}, other)
    src = tmp_path / 'img.png'
    write_png(src, np.zeros((64, 128, 3), np.uint8))
    code, err = _run(capsys, '--weights', other, '--out', tmp_path / 'o', src)
    assert code == 2 and 'espnetv2' in err and 'Traceback' not in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize('payload', [{'a': [1, 2, 3]}, Fraction(1, 3)],
                         ids=['dict-of-lists', 'arbitrary-object'])
def test_pickle_that_is_not_a_state_dict_exit_2(tmp_path, capsys, payload):
    import pickle
    bad = tmp_path / 'evil.pth'
    bad.write_bytes(pickle.dumps(payload))
    src = tmp_path / 'img.png'
    write_png(src, np.zeros((64, 128, 3), np.uint8))
    code, err = _run(capsys, '--weights', bad, '--out', tmp_path / 'o', src)
    assert code == 2 and 'Traceback' not in err
    assert len(err.strip().splitlines()) == 1
