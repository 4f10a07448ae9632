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

import copy
import errno
import json
import os
from pathlib import Path
import re
import struct
import subprocess
import sys
import zlib

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
    assert re.search(message, lines[0]), lines[0]
    assert not (tmp_path / 'out').exists()


@pytest.mark.parametrize('option, message', [
    # Before: NaN and inf trained to NaN weights (exit 0), 1e308 and the seeds were
    # tracebacks, 999999 workers forked until the run hung, --stop-at -1 stopped at once.
    (('--lr', 'nan'), '--lr must be a finite number'),
    (('--lr', '1e308'), '--lr must be a finite number of at most 1e+06'),
    (('--momentum', 'nan'), '--momentum must be a finite number'),
    (('--weight-decay', 'inf'), '--weight-decay must be a finite number'),
    (('--poly-power', 'nan'), '--poly-power must be a finite number'),
    (('--clip-grad', 'nan'), '--clip-grad must be a finite number'),
    (('--scale-range', '1', '1e308'), 'need 0 < MIN <= MAX <= 8'),
    (('--steps', str(10**23)), '--steps must be at most'),
    (('--workers', '999999'), '--workers must be 0..64'),
    (('--seed', str(10**23)), '--seed must be 0..4294967295'),
    (('--seed', '-1'), '--seed must be 0..4294967295'),
    (('--stop-at', '-1'), '--stop-at must be a step >= 1'),
])
def test_option_values_that_cannot_work_exit_2_with_one_line(tmp_path, capsys, option,
                                                             message):
    root = _dataset(tmp_path / 'cs', frames=1)
    code, _, err = _run(capsys, _train_args(root, tmp_path / 'out', *option))
    assert code == 2 and err.count('\n') == 1 and message in err, err
    assert not (tmp_path / 'out').exists()


@pytest.mark.parametrize('name', ['config.json', 'scalars.csv', 'summary.json'])
def test_a_pipe_where_an_output_goes_is_refused(tmp_path, capsys, name):
    """Before: the first write into the FIFO blocked forever (train hung)."""
    root = _dataset(tmp_path / 'cs', frames=1)
    (tmp_path / 'out').mkdir()
    os.mkfifo(tmp_path / 'out' / name)
    code, _, err = _run(capsys, _train_args(root, tmp_path / 'out'))
    assert code == 2 and err.count('\n') == 1 and 'is a FIFO (named pipe), not a file' in err


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


# --------------------------------------------------------------------------------------------
# --resume with a crafted or foreign last.pt (issue 11 item 10): one line, exit 2


class _Runs:
    """Pickles as a call of os.system: a last.pt that would run code."""

    def __reduce__(self):
        return os.system, ('true',)


def _nested(levels: int) -> dict:
    value = {}
    for _ in range(levels):
        value = {'a': value}
    return value


def _set(path: str, value):
    """Return a mutation that sets ``state[a][b]...`` (path 'a/b/...'; ints index lists)."""
    def mutate(state):
        *parents, last = [int(p) if p.isdigit() else p for p in path.split('/')]
        target = state
        for key in parents:
            target = target[key]
        if value is _DELETE:
            del target[last]
        else:
            target[last] = value(target[last]) if callable(value) else value
        return state
    return mutate


_DELETE = object()
_FIRST_PARAM = 'model/base_net.level1.conv.weight'

RESUME_CASES = {
    # whole files that are not ours
    'a plain state dict': (lambda s: s['model'], 'is not a training checkpoint of cityseg_ros'),
    'a list': (lambda s: [1, 2, 3], 'is not a training checkpoint of cityseg_ros'),
    'an int': (lambda s: 7, 'is not a training checkpoint of cityseg_ros'),
    'a string': (lambda s: 'last', 'is not a training checkpoint of cityseg_ros'),
    'code to run': (lambda s: {**s, 'config': _Runs()}, 'forbidden Python global'),
    'nested 100 deep': (lambda s: {**s, 'config': _nested(100)}, 'more than 64 levels deep'),
    # ours, but of another run
    'another model': (_set('model_name', 'hrnet_w48_ocr'), "a checkpoint of 'hrnet_w48_ocr'"),
    'wrong shapes': (_set(_FIRST_PARAM, torch.zeros(3)), '1 wrongly shaped model keys'),
    'a missing weight': (_set(_FIRST_PARAM, _DELETE), '1 missing model keys'),
    'another optimizer': (_set('optimizer/param_groups/0/momentum', _DELETE),
                          "'optimizer' group 0 lacks momentum (another --optimizer?)"),
    # missing entries, wrong types, tensors where numbers belong, huge values
    'no optimizer': (_set('optimizer', _DELETE), 'it lacks optimizer'),
    'step is a tensor': (_set('step', torch.tensor(1)), "'step' is a tensor of shape []"),
    'step is a string': (_set('step', '1'), "'step' is '1', not a step count"),
    'step is huge': (_set('step', 10 ** 30), "'step' is 1000000000000000000000000000000"),
    'step is negative': (_set('step', -5), "'step' is -5"),
    'weight is an int': (_set(_FIRST_PARAM, 3), "'model' maps 'base_net.level1.conv.weight' "
                                                'to 3'),
    'weight is complex': (_set(_FIRST_PARAM, lambda t: t.to(torch.complex64)),
                          'is a complex tensor'),
    'lr is a tensor': (_set('optimizer/param_groups/0/lr', torch.tensor(0.1)),
                       "'optimizer' group 0 'lr' is a tensor of shape []"),
    'lr is infinite': (_set('optimizer/param_groups/0/lr', float('inf')),
                       "'optimizer' group 0 'lr' is inf"),
    'momentum buffer of another shape': (_set('optimizer/state/0/momentum_buffer',
                                              torch.zeros(1)),
                                         "'momentum_buffer' is a tensor of shape [1]"),
    'momentum buffer of ints': (_set('optimizer/state/0/momentum_buffer',
                                     lambda t: t.long()), "'momentum_buffer' is a tensor"),
    'state of a parameter that is not there': (_set('optimizer/state/99999', {}),
                                               'state for parameter 99999, which this run'),
    'scheduler step is a string': (_set('scheduler/last_epoch', 'x'),
                                   "'scheduler'['last_epoch'] is 'x'"),
    'scheduler step disagrees': (_set('scheduler/last_epoch', 10 ** 9),
                                 "'scheduler' is at step 1000000000"),
    'scheduler gets an attribute': (_set('scheduler/lr_lambdas/0/__call__', 1),
                                    'has unknown keys'),
    'python RNG too short': (_set('rng/0/python/state', lambda w: w[:10]),
                             'not a Mersenne Twister state'),
    'python RNG word too big': (_set('rng/0/python/state/0', 1 << 70),
                                'not a Mersenne Twister state'),
    'numpy RNG key of floats': (_set('rng/0/numpy/key', lambda t: t.double()),
                                'not an MT19937 state'),
    'torch RNG of another size': (_set('rng/0/torch', torch.zeros(10, dtype=torch.uint8)),
                                  "not torch's CPU generator state"),
    'no RNG states': (_set('rng', []), "'rng' is a list of 0 items"),
    'data position is a tensor': (_set('data/epoch', torch.zeros(3)),
                                  "'data'['epoch'] is a tensor of shape [3]"),
    'best score is a string': (_set('best', {'miou': 'high'}), "'best'['miou'] is 'high'"),
}


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """Train 1 step for real; return the dataset and the loaded last.pt."""
    base = tmp_path_factory.mktemp('resume')
    root = _dataset(base / 'cs')
    code = train.main([str(a) for a in _train_args(root, base / 'run', '--steps', '1',
                                                   '--val-split', 'none')])
    assert code == 0
    return root, torch.load(base / 'run' / LAST_CHECKPOINT, weights_only=True)


@pytest.mark.parametrize('case', sorted(RESUME_CASES))
def test_resume_with_a_crafted_last_pt_exits_2_with_one_line(tmp_path, capsys, trained, case):
    root, state = trained
    mutate, message = RESUME_CASES[case]
    out = tmp_path / 'run'
    out.mkdir()
    torch.save(mutate(copy.deepcopy(state)), out / LAST_CHECKPOINT)
    code, _, err = _run(capsys, _train_args(root, out, '--steps', '3', '--val-split', 'none',
                                            '--resume'))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and 'Traceback' not in err, err
    assert lines[0].startswith('train: error: ') and message in lines[0], lines[0]


@pytest.mark.parametrize('kind, message', [
    ('fifo', r'is a FIFO \(named pipe\), not a file'),
    ('directory', 'is a directory, not a file'),
    ('symlink loop', 'is a loop of symbolic links'),
    ('empty', r'is empty \(0 bytes\)'),
])
def test_resume_from_a_path_that_is_not_a_checkpoint_exits_2(tmp_path, capsys, trained, kind,
                                                             message):
    root, _ = trained
    out = tmp_path / 'run'
    out.mkdir()
    last = out / LAST_CHECKPOINT
    if kind == 'fifo':
        os.mkfifo(last)
    elif kind == 'directory':
        last.mkdir()
    elif kind == 'symlink loop':
        os.symlink(last, last)
    else:
        last.write_bytes(b'')
    code, _, err = _run(capsys, _train_args(root, out, '--resume'))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert re.search(message, lines[0]), lines[0]


def test_resume_of_the_genuine_file_still_continues(tmp_path, capsys, trained):
    root, state = trained
    out = tmp_path / 'run'
    out.mkdir()
    torch.save(state, out / LAST_CHECKPOINT)
    code, stdout, err = _run(capsys, _train_args(root, out, '--resume', '--val-split', 'none'))
    assert code == 0 and 'espnetv2: step 2' in stdout, err


def test_out_that_is_a_file_exits_2(tmp_path, capsys, trained):
    root, _ = trained
    (tmp_path / 'run').write_bytes(b'')
    code, _, err = _run(capsys, _train_args(root, tmp_path / 'run'))
    assert code == 2 and 'is a file, not a directory' in err and err.count('\n') == 1, err


@pytest.mark.parametrize('failure', [
    OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)),
    RuntimeError('[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0'),
])
def test_disk_full_while_saving_exits_2_and_leaves_no_temporary_file(tmp_path, capsys,
                                                                     monkeypatch, trained,
                                                                     failure):
    root, _ = trained

    def full(obj, path, *args, **kwargs):
        Path(path).write_bytes(b'half a checkpoint')
        raise failure

    monkeypatch.setattr(torch, 'save', full)
    out = tmp_path / 'run'
    code, _, err = _run(capsys, _train_args(root, out, '--steps', '1', '--val-split', 'none'))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith(f'train: error: cannot write {out / LAST_CHECKPOINT}: '), lines[0]
    assert not list(out.glob('*.tmp')) and not (out / LAST_CHECKPOINT).exists()


def _png_header(width: int, height: int) -> bytes:
    """Return a PNG that declares ``width`` x ``height`` grey pixels but holds no pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack('>I', len(data)) + kind + data
                + struct.pack('>I', zlib.crc32(kind + data)))
    header = struct.pack('>IIBBBBB', width, height, 8, 0, 0, 0, 0)
    return b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header) + chunk(b'IEND', b'')


def test_label_file_declaring_another_size_is_refused_before_decoding(tmp_path, capsys):
    root = _dataset(tmp_path / 'cs')
    label = next((root / 'gtFine').rglob('*_labelIds.png'))
    label.write_bytes(_png_header(9000, 9000))  # 81 Mpx a decoder would allocate first
    code, _, err = _run(capsys, _train_args(root, tmp_path / 'run', '--val-split', 'none'))
    assert code == 2 and err.count('\n') == 1, err
    assert f'{label} is 9000x9000 but its image is 192x96' in err


def test_bad_image_in_a_loader_process_is_one_line(tmp_path, capsys):
    root = _dataset(tmp_path / 'cs', frames=1)
    image = next((root / 'leftImg8bit').rglob('*.png'))
    image.write_bytes(b'not a png at all')
    code, _, err = _run(capsys, _train_args(root, tmp_path / 'run', '--val-split', 'none',
                                            '--batch-size', '1', '--workers', '1'))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and 'Traceback' not in err, err
    assert lines[0].startswith(f'train: error: {image} ') and 'DataLoader' not in lines[0]
