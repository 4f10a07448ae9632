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

"""Weight files: the cache, resumable verified downloads, and safe strict loading.

Loading follows timm's ``_helpers.py``: ``torch.load(weights_only=True)`` on the CPU, then the
zoo entry's key adapter, then a strict load, and every failure becomes one
:class:`~cityseg_ros.errors.CheckpointError` that names the file, the zoo model and the fix.
Downloads go to ``<file>.part``, resume with an HTTP Range request, stop at the expected size
(or a cap), give up on servers that stall or trickle, and are renamed into place only after the
size and sha256 match.

Files are hostile until checked. Only regular files are opened (never a FIFO or a device), and
before ``torch.load`` runs, :func:`read_checkpoint` walks the file's pickle with an unpickler
that imports and runs nothing: every size it declares (zip members, tensor storages,
allocating calls) is checked against the file and a cap, and a forbidden global is named.
"""

import _compat_pickle
from collections.abc import Mapping
import dataclasses
from dataclasses import dataclass
import errno
import hashlib
import http.client
import io
import logging
import os
from pathlib import Path
import pickle
import re
import socket
import stat
import sys
import threading
import time
from typing import BinaryIO, Optional, Union
import urllib.error
import urllib.parse
import urllib.request
import warnings
import zipfile

from cityseg_ros import __version__
from cityseg_ros.errors import CheckpointError, ConfigError, DownloadError, ZooError
from cityseg_ros.models.zoo import get_spec, ModelSpec, WeightsFile, ZOO
import numpy as np
import torch
from torch import nn
from tqdm import tqdm

__all__ = ['cache_dir', 'check_file', 'download', 'DownloadLimits', 'fetch', 'file_problem',
           'load_checkpoint', 'load_state_dict', 'read_checkpoint', 'resolve_weights',
           'tensor_problem', 'verify', 'weights_url']

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

CACHE_ENV = 'CITYSEG_ROS_CACHE'
MIRROR_ENV = 'CITYSEG_ROS_WEIGHTS_MIRROR'

_CHUNK = 1 << 20
_SHOW_KEYS = 5
# Keys under which training frameworks nest the state dict (mmcv/mmseg 'state_dict', timm and
# many repos 'model' or 'state_dict_ema', DataParallel dumps 'module'). Only used to explain an
# error: unwrapping is each zoo entry's adapter's job.
_WRAPPER_KEYS = ('state_dict', 'model', 'module', 'state_dict_ema', 'model_ema', 'net', 'params')
# First bytes of files that are often saved by mistake in place of a checkpoint.
_MAGIC = (
    (b'\x89PNG\r\n\x1a\n', 'a PNG image'),
    (b'\xff\xd8\xff', 'a JPEG image'),
    (b'\x1f\x8b', 'a gzip archive'),
    (b'version https://git-lfs', 'a Git LFS pointer, not the weights (run git lfs pull)'),
    (b'<!doctype html', 'an HTML page (an error or login page saved instead of the file?)'),
    (b'<html', 'an HTML page (an error or login page saved instead of the file?)'),
    (b'<?xml', 'an XML document (an error page saved instead of the file?)'),
)
_ZIP_MAGIC = b'PK\x03\x04'
_PICKLE_PROTO = b'\x80'  # torch.save's legacy format is a protocol-2 pickle stream
# torch.serialization's MAGIC_NUMBER and PROTOCOL_VERSION: the first two pickles of the legacy
# format.
_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c
_LEGACY_PROTOCOL = 1001

# Caps on what a file may declare before anything is allocated for it. The pickled structure of
# a state dict (zip member data.pkl, or the pickles of the legacy format) is well under 1 MiB
# even with an optimiser state; a training state nests 5 levels deep.
_MAX_PICKLE = 32 << 20
_MAX_GLOBALS = 1000
_MAX_DEPTH = 64
# A .sha256 record is one line: the digest, two spaces, the file name.
_MAX_RECORD = 4096
# torch's weights_only unpickler refuses every global of these modules by name.
_BLOCKED_MODULES = frozenset({'sys', 'os', 'posix', 'nt'})


# --------------------------------------------------------------------------------------------
# Files are hostile until checked


class _FileProblem(Exception):
    """Why a path cannot be used, in words that follow the path in a message."""


_KINDS = ((stat.S_ISREG, 'a file'), (stat.S_ISDIR, 'a directory'),
          (stat.S_ISFIFO, 'a FIFO (named pipe)'), (stat.S_ISSOCK, 'a socket'),
          (stat.S_ISCHR, 'a character device'), (stat.S_ISBLK, 'a block device'))
_OS_REASONS = {
    errno.ENOENT: 'not found',
    errno.ELOOP: 'is a loop of symbolic links',
    errno.EACCES: 'cannot be read (permission denied)',
    errno.EPERM: 'cannot be read (operation not permitted)',
    errno.ENOTDIR: 'not found (a part of its path is not a directory)',
    errno.ENAMETOOLONG: 'has a name too long for the file system',
}


def _kind(mode: int) -> str:
    for test, what in _KINDS:
        if test(mode):
            return what
    return 'not a regular file'


def _os_problem(exc: OSError) -> str:
    return _OS_REASONS.get(exc.errno, f'cannot be read ({exc.strerror or exc})')


def file_problem(path: PathLike) -> Optional[str]:
    """Say why ``path`` is not a regular file that can be opened, or None when it is one.

    Symbolic links are followed. The answer follows the path in a message: ``'not found'``,
    ``'is a directory, not a file'``, ``'is a FIFO (named pipe), not a file'``, ``'is a loop of
    symbolic links'``, ...
    """
    try:
        st = os.stat(path)
    except OSError as exc:
        return _os_problem(exc)
    except ValueError:  # an embedded NUL byte
        return 'is not a valid path'
    if not stat.S_ISREG(st.st_mode):
        return f'is {_kind(st.st_mode)}, not a file'
    return None


def _open_regular(path: PathLike) -> BinaryIO:
    """Open a regular file for reading; a FIFO or device is refused, never waited on.

    The type is checked before opening and again on the open descriptor (O_NONBLOCK, so that a
    FIFO swapped in between cannot block the open either).

    Raises:
        _FileProblem: the path is missing, not a regular file, or cannot be opened.
    """
    problem = file_problem(path)
    if problem:
        raise _FileProblem(problem)
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, 'O_NOCTTY', 0) | getattr(os, 'O_CLOEXEC', 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise _FileProblem(_os_problem(exc)) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise _FileProblem(f'is {_kind(mode)}, not a file')
        os.set_blocking(fd, True)
        return os.fdopen(fd, 'rb')
    except BaseException:
        os.close(fd)
        raise


# --------------------------------------------------------------------------------------------
# The cache


def cache_dir() -> Path:
    """Where downloaded weights live.

    ``$CITYSEG_ROS_CACHE`` if set, else ``$XDG_CACHE_HOME/cityseg_ros/weights``, else
    ``~/.cache/cityseg_ros/weights``. The directory is not created here.
    """
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get('XDG_CACHE_HOME')
    base = Path(xdg).expanduser() if xdg else Path.home() / '.cache'
    return base / 'cityseg_ros' / 'weights'


def _sha256_record(path: Path) -> Path:
    return path.with_name(path.name + '.sha256')


def _read_record(path: Path) -> Optional[str]:
    """Return the digest recorded beside ``path`` on its first download; None without a record.

    Raises:
        _FileProblem: a record is there but cannot be read or holds no digest. That is a
            failure, never a pass: a record nobody can read checks nothing.
    """
    record = _sha256_record(path)
    try:
        os.lstat(record)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _FileProblem(f'sha256 record {record} {_os_problem(exc)}') from None
    try:
        with _open_regular(record) as fh:
            data = fh.read(_MAX_RECORD + 1)
    except _FileProblem as exc:
        raise _FileProblem(f'sha256 record {record} {exc}') from None
    except OSError as exc:
        raise _FileProblem(f'sha256 record {record} {_os_problem(exc)}') from None
    words = data[:_MAX_RECORD].decode('ascii', 'replace').split()
    if len(data) > _MAX_RECORD or not words or not re.fullmatch(r'[0-9a-fA-F]{64}', words[0]):
        raise _FileProblem(f'sha256 record {record} holds no sha256 digest')
    return words[0].lower()


def _sha256_file(path: Path) -> str:
    """Hash a regular file.

    Raises:
        _FileProblem: not a regular file, or reading failed.
    """
    digest = hashlib.sha256()
    with _open_regular(path) as fh:
        try:
            for block in iter(lambda: fh.read(_CHUNK), b''):
                digest.update(block)
        except OSError as exc:
            raise _FileProblem(_os_problem(exc)) from None
    return digest.hexdigest()


def check_file(path: PathLike, wf: WeightsFile) -> Optional[str]:
    """Say what is wrong with a local copy of ``wf``, or None when it is good.

    The size is checked when the zoo knows it; the sha256 against the zoo's digest, else against
    the one recorded beside the file on its first download. A file whose digest is known nowhere
    passes (there is nothing to compare with); a record that is there but cannot be read fails.
    """
    path = Path(path)
    problem = file_problem(path)
    if problem:
        return 'missing' if problem == 'not found' else problem
    actual_size = path.stat().st_size
    if wf.size is not None and actual_size != wf.size:
        return f'size {actual_size} B, expected {wf.size} B'
    try:
        expected = wf.sha256.lower() if wf.sha256 else _read_record(path)
        if expected is None:
            return None
        actual = _sha256_file(path)
    except _FileProblem as exc:
        return str(exc)
    if actual != expected:
        return f'sha256 {actual}, expected {expected}'
    return None


def verify(path: PathLike, wf: WeightsFile) -> bool:
    """Whether ``path`` is an intact copy of the released file ``wf`` (see :func:`check_file`)."""
    return check_file(path, wf) is None


def resolve_weights(spec: ModelSpec, weights: Optional[str],
                    cache: Optional[PathLike] = None) -> Optional[Path]:
    """Turn a ``--weights`` value into a file.

    Args:
        spec: the zoo entry the weights are for.
        weights: None for random weights, ``'auto'`` for the spec's default file in the cache,
            else a path.
        cache: the cache directory; :func:`cache_dir` when None.

    Returns:
        The file, or None for random weights.

    Raises:
        CheckpointError: the file is missing or not a regular file, or ``'auto'`` but the model
            has no released weights or they are not in the cache yet.
    """
    if weights is None:
        return None
    if weights == 'auto':
        if not spec.weights:
            raise CheckpointError(f'model {spec.name!r} has no released weights, so --weights '
                                  'auto cannot work; train it and pass --weights FILE')
        path = Path(cache).expanduser() if cache else cache_dir()
        path = path / spec.weights[0].filename
        problem = file_problem(path)
        if problem == 'not found':
            raise CheckpointError(f'{path} is not in the cache; run fetch_weights --model '
                                  f'{spec.name} or pass --weights FILE')
        if problem:
            raise CheckpointError(f'{path} in the cache {problem}; remove it and run '
                                  f'fetch_weights --model {spec.name}')
        return path
    path = Path(weights).expanduser()
    problem = file_problem(path)
    if problem:
        raise CheckpointError(f'--weights {weights} {problem}; run fetch_weights --model '
                              f'{spec.name} or pass a file')
    return path


# --------------------------------------------------------------------------------------------
# Looking inside a checkpoint before torch.load does


class _Refused(Exception):
    """The file declares something that is not loaded: the message says what (after the path)."""


class _Stub:
    """Stands for a global while a pickle is inspected: nothing is imported or run."""

    __slots__ = ('args',)
    inspector = None  # set on the subclass made for each global
    name = ''

    def __new__(cls, *args, **kwargs):
        if cls.inspector is not None:
            value = cls.inspector.called(cls.name, args)
            if value is not None:
                return value
        obj = object.__new__(cls)
        obj.args = args
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass

    def __setitem__(self, key, value):
        pass

    def append(self, item):
        pass

    def extend(self, items):
        pass


def _storage_itemsizes() -> dict[str, int]:
    """Bytes per element of each storage class a pickle may name (``FloatStorage``: 4)."""
    sizes = {'UntypedStorage': 1}
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # reading TypedStorage.dtype warns of its deprecation
        for name in dir(torch):
            cls = getattr(torch, name)
            if (name.endswith('Storage') and isinstance(cls, type)
                    and issubclass(cls, torch.storage.TypedStorage)
                    and cls is not torch.storage.TypedStorage):
                try:
                    sizes[name] = cls.dtype.itemsize
                except (AttributeError, RuntimeError, TypeError):
                    pass
    return sizes


_STORAGE_ITEMSIZE = _storage_itemsizes()
# Allowlisted calls that allocate memory from a number in the file: legacy tensor and storage
# constructors (torch.FloatTensor(n), torch.ByteStorage(n), incl. torch.cuda / torch.sparse).
_ALLOCATING = re.compile(r'torch\.(?:cuda\.)?(?:sparse\.)?\w*(?:Tensor|Storage)'
                         r'|torch\.storage\.\w*Storage')


def _numel(shape: object) -> Optional[int]:
    """Return the number of elements of a shape (a tuple of ints), or None if not one."""
    if not isinstance(shape, (tuple, list)) or not all(type(d) is int for d in shape):
        return None
    numel = 1
    for dim in shape:
        if dim < 0:
            return None
        numel *= dim
    return numel


class _Corrupt(Exception):
    """The file is damaged (truncated, overwritten): the message says how."""


class _Inspector(pickle._Unpickler):
    """Walk pickles as ``torch.load(weights_only=True)`` would, importing and running nothing.

    Every global becomes a stub class; persistent ids (tensor storages) and the calls that
    allocate are recorded, so that their sizes can be checked against the file before torch
    reads it. Reads past the limit return nothing, so a declared length never allocates.
    """

    def __init__(self, budget: int):
        self._fh: BinaryIO = io.BytesIO()
        self._left = 0
        self._capped = False
        super().__init__(self, encoding='utf-8')  # reads through self; torch.load's encoding
        self.budget = budget  # bytes one allocating call may ask for
        self.globals: list[str] = []
        self.storages: dict[str, int] = {}  # storage key -> bytes its elements take
        self._classes: dict[str, type] = {}

    def source(self, fh: BinaryIO, available: int) -> None:
        """Read the next pickles from ``fh``, which has ``available`` bytes left."""
        self._fh = fh
        self._left = min(available, _MAX_PICKLE)
        self._capped = available > _MAX_PICKLE

    def next_object(self) -> object:
        """Unpickle the next object with stubs for globals and storages.

        Raises:
            _Refused: a declaration is over a cap.
            _Corrupt: the pickle is malformed or truncated.
        """
        self.memo = {}  # torch starts a new unpickler for each pickle
        try:
            return self.load()
        except (_Refused, _Corrupt):
            raise
        except (RecursionError, MemoryError) as exc:
            raise _Corrupt(f'its pickle cannot be walked ({type(exc).__name__})') from None
        except Exception as exc:  # anything a malformed pickle makes pickle raise
            if self._left <= 0 and self._capped:
                raise _Refused(f'holds more pickled structure than the cap of {_MAX_PICKLE} B '
                               '(a state dict needs well under 1 MiB)') from None
            reason = ' '.join(str(exc).split())[:120] or type(exc).__name__
            raise _Corrupt(f'its pickle is malformed ({reason})') from None

    # The file interface pickle reads through, clamped to what is left.
    def read(self, n: int = -1) -> bytes:
        n = self._left if n is None or n < 0 else min(n, self._left)
        data = self._fh.read(n)
        self._left -= len(data)
        return data

    def readline(self, n: int = -1) -> bytes:
        n = self._left if n is None or n < 0 else min(n, self._left)
        data = self._fh.readline(n)
        self._left -= len(data)
        return data

    def readinto(self, buf) -> int:
        data = self.read(len(buf))
        buf[:len(data)] = data
        return len(data)

    def find_class(self, module: str, name: str) -> type:
        # Python 2 names, mapped as torch's _read_global_instruction does.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        full = f'{module}.{name}'
        if full not in self._classes:
            if len(self._classes) >= _MAX_GLOBALS:
                raise _Refused(f'names more than {_MAX_GLOBALS} Python globals')
            self.globals.append(full)
            self._classes[full] = type('Stub', (_Stub,),
                                       {'__slots__': (), 'inspector': self, 'name': full})
        return self._classes[full]

    def get_extension(self, code: int):
        raise pickle.UnpicklingError('EXT opcodes are never written by torch.save')

    def persistent_load(self, pid: object) -> _Stub:
        if isinstance(pid, tuple) and len(pid) >= 5 and pid[0] in ('storage', b'storage'):
            storage_type, key, numel = pid[1], pid[2], pid[4]
            itemsize = _STORAGE_ITEMSIZE.get(getattr(storage_type, 'name', '').rpartition('.')[2])
            if isinstance(key, bytes):
                key = key.decode('ascii', 'replace')
            if type(numel) is int and isinstance(key, str) and itemsize:
                if numel < 0:
                    raise _Corrupt(f'a tensor storage has {numel} elements')
                self.storages[key] = max(self.storages.get(key, 0), numel * itemsize)
        return _Stub()

    def called(self, name: str, args: tuple) -> object:
        """Check a call the pickle makes; return a value to use instead of a stub, or None."""
        if name == '_codecs.encode' and len(args) == 2 and all(isinstance(a, str) for a in args):
            # How protocol 2 pickles bytes: _codecs.encode(text, 'latin1'). Harmless, and the
            # bytes are needed to check numpy scalars below.
            if args[1].lower().replace('-', '').replace('_', '') in ('latin1', 'iso88591'):
                try:
                    return args[0].encode('latin-1')
                except UnicodeEncodeError:
                    return None
            return None
        numbers = [a for a in args if type(a) is int]
        if name == 'builtins.bytearray' and numbers and numbers[0] > self.budget:
            raise _Refused(f'asks for a bytearray of {numbers[0]} B, more than the file '
                           f'could hold ({self.budget} B)')
        if name == 'torch._utils._rebuild_qtensor' and len(args) >= 3:
            # torch allocates the quantized tensor from its shape before checking the storage.
            numel = _numel(args[2])
            if numel is None or numel * 4 > self.budget:
                raise _Refused(f'declares a quantized tensor of shape {args[2]!r:.80}, more '
                               f'than the file could hold ({self.budget} B)')
        if _ALLOCATING.fullmatch(name) and numbers:
            numel = _numel(numbers)
            if numel is None or numel * 16 > self.budget:
                raise _Refused(f'calls {name}{tuple(numbers)!r:.80}, which would allocate more '
                               f'than the file could hold ({self.budget} B)')
        if name.endswith('multiarray.scalar'):
            # numpy.core.multiarray.scalar(dtype) allocates the dtype's size, which the file
            # chooses; with its data (as numpy pickles scalars) the data bounds it.
            if len(args) != 2 or not isinstance(args[1], bytes):
                raise _Refused('holds a numpy scalar without its data')
        return None

    def forbidden(self) -> Optional[str]:
        """Return the first global that torch.load(weights_only=True) refuses, if any."""
        try:
            from torch import _weights_only_unpickler as wo
            with torch.serialization.safe_globals(_NUMPY_SCALARS):
                allowed = set(wo._get_allowed_globals()) | set(wo._get_user_allowed_globals())
        except (ImportError, AttributeError):  # private API: torch.load still refuses them
            return None
        for name in self.globals:
            if name.partition('.')[0] in _BLOCKED_MODULES or name not in allowed:
                return name
        return None


def _zip_members(fh: BinaryIO, size: int) -> tuple[dict[str, zipfile.ZipInfo], zipfile.ZipFile]:
    """Return the records of a torch zip checkpoint by name, their declared sizes checked."""
    try:
        archive = zipfile.ZipFile(fh)
        infos = archive.infolist()
    except Exception as exc:  # BadZipFile, struct.error, ValueError, ...: damaged directory
        raise _Corrupt(f'its zip directory is damaged ({exc or type(exc).__name__})') from None
    if not infos:
        raise _Corrupt('the zip archive is empty')
    names = [info.filename for info in infos]
    if len(set(names)) != len(names):
        raise _Refused('is a zip archive with two members of the same name')
    total = 0
    for info in infos:
        # torch.save stores members uncompressed, so together they cannot exceed the file.
        total += info.file_size
        if info.file_size > size or total > size:
            raise _Refused(f'declares zip member {info.filename!r:.80} of {info.file_size} B, '
                           f'but the whole file has {size} B')
    # torch reads records relative to the archive's top folder (the first member's).
    prefix = names[0].partition('/')[0] + '/'
    records = {n[len(prefix):]: i for n, i in zip(names, infos) if n.startswith(prefix)}
    return records, archive


def _inspect_zip(fh: BinaryIO, size: int, inspector: _Inspector) -> None:
    records, archive = _zip_members(fh, size)
    if 'constants.pkl' in records:
        raise _Refused('is a TorchScript archive (torch.jit.save), not a state dict; load it '
                       'with torch.jit.load and torch.save its state_dict()')
    info = records.get('data.pkl')
    if info is None:
        raise _Corrupt('the zip archive has no data.pkl')
    for name, record in records.items():
        if not name.startswith('data/') and record.file_size > _MAX_PICKLE:
            raise _Refused(f'declares {record.file_size} B of pickled structure in zip member '
                           f'{name!r:.80}, over the cap of {_MAX_PICKLE} B (a state dict needs '
                           'well under 1 MiB)')
    try:
        data = archive.read(info)
    except Exception as exc:  # bad CRC, truncated member, unsupported compression, ...
        raise _Corrupt(f'its data.pkl cannot be read ({exc or type(exc).__name__})') from None
    inspector.source(io.BytesIO(data), len(data))
    inspector.next_object()
    for key, claimed in inspector.storages.items():
        record = records.get(f'data/{key}')
        if record is None:
            raise _Corrupt(f'a tensor refers to data/{key:.40}, which the archive lacks')
        if claimed > record.file_size:
            raise _Refused(f'has a tensor storage that claims {claimed} B, but its data '
                           f'(data/{key:.40}) has {record.file_size} B')


def _inspect_legacy(fh: BinaryIO, size: int, inspector: _Inspector) -> None:
    """Check torch's pre-1.6 format: five pickles, then each storage's bytes."""
    inspector.source(fh, size)
    if inspector.next_object() != _LEGACY_MAGIC:
        raise _Corrupt("it does not start with torch.save's magic number")
    protocol = inspector.next_object()
    if protocol != _LEGACY_PROTOCOL:
        raise _Corrupt(f'it has an unknown format version {protocol!r:.40}')
    inspector.next_object()  # system info
    inspector.next_object()  # the object
    keys = inspector.next_object()
    if not isinstance(keys, list):
        raise _Corrupt('its list of tensor storages is missing')
    # torch allocates every storage the object names before reading any of them.
    claimed = sum(inspector.storages.values()) + 8 * len(keys)
    left = size - fh.tell()
    if claimed > left:
        raise _Refused(f'has tensor storages that claim {claimed} B, but only {left} B follow '
                       'in the file')


def _looks_like_tar(head: bytes) -> bool:
    """Whether ``head`` starts with a tar header (a valid checksum), torch's oldest format."""
    if len(head) < 512:
        return False
    field = head[148:156].replace(b'\0', b' ').strip()
    if not field or not all(48 <= c <= 55 for c in field):
        return False
    checksum = sum(head[:148]) + 8 * 32 + sum(head[156:512])
    return int(field, 8) == checksum


def _nesting_problem(obj: object) -> Optional[str]:
    """Say if containers nest deeper than the cap or contain themselves; None when fine.

    Iterative (no recursion on hostile depth), and each container is visited once, so shared
    sub-structures (a "billion laughs") cost nothing.
    """
    def children(x: object) -> Optional[list]:
        if isinstance(x, dict):
            return [*x.keys(), *x.values()]
        if isinstance(x, (list, tuple, set, frozenset)):
            return list(x)
        return None

    kids = children(obj)
    if kids is None:
        return None
    done: set[int] = set()
    path = {id(obj)}
    stack = [(obj, iter(kids))]
    while stack:
        node, todo = stack[-1]
        for child in todo:
            grandchildren = children(child)
            if grandchildren is None or id(child) in done:
                continue
            if id(child) in path:
                return 'holds a container that contains itself'
            if len(stack) >= _MAX_DEPTH:
                return f'nests containers more than {_MAX_DEPTH} levels deep'
            path.add(id(child))
            stack.append((child, iter(grandchildren)))
            break
        else:
            stack.pop()
            path.discard(id(node))
            done.add(id(node))
    return None


def _describe_bytes(head: bytes) -> str:
    lowered = head.lstrip().lower()
    for magic, what in _MAGIC:
        if lowered.startswith(magic.lower()):
            return what
    if _looks_like_tar(head):
        return 'a tar archive (torch < 0.4 saved tar checkpoints; weights_only cannot read them)'
    if len(head) > 9 and head[8:9] == b'{':
        return 'a safetensors file (not supported: pass a torch.save checkpoint)'
    return 'unknown data (first bytes ' + head[:8].hex(' ') + ')'


def _numpy_scalar_globals() -> list:
    """Allow numpy scalars and dtypes, which only rebuild plain numbers.

    mmcv's EvalHook stores ``meta['hook_msgs']['best_score']`` as a numpy float64, so released
    mmseg checkpoints (InternImage) hold one; weights_only refuses it by default. The alias
    covers files pickled under numpy 1.x.
    """
    scalar = np._core.multiarray.scalar
    dtypes = [getattr(np.dtypes, name) for name in dir(np.dtypes) if name.endswith('DType')]
    return [scalar, (scalar, 'numpy.core.multiarray.scalar'), np.dtype] + dtypes


_NUMPY_SCALARS = _numpy_scalar_globals()


def _torch_reason(exc: Exception) -> str:
    """Return the line of a torch.load error that says what is wrong, without the advice."""
    text = str(exc)
    match = re.search(r'WeightsUnpickler error: ([^\n]+)', text)
    if match:
        return match.group(1).strip()[:200]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if lines and lines[0].startswith('Weights only load failed'):
        # The reason is the paragraph after torch's advice; the last one links the docs.
        lines = [ln for ln in lines[1:] if not ln.startswith(('Check the documentation', '('))]
        lines = [ln for ln in lines if 'weights_only' not in ln] or lines
    if not lines:
        return type(exc).__name__
    return re.split(r'(?<=\.)\s', lines[0], maxsplit=1)[0][:200]


def _forbidden_error(path: Path, name: str, fix: str) -> CheckpointError:
    return CheckpointError(
        f'{path} tries to import the forbidden Python global {name}: it is not a plain weights '
        'file and must not be trusted (unpickling it could run code, so torch.load(weights_only'
        f'=True) refused it); delete it; {fix}')


def read_checkpoint(path: PathLike, fix: str, mmap: bool = True) -> object:
    """Read a checkpoint safely: regular file, sizes checked, ``torch.load(weights_only=True)``.

    Before torch reads the file, its pickle is walked without running anything; zip members,
    tensor storages and allocating calls must fit in the file (and the pickle in a cap), and
    every global must be one that weights_only allows. After loading, containers may nest at
    most 64 levels and never contain themselves.

    Args:
        path: the file.
        fix: what the user should do, appended to every message (e.g. ``'run fetch_weights
            --model espnetv2 or pass a file'``).
        mmap: memory-map zip-format files (tensors are then backed by the file's pages).

    Returns:
        The unpickled object, tensors on the CPU.

    Raises:
        CheckpointError: missing, not a regular file, empty, truncated, corrupt, hostile
            (oversized declarations, forbidden globals) or not a PyTorch checkpoint.
    """
    path = Path(path).expanduser()
    try:
        fh = _open_regular(path)
    except _FileProblem as exc:
        if str(exc) == 'is a directory, not a file':
            raise CheckpointError(f'{path} is a directory; pass the checkpoint file inside '
                                  'it') from None
        raise CheckpointError(f'{path} {exc}; {fix}') from None
    size, kind = 0, 'unknown'
    with fh:
        try:
            size = os.fstat(fh.fileno()).st_size
            head = fh.read(512)
            if not head:
                raise CheckpointError(f'{path} is empty (0 bytes), an interrupted copy or '
                                      f'download? Delete it; {fix}')
            is_zip = head.startswith(_ZIP_MAGIC)
            kind = 'zip' if is_zip else 'legacy pickle'
            if not is_zip and (not head.startswith(_PICKLE_PROTO) or _looks_like_tar(head)):
                raise CheckpointError(f'{path} is not a PyTorch checkpoint: it looks like '
                                      f'{_describe_bytes(head)}; {fix}')
            fh.seek(0)
            inspector = _Inspector(budget=max(size, 1 << 20))
            try:
                (_inspect_zip if is_zip else _inspect_legacy)(fh, size, inspector)
            except (_Refused, _Corrupt):
                # A forbidden global says the most, even in a file that is also damaged.
                name = inspector.forbidden()
                if name:
                    raise _forbidden_error(path, name, fix) from None
                raise
            name = inspector.forbidden()
            if name:
                raise _forbidden_error(path, name, fix)
            fh.seek(0)
            with warnings.catch_warnings(record=True) as caught, \
                    torch.serialization.safe_globals(_NUMPY_SCALARS):
                warnings.simplefilter('always')
                # mmap (by path) only works for the zip format (torch >= 1.6); legacy pickles
                # (e.g. the EdgeNets files) are read whole, from the file already open.
                use_mmap = mmap and is_zip
                state = torch.load(path if use_mmap else fh, map_location='cpu',
                                   weights_only=True, mmap=use_mmap)
            for warning in caught:
                log.debug('torch.load(%s): %s', path, warning.message)
        except CheckpointError:
            raise
        except _Refused as exc:
            raise CheckpointError(f'{path} {exc}: it is not a checkpoint this package loads '
                                  f'(hostile or damaged); delete it; {fix}') from None
        except _Corrupt as exc:
            raise CheckpointError(f'{path} is truncated or corrupt ({size} B {kind} '
                                  f'checkpoint: {exc}); delete it; {fix}') from None
        except OSError as exc:
            raise CheckpointError(f'{path} {_os_problem(exc)}; {fix}') from None
        except Exception as exc:  # torch.load raises many types for bad data; all mean "bad file"
            text = str(exc)
            refused = re.search(r'GLOBAL ([\w.]+)', text)
            if refused:
                raise _forbidden_error(path, refused.group(1), fix) from None
            raise CheckpointError(f'{path} is truncated or corrupt ({size} B {kind} '
                                  f'checkpoint: {_torch_reason(exc)}); delete it; {fix}') from None
    problem = _nesting_problem(state)
    if problem:
        raise CheckpointError(f'{path} {problem}: not a checkpoint this package loads; delete '
                              f'it; {fix}')
    return state


def _read_checkpoint(path: Path, fix: str) -> object:
    """``torch.load`` with ``weights_only=True``; every failure becomes a CheckpointError."""
    return read_checkpoint(path, fix)


def tensor_problem(value: torch.Tensor) -> Optional[str]:
    """Say why a tensor is not a plain dense CPU tensor of real numbers, or None."""
    if value.is_nested:
        return 'a nested tensor'
    if value.layout != torch.strided:
        return f'a {value.layout} tensor'
    if value.is_quantized:
        return 'a quantized tensor'
    if value.device.type != 'cpu':
        return f'a tensor on the {value.device.type} device (no data)'
    if value.is_complex():
        return 'a complex tensor'
    return None


def _check_tensors(state: object, path: Path, spec: Optional[ModelSpec]) -> dict:
    """Insist on a flat mapping of names to tensors; explain wrappers the adapter left."""
    owner = f' (zoo model {spec.name!r})' if spec else ''
    if not isinstance(state, Mapping):
        kind = type(state).__name__
        article = 'an' if kind[:1].lower() in 'aeiou' else 'a'
        raise CheckpointError(f'{path} holds {article} {kind}, not a state dict (a mapping of '
                              f'parameter names to tensors){owner}')
    nested = [k for k, v in state.items() if isinstance(v, Mapping)]
    if nested:
        inner = ([k for k in nested if k in _WRAPPER_KEYS] or nested)[0]
        top = _first([str(k)[:80] for k in state])
        who = (f'the key adapter of zoo model {spec.name!r} does not unwrap it: is this a '
               'checkpoint of another model?') if spec else 'a flat state dict is expected.'
        raise CheckpointError(
            f'{path} is a wrapped checkpoint (top-level keys: {top}; tensors under '
            f'{inner!r:.80}) and {who} For a file you trained, save the inner dict: '
            f"torch.save(ckpt[{inner!r:.80}], 'flat.pth')")
    for key, value in state.items():
        if not isinstance(key, str):
            raise CheckpointError(f'{path} has a non-string key {key!r:.80}; expected a state '
                                  f'dict of parameter names{owner}')
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f'{path}: entry {key!r:.80} is of type '
                                  f'{type(value).__name__}, not a tensor; expected a flat state '
                                  f'dict{owner}')
        problem = tensor_problem(value)
        if problem:
            raise CheckpointError(f'{path}: entry {key!r:.80} is {problem}; expected plain '
                                  f'dense CPU tensors{owner}')
    return dict(state)


def load_state_dict(path: PathLike, spec: Optional[ModelSpec] = None) -> dict[str, torch.Tensor]:
    """Read a checkpoint safely and return its flat state dict.

    :func:`read_checkpoint` (``torch.load(map_location='cpu', weights_only=True)`` after the
    file's declarations were checked), memory-mapped for zip-format files. When ``spec`` is
    given its key adapter is applied (that is the only place wrappers such as mmcv's
    ``state_dict`` are unwrapped); otherwise the file must be flat already.

    Args:
        path: the checkpoint file.
        spec: the zoo entry the file is for; names the model in messages.

    Returns:
        Parameter and buffer names -> CPU tensors, as stored (dtype unchanged).

    Raises:
        CheckpointError: missing, empty, truncated, hostile or foreign file; a pickle with
            forbidden Python globals; not a mapping of dense tensors after the adapter.
    """
    path = Path(path).expanduser()
    fix = (f'run fetch_weights --model {spec.name} or pass a file' if spec
           else 'pass a checkpoint file saved with torch.save')
    state = read_checkpoint(path, fix)
    if spec is not None and isinstance(state, Mapping):
        try:
            state = spec.adapter(state)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError,
                RecursionError) as exc:
            detail = ' '.join(str(exc).split())[:200]
            raise CheckpointError(f'the key adapter of zoo model {spec.name!r} cannot read '
                                  f'{path} ({type(exc).__name__}: {detail}); is this a '
                                  'checkpoint of another model?') from None
    return _check_tensors(state, path, spec)


def _first(items: list[str], total: Optional[int] = None) -> str:
    total = len(items) if total is None else total
    shown = ', '.join(items[:_SHOW_KEYS])
    return shown + (f', ... (+{total - _SHOW_KEYS} more)' if total > _SHOW_KEYS else '')


def _zoo_owner(path: Path) -> Optional[str]:
    """Return the zoo model that released a file of this name, if any."""
    for name, spec in ZOO.items():
        if spec.weights_for(path.name) is not None:
            return name
    return None


def load_checkpoint(model: nn.Module, path: PathLike) -> None:
    """Load a checkpoint into a zoo model, strictly.

    Reads with :func:`load_state_dict` (``weights_only=True``), applies the adapter of
    ``get_spec(model.zoo_name)``, compares names and shapes with ``model.state_dict()`` and only
    then loads. Floating-point tensors are converted to the model's dtype by the copy (an fp16
    file loads into an fp32 model); the model keeps its dtype and device.

    Args:
        model: built by :func:`cityseg_ros.models.build_model` (which sets ``zoo_name``); a
            plain module is accepted and loaded without an adapter.
        path: the checkpoint file, e.g. the official release as downloaded.

    Raises:
        CheckpointError: unreadable file, or missing / unexpected / wrongly shaped keys (the
            first five of each are named, shapes from the file and the model).
    """
    path = Path(path).expanduser()
    zoo_name = getattr(model, 'zoo_name', None)
    spec = get_spec(zoo_name) if zoo_name else None
    target = f'zoo model {zoo_name!r}' if spec else f'{type(model).__name__}'
    state = load_state_dict(path, spec)
    expected = model.state_dict()

    # BatchNorm fills a missing num_batches_tracked itself (checkpoints from torch < 0.4.1).
    missing = [k for k in expected if k not in state and not k.endswith('.num_batches_tracked')]
    unexpected = [k for k in state if k not in expected]
    shapes = [f'{k}: file {list(v.shape)} vs model {list(expected[k].shape)}'
              for k, v in state.items() if k in expected and v.shape != expected[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f'{len(missing)} missing keys ({_first(missing)})')
        if unexpected:
            parts.append(f'{len(unexpected)} unexpected keys ({_first(unexpected)})')
        if shapes:
            parts.append(f'{len(shapes)} wrongly shaped ({_first(shapes)})')
        hint = 'is this a checkpoint of another model?'
        owner = _zoo_owner(path)
        wf = spec.weights_for(path.name) if spec else None
        if owner and owner != zoo_name:
            hint += f' (the file name is a release of zoo model {owner!r})'
        elif wf is not None and wf.model_kwargs:
            hint = (f'{path.name} needs the variant {dict(wf.model_kwargs)}: build the model '
                    f'with build_model({zoo_name!r}, get_spec({zoo_name!r}).weights_for(path))')
        raise CheckpointError(f'{path} does not fit {target} ({len(state)} tensors in the file, '
                              f'{len(expected)} in the model): {"; ".join(parts)}; {hint}')
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = ' '.join(str(exc).split())[:300]
        raise CheckpointError(f'{path} does not load into {target}: {detail}') from None
    log.debug('loaded %d tensors from %s into %s', len(state), path, target)


# --------------------------------------------------------------------------------------------
# Downloading


@dataclass(frozen=True)
class DownloadLimits:
    """When a download gives up, so that no server can hang it or fill the disk.

    Attributes:
        timeout: seconds for connecting, for the response headers and for any one read.
        min_rate: bytes/s the body must average over every ``rate_window`` (like curl's
            ``--speed-limit``); 0 turns the check off.
        rate_window: seconds over which ``min_rate`` is averaged.
        deadline: seconds for the whole download; None for no limit.
        max_bytes: the most a file of unknown size may have (the largest release is ~1.5 GB).
    """

    timeout: float = 30.0
    min_rate: float = 4096.0
    rate_window: float = 30.0
    deadline: Optional[float] = 4 * 3600.0
    max_bytes: int = 4 << 30


class _Watchdog:
    """Shuts the connection's socket when a time limit passes, so no blocking read outlives it.

    Socket timeouts bound each read, not a server that sends a byte just before each one
    expires; this bounds the header phase and the whole download.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._sockets: list = []
        self._timer: Optional[threading.Timer] = None
        self.fired: Optional[str] = None

    def arm(self, seconds: Optional[float], reason: str) -> None:
        self.cancel()
        if seconds is not None:
            self._timer = threading.Timer(max(seconds, 0.0), self._fire, (reason,))
            self._timer.daemon = True
            self._timer.start()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def track(self, sock) -> None:
        with self._lock:
            self._sockets.append(sock)
            if self.fired:
                self._shut(sock)

    def _fire(self, reason: str) -> None:
        with self._lock:
            self.fired = reason
            for sock in self._sockets:
                self._shut(sock)

    @staticmethod
    def _shut(sock) -> None:
        try:
            # The plain socket's shutdown, also for TLS: the reading thread sees end-of-file.
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
        except (OSError, TypeError, ValueError):
            pass


def _tracked(base: type, watchdog: _Watchdog) -> type:
    class Connection(base):
        def connect(self):
            super().connect()
            watchdog.track(self.sock)
    return Connection


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, watchdog: _Watchdog):
        super().__init__()
        self._watchdog = watchdog

    def http_open(self, req):
        return self.do_open(_tracked(http.client.HTTPConnection, self._watchdog), req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, watchdog: _Watchdog):
        super().__init__()
        self._watchdog = watchdog

    def https_open(self, req):
        return self.do_open(_tracked(http.client.HTTPSConnection, self._watchdog), req,
                            context=self._context)


class _Abort(Exception):
    """The download must stop and its partial file go: the message says why."""


def _part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + '.part')


def _host(url: str) -> str:
    try:
        parts = urllib.parse.urlsplit(url)
        return parts.hostname or parts.netloc or url
    except ValueError:
        return url


def _check_url(url: str, what: str) -> None:
    """Refuse a URL urllib cannot use, with the reason, before anything is created.

    Raises:
        ConfigError: not http(s) or file, no host, a bad port or IPv6 literal, control
            characters.
    """
    fix = 'use http(s)://HOST[:PORT]/PATH/ or file:///DIR/'
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError for a port out of range or not a number)
    except ValueError as exc:
        raise ConfigError(f'{what} {url!r:.200} is not a valid URL ({exc}); {fix}') from None
    if re.search(r'[\x00-\x20\x7f]', url):
        raise ConfigError(f'{what} {url!r:.200} contains spaces or control characters; '
                          'percent-encode them')
    if parts.scheme not in ('http', 'https', 'file'):
        raise ConfigError(f'{what} {url!r:.200} is not an http, https or file URL; {fix}')
    if parts.scheme != 'file' and not parts.hostname:
        raise ConfigError(f'{what} {url!r:.200} has no host name; {fix}')


def _content_range(value: Optional[str]) -> tuple[Optional[int], Optional[int]]:
    """``bytes START-END/TOTAL`` or ``bytes */TOTAL`` -> (START, TOTAL)."""
    match = re.fullmatch(r'\s*bytes\s+(?:(\d{1,19})-\d{1,19}|\*)/(\d{1,19}|\*)\s*', value or '')
    if not match:
        return None, None
    start, total = match.groups()
    return (int(start) if start else None), (int(total) if total != '*' else None)


def _unreachable(url: str, reason: object, dest: Path) -> DownloadError:
    if urllib.parse.urlsplit(url).scheme == 'file':
        return DownloadError(f'cannot read {url}: {reason} (is the --mirror path right? or copy '
                             f'the file to {dest})')
    return DownloadError(f'cannot reach {_host(url)}: {reason} (no network? use --mirror URL or '
                         f'copy the file to {dest})')


def _open(url: str, offset: int, limits: DownloadLimits, watchdog: _Watchdog, dest: Path):
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == 'file':
        # urllib would open a FIFO or a device as it is: a mirror file must be a regular file.
        local = urllib.request.url2pathname(parts.path)
        problem = file_problem(local)
        if problem:
            raise _unreachable(url, f'{local} {problem}', dest)
    headers = {'User-Agent': f'cityseg_ros/{__version__}', 'Accept-Encoding': 'identity'}
    if offset:
        headers['Range'] = f'bytes={offset}-'
    request = urllib.request.Request(url, headers=headers)
    opener = urllib.request.build_opener(_HTTPHandler(watchdog), _HTTPSHandler(watchdog))
    # Connecting and the headers share one time limit (a server may trickle its headers).
    watchdog.arm(limits.timeout, f'no response headers within {limits.timeout:g} s')
    try:
        return opener.open(request, timeout=limits.timeout)
    except urllib.error.HTTPError:
        raise
    except urllib.error.URLError as exc:
        raise _unreachable(url, watchdog.fired or exc.reason, dest) from None
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise _unreachable(url, watchdog.fired or str(exc) or type(exc).__name__, dest) from None
    finally:
        watchdog.cancel()


def _open_part(part: Path, append: bool) -> BinaryIO:
    """Open the partial download for writing: a regular file, never through a symlink."""
    flags = (os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK | getattr(os, 'O_NOFOLLOW', 0)
             | getattr(os, 'O_NOCTTY', 0) | getattr(os, 'O_CLOEXEC', 0)
             | (os.O_APPEND if append else os.O_TRUNC))
    try:
        fd = os.open(part, flags, 0o644)
    except OSError as exc:
        what = {errno.ELOOP: 'it is a symbolic link', errno.EISDIR: 'it is a directory',
                errno.ENXIO: 'it is a FIFO'}.get(exc.errno)
        fix = 'choose another cache directory (--cache-dir or $CITYSEG_ROS_CACHE)'
        if what is None:
            raise DownloadError(f'cannot write {part}: {exc.strerror or exc}; {fix}') from None
        raise DownloadError(f'cannot write {part}: {what}; remove it, or {fix}') from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise DownloadError(f'cannot write {part}: it is {_kind(mode)}; remove it')
    os.set_blocking(fd, True)
    return os.fdopen(fd, 'ab' if append else 'wb')


def _stream(response, url: str, part: Path, offset: int, size: Optional[int], progress: bool,
            limits: DownloadLimits, started: float) -> None:
    """Append the response body to ``part``; a cut connection keeps what arrived.

    Stops at the expected size (or the cap when the size is unknown): a server that sends
    more is not believed, and a server slower than ``limits`` allows is given up on.

    Raises:
        DownloadError: the connection broke off (``part`` kept, to resume).
        _Abort: too much data, too slow, past the deadline, or ``part`` cannot be written.
    """
    length = response.headers.get('Content-Length')
    body = int(length) if length and length.isdigit() and len(length) < 20 else None
    cap = size if size is not None else limits.max_bytes
    what = 'the expected' if size is not None else 'the cap of'
    if body is not None and offset + body > cap:
        raise _Abort(f'{url} announces {offset + body} bytes, more than {what} {cap}')
    total = offset + body if body is not None else size
    received = 0
    error = None
    window_start, window_bytes = time.monotonic(), 0
    read = getattr(response, 'read1', response.read)  # whatever has arrived, not a full chunk
    bar = tqdm(total=total, initial=offset, unit='B', unit_scale=True, unit_divisor=1024,
               desc=part.name[:-len('.part')], file=sys.stderr, dynamic_ncols=True,
               disable=not progress or not sys.stderr.isatty())
    with bar, _open_part(part, append=bool(offset)) as fh:
        while True:
            left = cap - offset - received
            try:
                # One byte more than may come shows a server that does not stop.
                chunk = read(min(_CHUNK, left + 1))
            except (OSError, http.client.HTTPException, ValueError) as exc:
                # reset, timeout, IncompleteRead, or the watchdog shut the socket
                error = f'{type(exc).__name__}: {exc}' if str(exc) else type(exc).__name__
                break
            if not chunk:
                break
            if len(chunk) > left:
                raise _Abort(f'{url} sent more than {what} {cap} bytes')
            try:
                fh.write(chunk)
            except OSError as exc:
                raise _Abort(f'cannot write {part}: {exc.strerror or exc} (disk full? free '
                             'space or choose another cache directory with --cache-dir)'
                             ) from None
            received += len(chunk)
            window_bytes += len(chunk)
            bar.update(len(chunk))
            now = time.monotonic()
            if limits.deadline is not None and now - started > limits.deadline:
                raise _Abort(f'the download of {url} took longer than {limits.deadline:g} s')
            if limits.min_rate and now - window_start >= limits.rate_window:
                rate = window_bytes / (now - window_start)
                if rate < limits.min_rate:
                    raise _Abort(f'{_host(url)} sent {rate:.0f} B/s over {now - window_start:.0f}'
                                 f' s, below the minimum of {limits.min_rate:g} B/s')
                window_start, window_bytes = now, 0
        try:
            fh.flush()
        except OSError as exc:
            raise _Abort(f'cannot write {part}: {exc.strerror or exc} (disk full? free space '
                         'or choose another cache directory with --cache-dir)') from None
    if error is None and body is not None and received < body:
        error = 'the server closed the connection'
    if error is not None:
        raise DownloadError(f'download of {url} broke off after {offset + received} of '
                            f'{total if total is not None else "?"} bytes ({error}); run again '
                            f'to resume from the partial file {part}')


def _receive(url: str, part: Path, offset: int, size: Optional[int], progress: bool,
             limits: DownloadLimits) -> None:
    """Fetch ``url`` into ``part``, resuming at ``offset`` when the server allows it."""
    started = time.monotonic()
    watchdog = _Watchdog()
    for _ in range(2):  # the second try starts from byte 0, so it never loops back here
        try:
            response = _open(url, offset, limits, watchdog, part.parent)
        except urllib.error.HTTPError as exc:
            _, total = _content_range(exc.headers.get('Content-Range') if exc.headers else None)
            exc.close()
            if exc.code == 416 and offset:
                if total == offset:
                    return  # the partial file is already whole
                log.info('%s refused to resume %s; downloading from the start', _host(url), part)
                part.unlink(missing_ok=True)
                offset = 0
                continue
            reason = ' '.join(str(exc.reason).split())[:100]
            raise DownloadError(f'download of {url} failed: HTTP {exc.code} {reason} (moved '
                                'or private? use --mirror URL or copy the file to '
                                f'{part.parent})') from None
        if limits.deadline is not None:
            watchdog.arm(limits.deadline - (time.monotonic() - started),
                         f'the download of {url} took longer than {limits.deadline:g} s')
        try:
            with response:
                status = getattr(response, 'status', None) or 200  # file:// mirrors have none
                if offset and status == 206:
                    start, _ = _content_range(response.headers.get('Content-Range'))
                    if start != offset:
                        log.info('%s resumed %s at byte %s instead of %d; downloading from the '
                                 'start', _host(url), part, start, offset)
                        offset = 0
                        continue
                elif offset:
                    # The server ignored the Range header and sends the whole file (HTTP 200).
                    log.info('%s cannot resume downloads; fetching %s from the start',
                             _host(url), part.name[:-len('.part')])
                    offset = 0
                try:
                    _stream(response, url, part, offset, size, progress, limits, started)
                except DownloadError:
                    if watchdog.fired:
                        raise _Abort(watchdog.fired) from None
                    raise
                return
        finally:
            watchdog.cancel()
    raise DownloadError(f'{_host(url)} answers resume requests inconsistently; delete {part} '
                        'and run again')


def _prepare_dir(directory: Path) -> None:
    """Create the cache directory, or say why it cannot be one."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        mode = os.stat(directory).st_mode
        raise DownloadError(f'the cache directory {directory} is {_kind(mode)}, not a directory'
                            '; choose another (--cache-dir or $CITYSEG_ROS_CACHE)') from None
    except OSError as exc:
        raise DownloadError(f'cannot create the cache directory {directory}: '
                            f'{exc.strerror or exc}; choose another (--cache-dir or '
                            '$CITYSEG_ROS_CACHE)') from None


def download(url: str, dest: PathLike, sha256: Optional[str] = None, size: Optional[int] = None,
             progress: bool = True, timeout: Optional[float] = None,
             limits: Optional[DownloadLimits] = None) -> Path:
    """Download ``url`` to ``dest``: resumable, bounded, verified, renamed into place at the end.

    Bytes go to ``<dest>.part``; an existing ``.part`` is resumed with an HTTP Range request
    (servers that answer 200 instead of 206 are restarted from byte 0). A cut connection
    leaves the ``.part`` for the next call. The body stops at ``size`` (or
    ``limits.max_bytes``); a server that sends more, stalls, trickles below
    ``limits.min_rate`` or outlasts ``limits.deadline`` is given up on and the ``.part``
    deleted, as after a write error (disk full). After the size and sha256 match, the file is
    renamed atomically to ``dest``. With ``sha256=None`` the digest is computed and recorded in
    ``<dest>.sha256`` (trust on first download) and a warning is logged.

    Args:
        url: http(s) (or file) URL.
        dest: final path; its directory is created.
        sha256: expected hex digest, or None when unknown.
        size: expected size in bytes, or None.
        progress: show a tqdm byte counter on stderr (only when stderr is a terminal).
        timeout: replaces ``limits.timeout`` when given.
        limits: time and size limits; :class:`DownloadLimits` defaults when None.

    Returns:
        ``dest``.

    Raises:
        ConfigError: ``url`` is not a usable URL.
        DownloadError: host unreachable, HTTP error status, connection cut (partial file kept),
            too much data, too slow, size or sha256 mismatch, the cache not writable (partial
            file deleted).
    """
    limits = limits or DownloadLimits()
    if timeout is not None:
        limits = dataclasses.replace(limits, timeout=timeout)
    _check_url(url, 'URL')
    dest = Path(dest).expanduser()
    _prepare_dir(dest.parent)
    if dest.is_dir():
        raise DownloadError(f'{dest} is a directory where the downloaded file should go; '
                            'remove it or choose another cache directory')
    part = _part_path(dest)
    offset = part.stat().st_size if part.is_file() and not part.is_symlink() else 0
    if size is not None and offset > size:
        part.unlink()
        offset = 0
    if offset:
        log.info('resuming %s at byte %d', dest.name, offset)
    try:
        if size is None or offset != size:
            _receive(url, part, offset, size, progress, limits)
        actual_size = part.stat().st_size
        if size is not None and actual_size != size:
            raise _Abort(f'{url} sent {actual_size} bytes, expected {size}')
        try:
            digest = _sha256_file(part)
        except _FileProblem as exc:
            raise _Abort(f'{part} {exc}') from None
        if sha256 is not None and digest != sha256.lower():
            raise _Abort(f'sha256 mismatch for {url}: expected {sha256.lower()}, got {digest}')
        os.replace(part, dest)
    except _Abort as exc:
        _remove(part)
        raise DownloadError(f'{exc}; the download was deleted: run again, or check that the '
                            'mirror has the released file') from None
    except OSError as exc:  # stat / rename in a cache that changed under us
        _remove(part)
        raise DownloadError(f'cannot store {dest}: {exc.strerror or exc}; the download was '
                            'deleted') from None
    if sha256 is None:
        record = _sha256_record(dest)
        tmp = record.with_name(record.name + '.tmp')
        try:
            tmp.write_text(f'{digest}  {dest.name}\n', encoding='ascii')
            os.replace(tmp, record)
        except OSError as exc:
            # Without its record the file could never be checked again: it goes too.
            _remove(tmp)
            _remove(dest)
            raise DownloadError(f'cannot write the sha256 record {record}: '
                                f'{exc.strerror or exc}; the download was deleted') from None
        log.warning('sha256 of %s was unknown; recorded %s in %s on first download (compare it '
                    "with the publisher's before trusting the file)", dest.name, digest, record)
    return dest


def _remove(path: Path) -> None:
    """Delete a file we wrote, if it is there (never a directory)."""
    try:
        if path.is_symlink() or path.is_file():
            path.unlink()
    except OSError as exc:
        log.warning('could not delete %s: %s', path, exc.strerror or exc)


def weights_url(wf: WeightsFile, mirror: Optional[str] = None,
                cache: Optional[PathLike] = None) -> str:
    """Where to download ``wf`` from: its URL, or ``mirror`` + its file name.

    ``mirror`` (default ``$CITYSEG_ROS_WEIGHTS_MIRROR``) replaces everything in the URL up to the
    file name: a mirror holds the files under their zoo file names, as in the cache, e.g. an
    internal ``http://weights.lan/cityseg/`` or ``file:///mnt/weights/``.

    Raises:
        ZooError: the file has no URL and no mirror is set.
        ConfigError: the mirror is not a usable URL.
    """
    mirror = mirror or os.environ.get(MIRROR_ENV) or None
    if mirror:
        _check_url(mirror, '--mirror')
        return mirror.rstrip('/') + '/' + urllib.parse.quote(wf.filename)
    if not wf.url:
        raise ZooError(f'{wf.filename} has no download URL; use --mirror URL or copy it to '
                       f'{cache or cache_dir()}')
    return wf.url


def _released_file(spec: ModelSpec, file: Optional[str]) -> WeightsFile:
    if not spec.weights:
        raise ZooError(f'model {spec.name!r} has no released weights; train it and pass '
                       '--weights FILE')
    wf = spec.weights_for(file)
    if wf is None:
        names = ', '.join(w.filename for w in spec.weights)
        raise ZooError(f'{file} is not a released file of {spec.name!r}; choose one of: {names}')
    return wf


def fetch(spec_name: str, file: Optional[str] = None, cache: Optional[PathLike] = None,
          mirror: Optional[str] = None, progress: bool = True,
          limits: Optional[DownloadLimits] = None) -> Path:
    """Download one released file of a zoo model into the cache, unless a good copy is there.

    Args:
        spec_name: zoo name.
        file: file name of one of the model's released files; the default (first) when None.
        cache: directory; :func:`cache_dir` when None.
        mirror: base URL replacing the release URL up to the file name (see
            :func:`weights_url`).
        progress: show a progress bar on a terminal.
        limits: time and size limits of the download (see :class:`DownloadLimits`).

    Returns:
        The verified file in the cache.

    Raises:
        ZooError: unknown model or file, or no released weights / no URL.
        ConfigError: the mirror is not a usable URL.
        DownloadError: the download failed (see :func:`download`), or the file's sha256
            record in the cache cannot be read.
    """
    spec = get_spec(spec_name)
    wf = _released_file(spec, file)
    dest = (Path(cache).expanduser() if cache else cache_dir()) / wf.filename
    mirror = mirror or os.environ.get(MIRROR_ENV) or None
    if mirror:
        _check_url(mirror, '--mirror')
    expected = wf.sha256
    if not expected:
        try:
            expected = _read_record(dest)
        except _FileProblem as exc:
            raise DownloadError(f'{exc}, so {wf.filename} cannot be verified; delete the record '
                                '(the next download records a new digest)') from None
    if dest.is_file():
        problem = check_file(dest, wf)
        if problem is None:
            log.debug('%s is already in the cache', dest)
            return dest
        # Deleted first: a failed download must not leave the bad file there to be used, and
        # the tool's one stderr line is then the download's error (this note is progress).
        log.info('%s in the cache is bad (%s); deleting it and downloading it again', dest,
                 problem)
        try:
            dest.unlink()
        except OSError as exc:
            raise DownloadError(f'{dest} in the cache is bad ({problem}) and cannot be deleted '
                                f'({exc.strerror or exc}); delete it by hand') from None
    url = weights_url(wf, mirror, dest.parent)
    log.debug('downloading %s -> %s', url, dest)
    return download(url, dest, sha256=expected, size=wf.size, progress=progress, limits=limits)
