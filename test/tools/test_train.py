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

"""train CLI: one-line errors, outputs that the other tools load, and a 2-process DDP run."""

import json
import os
from pathlib import Path
import subprocess
import sys

from cityseg_ros.imageio import read_rgb, write_png
from cityseg_ros.tools import segment_images, train
from cityseg_ros.training import LAST_CHECKPOINT, MODEL_FILE, SUMMARY_FILE
import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


# Training steps on a shared 2-core machine: one OpenMP thread avoids barrier stalls.
pytestmark = pytest.mark.usefixtures('one_torch_thread')


def _dataset(root: Path, frames: int = 2, size=(96, 192)) -> Path:
    """Write a tiny Cityscapes-layout folder of random images and labelIds."""
    rng = np.random.default_rng(0)
    for i in range(frames):
        stem = f'ulm_{i:06d}_000019'
        image = root / 'leftImg8bit' / 'train' / 'ulm' / f'{stem}_leftImg8bit.png'
        labels = root / 'gtFine' / 'train' / 'ulm' / f'{stem}_gtFine_labelIds.png'
        image.parent.mkdir(parents=True, exist_ok=True)
        labels.parent.mkdir(parents=True, exist_ok=True)
        write_png(image, rng.integers(0, 256, (*size, 3), dtype=np.uint8))
        write_png(labels, rng.integers(0, 34, size, dtype=np.uint8))
    return root


def _train_args(root: Path, out: Path, *extra) -> list:
    return ['--model', 'espnetv2', '--data-root', str(root), '--out', str(out), '--steps', '2',
            '--batch-size', '1', '--base-size', '96x192', '--crop-size', '64x128',
            '--device', 'cpu', '--workers', '0', '--log-every', '1', '--quiet', *extra]


def _run(capsys, argv):
    code = train.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize('case, message', [
    ('missing_root', '--data-root .* not found'),
    ('no_images', 'no \\*_leftImg8bit.png images'),
    ('unknown_model', "unknown model 'segformer'; choose one of: espnetv2, "),
])
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, case, message):
    root = tmp_path / 'cs'
    if case == 'no_images':
        (root / 'leftImg8bit' / 'train' / 'empty_city').mkdir(parents=True)
    if case != 'missing_root':
        _dataset(tmp_path / 'other')
    argv = _train_args(root, tmp_path / 'out')
    if case == 'unknown_model':
        argv[1] = 'segformer'
    code, _, err = _run(capsys, argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith('train: error: ')
    assert __import__('re').search(message, lines[0]), lines[0]
    assert not (tmp_path / 'out').exists()


def test_trained_model_loads_in_segment_images_by_path(tmp_path, capsys):
    root = _dataset(tmp_path / 'cs')
    out = tmp_path / 'run'
    # One (spawned) loader process, as real runs use.
    code, stdout, err = _run(capsys, _train_args(root, out, '--val-split', 'train',
                                                 '--val-size', '64x128', '--workers', '1'))
    assert code == 0, err
    assert 'espnetv2: step 2' in stdout and 'val mIoU' in stdout
    for name in (LAST_CHECKPOINT, MODEL_FILE, 'scalars.csv', 'config.json', SUMMARY_FILE):
        assert (out / name).is_file(), name
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert summary['step'] == 2 and summary['val']['frames'] == 2

    image = next((root / 'leftImg8bit').rglob('*.png'))
    seg_out = tmp_path / 'seg'
    code = segment_images.main(['--model', 'espnetv2', '--weights', str(out / MODEL_FILE),
                                '--device', 'cpu', '--input-size', '64x128', '--out',
                                str(seg_out), '--quiet', str(image)])
    err = capsys.readouterr().err
    assert code == 0, err
    labels = read_rgb(seg_out / (image.stem + '_trainIds.png'))[..., 0]
    assert labels.shape == (96, 192) and labels.max() < 19

    # Resuming a finished run is a no-op that keeps the step count.
    code, stdout, err = _run(capsys, _train_args(root, out, '--resume', '--val-split', 'none'))
    assert code == 0, err
    assert 'step 2' in stdout


def test_torchrun_two_processes_end_with_identical_weights(tmp_path):
    root = _dataset(tmp_path / 'cs', frames=4)
    out = tmp_path / 'ddp'
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': str(REPO)}
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
           '-m', 'cityseg_ros.tools.train', *_train_args(root, out, '--steps', '3',
                                                         '--val-split', 'train',
                                                         '--val-size', '64x128')]
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=240)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert summary['world_size'] == 2 and summary['step'] == 3
    digests = summary['param_digests']
    assert len(digests) == 2 and digests[0] == digests[1]
    assert summary['val']['frames'] == 4  # both shards counted
    config = json.loads((out / 'config.json').read_text())
    assert config['world_size'] == 2
    state = torch.load(out / LAST_CHECKPOINT, weights_only=True)
    assert len(state['rng']) == 2 and state['data']['world_size'] == 2
    # One summary line: only rank 0 prints.
    assert result.stdout.count('espnetv2: step 3') == 1
