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

"""Hostile weight files: one clear CheckpointError each, nothing allocated, nothing blocked.

The files are made byte by byte (``zip_checkpoint``, ``legacy_checkpoint``) as torch.save
writes them, with the sizes a hostile file would declare. Memory bombs load in a subprocess
under ``RLIMIT_AS`` = 4 GiB, so a regression fails fast instead of eating the machine.
"""

import collections
import dataclasses
import errno
import io
import os
from pathlib import Path
import pickle
import re
import struct
import subprocess
import sys
import tarfile
import threading
import time
from typing import Optional
import warnings
import zipfile

from cityseg_ros import checkpoints
from cityseg_ros.checkpoints import (check_file, download, DownloadLimits, fetch,
                                     load_checkpoint, load_state_dict, read_checkpoint)
from cityseg_ros.errors import CheckpointError, ConfigError, DownloadError
from cityseg_ros.models import zoo
import pytest
from test_checkpoints import clear_proxies, serving
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
GIB = 1 << 30


# --------------------------------------------------------------------------------------------
# Files made as torch.save makes them, declaring what a hostile file declares


class FakeStorage:
    """A tensor storage as a persistent id: ('storage', type, key, location, numel)."""

    def __init__(self, key: str, numel: int, storage_type=torch.FloatStorage):
        self.key, self.numel, self.storage_type = key, numel, storage_type


class FakeTensor:
    """Pickles as ``torch._utils._rebuild_tensor_v2(storage, 0, size, stride, ...)``."""

    def __init__(self, storage: FakeStorage, size: tuple):
        self.storage, self.size = storage, tuple(size)

    def __reduce__(self):
        stride = tuple(int(torch.tensor(self.size[i + 1:]).prod()) for i in range(len(self.size)))
        return (torch._utils._rebuild_tensor_v2,
                (self.storage, 0, self.size, stride, False, collections.OrderedDict()))


class Call:
    """Pickles as ``func(*args)``: any global, as a hostile file would name it."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


class _Pickler(pickle.Pickler):
    legacy = False

    def persistent_id(self, obj):
        if isinstance(obj, FakeStorage):
            pid = ('storage', obj.storage_type, obj.key, 'cpu', obj.numel)
            return pid + (None,) if self.legacy else pid
        return None


def dumps(obj, legacy: bool = False) -> bytes:
    buf = io.BytesIO()
    pickler = _Pickler(buf, protocol=2)
    pickler.legacy = legacy
    pickler.dump(obj)
    return buf.getvalue()


def zip_checkpoint(path: Path, obj=None, records: dict = None, pickled: bytes = None) -> Path:
    """Write torch's zip format: ``archive/data.pkl`` plus ``archive/data/<key>`` records."""
    with zipfile.ZipFile(path, 'w', zipfile.ZIP_STORED) as archive:
        archive.writestr('archive/data.pkl', pickled if pickled is not None else dumps(obj))
        archive.writestr('archive/byteorder', 'little')
        for key, data in (records or {}).items():
            archive.writestr(f'archive/data/{key}', data)
        archive.writestr('archive/version', '3\n')
    return path


def legacy_checkpoint(path: Path, obj=None, storages: dict = None, pickled: bytes = None) -> Path:
    """Write torch's pre-1.6 format: magic, version, system info, object, keys, storages."""
    out = io.BytesIO()
    for header in (0x1950a86a20f9469cfc6c, 1001,
                   {'protocol_version': 1001, 'little_endian': True,
                    'type_sizes': {'short': 2, 'int': 4, 'long': 4}}):
        pickle.dump(header, out, protocol=2)
    out.write(pickled if pickled is not None else dumps(obj, legacy=True))
    pickle.dump(list(storages or {}), out, protocol=2)
    for numel, data in (storages or {}).values():
        out.write(struct.pack('<q', numel) + data)
    path.write_bytes(out.getvalue())
    return path


def declare_member_size(path: Path, member: str, size: int) -> Path:
    """Rewrite the size a zip member declares (central directory and local header)."""
    data = bytearray(path.read_bytes())
    pos = data.find(b'PK\x01\x02')
    while pos >= 0:
        length = struct.unpack_from('<H', data, pos + 28)[0]
        if bytes(data[pos + 46:pos + 46 + length]) == member.encode():
            struct.pack_into('<I', data, pos + 24, size)
            struct.pack_into('<I', data, struct.unpack_from('<I', data, pos + 42)[0] + 22, size)
        pos = data.find(b'PK\x01\x02', pos + 4)
    path.write_bytes(bytes(data))
    return path


def deep_pickle(levels: int) -> bytes:
    """Return ``{'a': {'a': ...}}`` ``levels`` deep as opcodes (pickle.dumps would recurse)."""
    return b'\x80\x02' + (b'}X\x01\x00\x00\x00a' * levels) + b'}' + b's' * levels + b'.'


# A dict that contains itself: EMPTY_DICT, memo 0, 'a' -> memo 0, SETITEM.
CYCLE_PICKLE = b'\x80\x02}q\x00X\x01\x00\x00\x00ah\x00s.'


def _tiny() -> dict:
    return {'w': FakeTensor(FakeStorage('0', 4), (4,))}


# --------------------------------------------------------------------------------------------
# Memory bombs: refused before torch allocates (subprocess, RLIMIT_AS 4 GiB)


_LIMITED = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
from cityseg_ros.checkpoints import load_state_dict
from cityseg_ros.errors import CheckpointError
for path in sys.argv[1:]:
    try:
        load_state_dict(path)
        print('loaded')
    except CheckpointError as exc:
        print('CheckpointError:', exc)
"""


def _bombs(tmp: Path) -> dict:
    """Make hostile files; return each with the start of what its error must say."""
    cases = {}

    def case(name, path, message):
        cases[name] = (path, message)

    path = zip_checkpoint(tmp / 'pkl_3gib.pt', _tiny(), {'0': bytes(16)})
    case('zip data.pkl declares 3 GiB', declare_member_size(path, 'archive/data.pkl', 3 * GIB),
         "declares zip member 'archive/data.pkl' of 3221225472 B, but the whole file has")
    path = zip_checkpoint(tmp / 'rec_4gib.pt', _tiny(), {'0': bytes(16)})
    case('zip record declares 4 GiB', declare_member_size(path, 'archive/data/0', 4 * GIB - 1),
         "declares zip member 'archive/data/0' of 4294967295 B, but the whole file has")
    case('zip storage claims 8 GiB',
         zip_checkpoint(tmp / 'claim.pt', {'w': FakeTensor(FakeStorage('0', 2 * GIB), (4,))},
                        {'0': bytes(16)}),
         'has a tensor storage that claims 8589934592 B, but its data (data/0) has 16 B')
    case('legacy storage claims 8 GiB',
         legacy_checkpoint(tmp / 'claim_legacy.pt',
                           {'w': FakeTensor(FakeStorage('k', 2 * GIB), (4,))},
                           {'k': (4, bytes(16))}),
         'has tensor storages that claim 8589934600 B, but only')
    case('bytearray(8 GiB)',
         zip_checkpoint(tmp / 'bytearray.pt', {'w': Call(bytearray, 8 * GIB)}),
         'asks for a bytearray of 8589934592 B')
    case('torch.ByteStorage(8 GiB)',
         zip_checkpoint(tmp / 'storage.pt', {'w': Call(torch.ByteStorage, 8 * GIB)}),
         'calls torch.ByteStorage(8589934592,), which would allocate more')
    qtensor = Call(torch._utils._rebuild_qtensor, FakeStorage('0', 4, torch.QUInt8Storage), 0,
                   (8 * GIB,), (1,), (torch.per_tensor_affine, 1.0, 0), False,
                   collections.OrderedDict())
    case('quantized tensor of 8 Gi elements',
         zip_checkpoint(tmp / 'qtensor.pt', {'w': qtensor}, {'0': bytes(4)}),
         'declares a quantized tensor of shape (8589934592,)')
    import numpy as np
    case('numpy scalar of a 2 GiB dtype',  # numpy's largest
         zip_checkpoint(tmp / 'npscalar.pt',
                        {'w': Call(np._core.multiarray.scalar, np.dtype(f'V{2 * GIB - 1}'))}),
         'holds a numpy scalar without its data')
    return cases


def test_memory_bombs_are_refused_before_anything_is_allocated(tmp_path):
    cases = _bombs(tmp_path)
    env = {**os.environ, 'PYTHONPATH': str(REPO), 'OMP_NUM_THREADS': '1'}
    result = subprocess.run([sys.executable, '-c', _LIMITED, *(str(p) for p, _ in cases.values())],
                            capture_output=True, text=True, env=env, timeout=300)
    lines = result.stdout.splitlines()
    assert result.returncode == 0 and len(lines) == len(cases), result.stdout + result.stderr
    for (name, (path, message)), line in zip(cases.items(), lines):
        assert line.startswith(f'CheckpointError: {path} {message}'), (name, line)
        assert 'delete it' in line, (name, line)


# --------------------------------------------------------------------------------------------
# Code that would run: the forbidden global is named


@pytest.mark.parametrize('fmt', ['zip', 'legacy'])
@pytest.mark.parametrize('func, name', [(os.system, f'{os.system.__module__}.system'),
                                        (eval, 'builtins.eval'),
                                        (subprocess.call, 'subprocess.call')])
def test_a_file_that_would_run_code_names_the_global(tmp_path, fmt, func, name):
    path = tmp_path / 'evil.pth'
    obj = {'w': Call(func, 'touch /tmp/pwned')}
    if fmt == 'zip':
        zip_checkpoint(path, obj)
    else:
        legacy_checkpoint(path, obj)
    with pytest.raises(CheckpointError) as info:
        load_state_dict(path)
    text = str(info.value)
    assert f'tries to import the forbidden Python global {name}:' in text, text
    assert 'must not be trusted' in text and 'truncated' not in text, text


def test_forbidden_global_is_named_even_in_a_damaged_file(tmp_path):
    pickled = dumps({'w': Call(os.system, 'true')})
    path = zip_checkpoint(tmp_path / 'w.pth', pickled=pickled[:len(pickled) // 2 + 20])
    with pytest.raises(CheckpointError, match=r'forbidden Python global \w+\.system'):
        load_state_dict(path)


def test_inspection_imports_nothing(tmp_path):
    pickled = b'\x80\x02ccityseg_never_imported_module\nboom\n)R.'
    path = zip_checkpoint(tmp_path / 'w.pth', pickled=pickled)
    with pytest.raises(CheckpointError, match='cityseg_never_imported_module.boom'):
        load_state_dict(path)
    assert 'cityseg_never_imported_module' not in sys.modules


# --------------------------------------------------------------------------------------------
# Paths that are not regular files


def _finishes(func, fifo: Path = None, seconds: float = 20.0):
    """Run ``func`` in a thread; fail (and unblock a FIFO reader) if it does not return."""
    outcome = {}

    def target():
        try:
            outcome['value'] = func()
        except Exception as exc:  # noqa: B902 (handed to the test)
            outcome['error'] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        if fifo is not None:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # release the blocked open
            os.close(fd)
        pytest.fail(f'still blocked after {seconds} s')
    return outcome


def _special(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / 'w.pth'
    if kind == 'fifo':
        os.mkfifo(path)
    elif kind == 'symlink loop':
        os.symlink(path, path)
    elif kind == 'dangling symlink':
        os.symlink(tmp_path / 'gone.pth', path)
    elif kind == 'directory':
        path.mkdir()
    elif kind == 'character device':
        os.symlink('/dev/zero', path)
    return path


@pytest.mark.parametrize('kind, message', [
    ('fifo', r'is a FIFO \(named pipe\), not a file'),
    ('symlink loop', 'is a loop of symbolic links'),
    ('dangling symlink', 'not found'),
    ('directory', 'is a directory; pass the checkpoint file inside it'),
    ('character device', 'is a character device, not a file'),
])
def test_special_files_are_refused_without_blocking(monkeypatch, tmp_path, kind, message):
    path = _special(tmp_path, kind)
    model = nn.Linear(2, 2)
    outcome = _finishes(lambda: load_checkpoint(model, path), path if kind == 'fifo' else None)
    error = outcome.get('error')
    assert isinstance(error, CheckpointError), outcome
    assert str(path) in str(error) and '\n' not in str(error)
    assert re.search(message, str(error)), str(error)


# --------------------------------------------------------------------------------------------
# Structure: nesting, cycles, caps, foreign formats


@pytest.mark.parametrize('pickled, message', [
    (deep_pickle(10_000), 'nests containers more than 64 levels deep'),
    (CYCLE_PICKLE, 'holds a container that contains itself'),
])
def test_deep_or_cyclic_containers_are_refused(tmp_path, pickled, message):
    path = zip_checkpoint(tmp_path / 'w.pth', pickled=pickled)
    with pytest.raises(CheckpointError, match=message):
        load_state_dict(path)


@pytest.mark.parametrize('fmt', ['zip', 'legacy'])
def test_pickle_over_the_cap_is_refused(monkeypatch, tmp_path, fmt):
    monkeypatch.setattr(checkpoints, '_MAX_PICKLE', 4096)
    state = {f'layer{i}.weight': torch.zeros(1) for i in range(200)}  # ~10 kB of pickle
    path = tmp_path / 'w.pth'
    torch.save(state, path, _use_new_zipfile_serialization=fmt == 'zip')
    with pytest.raises(CheckpointError, match='pickled structure'):
        load_state_dict(path)


def test_legit_files_still_load_with_the_checks(tmp_path):
    state = {f'layer{i}.weight': torch.full((3,), float(i)) for i in range(50)}
    for fmt in ('zip', 'legacy'):
        path = tmp_path / f'{fmt}.pth'
        torch.save(state, path, _use_new_zipfile_serialization=fmt == 'zip')
        loaded = load_state_dict(path)
        assert all(torch.equal(loaded[k], v) for k, v in state.items())
    crafted = load_state_dict(zip_checkpoint(tmp_path / 'c.pth', _tiny(), {'0': bytes(16)}))
    assert torch.equal(crafted['w'], torch.zeros(4))


def test_torchscript_archive_is_named_without_warnings(tmp_path):
    path = tmp_path / 'scripted.pt'
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # torch.jit is deprecated
        torch.jit.save(torch.jit.script(nn.Linear(2, 2)), str(path))
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        with pytest.raises(CheckpointError, match='TorchScript archive.*not a state dict') as info:
            load_state_dict(path)
    assert 'truncated' not in str(info.value)


def test_tar_checkpoint_is_named(tmp_path):
    path = tmp_path / 'old.pth'
    with tarfile.open(path, 'w') as tar:
        info = tarfile.TarInfo('storages')
        info.size = 4
        tar.addfile(info, io.BytesIO(b'\x80\x02N.'))
    with pytest.raises(CheckpointError, match='a tar archive'):
        load_state_dict(path)


@pytest.mark.parametrize('make, what', [
    (lambda: torch.zeros(2, dtype=torch.complex64), 'a complex tensor'),
    (lambda: torch.zeros(2).to_sparse(), 'a torch.sparse_coo tensor'),
    (lambda: torch.empty(2, device='meta'), 'a tensor on the meta device'),
    (lambda: torch.quantize_per_tensor(torch.zeros(2), 1.0, 0, torch.quint8),
     'a quantized tensor'),
])
def test_tensors_that_are_not_plain_are_refused(tmp_path, make, what):
    path = tmp_path / 'w.pth'
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # quantized tensors are deprecated
        torch.save({'weight': make(), 'bias': torch.zeros(2)}, path)
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # a complex tensor copied into a float one would warn
        with pytest.raises(CheckpointError, match=f"entry 'weight' is {what}"):
            load_checkpoint(nn.Linear(2, 2), path)


def test_read_checkpoint_returns_training_states_as_they_are(tmp_path):
    state = {'step': 3, 'rng': [{'python': [1, 2]}], 't': torch.ones(2)}
    torch.save(state, tmp_path / 'last.pt')
    loaded = read_checkpoint(tmp_path / 'last.pt', 'fix', mmap=False)
    assert loaded['step'] == 3 and loaded['rng'] == state['rng']


# --------------------------------------------------------------------------------------------
# sha256 records: one that cannot be read is a failure


PAYLOAD = b'weights' * 100


@pytest.mark.parametrize('kind, message', [
    ('directory', 'is a directory, not a file'),
    ('fifo', r'is a FIFO \(named pipe\), not a file'),
    ('garbage', 'holds no sha256 digest'),
    ('empty', 'holds no sha256 digest'),
    ('huge', 'holds no sha256 digest'),
    ('symlink loop', 'is a loop of symbolic links'),
])
def test_unreadable_sha256_record_fails_the_check(tmp_path, kind, message):
    path = tmp_path / 'w.pth'
    path.write_bytes(PAYLOAD)
    record = tmp_path / 'w.pth.sha256'
    if kind == 'directory':
        record.mkdir()
    elif kind == 'fifo':
        os.mkfifo(record)
    elif kind == 'garbage':
        record.write_text('not a digest  w.pth\n')
    elif kind == 'empty':
        record.write_bytes(b'')
    elif kind == 'huge':
        record.write_bytes(b'0' * 64 + b' ' * 10_000)
    elif kind == 'symlink loop':
        os.symlink(record, record)
    wf = zoo.WeightsFile('w.pth', '')
    outcome = _finishes(lambda: check_file(path, wf), record if kind == 'fifo' else None)
    problem = outcome.get('value')
    assert problem is not None, 'a record nobody can read must not pass'
    assert problem.startswith(f'sha256 record {record} '), problem
    assert re.search(message, problem), problem


def test_unreadable_weights_file_is_a_problem_not_a_traceback(tmp_path, monkeypatch):
    path = tmp_path / 'w.pth'
    path.write_bytes(PAYLOAD)
    real_open = os.open

    def refuse(name, *args, **kwargs):
        if str(name) == str(path):
            raise PermissionError(13, 'Permission denied', str(name))
        return real_open(name, *args, **kwargs)

    monkeypatch.setattr(os, 'open', refuse)
    wf = zoo.WeightsFile('w.pth', '', sha256='0' * 64)
    assert check_file(path, wf) == 'cannot be read (permission denied)'


# --------------------------------------------------------------------------------------------
# Downloads from hostile servers into a hostile cache: bounded, one error, nothing left


@pytest.fixture
def server(monkeypatch):
    clear_proxies(monkeypatch)
    with serving() as state:
        state.files['w.pth'] = PAYLOAD
        yield state


FAST = DownloadLimits(timeout=5.0, min_rate=1000.0, rate_window=0.5, deadline=20.0)


def _download(server, dest: Path, limits=FAST, **kwargs) -> tuple[Optional[Exception], float]:
    """Download w.pth from ``server``; return the error (or None) and the seconds it took."""
    start = time.monotonic()
    kwargs.setdefault('size', len(PAYLOAD))
    try:
        download(f'{server.url}/w.pth', dest, progress=False, limits=limits, **kwargs)
    except (DownloadError, ConfigError) as exc:
        return exc, time.monotonic() - start
    return None, time.monotonic() - start


@pytest.mark.parametrize('announced, size, message', [
    (None, len(PAYLOAD), f'sent more than the expected {len(PAYLOAD)} bytes'),
    (10 * GIB, len(PAYLOAD), f'announces 10737418240 bytes, more than the expected '
                             f'{len(PAYLOAD)}'),
    (None, None, 'sent more than the cap of 100000 bytes'),
])
def test_server_that_never_stops_is_cut_at_the_expected_size(server, tmp_path, announced, size,
                                                             message):
    server.endless['w.pth'] = announced
    limits = dataclasses.replace(FAST, max_bytes=100_000)
    error, seconds = _download(server, tmp_path / 'w.pth', limits, size=size)
    assert isinstance(error, DownloadError) and message in str(error), error
    assert 'the download was deleted' in str(error) and '\n' not in str(error)
    assert list(tmp_path.iterdir()) == [] and seconds < 10


def test_trickling_server_is_given_up_on_below_the_minimum_rate(server, tmp_path):
    server.trickle['w.pth'] = 0.05  # 20 B/s: 10 minutes for the file, never a read timeout
    error, seconds = _download(server, tmp_path / 'w.pth')
    assert isinstance(error, DownloadError), error
    assert 'below the minimum of 1000 B/s' in str(error) and seconds < 10, (error, seconds)
    assert list(tmp_path.iterdir()) == []


def test_download_past_its_deadline_is_given_up_on(server, tmp_path):
    server.trickle['w.pth'] = 0.02
    limits = DownloadLimits(timeout=5.0, min_rate=0, deadline=1.0)
    error, seconds = _download(server, tmp_path / 'w.pth', limits)
    assert isinstance(error, DownloadError) and 'took longer than 1 s' in str(error), error
    assert seconds < 8 and list(tmp_path.iterdir()) == []


def test_trickled_headers_time_out(server, tmp_path):
    server.slow_headers['w.pth'] = 0.2  # each byte well within the socket timeout
    limits = DownloadLimits(timeout=1.0)
    error, seconds = _download(server, tmp_path / 'w.pth', limits)
    assert isinstance(error, DownloadError), error
    assert 'no response headers within 1 s' in str(error) and seconds < 8, (error, seconds)
    assert list(tmp_path.iterdir()) == []


class _FullDisk:
    """A file whose writes fail as on a full disk once 100 bytes are written."""

    def __init__(self, fh):
        self._fh = fh

    def write(self, data):
        if self._fh.tell() + len(data) > 100:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self._fh.write(data)

    def __getattr__(self, name):
        return getattr(self._fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._fh.close()


def test_disk_full_deletes_the_partial_file(server, tmp_path, monkeypatch):
    real = checkpoints._open_part
    monkeypatch.setattr(checkpoints, '_open_part', lambda *a, **k: _FullDisk(real(*a, **k)))
    monkeypatch.setattr(checkpoints, '_CHUNK', 64)
    error, _ = _download(server, tmp_path / 'w.pth')
    assert isinstance(error, DownloadError), error
    assert 'No space left on device' in str(error) and 'deleted' in str(error)
    assert list(tmp_path.iterdir()) == []


def _in_the_way(tmp_path: Path, kind: str) -> Path:
    """Put something where the cache, the file or its .part goes; return the destination."""
    dest = tmp_path / 'cache' / 'w.pth'
    if kind == 'cache is a file':
        dest.parent.write_bytes(b'')
        return dest
    dest.parent.mkdir()
    part = dest.with_name('w.pth.part')
    if kind == 'destination is a directory':
        dest.mkdir()
    elif kind == '.part is a directory':
        part.mkdir()
    elif kind == '.part is a FIFO':
        os.mkfifo(part)
    elif kind == '.part is a symlink':
        (tmp_path / 'elsewhere').write_bytes(b'keep')
        os.symlink(tmp_path / 'elsewhere', part)
    return dest


@pytest.mark.parametrize('kind, message', [
    ('cache is a file', 'is a file, not a directory'),
    ('destination is a directory', 'is a directory where the downloaded file should go'),
    ('.part is a directory', 'w.pth.part: it is a directory; remove it'),
    ('.part is a FIFO', 'w.pth.part: it is a FIFO; remove it'),
    ('.part is a symlink', 'w.pth.part: it is a symbolic link; remove it'),
])
def test_things_in_the_way_in_the_cache_are_one_error(server, tmp_path, kind, message):
    dest = _in_the_way(tmp_path, kind)
    outcome = _finishes(lambda: _download(server, dest)[0])
    error = outcome.get('value')
    assert isinstance(error, DownloadError) and message in str(error), outcome
    assert '\n' not in str(error)
    if kind == '.part is a symlink':
        assert (tmp_path / 'elsewhere').read_bytes() == b'keep'


@pytest.mark.parametrize('mirror, message', [
    ('http://[::1/', 'is not a valid URL (Invalid IPv6 URL)'),
    ('http://127.0.0.1:99999/', 'is not a valid URL (Port out of range'),
    ('http://127.0.0.1:port/', 'is not a valid URL'),
    ('ftp://example.com/w/', 'is not an http, https or file URL'),
    ('http:///w/', 'has no host name'),
    ('http://exa mple.com/', 'contains spaces or control characters'),
])
def test_bad_mirror_urls_are_config_errors(monkeypatch, tmp_path, mirror, message):
    monkeypatch.setitem(zoo.ZOO, 'tiny', zoo.ModelSpec(
        name='tiny', builder=nn.Identity, num_classes=2, mean=zoo.IMAGENET_MEAN,
        std=zoo.IMAGENET_STD, test_size=(32, 64), resize='fixed', align_corners=False,
        output_stride=1, weights=(zoo.WeightsFile('tiny.pth', 'https://example.invalid/t.pth'),)))
    with pytest.raises(ConfigError, match=re.escape(message)):
        fetch('tiny', cache=tmp_path, mirror=mirror, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_file_mirror_that_is_a_fifo_is_not_opened(tmp_path):
    mirror = tmp_path / 'mirror'
    mirror.mkdir()
    os.mkfifo(mirror / 'w.pth')
    outcome = _finishes(lambda: download((mirror / 'w.pth').as_uri(), tmp_path / 'c' / 'w.pth',
                                         progress=False), mirror / 'w.pth')
    assert isinstance(outcome.get('error'), DownloadError), outcome
    assert 'is a FIFO' in str(outcome['error'])


def test_fetch_refuses_an_unreadable_sha256_record(server, tmp_path, monkeypatch):
    monkeypatch.setitem(zoo.ZOO, 'tiny', zoo.ModelSpec(
        name='tiny', builder=nn.Identity, num_classes=2, mean=zoo.IMAGENET_MEAN,
        std=zoo.IMAGENET_STD, test_size=(32, 64), resize='fixed', align_corners=False,
        output_stride=1, weights=(zoo.WeightsFile('w.pth', ''),)))
    (tmp_path / 'w.pth').write_bytes(b'modified')
    (tmp_path / 'w.pth.sha256').mkdir()
    with pytest.raises(DownloadError, match=r'sha256 record .* is a directory, not a file, so '
                                            r'w\.pth cannot be verified'):
        fetch('tiny', cache=tmp_path, mirror=server.url, progress=False)
    assert server.requests == []
