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
Downloads go to ``<file>.part``, resume with an HTTP Range request, and are renamed into place
only after the size and sha256 match.
"""

from collections.abc import Mapping
import hashlib
import http.client
import logging
import os
from pathlib import Path
import re
import sys
from typing import Optional, Union
import urllib.error
import urllib.parse
import urllib.request

from cityseg_ros import __version__
from cityseg_ros.errors import CheckpointError, DownloadError, ZooError
from cityseg_ros.models.zoo import get_spec, ModelSpec, WeightsFile, ZOO
import numpy as np
import torch
from torch import nn
from tqdm import tqdm

__all__ = ['cache_dir', 'check_file', 'download', 'fetch', 'load_checkpoint', 'load_state_dict',
           'resolve_weights', 'verify', 'weights_url']

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


def _recorded_sha256(path: Path) -> Optional[str]:
    """Return the digest written beside ``path`` on its first download, if any."""
    try:
        text = _sha256_record(path).read_text(encoding='ascii').split()
    except (OSError, UnicodeDecodeError):
        return None
    return text[0].lower() if text and re.fullmatch(r'[0-9a-fA-F]{64}', text[0]) else None


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as fh:
        for block in iter(lambda: fh.read(_CHUNK), b''):
            digest.update(block)
    return digest.hexdigest()


def check_file(path: PathLike, wf: WeightsFile) -> Optional[str]:
    """Say what is wrong with a local copy of ``wf``, or None when it is good.

    The size is checked when the zoo knows it; the sha256 against the zoo's digest, else against
    the one recorded beside the file on its first download. A file whose digest is known nowhere
    passes (there is nothing to compare with).
    """
    path = Path(path)
    if not path.is_file():
        return 'missing'
    actual_size = path.stat().st_size
    if wf.size is not None and actual_size != wf.size:
        return f'size {actual_size} B, expected {wf.size} B'
    expected = wf.sha256.lower() if wf.sha256 else _recorded_sha256(path)
    if expected is None:
        return None
    actual = _sha256_file(path)
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
        CheckpointError: the file is missing, or ``'auto'`` but the model has no released
            weights or they are not in the cache yet.
    """
    if weights is None:
        return None
    if weights == 'auto':
        if not spec.weights:
            raise CheckpointError(f'model {spec.name!r} has no released weights, so --weights '
                                  'auto cannot work; train it and pass --weights FILE')
        path = Path(cache).expanduser() if cache else cache_dir()
        path = path / spec.weights[0].filename
        if not path.is_file():
            raise CheckpointError(f'{path} is not in the cache; run fetch_weights --model '
                                  f'{spec.name} or pass --weights FILE')
        return path
    path = Path(weights).expanduser()
    if not path.is_file():
        what = 'is a directory, not a file' if path.is_dir() else 'not found'
        raise CheckpointError(f'--weights {weights} {what}; run fetch_weights --model {spec.name} '
                              'or pass a file')
    return path


# --------------------------------------------------------------------------------------------
# Loading


def _describe_bytes(head: bytes) -> str:
    lowered = head.lstrip().lower()
    for magic, what in _MAGIC:
        if lowered.startswith(magic.lower()):
            return what
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


def _read_checkpoint(path: Path, fix: str) -> object:
    """``torch.load`` with ``weights_only=True``; every failure becomes a CheckpointError."""
    if not path.exists():
        raise CheckpointError(f'{path} not found; {fix}')
    if path.is_dir():
        raise CheckpointError(f'{path} is a directory; pass the checkpoint file inside it')
    try:
        with open(path, 'rb') as fh:
            head = fh.read(64)
    except OSError as exc:
        raise CheckpointError(f'cannot read {path}: {exc.strerror or exc}') from None
    if not head:
        raise CheckpointError(f'{path} is empty (0 bytes), an interrupted copy or download? '
                              f'Delete it; {fix}')
    is_zip = head.startswith(_ZIP_MAGIC)
    try:
        # mmap only works for the zip format (torch >= 1.6); legacy pickles (e.g. the EdgeNets
        # files) are read whole.
        with torch.serialization.safe_globals(_NUMPY_SCALARS):
            return torch.load(path, map_location='cpu', weights_only=True, mmap=is_zip)
    except Exception as exc:  # torch.load raises many types for bad data; all mean "bad file"
        text = str(exc)
        refused = re.search(r'Unsupported (?:global: GLOBAL |class )([\w.]+)', text)
        if refused:
            raise CheckpointError(
                f'{path} contains arbitrary Python objects ({refused.group(1)}), which '
                'torch.load(weights_only=True) refuses for safety (unpickling them can run '
                'code); only plain state dicts of tensors are loaded. If you trust its source, '
                'load it once with weights_only=False and torch.save just the state dict'
            ) from None
        size = path.stat().st_size
        if is_zip:
            # torch's zip reader appends a paragraph of advice; its first sentence says it all.
            detail = re.split(r'(?<=\.)\s', text, maxsplit=1)[0] if text else type(exc).__name__
            raise CheckpointError(f'{path} is truncated or corrupt ({size} B zip checkpoint: '
                                  f'{detail}); delete it; {fix}') from None
        if head.startswith(_PICKLE_PROTO):
            raise CheckpointError(f'{path} is truncated or corrupt ({size} B legacy pickle '
                                  f'checkpoint, {type(exc).__name__}); delete it; {fix}') from None
        raise CheckpointError(f'{path} is not a PyTorch checkpoint: it looks like '
                              f'{_describe_bytes(head)}; {fix}') from None


def _check_tensors(state: object, path: Path, spec: Optional[ModelSpec]) -> dict:
    """Insist on a flat mapping of names to tensors; explain wrappers the adapter left."""
    owner = f' (zoo model {spec.name!r})' if spec else ''
    if not isinstance(state, Mapping):
        raise CheckpointError(f'{path} holds a {type(state).__name__}, not a state dict (a '
                              f'mapping of parameter names to tensors){owner}')
    nested = [k for k, v in state.items() if isinstance(v, Mapping)]
    if nested:
        inner = ([k for k in nested if k in _WRAPPER_KEYS] or nested)[0]
        top = _first([str(k) for k in state])
        who = (f'the key adapter of zoo model {spec.name!r} does not unwrap it: is this a '
               'checkpoint of another model?') if spec else 'a flat state dict is expected.'
        raise CheckpointError(
            f'{path} is a wrapped checkpoint (top-level keys: {top}; tensors under {inner!r}) '
            f'and {who} For a file you trained, save the inner dict: '
            f"torch.save(ckpt[{inner!r}], 'flat.pth')")
    for key, value in state.items():
        if not isinstance(key, str):
            raise CheckpointError(f'{path} has a non-string key {key!r}; expected a state dict '
                                  f'of parameter names{owner}')
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f'{path}: entry {key!r} is of type {type(value).__name__}, '
                                  f'not a tensor; expected a flat state dict{owner}')
    return dict(state)


def load_state_dict(path: PathLike, spec: Optional[ModelSpec] = None) -> dict[str, torch.Tensor]:
    """Read a checkpoint safely and return its flat state dict.

    ``torch.load(map_location='cpu', weights_only=True)``, memory-mapped for zip-format files.
    When ``spec`` is given its key adapter is applied (that is the only place wrappers such as
    mmcv's ``state_dict`` are unwrapped); otherwise the file must be flat already.

    Args:
        path: the checkpoint file.
        spec: the zoo entry the file is for; names the model in messages.

    Returns:
        Parameter and buffer names -> CPU tensors, as stored (dtype unchanged).

    Raises:
        CheckpointError: missing, empty, truncated or foreign file; a pickle with arbitrary
            Python objects; not a mapping of tensors after the adapter.
    """
    path = Path(path).expanduser()
    fix = (f'run fetch_weights --model {spec.name} or pass a file' if spec
           else 'pass a checkpoint file saved with torch.save')
    state = _read_checkpoint(path, fix)
    if spec is not None and isinstance(state, Mapping):
        try:
            state = spec.adapter(state)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CheckpointError(f'the key adapter of zoo model {spec.name!r} cannot read '
                                  f'{path} ({type(exc).__name__}: {exc}); is this a checkpoint '
                                  'of another model?') from None
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


def _part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + '.part')


def _host(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return parts.hostname or parts.netloc or url


def _content_range(value: Optional[str]) -> tuple[Optional[int], Optional[int]]:
    """``bytes START-END/TOTAL`` or ``bytes */TOTAL`` -> (START, TOTAL)."""
    match = re.fullmatch(r'\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*', value or '')
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


def _open(url: str, offset: int, timeout: float, dest: Path):
    headers = {'User-Agent': f'cityseg_ros/{__version__}', 'Accept-Encoding': 'identity'}
    if offset:
        headers['Range'] = f'bytes={offset}-'
    request = urllib.request.Request(url, headers=headers)
    try:
        return urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError:
        raise
    except urllib.error.URLError as exc:
        raise _unreachable(url, exc.reason, dest) from None
    except (OSError, http.client.HTTPException) as exc:
        raise _unreachable(url, str(exc) or type(exc).__name__, dest) from None


def _stream(response, url: str, part: Path, offset: int, size: Optional[int],
            progress: bool) -> None:
    """Append the response body to ``part``; a cut connection keeps what arrived."""
    length = response.headers.get('Content-Length')
    body = int(length) if length and length.isdigit() else None
    total = offset + body if body is not None else size
    received = 0
    error = None
    bar = tqdm(total=total, initial=offset, unit='B', unit_scale=True, unit_divisor=1024,
               desc=part.name[:-len('.part')], file=sys.stderr, dynamic_ncols=True,
               disable=not progress or not sys.stderr.isatty())
    with bar, open(part, 'ab' if offset else 'wb') as fh:
        while True:
            try:
                chunk = response.read(_CHUNK)
            except (OSError, http.client.HTTPException) as exc:  # reset, timeout, IncompleteRead
                error = f'{type(exc).__name__}: {exc}' if str(exc) else type(exc).__name__
                break
            if not chunk:
                break
            fh.write(chunk)
            received += len(chunk)
            bar.update(len(chunk))
    if error is None and body is not None and received < body:
        error = 'the server closed the connection'
    if error is not None:
        raise DownloadError(f'download of {url} broke off after {offset + received} of '
                            f'{total if total is not None else "?"} bytes ({error}); run again '
                            f'to resume from the partial file {part}')


def _receive(url: str, part: Path, offset: int, size: Optional[int], progress: bool,
             timeout: float) -> None:
    """Fetch ``url`` into ``part``, resuming at ``offset`` when the server allows it."""
    for _ in range(2):  # the second try starts from byte 0, so it never loops back here
        try:
            response = _open(url, offset, timeout, part.parent)
        except urllib.error.HTTPError as exc:
            _, total = _content_range(exc.headers.get('Content-Range'))
            exc.close()
            if exc.code == 416 and offset:
                if total == offset:
                    return  # the partial file is already whole
                log.info('%s refused to resume %s; downloading from the start', _host(url), part)
                part.unlink(missing_ok=True)
                offset = 0
                continue
            raise DownloadError(f'download of {url} failed: HTTP {exc.code} {exc.reason} (moved '
                                'or private? use --mirror URL or copy the file to '
                                f'{part.parent})') from None
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
            _stream(response, url, part, offset, size, progress)
            return
    raise DownloadError(f'{_host(url)} answers resume requests inconsistently; delete {part} '
                        'and run again')


def download(url: str, dest: PathLike, sha256: Optional[str] = None, size: Optional[int] = None,
             progress: bool = True, timeout: float = 30.0) -> Path:
    """Download ``url`` to ``dest``: resumable, verified, renamed into place at the end.

    Bytes go to ``<dest>.part``; an existing ``.part`` is resumed with an HTTP Range request
    (servers that answer 200 instead of 206 are restarted from byte 0). A cut connection
    leaves the ``.part`` for the next call. After the size and sha256 match, the file is renamed
    atomically to ``dest``. With ``sha256=None`` the digest is computed and recorded in
    ``<dest>.sha256`` (trust on first download) and a warning is logged.

    Args:
        url: http(s) (or file) URL.
        dest: final path; its directory is created.
        sha256: expected hex digest, or None when unknown.
        size: expected size in bytes, or None.
        progress: show a tqdm byte counter on stderr (only when stderr is a terminal).
        timeout: seconds for connecting and for each read.

    Returns:
        ``dest``.

    Raises:
        DownloadError: host unreachable, HTTP error status, connection cut (partial file kept),
            size or sha256 mismatch (partial file deleted).
    """
    dest = Path(dest).expanduser()
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = _part_path(dest)
    offset = part.stat().st_size if part.is_file() else 0
    if size is not None and offset > size:
        part.unlink()
        offset = 0
    if offset:
        log.info('resuming %s at byte %d', dest.name, offset)
    if size is None or offset != size:
        _receive(url, part, offset, size, progress, timeout)

    actual_size = part.stat().st_size
    if size is not None and actual_size != size:
        part.unlink()
        raise DownloadError(f'{url} sent {actual_size} bytes, expected {size}; the download was '
                            'deleted: run again, or check that the mirror has the released file')
    digest = _sha256_file(part)
    if sha256 is not None and digest != sha256.lower():
        part.unlink()
        raise DownloadError(f'sha256 mismatch for {url}: expected {sha256.lower()}, got {digest}; '
                            'the download was deleted: run again, or check that the mirror has '
                            'the released file')
    os.replace(part, dest)
    if sha256 is None:
        record = _sha256_record(dest)
        tmp = record.with_name(record.name + '.tmp')
        tmp.write_text(f'{digest}  {dest.name}\n', encoding='ascii')
        os.replace(tmp, record)
        log.warning('sha256 of %s was unknown; recorded %s in %s on first download (compare it '
                    "with the publisher's before trusting the file)", dest.name, digest, record)
    return dest


def weights_url(wf: WeightsFile, mirror: Optional[str] = None,
                cache: Optional[PathLike] = None) -> str:
    """Where to download ``wf`` from: its URL, or ``mirror`` + its file name.

    ``mirror`` (default ``$CITYSEG_ROS_WEIGHTS_MIRROR``) replaces everything in the URL up to the
    file name: a mirror holds the files under their zoo file names, as in the cache, e.g. an
    internal ``http://weights.lan/cityseg/`` or ``file:///mnt/weights/``.

    Raises:
        ZooError: the file has no URL and no mirror is set.
    """
    mirror = mirror or os.environ.get(MIRROR_ENV) or None
    if mirror:
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
          mirror: Optional[str] = None, progress: bool = True) -> Path:
    """Download one released file of a zoo model into the cache, unless a good copy is there.

    Args:
        spec_name: zoo name.
        file: file name of one of the model's released files; the default (first) when None.
        cache: directory; :func:`cache_dir` when None.
        mirror: base URL replacing the release URL up to the file name (see
            :func:`weights_url`).
        progress: show a progress bar on a terminal.

    Returns:
        The verified file in the cache.

    Raises:
        ZooError: unknown model or file, or no released weights / no URL.
        DownloadError: the download failed (see :func:`download`).
    """
    spec = get_spec(spec_name)
    wf = _released_file(spec, file)
    dest = (Path(cache).expanduser() if cache else cache_dir()) / wf.filename
    if dest.is_file():
        problem = check_file(dest, wf)
        if problem is None:
            log.debug('%s is already in the cache', dest)
            return dest
        log.warning('%s in the cache is bad (%s); downloading it again', dest, problem)
    url = weights_url(wf, mirror, dest.parent)
    log.debug('downloading %s -> %s', url, dest)
    return download(url, dest, sha256=wf.sha256 or _recorded_sha256(dest), size=wf.size,
                    progress=progress)
